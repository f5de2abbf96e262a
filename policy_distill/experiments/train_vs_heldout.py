"""Training KL against held-out KL for every run of the reproduction grid.

The training KL is the mean of the logged batch KL (``losses/kl``, every 50 steps) over a run's
last 500 steps, read from its TensorBoard events; the held-out KL is the results row's
``final_kl``. Their ratio shows which students memorised their training frames.

    python -m policy_distill.experiments.train_vs_heldout docs/reproduce/results.jsonl
"""

from __future__ import annotations

import sys
from collections import defaultdict

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from policy_distill.experiments.sweep import latest_rows, read_rows


def training_kl(run_dir: str, last_steps: int = 500) -> float:
    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    points = events.Scalars("losses/kl")
    final = max(p.step for p in points)
    return float(np.mean([p.value for p in points if p.step > final - last_steps]))


def main() -> None:
    rows = [r for r in latest_rows(read_rows(sys.argv[1:])) if r.get("method") in ("kl", "sobolev")]
    cells: dict[tuple[str, float], list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        cells[(r["method"], r["train_fraction"])].append((training_kl(r["run_dir"]), r["final_kl"]))
    print("| method | fraction | runs | training KL (last 500 steps) | held-out KL | held-out / training |")
    print("|---|---:|---:|---:|---:|---:|")
    for (method, fraction), pairs in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        train, test = (float(np.mean(v)) for v in zip(*pairs))
        print(f"| {method} | {fraction:g} | {len(pairs)} | {train:.4f} | {test:.4f} | {test / train:.1f}x |")


if __name__ == "__main__":
    main()
