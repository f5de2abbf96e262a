"""Section 4.1 regression benchmark: the functions, the batched trainer and the command."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

import policy_distill.experiments.regression.benchmark as benchmark_module
from policy_distill.cli import build_parser
from policy_distill.errors import ConfigError, UserError
from policy_distill.experiments.regression.config import RegressionConfig
from policy_distill.experiments.regression.functions import FUNCTIONS
from policy_distill.experiments.regression.statistics import check_claims
from policy_distill.experiments.regression.training import make_test_sets, train_group

# Domains and minima as printed in the paper's supplementary section 2 (and the usual references
# for the minimisers); the minima catch a mistyped formula, which the gradient test cannot.
DOMAINS = {
    "ackley": ((-5, -5), (5, 5)),
    "beale": ((-4.5, -4.5), (4.5, 4.5)),
    "booth": ((-10, -10), (10, 10)),
    "bukin": ((-15, -3), (-5, 3)),
    "mccormick": ((-1.5, -3), (4, 4)),
    "rosenbrock": ((-2, -2), (2, 2)),
    "styblinski_tang": ((-5, -5), (5, 5)),
}
MINIMA = {
    "ackley": ((0.0, 0.0), 0.0),
    "beale": ((3.0, 0.5), 0.0),
    "booth": ((1.0, 3.0), 0.0),
    "bukin": ((-10.0, 1.0), 0.0),
    "mccormick": ((-0.54719, -1.54719), -1.9133),
    "rosenbrock": ((1.0, 1.0), 0.0),
    "styblinski_tang": ((-2.903534, -2.903534), -78.33234),
}
TINY = {"hidden": 16, "test_points": 64, "threads": 1}


def test_the_seven_functions_and_domains_are_the_papers() -> None:
    assert list(FUNCTIONS) == list(DOMAINS)
    for name, (low, high) in DOMAINS.items():
        assert FUNCTIONS[name].low == low and FUNCTIONS[name].high == high


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_known_minimum(name: str) -> None:
    point, value = MINIMA[name]
    got = FUNCTIONS[name].value(torch.tensor([point], dtype=torch.float64))
    assert got.item() == pytest.approx(value, abs=1e-4)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_analytic_gradient_matches_autograd(name: str, torch_gen: torch.Generator) -> None:
    target = FUNCTIONS[name]
    x = target.sample(500, torch_gen).requires_grad_(True)
    (auto,) = torch.autograd.grad(target.value(x).sum(), x)
    torch.testing.assert_close(target.gradient(x.detach()), auto, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_samples_lie_in_the_domain(name: str, torch_gen: torch.Generator) -> None:
    target = FUNCTIONS[name]
    x = target.sample(1000, torch_gen)
    assert x.shape == (1000, 2)
    for d in range(2):
        assert target.low[d] <= x[:, d].min() and x[:, d].max() <= target.high[d]


def _errors(records: list[dict], method: str) -> list[float]:
    rows = [r for r in records if r["method"] == method]
    if method == "values":
        return [r["train_value_mse"] for r in rows]
    return [r["train_value_mse"] + r["train_grad_mse"] for r in rows]


@pytest.mark.parametrize("method", ["values", "sobolev"])
def test_a_tiny_run_lowers_the_training_loss(method: str) -> None:
    members = [(FUNCTIONS["styblinski_tang"], 0), (FUNCTIONS["mccormick"], 1)]
    test_sets = make_test_sets(RegressionConfig(**TINY), [t for t, _ in members])
    # Same seeds, so the same initial weights and points: one step is (almost) the start.
    start = train_group(RegressionConfig(steps=1, **TINY), members, 32, test_sets)
    end = train_group(
        RegressionConfig(steps=150, learning_rate=1e-2, final_learning_rate=1e-2, **TINY),
        members,
        32,
        test_sets,
    )
    for before, after in zip(_errors(start, method), _errors(end, method), strict=True):
        assert after < 0.5 * before


def test_a_member_trains_as_if_alone() -> None:
    # Minibatches (24 points, batches of 8) and the loss's mean over members: neither may couple them.
    cfg = RegressionConfig(steps=20, batch_size=8, **TINY)
    booth, ackley = FUNCTIONS["booth"], FUNCTIONS["ackley"]
    test_sets = make_test_sets(cfg, [booth, ackley])
    alone = train_group(cfg, [(booth, 2)], 24, test_sets)
    together = train_group(cfg, [(ackley, 0), (booth, 2), (ackley, 1)], 24, test_sets)
    for r in alone:
        twin = next(
            t for t in together if (t["function"], t["seed"], t["method"]) == ("booth", 2, r["method"])
        )
        for key in ("train_value_mse", "train_grad_mse", "test_value_mse", "test_grad_mse"):
            assert twin[key] == pytest.approx(r[key], rel=1e-3)


def test_claims_check_reads_the_margins() -> None:
    gains = []
    for fn in FUNCTIONS:
        for n in (20, 100, 10000):
            sob_better = fn != "ackley" or n == 10000
            gains.append({"function": fn, "size": n, "mean": 1.5 if sob_better else -1.0})
    claims = check_claims({"gains": gains}, list(FUNCTIONS.values()), [20, 100, 10000])
    assert claims["six_of_seven"] and claims["orders_of_magnitude_at_low_data"]
    assert claims["ackley_values_only_better_at_low_data"] and claims["ackley_sobolev_better_at_largest"]
    assert claims["margins"]["ackley"]["20"] == pytest.approx(-1.0)
    gains[3]["mean"] = -0.2  # Beale at N=20: Sobolev loses, so only five of the six win everywhere
    assert not check_claims({"gains": gains}, list(FUNCTIONS.values()), [20, 100, 10000])["six_of_seven"]


def _parser() -> argparse.ArgumentParser:
    return build_parser()  # the toolkit's own command line


def test_command_writes_table_figure_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = [
        "regression-benchmark",
        "--out",
        str(tmp_path),
        "--functions",
        "booth,ackley",
        "--sizes",
        "6,12",
        "--seeds",
        "2",
        "--steps",
        "3",
        "--hidden",
        "8",
        "--test-points",
        "32",
        "--threads",
        "1",
    ]
    args = _parser().parse_args(argv)
    result = args.func(args)
    assert result["runs"] == 2 * 2 * 2 * 2  # functions x sizes x seeds x methods
    for name in ("results.json", "table.md", "figure2_right.png"):
        assert (tmp_path / name).stat().st_size > 0
    record = json.loads((tmp_path / "results.json").read_text())
    assert len(record["groups"]) == 2 and len(record["runs"]) == 16
    assert all(math.isfinite(r["test_grad_mse"]) for r in record["runs"])
    assert "| booth | 6 |" in (tmp_path / "table.md").read_text()
    capsys.readouterr()

    # A second run with the same settings trains nothing more: training would raise, and the runs
    # and groups (their timings included) come back exactly as the first run wrote them.
    def no_training(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a finished size was trained again")

    monkeypatch.setattr(benchmark_module, "train_group", no_training)
    args = _parser().parse_args(argv)
    assert args.func(args)["runs"] == 16
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["runs"] == record["runs"] and again["groups"] == record["groups"]
    assert "resuming: 16 runs already in" in capsys.readouterr().err


def test_unknown_function_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown function") as error:
        RegressionConfig(functions="ackley,himmelblau")
    assert isinstance(error.value, ConfigError) and error.value.problems[0][0] == "functions"


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"sizes": "20,x"}, "sizes"),
        ({"sizes": "0,20"}, "sizes"),
        ({"steps": 0}, "steps"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"final_learning_rate": 1.0}, "final_learning_rate"),
    ],
)
def test_bad_settings_are_named_by_field(settings: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as error:
        RegressionConfig(**settings)  # type: ignore[arg-type]
    assert [name for name, _ in error.value.problems] == [field]
    assert str(error.value).startswith(f"invalid regression benchmark settings: {field} ")
