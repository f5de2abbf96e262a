"""The distillation loop: ``policy_distill distill`` / ``make distill GAME=pong``.

Reads top to bottom: load the teacher and the dataset (recording one if none is there), put
the frames where the model runs, then repeat: sample a batch of 200 training frames, compute
KL (+ alpha * the stochastic Sobolev term), step Adam; every ``eval_every`` steps measure the
held-out metrics, log them, and write ``latest.pt`` (and ``best.pt`` by held-out KL).
Run the same command again after an interruption and it resumes from ``latest.pt``.

The Sobolev term needs a double backward, which ``torch.compile`` does not support, so the
whole step runs eagerly.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from agents.loading import Teacher, load_teacher
from policy_distill.checkpoint import (
    atomic_torch_save,
    hardware_description,
    package_versions,
    require_format,
    safe_torch_load,
)
from policy_distill.collect import CollectConfig, collect
from policy_distill.dataset import Dataset, load_dataset
from policy_distill.devices import autocast, pick_device
from policy_distill.errors import UserError
from policy_distill.losses import distillation_loss, input_jacobian
from policy_distill.metrics import gradient_fidelity, gradient_maps, policy_metrics
from policy_distill.settings import PRECISIONS, game_info
from policy_distill.student import STUDENT_FORMAT, StudentArch, StudentNet, student_record


@dataclass(frozen=True)
class DistillConfig:
    """One distillation run. Defaults: the paper's student, Adam, batch 200, KL + Sobolev."""

    game: str = "pong"
    """Game (its shipped teacher and data/<game> are the defaults)."""
    teacher: str = ""
    """Shipped teacher name or checkpoint path (default: the game's shipped teacher)."""
    data: str = ""
    """Dataset directory (default data/<game>); recorded first if missing."""
    frames: int = 100_000
    """Frames to record when the dataset is missing (the paper's 100K)."""
    train_fraction: float = 0.9
    """The paper's x%: the first x of the recording trains, later episodes test."""
    validation_fraction: float = 0.0
    """Hold out this share of the training part's end (whole episodes) instead of the test part,
    for choosing hyperparameters; 0 evaluates on the test part."""
    steps: int = 3_000
    """Optimiser steps (3,000 x 200 frames: ~6.7 passes over a 90K-frame training split)."""
    batch_size: int = 200
    """Frames per step (the paper's 200)."""
    learning_rate: float = 1e-3
    """Adam step size (the paper tuned it per game in [1e-5, 1e-3]; 1e-3 won on Pong's
    validation split, see docs/tuning/pong.md)."""
    alpha: float = 0.01
    """Weight of the Sobolev term; 0 trains on the KL alone. The term's raw size is ~100x the
    KL's (input-gradients over 28K pixels), so 0.01 balances them; chosen on Pong's validation
    split among 1, 0.1 and 0.01 (docs/tuning/pong.md)."""
    num_projections: int = 1
    """K: random directions v per frame for the Sobolev term."""
    grad_norm: str = "l2"
    """Distance between input-gradients: l2 (the paper's), squared_l2 or l1."""
    kl_direction: str = "student_teacher"
    """student_teacher = KL(pi || pi*) (the paper's) or teacher_student."""
    temperature: float = 1.0
    """Softens both policies before the KL (1 = none)."""
    precision: str = "fp32"
    """fp32, or bf16: the training step (both networks' forwards and input-gradients) under bf16
    autocast. Per step on one AVX-512-bf16 CPU core 1.5x faster for KL + Sobolev and 2.0x for KL
    alone (benchmarks/distill_throughput.py, docs/reproduce/precision.md); the held-out metrics are
    computed in float32 either way."""
    eval_every: int = 500
    """Steps between held-out evaluations and checkpoints."""
    eval_frames: int = 10_000
    """Test frames used for action error and KL (evenly spaced over the test split)."""
    fidelity_frames: int = 128
    """Fixed test frames for gradient fidelity (full Jacobians of both networks)."""
    test_data: str = ""
    """Separate held-out dataset, e.g. for train_fraction 1.0 (default: the split's test part)."""
    seed: int = 0
    """Seed of the student's initialisation, batch order and directions v."""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda."""
    run: str = ""
    """Run name under runs/<game>/ (default: derived from method, fraction and seed)."""
    runs_dir: str = "runs"
    """Root of run directories."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "game", game_info(self.game).name)
        problems = []
        if self.grad_norm not in ("l2", "squared_l2", "l1"):
            problems.append(f"--grad-norm {self.grad_norm!r} (use l2, squared_l2 or l1)")
        if self.kl_direction not in ("student_teacher", "teacher_student"):
            problems.append(f"--kl-direction {self.kl_direction!r} (use student_teacher or teacher_student)")
        if self.alpha < 0 or not math.isfinite(self.alpha):
            problems.append(f"--alpha {self.alpha} (must be >= 0)")
        for name in (
            "steps",
            "batch_size",
            "eval_every",
            "num_projections",
            "eval_frames",
            "fidelity_frames",
        ):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} {getattr(self, name)} (must be >= 1)")
        if not 0 < self.learning_rate < 1:
            problems.append(f"--learning-rate {self.learning_rate} (must be in (0, 1))")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision {self.precision!r} (use fp32 or bf16)")
        if self.temperature <= 0:
            problems.append(f"--temperature {self.temperature} (must be > 0)")
        if self.validation_fraction and self.test_data:
            problems.append("--validation-fraction with --test-data (validation is carved from training)")
        if problems:
            raise UserError("invalid settings: " + "; ".join(problems))

    @property
    def method(self) -> str:
        return "sobolev" if self.alpha > 0 else "kl"

    @property
    def run_dir(self) -> Path:
        val = f"-val{self.validation_fraction:g}" if self.validation_fraction else ""
        precision = "-bf16" if self.precision == "bf16" else ""  # its own directory: not resumable in fp32
        name = self.run or f"{self.method}-frac{self.train_fraction:g}{val}-seed{self.seed}{precision}"
        return Path(self.runs_dir) / self.game / name

    def resume_key(self) -> dict[str, Any]:
        """Fields that must be equal to resume a run (device, paths and the step budget may change)."""
        record = dataclasses.asdict(self)
        for name in ("device", "runs_dir", "run", "data", "test_data", "teacher", "steps"):
            record.pop(name)
        return record


