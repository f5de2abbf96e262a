"""The seven 2-D optimisation benchmarks of Sobolev Training's section 4.1, with exact gradients.

Definitions and domains are those of the paper's supplementary section 2 (Czarnecki et al. 2017),
copied term by term; note the paper's Styblinski-Tang carries the factor 0.5 and its Ackley uses
sqrt(0.5 (x^2 + y^2)). Each gradient is written out by hand (not taken by autograd) so that the
tests can check it against autograd of the formula.

Where a function is not differentiable (Ackley at the origin, Bukin on the ridge y = 0.01 x^2 and
on the line x = -10) the gradient is set to the one-sided value that ``torch.sign`` gives, 0 on
the kink itself; these sets have measure zero, so uniform samples hit them with probability 0.

Shapes: ``[N, 2]`` points (column 0 is x, column 1 is y) -> ``[N]`` values, ``[N, 2]`` gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

PointFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class RegressionTarget:
    """One benchmark function: formula, analytic gradient and the box it is sampled from."""

    name: str
    """Lower-case name used on the command line and in result files."""
    value: PointFn
    """``[N, 2] -> [N]``: the formula in torch (differentiable, any float dtype)."""
    gradient: PointFn
    """``[N, 2] -> [N, 2]``: the hand-derived gradient (d/dx, d/dy)."""
    low: tuple[float, float]
    """Lower corner of the domain (x, y)."""
    high: tuple[float, float]
    """Upper corner of the domain (x, y)."""

    def sample(self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> Tensor:
        """``[n, 2]`` points drawn uniformly from the domain."""
        low = torch.tensor(self.low, dtype=dtype)
        high = torch.tensor(self.high, dtype=dtype)
        return low + (high - low) * torch.rand((n, 2), generator=generator, dtype=dtype)


def _xy(p: Tensor) -> tuple[Tensor, Tensor]:
    return p[:, 0], p[:, 1]


def ackley(p: Tensor) -> Tensor:
    x, y = _xy(p)
    r = torch.sqrt(0.5 * (x**2 + y**2))
    waves = torch.exp(0.5 * (torch.cos(2 * math.pi * x) + torch.cos(2 * math.pi * y)))
    return -20 * torch.exp(-0.2 * r) - waves + math.e + 20


def ackley_grad(p: Tensor) -> Tensor:
    x, y = _xy(p)
    r = torch.sqrt(0.5 * (x**2 + y**2))
    waves = torch.exp(0.5 * (torch.cos(2 * math.pi * x) + torch.cos(2 * math.pi * y)))
    # d/dx of -20 exp(-0.2 r) is 2 exp(-0.2 r) x / r; x / r is bounded but undefined at r = 0.
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    cone = torch.where(r > 0, 2 * torch.exp(-0.2 * r) / safe_r, torch.zeros_like(r))
    gx = cone * x + math.pi * torch.sin(2 * math.pi * x) * waves
    gy = cone * y + math.pi * torch.sin(2 * math.pi * y) * waves
    return torch.stack([gx, gy], dim=1)


def _beale_terms(p: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    x, y = _xy(p)
    return x, y, 1.5 - x + x * y, 2.25 - x + x * y**2, 2.625 - x + x * y**3


def beale(p: Tensor) -> Tensor:
    _, _, t1, t2, t3 = _beale_terms(p)
    return t1**2 + t2**2 + t3**2


def beale_grad(p: Tensor) -> Tensor:
    x, y, t1, t2, t3 = _beale_terms(p)
    gx = 2 * t1 * (y - 1) + 2 * t2 * (y**2 - 1) + 2 * t3 * (y**3 - 1)
    gy = 2 * t1 * x + 4 * t2 * x * y + 6 * t3 * x * y**2
    return torch.stack([gx, gy], dim=1)


def booth(p: Tensor) -> Tensor:
    x, y = _xy(p)
    return (x + 2 * y - 7) ** 2 + (2 * x + y - 5) ** 2


def booth_grad(p: Tensor) -> Tensor:
    x, y = _xy(p)
    a, b = x + 2 * y - 7, 2 * x + y - 5
    return torch.stack([2 * a + 4 * b, 4 * a + 2 * b], dim=1)


def bukin(p: Tensor) -> Tensor:
    x, y = _xy(p)
    return 100 * torch.sqrt(torch.abs(y - 0.01 * x**2)) + 0.01 * torch.abs(x + 10)


def bukin_grad(p: Tensor) -> Tensor:
    x, y = _xy(p)
    u = y - 0.01 * x**2
    # d sqrt|u| / du = sign(u) / (2 sqrt|u|): unbounded near the ridge u = 0, 0 on it.
    safe = torch.where(u != 0, torch.abs(u), torch.ones_like(u))
    du = torch.where(u != 0, 100 * torch.sign(u) / (2 * torch.sqrt(safe)), torch.zeros_like(u))
    gx = du * (-0.02 * x) + 0.01 * torch.sign(x + 10)
    return torch.stack([gx, du], dim=1)


def mccormick(p: Tensor) -> Tensor:
    x, y = _xy(p)
    return torch.sin(x + y) + (x - y) ** 2 - 1.5 * x + 2.5 * y + 1


def mccormick_grad(p: Tensor) -> Tensor:
    x, y = _xy(p)
    c = torch.cos(x + y)
    return torch.stack([c + 2 * (x - y) - 1.5, c - 2 * (x - y) + 2.5], dim=1)


def rosenbrock(p: Tensor) -> Tensor:
    x, y = _xy(p)
    return 100 * (y - x**2) ** 2 + (x - 1) ** 2


def rosenbrock_grad(p: Tensor) -> Tensor:
    x, y = _xy(p)
    return torch.stack([-400 * x * (y - x**2) + 2 * (x - 1), 200 * (y - x**2)], dim=1)


def styblinski_tang(p: Tensor) -> Tensor:
    x, y = _xy(p)
    return 0.5 * (x**4 - 16 * x**2 + 5 * x + y**4 - 16 * y**2 + 5 * y)


def styblinski_tang_grad(p: Tensor) -> Tensor:
    return 0.5 * (4 * p**3 - 32 * p + 5)


FUNCTIONS: dict[str, RegressionTarget] = {
    f.name: f
    for f in (
        RegressionTarget("ackley", ackley, ackley_grad, (-5.0, -5.0), (5.0, 5.0)),
        RegressionTarget("beale", beale, beale_grad, (-4.5, -4.5), (4.5, 4.5)),
        RegressionTarget("booth", booth, booth_grad, (-10.0, -10.0), (10.0, 10.0)),
        RegressionTarget("bukin", bukin, bukin_grad, (-15.0, -3.0), (-5.0, 3.0)),
        RegressionTarget("mccormick", mccormick, mccormick_grad, (-1.5, -3.0), (4.0, 4.0)),
        RegressionTarget("rosenbrock", rosenbrock, rosenbrock_grad, (-2.0, -2.0), (2.0, 2.0)),
        RegressionTarget("styblinski_tang", styblinski_tang, styblinski_tang_grad, (-5.0, -5.0), (5.0, 5.0)),
    )
}
"""The paper's seven functions, in the order of its supplementary section 2."""
