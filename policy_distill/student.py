"""The paper's student network (Czarnecki et al. 2017, supplementary section 3) and its loader.

conv 16 8x8/4, ReLU, conv 32 4x4/2, ReLU, linear 256, ReLU, linear |A|, softmax: 2.5x fewer
parameters than the teacher (0.68M against 1.69M, most of them in the first linear layer) and
3.2x less arithmetic per frame (5.9 against 18.7 MFLOPs), measured by
``benchmarks/student_vs_teacher.py`` with its speed (docs/student.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from policy_distill import policy
from policy_distill.checkpoint import require_format, safe_torch_load
from policy_distill.errors import UserError
from policy_distill.settings import EnvSettings
from policy_distill.strided_conv import StridedConv2d

STUDENT_FORMAT = "policy-distill/student"


@dataclass(frozen=True)
class StudentArch:
    """Architecture arguments, stored in every student checkpoint."""

    num_actions: int
    in_frames: int = 4
    frame_size: int = 84
    conv1: int = 16
    conv2: int = 32
    hidden: int = 256

    @classmethod
    def scaled(cls, num_actions: int, in_frames: int = 4, width: float = 1.0) -> StudentArch:
        """The paper's student with ``width`` times its channels and hidden units (at least one
        each): 2 gives conv 32/64 and linear 512, about 4x the parameters of its first linear layer."""
        return cls(
            num_actions=num_actions,
            in_frames=in_frames,
            conv1=max(1, round(16 * width)),
            conv2=max(1, round(32 * width)),
            hidden=max(1, round(256 * width)),
        )


class StudentNet(nn.Module):
    """``[B, 4, 84, 84] float`` in [0, 1] -> ``[B, A]`` log-probabilities."""

    def __init__(self, arch: StudentArch) -> None:
        super().__init__()
        self.arch = arch
        self.num_actions = arch.num_actions
        side = ((arch.frame_size - 8) // 4 + 1 - 4) // 2 + 1  # 84 -> 20 -> 9
        self.torso = nn.Sequential(
            # StridedConv2d: nn.Conv2d whose input gradient (the Sobolev term's) is computed faster.
            StridedConv2d(arch.in_frames, arch.conv1, 8, stride=4),
            nn.ReLU(),
            StridedConv2d(arch.conv1, arch.conv2, 4, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(arch.conv2 * side * side, arch.hidden),
            nn.ReLU(),
        )
        self.policy_head = nn.Linear(arch.hidden, arch.num_actions)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 4, 84, 84] float`` -> ``[B, A]`` logits."""
        return self.policy_head(self.torso(x))

    def layers(self) -> list[nn.Module]:
        """The network in order (``forward`` applies them one after another)."""
        return [*self.torso, self.policy_head]

    def log_probs(self, x: Tensor) -> Tensor:
        """``[B, 4, 84, 84] float`` in [0, 1] -> ``[B, A]`` log-probabilities (float32)."""
        return torch.log_softmax(self(x).float(), dim=-1)

    @torch.no_grad()
    def centre_first_layer(self, frames: Tensor) -> None:
        """Shift the first convolution's biases by minus each unit's mean response to ``frames``
        (``[N, 4, 84, 84] float`` in [0, 1]) over frames and positions, so that its mean
        pre-activation is its small random initial bias, as if the frames were centred: a
        data-dependent initialisation. Atari frames are a static background with a few moving pixels; at the
        default initialisation the background alone decides whether a first-layer unit fires on
        every frame or on none, and students sat at the constant policy for hundreds of steps
        (benchmarks/student_plateau.py, docs/estimators.md).
        """
        conv = self.torso[0]
        mean_frame = frames.float().mean(dim=0, keepdim=True)
        # The convolution is linear: its mean response over the frames is its response to their mean.
        response = F.conv2d(mean_frame, conv.weight, None, conv.stride, conv.padding)
        conv.bias -= response.mean(dim=(0, 2, 3))


