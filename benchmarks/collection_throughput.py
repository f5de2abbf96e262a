"""Collection throughput vs the bare environment, measured side by side in one run.

Prints the bare environment's agent steps/s with random actions (the same asynchronous
AtariVectorEnv configuration that collection uses), the collection's frames/s with the
teacher choosing every action (one batched forward per step, log-probs stored), and their ratio.

    python benchmarks/collection_throughput.py [--teacher pong] [--frames 20000] [--json]
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
from policy_distill.envs import make_vector_env


def bare_env_steps_per_second(settings, num_envs: int, batch_size: int, steps: int, seed: int = 0) -> float:
    """Agent steps/s of the environment alone, random actions, same async configuration."""
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
    parser.add_argument("--batch-size", type=int, default=CollectConfig.batch_size)
    parser.add_argument("--repeats", type=int, default=2, help="alternate env/collect this many times")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    teacher = load_teacher(args.teacher)
    cfg = CollectConfig(frames=args.frames, num_envs=args.num_envs, batch_size=args.batch_size)
    env_rates, collect_rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):  # alternate so that drift in machine load hits both alike
            env_rates.append(
                bare_env_steps_per_second(teacher.settings, args.num_envs, args.batch_size, args.frames)
            )
            meta = collect(teacher, cfg, os.path.join(tmp, f"ds{r}"), overwrite=True, progress=False)
            collect_rates.append(meta["collection_fps"])
    env_rate, collect_rate = float(np.median(env_rates)), float(np.median(collect_rates))
    result = {
        "bare_env_steps_per_s": env_rate,
        "collection_frames_per_s": collect_rate,
        "ratio": collect_rate / env_rate,
        "frames": args.frames,
        "num_envs": args.num_envs,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "cpus": len(os.sched_getaffinity(0)),
    }
    print(f"bare environment (random actions): {env_rate:8.0f} steps/s")
    print(f"collection (teacher acting):       {collect_rate:8.0f} frames/s")
    print(f"ratio collection / environment:    {collect_rate / env_rate:8.2f}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
