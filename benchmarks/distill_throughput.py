"""Training throughput of a KL-only step vs a KL + Sobolev step, side by side, with a profile.

One step = ``policy_distill.distill.train_step``, the step ``distill`` runs: the loss of a batch
of 200 frames, backward, Adam. The Sobolev step adds one teacher forward + VJP (no parameter
gradients) and the student's double backward. Both steps are timed in float32 and under bf16 autocast
(distill --precision bf16), alternating so that drift in machine load hits all four alike.
Also prints where the float32 Sobolev step's time goes.

    python benchmarks/distill_throughput.py [--device auto] [--steps 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from agents.loading import load_teacher
from policy_distill.devices import cpu_capability, pick_device, resolve_precision
from policy_distill.distill import DistillConfig, train_step
from policy_distill.losses import (
    kl_divergence,
    sample_unit_sphere,
    sobolev_projection_loss,
    teacher_projected_gradients,
)
from policy_distill.student import StudentArch, StudentNet


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(student, teacher, x, logp, alpha: float, steps: int, device, bf16: bool = False) -> float:
    """Samples/s of full training steps (``train_step``: loss, backward, Adam) on one fixed batch."""
    opt = torch.optim.Adam(student.parameters(), lr=1e-4)
    cfg = DistillConfig(alpha=alpha, batch_size=x.shape[0], device=str(device))
    generator = torch.Generator(device=device).manual_seed(0)
    for i in range(steps + 3):  # 3 warm-up steps
        if i == 3:
            _sync(device)
            start = time.perf_counter()
        train_step(student, opt, x, logp, teacher.log_probs, cfg, generator, bf16=bf16)
    _sync(device)
    return steps * x.shape[0] / (time.perf_counter() - start)


def profile_sobolev(student, teacher, x, logp, steps: int, device) -> dict[str, float]:
    """Milliseconds per step in each phase of the Sobolev step."""
    phases = {
        "teacher forward + VJP": 0.0,
        "student forward + KL": 0.0,
        "student input-gradient (create_graph)": 0.0,
        "backward (double)": 0.0,
    }
    for _ in range(steps):
        v = sample_unit_sphere((1, x.shape[0]), logp.shape[1], device=device)
        _sync(device)
        t0 = time.perf_counter()
        _, tg = teacher_projected_gradients(teacher.log_probs, x, v)
        _sync(device)
        t1 = time.perf_counter()
        xs = x.detach().requires_grad_(True)
        slogp = student.log_probs(xs)
        kl = kl_divergence(slogp, logp)
        _sync(device)
        t2 = time.perf_counter()
        sob = sobolev_projection_loss(slogp, xs, tg, v)
        _sync(device)
        t3 = time.perf_counter()
        (kl + sob).backward()
        _sync(device)
        t4 = time.perf_counter()
        for key, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            phases[key] += 1000 * dt / steps
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="pong")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = pick_device(args.device)
    teacher = load_teacher(args.teacher, device=device)
    torch.manual_seed(0)
    student = StudentNet(StudentArch(num_actions=teacher.num_actions)).to(device)
    x = torch.randint(0, 256, (args.batch_size, 4, 84, 84), device=device).float() / 255
    with torch.no_grad():
        logp = teacher.log_probs(x)
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(2):  # alternate so that drift in machine load hits all four alike
        for precision in ("fp32", "bf16"):
            for method, alpha in (("kl", 0.0), ("sobolev", 0.01)):
                rate = time_steps(student, teacher, x, logp, alpha, args.steps, device, precision == "bf16")
                rates.setdefault((precision, method), []).append(rate)
    best = {key: max(values) for key, values in rates.items()}
    kl_rate, sob_rate = best[("fp32", "kl")], best[("fp32", "sobolev")]
    phases = profile_sobolev(student, teacher, x, logp, args.steps, device)
    name = (
        torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    auto = resolve_precision("auto", device)
    print(
        f"device: {name}; CPU capability {cpu_capability()}; precision auto -> {auto}; "
        f"batch {args.batch_size}"
    )
    print(f"{'samples/s':18s} {'fp32':>9s} {'bf16':>9s} {'bf16 speed-up':>14s}")
    for method, label in (("kl", "KL-only step"), ("sobolev", "KL + Sobolev step")):
        fp32, bf16 = best[("fp32", method)], best[("bf16", method)]
        print(f"{label:18s} {fp32:9.0f} {bf16:9.0f} {bf16 / fp32:13.2f}x")
    print(
        f"time ratio Sobolev / KL: {kl_rate / sob_rate:.2f} (fp32), "
        f"{best[('bf16', 'kl')] / best[('bf16', 'sobolev')]:.2f} (bf16)"
    )
    total = sum(phases.values())
    print("fp32 Sobolev step profile (ms per step):")
    for key, ms in phases.items():
        print(f"  {key:40s} {ms:8.1f}  ({100 * ms / total:4.1f}%)")
    if args.json:
        print(
            json.dumps(
                {
                    "device": name,
                    "cpu_capability": cpu_capability(),
                    "precision_auto": auto,
                    "kl_samples_per_s": kl_rate,
                    "sobolev_samples_per_s": sob_rate,
                    "time_ratio": kl_rate / sob_rate,
                    "bf16_kl_samples_per_s": best[("bf16", "kl")],
                    "bf16_sobolev_samples_per_s": best[("bf16", "sobolev")],
                    "bf16_time_ratio": best[("bf16", "kl")] / best[("bf16", "sobolev")],
                    "profile_ms": phases,
                    "cpus": len(os.sched_getaffinity(0)),
                }
            )
        )


if __name__ == "__main__":
    main()
