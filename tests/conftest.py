"""Shared test set-up: one torch thread, the ``expensive`` marker, and the fixtures several test
files use (seeded generators, short-episode settings, teacher and student files, a tiny recorded
dataset, the configs of short runs on it, and the sweep's hparams and results files)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch

from policy_distill.settings import EnvSettings

if TYPE_CHECKING:
    from policy_distill.distill import DistillConfig
    from policy_distill.experiments.sweep import SweepConfig
    from policy_distill.experiments.tune import TuneConfig

torch.set_num_threads(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-expensive", action="store_true", help="also run tests marked expensive")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-expensive"):
        return
    skip = pytest.mark.skip(reason="expensive: run with --run-expensive (make test-all)")
    for item in items:
        if "expensive" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def torch_gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def write_teacher_file(path: Path, settings: EnvSettings, seed: int = 0) -> Path:
    """A randomly initialised teacher checkpoint (the toolkit's own format) at ``path``."""
    from agents.networks import TeacherNet
    from agents.teacher_file import teacher_record
    from policy_distill.checkpoint import atomic_torch_save

    torch.manual_seed(seed)
    net = TeacherNet(settings.num_actions)
    atomic_torch_save(teacher_record(net.state_dict(), settings, {"algorithm": "none (test)"}), path)
    return path


@pytest.fixture(scope="session")
def short_settings() -> EnvSettings:
    """Pong with games cut at 240 emulator frames, so that a few hundred frames hold several episodes."""
    return EnvSettings("pong", max_episode_frames=240)


@pytest.fixture
def make_teacher_file(tmp_path: Path) -> Callable[..., Path]:
    """Write a randomly initialised teacher checkpoint with the given settings; returns its path."""

    def make(settings: EnvSettings | None = None, name: str = "teacher.pt", seed: int = 0) -> Path:
        return write_teacher_file(tmp_path / name, settings or EnvSettings("pong"), seed)

    return make


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory, short_settings: EnvSettings) -> Path:
    """A random teacher (``teacher.pt``) and 400 frames it recorded (``data/``, several short
    episodes), shared by the distillation and sweep tests; runs go under ``runs/``."""
    from agents.loading import load_teacher
    from policy_distill.collect import CollectConfig, collect

    root = tmp_path_factory.mktemp("tiny")
    write_teacher_file(root / "teacher.pt", short_settings)
    collect(
        load_teacher(root / "teacher.pt"),
        CollectConfig(frames=400, num_envs=4, batch_size=2),
        root / "data",
        progress=False,
    )
    return root


def write_student_file(path: Path, settings: EnvSettings, seed: int = 0, **record_fields: Any) -> Path:
    """A randomly initialised student checkpoint (the paper's width, ``settings``' action count) at
    ``path``; ``record_fields`` (step, metrics, provenance) go into its record as a run's would."""
    from policy_distill.checkpoint import atomic_torch_save
    from policy_distill.student import StudentArch, StudentNet, student_record

    torch.manual_seed(seed)
    net = StudentNet(StudentArch(num_actions=settings.num_actions))
    atomic_torch_save(student_record(net, settings, **record_fields), path)
    return path


@pytest.fixture(scope="session", name="write_teacher_file")
def fixture_write_teacher_file() -> Callable[..., Path]:
    """:func:`write_teacher_file`, for fixtures of any scope that choose the file's path themselves."""
    return write_teacher_file


@pytest.fixture(scope="session", name="write_student_file")
def fixture_write_student_file() -> Callable[..., Path]:
    """:func:`write_student_file`, for fixtures of any scope that choose the file's path themselves."""
    return write_student_file


@pytest.fixture(scope="session")
def write_hparams() -> Callable[..., Path]:
    """Write a sweep hyperparameter file at a path; returns the path. Keyword arguments are its game
    entries; without any, one Pong entry of 2 fp32 steps."""

    def write(path: Path, **games: dict) -> Path:
        pong = {"learning_rate": 1e-3, "alpha": 0.5, "steps": 2, "chosen_by": "a test", "precision": "fp32"}
        entries = games or {"pong": pong}
        path.write_text(json.dumps({"_comment": "test", **entries}))
        return path

    return write


