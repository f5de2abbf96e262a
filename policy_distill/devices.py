"""Device choice and mixed precision, in one place."""

from __future__ import annotations

import contextlib

import torch

from policy_distill.errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on either device type (CPU: AVX-512-bf16 makes it 3-4x faster here);
    ``enabled=False`` leaves float32 untouched."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)
