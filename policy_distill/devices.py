"""Device choice and mixed precision, in one place.

Precision follows the hardware: bf16 autocast is fast only where the hardware computes in bf16
natively (CUDA GPUs from Ampere on; CPUs with AVX-512-bf16 or AMX). On an AVX2-only CPU, PyTorch
emulates bf16 and autocast was measured ~10x slower than float32 (train-teacher 31 vs 289 agent
steps/s), so ``auto`` resolves to float32 there.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from policy_distill.errors import UserError
from policy_distill.settings import PRECISION_CHOICES


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for but no CUDA GPU is visible; use device 'cpu'")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def cpu_capability() -> str:
    """The CPU's vector capability as PyTorch dispatches on it, with its native bf16 units named:
    e.g. ``AVX512+bf16+amx``, ``AVX512+bf16``, ``AVX512``, ``AVX2``."""
    name = torch.backends.cpu.get_cpu_capability()
    cpu = getattr(torch, "cpu", None)
    if cpu is not None and getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        name += "+bf16"
    if cpu is not None and getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        name += "+amx"
    return name


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware (so autocast to bf16 speeds it up)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    capability = cpu_capability()
    return "+bf16" in capability or "+amx" in capability


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where the hardware does bf16 natively, else ``fp32``; an explicit
    ``fp32`` or ``bf16`` is returned as given.

    Raises:
        UserError: ``requested`` is not one of auto, fp32, bf16.
    """
    if requested not in PRECISION_CHOICES:
        raise UserError(f"precision {requested!r} is not one of {', '.join(PRECISION_CHOICES)}")
    if requested != "auto":
        return requested
    return "bf16" if native_bf16(device) else "fp32"


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on either device type; ``enabled=False`` leaves float32 untouched.
    Choose ``enabled`` with :func:`resolve_precision`: bf16 is slower without native units."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _libc() -> Any:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


REUSE_BELOW_BYTES = 32 << 20
"""Allocations below this come from the heap and are reused when freed (glibc's M_MMAP_THRESHOLD)."""
KEEP_FREE_BYTES = 128 << 20
"""Free memory the heap keeps at its top rather than return it (glibc's M_TRIM_THRESHOLD)."""
DEFAULT_MALLOC_ENV = "POLICY_DISTILL_DEFAULT_MALLOC"
"""Set to 1 to leave glibc's allocator as it is (:func:`keep_freed_memory_for_reuse` does nothing)."""


def keep_freed_memory_for_reuse() -> None:
    """Make glibc reuse the training step's large freed buffers instead of unmapping them.

    A Sobolev step allocates and frees several input-sized tensors (``[200, 4, 84, 84]`` float32,
    22 MB each). glibc serves blocks of that size with ``mmap`` and unmaps them when freed, so
    every step pays page faults on fresh memory (17,000-23,000 per ``vjp`` step, about 15% of its
    time; AMD EPYC, two cores; ``benchmarks/distill_throughput.py --default-malloc``). Blocks
    below 32 MB served from the heap, with up to 128 MB kept free at its top, leave 1,000-3,400.
    Larger thresholds (64 MB / 256 MB) were no faster and raised the peak resident memory of a
    fresh-clone ``distill`` by about 90 MB; these left it unchanged (docs/estimators.md). The
    PPO trainer's minibatches (29 MB of float frames) fault 6-9x less too (steps/s +4%, in the
    noise). glibc only; a no-op elsewhere, and when the environment sets
    ``POLICY_DISTILL_DEFAULT_MALLOC=1`` (the benchmarks'
    ``--default-malloc``, which measures what this saves).
    """
    import os

    if os.environ.get(DEFAULT_MALLOC_ENV) == "1":
        return
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    libc.mallopt(m_mmap_threshold, REUSE_BELOW_BYTES)
    libc.mallopt(m_trim_threshold, KEEP_FREE_BYTES)


def release_freed_memory() -> None:
    """Give memory freed by Python back to the operating system (glibc only; a no-op elsewhere).

    Recording a dataset allocates one small array per frame; freed, glibc keeps them in its heap,
    so a process that records and then trains (``make distill`` on a fresh clone) would hold the
    recording's memory twice. ``malloc_trim`` returns it.
    """
    import gc

    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
