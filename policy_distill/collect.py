"""Record a teacher playing: ``policy_distill collect`` -> ``data/<game>/``.

The teacher acts by sampling from its policy, as in the paper's protocol (100K agent steps =
400K emulator frames at action repeat 4). ``num_envs`` games run in C++ threads; by default
each step waits for all of them (one batched teacher forward per step), so a recording is a
function of its seed and teacher: the same command records the same content (sha256) on every
run with the same software and CPU (another may round the teacher's forward differently).
``batch_size`` below ``num_envs`` steps asynchronously instead (``recv`` returns the games
that are ready while the rest step on), whose order, and so the recording, follows thread
timing; on two cores it was not faster (``benchmarks/collection_throughput.py``).

Storage (see ``data/README.md``): each 84x84 frame is stored once. An episode's frames are laid
out as ``[f-3, f-2, f-1, f0, f1, ...]`` where the first three are the environment's own initial
stack (zeros in ale-py), so the observation of sample ``i`` is exactly
``frames[frame_index[i] : frame_index[i] + 4]``. Should an observation ever not be a one-frame
shift of the previous one, a new segment with its full stack starts, so rebuilding stays exact.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from tqdm import tqdm

from policy_distill.checkpoint import (
    DirectoryLock,
    check_free_space,
    check_writable_directory,
    os_error_text,
    package_versions,
)
from policy_distill.dataset import read_raw_meta, remove_stale_dataset_temporaries, write_dataset
from policy_distill.devices import release_freed_memory
from policy_distill.envs import GameTracker, make_vector_env
from policy_distill.errors import MAX_ENV_SEED, UserError, at_least, check_fields, within
from policy_distill.policy import TeacherPolicy, to_float
from policy_distill.settings import EnvSettings


@dataclass(frozen=True)
class CollectConfig:
    """What to record."""

    frames: int = 100_000
    """Agent steps to record (the paper's 100K; x4 emulator frames)."""
    seed: int = 0
    """Seed for the emulators' no-op starts and the teacher's action sampling."""
    num_envs: int = 16
    """Games run in parallel."""
    batch_size: int = 0
    """Games the teacher acts for per step: 0 (default) all of them, which makes the recording
    reproducible from its seed; fewer, the rest step meanwhile (async, not reproducible)."""

    def __post_init__(self) -> None:
        check_fields(
            "collection settings",
            [
                at_least(self, "frames", 1),
                at_least(self, "num_envs", 1),
                # ale-py seeds game i with seed + i, as a 32-bit signed integer.
                within(self, "seed", 0, max(MAX_ENV_SEED + 1 - self.num_envs, 0)),
                within(self, "batch_size", 0, max(self.num_envs, 1)),
            ],
        )


BYTES_PER_FRAME = 84 * 84 + 64
"""Disk use of one recorded sample: its new 84x84 frame plus index, log-probabilities, action,
reward (the 3 frames of each episode's initial stack add ~1%: the estimate adds 10%)."""


class _Stream:
    """The frames and samples of one environment's current episode."""

    def __init__(self, obs: np.ndarray, start_step: int) -> None:
        # Copies, never views: a view of one row keeps the whole batch that recv returned alive
        # (8 stacks, 225 KB per step), which made a 100K-frame recording peak at ~11 GB.
        obs = obs.copy()  # [4, 84, 84]: these four frames are all stored
        self.frames: list[np.ndarray] = list(obs)  # the full initial stack
        self.frame_index: list[int] = []
        self.log_probs: list[np.ndarray] = []
        self.actions: list[int] = []
        self.rewards: list[float] = []
        self.last_obs = obs
        self.start_step = start_step

    def observe(self, obs: np.ndarray) -> None:
        """Add the observation the teacher is about to act on (not the episode's first)."""
        if np.array_equal(obs[:-1], self.last_obs[1:]):
            # A copy of the one new frame: a view would keep its whole stack (or recv's batch) alive.
            self.frames.append(obs[-1].copy())
        else:  # not a one-frame shift: store the whole stack so rebuilding stays exact
            self.frames.extend(obs.copy())
        self.last_obs = obs.copy()

    def record(self, log_probs: np.ndarray, action: int) -> None:
        stack = self.last_obs.shape[0]
        self.frame_index.append(len(self.frames) - stack)
        self.log_probs.append(log_probs)
        self.actions.append(action)

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def pending(self) -> bool:
        """An action was recorded whose reward has not arrived yet."""
        return len(self.rewards) < len(self.actions)


def _dataset_args(teacher: TeacherPolicy, settings: EnvSettings, cfg: CollectConfig) -> dict[str, Any]:
    """The arguments that define a dataset; a dataset with other values is never reused."""
    return {
        "game": settings.game,
        "settings": settings.to_dict(),
        "teacher_sha256": teacher.source.sha256,
        "frames": cfg.frames,
        "seed": cfg.seed,
    }


def existing_dataset_matches(out_dir: Path, expected: dict[str, Any]) -> bool:
    """True if ``out_dir`` holds a complete dataset made with ``expected`` arguments.

    Raises:
        UserError: a complete dataset made with other arguments (never mixed silently).
    """
    meta_path = out_dir / "meta.json"
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} is a file, not a dataset directory; pass another `out` directory")
    if not meta_path.exists():
        if out_dir.exists() and any(out_dir.iterdir()):
            raise UserError(f"{out_dir} exists but holds no meta.json; remove it or pass `overwrite`")
        return False
    meta = read_raw_meta(out_dir, fix="pass `overwrite` to record the dataset again")
    args = meta.get("collect_args")
    if not isinstance(args, dict):
        raise UserError(f"{meta_path} is not a dataset's metadata; pass `overwrite` to record it again")
    found = {k: args.get(k) for k in expected}
    if found != expected:
        diffs = [f"{k}: {found[k]!r} != {expected[k]!r}" for k in expected if found[k] != expected[k]]
        diff_text = "; ".join(d if len(d) < 120 else d[:117] + "..." for d in diffs)
        raise UserError(
            f"{out_dir} holds a dataset made with other arguments ({diff_text}); "
            "pass `overwrite` to replace it, or another `out` directory"
        )
    return True


