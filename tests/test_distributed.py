"""Data-parallel distillation under torchrun (2 processes, gloo, CPU) against one process."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from policy_distill.distill import DistillConfig, distill
from policy_distill.distributed import World
from policy_distill.errors import UserError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(cfg: DistillConfig, processes: int = 2) -> dict:
    """``torchrun --nproc_per_node=N -m policy_distill distill ...`` with ``cfg``'s fields as flags;
    returns rank 0's JSON result."""
    flags = []
    defaults = {f.name: f.default for f in dataclasses.fields(DistillConfig)}
    for name, value in vars(cfg).items():
        # torchrun's own parser takes --run for an abbreviation of its --run-path: --run-name.
        flag = "--run-name" if name == "run" else f"--{name.replace('_', '-')}"
        if value == "" or (isinstance(value, bool) and value == defaults[name]):
            continue  # a switch left at its default (off-by-default ones have no --no- form)
        flags.append(
            (flag if value else f"--no-{flag[2:]}") if isinstance(value, bool) else f"{flag}={value}"
        )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
    command += ["--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "policy_distill"]
    done = subprocess.run(
        [*command, "distill", *flags, "--no-progress", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # two fresh interpreters importing torch: slow on a loaded 2-core machine
    )
    # The head of stderr holds the ranks' own messages, its tail torchrun's summary of who died.
    stderr = done.stderr if len(done.stderr) < 4000 else f"{done.stderr[:2000]}\n...\n{done.stderr[-2000:]}"
    results = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, f"stdout:\n{done.stdout[-1500:]}\nstderr:\n{stderr}"
    assert len(results) == 1, done.stdout  # rank 0 alone reports
    return json.loads(results[0])


def weights(run_dir: str | Path) -> dict:
    return torch.load(Path(run_dir) / "latest.pt", weights_only=True)


def scalars(run_dir: str | Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def test_two_processes_train_as_one_with_the_same_global_batch(tiny_distill_config, tmp_path) -> None:
    """KL only: both ranks draw the global batch one process draws and train on halves of it;
    the averaged gradients are the global batch's, so losses and weights equal one process's."""
    steps = dict(steps=6, eval_every=1, alpha=0.0)
    one = distill(tiny_distill_config(runs_dir=str(tmp_path / "one"), **steps), progress=False)
    # `run` is passed to torchrun as --run-name.
    two = torchrun(tiny_distill_config(runs_dir=str(tmp_path / "two"), run="named", **steps))
    assert Path(two["run_dir"]).name == "named"
    a, b = weights(one["run_dir"]), weights(two["run_dir"])
    assert a["step"] == b["step"] == 6
    # Each weight moved up to ~6e-3 (6 Adam steps of lr 1e-3, each ~lr whatever the gradient's
    # size), so a wrong share or an unaveraged gradient shows as ~1e-3. Summing the two halves'
    # gradients in another order than one process does moves a weight by up to ~2e-6 (measured:
    # 2 of 12 runs under CPU contention), hence atol 1e-5.
    for key in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][key], a["state_dict"][key], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b["generator_state"], a["generator_state"], rtol=0, atol=0)
    # The held-out loss after every step (KL to the teacher on the test frames): ~1e-5 here (a
    # random teacher is easy to match), a difference of log-probabilities ~1.8 each, so float32
    # rounding alone moves it by ~1e-8.
    for h1, h2 in zip(a["history"], b["history"], strict=True):
        assert h2["metrics"]["kl"] == pytest.approx(h1["metrics"]["kl"], rel=1e-4, abs=1e-7)
    # Rank 0 alone wrote the run directory: its checkpoints, its lock, its TensorBoard files.
    written = {p.name for p in Path(two["run_dir"]).iterdir()}
    assert {name for name in written if not name.startswith("events.")} == {".lock", "best.pt", "latest.pt"}
    writers = {name.rsplit(".", 2)[-2] for name in written if name.startswith("events.")}  # their pids
    assert writers == {(Path(two["run_dir"]) / ".lock").read_text().strip()}


def test_sobolev_run_resumed_under_torchrun_stays_close_to_one_process(tiny_distill_config, tmp_path) -> None:
    """KL + Sobolev: one process runs 2 steps, torchrun resumes the same run directory to step 4
    (every rank loads latest.pt). Each rank draws the Sobolev directions of its share from its
    own stream, so the runs are not equal, but the held-out KL and the weights stay close to an
    uninterrupted one-process run's."""
    runs = tmp_path / "runs"
    sob = dict(alpha=0.5, eval_every=1)
    reference = distill(tiny_distill_config(runs_dir=str(tmp_path / "ref"), steps=4, **sob), progress=False)
    halfway = weights(
        distill(tiny_distill_config(runs_dir=str(runs), steps=2, **sob), progress=False)["run_dir"]
    )
    resumed = torchrun(tiny_distill_config(runs_dir=str(runs), steps=4, **sob))
    a, b = weights(reference["run_dir"]), weights(resumed["run_dir"])
    assert b["step"] == 4 and [h["step"] for h in b["history"]] == [1, 2, 3, 4]
    # Steps 1-2 are the one-process part's, kept from latest.pt: had torchrun started over, its own
    # steps 1-2 (other KLs) would be there.
    assert b["history"][:2] == a["history"][:2]
    # Measured on 8 recordings of the tiny dataset (it differs between sessions): the held-out KL
    # (~1e-5) of steps 3-4 differs from one process's by 0.6-11 %; by ~250 % when the ranks do not
    # resume Adam's state. So the relative tolerance alone decides.
    for h1, h2 in zip(a["history"][2:], b["history"][2:], strict=True):
        assert h2["metrics"]["kl"] == pytest.approx(h1["metrics"]["kl"], rel=0.25, abs=0)

    def flat(state_dict: dict) -> torch.Tensor:
        return torch.cat([v.flatten().double() for v in state_dict.values()])

    # Measured likewise: the final weights of the two runs lie 0.43-0.50 times as far apart as the
    # one-process run moved in steps 3-4 (Adam moves every weight ~lr a step, and the directions
    # differ); 1.17 times without Adam's state resumed. NaN weights fail the comparison too.
    moved = (flat(a["state_dict"]) - flat(halfway["state_dict"])).norm()
    apart = (flat(b["state_dict"]) - flat(a["state_dict"])).norm()
    assert apart < 0.75 * moved, (apart, moved)


def test_world_shares_and_refuses_an_uneven_batch(tiny_distill_config, tmp_path, monkeypatch) -> None:
    world = World(rank=1, size=4, local_rank=1)
    assert world.share(200) == slice(50, 100)
    g1 = world.direction_generator(0, 7, torch.device("cpu"))
    g2 = World(rank=2, size=4, local_rank=2).direction_generator(0, 7, torch.device("cpu"))
    first = torch.randn(3, generator=g1)
    assert torch.equal(first, torch.randn(3, generator=world.direction_generator(0, 7, torch.device("cpu"))))
    assert not torch.equal(first, torch.randn(3, generator=g2))
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="`batch_size` 16 is not divisible by the 3 processes"):
        distill(tiny_distill_config(runs_dir=str(tmp_path), steps=1))
    monkeypatch.setenv("WORLD_SIZE", "4")  # 16 samples: 4 per process, shared by 8 is refused
    with pytest.raises(UserError, match="`samples_per_direction` 8 does not divide each of the 4 proc"):
        distill(
            tiny_distill_config(
                runs_dir=str(tmp_path), steps=1, sobolev_estimator="fd", samples_per_direction=8
            )
        )
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert World.from_env() is None
