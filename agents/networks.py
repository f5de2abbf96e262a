"""The paper's teacher network (Czarnecki et al. 2017, supplementary section 3).

conv 32 8x8/4, ReLU, conv 64 4x4/2, ReLU, conv 64 3x3/1, ReLU, linear 512, ReLU, then a policy
head (linear |A|, softmax) and, for actor-critic training, a value head (linear 1). This is the
"Nature DQN" torso that A3C, SB3's CnnPolicy and CleanRL's Atari agents share.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from policy_distill.strided_conv import StridedConv2d


def _init(layer: nn.Module, gain: float) -> nn.Module:
    # Orthogonal init with zero bias: the standard for PPO on Atari (CleanRL, SB3).
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def nature_torso(in_frames: int = 4, hidden: int = 512) -> nn.Sequential:
    """The "Nature DQN" torso: ``[B, 4, 84, 84] float`` -> ``[B, hidden]``.

    Shared by :class:`TeacherNet` and the networks of imported teachers (SB3, CleanRL), whose
    layers sit at the same indices (0, 2, 4 conv; 7 linear).
    """
    return nn.Sequential(
        # StridedConv2d: nn.Conv2d whose input gradient (the Sobolev targets') is computed faster.
        StridedConv2d(in_frames, 32, 8, stride=4),
        nn.ReLU(),
        StridedConv2d(32, 64, 4, stride=2),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, hidden),
        nn.ReLU(),
    )


class TeacherNet(nn.Module):
    """Actor-critic over ``[B, 4, 84, 84]`` float frames in [0, 1]."""

    def __init__(self, num_actions: int, in_frames: int = 4, hidden: int = 512) -> None:
        super().__init__()
        self.num_actions = num_actions
        relu_gain = math.sqrt(2)
        self.torso = nature_torso(in_frames, hidden)
        for layer in self.torso:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                _init(layer, relu_gain)
        # Small policy-head gain keeps the initial policy near uniform (CleanRL, SB3).
        self.policy_head = _init(nn.Linear(hidden, num_actions), 0.01)
        self.value_head = _init(nn.Linear(hidden, 1), 1.0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``[B, 4, 84, 84] float`` -> (logits ``[B, A]``, value ``[B]``)."""
        h = self.torso(x)
        return self.policy_head(h), self.value_head(h).squeeze(-1)

    def log_probs(self, x: Tensor) -> Tensor:
        """``[B, 4, 84, 84] float`` in [0, 1] -> ``[B, A]`` log-probabilities."""
        return torch.log_softmax(self.policy_head(self.torso(x)).float(), dim=-1)
