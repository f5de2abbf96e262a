"""Training throughput of distillation steps, side by side in one run: KL only and each Sobolev
estimator, float32 and the hardware's resolved precision, channels_last on and off; peak memory.

One step = ``policy_distill.distill.train_step``, the step ``distill`` runs: the loss of a batch
of 200 frames, backward, Adam. Configurations alternate over ``--repeats`` rounds so that drift
in machine load hits all alike; the best round is reported. Also prints where the float32 ``vjp``
(the paper's) step's time goes, and, with ``--memory-frames``, the peak resident memory of
``distill`` run as a user runs it: once recording the dataset first in the same process (a fresh
clone), once with the dataset already on disk.

    python benchmarks/distill_throughput.py [--device auto] [--steps 20] [--memory-frames 0] [--json]

The JSON object has ``kl_samples_per_s`` and, per estimator as ``distill`` runs it by default,
``<name>_samples_per_s`` and ``<name>_time_ratio`` (KL-only samples/s over the estimator's: how
many KL steps one costs), and ``best_time_ratio``, all in float32 with channels_last (the
defaults); ``time_ratios_by_label`` adds ``fd-share4``, fd with each input direction shared by 4
samples (``--samples-per-direction 4``), under the estimator study's labels; every configuration
measured is under ``configurations``, with its minor page faults per step.

Two ablations of the ``vjp`` step, measured in the same rounds: ``vjp-native-conv`` computes the
strided convolutions' input gradients with ``nn.Conv2d``'s own kernel instead of
:class:`~policy_distill.strided_conv.StridedConv2d`'s space-to-depth one (JSON
``strided_conv_speedup``), and ``--default-malloc`` leaves glibc's allocator as it is instead of
calling ``keep_freed_memory_for_reuse`` as ``distill`` does (run the benchmark once with and once
without it to compare; the page faults per step show the difference).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import torch
from torch import nn

from agents.loading import load_teacher
from policy_distill.checkpoint import hardware_description
from policy_distill.devices import (
    DEFAULT_MALLOC_ENV,
    cpu_capability,
    keep_freed_memory_for_reuse,
    pick_device,
    resolve_precision,
)
from policy_distill.distill import DistillConfig, train_step
from policy_distill.experiments.estimators import label
from policy_distill.losses import (
    SOBOLEV_ESTIMATORS,
    kl_divergence,
    sample_unit_sphere,
    sobolev_projection_loss,
    teacher_projected_gradients,
)
from policy_distill.strided_conv import StridedConv2d
from policy_distill.student import StudentArch, StudentNet

SHARED = 4
"""Samples per input direction of the shared-direction fd row."""
NATIVE_CONV = "vjp-native-conv"
"""The vjp row with nn.Conv2d's own input-gradient kernel (the StridedConv2d ablation)."""


