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

from policy_distill.checkpoint import atomic_write_json, fsync_path, os_error_text, pid_alive, sha256_file
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


VALIDATION_BOUNDARIES = ("next", "previous")
"""Where a validation part carved from the training part starts (:meth:`Dataset.split`)."""


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

    def split(
        self, train_fraction: float, validation_fraction: float = 0.0, validation_boundary: str = "next"
    ) -> Split:
        """The paper's time-wise split: train on the first x% of the recording, test on the rest.

        The training part is exactly the first ``round(x * N)`` samples. The test part starts
        at the first episode boundary at or after the cut, so no episode is on both sides; the
        rest of the episode that the cut falls into is used by neither.

        With ``validation_fraction`` v > 0 the held-out part is carved from the end of the
        training part instead (for choosing hyperparameters without touching the test part):
        the fit/validation cut lies near ``round((1 - v) * n_train)`` and is moved to an episode
        boundary, so no episode is on both sides. ``validation_boundary`` says which one:

        - ``next``: the first episode start at or after the cut; the samples in between are used
          by neither side. With episodes longer than v of the training part (a small fraction
          of a recording) the validation part can be tiny or empty.
        - ``previous``: the last episode start at or before the cut; the fit part ends there and
          the validation part is at least v of the training part (whole episodes, the last one
          cut off where the training part ends). Empty fit part if the training part holds one
          episode start only (at sample 0).
        """
        if not 0.0 < train_fraction <= 1.0:
            raise UserError(f"`train_fraction` must be in (0, 1], got {train_fraction}")
        if not 0.0 <= validation_fraction < 1.0:
            raise UserError(f"`validation_fraction` must be in [0, 1), got {validation_fraction}")
        if validation_boundary not in VALIDATION_BOUNDARIES:
            raise UserError(
                f"`validation_boundary` must be one of {', '.join(VALIDATION_BOUNDARIES)}, "
                f"got {validation_boundary!r}"
            )
        n_train = max(1, int(round(train_fraction * len(self))))
        if validation_fraction == 0.0:
            return Split(
                train=np.arange(n_train), test=np.arange(self._next_episode_start(n_train), len(self))
            )
        n_fit = max(1, int(round((1.0 - validation_fraction) * n_train)))
        if validation_boundary == "previous":
            start = self._previous_episode_start(n_fit)
            return Split(train=np.arange(start), test=np.arange(start, n_train))
        return Split(train=np.arange(n_fit), test=np.arange(self._next_episode_start(n_fit), n_train))

    def _previous_episode_start(self, index: int) -> int:
        """The last episode start at or before sample ``index`` (0 if none)."""
        boundary = int(np.searchsorted(self.episode_starts, index, side="right")) - 1
        return int(self.episode_starts[boundary]) if boundary >= 0 else 0

    def _next_episode_start(self, index: int) -> int:
        """The first episode start at or after sample ``index`` (``len(self)`` if none)."""
        boundary = int(np.searchsorted(self.episode_starts, index, side="left"))
        return int(self.episode_starts[boundary]) if boundary < len(self.episode_starts) else len(self)


def default_data_dir(game: str) -> Path:
    """Where a game's recording lives unless told otherwise: ``data/<game>`` (what ``collect``
    writes and ``distill`` reads by default; the grid's recording)."""
    return Path("data") / game


def recollect_hint(path: Path, game: Any = None) -> str:
    """The command that records a dataset at ``path`` again (named in full: not every command
    that reads a dataset takes ``--overwrite``)."""
    game_flag = f"--game {game} " if isinstance(game, str) and game else "--game <game> "
    return f"record it again with `python -m policy_distill collect {game_flag}--out {path} --overwrite`"


REQUIRED_META = {
    "game": str,
    "num_actions": int,
    "settings": dict,
    "frames": int,
    "teacher": dict,
}
"""Keys every dataset's meta.json has, with their JSON types."""

_ARRAY_DTYPES = {
    "frames": (np.uint8, 3),
    "frame_index": (np.int64, 1),
    "log_probs": (np.float32, 2),
    "actions": (np.uint8, 1),
    "rewards": (np.float32, 1),
    "episode_starts": (np.int64, 1),
    "episode_complete": (np.bool_, 1),
}
"""dtype and number of dimensions of each array file (the module's table)."""


