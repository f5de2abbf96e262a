"""The distillation loop: ``policy_distill distill`` / ``make distill GAME=pong``.

:func:`distill` reads top to bottom: load the teacher and the dataset (recording one if none is
there), put the frames where the model runs, resume from ``latest.pt`` if the run exists, then
repeat: sample a batch of 200 training frames and take one :func:`train_step` (KL + alpha * the
stochastic Sobolev term, Adam); every ``eval_every`` steps the :class:`HeldOutEvaluator` measures
the held-out metrics, they are logged, and ``latest.pt`` (and ``best.pt`` by held-out KL) are
written. Run the same command again after an interruption and it resumes.

:func:`train_step` is the one training step: the throughput benchmark and the tests call it too.
The Sobolev term needs a double backward, which ``torch.compile`` does not support, so the
whole step runs eagerly.

Under ``torchrun --nproc_per_node=N -m policy_distill distill ...`` (:class:`World`) the run is
data-parallel: every rank draws the same global batch of indices from the shared, checkpointed
generator (the draw one process makes) and trains on its contiguous share; gradients are averaged
across ranks after the backward; rank 0 alone evaluates, logs and writes checkpoints.
See docs/distributed.md.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agents.loading import load_teacher
from policy_distill.checkpoint import (
    DirectoryLock,
    atomic_torch_save,
    check_writable_directory,
    hardware_description,
    os_error_text,
    package_versions,
    remove_stale_temporaries,
    require_format,
    safe_torch_load,
)
from policy_distill.collect import CollectConfig, collect
from policy_distill.dataset import (
    VALIDATION_BOUNDARIES,
    Dataset,
    FrameStore,
    default_data_dir,
    load_dataset,
    recollect_hint,
)
from policy_distill.devices import (
    autocast,
    cpu_capability,
    keep_freed_memory_for_reuse,
    pick_device,
    release_freed_memory,
    resolve_precision,
)
from policy_distill.distributed import World
from policy_distill.errors import (
    MAX_TORCH_SEED,
    NonFiniteLoss,
    UserError,
    at_least,
    check_fields,
    one_of,
    within,
)
from policy_distill.losses import (
    FD_EPSILON,
    SOBOLEV_ESTIMATORS,
    DistillLoss,
    LogProbFn,
    distillation_loss,
    input_jacobian,
)
from policy_distill.metrics import gradient_fidelity, gradient_maps, has_no_input_gradient, policy_metrics
from policy_distill.policy import TeacherPolicy
from policy_distill.resources import check_memory
from policy_distill.settings import PRECISION_CHOICES, game_info
from policy_distill.student import STUDENT_FORMAT, StudentArch, StudentNet, student_record

TUNED_ALPHA = {"vjp": 0.01, "jvp": 0.001, "fd": 0.001}
"""Default ``alpha`` per Sobolev estimator other than the game's tuned one: the lowest validation
KL on Pong (train fraction 1.0, last 10% held out, 1,500 steps, fp32) among 0.1, 0.01 and 0.001
(docs/estimators.md)."""


COLLAPSE_WARNING_STEP = 1000
"""From this step on, an evaluation that finds a constant policy (the student taking one action
on every held-out frame, or having no input-gradient left) prints a warning (once): students sit
at a constant policy for their first few hundred steps, and one still there by now has most
likely collapsed for good (Pong at lr 2e-3 did, its validation KL stuck at 4.3 from step 500 to
3,000)."""


@dataclass(frozen=True)
class Tuned:
    """One method's settings for one game's shipped teacher, chosen on validation splits."""

    learning_rate: float
    steps: int
    alpha: float = 0.0
    sobolev_estimator: str = "vjp"


SMALL_FRACTION = 0.1
"""Training fractions up to this take the small-data choices (tuned at 0.05), larger ones the
large-data choices (tuned at 0.8), as the grid's hyperparameter file maps them."""

TUNED: dict[str, dict[tuple[str, str], Tuned]] = {
    # policy_distill tune on data/breakout-tuning (docs/tuning/breakout.md).
    "breakout": {
        ("small", "kl"): Tuned(4e-3, 4000),
        ("small", "sobolev"): Tuned(4e-3, 5500, 3e-3, "vjp"),
        ("large", "kl"): Tuned(2e-3, 4000),
        ("large", "sobolev"): Tuned(2e-3, 5500, 1e-3, "vjp"),
    },
    # On data/space_invaders-tuning (docs/tuning/space_invaders.md); the large Sobolev budget is
    # the search's cap, still improving there.
    "space_invaders": {
        ("small", "kl"): Tuned(8e-3, 2000),
        ("small", "sobolev"): Tuned(4e-3, 5500, 0.01, "fd"),
        ("large", "kl"): Tuned(2e-3, 4500),
        ("large", "sobolev"): Tuned(4e-3, 6000, 3e-3, "fd"),
    },
    # On data/pong-tuning (docs/tuning/pong.md). Every budget but the large Sobolev one is the
    # search's 6,000-step cap, still improving there. At 2e-3 students died: Sobolev ones with
    # the walk's seed, KL-only ones with a check seed (at 80%), so both large-data rates are 1e-3.
    "pong": {
        ("small", "kl"): Tuned(1e-3, 6000),
        ("small", "sobolev"): Tuned(5e-4, 6000, 0.1, "vjp"),
        ("large", "kl"): Tuned(1e-3, 6000),
        ("large", "sobolev"): Tuned(1e-3, 5500, 3e-4, "fd"),
    },
}
"""``distill``'s defaults per game, data size and method: the choices of ``policy_distill tune``
that ``docs/reproduce/hparams.json`` holds with their evidence (tests/test_distill.py checks that
the two agree)."""


