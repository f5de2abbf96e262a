"""The teacher checkpoint format: a self-describing dict readable with ``weights_only=True``."""

from __future__ import annotations

from typing import Any

import torch

from policy_distill.checkpoint import package_versions
from policy_distill.settings import EnvSettings

TEACHER_FORMAT = "policy-distill/teacher"
TEACHER_FORMAT_VERSION = 1


def teacher_record(
    state_dict: dict[str, torch.Tensor],
    settings: EnvSettings,
    training: dict[str, Any],
    *,
    architecture: str = "nature_cnn_actor_critic",
) -> dict[str, Any]:
    """Assemble the teacher checkpoint dict.

    Args:
        state_dict: ``TeacherNet`` weights (any float dtype; loaded back as float32).
        settings: The environment the teacher was trained on.
        training: Algorithm, hyperparameters, steps, wall time, hardware.
    """
    return {
        "format": TEACHER_FORMAT,
        "format_version": TEACHER_FORMAT_VERSION,
        "architecture": {"name": architecture, "hidden": 512, "in_frames": settings.stack},
        "game": settings.game,
        "num_actions": settings.num_actions,
        "settings": settings.to_dict(),
        "state_dict": state_dict,
        "training": training,
        "versions": package_versions(),
    }
