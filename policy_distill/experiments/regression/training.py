"""Training and scoring of the section 4.1 networks: values only against Sobolev, batched.

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
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from policy_distill.experiments.regression.config import RegressionConfig
from policy_distill.experiments.regression.functions import FUNCTIONS, RegressionTarget
from policy_distill.losses import gradient_distance, input_vjp, value_and_gradient_loss

METHODS = ("values", "sobolev")
"""``values``: MSE of values only; ``sobolev``: MSE of values + squared L2 of gradient errors."""


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


def log(message: str) -> None:
    """Print a progress line to stderr (stdout is left to the ``--json`` result)."""
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
            log(
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
