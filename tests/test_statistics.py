"""Intervals and tests over seeds (policy_distill/experiments/statistics.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from policy_distill.experiments.statistics import (
    fmt,
    interval,
    sign_test_p,
    sign_test_two_sided,
    significant,
    t_quantile_975,
)


def t_quantile_numerically(df: int) -> float:
    """t(0.975, df) by bisection on the CDF, integrating the density with the trapezoid rule."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(q: float) -> float:
        t = np.linspace(0.0, q, 400_001)
        pdf = np.exp(log_c - (df + 1) / 2 * np.log1p(t**2 / df))
        return 0.5 + float(np.sum((pdf[1:] + pdf[:-1]) / 2) * (t[1] - t[0]))

    lo, hi = 1.0, 20.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < 0.975 else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("df", [1, 2, 3, 5, 10, 30, 31, 60])
def test_t_quantiles_agree_with_numerical_integration(df: int) -> None:
    assert t_quantile_975(df) == pytest.approx(t_quantile_numerically(df), abs=2e-4)


def test_interval_is_mean_plus_minus_t_times_standard_error() -> None:
    iv = interval([0.1, 0.2, 0.3])  # mean 0.2, sample std 0.1, t(0.975, 2) = 4.3027
    assert iv.n == 3 and iv.mean == pytest.approx(0.2)
    assert iv.half_width == pytest.approx(4.3027 * 0.1 / math.sqrt(3), rel=1e-9)
    single = interval([0.7])
    assert single.half_width is None and single.mean == 0.7


@pytest.mark.parametrize("total", [1, 2, 5, 6, 9])
def test_sign_test_p_is_the_share_of_coin_flip_outcomes_with_as_many_wins(total: int) -> None:
    outcomes = list(itertools.product((0, 1), repeat=total))
    for favouring in range(total + 1):
        share = sum(sum(o) >= favouring for o in outcomes) / len(outcomes)
        assert sign_test_p(favouring, total) == pytest.approx(share)
    with pytest.raises(ValueError, match="favouring must be in"):
        sign_test_p(total + 1, total)
    for favouring in range(total + 1):  # two-sided: a split at least as uneven, either way
        uneven = abs(2 * favouring - total)
        share = sum(abs(2 * sum(o) - total) >= uneven for o in outcomes) / len(outcomes)
        assert sign_test_two_sided(favouring, total) == pytest.approx(share)


def test_numbers_are_written_without_exponents_from_1_up() -> None:
    assert significant(412.9, 2) == "410" and significant(12345.0, 3) == "12300"
    assert significant(0.0418, 3) == "0.0418" and significant(2.5e-05, 2) == "2.5e-05"
    assert fmt(interval([898.5, 961.25, 1100.0]), 3) == "987 ± 260"
