"""Shared test set-up: one torch thread, a seeded rng, and the ``expensive`` marker."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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


@pytest.fixture
def make_teacher_file(tmp_path):  # noqa: ANN201
    """Write a randomly initialised teacher checkpoint with the given settings; returns its path."""
    from agents.networks import TeacherNet
    from agents.teacher_file import teacher_record
    from policy_distill.checkpoint import atomic_torch_save
    from policy_distill.settings import EnvSettings

    def make(settings: EnvSettings | None = None, name: str = "teacher.pt", seed: int = 0):  # noqa: ANN202
        settings = settings or EnvSettings("pong")
        torch.manual_seed(seed)
        net = TeacherNet(settings.num_actions)
        path = tmp_path / name
        atomic_torch_save(teacher_record(net.state_dict(), settings, {"algorithm": "none (test)"}), path)
        return path

    return make
