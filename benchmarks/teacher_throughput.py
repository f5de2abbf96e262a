"""PPO trainer throughput (agent steps/s), trainer settings side by side in one run.

Each variant trains the real trainer (``agents.ppo.train_ppo``) for a few updates from scratch in
a temporary directory; variants alternate over ``--repeats`` rounds so that drift in machine load
hits all alike, and the median is reported. The variants vary one thing at a time from the
trainer's defaults: precision (fp32 / bf16 autocast), the channels_last memory format, and the
rollout / update shape (environments, epochs, minibatches). Prints the CPU capability, because
bf16 is fast only with native bf16 units.

    python benchmarks/teacher_throughput.py [--game breakout] [--updates 3] [--repeats 2] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import tempfile
from contextlib import redirect_stdout
from io import StringIO

import numpy as np
import torch

from agents.ppo import PPOConfig, train_ppo
from policy_distill.checkpoint import hardware_description
from policy_distill.devices import DEFAULT_MALLOC_ENV, cpu_capability, pick_device, resolve_precision

# name -> overrides of the trainer's defaults; one thing changed at a time.
VARIANTS: dict[str, dict[str, object]] = {
    "defaults (auto precision)": {},
    "fp32": {"precision": "fp32"},
    "bf16": {"precision": "bf16"},
    "fp32, no channels_last": {"precision": "fp32", "channels_last": False},
    "bf16, no channels_last": {"precision": "bf16", "channels_last": False},
    "8 envs, 4 minibatches, 4 epochs (CleanRL)": {"num_envs": 8, "num_minibatches": 4, "update_epochs": 4},
    "16 envs, 8 minibatches, 3 epochs (envpool Pong)": {
        "num_envs": 16,
        "num_minibatches": 8,
        "update_epochs": 3,
    },
    "8 envs, 4 minibatches, 2 epochs": {"num_envs": 8, "num_minibatches": 4, "update_epochs": 2},
    "16 envs, 4 minibatches, 2 epochs": {"num_envs": 16, "num_minibatches": 4, "update_epochs": 2},
}


def steps_per_second(game: str, overrides: dict[str, object], updates: int, device: str) -> float:
    """Agent steps/s of ``updates`` trainer updates (rollout + PPO epochs) from scratch."""
    base = PPOConfig(game=game, device=device)
    cfg = dataclasses.replace(base, **overrides)  # type: ignore[arg-type]
    cfg = dataclasses.replace(cfg, total_steps=updates * cfg.batch_size, checkpoint_every=10**6)
    with tempfile.TemporaryDirectory() as tmp, redirect_stdout(StringIO()):
        result = train_ppo(cfg, tmp, log_every=10**6)
    return result.steps_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="breakout")
    parser.add_argument("--updates", type=int, default=3, help="trainer updates per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all variants")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", help="comma-separated variant names (default: all)")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's allocator as it is (the trainer calls keep_freed_memory_for_reuse)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.default_malloc:
        os.environ[DEFAULT_MALLOC_ENV] = "1"  # train_ppo's keep_freed_memory_for_reuse does nothing

    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"error: unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    device = pick_device(args.device)
    auto = resolve_precision("auto", device)
    print(
        f"device {device}, CPU capability {cpu_capability()}, precision auto -> {auto}, "
        f"torch threads {torch.get_num_threads()}, {hardware_description()}, "
        f"malloc {'glibc default' if args.default_malloc else 'keep_freed_memory_for_reuse'}"
    )
    rates: dict[str, list[float]] = {n: [] for n in names}
    steps_per_second(args.game, VARIANTS[names[0]], 1, args.device)  # warm-up: first-call costs
    for _ in range(args.repeats):
        for name in names:
            rates[name].append(steps_per_second(args.game, VARIANTS[name], args.updates, args.device))
    reference = float(np.median(rates[names[0]]))
    rows = []
    print(f"{'variant':<50} {'agent steps/s':>14} {'x ' + names[0][:20]:>24}")
    for name in names:
        rate = float(np.median(rates[name]))
        rows.append({"variant": name, "steps_per_s": round(rate, 1), "ratio": round(rate / reference, 3)})
        print(f"{name:<50} {rate:14.0f} {rate / reference:24.2f}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of the benchmark process: {peak_mb:.0f} MB")
    if args.json:
        print(
            json.dumps(
                {
                    "game": args.game,
                    "cpu_capability": cpu_capability(),
                    "precision_auto": auto,
                    "device": str(device),
                    "hardware": hardware_description(),
                    "torch_threads": torch.get_num_threads(),
                    "cpus": len(os.sched_getaffinity(0)),
                    "malloc": "glibc default" if args.default_malloc else "keep_freed_memory_for_reuse",
                    "updates": args.updates,
                    "repeats": args.repeats,
                    "peak_rss_mb": round(peak_mb),
                    "variants": rows,
                }
            )
        )


if __name__ == "__main__":
    main()
