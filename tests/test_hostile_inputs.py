"""Hostile but realistic input (issue 14): every bad input ends as one line ``error: ...`` with exit
status 2 and no traceback, and nothing already made (a dataset, a checkpoint) is lost.

The table runs each case through the command line in-process (``cli.main``), which is what a user
gets minus the interpreter start; a few cases that once crashed the interpreter run as
subprocesses. A new command joins by adding its rows to :data:`CASES`.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from policy_distill import cli
from policy_distill.checkpoint import DirectoryLock

ROOT = os.geteuid() == 0  # root writes through chmod: read-only cases need another user
QUICK_EVALUATION = dict(batch_size=8, eval_every=1, eval_frames=16, fidelity_frames=2)
"""Smaller batches and held-out sets than ``tiny_distill_config``'s: a checkpoint after every step."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny: Path, tiny_distill_config) -> Path:
    """A teacher, its dataset and a finished two-checkpoint run, copied from ``tiny``."""
    from policy_distill.distill import distill

    root = tmp_path_factory.mktemp("world")
    shutil.copy(tiny / "teacher.pt", root / "teacher.pt")
    shutil.copytree(tiny / "data", root / "data")
    distill(tiny_distill_config(root, run="done", steps=2, **QUICK_EVALUATION), progress=False)
    return root