@pytest.fixture(scope="session")
def read_json_lines() -> Callable[[Path], list[dict]]:
    """Read a JSON-lines file (a results table) strictly: every line must parse."""

    def read(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    return read


def _tiny_run_fields(tiny: Path, runs_dir: Path) -> dict[str, Any]:
    """The fields every config of a run on ``tiny`` shares, whatever its class: the tiny teacher and
    dataset, runs under ``runs_dir``, on the CPU, batches of 16, evaluated every 2 steps on 64 test
    frames and gradient fidelity on 4."""
    return dict(
        teacher=str(tiny / "teacher.pt"),
        data=str(tiny / "data"),
        runs_dir=str(runs_dir),
        device="cpu",
        batch_size=16,
        eval_every=2,
        eval_frames=64,
        fidelity_frames=4,
    )


@pytest.fixture(scope="session")
def tiny_distill_config(tiny: Path) -> Callable[..., DistillConfig]:
    """Make the DistillConfig of a short Pong run (4 steps, half the recording trains, fp32, vjp) on the
    teacher and dataset in ``root`` (default: ``tiny``), with runs under ``root/runs``; keyword
    arguments override any field."""
    from policy_distill.distill import DistillConfig

    def make(root: Path | None = None, **overrides: Any) -> DistillConfig:
        root = root or tiny
        fields = _tiny_run_fields(root, root / "runs")
        fields.update(
            game="pong",
            train_fraction=0.5,
            steps=4,
            learning_rate=1e-3,
            precision="fp32",  # explicit: "auto" would differ between CPUs with and without bf16 units
            # The paper's estimator (alpha then defaults to its 0.01), explicit so that a game's
            # tuned default (fd for Pong's large fractions) does not change what tests measure.
            sobolev_estimator="vjp",
        )
        return DistillConfig(**{**fields, **overrides})

    return make


@pytest.fixture(scope="session")
def tiny_sweep_config(tiny: Path) -> Callable[..., SweepConfig]:
    """Make the SweepConfig of a Pong sweep on ``tiny`` over fractions 0.3 and 0.6, seed 0, whose
    hparams.json, results.jsonl and runs/ are in ``out``; keyword arguments override any field."""
    from policy_distill.experiments.sweep import SweepConfig

    def make(out: Path, **overrides: Any) -> SweepConfig:
        fields = _tiny_run_fields(tiny, out / "runs")
        fields.update(
            games="pong",
            fractions="0.3,0.6",
            seeds="0",
            hparams=str(out / "hparams.json"),
            results=str(out / "results.jsonl"),
        )
        return SweepConfig(**{**fields, **overrides})

    return make


@pytest.fixture(scope="session")
def tiny_tune_config(tiny: Path) -> Callable[..., TuneConfig]:
    """Make the TuneConfig of a small Pong search on ``tiny`` (fraction 0.6, two learning rates and
    alphas, vjp and fd, 2 steps within a budget of 4, no seed check) whose table, page,
    hparams.json and runs/ are in ``out``; keyword arguments override any field."""
    from policy_distill.experiments.tune import TuneConfig

    def make(out: Path, **overrides: Any) -> TuneConfig:
        fields = _tiny_run_fields(tiny, out / "runs")
        fields.update(
            game="pong",
            fractions="0.6",
            learning_rates="5e-4,1e-3",
            alphas="0.01,0.1",
            estimators="vjp,fd",
            steps=2,
            budget_steps=4,
            check_seeds="",  # no seed check (its own tests enable it): 1,000-step runs each
            results=str(out / "pong.jsonl"),
            out=str(out / "pong.md"),
            hparams=str(out / "hparams.json"),
        )
        return TuneConfig(**{**fields, **overrides})

    return make