@dataclass(frozen=True)
class TrainingSchedule:
    """Batch size, evaluation schedule and device: one distillation run's, and every run's of a
    sweep (:class:`policy_distill.experiments.sweep.SweepConfig` extends this too)."""

    batch_size: int = 200
    """Frames per step (the paper's 200)."""
    eval_every: int = 500
    """Steps between held-out evaluations and checkpoints."""
    eval_frames: int = 10_000
    """Test frames used for action error and KL (evenly spaced over the test split)."""
    fidelity_frames: int = 128
    """Fixed test frames for gradient fidelity (full Jacobians of both networks)."""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda."""


@dataclass(frozen=True)
class DistillConfig(TrainingSchedule):
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
    validation_boundary: str = "next"
    """Where the validation part starts (with validation_fraction > 0): next, the first episode
    start after the cut (the samples between are unused), or previous, the last one before it
    (the validation part holds at least validation_fraction of the training part: for the small
    training fractions, whose episodes are long against the part; Dataset.split)."""
    steps: int | None = None
    """Optimiser steps. Default: the game's step budget for the method and data size (``TUNED``:
    where validation KL stopped improving, or the search's 6,000-step cap; Breakout 4,000 KL only
    and 5,500 Sobolev)."""
    learning_rate: float | None = None
    """Adam step size. Default: the game's, chosen on validation splits for the method and data
    size (``TUNED``; the paper tuned it per game in [1e-5, 1e-3])."""
    alpha: float | None = None
    """Weight of the Sobolev term; 0 trains on the KL alone. Default: the game's, chosen with its
    estimator on validation splits for the data size (``TUNED``); with another
    estimator, that estimator's value on Pong (``TUNED_ALPHA``), because the estimators' terms
    differ in scale: vjp's is ~100x the KL (input-gradients over 28K pixels)."""
    num_projections: int = 1
    """K: random directions v per frame for the Sobolev term."""
    grad_norm: str = "l2"
    """Distance between input-gradients: l2 (the paper's), squared_l2 or l1."""
    sobolev_estimator: str | None = None
    """Default: the game's tuned one (``TUNED``: vjp for Breakout and small Pong data, fd for
    Space Invaders and large Pong data). How the Sobolev term is estimated: vjp (the paper's:
    random directions in action space, a teacher VJP and the student's double backward), jvp
    (random +-1 directions in input space, directional derivatives by forward-mode AD, no double
    backward) or fd (the same
    directions; the teacher's derivative by a finite difference, one more teacher forward, the
    student's exactly alongside its forward pass); see policy_distill/losses.py."""
    centre_first_layer: bool = False
    """Shift the first convolution's initial biases by minus its mean response to 1,000 training
    frames (``StudentNet.centre_first_layer``): Pong students then left the constant policy in 150-200
    steps instead of 200-400, in 8 of 8 seeds (benchmarks/student_plateau.py). Off by default
    until it is checked over whole runs and games (docs/estimators.md)."""
    student_width: float = 1.0
    """Multiplier of the student's channels and hidden units (1: the paper's conv 16/32, linear
    256; 2: 32/64/512), for testing whether a gap between the methods is one of capacity."""
    channels_last: bool = True
    """Run both networks' convolutions in the channels_last memory format (a speed setting:
    results equal within float rounding; benchmarks/distill_throughput.py measures it)."""
    fd_epsilon: float = FD_EPSILON
    """Finite-difference step of the fd estimator's teacher side (chosen by measurement,
    losses.FD_EPSILON)."""
    samples_per_direction: int = 1
    """jvp and fd: samples of a batch that share one input direction u (sample i takes direction
    i mod B/n; n must divide the batch). Each sample's estimate stays unbiased; sharing
    correlates the estimates of samples with the same u, and saves drawing a direction per
    sample and the first convolution's tangent on each (fd at 4: 3.1 -> 2.7 KL steps per step).
    1, one direction per sample, until the estimator study shows sharing trains as well
    (docs/estimators.md)."""
    kl_direction: str = "student_teacher"
    """student_teacher = KL(pi || pi*) (the paper's) or teacher_student."""
    temperature: float = 1.0
    """Softens both policies before the KL (1 = none)."""
    precision: str = "auto"
    """auto, fp32 or bf16: bf16 runs the training step (both networks' forwards and
    input-gradients) under bf16 autocast. auto picks bf16 only where the hardware does bf16
    natively (a CUDA GPU with bf16, a CPU with AVX-512-bf16 or AMX): there it measured 1.5x faster
    for KL + Sobolev and 2.0x for KL alone per step, while on an AVX2-only CPU bf16 is ~10x slower
    than fp32 (benchmarks/distill_throughput.py, docs/reproduce/precision.md). The held-out
    metrics are computed in float32 either way."""
    test_data: str = ""
    """Separate held-out dataset, e.g. for train_fraction 1.0 (default: the split's test part)."""
    seed: int = 0
    """Seed of the student's initialisation, batch order and directions v."""
    run: str = dataclasses.field(default="", metadata={"aliases": ("--run-name",)})
    """Run name under runs/<game>/ (default: derived from method, fraction and seed). Under
    torchrun spell it --run-name: torchrun's own parser takes --run for its --run-path."""
    runs_dir: str = "runs"
    """Root of run directories."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "game", game_info(self.game).name)
        if self.sobolev_estimator is not None:
            check_fields("distillation settings", [one_of(self, "sobolev_estimator", SOBOLEV_ESTIMATORS)])
        self._resolve_tuned_defaults()
        check_fields(
            "distillation settings",
            [
                one_of(self, "grad_norm", ("l2", "squared_l2", "l1")),
                within(self, "fd_epsilon", 0, 1, open_low=True),
                one_of(self, "kl_direction", ("student_teacher", "teacher_student")),
                at_least(self, "alpha", 0),
                at_least(self, "samples_per_direction", 1),
                (
                    "samples_per_direction",
                    f"{self.samples_per_direction} does not divide `batch_size` {self.batch_size}; "
                    "pass a divisor (1: a direction per sample)",
                )
                if self.samples_per_direction >= 1 and self.batch_size % self.samples_per_direction
                else None,
                within(self, "seed", 0, MAX_TORCH_SEED),
                within(self, "student_width", 0, 16, open_low=True),
                *(
                    at_least(self, name, 1)
                    for name in (
                        "steps",
                        "batch_size",
                        "eval_every",
                        "num_projections",
                        "eval_frames",
                        "fidelity_frames",
                    )
                ),
                within(self, "learning_rate", 0, 1, open_low=True, open_high=True),
                one_of(self, "precision", PRECISION_CHOICES),
                within(self, "temperature", 0, math.inf, open_low=True, open_high=True),
                within(self, "train_fraction", 0, 1, open_low=True),
                within(self, "validation_fraction", 0, 1, open_high=True),
                one_of(self, "validation_boundary", VALIDATION_BOUNDARIES),
                (
                    "validation_fraction",
                    "cannot be combined with `test_data` (validation is carved from training)",
                )
                if self.validation_fraction and self.test_data
                else None,
            ],
        )

    def _resolve_tuned_defaults(self) -> None:
        """Fill the fields left None from ``TUNED``: the estimator, then alpha (its method), then
        that method's learning rate and step budget, for this game and data size."""
        size = "small" if self.train_fraction <= SMALL_FRACTION else "large"
        tuned = TUNED[self.game]
        sobolev = tuned[(size, "sobolev")]
        estimator_given = self.sobolev_estimator is not None
        if not estimator_given:
            object.__setattr__(self, "sobolev_estimator", sobolev.sobolev_estimator)
        if self.alpha is None:
            own = self.sobolev_estimator == sobolev.sobolev_estimator
            object.__setattr__(self, "alpha", sobolev.alpha if own else TUNED_ALPHA[self.sobolev_estimator])
        if self.alpha == 0 and not estimator_given:
            # A KL-only run uses no estimator; it keeps vjp, the name every KL-only run had before
            # estimators were tuned per game, so that runs made then still resume.
            object.__setattr__(self, "sobolev_estimator", "vjp")
        chosen = tuned[(size, "sobolev" if self.alpha > 0 else "kl")]
        if self.learning_rate is None:
            object.__setattr__(self, "learning_rate", chosen.learning_rate)
        if self.steps is None:
            object.__setattr__(self, "steps", chosen.steps)

    @property
    def method(self) -> str:
        return "sobolev" if self.alpha > 0 else "kl"

    @property
    def data_dir(self) -> Path:
        """The dataset directory: ``data``, or data/<game> when it is empty."""
        return Path(self.data) if self.data else default_data_dir(self.game)

    @property
    def run_dir(self) -> Path:
        val = f"-val{self.validation_fraction:g}" if self.validation_fraction else ""
        val += "prev" if val and self.validation_boundary == "previous" else ""
        # A bf16 run gets its own directory: it is not resumable in fp32.
        precision = "-bf16" if self.resolved_precision() == "bf16" else ""
        # The paper's estimator keeps the names runs had before estimators could be chosen.
        method = (
            self.method
            if self.method == "kl" or self.sobolev_estimator == "vjp"
            else (f"{self.method}-{self.sobolev_estimator}")
        )
        if self.method == "sobolev" and self.samples_per_direction > 1:
            method += f"-share{self.samples_per_direction}"
        student = "-centred" if self.centre_first_layer else ""
        student += f"-w{self.student_width:g}" if self.student_width != 1 else ""
        name = self.run or f"{method}-frac{self.train_fraction:g}{val}-seed{self.seed}{precision}{student}"
        return Path(self.runs_dir) / self.game / name

    def resolved_precision(self) -> str:
        """fp32 or bf16: ``precision`` with ``auto`` resolved for this machine's device."""
        return resolve_precision(self.precision, pick_device(self.device))

    def resume_key(self) -> dict[str, Any]:
        """Fields that must be equal to resume a run (device, paths and the step budget may change)."""
        record = dataclasses.asdict(self)
        record["precision"] = self.resolved_precision()
        for name in ("device", "runs_dir", "run", "data", "test_data", "teacher", "steps", "channels_last"):
            record.pop(name)
        return record


