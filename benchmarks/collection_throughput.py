"""Collection throughput vs the bare environment, per recv batch size, side by side in one run.

For each batch size (``0``: all environments each step, synchronous; fewer: asynchronous, the
emulators of the rest step while the teacher acts) it prints the bare environment's agent
steps/s with random actions, the collection's frames/s with the teacher choosing every action
(one batched forward per step, log-probs stored), their ratio, the collection's speed relative
to the first batch size, and whether the repeats recorded the same content (same seed): the
synchronous mode's recording is reproducible, the asynchronous one's follows thread timing.
Batch sizes and repeats are alternated so that drift in machine load hits all alike.

    python benchmarks/collection_throughput.py [--teacher pong] [--frames 20000] [--batch-sizes 0,8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from agents.loading import load_teacher
from policy_distill.collect import CollectConfig, collect
from policy_distill.devices import cpu_capability
from policy_distill.envs import make_vector_env


def bare_env_steps_per_second(settings, num_envs: int, batch_size: int, steps: int, seed: int = 0) -> float:
    """Agent steps/s of the environment alone, random actions, the same recv batch size."""
    env = make_vector_env(settings, num_envs, batch_size=batch_size)
    rng = np.random.default_rng(seed)
    _, info = env.reset(seed=seed)
    done, start = 0, time.perf_counter()
    while done < steps:
        env.send(rng.integers(0, settings.num_actions, size=len(info["env_id"])).astype(np.int64))
        _, _, _, _, info = env.recv()
        done += len(info["env_id"])
    elapsed = time.perf_counter() - start
    env.close()
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="pong")
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--num-envs", type=int, default=CollectConfig.num_envs)
    parser.add_argument(
        "--batch-sizes",
        default=f"{CollectConfig.batch_size},8",
        help="comma-separated recv batch sizes to compare (0: all environments, synchronous)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="alternate the batch sizes this many times")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    teacher = load_teacher(args.teacher)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    configs = {b: CollectConfig(args.frames, num_envs=args.num_envs, batch_size=b) for b in batch_sizes}
    env_rates: dict[int, list[float]] = {b: [] for b in batch_sizes}
    collect_rates: dict[int, list[float]] = {b: [] for b in batch_sizes}
    contents: dict[int, set[str]] = {b: set() for b in batch_sizes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for b in batch_sizes:
                settings = teacher.settings
                env_rates[b].append(bare_env_steps_per_second(settings, args.num_envs, b, args.frames))
                out = os.path.join(tmp, f"ds{b}-{r}")
                meta = collect(teacher, configs[b], out, overwrite=True, progress=False)
                collect_rates[b].append(meta["collection_fps"])
                contents[b].add(meta["content_sha256"])
    print(
        f"{teacher.settings.game}, {args.frames:,} frames, {args.num_envs} environments, "
        f"{torch.get_num_threads()} torch threads, {len(os.sched_getaffinity(0))} CPUs ({cpu_capability()}), "
        f"median of {args.repeats} alternated repeats"
    )
    print("batch | bare env steps/s | collection frames/s | collection / env | vs first | same recording")
    rows = []
    first = float(np.median(collect_rates[batch_sizes[0]]))
    for b in batch_sizes:
        env_rate, collect_rate = float(np.median(env_rates[b])), float(np.median(collect_rates[b]))
        same = len(contents[b]) == 1 if args.repeats > 1 else None
        rows.append(
            {
                "batch_size": b,
                "bare_env_steps_per_s": env_rate,
                "collection_frames_per_s": collect_rate,
                "ratio": collect_rate / env_rate,
                "vs_first": collect_rate / first,
                "same_recording_across_repeats": same,
            }
        )
        label = "all" if b == 0 else str(b)
        print(
            f"{label:>5} | {env_rate:16.0f} | {collect_rate:19.0f} | {collect_rate / env_rate:16.2f} "
            f"| {collect_rate / first:8.2f} | {'n/a' if same is None else 'yes' if same else 'no'}"
        )
    if args.json:
        print(
            json.dumps(
                {
                    "frames": args.frames,
                    "num_envs": args.num_envs,
                    "repeats": args.repeats,
                    "torch_threads": torch.get_num_threads(),
                    "cpus": len(os.sched_getaffinity(0)),
                    "cpu_capability": cpu_capability(),
                    "rows": rows,
                }
            )
        )


if __name__ == "__main__":
    main()
