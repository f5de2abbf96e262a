"""policy-distill: distil pretrained Atari policies into small students (Sobolev training).

Public entry points (imported lazily, so ``import policy_distill`` stays cheap):

- ``policy_distill.load_student(path, device="cpu")``: a distilled student, ready to act.
- ``policy_distill.load_teacher(name_or_path, game=None, settings=None, device="cpu")``: a frozen teacher.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_student", "load_teacher"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import policy_distill` (e.g. for its settings) stays cheap and needs no torch.
    # This facade is the top layer: it may reach agents, which the core modules never import.
    if name == "load_student":
        from policy_distill.student import load_student

        return load_student
    if name == "load_teacher":
        from agents.loading import load_teacher

        return load_teacher
    raise AttributeError(f"module 'policy_distill' has no attribute {name!r}")
