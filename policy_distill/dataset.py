"""The dataset format, in one place: its layout, writing, reading, the batch gather, the split.

:mod:`policy_distill.collect` records the episodes and hands them to :func:`write_dataset`;
distillation reads them with :func:`load_dataset` and gathers batches with :class:`FrameStore`.

Layout of ``data/<game>/`` (see ``data/README.md``):

==================  ===================  ==================================================
file                shape, dtype         meaning
==================  ===================  ==================================================
frames.npy          [F, 84, 84] uint8    every frame once, episode after episode
frame_index.npy     [N] int64            sample i sees ``frames[frame_index[i] : +4]``
log_probs.npy       [N, A] float32       the teacher's log pi*(a|s_i)
actions.npy         [N] uint8            the action the teacher sampled
rewards.npy         [N] float32          raw (unclipped) reward of that action
episode_starts.npy  [E + 1] int64        samples of episode e are ``[starts[e], starts[e+1])``
episode_complete    [E] bool             False for games cut off by the end of recording
meta.json                                settings, teacher, seed, counts, versions
==================  ===================  ==================================================

Episodes are in order of their start, so "the first x% of the recording" is a prefix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from policy_distill.checkpoint import atomic_write_json, sha256_file
from policy_distill.errors import UserError
from policy_distill.settings import EnvSettings

DATASET_FORMAT = "policy-distill/dataset"
DATASET_FORMAT_VERSION = 1
ARRAY_FILES = (
    "frames",
    "frame_index",
    "log_probs",
    "actions",
    "rewards",
    "episode_starts",
    "episode_complete",
)


ArrayT = TypeVar("ArrayT", np.ndarray, Tensor)


def gather_stacks(frames: ArrayT, frame_index: ArrayT, idx: ArrayT, offsets: ArrayT) -> ArrayT:
    """Rebuild stacked observations from the single-frame store (numpy or torch alike).

    Args:
        frames: ``[F, 84, 84] uint8`` every frame once.
        frame_index: ``[N] int64`` first frame of each sample's stack.
        idx: ``[B] int64`` sample indices.
        offsets: ``[stack]`` = ``arange(stack)``, of the same library and device.

    Returns:
        ``[B, stack, 84, 84] uint8``, newest frame last.
    """
    return frames[frame_index[idx][:, None] + offsets]


@dataclass(frozen=True)
class Split:
    """Sample indices of a time-wise split (each sorted, disjoint, no shared episode)."""

    train: np.ndarray
    """``[N_train] int64``: the first ``round(x * N)`` samples of the recording."""
    test: np.ndarray
    """``[N_test] int64``: every sample from the first episode that starts after the cut."""


@dataclass(frozen=True)
class Dataset:
    """A recorded dataset; ``frames`` is memory-mapped, the rest is in memory."""

    path: Path
    meta: dict[str, Any]
    frames: np.ndarray
    frame_index: np.ndarray
    log_probs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    episode_starts: np.ndarray
    episode_complete: np.ndarray

    @property
    def settings(self) -> EnvSettings:
        return EnvSettings.from_dict(self.meta["settings"])

    @property
    def stack(self) -> int:
        return int(self.meta["settings"]["stack"])

    def __len__(self) -> int:
        return len(self.actions)

    def observations(self, idx: np.ndarray) -> np.ndarray:
        """Rebuild stacked observations: ``[B] int`` sample indices -> ``[B, 4, 84, 84] uint8``."""
        return gather_stacks(self.frames, self.frame_index, np.asarray(idx), np.arange(self.stack))

    def episode_of(self, idx: np.ndarray) -> np.ndarray:
        """``[B]`` sample indices -> ``[B]`` episode numbers."""
        return np.searchsorted(self.episode_starts, np.asarray(idx), side="right") - 1

    def split(self, train_fraction: float, validation_fraction: float = 0.0) -> Split:
        """The paper's time-wise split: train on the first x% of the recording, test on the rest.

        The training part is exactly the first ``round(x * N)`` samples. The test part starts
        at the first episode boundary at or after the cut, so no episode is on both sides; the
        rest of the episode that the cut falls into is used by neither.

        With ``validation_fraction`` v > 0 the held-out part is carved from the end of the
        training part instead (for choosing hyperparameters without touching the test part):
        train on its first ``round((1 - v) * n_train)`` samples, validate from the next episode
        boundary up to the end of the training part.
        """
        if not 0.0 < train_fraction <= 1.0:
            raise UserError(f"`train_fraction` must be in (0, 1], got {train_fraction}")
        if not 0.0 <= validation_fraction < 1.0:
            raise UserError(f"`validation_fraction` must be in [0, 1), got {validation_fraction}")
        n_train = max(1, int(round(train_fraction * len(self))))
        if validation_fraction == 0.0:
            return Split(
                train=np.arange(n_train), test=np.arange(self._next_episode_start(n_train), len(self))
            )
        n_fit = max(1, int(round((1.0 - validation_fraction) * n_train)))
        return Split(train=np.arange(n_fit), test=np.arange(self._next_episode_start(n_fit), n_train))

    def _next_episode_start(self, index: int) -> int:
        """The first episode start at or after sample ``index`` (``len(self)`` if none)."""
        boundary = int(np.searchsorted(self.episode_starts, index, side="left"))
        return int(self.episode_starts[boundary]) if boundary < len(self.episode_starts) else len(self)


def load_dataset(path: str | Path, *, mmap: bool = True) -> Dataset:
    """Open ``data/<game>/`` with clear errors for a missing, partial or foreign dataset.

    Args:
        path: The dataset directory.
        mmap: Memory-map the frames (True) or read them into memory.
    """
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.exists():
        raise UserError(
            f"no dataset in {path} (meta.json missing); record one with "
            f"`make collect GAME=<game>` or `python -m policy_distill collect`"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{meta_path} is corrupted (not JSON); re-run collect with --overwrite") from None
    if meta.get("format") != DATASET_FORMAT or meta.get("format_version") != DATASET_FORMAT_VERSION:
        raise UserError(
            f"{path} is not a policy-distill dataset of format version {DATASET_FORMAT_VERSION}; "
            "re-record it with collect --overwrite"
        )
    arrays: dict[str, np.ndarray] = {}
    for name in ARRAY_FILES:
        file = path / f"{name}.npy"
        try:
            arrays[name] = np.load(
                file, mmap_mode="r" if (mmap and name == "frames") else None, allow_pickle=False
            )
        except (OSError, ValueError) as e:
            raise UserError(
                f"{file} is missing or corrupted ({type(e).__name__}); re-run collect --overwrite"
            ) from None
    n = len(arrays["actions"])
    consistent = (
        n == meta.get("frames")
        and arrays["log_probs"].shape == (n, meta["num_actions"])
        and len(arrays["frame_index"]) == n
        and len(arrays["rewards"]) == n
        and arrays["episode_starts"][-1] == n
        and len(arrays["episode_complete"]) == len(arrays["episode_starts"]) - 1
        and (n == 0 or arrays["frame_index"].max() + meta["settings"]["stack"] <= len(arrays["frames"]))
    )
    if not consistent:
        raise UserError(
            f"{path} is inconsistent with its meta.json (a partial copy?); re-run collect --overwrite"
        )
    return Dataset(path=path, meta=meta, **arrays)


class FrameStore:
    """A dataset's frames where the model runs: uint8 on the GPU, or in CPU memory.

    A batch gathers only its own ``[B, 4, 84, 84]`` frames from the single-frame store.
    """

    def __init__(self, dataset: Dataset, device: torch.device) -> None:
        # np.require copies only a read-only (memory-mapped) array; torch needs a writable one.
        self.frames = torch.from_numpy(np.require(dataset.frames, requirements=["C", "W"])).to(device)
        self.frame_index = torch.from_numpy(dataset.frame_index).to(device)
        self.log_probs = torch.from_numpy(dataset.log_probs).to(device)
        self.offsets = torch.arange(dataset.stack, device=device)

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """``[B] int64`` sample indices -> (``[B, 4, 84, 84] float`` in [0, 1], ``[B, A]`` teacher logp)."""
        stacks = gather_stacks(self.frames, self.frame_index, idx, self.offsets)
        return stacks.float().div_(255.0), self.log_probs[idx]


def write_dataset(out_dir: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, Any]:
    """Write a dataset atomically: into a temporary directory beside ``out_dir``, renamed at the end.

    An interrupted write never leaves a directory that looks complete, and a dataset already in
    ``out_dir`` is replaced only once the new one is whole.

    Args:
        out_dir: The dataset directory (``data/<game>``).
        arrays: One array per name in :data:`ARRAY_FILES`, shaped as in the module's table.
        meta: The metadata (settings, teacher, counts, ...); the format tag, its version and
            ``content_sha256`` (over the array files, recorded by every student) are added.

    Returns:
        The metadata as written.
    """
    if set(arrays) != set(ARRAY_FILES):
        raise ValueError(f"dataset arrays must be exactly {ARRAY_FILES}, got {sorted(arrays)}")
    out_dir = Path(out_dir)
    meta = {"format": DATASET_FORMAT, "format_version": DATASET_FORMAT_VERSION, **meta}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        digest = hashlib.sha256()
        for name in ARRAY_FILES:
            np.save(tmp / f"{name}.npy", arrays[name])
            digest.update(bytes.fromhex(sha256_file(tmp / f"{name}.npy")))
        meta["content_sha256"] = digest.hexdigest()
        atomic_write_json(tmp / "meta.json", meta)
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta
