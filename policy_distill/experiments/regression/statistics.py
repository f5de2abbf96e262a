"""Statistics of the section 4.1 runs over seeds, and the check of the paper's claims.

Errors are compared in log10 (orders of magnitude): per cell (function, size, method) the mean
and sample std over seeds, and per (function, size) Sobolev's gain over values only, paired by
seed (the two networks of a seed share its training points and initial weights).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from policy_distill.experiments.regression.functions import RegressionTarget
from policy_distill.experiments.regression.training import METHODS


def _stats(values: Sequence[float]) -> dict[str, float]:
    """Mean and spread of log10 of per-seed errors (sample std, 0 for a single seed).

    Errors are floored at 1e-30: a values-only network can fit 20 training values exactly in
    float32, and log10(0) would turn the statistics into NaN.
    """
    logs = np.log10(np.maximum(np.asarray(values, dtype=np.float64), 1e-30))
    std = float(logs.std(ddof=1)) if len(logs) > 1 else 0.0
    return {"mean": float(logs.mean()), "std": std, "min": float(logs.min()), "max": float(logs.max())}


def summarise(
    records: Sequence[dict[str, Any]],
    targets: Sequence[RegressionTarget],
    sizes: Sequence[int],
    test_sets: dict[str, tuple[Tensor, Tensor, Tensor]],
) -> dict[str, Any]:
    """Per (function, size, method): log10 test errors over seeds, and relative errors; per
    (function, size): Sobolev's paired gain.

    Relative errors divide an MSE by the test set's variance of the target (of values; of
    gradients, summed over both coordinates): 1 means no better than predicting the mean.
    The gain of a seed is log10(values-only test value MSE) - log10(Sobolev test value MSE) for
    the two networks that share that seed's points and initial weights: orders of magnitude.
    """
    cells, gains = [], []
    for t in targets:
        _, ty, tdy = test_sets[t.name]
        value_var = float(ty.double().var())
        grad_var = float(tdy.double().var(0).sum())
        for n in sizes:
            for m in METHODS:
                rows = [r for r in records if r["function"] == t.name and r["size"] == n and r["method"] == m]
                if not rows:
                    continue
                val = [r["test_value_mse"] for r in rows]
                grad = [r["test_grad_mse"] for r in rows]
                cells.append(
                    {
                        "function": t.name,
                        "size": n,
                        "method": m,
                        "seeds": len(rows),
                        "log10_test_value_mse": _stats(val),
                        "log10_test_grad_mse": _stats(grad),
                        "log10_relative_value_mse": _stats([v / value_var for v in val]),
                        "log10_relative_grad_mse": _stats([g / grad_var for g in grad]),
                        "log10_train_value_mse": _stats([r["train_value_mse"] for r in rows]),
                        "log10_train_grad_mse": _stats([r["train_grad_mse"] for r in rows]),
                        "test_value_variance": value_var,
                        "test_grad_variance": grad_var,
                    }
                )
            by_seed = {
                (r["seed"], r["method"]): r["test_value_mse"]
                for r in records
                if r["function"] == t.name and r["size"] == n
            }
            paired = [
                math.log10(by_seed[seed, "values"]) - math.log10(by_seed[seed, "sobolev"])
                for seed, method in sorted(by_seed)
                if method == "values" and (seed, "sobolev") in by_seed
            ]
            if paired:
                gains.append(
                    {
                        "function": t.name,
                        "size": n,
                        "mean": float(np.mean(paired)),
                        "std": float(np.std(paired, ddof=1)) if len(paired) > 1 else 0.0,
                        "sobolev_lower": sum(g > 0 for g in paired),
                        "seeds": len(paired),
                    }
                )
    return {"cells": cells, "gains": gains}


def cell(summary: dict[str, Any], fn: str, n: int, m: str) -> dict[str, Any] | None:
    """The summary's cell for function ``fn``, training size ``n`` and method ``m``, if it has one."""
    for c in summary["cells"]:
        if (c["function"], c["size"], c["method"]) == (fn, n, m):
            return c
    return None


def check_claims(
    summary: dict[str, Any], targets: Sequence[RegressionTarget], sizes: Sequence[int]
) -> dict[str, Any]:
    """The paper's section 4.1 claims, judged on the mean over seeds of Sobolev's paired gain.

    A gain is log10(values-only test value MSE) - log10(Sobolev test value MSE): orders of
    magnitude, positive where Sobolev is lower (see :func:`summarise`).
    """
    margins: dict[str, dict[int, float]] = {}
    for g in summary["gains"]:
        if g["function"] in {t.name for t in targets} and g["size"] in sizes:
            margins.setdefault(g["function"], {})[g["size"]] = g["mean"]
    low = [n for n in sizes if n < max(sizes)] or list(sizes)
    others = [f for f in margins if f != "ackley"]
    wins_everywhere = [f for f, m in margins.items() if all(x > 0 for x in m.values())]
    low_margins = [margins[f][n] for f in others for n in low if n in margins[f]]
    claims: dict[str, Any] = {"margins": {f: {str(n): m for n, m in ms.items()} for f, ms in margins.items()}}
    claims["sobolev_wins_at_every_size"] = wins_everywhere
    claims["six_of_seven"] = len(margins) == 7 and sorted(wins_everywhere) == sorted(others)
    claims["low_data_sizes"] = low
    claims["median_low_data_margin_non_ackley"] = float(np.median(low_margins)) if low_margins else None
    claims["orders_of_magnitude_at_low_data"] = bool(low_margins) and float(np.median(low_margins)) >= 1.0
    if "ackley" in margins:
        ack = margins["ackley"]
        claims["ackley_values_only_better_at_low_data"] = all(ack[n] < 0 for n in low if n in ack)
        claims["ackley_sobolev_better_at_largest"] = ack.get(max(sizes), 0.0) > 0
    return claims