def _upgraded_resume_key(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's resume key in today's fields: runs saved before ``precision`` existed had
    a ``teacher_bf16`` flag that never took effect, so they ran in fp32."""
    saved = dict(saved)
    saved.pop("teacher_bf16", None)
    saved.setdefault("precision", "fp32")
    saved.setdefault("sobolev_estimator", "vjp")  # the only estimator before the field existed
    saved.setdefault("fd_epsilon", FD_EPSILON)
    saved.setdefault("centre_first_layer", False)
    saved.setdefault("student_width", 1.0)  # the paper's student before the field existed
    saved.setdefault("samples_per_direction", 1)  # one direction per sample before the field existed
    saved.setdefault("validation_boundary", "next")  # the only rule before the field existed
    return saved


def centring_frames(store: FrameStore, train_indices: Tensor, seed: int, count: int = 1_000) -> Tensor:
    """``[count, 4, 84, 84] float`` training frames for ``StudentNet.centre_first_layer``, drawn
    from ``train_indices`` with a generator of their own (seeded by ``seed``), so that the run's
    batch order stays the one a run without centring has."""
    picker = torch.Generator().manual_seed(seed)
    sample = train_indices.cpu()[torch.randint(len(train_indices), (count,), generator=picker)]
    return store.batch(sample.to(store.frames.device))[0]


def _prepare_data(cfg: DistillConfig, teacher: TeacherPolicy) -> Dataset:
    """Open the dataset, recording it first when it is missing, and check it fits the teacher."""
    data_dir = cfg.data_dir
    if not (data_dir / "meta.json").exists() and data_dir.is_dir() and any(data_dir.iterdir()):
        raise UserError(
            f"{data_dir} holds files but no dataset (meta.json missing); pass another `data` directory, "
            f"or {recollect_hint(data_dir, cfg.game)}"
        )
    if not (data_dir / "meta.json").exists():
        print(f"no dataset in {data_dir}: recording {cfg.frames:,} frames with teacher {teacher.source.name}")
        collect(teacher, CollectConfig(frames=cfg.frames), data_dir)
        release_freed_memory()  # the recording's per-frame arrays, before the dataset is loaded
    dataset = load_dataset(data_dir, mmap=False)
    if dataset.meta["game"] != cfg.game:
        raise UserError(
            f"{data_dir} holds {dataset.meta['game']} frames, not {cfg.game}; "
            f"pass `data` for a {cfg.game} dataset"
        )
    dataset.settings.check_matches(teacher.settings, mine="dataset", theirs="teacher")
    _check_recorded_by(dataset, teacher, f"pass that `teacher`, or {recollect_hint(data_dir, cfg.game)}")
    return dataset


def _check_recorded_by(dataset: Dataset, teacher: TeacherPolicy, fix: str) -> None:
    """Refuse a recording of another teacher: its log-probabilities are not this teacher's, so
    training on it, or measuring a student against it, would be silently wrong."""
    recorded = dataset.meta["teacher"]
    if recorded["sha256"] != teacher.source.sha256:
        raise UserError(
            f"{dataset.path} was recorded by another teacher ({recorded['name']}, sha256 "
            f"{recorded['sha256'][:12]}), not {teacher.source.name} (sha256 {teacher.source.sha256[:12]}); "
            f"{fix} --teacher <this teacher>`"
        )


def train_step(
    student: StudentNet,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    teacher_logp: Tensor,
    teacher: LogProbFn,
    cfg: DistillConfig,
    generator: torch.Generator,
    *,
    bf16: bool = False,
    world: World | None = None,
) -> DistillLoss:
    """One optimiser step of distillation: the loss of one batch, its backward, Adam.

    Args:
        student: The student in training mode.
        optimizer: Over the student's parameters.
        x: ``[B, 4, 84, 84] float`` in [0, 1], the batch's observations.
        teacher_logp: ``[B, A]`` the teacher's stored log-probabilities of those frames.
        teacher: The frozen teacher's ``log_probs`` (used when ``cfg.alpha > 0``).
        cfg: The loss settings (alpha, num_projections, grad_norm, kl_direction, temperature).
        generator: Draws the Sobolev directions v.
        bf16: Run the loss under bf16 autocast (see ``DistillConfig.precision``).
        world: Under torchrun, this process's place: ``x`` is its share of the global batch, the
            returned terms are the global batch's (averaged over ranks) and the gradients are
            averaged over ranks before Adam's step.

    Returns:
        The loss terms (``total`` is checked for finiteness by the caller).
    """
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    # The backward stays outside autocast (it runs in the forward's dtypes anyway).
    with autocast(x.device, enabled=bf16):
        loss = distillation_loss(
            student.log_probs,
            x,
            teacher_logp,
            teacher=teacher,
            alpha=cfg.alpha,
            num_projections=cfg.num_projections,
            norm=cfg.grad_norm,  # type: ignore[arg-type]
            kl_direction=cfg.kl_direction,  # type: ignore[arg-type]
            temperature=cfg.temperature,
            generator=generator,
            estimator=cfg.sobolev_estimator,  # type: ignore[arg-type]
            student_logits=student,
            student_layers=student.layers(),
            eps=cfg.fd_epsilon,
            samples_per_direction=cfg.samples_per_direction,
        )
    reported = loss if world is None else world.mean_loss(loss)  # every rank decides alike
    if torch.isfinite(reported.total):
        optimizer.zero_grad(set_to_none=True)
        # Only the parameters: the Sobolev input x requires grad, and its gradient is not used.
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.autograd.backward(loss.total, inputs=params)
        if world is not None:
            world.average_gradients(params)
        optimizer.step()
    return reported


def held_out_eval_indices(test_idx: np.ndarray, eval_frames: int) -> np.ndarray:
    """The held-out samples a run's action error and KL are measured on: up to ``eval_frames``
    evenly spaced samples of ``test_idx`` (``[N] int64``), first and last included."""
    spaced = np.linspace(0, len(test_idx) - 1, min(eval_frames, len(test_idx))).astype(np.int64)
    return test_idx[spaced]


class HeldOutEvaluator:
    """Held-out metrics of a student on fixed frames of the test (or validation) split.

    Action error and KL over up to ``eval_frames`` evenly spaced held-out frames; gradient
    fidelity on ``fidelity_frames`` of them, against the teacher's full input Jacobian computed
    once here; and an image of the gradient maps of the first four of those frames.
    """

    def __init__(
        self,
        store: FrameStore,
        test_idx: np.ndarray,
        teacher: LogProbFn,
        cfg: DistillConfig,
        device: torch.device,
    ) -> None:
        self.store = store
        self.eval_idx = torch.from_numpy(held_out_eval_indices(test_idx, cfg.eval_frames)).to(device)
        fid_pick = torch.linspace(0, len(self.eval_idx) - 1, min(cfg.fidelity_frames, len(self.eval_idx)))
        self.fid_x, self.fid_teacher_logp = store.batch(self.eval_idx[fid_pick.long()])
        self.fid_teacher_jac = torch.cat(  # [A, F, 4, 84, 84], in chunks to bound memory
            [
                input_jacobian(teacher, self.fid_x[i : i + 32], create_graph=False)[1]
                for i in range(0, len(self.fid_x), 32)
            ],
            dim=1,
        )

    def _batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        # Lazily: 10K float frames at once would be 1.1 GB.
        return (self.store.batch(self.eval_idx[i : i + 1000]) for i in range(0, len(self.eval_idx), 1000))

    def metrics(self, student: StudentNet) -> dict[str, float]:
        """``action_error``, ``kl``, ``grad_cosine``, ``grad_rel_l2`` of ``student`` (float32)."""
        was_training = student.training
        student.eval()
        metrics = policy_metrics(student.log_probs, self._batches)
        metrics.update(gradient_fidelity(student.log_probs, self.fid_x, self.fid_teacher_jac))
        student.train(was_training)
        return metrics

    def gradient_image(self, student: StudentNet) -> Tensor:
        """``[3, H, W]`` image: per row a frame, the teacher's and the student's gradient maps."""
        _, student_jac = input_jacobian(student.log_probs, self.fid_x[:4], create_graph=False)
        return gradient_maps(
            self.fid_x[:4].cpu(),
            self.fid_teacher_jac[:, :4].cpu(),
            student_jac.cpu(),
            self.fid_teacher_logp[:4].cpu(),
        )


@dataclass
class RunState:
    """Where a run stands: restored from ``latest.pt`` on resume, written at every evaluation."""

    step: int = 0
    best_kl: float = math.inf
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def metrics(self) -> dict[str, float]:
        """The latest held-out metrics ({} before the first evaluation)."""
        return self.history[-1]["metrics"] if self.history else {}


def _resume(
    cfg: DistillConfig,
    student: StudentNet,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    dataset: Dataset,
    teacher: TeacherPolicy,
    *,
    announce: bool = True,
) -> RunState:
    """Restore student, optimizer and generator from the run's ``latest.pt`` if there is one.

    Raises:
        UserError: the run directory holds a run with other settings, data or teacher.
    """
    latest_path = cfg.run_dir / "latest.pt"
    if not latest_path.exists():
        return RunState()
    restart = "delete it to start the run over, or pass another `run` name"
    state = require_format(
        safe_torch_load(latest_path, what="student checkpoint", corrupt_fix=restart),
        STUDENT_FORMAT,
        latest_path,
        what="student checkpoint",
    )
    needed = ("resume_key", "optimizer", "generator_state", "step", "state_dict", "dataset", "teacher")
    missing = [k for k in needed if k not in state]
    if missing:
        raise UserError(
            f"{latest_path} holds no resumable state (no {', '.join(missing)}: a best.pt copied in its "
            f"place?); {restart}"
        )
    saved_key, key = _upgraded_resume_key(state["resume_key"]), cfg.resume_key()
    if saved_key != key:
        differ = [
            f"{k} {saved_key.get(k)!r} -> {key.get(k)!r}" for k in key if saved_key.get(k) != key.get(k)
        ]
        defaulted = [
            k for k in ("learning_rate", "alpha", "sobolev_estimator") if saved_key.get(k) != key.get(k)
        ]
        raise UserError(
            f"{cfg.run_dir} holds a run with other settings ({', '.join(differ)}); use the same "
            "arguments to resume, or another run name for a new run"
            + (
                " (the game's default learning rate, alpha and estimator changed in session 15: to resume "
                "a run made before, pass its values, "
                + " ".join(f"`{k}` {saved_key.get(k)}" for k in defaulted)
                + ")"
                if defaulted
                else ""
            )
        )
    stored = (state["dataset"].get("content_sha256"), state["teacher"]["sha256"])
    if stored != (dataset.meta.get("content_sha256"), teacher.source.sha256):
        raise UserError(
            f"{cfg.run_dir} holds a run on another dataset or teacher; choose another run name for a "
            "new run (or pass the original data and teacher to resume)"
        )
    try:
        student.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator_state"].to(generator.get_state().device))
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(
            f"{latest_path} does not fit this run ({type(e).__name__}: {str(e).splitlines()[0][:100]}); "
            f"{restart}"
        ) from None
    if announce:
        print(f"resuming {cfg.run_dir} from step {state['step']}")
    return RunState(step=state["step"], best_kl=state["best_kl"], history=state["history"])


def _write_checkpoints(
    run_dir: Path,
    record: dict[str, Any],
    state: RunState,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> None:
    """Write ``best.pt`` when the latest held-out KL is the best so far, then ``latest.pt``
    (which adds what resuming needs: optimizer and generator state), each atomically."""
    try:
        if state.metrics["kl"] < state.best_kl:
            atomic_torch_save({**record, "best_kl": state.metrics["kl"]}, run_dir / "best.pt")
            state.best_kl = state.metrics["kl"]
        atomic_torch_save(
            {
                **record,
                "best_kl": state.best_kl,
                "optimizer": optimizer.state_dict(),
                "generator_state": generator.get_state(),
            },
            run_dir / "latest.pt",
        )
    except OSError as e:
        previous = [h["step"] for h in state.history[:-1]]
        kept = (
            f"the checkpoint of step {previous[-1]} is kept in {run_dir / 'latest.pt'}"
            if previous and (run_dir / "latest.pt").exists()
            else "no checkpoint was kept"
        )
        raise UserError(
            f"could not write the checkpoint of step {state.step} in {run_dir} ({os_error_text(e)}); "
            f"{kept}; free space (or make the directory writable) and run the same command again to resume"
        ) from None


def _log_losses(writer: SummaryWriter, loss: DistillLoss, cfg: DistillConfig, step: int, sps: float) -> None:
    writer.add_scalar("losses/total", loss.total.item(), step)
    writer.add_scalar("losses/kl", loss.kl.item(), step)
    writer.add_scalar("losses/sobolev", loss.sobolev.item(), step)
    writer.add_scalar("charts/learning_rate", cfg.learning_rate, step)
    writer.add_scalar("charts/samples_per_second", sps, step)


def distill(cfg: DistillConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) one distillation; returns the final and best held-out metrics.

    Before any work: refuses settings whose memory needs exceed the machine's
    (:func:`check_memory`), checks that the run directory can be written, and locks it
    (``<run_dir>/.lock``, released when the process ends), so that two processes never write
    one run; temporary files of dead processes in it are removed.

    Under torchrun (WORLD_SIZE > 1) the run is data-parallel (:class:`World`): rank 0 does
    these checks, holds the lock and records a missing dataset before the other ranks start.

    Args:
        cfg: The run's settings.
        progress: Show a progress bar (steps, samples/s, time left, last held-out metrics).
    """
    world = World.from_env()
    if world is not None:
        return _distill_distributed(cfg, world, progress=progress)
    check_memory(cfg, pick_device(cfg.device))
    fix = "pass another `runs_dir` or `run` name"
    run_dir = check_writable_directory(cfg.run_dir, what="run directory", fix=fix)
    with DirectoryLock(run_dir / ".lock", what=f"run directory {str(run_dir)!r}", fix=fix):
        remove_stale_temporaries(run_dir, also_own_pid_less=True)
        return _distill(cfg, progress=progress)


def _distill_distributed(cfg: DistillConfig, world: World, *, progress: bool) -> dict[str, Any]:
    """:func:`distill` as one rank of a torchrun job: gloo on the CPU, NCCL on CUDA."""
    import torch.distributed as dist

    device = pick_device(cfg.device)
    if cfg.batch_size % world.size:
        raise UserError(
            f"`batch_size` {cfg.batch_size} is not divisible by the {world.size} processes of this "
            "torchrun job; pass a multiple of the process count"
        )
    share = cfg.batch_size // world.size
    if cfg.method == "sobolev" and cfg.sobolev_estimator != "vjp" and share % cfg.samples_per_direction:
        raise UserError(
            f"`samples_per_direction` {cfg.samples_per_direction} does not divide each of the "
            f"{world.size} processes' {share} samples; pass a divisor of {share}"
        )
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)  # "cuda" is then this rank's GPU
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    lock: DirectoryLock | None = None
    try:
        problem = None
        if world.main:  # one writer of the run directory: the others never touch it
            try:
                check_memory(cfg, device)
                fix = "pass another `runs_dir` or `run` name"
                run_dir = check_writable_directory(cfg.run_dir, what="run directory", fix=fix)
                lock = DirectoryLock(run_dir / ".lock", what=f"run directory {str(run_dir)!r}", fix=fix)
                remove_stale_temporaries(run_dir, also_own_pid_less=True)
                if not (cfg.data_dir / "meta.json").exists():
                    _prepare_data(cfg, load_teacher(cfg.teacher or cfg.game, game=cfg.game, device=device))
            except UserError as e:
                problem = str(e)
        problem = world.broadcast(problem)
        if problem is not None:
            raise UserError(problem if world.main else f"rank 0 stopped: {problem}")
        return _distill(cfg, progress=progress and world.main, world=world)
    finally:
        if lock is not None:
            lock.release()
        if own_group:
            # Every rank past its last collective before any tears its connections down: a gloo
            # rank that destroyed its group while its peer still finished the closing broadcast
            # aborted the peer ("terminate called without an active exception", seen once in CI).
            # Skipped when leaving on an error, where the peers may never arrive.
            if sys.exc_info()[0] is None:
                dist.barrier()
            dist.destroy_process_group()