def dataset_content_sha256(path: str | Path) -> str:
    """The content hash ``write_dataset`` records: SHA-256 over the array files' SHA-256s, in order.

    Reads every array file once: 0.7 GB for a 100K-frame dataset (see :func:`load_dataset`).
    """
    digest = hashlib.sha256()
    for name in ARRAY_FILES:
        digest.update(bytes.fromhex(sha256_file(Path(path) / f"{name}.npy")))
    return digest.hexdigest()


def read_raw_meta(path: str | Path, *, fix: str | None = None) -> dict[str, Any]:
    """The ``meta.json`` of the dataset at ``path`` as a JSON object, its keys unchecked
    (:func:`read_meta` checks them).

    Args:
        path: The dataset directory.
        fix: What the user should do about a damaged meta.json; by default the command that
            records the dataset again (:func:`recollect_hint`).

    Raises:
        UserError: one line naming the file, the problem and the fix: ``path`` a file, no
            meta.json, one this user cannot read, not JSON text, or not a JSON object.
    """
    path = Path(path)
    meta_path = path / "meta.json"
    fix = fix or recollect_hint(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"dataset {str(path)!r} is a file, not a directory; pass the dataset directory")
    if not meta_path.exists():
        raise UserError(
            f"no dataset in {path} (meta.json missing); record one with "
            f"`make collect GAME=<game>` or `python -m policy_distill collect`"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except PermissionError:
        raise UserError(
            f"{meta_path} is not readable by this user (permission denied); ask its owner to make "
            "the dataset readable (chmod -R a+rX)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        raise UserError(f"{meta_path} is corrupted (not JSON text); {fix}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path} is not a JSON object (it holds a {type(meta).__name__}); {fix}")
    return meta


def recorded_content_sha256(path: str | Path) -> str | None:
    """The content SHA-256 that the dataset at ``path`` records in its meta.json (what students
    record as their provenance), without reading the array files; None where ``path`` holds no
    meta.json (no recording) or the meta.json records no hash.

    Raises:
        UserError: a meta.json that is unreadable, not JSON text or not a JSON object (one line
            naming the file and the command that records the dataset again).
    """
    path = Path(path)
    if not (path / "meta.json").is_file():
        return None
    sha = read_raw_meta(path).get("content_sha256")
    return sha if isinstance(sha, str) else None


def read_meta(path: str | Path) -> dict[str, Any]:
    """The checked ``meta.json`` of the dataset at ``path``: a JSON object of this format and
    version, with every key of :data:`REQUIRED_META` and settings that agree with its game.
    Reads no array file (:func:`load_dataset` checks those).

    Raises:
        UserError: one line naming the file, the problem and the fix.
    """
    path = Path(path)
    meta_path = path / "meta.json"
    meta = read_raw_meta(path)
    if meta.get("format") != DATASET_FORMAT or meta.get("format_version") != DATASET_FORMAT_VERSION:
        raise UserError(
            f"{path} is not a policy-distill dataset of format version {DATASET_FORMAT_VERSION}; "
            + recollect_hint(path, meta.get("game"))
        )
    fix = recollect_hint(path, meta.get("game"))
    wrong = [
        f"{key} (expected a JSON {kind.__name__})"
        for key, kind in REQUIRED_META.items()
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool)
    ]
    if wrong:
        raise UserError(f"{meta_path} lacks or mangles {', '.join(wrong)}; {fix}")
    try:
        settings = EnvSettings.from_dict(meta["settings"])
    except (UserError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{meta_path} has an unusable settings record ({e}); {fix}") from None
    if settings.game != meta["game"] or settings.num_actions != meta["num_actions"]:
        raise UserError(
            f"{meta_path} contradicts itself (game {meta['game']!r} with {meta['num_actions']} actions, "
            f"settings for {settings.game} with {settings.num_actions}); {fix}"
        )
    return meta


def _check_arrays(path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Schema checks: dtypes, shapes, counts and index ranges (cheap: no pass over the frames)."""
    fix = recollect_hint(path, meta["game"])
    for name, (dtype, ndim) in _ARRAY_DTYPES.items():
        a = arrays[name]
        if a.dtype != dtype or a.ndim != ndim:
            raise UserError(
                f"{path / (name + '.npy')} is {a.dtype} with shape {list(a.shape)}, expected "
                f"{np.dtype(dtype).name} with {ndim} dimension(s) (see data/README.md); {fix}"
            )
    settings = EnvSettings.from_dict(meta["settings"])
    frames, index, starts = arrays["frames"], arrays["frame_index"], arrays["episode_starts"]
    n, side, stack = len(arrays["actions"]), settings.frame_size, settings.stack
    problems = []
    if n == 0:
        problems.append("it holds no samples")
    if frames.shape[1:] != (side, side):
        problems.append(f"frames are {frames.shape[1]}x{frames.shape[2]}, its settings say {side}x{side}")
    if n != meta["frames"]:
        problems.append(f"{n} samples but meta.json says {meta['frames']}")
    for name in ("frame_index", "rewards"):
        if len(arrays[name]) != n:
            problems.append(f"{name}.npy has {len(arrays[name])} entries for {n} samples")
    if arrays["log_probs"].shape != (n, meta["num_actions"]):
        problems.append(
            f"log_probs.npy is {list(arrays['log_probs'].shape)}, not [{n}, {meta['num_actions']}]"
        )
    if len(starts) < 2 or starts[0] != 0 or starts[-1] != n or (np.diff(starts) < 1).any():
        problems.append("episode_starts.npy is not an increasing list from 0 to the number of samples")
    elif len(arrays["episode_complete"]) != len(starts) - 1:
        problems.append(
            f"episode_complete.npy has {len(arrays['episode_complete'])} entries "
            f"for {len(starts) - 1} episodes"
        )
    if n and len(index) == n and (index.min() < 0 or index.max() + stack > len(frames)):
        problems.append(
            f"frame_index.npy points outside the {len(frames)} frames (range {index.min()} to {index.max()})"
        )
    if n and len(arrays["actions"]) and arrays["actions"].max() >= meta["num_actions"]:
        problems.append(f"actions.npy holds action {arrays['actions'].max()} of {meta['num_actions']}")
    if problems:
        raise UserError(f"dataset {path} is malformed ({'; '.join(problems)}); {fix}")
    logp = arrays["log_probs"]
    if not np.isfinite(logp).all() or not np.isfinite(arrays["rewards"]).all():
        raise UserError(
            f"{path / 'log_probs.npy'} or rewards.npy holds NaN or infinite values (a teacher whose "
            f"outputs were not finite?); check the teacher and {fix[0].lower() + fix[1:]}"
        )
    total = np.exp(logp.astype(np.float64)).sum(axis=1)
    if n and np.abs(total - 1.0).max() > 1e-3:
        raise UserError(
            f"{path / 'log_probs.npy'} does not hold log-probabilities (a row's probabilities sum to "
            f"{total[np.abs(total - 1.0).argmax()]:.4g}); {fix}"
        )


def load_dataset(path: str | Path, *, mmap: bool = True, verify: bool = True) -> Dataset:
    """Open ``data/<game>/`` with clear errors for a missing, partial, malformed or altered dataset.

    Every load checks the schema: meta.json's keys and types, every array's dtype, shape and
    count, and index ranges (frame indices inside the frames, increasing episode boundaries,
    actions below the action count, finite log-probabilities that sum to 1). This costs no pass
    over the frames. ``verify`` also recomputes the content SHA-256 that students record as their
    provenance: one more read of every file, measured for a 100K-frame (0.73 GB) dataset at
    0.7 s from the page cache and 1.7 s from disk (SHA-256 at ~1 GB/s on one core; a load
    without it takes 0.3 s warm, 1.5 s cold), against minutes of distillation: hence the default.

    Args:
        path: The dataset directory.
        mmap: Memory-map the frames (True) or read them into memory.
        verify: Recompute the content hash and refuse a dataset whose files changed.

    Raises:
        UserError: one line naming the file and the fix.
    """
    path = Path(path)
    meta = read_meta(path)
    fix = recollect_hint(path, meta["game"])
    arrays: dict[str, np.ndarray] = {}
    for name in ARRAY_FILES:
        file = path / f"{name}.npy"
        try:
            arrays[name] = np.load(
                file, mmap_mode="r" if (mmap and name == "frames") else None, allow_pickle=False
            )
        except PermissionError:
            raise UserError(
                f"{file} is not readable by this user (permission denied); ask its owner to make the "
                "dataset readable (chmod -R a+rX)"
            ) from None
        except FileNotFoundError:
            raise UserError(f"{file} is missing or corrupted (missing: a partial copy?); {fix}") from None
        except (OSError, ValueError, EOFError) as e:
            raise UserError(f"{file} is truncated or corrupted ({type(e).__name__}); {fix}") from None
    _check_arrays(path, meta, arrays)
    if verify:
        recorded = meta.get("content_sha256")
        if not isinstance(recorded, str):
            raise UserError(f"{path / 'meta.json'} records no content_sha256; {fix}")
        found = dataset_content_sha256(path)
        if found != recorded:
            raise UserError(
                f"the files of {path} do not match the content SHA-256 in its meta.json "
                f"({found[:12]} != {recorded[:12]}): changed or damaged after recording; {fix}"
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
    remove_stale_dataset_temporaries(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name in ARRAY_FILES:
            with open(tmp / f"{name}.npy", "wb") as f:
                np.save(f, arrays[name])
                f.flush()
                os.fsync(f.fileno())  # on the disk before the rename makes the dataset visible
        meta["content_sha256"] = dataset_content_sha256(tmp)
        atomic_write_json(tmp / "meta.json", meta)
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
        fsync_path(out_dir.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _is_complete_dataset(path: Path) -> bool:
    """True if ``path`` holds every array file and a valid meta.json (written last, so a write
    killed earlier leaves none)."""
    if not all((path / f"{name}.npy").is_file() for name in ARRAY_FILES):
        return False
    try:
        read_meta(path)
    except Exception:  # whatever a damaged leftover raises, the clean-up goes on without it
        return False
    return True


def remove_stale_dataset_temporaries(out_dir: str | Path) -> list[Path]:
    """Clear up after writes whose process died: ``.<name>.tmp-<pid>/`` (the recording being
    written) and ``.<name>.old-<pid>/`` (the dataset it replaces) beside ``out_dir``, up to
    0.7 GB each, with one line per directory.

    A write killed between its two renames leaves no dataset at ``out_dir``. Then, before any
    deletion, the newest complete temporary (its meta.json, written last, is there) is renamed
    into place: the recording that write had finished. Failing one, the newest complete old
    dataset is put back. The rest are deleted.

    Returns:
        The directories deleted (not the one put in place).
    """
    out_dir = Path(out_dir)
    stale: dict[str, list[Path]] = {"tmp": [], "old": []}
    for kind, entries in stale.items():
        for entry in sorted(out_dir.parent.glob(f".{out_dir.name}.{kind}-*")):
            pid = entry.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not pid_alive(int(pid)) and entry.is_dir():
                entries.append(entry)
    if not os.path.lexists(out_dir):
        for kind, what in (
            ("tmp", "the recording a killed write had finished"),
            ("old", "the dataset a killed write was replacing"),
        ):
            complete = [e for e in stale[kind] if _is_complete_dataset(e)]
            if not complete:
                continue
            newest = max(complete, key=lambda e: (e / "meta.json").stat().st_mtime)
            try:
                newest.rename(out_dir)
                fsync_path(out_dir.parent)
            except OSError as e:
                print(f"kept {newest} ({what}): could not move it to {out_dir} ({os_error_text(e)})")
                return []  # nothing is deleted while the recording it holds is not in place
            print(f"restored {out_dir} from {newest}: {what}")
            stale[kind].remove(newest)
            break
    removed = []
    for entry in stale["tmp"] + stale["old"]:
        size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
        shutil.rmtree(entry, ignore_errors=True)
        print(f"removed {entry}, left by a write that did not finish ({size / 1e6:.0f} MB)")
        removed.append(entry)
    return removed
