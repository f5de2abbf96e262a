"""What distillation buys: the student against its teacher as deployed policies, side by side in one run.

For the teacher and the student: parameters, file sizes (checkpoint, and the self-contained files
``export-student`` writes), FLOPs per frame, inference latency at batch 1 and throughput at
batch 256 in three runtimes, and the peak memory of a process serving batch 256, with the
teacher/student ratios and each exported runtime's speed-up over eager PyTorch.

- eager: the loaded policy's ``log_probs`` on ``uint8`` frames (the conversion included), in
  ``torch.inference_mode``;
- TorchScript and ONNX Runtime: the exported graphs (``policy_distill.export``), uint8 in,
  log-probabilities out, loaded from the files as a deployment would (ONNX Runtime without torch).

Each runtime is timed in a fresh process of its own, as a deployment runs one, with the teacher
and the student taking turns in every round so that drift in machine load hits both alike; the
runtimes' processes themselves take turns over ``--sessions`` sessions, and the median over all
rounds is reported. Latency and throughput are separate phases: a deployment serves one batch size,
and TorchScript's profiling executor is slower when calls alternate between shapes. All inputs
are the same random ``uint8`` frames (a dense convnet's time does not depend on the pixels or the
weights). Peak memory is the peak resident set of a fresh process that loads one policy and runs
three batches of 256, so it includes the runtime itself (the torch or onnxruntime libraries).
Without ``--checkpoint`` the student is a randomly initialised one for the teacher's game, which
the output says.

    python benchmarks/student_vs_teacher.py [--checkpoint runs/pong/<run>/best.pt] [--teacher pong]
        [--threads 1] [--repeats 8] [--sessions 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BATCH = 256
KINDS = ("teacher", "student")
RUNTIMES = ("eager", "torchscript", "onnx")
LABELS = {"eager": "eager PyTorch", "torchscript": "TorchScript", "onnx": "ONNX Runtime"}


# --- Child processes: one runtime each, importing only what its deployment needs ---------------


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    """This process's peak resident set in MB: VmHWM, which starts afresh at exec (ru_maxrss
    carries the parent's peak over a fork, so a child would report the benchmark's own)."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; bytes on macOS


def _import_runtime(runtime: str, threads: int) -> None:
    if runtime == "onnx":
        import onnxruntime  # noqa: F401
    else:
        import torch

        torch.set_num_threads(threads)
        if runtime == "eager":
            import agents.loading  # noqa: F401  (the loaders' imports count as the runtime's)
            import policy_distill.student  # noqa: F401


def _load_policy(runtime: str, path: str, kind: str, threads: int) -> Callable[[Any], Any]:
    """``[B, 4, 84, 84] uint8`` numpy -> log-probabilities, as a deployment of ``runtime`` runs it."""
    if runtime == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return lambda obs: session.run(None, {"obs": obs})[0]
    import torch

    if runtime == "torchscript":
        module = torch.jit.load(path)
    elif kind == "student":
        from policy_distill.student import load_student

        module = load_student(path).log_probs
    else:
        from agents.loading import load_teacher

        module = load_teacher(path).log_probs

    def run(obs: Any) -> Any:
        with torch.inference_mode():
            return module(torch.from_numpy(obs))

    return run


def _timed_rounds(
    fns: dict[str, Callable[[Any], Any]], x: Any, calls: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per call of each function on ``x``, one value per round, the functions taking turns
    in every round (in alternating order), after a warm-up (TorchScript's profiling runs, lazy
    allocations)."""
    for fn in fns.values():
        for _ in range(max(3, 20 // calls)):
            fn(x)
    times: dict[str, list[float]] = {key: [] for key in fns}
    keys = list(fns)
    for r in range(repeats):
        for key in keys if r % 2 == 0 else keys[::-1]:
            start = time.perf_counter()
            for _ in range(calls):
                fns[key](x)
            times[key].append((time.perf_counter() - start) / calls)
    return times


def time_child(
    runtime: str, teacher_path: str, student_path: str, threads: int, repeats: int, calls: int
) -> None:
    """Time one runtime's teacher and student, taking turns; print the rounds as JSON."""
    import numpy as np

    _import_runtime(runtime, threads)
    paths = {"teacher": teacher_path, "student": student_path}
    fns = {kind: _load_policy(runtime, paths[kind], kind, threads) for kind in KINDS}
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, 4, 84, 84), dtype=np.uint8)
    batch = rng.integers(0, 256, (BATCH, 4, 84, 84), dtype=np.uint8)
    latency = _timed_rounds(fns, one, calls, repeats)
    batch_time = _timed_rounds(fns, batch, 2, repeats)
    print(json.dumps({"latency_s": latency, "batch_s": batch_time}))