def _distill(cfg: DistillConfig, *, progress: bool, world: World | None = None) -> dict[str, Any]:
    """:func:`distill` once the run directory is locked (under torchrun: by rank 0)."""
    main = world is None or world.main  # evaluates, logs, prints and writes checkpoints
    say = print if main else (lambda *args, **kwargs: None)
    device = pick_device(cfg.device)
    precision = cfg.resolved_precision()
    teacher = load_teacher(cfg.teacher or cfg.game, game=cfg.game, device=device)
    dataset = _prepare_data(cfg, teacher)
    split = dataset.split(cfg.train_fraction, cfg.validation_fraction, cfg.validation_boundary)
    store = FrameStore(dataset, device)
    if cfg.test_data:
        test_set = load_dataset(cfg.test_data, mmap=False)
        test_set.settings.check_matches(dataset.settings, mine="training dataset", theirs="test dataset")
        _check_recorded_by(
            test_set,
            teacher,
            f"pass a `test_data` set of this teacher, or {recollect_hint(Path(cfg.test_data), cfg.game)}",
        )
        test_store, test_idx = FrameStore(test_set, device), np.arange(len(test_set))
    else:
        test_store, test_idx = store, split.test
    if len(test_idx) == 0:
        raise UserError(
            f"`train_fraction` {cfg.train_fraction} (`validation_fraction` {cfg.validation_fraction}) "
            "leaves no held-out episode; lower the first, raise the second, or give a `test_data` set"
        )
    if len(split.train) == 0:
        raise UserError(
            f"`train_fraction` {cfg.train_fraction} holds no episode start before its validation part "
            f"(`validation_fraction` {cfg.validation_fraction}, boundary previous), so nothing is left "
            "to train on; raise `train_fraction` or pass `validation_boundary` next"
        )
    held_out = "validation" if cfg.validation_fraction else "test"
    say(
        f"train {len(split.train):,} frames, {held_out} {len(test_idx):,} frames "
        f"({dataset.meta['episodes']} episodes), device {device}, precision {precision}"
        + (f", {world.size} processes" if world else "")
    )

    keep_freed_memory_for_reuse()  # after the dataset is in memory: only the steps' buffers stay
    torch.manual_seed(cfg.seed)
    arch = StudentArch.scaled(dataset.settings.num_actions, dataset.stack, cfg.student_width)
    student = StudentNet(arch).to(device)
    if cfg.channels_last:
        student.to(memory_format=torch.channels_last)
        teacher.to(memory_format=torch.channels_last)
    if cfg.centre_first_layer:  # a fresh run's start; a resumed run loads its weights below
        student.centre_first_layer(centring_frames(store, torch.from_numpy(split.train), cfg.seed))
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    run_dir = cfg.run_dir
    state = _resume(cfg, student, optimizer, generator, dataset, teacher, announce=main)
    if state.step >= cfg.steps:
        say(f"{run_dir} already finished")
        return _result(cfg, state.history, state.best_kl, run_dir)

    if world is not None:
        import torch.distributed as dist

        for tensor in student.state_dict().values():  # equal by construction; made sure of
            dist.broadcast(tensor, src=0)
    # Ranks other than 0 have no evaluator and no writer: their loop only trains.
    evaluator = HeldOutEvaluator(test_store, test_idx, teacher.log_probs, cfg, device) if main else None
    writer = SummaryWriter(str(run_dir), purge_step=state.step or None) if main else None
    if writer is not None and state.step == 0:
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
        "cpu_capability": cpu_capability(),
        "precision": precision,
    }
    bar = tqdm(
        total=cfg.steps,
        initial=state.step,
        unit="step",
        desc=f"distill {cfg.game} {cfg.method}",
        disable=not progress,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,  # a line per 30 s in non-tty logs
    )

    student.train()
    started, step_at_start = time.time(), state.step
    window_start, window_steps = time.time(), 0
    # Sum of the batch KL since the last evaluation, kept on the device so that reading it costs
    # no `.item()` per step (the finiteness check below already syncs once a step): the training
    # KL beside each held-out one shows how far a student memorised its frames.
    train_kl_sum, train_kl_steps = torch.zeros((), device=device), 0
    warned_collapse = False
    while state.step < cfg.steps:
        idx = train_idx[torch.randint(len(train_idx), (cfg.batch_size,), device=device, generator=generator)]
        directions = generator
        if world is not None:  # this rank's share of the global draw; its own directions
            idx, directions = (
                idx[world.share(cfg.batch_size)],
                world.direction_generator(cfg.seed, state.step, device),
            )
        x, teacher_logp = store.batch(idx)
        loss = train_step(
            student,
            optimizer,
            x,
            teacher_logp,
            teacher.log_probs,
            cfg,
            directions,
            bf16=precision == "bf16",
            world=world,
        )
        if not torch.isfinite(loss.total):  # under torchrun the global batch's loss: every rank stops
            bar.close()
            if writer is None:
                raise NonFiniteLoss(f"rank {world.rank if world else 0} stopped: non-finite loss; see rank 0")
            writer.close()
            raise NonFiniteLoss(_non_finite_message(cfg, loss, teacher_logp, state, step_at_start, run_dir))
        state.step += 1
        window_steps += 1
        train_kl_sum += loss.kl.detach().float()
        train_kl_steps += 1
        bar.update(1)
        if writer is None or evaluator is None:
            continue
        if state.step % 50 == 0:
            sps = window_steps * cfg.batch_size / (time.time() - window_start)
            _log_losses(writer, loss, cfg, state.step, sps)
            bar.set_postfix(samples_per_s=f"{sps:.0f}", refresh=False)
            window_start, window_steps = time.time(), 0
        if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
            metrics = evaluator.metrics(student)
            for key, value in metrics.items():
                writer.add_scalar(f"eval/{key}", value, state.step)
            writer.add_image("gradients/frame_teacher_student", evaluator.gradient_image(student), state.step)
            train_kl = (train_kl_sum / train_kl_steps).item()
            train_kl_sum.zero_()
            train_kl_steps = 0
            writer.add_scalar("train/kl_since_last_eval", train_kl, state.step)
            state.history.append({"step": state.step, "metrics": metrics, "train_kl": train_kl})
            elapsed = time.time() - started
            constant = metrics["actions_used"] == 1 or has_no_input_gradient(metrics)
            if constant and state.step >= COLLAPSE_WARNING_STEP and not warned_collapse:
                warned_collapse = True
                bar.write(
                    f"warning: at step {state.step} the student's policy does not depend on the frame "
                    f"(a constant policy: {metrics['actions_used']:.0f} action(s) taken, gradient cosine "
                    f"{metrics['grad_cosine']:.4f}); if it stays there, run again with a lower "
                    "learning rate"
                )
            bar.set_postfix(
                held_out_kl=f"{metrics['kl']:.4f}",
                held_out_err=f"{metrics['action_error']:.3f}",
                refresh=False,
            )
            bar.write(
                f"step {state.step}/{cfg.steps}  kl {loss.kl.item():.4f}  sob {loss.sobolev.item():.4f}  "
                f"| {held_out} err {metrics['action_error']:.4f} kl {metrics['kl']:.4f} "
                f"cos {metrics['grad_cosine']:.3f}  "
                f"({(state.step - step_at_start) * cfg.batch_size / elapsed:.0f} samples/s)",
            )
            sys.stdout.flush()
            record = student_record(
                student,
                dataset.settings,
                config=dataclasses.asdict(cfg),
                resume_key=cfg.resume_key(),
                step=state.step,
                metrics=metrics,
                history=state.history,
                **provenance,
            )
            _write_checkpoints(run_dir, record, state, optimizer, generator)
    bar.close()
    if writer is None:
        state.history, state.best_kl = world.broadcast(None) if world else (state.history, state.best_kl)
        return _result(cfg, state.history, state.best_kl, run_dir)
    writer.add_hparams(
        {k: v for k, v in dataclasses.asdict(cfg).items() if isinstance(v, (int, float, str))},
        {f"hparam/{k}": v for k, v in state.metrics.items()},
        run_name=".",
    )
    writer.close()
    if world is not None:
        world.broadcast((state.history, state.best_kl))  # the other ranks return the same result
    return _result(cfg, state.history, state.best_kl, run_dir)


