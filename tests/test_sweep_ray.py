"""The sweep on a local Ray cluster (2 CPUs): rows stream back to the driver, which alone writes
the table; a cell whose worker is killed is rerun from its latest.pt, neither lost nor doubled."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from policy_distill.errors import UserError
from policy_distill.experiments.sweep import latest_rows, read_rows, reproduce, row_key

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """A Ray cluster on this machine, small: 2 CPUs, no dashboard, a 100 MB object store."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    yield
    ray.shutdown()


def test_ray_sweep_streams_rows_to_the_driver_and_never_repeats_a_cell(
    local_ray, tiny_sweep_config, read_json_lines, write_hparams, tmp_path
) -> None:
    write_hparams(tmp_path / "hparams.json")
    cfg = tiny_sweep_config(tmp_path, methods="kl", executor="ray")
    first = reproduce(cfg)
    assert (first["ran"], first["skipped"]) == (2, 0)
    rows = read_json_lines(tmp_path / "results.jsonl")
    assert sorted(r["train_fraction"] for r in rows) == [0.3, 0.6]
    for r in rows:
        assert r["method"] == "kl" and r["steps"] == 2 and r["resumed_from_step"] == 0
        assert torch.load(Path(r["run_dir"]) / "latest.pt", weights_only=True)["step"] == 2
    again = reproduce(cfg)
    assert (again["ran"], again["skipped"]) == (0, 2)
    assert len(read_json_lines(tmp_path / "results.jsonl")) == 2
    # The same table, read by the local executor: nothing to run either.
    assert reproduce(dataclasses.replace(cfg, executor="local"))["skipped"] == 2


def test_a_killed_worker_is_rerun_from_its_checkpoint_with_one_row(
    local_ray, tiny_sweep_config, read_json_lines, write_hparams, tmp_path
) -> None:
    write_hparams(
        tmp_path / "hparams.json",
        pong={"learning_rate": 1e-3, "alpha": 0.5, "steps": 120, "chosen_by": "a test", "precision": "fp32"},
    )
    cfg = tiny_sweep_config(tmp_path, methods="kl", executor="ray", eval_every=10, fidelity_frames=2)
    run_dir = tmp_path / "runs" / "pong" / "kl-frac0.3-seed0"
    killed: list[int] = []

    def kill_the_worker_after_its_first_checkpoint() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not (run_dir / "latest.pt").exists():
            time.sleep(0.02)
        pid = int((run_dir / ".lock").read_text())  # the worker process running the cell
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_the_worker_after_its_first_checkpoint, daemon=True)
    killer.start()
    result = reproduce(cfg)
    killer.join(timeout=5)
    assert killed and result["ran"] == 2
    rows = read_json_lines(tmp_path / "results.jsonl")
    assert len(rows) == 2 and len({row_key(r) for r in rows}) == 2  # one row per cell
    rerun = next(r for r in rows if r["train_fraction"] == 0.3)
    assert 10 <= rerun["resumed_from_step"] < 120  # it resumed, and was not run twice
    assert int((run_dir / ".lock").read_text()) != killed[0]
    assert torch.load(run_dir / "latest.pt", weights_only=True)["step"] == 120
    assert latest_rows(read_rows(tmp_path / "results.jsonl")) == rows


def test_ray_refuses_a_missing_dataset_before_running_anything(
    local_ray, tiny_sweep_config, write_hparams, tmp_path
) -> None:
    write_hparams(tmp_path / "hparams.json")
    cfg = tiny_sweep_config(tmp_path, executor="ray", data=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="record it first"):
        reproduce(cfg)
    assert not (tmp_path / "results.jsonl").exists()
