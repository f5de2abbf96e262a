"""The first steps of distillation: the constant-policy plateau and the student's dead ReLUs.

Every Pong student of the estimator study sat at the held-out KL of a constant policy (~0.57)
for its first 100-400 steps, and a few never left it (docs/estimators.md). This probe trains
KL-only students with ``train_step`` (the step ``distill`` runs) on a fraction of a dataset for
a few hundred steps, with a constant learning rate or a linear warm-up, optionally with the
first layer's biases centred on the mean training frame, and prints per seed the
held-out KL every 50 steps and, at the end, the fraction of each ReLU layer's units that are
positive on some held-out frame (the rest are dead: they pass no gradient).

    python benchmarks/student_plateau.py [--data data/pong] [--fraction 0.1] [--steps 400] \
        [--seeds 0,1,2,3] [--learning-rate 1e-3] [--warmup 0] [--threads 1] [--centre-first-layer]
"""

from __future__ import annotations

import argparse
import time

import torch

from policy_distill.dataset import FrameStore, load_dataset
from policy_distill.distill import DistillConfig, centring_frames, train_step
from policy_distill.losses import kl_divergence
from policy_distill.student import StudentArch, StudentNet


def alive_units(student: StudentNet, x: torch.Tensor) -> list[float]:
    """Per ReLU layer, the fraction of units (channels for convolutions) positive on some frame."""
    out, h = [], x
    with torch.no_grad():
        for layer in student.layers():
            h = layer(h)
            if isinstance(layer, torch.nn.ReLU):
                ever = (h > 0).flatten(2).any(-1).any(0) if h.dim() == 4 else (h > 0).any(0)
                out.append(round(ever.float().mean().item(), 2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/pong")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=0, help="steps of linear learning-rate warm-up")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--centre-first-layer",
        action="store_true",
        help="shift the first convolution's biases by minus its mean response to 1,000 training frames",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data)
    split = dataset.split(args.fraction)
    store = FrameStore(dataset, torch.device("cpu"))
    held_out = torch.from_numpy(split.test[:: max(1, len(split.test) // 2000)])
    x_test, logp_test = store.batch(held_out)
    train_idx = torch.from_numpy(split.train)
    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = DistillConfig(
            alpha=0.0, learning_rate=args.learning_rate, precision="fp32", device="cpu", seed=seed
        )
        torch.manual_seed(seed)
        student = StudentNet(StudentArch(num_actions=dataset.settings.num_actions, in_frames=dataset.stack))
        if args.centre_first_layer:  # as distill --centre-first-layer does it
            student.centre_first_layer(centring_frames(store, train_idx, seed))
        student.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(student.parameters(), lr=args.learning_rate)
        generator = torch.Generator().manual_seed(seed)
        curve, started = [], time.time()
        for step in range(1, args.steps + 1):
            if args.warmup:
                for group in optimizer.param_groups:
                    group["lr"] = args.learning_rate * min(1.0, step / args.warmup)
            idx = train_idx[torch.randint(len(train_idx), (cfg.batch_size,), generator=generator)]
            x, logp = store.batch(idx)
            train_step(student, optimizer, x, logp, None, cfg, generator)  # type: ignore[arg-type]
            if step % 50 == 0:
                with torch.no_grad():
                    curve.append(round(kl_divergence(student.log_probs(x_test), logp_test).item(), 3))
        print(
            f"lr {args.learning_rate:g} warm-up {args.warmup} seed {seed}: held-out KL every 50 steps "
            f"{curve}; alive units per ReLU layer {alive_units(student, x_test)} "
            f"({time.time() - started:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