@contextlib.contextmanager
def native_convolutions(*nets: nn.Module) -> Iterator[None]:
    """Within the block, every StridedConv2d of ``nets`` is a plain nn.Conv2d (same parameters)."""
    swapped = [m for net in nets for m in net.modules() if type(m) is StridedConv2d]
    for m in swapped:
        m.__class__ = nn.Conv2d
    try:
        yield
    finally:
        for m in swapped:
            m.__class__ = StridedConv2d


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(student, teacher, x, logp, cfg: DistillConfig, steps: int, device, bf16: bool) -> float:
    """Samples/s of full training steps (``train_step``: loss, backward, Adam) on one fixed batch."""
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    student.to(memory_format=memory_format)
    teacher.to(memory_format=memory_format)
    opt = torch.optim.Adam(student.parameters(), lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(0)
    for i in range(steps + 3):  # 3 warm-up steps
        if i == 3:
            _sync(device)
            start = time.perf_counter()
        train_step(student, opt, x, logp, teacher.log_probs, cfg, generator, bf16=bf16)
    _sync(device)
    return steps * x.shape[0] / (time.perf_counter() - start)


def profile_vjp(student, teacher, x, logp, steps: int, device) -> dict[str, float]:
    """Milliseconds per step in each phase of the paper's (vjp) Sobolev step, float32."""
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
        # As train_step does: only the parameters (the input gradient is pruned).
        torch.autograd.backward(kl + sob, inputs=list(student.parameters()))
        _sync(device)
        t4 = time.perf_counter()
        for key, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            phases[key] += 1000 * dt / steps
    return phases


def peak_memory_of_distill(frames: int, with_dataset: bool, workdir: str) -> float:
    """Peak resident MB of a ``distill`` process of 20 steps; without the dataset it records
    ``frames`` first, in the same process, as ``make distill`` does on a fresh clone."""
    data = os.path.join(workdir, "data")
    args = [sys.executable, "-m", "policy_distill", "distill", "--game", "pong", "--data", data]
    args += ["--frames", str(frames), "--steps", "20", "--eval-every", "20", "--no-progress"]
    args += ["--runs-dir", os.path.join(workdir, f"runs-{with_dataset}")]
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
        "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="pong")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--memory-frames",
        type=int,
        default=0,
        help="also measure distill's peak memory with this many frames",
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's allocator as it is (distill calls keep_freed_memory_for_reuse)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.default_malloc:
        os.environ[DEFAULT_MALLOC_ENV] = "1"  # also for the distill processes of --memory-frames
    keep_freed_memory_for_reuse()
    device = pick_device(args.device)
    resolved = resolve_precision("auto", device)
    precisions = ["fp32"] if resolved == "fp32" else ["fp32", resolved]
    teacher = load_teacher(args.teacher, device=device)
    torch.manual_seed(0)
    student = StudentNet(StudentArch(num_actions=teacher.num_actions)).to(device)
    x = torch.randint(0, 256, (args.batch_size, 4, 84, 84), device=device).float() / 255
    with torch.no_grad():
        logp = teacher.log_probs(x)
    # (estimator, samples_per_direction) per row: each estimator as distill runs it by default,
    # and fd with each input direction shared by SHARED samples.
    settings = {"kl": ("vjp", 1), **{est: (est, 1) for est in SOBOLEV_ESTIMATORS}}
    settings[label("sobolev", "fd", SHARED)] = ("fd", SHARED)
    settings[NATIVE_CONV] = ("vjp", 1)
    methods = list(settings)
    configs = [(m, p, cl) for p in precisions for cl in (True, False) for m in methods]
    rates: dict[tuple[str, str, bool], float] = {}
    faults: dict[tuple[str, str, bool], float] = {}
    for _ in range(args.repeats):
        for method, precision, channels_last in configs:
            estimator, shared = settings[method]
            cfg = DistillConfig(
                alpha=0.0 if method == "kl" else 0.01,
                sobolev_estimator=estimator,
                samples_per_direction=shared,
                batch_size=args.batch_size,
                channels_last=channels_last,
                device=str(device),
            )
            ablation = (
                native_convolutions(student, teacher) if method == NATIVE_CONV else contextlib.nullcontext()
            )
            before = minor_faults()
            with ablation:
                rate = time_steps(student, teacher, x, logp, cfg, args.steps, device, precision == "bf16")
            key = (method, precision, channels_last)
            faults[key] = (minor_faults() - before) / (args.steps + 3)
            rates[key] = max(rates.get(key, 0.0), rate)
    # Profiled as distill runs it: channels_last.
    student.to(memory_format=torch.channels_last)
    teacher.to(memory_format=torch.channels_last)
    phases = profile_vjp(
        student, teacher, x.contiguous(memory_format=torch.channels_last), logp, args.steps, device
    )

    name = (
        torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"device: {name}; CPU capability {cpu_capability()}; precision auto -> {resolved}; "
        f"batch {args.batch_size}"
    )
    print(
        f"{'samples/s':14s}"
        + "".join(f"{p + ('' if cl else ' no-CL'):>14s}" for p in precisions for cl in (True, False))
    )
    for method in methods:
        row = "".join(f"{rates[(method, p, cl)]:14.0f}" for p in precisions for cl in (True, False))
        print(f"{method:14s}{row}")
    result: dict[str, object] = {
        "device": name,
        "hardware": hardware_description(),
        "cpu_capability": cpu_capability(),
        "precision_auto": resolved,
        "batch_size": args.batch_size,
        "cpus": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "malloc": "glibc default" if args.default_malloc else "keep_freed_memory_for_reuse",
    }
    for precision in precisions:
        prefix = "" if precision == "fp32" else f"{precision}_"
        kl_rate = rates[("kl", precision, True)]
        result[f"{prefix}kl_samples_per_s"] = round(kl_rate, 1)
        ratios = {}
        for est in SOBOLEV_ESTIMATORS:
            result[f"{prefix}{est}_samples_per_s"] = round(rates[(est, precision, True)], 1)
            ratios[est] = kl_rate / rates[(est, precision, True)]
            result[f"{prefix}{est}_time_ratio"] = round(ratios[est], 2)
        result[f"{prefix}best_time_ratio"] = round(min(ratios.values()), 2)
        # Every row's, under the estimator study's labels (policy_distill/experiments/estimators.py).
        result[f"{prefix}time_ratios_by_label"] = {
            m: round(kl_rate / rates[(m, precision, True)], 2)
            for m in methods
            if m not in ("kl", NATIVE_CONV)
        }
        speedup = rates[("vjp", precision, True)] / rates[(NATIVE_CONV, precision, True)]
        result[f"{prefix}strided_conv_speedup"] = round(speedup, 2)
        print(
            f"{precision}, channels_last: the vjp step with StridedConv2d is {speedup:.2f}x"
            " as fast as with nn.Conv2d"
        )
        print(
            f"{precision}, channels_last: time ratio to KL-only "
            + ", ".join(f"{est} {r:.2f}" for est, r in ratios.items())
        )
    result["configurations"] = [
        {
            "method": m,
            "precision": p,
            "channels_last": cl,
            "samples_per_s": round(rates[(m, p, cl)], 1),
            "minor_faults_per_step": round(faults[(m, p, cl)]),
        }
        for m, p, cl in configs
    ]
    total = sum(phases.values())
    print("fp32 vjp Sobolev step profile, channels_last (ms per step):")
    for key, ms in phases.items():
        print(f"  {key:40s} {ms:8.1f}  ({100 * ms / total:4.1f}%)")
    result["vjp_profile_ms"] = phases
    result["peak_rss_mb_benchmark"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if args.memory_frames:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = peak_memory_of_distill(args.memory_frames, False, tmp)
            on_disk = peak_memory_of_distill(args.memory_frames, True, tmp)
            size = sum(
                os.path.getsize(os.path.join(tmp, "data", f)) for f in os.listdir(os.path.join(tmp, "data"))
            )
        print(
            f"peak resident memory of distill ({args.memory_frames:,} frames, "
            f"dataset {size / 2**20:.0f} MB): "
            f"recording first {fresh:.0f} MB, dataset on disk {on_disk:.0f} MB"
        )
        result.update(
            memory_frames=args.memory_frames,
            dataset_mb=round(size / 2**20),
            peak_rss_mb_distill_fresh=round(fresh),
            peak_rss_mb_distill_dataset_on_disk=round(on_disk),
        )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