def _digest(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


# --- Ways to spoil a copy of the dataset: each takes the copy's directory ----------------------------


def _array(name: str, value: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def spoil(d: Path) -> None:
        np.save(d / f"{name}.npy", value(np.load(d / f"{name}.npy")))

    return spoil


def _meta(text: bytes | Callable[[dict], object]) -> Callable[[Path], None]:
    def spoil(d: Path) -> None:
        if isinstance(text, bytes):
            (d / "meta.json").write_bytes(text)
        else:
            (d / "meta.json").write_text(json.dumps(text(json.loads((d / "meta.json").read_text()))))

    return spoil


def _drop(key: str) -> Callable[[dict], dict]:
    return lambda m: {k: v for k, v in m.items() if k != key}


def _negative_index(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[5] = -3
    return a


def _changed_reward(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[0] += 1.0
    return a


def _nan_row(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[3] = np.nan
    return a


DATASET_SPOILS: dict[str, tuple[Callable[[Path], None], str]] = {
    # name: (spoil, expected text)
    "float32 frames": (_array("frames", lambda a: a.astype(np.float32)), "frames.npy is float32"),
    "negative frame index": (_array("frame_index", _negative_index), "frame_index.npy points outside"),
    "meta.json binary": (_meta(bytes(range(256))), "meta.json is corrupted (not JSON text)"),
    "meta.json a list": (_meta(b"[1, 2]"), "is not a JSON object (it holds a list)"),
    "meta.json lacks keys": (_meta(_drop("settings")), "lacks or mangles settings"),
    "zero-length arrays": (
        lambda d: [_array(n, lambda a: a[:0])(d) for n in ("actions", "frame_index", "rewards", "log_probs")],
        "it holds no samples",
    ),
    "frames of another size": (_array("frames", lambda a: a[:, :64, :64].copy()), "frames are 64x64"),
    "empty episode boundaries": (
        _array("episode_starts", lambda a: a[:0]),
        "episode_starts.npy is not an increasing list",
    ),
    "content changed after recording": (
        _array("rewards", _changed_reward),
        "do not match the content SHA-256",
    ),
    "NaN teacher log-probabilities": (_array("log_probs", _nan_row), "NaN or infinite"),
    "array file missing": (lambda d: (d / "actions.npy").unlink(), "actions.npy is missing"),
    "array file truncated": (
        lambda d: (d / "rewards.npy").write_bytes((d / "rewards.npy").read_bytes()[:90]),
        "rewards.npy is truncated or corrupted",
    ),
}


@pytest.mark.parametrize("spoil", sorted(DATASET_SPOILS))
def test_malformed_dataset_is_one_line_naming_file_and_fix(
    world: Path, tmp_path: Path, capsys, spoil
) -> None:
    data = tmp_path / "data"
    shutil.copytree(world / "data", data)
    action, expected = DATASET_SPOILS[spoil]
    action(data)
    argv = ["distill", "--game", "pong", "--teacher", str(world / "teacher.pt"), "--data", str(data)]
    message = _one_error(capsys, [*argv, "--runs-dir", str(tmp_path / "runs"), "--device", "cpu"])
    assert expected in message and str(data) in message
    assert "python -m policy_distill collect --game" in message and "--overwrite" in message


# --- The table: (argv built from the world's paths, expected text, files that must survive) ---------

Case = tuple[Callable[[Path, Path], list[str]], str, Callable[[Path], list[Path]]]


def _run(world: Path) -> list[Path]:
    return [world / "runs" / "pong" / "done" / n for n in ("best.pt", "latest.pt")]


def _data(world: Path) -> list[Path]:
    return sorted((world / "data").iterdir())


def _distill(world: Path, tmp: Path, *more: str) -> list[str]:
    return [
        "distill",
        "--game",
        "pong",
        "--teacher",
        str(world / "teacher.pt"),
        "--data",
        str(world / "data"),
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--runs-dir",
        str(tmp / "runs"),
        *more,
    ]


def _collect(world: Path, *more: str) -> list[str]:
    return ["collect", "--game", "pong", "--teacher", str(world / "teacher.pt"), "--no-progress", *more]


def _a_file(tmp: Path) -> Path:
    (tmp / "file").write_text("not a directory")
    return tmp / "file"


def _copy_run(world: Path, tmp: Path, latest: Callable[[Path], None]) -> list[str]:
    run = tmp / "runs" / "pong" / "done"
    shutil.copytree(world / "runs" / "pong" / "done", run)
    latest(run)
    return _distill(world, tmp, "--run", "done", "--batch-size", "8", "--eval-every", "1", "--steps", "3")


def _random_bytes(tmp: Path) -> Path:
    (tmp / "random.pt").write_bytes(np.random.default_rng(0).bytes(5000))
    return tmp / "random.pt"


NOTHING: Callable[[Path], list[Path]] = lambda world: []  # noqa: E731

CASES: dict[str, Case] = {
    # collect: the destination is checked before recording
    "collect --out under a regular file": (
        lambda w, t: _collect(w, "--out", str(_a_file(t) / "ds")),
        "is a file",
        _data,
    ),
    "collect --out is a regular file": (
        lambda w, t: _collect(w, "--out", str(_a_file(t))),
        "is a file, not a dataset directory",
        NOTHING,
    ),
    "collect more frames than the disk holds": (
        lambda w, t: _collect(w, "--out", str(t / "ds"), "--frames", str(10**12)),
        "GB free; free space or pass another `--out` directory",
        NOTHING,
    ),
    "collect --seed past ale-py's 32 bits": (
        lambda w, t: _collect(w, "--seed", str(2**31 - 2), "--num-envs", "4", "--batch-size", "2"),
        "--seed must lie in [0, 2147483644]",
        NOTHING,
    ),
    "collect --out with damaged meta.json": (
        lambda w, t: (
            (shutil.copytree(w / "data", t / "ds"), (t / "ds" / "meta.json").write_text("{"))
            and _collect(w, "--out", str(t / "ds"), "--frames", "400")
        ),
        "pass `--overwrite`",
        NOTHING,
    ),
    # distill: run directory, lock, memory, resume edges
    "distill --runs-dir under a regular file": (
        lambda w, t: _distill(w, t)[:-1] + [str(_a_file(t) / "runs")],
        "cannot write the run directory",
        _data,
    ),
    "distill --batch-size beyond memory": (
        lambda w, t: _distill(w, t, "--batch-size", str(10**9)),
        "GiB for `--batch-size`",
        NOTHING,
    ),
    "distill --num-projections beyond memory": (
        lambda w, t: _distill(w, t, "--num-projections", str(10**8)),
        "`--batch-size` x `--num-projections`",
        NOTHING,
    ),
    "distill --fidelity-frames beyond memory": (
        lambda w, t: _distill(w, t, "--fidelity-frames", str(10**8)),
        "lower `--fidelity-frames`",
        NOTHING,
    ),
    "distill best.pt in the place of latest.pt": (
        lambda w, t: _copy_run(w, t, lambda r: shutil.copy(r / "best.pt", r / "latest.pt")),
        "holds no resumable state (no optimizer, generator_state",
        _run,
    ),
    "distill truncated latest.pt": (
        lambda w, t: _copy_run(
            w, t, lambda r: (r / "latest.pt").write_bytes((r / "latest.pt").read_bytes()[:500])
        ),
        "delete it to start the run over, or pass another `--run` name",
        _run,
    ),
    "distill on a folder with files but no dataset": (
        lambda w, t: (_a_file(t), _distill(w, t)[:6] + [str(t)] + _distill(w, t)[7:])[1],
        "holds files but no dataset",
        NOTHING,
    ),
    "distill --seed past 2**63": (
        lambda w, t: _distill(w, t, "--seed", str(2**64)),
        "--seed must lie in",
        NOTHING,
    ),
    "distill --temperature nan": (
        lambda w, t: _distill(w, t, "--temperature", "nan"),
        "--temperature must lie in (0, inf), got nan",
        NOTHING,
    ),
    "distill --learning-rate -1": (
        lambda w, t: _distill(w, t, "--learning-rate", "-1"),
        "--learning-rate must lie in (0, 1)",
        NOTHING,
    ),
    # evaluate
    "evaluate a directory": (
        lambda w, t: ["evaluate", "--checkpoint", str(w / "runs" / "pong" / "done")],
        "is a directory (it holds best.pt, latest.pt); pass the checkpoint file inside it",
        _run,
    ),
    "evaluate random bytes": (
        lambda w, t: ["evaluate", "--checkpoint", str(_random_bytes(t))],
        "is not a PyTorch checkpoint",
        NOTHING,
    ),
    "evaluate --seed past 2**63": (
        lambda w, t: ["evaluate", "--checkpoint", "x.pt", "--seed", str(2**63 + 1)],
        "--seed must lie in",
        NOTHING,
    ),
    "evaluate-teacher --seed past ale-py's 32 bits": (
        lambda w, t: ["evaluate-teacher", "--seed", str(2**31)],
        "--seed must lie in",
        NOTHING,
    ),
    # train-teacher (item 4: PPOConfig validates itself)
    "train-teacher --num-envs 0": (
        lambda w, t: ["train-teacher", "--game", "pong", "--num-envs", "0"],
        "--num-envs must be at least 1",
        NOTHING,
    ),
    "train-teacher --learning-rate nan": (
        lambda w, t: ["train-teacher", "--game", "pong", "--learning-rate", "nan"],
        "--learning-rate must lie in",
        NOTHING,
    ),
    "train-teacher --learning-rate -0.1": (
        lambda w, t: ["train-teacher", "--game", "pong", "--learning-rate", "-0.1"],
        "--learning-rate must lie in",
        NOTHING,
    ),
    "train-teacher --total-steps 0": (
        lambda w, t: ["train-teacher", "--game", "pong", "--total-steps", "0"],
        "--total-steps must be at least 1",
        NOTHING,
    ),
    "train-teacher --gamma 1.5": (
        lambda w, t: ["train-teacher", "--game", "pong", "--gamma", "1.5"],
        "--gamma must lie in [0, 1], got 1.5",
        NOTHING,
    ),
    "train-teacher --seed past 2**63": (
        lambda w, t: ["train-teacher", "--game", "pong", "--seed", str(2**63)],
        "--seed must lie in",
        NOTHING,
    ),
}


def _one_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the command line in-process; assert exit status 2 and one ``error:`` line on stderr."""
    status = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_table(world: Path, tmp_path: Path, capsys, case: str, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # default paths (data/<game>, runs/) land in the test's folder
    argv_of, expected, kept = CASES[case]
    before = _digest(kept(world))
    message = _one_error(capsys, argv_of(world, tmp_path))
    assert expected in message, message
    assert _digest(kept(world)) == before  # nothing lost


def test_locked_run_directory_names_the_holder(world: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "runs" / "pong" / "done"
    shutil.copytree(world / "runs" / "pong" / "done", run)
    before = _digest([run / "best.pt", run / "latest.pt"])
    with DirectoryLock(run / ".lock", what="run", fix="-"):  # another open file: flock conflicts
        message = _one_error(capsys, _distill(world, tmp_path, "--run", "done", "--steps", "3"))
    assert f"in use by another process (pid {os.getpid()}" in message
    assert _digest([run / "best.pt", run / "latest.pt"]) == before


def test_locked_dataset_destination_names_the_holder(world: Path, tmp_path: Path, capsys) -> None:
    with DirectoryLock(tmp_path / ".ds.lock", what="dataset", fix="-"):
        message = _one_error(capsys, _collect(world, "--out", str(tmp_path / "ds"), "--frames", "8"))
    assert f"pid {os.getpid()}" in message and not (tmp_path / "ds").exists()


@pytest.mark.skipif(ROOT, reason="root writes into read-only directories")
def test_read_only_destinations_are_refused_before_work(world: Path, tmp_path: Path, capsys) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        message = _one_error(capsys, _collect(world, "--out", str(locked / "ds"), "--frames", "8"))
        assert "cannot write" in message and "Permission denied" in message
        message = _one_error(capsys, _distill(world, tmp_path)[:-1] + [str(locked / "runs")])
        assert "cannot write the run directory" in message
    finally:
        locked.chmod(0o755)


def test_read_only_destinations_are_refused_before_work_even_as_root(
    world: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """The same refusal where chmod cannot make a directory read-only (root, as in CI): the
    write probe is made to fail as a read-only mount fails it."""
    import builtins

    real_open = builtins.open

    def read_only(file, *args, **kwargs):
        if ".write-probe." in str(file):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only)
    message = _one_error(capsys, _collect(world, "--out", str(tmp_path / "ds"), "--frames", "8"))
    assert "cannot write" in message and "Read-only file system" in message
    assert not (tmp_path / "ds" / "meta.json").exists()
    message = _one_error(capsys, _distill(world, tmp_path)[:-1] + [str(tmp_path / "runs")])
    assert "cannot write the run directory" in message


def test_interrupted_collect_does_not_promise_a_resume(
    world: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import policy_distill.collect as collect_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(collect_module, "collect", interrupted)
    assert cli.main(_collect(world, "--out", str(tmp_path / "ds"))) == 130
    err = capsys.readouterr().err
    assert "does not resume" in err and "to resume" not in err


def test_cli_errors_that_once_crashed_the_interpreter(tmp_path: Path) -> None:
    """``--num-envs 0`` was a segfault with no output: run as a real process."""
    result = subprocess.run(
        [sys.executable, "-m", "policy_distill", "train-teacher", "--game", "pong", "--num-envs", "0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--num-envs" in result.stderr


def test_malformed_teacher_and_trainer_state_are_one_line_at_the_command_line(
    tmp_path: Path, capsys, make_teacher_file
) -> None:
    """A teacher file without its policy head, or a trainer state with a renamed setting, once
    ended in a KeyError / TypeError traceback from ``train-teacher --init-from`` and
    ``export-teacher``."""
    from agents.ppo import TRAINER_FORMAT, PPOConfig

    teacher = make_teacher_file()
    record = torch.load(teacher, weights_only=True)
    del record["state_dict"]["policy_head.weight"]
    torch.save(record, teacher)
    argv = ["train-teacher", "--game", "pong", "--out", str(tmp_path / "new"), "--init-from", str(teacher)]
    message = _one_error(capsys, argv)
    assert "has no policy_head.weight" in message and str(teacher) in message, message

    config = {f.name: getattr(PPOConfig(), f.name) for f in dataclasses.fields(PPOConfig)}
    config["entropy_coef"] = config.pop("ent_coef")
    (tmp_path / "run").mkdir()
    torch.save({"format": TRAINER_FORMAT, "config": config}, tmp_path / "run" / "trainer_state.pt")
    argv = ["export-teacher", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "pong.pt")]
    message = _one_error(capsys, argv)
    assert "unknown settings entropy_coef and no ent_coef" in message, message
    assert not (tmp_path / "pong.pt").exists()


# --- Library-level: what the command line adds nothing to ----------------------------------------------


def test_written_files_honour_the_umask(tmp_path: Path, world: Path) -> None:
    from policy_distill.checkpoint import atomic_torch_save, atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"a": 1})
        atomic_torch_save({"a": torch.zeros(1)}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    for name in ("a.json", "b.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
    # the world's dataset and checkpoints were written under the test's umask
    expected = 0o666 & ~old
    for path in [world / "data" / "meta.json", *_run(world)]:
        assert path.stat().st_mode & 0o777 == expected, path


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path, world: Path, capsys) -> None:
    from policy_distill.checkpoint import remove_stale_temporaries
    from policy_distill.dataset import remove_stale_dataset_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    pid = int(dead.stdout)
    (tmp_path / f".pong.tmp-{pid}").mkdir()
    (tmp_path / f".pong.tmp-{pid}" / "frames.npy").write_bytes(b"0" * 1000)
    (tmp_path / f".pong.tmp-{os.getpid()}").mkdir()  # a live writer's: kept
    (tmp_path / f".latest.pt.{pid}.abcd_123.tmp").write_bytes(b"0")
    (tmp_path / f".latest.pt.{os.getpid()}.abcd_123.tmp").write_bytes(b"0")
    (tmp_path / ".latest.pt.k3j4h5g6.tmp").write_bytes(b"0")  # an old version's: no pid
    assert remove_stale_dataset_temporaries(tmp_path / "pong") == [tmp_path / f".pong.tmp-{pid}"]
    assert remove_stale_temporaries(tmp_path) == [tmp_path / f".latest.pt.{pid}.abcd_123.tmp"]
    assert remove_stale_temporaries(tmp_path, also_own_pid_less=True) == [
        tmp_path / ".latest.pt.k3j4h5g6.tmp"
    ]
    assert (tmp_path / f".pong.tmp-{os.getpid()}").exists()
    assert "left by a write that did not finish" in capsys.readouterr().out


def test_failed_dataset_write_keeps_the_recording(world: Path, tmp_path: Path, monkeypatch) -> None:
    import errno

    import policy_distill.collect as collect_module
    from agents.loading import load_teacher
    from policy_distill.collect import CollectConfig, collect
    from policy_distill.dataset import load_dataset
    from policy_distill.errors import UserError

    real = collect_module.write_dataset

    def full_disk(out_dir, arrays, meta):
        if Path(out_dir) == tmp_path / "ds":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(out_dir, arrays, meta)

    monkeypatch.setattr(collect_module, "write_dataset", full_disk)
    with pytest.raises(UserError, match="No space left on device.*saved to") as err:
        collect(
            load_teacher(world / "teacher.pt"),
            CollectConfig(frames=16, num_envs=2, batch_size=2),
            tmp_path / "ds",
            progress=False,
        )
    rescue = Path(str(err.value).split("saved to ")[1].split(":")[0])
    try:
        assert len(load_dataset(rescue)) == 16
    finally:
        shutil.rmtree(rescue, ignore_errors=True)


def test_failed_checkpoint_write_says_what_is_kept(
    world: Path, tmp_path: Path, monkeypatch, tiny_distill_config
) -> None:
    import errno

    import policy_distill.distill as distill_module
    from policy_distill.distill import distill
    from policy_distill.errors import UserError

    real, calls = distill_module.atomic_torch_save, []

    def fills_up(obj, path):
        calls.append(path)
        if len(calls) > 2:  # best.pt and latest.pt of step 1 are written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, path)

    monkeypatch.setattr(distill_module, "atomic_torch_save", fills_up)
    cfg = tiny_distill_config(world, runs_dir=str(tmp_path), steps=3, **QUICK_EVALUATION)
    with pytest.raises(UserError, match=r"step 2 .*No space left on device.*checkpoint of step 1 is kept"):
        distill(cfg, progress=False)
    assert torch.load(cfg.run_dir / "latest.pt", weights_only=True)["step"] == 1


def test_non_finite_loss_points_at_the_cause() -> None:
    from policy_distill.distill import DistillConfig, RunState, _non_finite_message
    from policy_distill.losses import DistillLoss

    nan, one = torch.tensor(float("nan")), torch.tensor(1.0)
    loss = DistillLoss(total=nan, kl=nan, sobolev=one)
    cfg = DistillConfig(alpha=0.0)
    fresh = _non_finite_message(cfg, loss, torch.zeros(2, 6), RunState(), 0, Path("runs/x"))
    assert "learning rate is not the cause" in fresh and "no checkpoint was written" in fresh
    bad_data = _non_finite_message(cfg, loss, torch.full((2, 6), float("nan")), RunState(), 0, Path("r"))
    assert "record the dataset again" in bad_data
    later = RunState(step=7, history=[{"step": 5, "metrics": {}}])
    text = _non_finite_message(cfg, loss, torch.zeros(2, 6), later, 0, Path("r"))
    assert "checkpoint of step 5 is kept" in text and "lower `learning_rate`" in text and "alpha" not in text


def _cleanrl_state() -> dict[str, torch.Tensor]:
    shapes = {
        "network.0": (32, 4, 8, 8),
        "network.2": (64, 32, 4, 4),
        "network.4": (64, 64, 3, 3),
        "network.7": (512, 3136),
        "actor": (6, 512),
        "critic": (1, 512),
    }
    state = {}
    for name, shape in shapes.items():
        state[f"{name}.weight"] = torch.randn(shape) * 0.01
        state[f"{name}.bias"] = torch.zeros(shape[0])
    return state


def test_six_action_file_without_its_game_is_taken_on_trust(tmp_path: Path, capsys) -> None:
    from agents.loading import load_teacher
    from policy_distill.collect import CollectConfig, collect
    from policy_distill.dataset import load_dataset

    torch.save(_cleanrl_state(), tmp_path / "agent.cleanrl_model")
    teacher = load_teacher(tmp_path / "agent.cleanrl_model", game="space_invaders")
    assert "warning: " in capsys.readouterr().err and teacher.source.game_source == "user"
    collect(teacher, CollectConfig(frames=8, num_envs=2, batch_size=2), tmp_path / "ds", progress=False)
    assert load_dataset(tmp_path / "ds").meta["teacher"]["game_source"] == "user"
