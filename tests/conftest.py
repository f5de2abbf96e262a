"""Shared test set-up: one torch thread, the ``expensive`` marker, and the fixtures several test
files use (seeded generators, short-episode settings, teacher files, a tiny recorded dataset)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from policy_distill.settings import EnvSettings

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