@torch.no_grad()
def collect(
    teacher: TeacherPolicy,
    cfg: CollectConfig,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Record ``cfg.frames`` teacher steps into ``out_dir``; returns the metadata written.

    Reuses a complete dataset made with the same arguments unless ``overwrite``. Writes into
    a temporary directory beside ``out_dir`` and renames it at the end, so an interrupted run
    never leaves a dataset that looks complete.
    """
    out_dir = Path(out_dir)
    settings = teacher.settings
    expected = _dataset_args(teacher, settings, cfg)
    if not overwrite and existing_dataset_matches(out_dir, expected):
        return _reuse(out_dir)
    absent = not out_dir.exists()
    with _Destination(out_dir, cfg):
        # The clean-up of a killed write may have put its finished recording in place: reused if
        # it is the one asked for, else recorded over, as the user asked for a place that was empty.
        if not overwrite and absent and out_dir.exists():
            try:
                if existing_dataset_matches(out_dir, expected):
                    return _reuse(out_dir)
            except UserError as e:
                print(f"not reusing the restored {out_dir}: {e}; recording over it")
        return _record(teacher, cfg, out_dir, expected, progress=progress)


def _reuse(out_dir: Path) -> dict[str, Any]:
    meta = read_raw_meta(out_dir, fix="pass `overwrite` to record the dataset again")
    print(f"reusing the complete dataset in {out_dir} ({meta['frames']:,} frames)")
    return meta


class _Destination:
    """Before recording: the destination is a directory this user can write, with room for the
    dataset, and no other collect writes it (a lock beside it, ``.<name>.lock``, held until the
    dataset is written); stale temporaries of dead writers are removed first."""

    def __init__(self, out_dir: Path, cfg: CollectConfig) -> None:
        fix = "pass another `out` directory"
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"{out_dir} is a file, not a dataset directory; {fix}")
        parent = check_writable_directory(out_dir.parent, what="dataset's parent directory", fix=fix)
        self.lock = DirectoryLock(
            parent / f".{out_dir.name}.lock", what=f"dataset directory {str(out_dir)!r}", fix=fix
        )
        try:
            remove_stale_dataset_temporaries(out_dir)
            needed = int(1.1 * cfg.frames * BYTES_PER_FRAME)
            check_free_space(
                parent, needed, what=f"recording of {cfg.frames:,} frames", fix=f"free space or {fix}"
            )
        except BaseException:
            self.lock.release()
            raise

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def _record(
    teacher: TeacherPolicy,
    cfg: CollectConfig,
    out_dir: Path,
    expected: dict[str, Any],
    *,
    progress: bool,
) -> dict[str, Any]:
    """Play and record (the destination was checked by the caller), then write the dataset."""
    settings = teacher.settings
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    env = make_vector_env(settings, cfg.num_envs, batch_size=cfg.batch_size)
    tracker = GameTracker(cfg.num_envs, life_loss_terminal=settings.life_loss_terminal)
    obs, info = env.reset(seed=cfg.seed)
    streams: dict[int, _Stream] = {}
    episodes: list[tuple[_Stream, bool, float]] = []  # (stream, complete, raw score)
    collected, started = 0, time.time()
    bar = tqdm(
        total=cfg.frames,
        unit="frame",
        disable=not progress,
        desc=f"collect {settings.game}",
        mininterval=1.0 if sys.stderr.isatty() else 15.0,
    )

    # Each pass acts for the environments that recv returned. After the last recorded action the
    # loop keeps stepping (unrecorded no-ops) until every recorded action's reward has arrived.
    while True:
        env_ids = info["env_id"]
        if collected < cfg.frames:
            for j, e in enumerate(env_ids):
                if e not in streams:
                    streams[e] = _Stream(obs[j], start_step=collected)
                    tracker.start(env_ids[j : j + 1], info["episode_frame_number"][j : j + 1])
                else:
                    streams[e].observe(obs[j])
            logp = teacher.log_probs(to_float(torch.from_numpy(obs))).float()
            actions = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1).numpy()
            take = min(len(env_ids), cfg.frames - collected)
            logp_np = logp.numpy()
            for j in range(take):
                streams[env_ids[j]].record(logp_np[j], int(actions[j]))
            collected += take
            bar.update(take)
        else:
            actions = np.zeros(len(env_ids), dtype=np.int64)
            if not any(s.pending for s in streams.values()):
                break
        env.send(actions.astype(np.int64))
        obs, reward, terminated, truncated, info = env.recv()
        ids = info["env_id"]
        # Only environments with a recorded action awaiting its reward are accounted; the others
        # are new games' first observations or unrecorded steps after the end.
        waiting = np.array([e in streams and streams[e].pending for e in ids], dtype=bool)
        if not waiting.any():
            continue
        ids_w = ids[waiting]
        game_over, _, _ = tracker.update(
            ids_w,
            reward[waiting],
            terminated[waiting],
            truncated[waiting],
            info["episode_frame_number"][waiting],
        )
        for e, r, over in zip(ids_w, reward[waiting], game_over):
            stream = streams[e]
            stream.rewards.append(float(r))
            if over:
                episodes.append((streams.pop(e), True, float(np.sum(stream.rewards))))
        bar.set_postfix(episodes=len(episodes), refresh=False)  # a refresh per step floods logs
    bar.close()
    env.close()
    wall = time.time() - started
    for stream in sorted(streams.values(), key=lambda s: s.start_step):
        if len(stream):
            episodes.append((stream, False, float(np.sum(stream.rewards))))
    meta = _write(out_dir, episodes, settings, teacher, cfg, expected, wall)
    print(
        f"wrote {out_dir}: {meta['frames']:,} frames, {meta['episodes']} episodes "
        f"({meta['complete_episodes']} complete), {meta['collection_fps']:.0f} frames/s"
    )
    return meta


def _write(
    out_dir: Path,
    episodes: list[tuple[_Stream, bool, float]],
    settings: EnvSettings,
    teacher: TeacherPolicy,
    cfg: CollectConfig,
    collect_args: dict[str, Any],
    wall: float,
) -> dict[str, Any]:
    """Lay the episodes out contiguously, in order of their start, and write them as a dataset."""
    episodes.sort(key=lambda ep: ep[0].start_step)
    # The frames go straight into one preallocated array, each episode's list freed as it is
    # copied, so writing needs about one dataset's worth of memory, not three.
    total_frames = sum(len(stream.frames) for stream, _, _ in episodes)
    all_frames = np.empty((total_frames, *episodes[0][0].frames[0].shape), dtype=np.uint8)
    frame_index, log_probs, actions, rewards = [], [], [], []
    episode_starts, complete, scores = [0], [], []
    frame_offset = 0
    for stream, done, score in episodes:
        n = len(stream)
        all_frames[frame_offset : frame_offset + len(stream.frames)] = stream.frames
        frame_index.append(np.asarray(stream.frame_index, dtype=np.int64) + frame_offset)
        log_probs.append(np.stack(stream.log_probs))
        actions.append(np.asarray(stream.actions, dtype=np.uint8))
        rewards.append(np.asarray(stream.rewards, dtype=np.float32))
        frame_offset += len(stream.frames)
        stream.frames = []
        # Hand the episode's freed frames back to the OS now: glibc keeps small freed blocks in
        # its heap, and without this the copy held the recording twice at its end (measured:
        # a fresh-clone `make distill` peaked 0.46 GB above the run with the dataset on disk).
        release_freed_memory()
        episode_starts.append(episode_starts[-1] + n)
        complete.append(done)
        scores.append(score)
    arrays = {
        "frames": all_frames,
        "frame_index": np.concatenate(frame_index),
        "log_probs": np.concatenate(log_probs).astype(np.float32),
        "actions": np.concatenate(actions),
        "rewards": np.concatenate(rewards),
        "episode_starts": np.asarray(episode_starts, dtype=np.int64),
        "episode_complete": np.asarray(complete, dtype=bool),
    }
    n = len(arrays["actions"])
    complete_scores = [s for s, c in zip(scores, complete) if c]
    meta = {
        "game": settings.game,
        "num_actions": settings.num_actions,
        "settings": settings.to_dict(),
        "teacher": {
            "name": teacher.source.name,
            "kind": teacher.source.kind,
            "sha256": teacher.source.sha256,
            "path": teacher.source.path,
            # "user": the file does not record its game, which was taken on the user's word.
            "game_source": getattr(teacher.source, "game_source", "file"),
        },
        "seed": cfg.seed,
        "frames": n,
        "frames_stored": int(len(arrays["frames"])),
        "episodes": len(episodes),
        "complete_episodes": int(sum(complete)),
        "teacher_score_mean": float(np.mean(complete_scores)) if complete_scores else None,
        "teacher_score_std": float(np.std(complete_scores)) if complete_scores else None,
        "collection_wall_s": round(wall, 2),
        "collection_fps": n / wall,
        "collect_args": collect_args,
        "collect_config": {"num_envs": cfg.num_envs, "batch_size": cfg.batch_size},
        "versions": package_versions(),
        "created_unix": int(time.time()),
    }
    try:
        return write_dataset(out_dir, arrays, meta)
    except OSError as e:
        _rescue(out_dir, arrays, meta, e)


def _rescue(out_dir: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any], error: OSError) -> NoReturn:
    """Writing the dataset failed after recording (a disk that filled, a mount gone read-only):
    write it to the temporary directory instead, and say where it is.

    Raises:
        UserError: always; naming where the recording is, or that it could not be kept.
    """
    reason = os_error_text(error)
    rescue = Path(tempfile.gettempdir()) / f"policy-distill-{meta['game']}-{os.getpid()}"
    try:
        write_dataset(rescue, arrays, meta)
    except OSError as e:
        raise UserError(
            f"could not write the dataset to {out_dir} ({reason}), nor to {rescue} "
            f"({os_error_text(e)}); the recording is lost: free space and run the same command again"
        ) from None
    raise UserError(
        f"could not write the dataset to {out_dir} ({reason}); the recording was saved to {rescue}: "
        f"move it there once there is room (mv {rescue} {out_dir})"
    )
