"""The Markdown report of the section 4.1 sweep (``table.md``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from policy_distill.experiments.regression.functions import RegressionTarget
from policy_distill.experiments.regression.statistics import cell


def _pm(stats: dict[str, float]) -> str:
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def format_table(
    summary: dict[str, Any],
    claims: dict[str, Any],
    targets: Sequence[RegressionTarget],
    sizes: Sequence[int],
    seeds: int,
) -> str:
    """Markdown: the log10 test MSE table, the claims check and the values-only relative errors."""
    lines = [
        f"log10 of test MSE in the functions' original units; mean ± sample std over {seeds} seeds.",
        "Gradient MSE is the mean over test points of ||grad f - grad m||_2^2.",
        "",
        "| function | N | value: values only | value: Sobolev | gradient: values only | gradient: Sobolev |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for t in targets:
        for n in sizes:
            v, s = cell(summary, t.name, n, "values"), cell(summary, t.name, n, "sobolev")
            if not (v and s):
                continue
            lines.append(
                f"| {t.name} | {n} | {_pm(v['log10_test_value_mse'])} | {_pm(s['log10_test_value_mse'])} | "
                f"{_pm(v['log10_test_grad_mse'])} | {_pm(s['log10_test_grad_mse'])} |"
            )
    lines += [
        "",
        "Sobolev's gain on test value MSE, log10(values only) - log10(Sobolev) paired by seed: "
        "mean ± sample std (seeds where Sobolev is lower):",
        "",
        "| function | " + " | ".join(f"N={n}" for n in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    gains = {(g["function"], g["size"]): g for g in summary["gains"]}
    for t in targets:
        row = [gains.get((t.name, n)) for n in sizes]
        cells = [
            f"{g['mean']:+.2f} ± {g['std']:.2f} ({g['sobolev_lower']}/{g['seeds']})" if g else "" for g in row
        ]
        lines.append(f"| {t.name} | " + " | ".join(cells) + " |")
    median = claims["median_low_data_margin_non_ackley"]
    lines += [
        "",
        f"- Sobolev lower at every size on: {', '.join(claims['sobolev_wins_at_every_size']) or 'none'}"
        f" (six of seven, all but Ackley: {claims['six_of_seven']}).",
        f"- Median gain at low data (N in {claims['low_data_sizes']}, all functions but Ackley): "
        + (f"{median:.2f} orders of magnitude" if median is not None else "n/a")
        + f" (at least one: {claims['orders_of_magnitude_at_low_data']}).",
    ]
    if "ackley_values_only_better_at_low_data" in claims:
        lines.append(
            f"- Ackley: values only better at low data: {claims['ackley_values_only_better_at_low_data']}; "
            f"Sobolev better at N={max(sizes)}: {claims['ackley_sobolev_better_at_largest']}."
        )
    lines += [
        "",
        "Values-only networks: relative test errors (MSE / variance of the target over the test set), log10:",
        "",
        "| function | N | relative value MSE | relative gradient MSE | gap (orders of magnitude) |",
        "|---|---:|---:|---:|---:|",
    ]
    for t in targets:
        for n in sizes:
            v = cell(summary, t.name, n, "values")
            if v:
                rv, rg = v["log10_relative_value_mse"]["mean"], v["log10_relative_grad_mse"]["mean"]
                lines.append(f"| {t.name} | {n} | {rv:.2f} | {rg:.2f} | {rg - rv:+.2f} |")
    return "\n".join(lines) + "\n"
