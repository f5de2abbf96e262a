"""The settings of the section 4.1 regression sweep, checked when they are made."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from policy_distill.errors import Problem, at_least, check_fields, within
from policy_distill.experiments.regression.functions import FUNCTIONS, RegressionTarget


@dataclass(frozen=True)
class RegressionConfig:
    """Settings of the section 4.1 sweep; the defaults are the run committed in docs/regression."""

    functions: str = "all"
    """Comma-separated function names (ackley, beale, booth, bukin, mccormick, rosenbrock,
    styblinski_tang) or ``all``."""
    sizes: str = "20,100,10000"
    """Comma-separated training-set sizes (points drawn uniformly from the domain)."""
    seeds: int = 3
    """Seeds per cell, 0..seeds-1; a seed fixes a network's training points and initial weights."""
    hidden: int = 256
    """Units in each of the two hidden ReLU layers (the paper's 256)."""
    steps: int = 3000
    """Adam steps per network, the same for every training size."""
    batch_size: int = 250
    """Points per step per network; training sets this small or smaller are used whole."""
    learning_rate: float = 1e-3
    """Adam step size at the first step, decayed along a half cosine to ``final_learning_rate``."""
    final_learning_rate: float = 0.0
    """Adam step size at the last step."""
    test_points: int = 10_000
    """Uniform test points per function, the same set for every seed and both methods."""
    test_seed: int = 1_000_000
    """Seed of the test sets, apart from the training seeds."""
    threads: int = 1
    """torch CPU threads. One keeps the run's speed steady on a shared machine: with two threads
    and another job on the second core it ran 5x slower here."""
    resume: bool = True
    """Keep the runs already in ``out/results.json`` when it was written with the same settings."""

    def __post_init__(self) -> None:
        """Raise :class:`policy_distill.errors.ConfigError` for settings that cannot run."""
        check_fields(
            "regression benchmark settings",
            [
                _parse_problem(self, "functions", _parse_functions),
                _parse_problem(self, "sizes", _parse_sizes),
                *(
                    at_least(self, name, 1)
                    for name in ("seeds", "hidden", "steps", "batch_size", "test_points", "threads")
                ),
                within(self, "learning_rate", 0, math.inf, open_low=True, open_high=True),
                within(self, "final_learning_rate", 0, self.learning_rate),
                at_least(self, "test_seed", 0),  # numpy's SeedSequence takes no negative seed
            ],
        )

    def training_settings(self) -> dict[str, Any]:
        """The fields that change a single run's result (not which runs are made, nor threads)."""
        skip = {"functions", "sizes", "seeds", "threads", "resume"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}

    def function_list(self) -> list[RegressionTarget]:
        """The selected functions, in the paper's order."""
        return _parse_functions(self.functions)

    def size_list(self) -> list[int]:
        """The training-set sizes, ascending."""
        return _parse_sizes(self.sizes)

    def lr_at(self, step: int) -> float:
        """Adam step size at ``step`` (0-based): a half cosine from the first to the final rate."""
        progress = step / max(1, self.steps - 1)
        span = self.learning_rate - self.final_learning_rate
        return self.final_learning_rate + span * 0.5 * (1 + math.cos(math.pi * progress))


def _parse_functions(text: str) -> list[RegressionTarget]:
    """``functions`` -> targets in the paper's order; ValueError (a field-problem text) if unknown."""
    if text.strip() == "all":
        return list(FUNCTIONS.values())
    names = [n.strip().lower().replace("-", "_") for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FUNCTIONS]
    if not names:
        raise ValueError(f"must name at least one function or be all, got {text!r}")
    if unknown:
        raise ValueError(f"has unknown function(s) {unknown!r}; known: {', '.join(FUNCTIONS)}")
    return [f for name, f in FUNCTIONS.items() if name in names]


def _parse_sizes(text: str) -> list[int]:
    """``sizes`` -> ascending distinct sizes; ValueError (a field-problem text) if not positive integers."""
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise ValueError(f"must be comma-separated integers, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise ValueError(f"must be positive integers, got {text!r}")
    return sizes


def _parse_problem(cfg: RegressionConfig, name: str, parse: Callable[[str], object]) -> Problem:
    """The field ``name`` must be accepted by ``parse``; its ValueError text becomes the problem."""
    try:
        parse(getattr(cfg, name))
    except ValueError as e:
        return name, str(e)
    return None
