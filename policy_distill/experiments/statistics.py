"""Intervals and tests over seeds, for the reproduction's pages (report, estimator study).

Pure functions of numbers: the 95% Student-t interval of a mean over seeds (with its quantile
table), its text form, and the sign test across comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Two-sided 95% quantiles t(0.975, df) of Student's t distribution, df = 1..30 (standard
# tables, 4 decimals); tests/test_statistics.py checks them against a numerical integration.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """t(0.975, df): the table for df <= 30, beyond it the Cornish-Fisher expansion around the
    normal quantile (error below 1e-4 for df > 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Interval:
    """Mean over seeds and the half-width of its 95% t-interval (None for fewer than 2 seeds)."""

    n: int
    mean: float
    half_width: float | None
    values: tuple[float, ...]

    @property
    def low(self) -> float:
        return self.mean - (self.half_width or 0.0)

    @property
    def high(self) -> float:
        return self.mean + (self.half_width or 0.0)


def interval(values: Sequence[float]) -> Interval:
    """Mean ± t(0.975, n-1) * s / sqrt(n), s the sample standard deviation (ddof 1)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        raise ValueError("no values")
    if len(x) < 2:
        return Interval(1, float(x[0]), None, (float(x[0]),))
    half = t_quantile_975(len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    if half <= 1e-12 * abs(float(x.mean())):
        half = 0.0  # equal values: rounding noise, not spread
    return Interval(len(x), float(x.mean()), half, tuple(float(v) for v in x))


def significant(x: float, digits: int) -> str:
    """``x`` to ``digits`` significant digits, written without an exponent where |x| >= 1 (a
    score's spread of 412.9 reads 410, not 4.1e+02)."""
    text = f"{x:.{digits}g}"
    if "e" in text and abs(x) >= 1:
        text = f"{float(text):.0f}"
    return text


def fmt(iv: Interval | None, digits: int = 4) -> str:
    """``mean ± half-width`` for 2+ seeds, ``mean (1 seed)`` for one, ``waiting`` for none."""
    if iv is None:
        return "waiting"
    if iv.half_width is None:
        return f"{iv.mean:.{digits}g} (1 seed)"
    return f"{significant(iv.mean, digits)} ± {significant(iv.half_width, 2)}"


def sign_test_two_sided(favouring: int, total: int) -> float:
    """Two-sided sign test: the probability of a split at least as uneven as ``favouring`` of
    ``total`` when each comparison is a fair coin, min(1, 2 P(X >= max(k, n - k)))."""
    if total == 0:
        return 1.0
    return min(1.0, 2 * sign_test_p(max(favouring, total - favouring), total))


def sign_test_p(favouring: int, total: int) -> float:
    """One-sided sign test: the probability that ``favouring`` or more of ``total`` independent
    comparisons favour one side when each is a fair coin (no difference between the methods)."""
    if not 0 <= favouring <= total:
        raise ValueError(f"favouring must be in 0..{total}, got {favouring}")
    return sum(math.comb(total, k) for k in range(favouring, total + 1)) / 2**total