def memory_child(runtime: str, path: str, kind: str, threads: int) -> None:
    """Load one policy, serve three batches of 256, print the peak RSS and how much of it came
    after the runtime's import: the model, its buffers, the activations."""
    import numpy as np

    frames = np.random.default_rng(0).integers(0, 256, (BATCH, 4, 84, 84), dtype=np.uint8)
    _import_runtime(runtime, threads)
    baseline = _status_mb("VmRSS") or 0.0
    fn = _load_policy(runtime, path, kind, threads)
    for _ in range(3):
        fn(frames)
    print(json.dumps({"peak_rss_mb": _peak_rss_mb(), "above_runtime_mb": _peak_rss_mb() - baseline}))


def _child(args: list[str], threads: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, __file__, *args, "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"error: benchmark child {' '.join(args[:2])} failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- The parent: build the files, run the children, compute the figures ------------------------


def _load(args: argparse.Namespace, tmp: Path) -> tuple[Any, Any, Path, str]:
    """The teacher, the student, the student's checkpoint file and a note on where it came from."""
    import torch

    from agents.loading import load_teacher
    from policy_distill.checkpoint import atomic_torch_save
    from policy_distill.student import StudentArch, StudentNet, load_student, student_record

    if args.checkpoint:
        student = load_student(args.checkpoint)
        teacher_ref = args.teacher or student.record.get("teacher", {}).get("path") or student.settings.game
        if not Path(str(teacher_ref)).exists() and not args.teacher:
            teacher_ref = student.settings.game  # recorded on another machine: the shipped teacher
        teacher = load_teacher(teacher_ref, game=student.settings.game)
        return teacher, student, Path(args.checkpoint), f"student: {args.checkpoint}"
    teacher = load_teacher(args.teacher or "pong")
    torch.manual_seed(0)
    net = StudentNet(StudentArch(num_actions=teacher.num_actions, in_frames=teacher.settings.stack))
    path = tmp / "random-student.pt"
    atomic_torch_save(student_record(net, teacher.settings, note="random initialisation (benchmark)"), path)
    note = (
        f"student: randomly initialised for {teacher.settings.game} (no --checkpoint; timings, sizes and "
        "FLOPs do not depend on the weights)"
    )
    return teacher, load_student(path), path, note


def _flops_per_frame(net: Any) -> int:
    """FLOPs of one frame's forward (2 x multiply-adds of the convolutions and linear layers)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net.log_probs(torch.zeros(1, 4, 84, 84))
    return int(counter.get_total_flops())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "onnxruntime"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from policy_distill.devices import cpu_capability
    from policy_distill.errors import UserError
    from policy_distill.export import export_bytes

    torch.set_num_threads(args.threads)
    try:
        import onnxruntime  # noqa: F401

        runtimes = RUNTIMES
    except ImportError:
        runtimes = RUNTIMES[:2]
        print("onnxruntime is not installed: ONNX is left out (pip install 'policy-distill[onnx]')")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        try:
            teacher, student, student_path, note = _load(args, tmp)
        except UserError as e:
            raise SystemExit(f"error: {e}") from None
        models = {"teacher": teacher, "student": student}
        files = {"teacher": {"eager": Path(teacher.source.path)}, "student": {"eager": student_path}}
        for kind, policy in models.items():
            for runtime in runtimes[1:]:
                path = tmp / f"{kind}{'.onnx' if runtime == 'onnx' else '.torchscript.pt'}"
                path.write_bytes(export_bytes(policy.net, runtime))
                files[kind][runtime] = path
        latency = {(k, rt): [] for k in KINDS for rt in runtimes}
        batch_time = {(k, rt): [] for k in KINDS for rt in runtimes}
        for session in range(args.sessions):
            order = runtimes[session % len(runtimes) :] + runtimes[: session % len(runtimes)]
            for rt in order:
                child_args = ["--time-child", rt, str(files["teacher"][rt]), str(files["student"][rt])]
                child_args += ["--repeats", str(args.repeats), "--latency-calls", str(args.latency_calls)]
                rounds = _child(child_args, args.threads)
                for kind in KINDS:
                    latency[(kind, rt)] += rounds["latency_s"][kind]
                    batch_time[(kind, rt)] += rounds["batch_s"][kind]
        memory = {
            (kind, rt): _child(["--memory-child", rt, str(files[kind][rt]), kind], args.threads)
            for kind in KINDS
            for rt in runtimes
        }
        figures: dict[str, Any] = {}
        for kind, policy in models.items():
            figures[kind] = {
                "parameters": sum(p.numel() for p in policy.net.parameters()),
                "flops_per_frame": _flops_per_frame(policy.net),
                "file_mb": {
                    ("checkpoint" if rt == "eager" else rt): p.stat().st_size / 1e6
                    for rt, p in files[kind].items()
                },
                "latency_ms": {rt: 1e3 * statistics.median(latency[(kind, rt)]) for rt in runtimes},
                "throughput_fps": {rt: BATCH / statistics.median(batch_time[(kind, rt)]) for rt in runtimes},
                "peak_rss_mb": {rt: memory[(kind, rt)]["peak_rss_mb"] for rt in runtimes},
                "above_runtime_mb": {rt: memory[(kind, rt)]["above_runtime_mb"] for rt in runtimes},
                "latency_ms_rounds": {rt: [1e3 * t for t in latency[(kind, rt)]] for rt in runtimes},
                "batch_ms_rounds": {rt: [1e3 * t for t in batch_time[(kind, rt)]] for rt in runtimes},
            }
    return {
        "note": note,
        "teacher": f"{teacher.source.name} ({teacher.source.kind}, {teacher.settings.game})",
        "cpu": _cpu_name(),
        "cpu_capability": cpu_capability(),
        "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
        "cores": len(os.sched_getaffinity(0)),
        "threads": args.threads,
        "rounds": args.repeats * args.sessions,
        "batch": BATCH,
        "runtimes": list(runtimes),
        "versions": _versions(),
        "figures": figures,
    }


def print_table(result: dict[str, Any]) -> None:
    """The figures as a Markdown table (readable in a terminal, pasted into docs as it is)."""
    t, s = result["figures"]["teacher"], result["figures"]["student"]
    print(
        f"CPU: {result['cpu']}, capability {result['cpu_capability']} (AVX-512 bf16: "
        f"{'yes' if result['avx512_bf16'] else 'no'}), {result['cores']} cores; {result['threads']} "
        f"thread(s) per runtime; median of {result['rounds']} rounds; torch {result['versions']['torch']}, "
        f"onnxruntime {result['versions']['onnxruntime']}"
    )
    print(f"teacher: {result['teacher']}; {result['note']}")
    rows: list[tuple[str, str, str, str]] = []

    def row(label: str, tv: float, sv: float, fmt: str, higher_is_better: bool = False) -> None:
        ratio = f"{sv / tv:.2f}x (student / teacher)" if higher_is_better else f"{tv / sv:.2f}x"
        rows.append((label, format(tv, fmt), format(sv, fmt), ratio))

    row("parameters", t["parameters"], s["parameters"], ",")
    row("MFLOPs per frame", t["flops_per_frame"] / 1e6, s["flops_per_frame"] / 1e6, ".1f")
    names = {
        "checkpoint": "checkpoint file (MB)",
        "torchscript": "TorchScript file (MB)",
        "onnx": "ONNX file (MB)",
    }
    for name, label in names.items():
        if name in t["file_mb"]:
            row(label, t["file_mb"][name], s["file_mb"][name], ".2f")
    batch = result["batch"]
    for rt in result["runtimes"]:
        row(f"latency, batch 1, {LABELS[rt]} (ms)", t["latency_ms"][rt], s["latency_ms"][rt], ".3f")
    for rt in result["runtimes"]:
        label = f"throughput, batch {batch}, {LABELS[rt]} (frames/s)"
        row(label, t["throughput_fps"][rt], s["throughput_fps"][rt], ",.0f", higher_is_better=True)
    for rt in result["runtimes"]:
        row(
            f"peak memory, batch {batch}, {LABELS[rt]} (MB RSS)",
            t["peak_rss_mb"][rt],
            s["peak_rss_mb"][rt],
            ".0f",
        )
    for rt in result["runtimes"]:
        label = f"of which after the runtime's import, {LABELS[rt]} (MB)"
        row(label, t["above_runtime_mb"][rt], s["above_runtime_mb"][rt], ".1f")
    print()
    print("| | teacher | student | teacher / student |")
    print("| --- | ---: | ---: | ---: |")
    for label, tv, sv, ratio in rows:
        print(f"| {label} | {tv} | {sv} | {ratio} |")
    print()
    print(f"exported vs eager PyTorch (speed-up of latency at batch 1 / of throughput at batch {batch}):")
    for kind, f in (("teacher", t), ("student", s)):
        parts = [
            f"{LABELS[rt]} {f['latency_ms']['eager'] / f['latency_ms'][rt]:.2f}x / "
            f"{f['throughput_fps'][rt] / f['throughput_fps']['eager']:.2f}x"
            for rt in result["runtimes"][1:]
        ]
        print(f"  {kind}: {', '.join(parts)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", help="student checkpoint (default: a random student of the teacher's game)"
    )
    parser.add_argument(
        "--teacher", help="teacher name or path (default: the student's own teacher, else the shipped pong)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads for every runtime (default 1)"
    )
    parser.add_argument("--repeats", type=int, default=8, help="rounds per timing process (default 8)")
    parser.add_argument("--sessions", type=int, default=3, help="timing processes per runtime (default 3)")
    parser.add_argument("--latency-calls", type=int, default=50, help="batch-1 calls timed per round")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    parser.add_argument("--time-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time_child:
        time_child(*args.time_child, threads=args.threads, repeats=args.repeats, calls=args.latency_calls)
        return
    if args.memory_child:
        memory_child(*args.memory_child, threads=args.threads)
        return
    result = run_benchmark(args)
    print_table(result)
    if args.json:
        print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
