"""The paper's student network (Czarnecki et al. 2017, supplementary section 3) and its loader.

conv 16 8x8/4, ReLU, conv 32 4x4/2, ReLU, linear 256, ReLU, linear |A|, softmax: about 7x fewer
parameters and 3x less arithmetic per frame than the teacher.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from policy_distill.checkpoint import require_format, safe_torch_load
from policy_distill.errors import UserError
from policy_distill.settings import EnvSettings

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


class StudentNet(nn.Module):
    """``[B, 4, 84, 84] float`` in [0, 1] -> ``[B, A]`` log-probabilities."""

    def __init__(self, arch: StudentArch) -> None:
        super().__init__()
        self.arch = arch
        self.num_actions = arch.num_actions
        side = ((arch.frame_size - 8) // 4 + 1 - 4) // 2 + 1  # 84 -> 20 -> 9
        self.torso = nn.Sequential(
            nn.Conv2d(arch.in_frames, arch.conv1, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(arch.conv1, arch.conv2, 4, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(arch.conv2 * side * side, arch.hidden),
            nn.ReLU(),
        )
        self.policy_head = nn.Linear(arch.hidden, arch.num_actions)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 4, 84, 84] float`` -> ``[B, A]`` logits."""
        return self.policy_head(self.torso(x))

    def log_probs(self, x: Tensor) -> Tensor:
        """``[B, 4, 84, 84] float`` in [0, 1] -> ``[B, A]`` log-probabilities (float32)."""
        return torch.log_softmax(self(x).float(), dim=-1)


class Student(nn.Module):
    """A loaded student: the network plus the settings record it must be played with."""

    def __init__(self, net: StudentNet, settings: EnvSettings, record: dict[str, Any]) -> None:
        super().__init__()
        self.net = net.eval()
        self.settings = settings
        self.num_actions = net.num_actions
        self.record = record

    def log_probs(self, x: Tensor) -> Tensor:
        return self.net.log_probs(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.log_probs(x)

    @torch.no_grad()
    def act(self, obs: Tensor, *, greedy: bool = False) -> Tensor:
        """``[B, 4, 84, 84] uint8`` observations -> ``[B] int64`` actions."""
        from policy_distill.policy import act

        return act(self, obs, greedy=greedy)


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
