"""Memory a distillation run needs, estimated before any work, against what the machine has.

``cfg`` is a :class:`policy_distill.distill.DistillConfig` (read by field name: ``batch_size``,
``num_projections``, ``alpha``, ``fidelity_frames``, ``data_dir``, ``frames``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from policy_distill.dataset import read_raw_meta
from policy_distill.errors import UserError

SOBOLEV_BYTES_PER_SAMPLE = 250_000
"""Peak memory of one sample of a KL + Sobolev step besides its projections (CPU, fp32): the
batch's float frames and both networks' activations. Measured from ru_maxrss at batch 100 and
400 (450 and 605 MiB, 0.52 MB per sample with K = 1) and K = 1 and 4 at batch 400 (605 and
973 MiB, 0.32 MB per extra projection and sample); both rounded up."""
SOBOLEV_BYTES_PER_PROJECTION = 350_000
"""Peak memory per sample and projection of the Sobolev term (teacher VJP, the student's
input-gradient graph and its double backward), measured as above."""
KL_BYTES_PER_SAMPLE = 450_000
"""Peak memory per sample of a KL-only step (0.40 MB measured between batch 400 and 1,600:
492 and 977 MiB; rounded up)."""
BASE_BYTES = 500_000_000
"""Torch, both networks, Adam and the evaluation batches of 1,000 frames (345 MiB measured at
batch 1, rounded up)."""


def memory_estimate(cfg: Any, dataset_frames: int) -> dict[str, int]:
    """Rough peak memory (bytes) of a run, by the field that drives each part.

    ``batch_size``: a training step (its frames, activations, and the Sobolev term's
    ``num_projections`` double backwards); ``fidelity_frames``: the teacher's full input
    Jacobians kept for gradient fidelity and the student's computed at each evaluation
    (2 x frames x |A| x 4 x 84 x 84 float32, |A| <= 6); ``data``: the frames held in memory.
    """
    per_sample = (
        SOBOLEV_BYTES_PER_SAMPLE + SOBOLEV_BYTES_PER_PROJECTION * cfg.num_projections
        if cfg.alpha > 0
        else KL_BYTES_PER_SAMPLE
    )
    return {
        "batch_size": cfg.batch_size * per_sample,
        "fidelity_frames": 2 * cfg.fidelity_frames * 6 * 4 * 84 * 84 * 4,
        "data": dataset_frames * 84 * 84,
        "base": BASE_BYTES,
    }


def available_memory(device: torch.device) -> int | None:
    """Memory the run may use: free GPU memory on CUDA; on the CPU, Linux's MemAvailable
    (free + reclaimable cache), else free pages from ``os.sysconf``; None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def check_memory(cfg: Any, device: torch.device) -> None:
    """Refuse, before any work, settings whose estimated peak memory exceeds what is available
    (the kernel would otherwise kill the run with no message).

    Raises:
        UserError: naming the field whose part is largest, the estimate and what is available.
    """
    data = cfg.data_dir
    frames = cfg.frames
    if (data / "meta.json").is_file():  # else distill records cfg.frames first
        try:
            frames = int(read_raw_meta(data)["frames_stored"])
        except (ValueError, KeyError, TypeError):
            pass
    parts = memory_estimate(cfg, frames)
    if device.type == "cuda":
        parts["base"] = 0  # torch's own memory is on the host
    available = available_memory(device)
    total = sum(parts.values())
    if available is None or total <= available:
        return
    field = max(("batch_size", "fidelity_frames"), key=parts.__getitem__)
    named, fix = f"`{field}`", f"lower `{field}`"
    if field == "batch_size" and cfg.alpha > 0 and cfg.num_projections > 1:
        named, fix = "`batch_size` x `num_projections`", "lower `num_projections` or `batch_size`"
    raise UserError(
        f"this run needs about {total / 2**30:.1f} GiB of memory ({parts[field] / 2**30:.1f} GiB for "
        f"{named}) but {available / 2**30:.1f} GiB is available on {device.type}; {fix}"
    )
