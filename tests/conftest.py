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