def _upgraded_resume_key(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's resume key in today's fields: runs saved before ``precision`` existed had
    a ``teacher_bf16`` flag that never took effect, so they ran in fp32."""
    saved = dict(saved)
    saved.pop("teacher_bf16", None)
    saved.setdefault("precision", "fp32")
    return saved


class FrameStore:
    """The dataset's frames where the model runs: uint8 on the GPU, or in CPU memory.

    A batch gathers only its own ``[B, 4, 84, 84]`` frames from the single-frame store.
    """

    def __init__(self, dataset: Dataset, device: torch.device) -> None:
        # np.require copies only a read-only (memory-mapped) array; torch needs a writable one.
        self.frames = torch.from_numpy(np.require(dataset.frames, requirements=["C", "W"])).to(device)
        self.frame_index = torch.from_numpy(dataset.frame_index).to(device)
        self.log_probs = torch.from_numpy(dataset.log_probs).to(device)
        self.offsets = torch.arange(dataset.stack, device=device)

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """``[B] int64`` sample indices -> (``[B, 4, 84, 84] float`` in [0, 1], ``[B, A]`` teacher logp)."""
        rows = self.frame_index[idx][:, None] + self.offsets
        return self.frames[rows].float().div_(255.0), self.log_probs[idx]


def _prepare_data(cfg: DistillConfig, teacher: Teacher) -> Dataset:
    """Open the dataset, recording it first when it is missing, and check it fits the teacher."""
    data_dir = Path(cfg.data or f"data/{cfg.game}")
    if not (data_dir / "meta.json").exists():
        print(f"no dataset in {data_dir}: recording {cfg.frames:,} frames with teacher {teacher.source.name}")
        collect(teacher, CollectConfig(frames=cfg.frames), data_dir)
    dataset = load_dataset(data_dir, mmap=False)
    if dataset.meta["game"] != cfg.game:
        raise UserError(
            f"{data_dir} holds {dataset.meta['game']} frames, not {cfg.game}; "
            f"pass --data for a {cfg.game} dataset"
        )
    dataset.settings.check_matches(teacher.settings, mine="dataset", theirs="teacher")
    if dataset.meta["teacher"]["sha256"] != teacher.source.sha256:
        raise UserError(
            f"{data_dir} was recorded by another teacher ({dataset.meta['teacher']['name']}, "
            f"sha256 {dataset.meta['teacher']['sha256'][:12]}); "
            "pass that --teacher or re-record with collect --overwrite"
        )
    return dataset


def distill(cfg: DistillConfig) -> dict[str, Any]:
    """Run (or resume) one distillation; returns the final and best held-out metrics."""
    device = pick_device(cfg.device)
    teacher = load_teacher(cfg.teacher or cfg.game, game=cfg.game, device=device)
    dataset = _prepare_data(cfg, teacher)
    split = dataset.split(cfg.train_fraction, cfg.validation_fraction)
    store = FrameStore(dataset, device)
    if cfg.test_data:
        test_set = load_dataset(cfg.test_data, mmap=False)
        test_set.settings.check_matches(dataset.settings, mine="training dataset", theirs="test dataset")
        test_store, test_idx = FrameStore(test_set, device), np.arange(len(test_set))
    else:
        test_store, test_idx = store, split.test
    if len(test_idx) == 0:
        raise UserError(
            f"--train-fraction {cfg.train_fraction} (--validation-fraction {cfg.validation_fraction}) leaves "
            "no held-out episode; lower the first, raise the second, or pass --test-data"
        )
    print(
        f"train {len(split.train):,} frames, {'validation' if cfg.validation_fraction else 'test'} "
        f"{len(test_idx):,} frames "
        f"({dataset.meta['episodes']} episodes), device {device}"
    )

    torch.manual_seed(cfg.seed)
    student = StudentNet(StudentArch(num_actions=dataset.settings.num_actions, in_frames=dataset.stack)).to(
        device
    )
    parameters = list(student.parameters())
    optimizer = torch.optim.Adam(parameters, lr=cfg.learning_rate)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    run_dir = cfg.run_dir
    step, best_kl, history = 0, math.inf, []
    latest_path, best_path = run_dir / "latest.pt", run_dir / "best.pt"
    if latest_path.exists():
        state = require_format(
            safe_torch_load(latest_path, what="student checkpoint"),
            STUDENT_FORMAT,
            latest_path,
            what="student checkpoint",
        )
        if _upgraded_resume_key(state["resume_key"]) != cfg.resume_key():
            raise UserError(
                f"{run_dir} holds a run with other settings; use the same arguments to resume, "
                "or --run NAME for a new run"
            )
        stored = (state["dataset"].get("content_sha256"), state["teacher"]["sha256"])
        if stored != (dataset.meta.get("content_sha256"), teacher.source.sha256):
            raise UserError(
                f"{run_dir} holds a run on another dataset or teacher; pass --run NAME for a new run "
                "(or the original --data and --teacher to resume)"
            )
        student.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator_state"].to(generator.get_state().device))
        step, best_kl, history = state["step"], state["best_kl"], state["history"]
        print(f"resuming {run_dir} from step {step}")
        if step >= cfg.steps:
            print(f"{run_dir} already finished")
            return _result(cfg, state["metrics"], best_kl, run_dir)

    # Fixed held-out frames for the gradient fidelity metric and the gradient-map images.
    eval_idx = torch.from_numpy(
        test_idx[np.linspace(0, len(test_idx) - 1, min(cfg.eval_frames, len(test_idx))).astype(np.int64)]
    ).to(device)
    fid_idx = eval_idx[torch.linspace(0, len(eval_idx) - 1, min(cfg.fidelity_frames, len(eval_idx))).long()]
    fid_x, fid_teacher_logp = test_store.batch(fid_idx)
    fid_teacher_jac = torch.cat(
        [
            input_jacobian(teacher.log_probs, fid_x[i : i + 32], create_graph=False)[1]
            for i in range(0, len(fid_x), 32)
        ],
        dim=1,
    )

    def eval_batches() -> Iterator[tuple[Tensor, Tensor]]:
        # Lazily: 10K float frames at once would be 1.1 GB.
        return (test_store.batch(eval_idx[i : i + 1000]) for i in range(0, len(eval_idx), 1000))

    def evaluate() -> dict[str, float]:
        student.eval()
        metrics = policy_metrics(student.log_probs, eval_batches)
        metrics.update(gradient_fidelity(student.log_probs, fid_x, fid_teacher_jac))
        student.train()
        return metrics

    writer = SummaryWriter(str(run_dir), purge_step=step or None)
    if step == 0:
        writer.add_text("config", "\n".join(f"|{k}|{v}|" for k, v in dataclasses.asdict(cfg).items()))
    train_idx = torch.from_numpy(split.train).to(device)
    provenance = {
        "dataset": {
            "path": str(dataset.path),
            "content_sha256": dataset.meta.get("content_sha256"),
            "frames": len(dataset),
            "train_frames": len(split.train),
            "test_frames": len(test_idx),
        },
        "teacher": dataclasses.asdict(teacher.source),
        "versions": package_versions(),
        "hardware": hardware_description(),
    }
    metrics: dict[str, float] = history[-1]["metrics"] if history else {}

    student.train()
    started, step_at_start = time.time(), step
    window_start, window_steps = time.time(), 0
    while step < cfg.steps:
        idx = train_idx[torch.randint(len(train_idx), (cfg.batch_size,), device=device, generator=generator)]
        x, teacher_logp = store.batch(idx)
        # The backward stays outside autocast (it runs in the forward's dtypes anyway).
        with autocast(device, enabled=cfg.precision == "bf16"):
            loss = distillation_loss(
                student.log_probs,
                x,
                teacher_logp,
                teacher=teacher.log_probs,
                alpha=cfg.alpha,
                num_projections=cfg.num_projections,
                norm=cfg.grad_norm,  # type: ignore[arg-type]
                kl_direction=cfg.kl_direction,
                temperature=cfg.temperature,
                generator=generator,  # type: ignore[arg-type]
            )
        if not torch.isfinite(loss.total):
            writer.close()
            raise UserError(
                f"loss became {loss.total.item()} at step {step + 1} (kl {loss.kl.item():.4g}, sobolev "
                f"{loss.sobolev.item():.4g}); the last good checkpoint is kept in {run_dir}; lower "
                "--learning-rate or --alpha"
            )
        optimizer.zero_grad(set_to_none=True)
        # Only the parameters: the Sobolev input x requires grad, and its gradient is not used.
        torch.autograd.backward(loss.total, inputs=parameters)
        optimizer.step()
        step += 1
        window_steps += 1
        if step % 50 == 0:
            writer.add_scalar("losses/total", loss.total.item(), step)
            writer.add_scalar("losses/kl", loss.kl.item(), step)
            writer.add_scalar("losses/sobolev", loss.sobolev.item(), step)
            writer.add_scalar("charts/learning_rate", cfg.learning_rate, step)
            sps = window_steps * cfg.batch_size / (time.time() - window_start)
            writer.add_scalar("charts/samples_per_second", sps, step)
            window_start, window_steps = time.time(), 0
        if step % cfg.eval_every == 0 or step == cfg.steps:
            metrics = evaluate()
            for key, value in metrics.items():
                writer.add_scalar(f"eval/{key}", value, step)
            _, student_jac = input_jacobian(student.log_probs, fid_x[:4], create_graph=False)
            writer.add_image(
                "gradients/frame_teacher_student",
                gradient_maps(
                    fid_x[:4].cpu(),
                    fid_teacher_jac[:, :4].cpu(),
                    student_jac.cpu(),
                    fid_teacher_logp[:4].cpu(),
                ),
                step,
            )
            history.append({"step": step, "metrics": metrics})
            elapsed = time.time() - started
            print(
                f"step {step}/{cfg.steps}  kl {loss.kl.item():.4f}  sob {loss.sobolev.item():.4f}  "
                f"| held-out err {metrics['action_error']:.4f} kl {metrics['kl']:.4f} "
                f"cos {metrics['grad_cosine']:.3f}  "
                f"({(step - step_at_start) * cfg.batch_size / elapsed:.0f} samples/s)",
                flush=True,
            )
            record = student_record(
                student,
                dataset.settings,
                config=dataclasses.asdict(cfg),
                resume_key=cfg.resume_key(),
                step=step,
                metrics=metrics,
                history=history,
                **provenance,
            )
            if metrics["kl"] < best_kl:
                best_kl = metrics["kl"]
                atomic_torch_save({**record, "best_kl": best_kl}, best_path)
            atomic_torch_save(
                {
                    **record,
                    "best_kl": best_kl,
                    "optimizer": optimizer.state_dict(),
                    "generator_state": generator.get_state(),
                },
                latest_path,
            )
    writer.add_hparams(
        {k: v for k, v in dataclasses.asdict(cfg).items() if isinstance(v, (int, float, str))},
        {f"hparam/{k}": v for k, v in metrics.items()},
        run_name=".",
    )
    writer.close()
    return _result(cfg, metrics, best_kl, run_dir)


def _result(cfg: DistillConfig, metrics: dict[str, float], best_kl: float, run_dir: Path) -> dict[str, Any]:
    return {
        "run_dir": str(run_dir),
        "best_checkpoint": str(run_dir / "best.pt"),
        "method": cfg.method,
        "train_fraction": cfg.train_fraction,
        "steps": cfg.steps,
        "best_test_kl": best_kl,
        **{f"test_{k}": v for k, v in metrics.items()},
    }
