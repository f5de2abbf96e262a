"""Sobolev regression benchmark: section 4.1 and Figure 2 (right) of Czarnecki et al. 2017.

For every function x training size x seed, two ``2 -> 256 -> 256 -> 1`` ReLU MLPs start from the
same weights and see the same training points: one is trained on values only (MSE), the other
with the Sobolev loss (MSE of values + squared L2 error of the input gradient). Both objectives
are :func:`policy_distill.losses.value_and_gradient_loss` (``dy=None`` for values only), the code
the Atari distiller's Sobolev term is built from. Errors are measured on uniform test points in
the functions' original units.

Speed: all functions and seeds of one training size train together as one batched model (E
members with stacked weights run by ``torch.baddbmm``), so the per-step Python, autograd and
optimiser overhead is paid once per size rather than once per network. Member e's rows only
reach member e's weights, so the batched loss (a mean over all E members' points) gives each
member its own loss gradient scaled by 1/E, which Adam's update ignores; a member therefore trains
as it would alone (``tests/test_regression.py`` checks this).

Outputs in ``out``: ``results.json`` (settings, hardware, every run, the summary), ``table.md``
and ``figure2_right.png``. Finished training sizes are kept in ``results.json``, so running the
same command again after an interruption resumes.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from policy_distill.checkpoint import (
    atomic_write_bytes,
    atomic_write_json,
    hardware_description,
    package_versions,
)
from policy_distill.config_args import add_config_arguments, config_from_args
from policy_distill.errors import UserError
from policy_distill.losses import gradient_distance, input_vjp, value_and_gradient_loss
from policy_distill.regression.functions import FUNCTIONS, RegressionTarget

RESULTS_FORMAT = "policy-distill/regression-benchmark"
METHODS = ("values", "sobolev")
"""``values``: MSE of values only; ``sobolev``: MSE of values + squared L2 of gradient errors."""
LABELS = {"values": "values only", "sobolev": "Sobolev"}


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

    def training_settings(self) -> dict[str, Any]:
        """The fields that change a single run's result (not which runs are made, nor threads)."""
        skip = {"functions", "sizes", "seeds", "threads", "resume"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}

    def function_list(self) -> list[RegressionTarget]:
        """The selected functions, in the paper's order.

        Raises:
            UserError: for an unknown name.
        """
        if self.functions.strip() == "all":
            return list(FUNCTIONS.values())
        names = [n.strip().lower().replace("-", "_") for n in self.functions.split(",") if n.strip()]
        unknown = [n for n in names if n not in FUNCTIONS]
        if unknown or not names:
            raise UserError(
                f"unknown function(s) {unknown or self.functions!r}; known: {', '.join(FUNCTIONS)}"
            )
        return [f for name, f in FUNCTIONS.items() if name in names]

    def size_list(self) -> list[int]:
        """The training-set sizes, ascending.

        Raises:
            UserError: for a size that is not a positive integer.
        """
        try:
            sizes = sorted({int(s) for s in self.sizes.split(",") if s.strip()})
        except ValueError:
            raise UserError(f"--sizes must be comma-separated integers, got {self.sizes!r}") from None
        if not sizes or sizes[0] < 1:
            raise UserError(f"--sizes must be positive integers, got {self.sizes!r}")
        return sizes

    def check(self) -> None:
        """Raise UserError for settings that cannot run."""
        self.function_list()
        self.size_list()
        for name in ("seeds", "hidden", "steps", "batch_size", "test_points", "threads"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 <= self.final_learning_rate <= self.learning_rate or self.learning_rate <= 0:
            raise UserError("need 0 <= --final-learning-rate <= --learning-rate and --learning-rate > 0")

    def lr_at(self, step: int) -> float:
        """Adam step size at ``step`` (0-based): a half cosine from the first to the final rate."""
        progress = step / max(1, self.steps - 1)
        span = self.learning_rate - self.final_learning_rate
        return self.final_learning_rate + span * 0.5 * (1 + math.cos(math.pi * progress))


def member_seeds(target: RegressionTarget, seed: int, size: int) -> tuple[int, int, int]:
    """Independent (data, init, batch-order) seeds for one network, whatever it is batched with."""
    index = list(FUNCTIONS).index(target.name)
    data, init, order = np.random.SeedSequence([seed, index, size]).generate_state(3)
    return int(data), int(init), int(order)


def labelled_points(target: RegressionTarget, n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` uniform points with exact values and gradients, computed in float64, kept float32.

    Returns:
        ``(x [n, 2], y [n], dy [n, 2])``.
    """
    x = target.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.float(), target.value(x).float(), target.gradient(x).float()


class EnsembleMLP(nn.Module):
    """E independent ``2 -> hidden -> hidden -> 1`` ReLU MLPs evaluated as one batched model.

    Member e rescales its input from its function's domain to [-1, 1]^2 and its output by its
    training targets' mean and standard deviation. Both maps are fixed and affine, so each member
    is still a two-hidden-layer ReLU MLP of x and the losses stay in the paper's original units;
    the rescaling only keeps the default initialisation and Adam's step size sensible for
    functions whose values span 10 (Ackley) to 10^5 (Beale).
    """

    def __init__(
        self,
        init_seeds: Sequence[int],
        hidden: int,
        low: Tensor,
        high: Tensor,
        y_mean: Tensor,
        y_std: Tensor,
    ) -> None:
        """
        Args:
            init_seeds: E seeds, one per member's initial weights.
            hidden: Units per hidden layer.
            low, high: ``[E, 2]`` corners of each member's domain.
            y_mean, y_std: ``[E]`` output scale of each member (its training targets' statistics).
        """
        super().__init__()
        self.members = len(init_seeds)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in ((2, hidden), (hidden, hidden), (hidden, 1)):
            self.weights.append(nn.Parameter(torch.empty(self.members, fan_in, fan_out)))
            self.biases.append(nn.Parameter(torch.empty(self.members, 1, fan_out)))
        with torch.no_grad():
            for e, seed in enumerate(init_seeds):
                gen = torch.Generator().manual_seed(seed)
                for w, b in zip(self.weights, self.biases, strict=True):
                    # nn.Linear's default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
                    bound = 1.0 / math.sqrt(w.shape[1])
                    w[e].uniform_(-bound, bound, generator=gen)
                    b[e].uniform_(-bound, bound, generator=gen)
        self.register_buffer("center", ((low + high) / 2)[:, None, :].float())
        self.register_buffer("inv_half_width", (2 / (high - low))[:, None, :].float())
        self.register_buffer("y_mean", y_mean[:, None].float())
        self.register_buffer("y_std", y_std[:, None].float())

    def forward(self, x: Tensor) -> Tensor:
        """``[E * N, 2]`` (rows e*N .. e*N+N-1 belong to member e) -> ``[E * N]`` predictions."""
        h = (x.view(self.members, -1, 2) - self.center) * self.inv_half_width
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = torch.relu(h)
        return (self.y_mean + self.y_std * h.squeeze(-1)).reshape(-1)


def evaluate(model: EnsembleMLP, x: Tensor, y: Tensor, dy: Tensor) -> tuple[Tensor, Tensor]:
    """Per-member mean squared errors of values and of input gradients, in original units.

    The gradient error of a point is ||grad f(x) - grad_x m(x)||_2^2 (summed over both
    coordinates), as in the training loss.

    Args:
        x: ``[E, T, 2]`` points, y: ``[E, T]`` values, dy: ``[E, T, 2]`` gradients.

    Returns:
        ``(value_mse [E], grad_mse [E])`` float64.
    """
    members, points = y.shape
    x_in = x.reshape(-1, 2).detach().requires_grad_(True)
    with torch.enable_grad():
        pred = model(x_in)
        ones = torch.ones_like(pred)[:, None]
        grad = input_vjp(pred[:, None], x_in, ones, create_graph=False)
    value_err = (pred.detach().double() - y.reshape(-1).double()).pow(2)
    grad_err = gradient_distance(dy.reshape(-1, 2).double(), grad.double(), "squared_l2")
    return value_err.view(members, points).mean(1), grad_err.view(members, points).mean(1)


def _adam(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Adam:
    params = list(params)
    try:
        # The fused kernel does the whole update in one pass: at 20 points per network the
        # optimiser, not the matmuls, dominates a step, and fused measured about 2x faster here.
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def minibatches(
    x: Tensor, y: Tensor, dy: Tensor, batch_size: int, orders: Sequence[torch.Generator]
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Endless minibatches, each network walking its own random order of its own points.

    Every epoch each network draws a fresh permutation (sampling without replacement) and the
    ``size % batch_size`` points left over are skipped for that epoch. A set no larger than
    ``batch_size`` is returned whole at every step (full-batch training).

    Args:
        x: ``[E, n, 2]``, y: ``[E, n]``, dy: ``[E, n, 2]`` the training sets.
        orders: E generators, one per network.

    Yields:
        ``(x [E, B, 2], y [E, B], dy [E, B, 2])`` with B = min(n, batch_size).
    """
    size = x.shape[1]
    if size <= batch_size:
        while True:
            yield x, y, dy
    while True:
        perm = torch.stack([torch.randperm(size, generator=g) for g in orders])  # [E, n]
        for k in range(size // batch_size):
            idx = perm[:, k * batch_size : (k + 1) * batch_size]
            pairs = idx[..., None].expand(-1, -1, 2)
            yield torch.gather(x, 1, pairs), torch.gather(y, 1, idx), torch.gather(dy, 1, pairs)


def train_group(
    cfg: RegressionConfig,
    members: Sequence[tuple[RegressionTarget, int]],
    size: int,
    test_sets: dict[str, tuple[Tensor, Tensor, Tensor]],
) -> list[dict[str, Any]]:
    """Train both methods for every (function, seed) member at one training-set size.

    Args:
        members: E pairs (function, seed).
        size: Training points per network.
        test_sets: ``{name: (x [T, 2], y [T], dy [T, 2])}`` for every function in ``members``.

    Returns:
        2E records (one per member and method) with train and test errors.
    """
    seeds = [member_seeds(t, s, size) for t, s in members]
    data = [labelled_points(t, size, ds) for (t, _), (ds, _, _) in zip(members, seeds, strict=True)]
    x = torch.stack([d[0] for d in data])  # [E, n, 2]
    y = torch.stack([d[1] for d in data])  # [E, n]
    dy = torch.stack([d[2] for d in data])  # [E, n, 2]
    low = torch.tensor([t.low for t, _ in members], dtype=torch.float64)
    high = torch.tensor([t.high for t, _ in members], dtype=torch.float64)
    y64 = y.double()
    # A constant target (possible only for tiny sets) would give std 0; 1 keeps the map valid.
    y_std = y64.std(1, correction=0)
    y_std = torch.where(y_std > 0, y_std, torch.ones_like(y_std))
    nets = {"values": EnsembleMLP([s[1] for s in seeds], cfg.hidden, low, high, y64.mean(1), y_std)}
    nets["sobolev"] = copy.deepcopy(nets["values"])  # identical initial weights: a paired comparison
    opt = _adam([p for net in nets.values() for p in net.parameters()], cfg.learning_rate)
    members_n = len(members)
    orders = [torch.Generator().manual_seed(s[2]) for s in seeds]
    batches = minibatches(x, y, dy, cfg.batch_size, orders)
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        xb, yb, dyb = next(batches)
        flat_x, flat_y, flat_dy = xb.reshape(-1, 2), yb.reshape(-1), dyb.reshape(-1, 2)
        loss_v, _, _ = value_and_gradient_loss(nets["values"], flat_x, flat_y, None)
        loss_s, val_s, grad_s = value_and_gradient_loss(nets["sobolev"], flat_x, flat_y, flat_dy)
        opt.zero_grad(set_to_none=True)
        (loss_v + loss_s).backward()
        opt.step()
        if step % max(1, cfg.steps // 5) == 0 or step == cfg.steps - 1:
            # Means over all E members, so dominated by the functions with the largest values.
            _log(
                f"  n={size} step {step + 1}/{cfg.steps} lr {cfg.lr_at(step):.1e}: "
                f"values-only mse {loss_v.item():.3e}; sobolev value mse {val_s.item():.3e} "
                f"grad mse {grad_s.item():.3e}"
            )
    test_x = torch.stack([test_sets[t.name][0] for t, _ in members])
    test_y = torch.stack([test_sets[t.name][1] for t, _ in members])
    test_dy = torch.stack([test_sets[t.name][2] for t, _ in members])
    records = []
    for method, net in nets.items():
        train_v, train_g = evaluate(net, x, y, dy)
        test_v, test_g = evaluate(net, test_x, test_y, test_dy)
        for e in range(members_n):
            target, seed = members[e]
            records.append(
                {
                    "function": target.name,
                    "size": size,
                    "seed": seed,
                    "method": method,
                    "train_value_mse": train_v[e].item(),
                    "train_grad_mse": train_g[e].item(),
                    "test_value_mse": test_v[e].item(),
                    "test_grad_mse": test_g[e].item(),
                }
            )
    return records


def make_test_sets(
    cfg: RegressionConfig, targets: Iterable[RegressionTarget]
) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """One test set of ``cfg.test_points`` uniform points per function."""
    out = {}
    for t in targets:
        seed = int(
            np.random.SeedSequence([cfg.test_seed, list(FUNCTIONS).index(t.name)]).generate_state(1)[0]
        )
        out[t.name] = labelled_points(t, cfg.test_points, seed)
    return out


def _key(r: dict[str, Any]) -> tuple[str, int, int, str]:
    return r["function"], r["size"], r["seed"], r["method"]


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


def _cell(summary: dict[str, Any], fn: str, n: int, m: str) -> dict[str, Any] | None:
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
            v, s = _cell(summary, t.name, n, "values"), _cell(summary, t.name, n, "sobolev")
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
            v = _cell(summary, t.name, n, "values")
            if v:
                rv, rg = v["log10_relative_value_mse"]["mean"], v["log10_relative_grad_mse"]["mean"]
                lines.append(f"| {t.name} | {n} | {rv:.2f} | {rg:.2f} | {rg - rv:+.2f} |")
    return "\n".join(lines) + "\n"


def plot_figure(
    summary: dict[str, Any],
    targets: Sequence[RegressionTarget],
    sizes: Sequence[int],
    records: Sequence[dict[str, Any]],
) -> bytes:
    """Figure 2 (right) of the paper, plus a gradient row: PNG bytes.

    One panel per function; per training size, a bar per method (mean log10 test MSE over
    seeds, error bar one sample std, dots the seeds). Top row values, bottom row gradients.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"values": "#9e9e9e", "sobolev": "#1f77b4"}
    fig, axes = plt.subplots(2, len(targets), figsize=(2.3 * len(targets), 5.6), squeeze=False)
    for row, (kind, label) in enumerate((("value", "values"), ("grad", "gradients"))):
        for col, t in enumerate(targets):
            ax = axes[row][col]
            cells = [c for c in summary["cells"] if c["function"] == t.name]
            if not cells:
                continue
            stat = f"log10_test_{kind}_mse"
            floor = math.floor(min(c[stat]["min"] for c in cells)) - 0.5
            for i, n in enumerate(sizes):
                for j, m in enumerate(METHODS):
                    c = _cell(summary, t.name, n, m)
                    if c is None:
                        continue
                    pos = i + (j - 0.5) * 0.4
                    ax.bar(
                        pos,
                        c[stat]["mean"] - floor,
                        bottom=floor,
                        width=0.38,
                        color=colours[m],
                        yerr=c[stat]["std"],
                        capsize=2,
                        label=LABELS[m] if (i, col, row) == (0, 0, 0) else None,
                    )
                    pts = [
                        math.log10(r[f"test_{kind}_mse"])
                        for r in records
                        if (r["function"], r["size"], r["method"]) == (t.name, n, m)
                    ]
                    ax.plot([pos] * len(pts), pts, "k.", markersize=3)
            ax.set_xticks(range(len(sizes)), [str(n) for n in sizes])
            ax.set_ylim(bottom=floor)
            ax.grid(axis="y", alpha=0.3)
            if row == 0:
                ax.set_title(t.name.replace("_", "-"))
            if col == 0:
                ax.set_ylabel(f"log10 test MSE ({label})")
            if row == 1:
                ax.set_xlabel("training points")
    fig.legend(loc="upper right", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def run_benchmark(cfg: RegressionConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run (or resume) the sweep and write results.json, table.md and figure2_right.png.

    Returns:
        A summary: output paths, number of runs, wall time and the claims check.
    """
    cfg.check()
    out = Path(out_dir)
    torch.set_num_threads(cfg.threads)
    targets, sizes = cfg.function_list(), cfg.size_list()
    path = out / "results.json"
    records: dict[tuple[str, int, int, str], dict[str, Any]] = {}
    groups: list[dict[str, Any]] = []
    if cfg.resume and path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("format") == RESULTS_FORMAT and old.get("training_settings") == cfg.training_settings():
            records = {_key(r): r for r in old.get("runs", [])}
            groups = list(old.get("groups", []))
            _log(f"resuming: {len(records)} runs already in {path}")
        elif old:
            _log(f"{path} was written with other settings; starting afresh")
    test_sets = make_test_sets(cfg, targets)

    def save(extra: dict[str, Any]) -> None:
        atomic_write_json(
            path,
            {
                "format": RESULTS_FORMAT,
                "config": dataclasses.asdict(cfg),
                "training_settings": cfg.training_settings(),
                "hardware": hardware_description(),
                "torch_threads": torch.get_num_threads(),
                "versions": package_versions(),
                "groups": groups,
                "train_seconds": sum(g["seconds"] for g in groups),
                "runs": sorted(records.values(), key=_key),
                **extra,
            },
        )

    for n in sizes:
        todo = [
            (t, s)
            for t in targets
            for s in range(cfg.seeds)
            if any((t.name, n, s, m) not in records for m in METHODS)
        ]
        if not todo:
            continue
        _log(f"training size {n}: {len(todo)} networks per method, batched")
        start = time.perf_counter()
        for r in train_group(cfg, todo, n, test_sets):
            records[_key(r)] = r
        seconds = time.perf_counter() - start
        groups.append({"size": n, "networks_per_method": len(todo), "seconds": seconds})
        _log(f"  size {n} done in {seconds:.0f} s")
        save({})  # after every size, so an interruption loses at most one size

    chosen = [
        r
        for r in records.values()
        if r["function"] in {t.name for t in targets} and r["size"] in sizes and r["seed"] < cfg.seeds
    ]
    summary = summarise(chosen, targets, sizes, test_sets)
    claims = check_claims(summary, targets, sizes)
    table = format_table(summary, claims, targets, sizes, cfg.seeds)
    atomic_write_bytes(out / "table.md", table.encode())
    atomic_write_bytes(out / "figure2_right.png", plot_figure(summary, targets, sizes, chosen))
    save({"summary": summary, "claims": claims})
    _log(table)
    return {
        "results": str(path),
        "table": str(out / "table.md"),
        "figure": str(out / "figure2_right.png"),
        "runs": len(chosen),
        "train_seconds": round(sum(g["seconds"] for g in groups), 1),
        "claims": {k: v for k, v in claims.items() if k != "margins"},
    }


def cmd_regression_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    cfg = config_from_args(RegressionConfig, args)
    return run_benchmark(cfg, args.out)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``regression-benchmark`` subcommand to the toolkit's command line."""
    p = subparsers.add_parser(
        "regression-benchmark",
        help="the paper's section 4.1 regression benchmark (Figure 2 right), values only vs Sobolev",
    )
    add_config_arguments(p, RegressionConfig)
    p.add_argument(
        "--out",
        default="docs/regression",
        help="folder for results.json, table.md and figure2_right.png (default docs/regression)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    p.set_defaults(func=cmd_regression_benchmark)


if __name__ == "__main__":
    # Stand-alone entry point; the toolkit's CLI registers the same subcommand.
    _parser = argparse.ArgumentParser(prog="policy_distill.regression.benchmark")
    register(_parser.add_subparsers(dest="command", required=True))
    _args = _parser.parse_args()
    try:
        _result = _args.func(_args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if _args.json:
        print(json.dumps(_result, sort_keys=True))
