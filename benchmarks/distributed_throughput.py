"""Past one process, measured side by side on this machine: (a) the wall time of a small sweep
grid with the local executor and with Ray given 1 and 2 CPUs (one cell per CPU); (b) distill's
samples/s in one process and under ``torchrun --nproc_per_node=2``, KL only and KL + Sobolev.

    python benchmarks/distributed_throughput.py [--frames 2000] [--grid-steps 60] [--steps 100]
        [--repeats 1] [--json]

The grid: pong, fractions 0.3 and 0.6 x {kl, sobolev} x seed 0 (4 cells), batch 200, on a
dataset the shipped Pong teacher records first (``--frames``). Samples/s: distill's own
``charts/samples_per_second`` at step 100 (steps 51-100: the first 50 warm up), global batch 200,
fp32. Every process runs torch on one thread (OMP_NUM_THREADS=1), as Ray gives a 1-CPU task.
With ``--repeats R`` the configurations alternate over R rounds (every other round in reverse
order), so that drift in the machine's load hits all alike; every round is kept, the best
(shortest time, highest samples/s) is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


def grid_wall_time(executor: str, cpus: int, root: Path, data: Path, steps: int, round_: int) -> float:
    from policy_distill.experiments.sweep import SweepConfig, reproduce

    out = root / f"grid-{executor}-{cpus}-round{round_}"
    out.mkdir()
    entry = {"learning_rate": 1e-3, "alpha": 0.01, "steps": steps, "chosen_by": "bench", "precision": "fp32"}
    (out / "hparams.json").write_text(json.dumps({"pong": entry}))
    cfg = SweepConfig(
        games="pong",
        fractions="0.3,0.6",
        seeds="0",
        hparams=str(out / "hparams.json"),
        results=str(out / "results.jsonl"),
        runs_dir=str(out / "runs"),
        data=str(data),
        device="cpu",
        eval_every=steps,
        eval_frames=500,
        fidelity_frames=16,
        executor=executor,
    )
    if executor == "ray":
        import ray

        ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
    try:
        started = time.perf_counter()
        result = reproduce(cfg)
        seconds = time.perf_counter() - started
    finally:
        if executor == "ray":
            ray.shutdown()
    assert result["ran"] == 4, result
    return seconds


def samples_per_s(processes: int, alpha: float, root: Path, data: Path, steps: int, round_: int) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = root / f"ddp-{processes}-{alpha:g}-round{round_}"
    flags = [
        "distill",
        "--data",
        str(data),
        "--runs-dir",
        str(runs),
        f"--steps={steps}",
        f"--eval-every={steps}",
        "--eval-frames=500",
        "--fidelity-frames=16",
        f"--alpha={alpha}",
        "--device=cpu",
        "--precision=fp32",
        "--no-progress",
    ]
    launcher = [sys.executable, "-m"]
    if processes > 1:
        launcher += ["torch.distributed.run", f"--nproc_per_node={processes}", "--master_port=29533", "-m"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*launcher, "policy_distill", *flags], check=True, env=env, capture_output=True)
    (run_dir,) = (runs / "pong").iterdir()
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("charts/samples_per_second")}[steps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--grid-steps", type=int, default=60)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from agents.loading import load_teacher
    from policy_distill.checkpoint import hardware_description
    from policy_distill.collect import CollectConfig, collect

    root = Path(tempfile.mkdtemp(prefix="distributed-bench-"))
    data = root / "data"
    collect(load_teacher("pong"), CollectConfig(frames=args.frames), data, progress=False)
    out: dict[str, object] = {"hardware": hardware_description(), "cpus": os.cpu_count()}
    grids = {"local": ("local", 1), "ray_1_cpu": ("ray", 1), "ray_2_cpus": ("ray", 2)}
    runs = {f"{m}_{p}_process": (p, a) for m, a in (("kl", 0.0), ("sobolev", 0.01)) for p in (1, 2)}
    grid_rounds: dict[str, list[float]] = {name: [] for name in grids}
    sps_rounds: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(args.repeats):
        step = 1 if round_ % 2 == 0 else -1
        for name, (executor, cpus) in list(grids.items())[::step]:
            grid_rounds[name].append(grid_wall_time(executor, cpus, root, data, args.grid_steps, round_))
            print(f"round {round_}: grid of 4 cells, {name}: {grid_rounds[name][-1]:.1f} s")
        for name, (processes, alpha) in list(runs.items())[::step]:
            sps_rounds[name].append(samples_per_s(processes, alpha, root, data, args.steps, round_))
            print(f"round {round_}: distill {name}: {sps_rounds[name][-1]:.0f} samples/s")
    out["grid_wall_s"] = {name: min(values) for name, values in grid_rounds.items()}
    out["samples_per_s"] = {name: max(values) for name, values in sps_rounds.items()}
    out["rounds"] = {"grid_wall_s": grid_rounds, "samples_per_s": sps_rounds}
    if args.json:
        print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
