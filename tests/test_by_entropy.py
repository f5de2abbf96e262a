"""The grid's students measured per teacher-entropy bin (``policy_distill by-entropy``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from policy_distill.errors import UserError
from policy_distill.experiments.by_entropy import (
    ByEntropyConfig,
    bin_means,
    entropy_bin_edges,
    measure_by_entropy,
    read_bins,
)
from policy_distill.experiments.report import ReportConfig, make_report
from policy_distill.experiments.sweep import append_row, read_rows, reproduce


def report_page(sweep, table: Path, out: Path) -> str:
    """The report of a tiny sweep (fractions 0.3 and 0.6, seed 0) with the by-entropy ``table``."""
    make_report(
        ReportConfig(
            results=sweep.results, hparams=sweep.hparams, out=str(out), fractions="0.3,0.6", seeds="0",
            entropy_bins=str(table),
        )
    )  # fmt: skip
    return (out / "README.md").read_text()


@pytest.fixture
def one_run(tiny_sweep_config, write_hparams, tmp_path):
    """A tiny sweep of one KL-only run (fraction 0.6, seed 0) in ``tmp_path``: its config and row."""
    write_hparams(tmp_path / "hparams.json")
    sweep = tiny_sweep_config(tmp_path, fractions="0.6", methods="kl")
    reproduce(sweep)
    (row,) = read_rows(sweep.results)
    return sweep, row


def test_bins_hold_equal_shares_and_average_back_to_the_whole(rng: np.random.Generator) -> None:
    entropies = rng.uniform(0.0, 1.8, size=1000)
    values = {"kl": rng.exponential(0.1, size=1000), "action_error": (rng.random(1000) < 0.2).astype(float)}
    edges = entropy_bin_edges(entropies, 4)
    binned = bin_means(values, entropies, edges)
    assert binned["frames"] == [250, 250, 250, 250]  # distinct values: quantiles split them evenly
    for name, v in values.items():
        # Each bin's mean is the mean over exactly the frames between its edges.
        bounds = [-np.inf, *edges, np.inf]
        for b, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            inside = (entropies >= lo) & (entropies < hi)
            assert binned[name][b] == pytest.approx(v[inside].mean(), rel=1e-12)
        weighted = np.dot(binned["frames"], binned[name]) / sum(binned["frames"])
        assert weighted == pytest.approx(v.mean(), rel=1e-12)
    # A frame exactly on an edge belongs to the bin above it; an empty bin has no mean.
    on_edge = bin_means({"kl": np.array([1.0, 2.0])}, np.array([0.5, 0.5]), np.array([0.5, 0.9]))
    assert on_edge == {"frames": [0, 2, 0], "kl": [None, 1.5, None]}


def test_each_run_is_measured_once_and_gives_back_its_rows_kl(
    tiny_sweep_config, write_hparams, tmp_path, capsys
) -> None:
    write_hparams(tmp_path / "hparams.json")
    sweep = tiny_sweep_config(tmp_path)
    reproduce(sweep)
    table = tmp_path / "by_entropy.jsonl"
    cfg = ByEntropyConfig(results=sweep.results, hparams=sweep.hparams, bins=3, out=str(table))
    assert measure_by_entropy(cfg)["measured"] == 4
    results = {r["run_dir"]: r for r in read_rows(sweep.results)}
    bins = read_bins(table)
    assert len(bins) == 4
    for row in bins:
        source = results[row["run_dir"]]
        assert sum(row["frames"]) == min(64, source["test_frames"])  # the row's eval frames
        weighted = np.dot(row["frames"], row["kl"]) / sum(row["frames"])
        assert weighted == pytest.approx(source["final_kl"], rel=1e-5)
        error = np.dot(row["frames"], row["action_error"]) / sum(row["frames"])
        assert error == pytest.approx(source["final_action_error"], abs=1e-9)
    again = measure_by_entropy(cfg)
    assert (again["measured"], again["already_there"]) == (0, 4)
    assert len(read_rows(table)) == 4

    # The report shows a table per game, counting the seed pairs per bin (one seed, 2 fractions).
    page = report_page(sweep, table, tmp_path / "docs")
    assert "**By the teacher's entropy on the frame.**" in page
    counts = page.split("| Sobolev lower (seed pairs) | ")[1].split("\n")[0]
    assert counts.count(" | ") == 2  # three bins
    assert f"python -m policy_distill by-entropy --results {sweep.results}" in page
    assert f"--games pong --bins 3 --out {table}" in page and f"--entropy-bins {table}" in page


def test_the_report_counts_pairs_per_bin_and_compares_upper_with_lower_bins(
    tiny_sweep_config, write_hparams, tmp_path
) -> None:
    write_hparams(tmp_path / "hparams.json")
    sweep = tiny_sweep_config(tmp_path)
    reproduce(sweep)
    table = tmp_path / "bins.jsonl"
    # Hand-made bins for the sweep's runs: KL only 1.0 in every bin; Sobolev equal in the lowest bin,
    # 10% lower in the next, half in the upper two, so every pair gains more on the upper half.
    sobolev_kl = {0.3: [1.0, 0.9, 0.5, 0.5], 0.6: [1.0, 0.9, 0.6, 0.4]}
    for row in read_rows(sweep.results):
        kl = [1.0] * 4 if row["method"] == "kl" else sobolev_kl[row["train_fraction"]]
        append_row(
            table,
            {
                "format": "policy-distill/by-entropy-v1",
                **{k: row[k] for k in ("game", "method", "train_fraction", "seed", "run_dir", "finished_at")},
                "bin_edges": [0.1, 0.2, 0.3],
                "frames": [10, 10, 10, 10],
                "kl": kl,
                "action_error": [0.1] * 4,
            },
        )
    page = report_page(sweep, table, tmp_path / "docs")
    assert "| 0.6 | 1 → 1 (+0.0%) | 1 → 0.9 (+10.0%) | 1 → 0.6 (+40.0%) | 1 → 0.4 (+60.0%) |" in page
    # The lowest bin ties in both pairs (dropped), the others favour Sobolev twice: p = 2 x 1/4.
    assert "| Sobolev lower (seed pairs) | n/a | 2 of 2 (p 0.5) | 2 of 2 (p 0.5) | 2 of 2 (p 0.5) |" in page
    assert (
        "larger on the upper 2 (higher-entropy) bins than on the lower 2: in 2 of 2 seed pairs, smaller in 0"
        in page
    )


def test_a_checkpoint_that_is_not_the_rows_student_is_refused(one_run, tmp_path) -> None:
    sweep, row = one_run
    cfg = ByEntropyConfig(results=sweep.results, hparams=sweep.hparams, out=str(tmp_path / "bins.jsonl"))

    # A later row for the same cell whose KL its checkpoint does not give.
    append_row(sweep.results, dict(row, final_kl=row["final_kl"] * 1.01, finished_at="later"))
    with pytest.raises(UserError, match=r"latest.pt gives held-out KL .* not the row's student"):
        measure_by_entropy(cfg)

    # A run directory reused: its latest.pt is no longer at the row's last step.
    latest = Path(row["run_dir"]) / "latest.pt"
    record = torch.load(latest, weights_only=True)
    torch.save(dict(record, step=row["steps"] + 1), latest)
    with pytest.raises(UserError, match=r"is at step 3, not the row's last step 2"):
        measure_by_entropy(cfg)
    latest.unlink()
    with pytest.raises(
        UserError, match=r"no .*latest.pt: the run of this results row is not on this machine"
    ):
        measure_by_entropy(cfg)
    assert not (tmp_path / "bins.jsonl").exists()  # nothing half-written


def test_tables_it_cannot_measure_are_refused_before_any_work(one_run, tmp_path) -> None:
    sweep, row = one_run
    out = tmp_path / "bins.jsonl"
    measure_by_entropy(ByEntropyConfig(results=sweep.results, hparams=sweep.hparams, bins=3, out=str(out)))
    with pytest.raises(UserError, match=r"holds rows of 3 bins, not `bins` 4: pass that, or another `out`"):
        measure_by_entropy(
            ByEntropyConfig(results=sweep.results, hparams=sweep.hparams, bins=4, out=str(out))
        )
    search = tmp_path / "search.jsonl"  # a tuning table: validation split rows
    append_row(search, dict(row, validation_fraction=0.1))
    with pytest.raises(
        UserError, match="was measured on a validation split or test_data: by-entropy measures"
    ):
        measure_by_entropy(ByEntropyConfig(results=str(search), hparams=sweep.hparams, out=str(out)))
    bare = tmp_path / "bare.jsonl"
    append_row(bare, {k: v for k, v in row.items() if k != "eval_frames"})
    with pytest.raises(UserError, match="lacks eval_frames"):
        measure_by_entropy(ByEntropyConfig(results=str(bare), hparams=sweep.hparams, out=str(out)))
    teachers_only = tmp_path / "teachers.jsonl"
    append_row(teachers_only, {"game": "pong", "method": "teacher", "teacher_sha256": "a" * 64})
    with pytest.raises(UserError, match="no grid rows in"):
        measure_by_entropy(ByEntropyConfig(results=str(teachers_only), hparams=sweep.hparams, out=str(out)))


def test_bad_settings_are_refused_in_their_own_terms(tmp_path) -> None:
    with pytest.raises(UserError, match="bins"):
        ByEntropyConfig(bins=1)
    with pytest.raises(UserError, match="no results table at"):
        measure_by_entropy(ByEntropyConfig(results=str(tmp_path / "none.jsonl")))
    assert json.dumps(ByEntropyConfig().__dict__)  # plain values: printable by the CLI
