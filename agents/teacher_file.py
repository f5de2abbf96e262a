"""The teacher checkpoint format: a self-describing dict readable with ``weights_only=True``.

:func:`teacher_record` writes it and :func:`read_teacher` is its one reader (the loader, the
trainer's ``init_from`` and the model card all go through it), so a malformed file is refused
with the same one-line error wherever it is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agents.networks import TeacherNet
from policy_distill.checkpoint import package_versions, require_format, safe_torch_load
from policy_distill.errors import UserError
from policy_distill.settings import EnvSettings

TEACHER_FORMAT = "policy-distill/teacher"
TEACHER_FORMAT_VERSION = 1
DEFAULT_ARCHITECTURE = "nature_cnn_actor_critic"
_FIX = "re-export it from its run (`export-teacher`) or use another teacher checkpoint"


def teacher_record(
    state_dict: dict[str, torch.Tensor],
    settings: EnvSettings,
    training: dict[str, Any],
    *,
    architecture: str = DEFAULT_ARCHITECTURE,
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


@dataclass(frozen=True)
class TeacherFile:
    """A teacher checkpoint of the toolkit's own format, read and checked by :func:`read_teacher`."""

    path: Path
    """The file read."""
    record: dict[str, Any]
    """The record as stored (``training``, ``versions``... are read from here)."""
    settings: EnvSettings
    """The environment the teacher was trained on."""
    state_dict: dict[str, torch.Tensor]
    """The weights, as float32."""
    net: TeacherNet
    """A float32 CPU ``TeacherNet`` holding those weights (so they are known to fit it)."""

    @property
    def num_actions(self) -> int:
        return self.settings.num_actions

    @property
    def training(self) -> dict[str, Any]:
        """What made these weights (empty when the file does not record it)."""
        training = self.record.get("training")
        return training if isinstance(training, dict) else {}

    @property
    def architecture(self) -> str:
        """The network's name as recorded (files that do not record it hold the default network)."""
        arch = self.record.get("architecture")
        name = arch.get("name") if isinstance(arch, dict) else None
        return name if isinstance(name, str) else DEFAULT_ARCHITECTURE


class CorruptTeacher(UserError):
    """A teacher record that fails :func:`teacher_from_record`'s checks; ``problem`` is what is
    wrong, without the file's name or the fix (for a caller that words its own message)."""

    def __init__(self, message: str, problem: str) -> None:
        super().__init__(message)
        self.problem = problem


def teacher_from_record(record: Any, path: str | Path) -> TeacherFile:
    """Check a loaded teacher record (see :func:`read_teacher`), for a caller that has loaded the
    file already (``load_teacher`` first looks whether it is a CleanRL state dict)."""
    path = Path(path)
    label = f"teacher checkpoint {str(path)!r}"
    record = require_format(record, TEACHER_FORMAT, path, what="teacher checkpoint")

    def corrupted(problem: str) -> CorruptTeacher:
        return CorruptTeacher(f"{label} {problem}; it is corrupted: {_FIX}", problem)

    if not isinstance(record.get("settings"), dict):
        raise corrupted("lacks its settings record")
    try:
        settings = EnvSettings.from_dict(record["settings"])
    except (UserError, TypeError, AttributeError, ValueError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise corrupted(f"has a bad settings record ({detail})") from None
    weights = record.get("state_dict")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise corrupted("lacks its weights (a state_dict of tensors)")
    state = {k: v.float() for k, v in weights.items()}
    head = state.get("policy_head.weight")
    if head is None or head.dim() != 2:
        raise corrupted("has no policy_head.weight matrix in its state_dict (not a teacher's weights)")
    try:
        num_actions = int(record["num_actions"])
    except (KeyError, TypeError, ValueError):
        raise corrupted(f"records no number of actions (num_actions {record.get('num_actions')!r})") from None
    if num_actions != settings.num_actions or head.shape[0] != num_actions:
        problem = f"has {head.shape[0]} actions but {settings.game} has {settings.num_actions}"
        raise CorruptTeacher(f"teacher {str(path)!r} {problem}; the checkpoint is corrupted: {_FIX}", problem)
    try:
        net = TeacherNet(num_actions, in_frames=settings.stack)
    except (RuntimeError, TypeError, ValueError):
        raise corrupted(f"has a bad settings record (stack {settings.stack!r})") from None
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        problem = f"does not fit the teacher network ({str(e).splitlines()[0]})"
        raise CorruptTeacher(f"{label} {problem}; {_FIX}", problem) from None
    return TeacherFile(path=path, record=record, settings=settings, state_dict=state, net=net)


def history_problem(segments: Any, curve: Any) -> str | None:
    """What is wrong with a stored record of machines (``segments``, None when not recorded) and
    learning curve, or None when both are well formed."""

    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if segments is not None and not (
        isinstance(segments, list)
        and all(
            isinstance(seg, dict) and all(number(seg.get(k)) for k in ("from_step", "to_step", "wall_time_s"))
            for seg in segments
        )
    ):
        return "a malformed record of machines (segments)"
    if not (
        isinstance(curve, list)
        and all(isinstance(p, (list, tuple)) and len(p) == 3 and all(map(number, p)) for p in curve)
    ):
        return "a malformed learning curve"
    return None


def read_teacher(path: str | Path) -> TeacherFile:
    """Read a teacher checkpoint of the toolkit's own format (loaded ``weights_only``) and check it.

    Raises:
        UserError: a missing, unreadable, truncated, pickled or foreign file, or one whose
            settings, weights or action count are missing or do not fit: one line naming the
            file, the problem and the fix.
    """
    return teacher_from_record(safe_torch_load(path, what="teacher checkpoint"), path)


__all__ = [
    "TEACHER_FORMAT",
    "CorruptTeacher",
    "TeacherFile",
    "history_problem",
    "read_teacher",
    "teacher_from_record",
    "teacher_record",
]