def _non_finite_message(
    cfg: DistillConfig,
    loss: DistillLoss,
    teacher_logp: Tensor,
    state: RunState,
    step_at_start: int,
    run_dir: Path,
) -> str:
    """Why a loss is not finite, what was kept, and the fix that fits the cause."""
    what = (
        f"loss became {loss.total.item()} at step {state.step + 1} "
        f"(kl {loss.kl.item():.4g}, sobolev {loss.sobolev.item():.4g})"
    )
    if state.history:
        kept = f"the checkpoint of step {state.history[-1]['step']} is kept in {run_dir / 'latest.pt'}"
    else:
        kept = "no checkpoint was written"
    if not torch.isfinite(teacher_logp).all():
        fix = "the dataset's teacher log-probabilities are not finite: record the dataset again"
    elif state.step == step_at_start:
        # Before any update of this process: the student is fresh (or resumed intact), so the
        # inputs are at fault, not the step size.
        fix = (
            "it failed before any update, so the learning rate is not the cause: check that the "
            "teacher's log-probabilities are finite (a teacher with NaN weights?)"
        )
    else:
        fix = "lower `learning_rate`" + (" or `alpha`" if cfg.alpha > 0 else "")
    return f"{what}; {kept}; {fix}"


def _result(
    cfg: DistillConfig, history: list[dict[str, Any]], best_kl: float, run_dir: Path
) -> dict[str, Any]:
    """distill()'s return value; ``train_kl`` is the mean batch KL over the steps before the
    last evaluation (None for runs saved before it was recorded)."""
    metrics = history[-1]["metrics"] if history else {}
    return {
        "run_dir": str(run_dir),
        "best_checkpoint": str(run_dir / "best.pt"),
        "method": cfg.method,
        "train_fraction": cfg.train_fraction,
        "steps": cfg.steps,
        "best_test_kl": best_kl,
        "train_kl": history[-1].get("train_kl") if history else None,
        **{f"test_{k}": v for k, v in metrics.items()},
    }
