"""The estimator study's decisions: alpha per estimator on validation, the default estimator."""

from __future__ import annotations

import json

import pytest

from policy_distill.errors import UserError
from policy_distill.experiments.estimators import (
    choose_alphas,
    choose_default,
    collapsed,
    matches_reference,
    summarise,
    time_ratios_from,
    tuning_rows,
)


def tuning_row(estimator: str, alpha: float, kl: float, step: int = 100) -> dict:
    return {
        "estimator": estimator, "alpha": alpha, "kl": kl, "step": step, "steps": 100,
        "action_error": 0.1, "grad_cosine": 0.5, "learning_rate": 1e-3, "run": "r",
    }  # fmt: skip


def test_alpha_is_chosen_per_estimator_by_validation_kl_of_finished_runs() -> None:
    rows = [
        tuning_row("vjp", 0.1, 0.05),
        tuning_row("vjp", 0.01, 0.03),
        tuning_row("fd", 0.01, 0.04),
        tuning_row("fd", 0.001, 0.02),
        tuning_row("fd", 0.1, 0.001, step=50),  # unfinished: not eligible
        tuning_row("kl", 0.0, 0.0001),  # the KL-only reference never is
    ]
    assert choose_alphas(rows) == {"fd": 0.001, "vjp": 0.01}


def grid_row(estimator: str, fraction: float, seed: int, kl: float) -> dict:
    return {
        "game": "pong", "method": "kl" if estimator == "kl" else "sobolev",
        "sobolev_estimator": "vjp" if estimator == "kl" else estimator, "train_fraction": fraction,
        "seed": seed, "learning_rate": 1e-3, "alpha": 0.0 if estimator == "kl" else 0.01,
        "steps": 100, "precision": "fp32", "final_kl": kl, "final_action_error": kl,
        "final_grad_cosine": 0.5,
    }  # fmt: skip


def grid(values: dict[str, dict[float, list[float]]]) -> list[dict]:
    return [
        grid_row(est, f, seed, kl)
        for est, per_fraction in values.items()
        for f, kls in per_fraction.items()
        for seed, kl in enumerate(kls)
    ]


def test_the_default_is_the_fastest_estimator_matching_the_papers_within_the_seed_spread() -> None:
    rows = grid(
        {
            "vjp": {0.1: [0.10, 0.12, 0.14], 0.8: [0.02, 0.021, 0.022]},
            "jvp": {0.1: [0.11, 0.12, 0.13], 0.8: [0.0205, 0.021, 0.0215]},  # within the spread
            "fd": {0.1: [0.11, 0.12, 0.13], 0.8: [0.03, 0.031, 0.032]},  # off at 0.8: 0.01 > sd 0.001
        }
    )
    summary = summarise(rows, "pong")
    assert matches_reference(summary, "jvp") is True
    assert matches_reference(summary, "fd") is False
    name, evidence = choose_default(summary, {"vjp": 6.0, "jvp": 4.0, "fd": 2.5})
    assert name == "jvp"  # fd is faster but does not match
    assert evidence["fd"] == {"matches_vjp": False, "time_ratio": 2.5}
    # Without a benchmark (no ratios) nothing is eligible and the paper's stays the default.
    assert choose_default(summary, {})[0] == "vjp"


def test_shared_direction_rows_are_their_own_estimator_with_their_own_time_ratio(tmp_path) -> None:
    """fd rows with samples_per_direction 4 are "fd-share4", apart from fd's one-direction rows
    (rows written before the field existed had one direction per sample); the benchmark's
    time_ratios_by_label gives each its ratio."""
    rows = grid({"vjp": {0.1: [0.10, 0.12, 0.14]}, "fd": {0.1: [0.20, 0.21, 0.22]}})
    rows += [{**r, "samples_per_direction": 4, "final_kl": r["final_kl"] - 0.09} for r in rows[3:]]
    summary = summarise(rows, "pong")
    assert {e for e, _ in summary} == {"vjp", "fd", "fd-share4"}
    assert summary[("fd", 0.1)]["kl"].mean == pytest.approx(0.21)
    assert summary[("fd-share4", 0.1)]["kl"].mean == pytest.approx(0.12)
    benchmark = tmp_path / "benchmark.json"
    by_label = {"vjp": 7.0, "fd": 3.1, "fd-share4": 2.7}
    line = json.dumps({"fd_time_ratio": 2.7, "time_ratios_by_label": by_label})
    benchmark.write_text(f"device: CPU\n{line}\n")
    ratios = time_ratios_from(benchmark)
    assert ratios == {"vjp": 7.0, "fd": 3.1, "fd-share4": 2.7}
    name, evidence = choose_default(summary, ratios)
    assert name == "fd-share4" and evidence["fd"]["matches_vjp"] is False


def test_one_seed_cannot_show_a_match() -> None:
    summary = summarise(grid({"vjp": {0.1: [0.1, 0.2]}, "fd": {0.1: [0.15]}}), "pong")
    assert matches_reference(summary, "fd") is None
    assert choose_default(summary, {"vjp": 6.0, "fd": 2.5})[0] == "vjp"


def test_the_alpha_search_refuses_runs_scored_on_the_test_part(tmp_path) -> None:
    import torch

    run = tmp_path / "sob-fd-alpha0.1"
    run.mkdir()
    torch.save(
        {"config": {"validation_fraction": 0.0, "alpha": 0.1}, "step": 1, "metrics": {}}, run / "latest.pt"
    )
    with pytest.raises(UserError, match="validation-fraction"):
        tuning_rows(tmp_path)
    with pytest.raises(UserError, match="no finished run"):
        tuning_rows(tmp_path / "empty")


def test_a_student_with_no_input_dependence_is_reported_as_collapsed() -> None:
    rows = grid({"vjp": {0.1: [0.03, 0.54]}})
    rows[1]["final_grad_cosine"] = 0.0002  # a constant policy
    assert [(r["seed"], r["final_kl"]) for r in collapsed(rows, "pong")] == [(1, 0.54)]


def test_centred_and_uncentred_rows_are_not_summarised_together() -> None:
    """A centred student is another initialisation: one file holds one kind, else a clear error."""
    rows = grid({"vjp": {0.1: [0.10, 0.12, 0.14]}, "fd": {0.1: [0.20, 0.21, 0.22]}})
    centred = [{**r, "centre_first_layer": True} for r in rows]
    assert summarise(centred, "pong")[("fd", 0.1)]["kl"].mean == pytest.approx(0.21)
    with pytest.raises(UserError, match="mix centred and uncentred first layers"):
        summarise(rows[:3] + centred[3:], "pong")
    wide = [{**r, "student_width": 2.0} for r in rows]
    assert summarise(wide, "pong")[("fd", 0.1)]["kl"].mean == pytest.approx(0.21)
    with pytest.raises(UserError, match="mix students of several widths"):
        summarise(rows[:3] + wide[3:], "pong")