class Student(nn.Module):
    """A loaded student: the network plus the settings record it must be played with.

    Every method takes observations as the environment gives them (see
    :func:`policy_distill.policy.as_observation`): ``[B, 4, 84, 84]`` or ``[4, 84, 84]``
    ``uint8`` pixels, numpy or torch, newest frame last, converted once; or, the fast path for
    training and gradient maps, a torch float tensor of the same shape already scaled to [0, 1].
    An unbatched input gives unbatched outputs; anything else is refused with one line.
    """

    def __init__(self, net: StudentNet, settings: EnvSettings, record: dict[str, Any]) -> None:
        super().__init__()
        self.net = net.eval()
        self.settings = settings
        self.num_actions = net.num_actions
        self.record = record

    def log_probs(self, obs: Tensor | np.ndarray) -> Tensor:
        """``[B, 4, 84, 84]`` observations -> ``[B, A]`` float32 log-probabilities (``[A]`` unbatched).

        Float tensors are taken as already divided by 255 and not range-checked (the training
        fast path); gradients with respect to them flow.
        """
        return policy.contract_log_probs(self.net, obs, self.settings)

    def forward(self, obs: Tensor | np.ndarray) -> Tensor:
        return self.log_probs(obs)

    def act(
        self, obs: Tensor | np.ndarray, *, greedy: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[B, 4, 84, 84]`` observations -> ``[B] int64`` actions (``[]`` unbatched), on the
        student's device: sampled from the policy, or its argmax when ``greedy``."""
        return policy.contract_act(self.net, obs, self.settings, greedy=greedy, generator=generator)

    def predict(
        self,
        observation: Tensor | np.ndarray,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray, None]:
        """Stable-Baselines3's ``predict``: ``[B, 4, 84, 84]`` observations -> (``[B] int64`` numpy
        actions, ``None``); ``[]`` actions for one unbatched observation.

        ``state`` and ``episode_start`` are accepted for SB3 compatibility and ignored: the
        student is feed-forward, so its recurrent state is always ``None``.
        """
        return policy.contract_predict(
            self.net, observation, self.settings, deterministic=deterministic, generator=generator
        )

    @property
    def action_meanings(self) -> tuple[str, ...]:
        """Names of the actions in the order of the log-probabilities (``NOOP``, ``FIRE``...)."""
        return policy.action_meanings(self.settings.game)

    @property
    def env_id(self) -> str:
        """The gymnasium id of the student's game in ale-py's vector environment (``ALE/Pong-v5``)."""
        return policy.env_id(self.settings)

    def env_kwargs(self) -> dict[str, Any]:
        """``gymnasium.make_vec`` / ``AtariVectorEnv`` arguments that reproduce the student's settings."""
        return policy.env_kwargs(self.settings)

    def check_env(self, env: Any) -> list[str]:
        """Refuse with one line a vector environment whose settings differ from the student's;
        returns the settings checked (see :func:`policy_distill.policy.check_env`)."""
        return policy.check_env(self.settings, env, what="student")

    def make_env(self, num_envs: int, **overrides: Any) -> Any:
        """A checked ``gymnasium.make_vec`` vector environment with the student's settings."""
        return policy.make_env(self.settings, num_envs, **overrides)


def student_record(net: StudentNet, settings: EnvSettings, **extra: Any) -> dict[str, Any]:
    """The self-describing checkpoint dict of a student (weights_only-loadable)."""
    return {
        "format": STUDENT_FORMAT,
        "format_version": 1,
        "arch": asdict(net.arch),
        "game": settings.game,
        "num_actions": net.num_actions,
        "settings": settings.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        **extra,
    }


def load_student(path: str | Path, *, device: str | torch.device = "cpu") -> Student:
    """Load a student checkpoint (``best.pt`` / ``latest.pt`` of a distillation run).

    Loading is ``weights_only``: a foreign, corrupted or pickled file is refused with a
    one-line :class:`UserError`.
    """
    record = require_format(
        safe_torch_load(path, what="student checkpoint"), STUDENT_FORMAT, path, what="student checkpoint"
    )
    try:
        arch = StudentArch(**record["arch"])
        settings = EnvSettings.from_dict(record["settings"])
        net = StudentNet(arch)
        net.load_state_dict(record["state_dict"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise UserError(
            f"student checkpoint {str(path)!r} is corrupted "
            f"({type(e).__name__}: {str(e).splitlines()[0][:100]}); use another checkpoint of the run"
        ) from None
    if arch.num_actions != settings.num_actions:
        raise UserError(
            f"student checkpoint {str(path)!r} has {arch.num_actions} actions but its game "
            f"{settings.game} has {settings.num_actions}; the file is corrupted"
        )
    return Student(net, settings, record).to(device)
