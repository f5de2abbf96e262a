"""What every policy in the toolkit provides, and the one pixel convention they share.

All networks take the observation as a float tensor of pixels scaled to [0, 1]
(``uint8 / 255``), newest frame last. Input-gradients (the Sobolev term, gradient maps) are
taken with respect to that float tensor, for teachers and students alike, so their scales
compare directly.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


def to_float(obs: Tensor) -> Tensor:
    """``[B, 4, 84, 84] uint8`` pixels -> ``[B, 4, 84, 84] float32`` in [0, 1]."""
    return obs.to(torch.float32).div_(255.0) if obs.dtype == torch.uint8 else obs


class Policy(Protocol):
    """A discrete-action policy over stacked Atari frames."""

    num_actions: int

    def log_probs(self, x: Tensor) -> Tensor:
        """``[B, 4, 84, 84] float`` in [0, 1] -> ``[B, A]`` log-probabilities."""
        ...


@torch.no_grad()
def act(
    policy: Policy, obs: Tensor, *, greedy: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """Pick actions for ``obs`` ``[B, 4, 84, 84] uint8``: sampled, or argmax when ``greedy``.

    Returns ``[B] int64`` actions.
    """
    logp = policy.log_probs(to_float(obs))
    if greedy:
        return logp.argmax(dim=-1)
    return torch.multinomial(logp.float().exp(), 1, generator=generator).squeeze(-1)
