"""Choosing a game's distillation hyperparameters on validation splits: ``policy_distill tune``.

The grid (:mod:`.sweep`) takes per game a learning rate, alpha, Sobolev estimator and step
budget from ``docs/reproduce/hparams.json``; this module chooses them without touching any test
part. The search runs on a recording of its own (``data/<game>-tuning``, recorded with seed 1),
not on the grid's (``data/<game>``, seed 0): one recording's fraction x validates on frames that
are in the test part of every smaller fraction's cells. The entry it writes names that recording
(``tuning_recording_sha256``), and the grid refuses to run on it. For each *tuned fraction* x
(default 0.05 and 0.8: one of the small-data fractions, one of the large), every run trains on
the first x of the search's recording minus its last
``validation_fraction`` and is scored on that last part (whole episodes from the episode start
before the cut, ``validation_boundary previous``: at 5% a Pong episode is half the training part).
The score of a run is its validation KL after its last step (as the grid reports its runs); a
setting whose student collapses late scores what it ends with, not its best evaluation.

Per tuned fraction, one seed (and the check seeds of step 3), in this order (each stage starts from
the last one's choice):

1. ``kl``: the learning rate of KL-only students, by a walk along the ``learning_rates`` ladder
   from ``start_learning_rate`` (:func:`ladder_search`).
2. ``sobolev``, the paper's estimator (vjp): alpha along the ``alphas`` ladder from the
   estimator's default (``TUNED_ALPHA``), at the KL-only learning rate; then the learning rate
   along its ladder at that alpha. Where the alpha walk's first run, at the default alpha, ends
   dead (its student has no input-gradient left: a constant policy, :func:`ended_dead`), the
   walk moves one step down the learning-rate ladder before it compares alphas, and so on: runs
   that die tell nothing about alpha (Pong at 80%: Sobolev students died at KL's lr 2e-3).
3. Each other estimator of ``estimators`` (default fd): alpha along the ladder from its own
   default (the terms differ in scale), at the Sobolev learning rate. The estimator with the
   lowest score wins.
   Each method's choice (KL only's before the Sobolev walk starts from its learning rate) is then
   run with the ``check_seeds`` for ``check_steps``: where a student ends dead, the choice moves
   one step down the learning-rate ladder and is checked again (with the check seeds only; the
   walk is not redone at the lower rate: a Sobolev choice keeps its alpha and estimator). One
   seed's walk can stop at the
   edge of a cliff: on Pong at 80%, KL only's lr 2e-3 won with seed 0 and killed the student with
   seed 2 (on the grid's recording with seeds 0 and 1 at 80%, and all three at 30%).
4. Budget: a method's step budget is the first evaluation of its winner after which no later
   one lowers the validation KL by more than ``plateau_tolerance`` (relative). Where fewer than
   two of the search run's evaluations follow that step (it was still improving), the run is
   continued (its run directory resumes) to ``budget_steps`` and the budget read from the whole
   run; a budget at the last evaluation is marked as not converged: the CPU allowed no more.

Every run appends a row to ``docs/tuning/<game>.jsonl`` (committed; a finished run is never run
again, an interrupted one resumes from its ``latest.pt``); ``--fractions`` splits the work over
processes or machines. The page ``docs/tuning/<game>.md`` and, with ``--write-hparams``, the
game's entry of the hyperparameter file are generated from the rows by the same walk
(:func:`choose`), so a choice can always be traced to its runs. Grid fractions take the values
of the tuned fraction nearest on a log scale; where those differ from the largest tuned
fraction's, the entry gets an override (:class:`.sweep.Override`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policy_distill.checkpoint import atomic_write_bytes, hardware_description
from policy_distill.dataset import recorded_content_sha256
from policy_distill.distill import TUNED_ALPHA, TrainingSchedule
from policy_distill.errors import (
    MAX_ENV_SEED,
    NonFiniteLoss,
    UserError,
    at_least,
    check_fields,
    one_of,
    within,
)
from policy_distill.losses import SOBOLEV_ESTIMATORS
from policy_distill.metrics import has_no_input_gradient
from policy_distill.settings import PRECISION_CHOICES, game_info

from .sweep import DEFAULT_FRACTIONS, DEFAULT_HPARAMS, append_row, parse_fractions, read_rows, resume_step

KEY_FIELDS = (
    "game",
    "train_fraction",
    "validation_fraction",
    "method",
    "sobolev_estimator",
    "learning_rate",
    "alpha",
    "steps",
    "seed",
    "precision",
    "batch_size",
    "eval_every",
    "eval_frames",
    "fidelity_frames",
)
"""A tuning row's identity: a run with a row under this key is never run again."""


@dataclass(frozen=True)
class TuneConfig(TrainingSchedule):
    """One game's search; defaults: two tuned fractions, the ladders below, fp32, one seed."""

    game: str = "pong"
    """Game to tune (its shipped teacher and data/<game>-tuning unless given)."""
    data: str = "data/{game}-tuning"
    """Dataset directory, {game} replaced by the game; recorded with ``recording_seed`` if
    missing. Not the grid's recording (data/<game>): the frames hyperparameters are chosen on
    must not be frames the grid tests on, and ``reproduce`` refuses a recording its entry was
    tuned on."""
    recording_seed: int = 1
    """Seed of the recording made when ``data`` holds none: another than collect's default (0),
    which records the grid's data/<game>, so that the two recordings differ."""
    recording_frames: int = 100_000
    """Agent steps of that recording (the paper's 100K)."""
    teacher: str = ""
    """Teacher name or path (default: the game's shipped teacher)."""
    fractions: str = "0.05,0.8"
    """Tuned training fractions (comma-separated); each one's validation part is carved from
    its own training part. Give one per process to split the work."""
    validation_fraction: float = 0.1
    """Share of each training part's end held out for validation (from the episode start
    before the cut)."""
    learning_rates: str = "1e-4,2.5e-4,5e-4,1e-3,2e-3,4e-3,8e-3,1.6e-2"
    """Ladder of Adam learning rates (the paper searched 1e-5 to 1e-3 per game and method; the
    walk goes past 1e-3 only while the larger rate keeps winning; it tries 1.6e-2 only from
    8e-3, so a walk that never stood there chooses as it did before that rung was added)."""
    start_learning_rate: float = 1e-3
    """Where the learning-rate walk starts (a value of the ladder)."""
    alphas: str = "0.0003,0.001,0.003,0.01,0.03,0.1,0.3,1"
    """Ladder of Sobolev weights; each estimator's walk starts at its default (TUNED_ALPHA)."""
    estimators: str = "vjp,fd"
    """Sobolev estimators compared (vjp, the paper's, is always tuned first)."""
    steps: int = 3_000
    """Optimiser steps of each search run."""
    budget_steps: int = 6_000
    """Steps each method's winner is continued to, to find its budget."""
    plateau_tolerance: float = 0.02
    """A budget is reached once no later evaluation lowers validation KL by more than this share."""
    seed: int = 0
    """Seed of every run of the walk (one seed: the search walks; the grid's seeds are 0-2)."""
    check_seeds: str = "1,2"
    """Seeds each chosen setting is also run with, for ``check_steps``, to check that its
    student trains (comma-separated; empty: no check). A setting whose student dies with one of
    them steps down the learning-rate ladder."""
    check_steps: int = 1_000
    """Steps of each check run: dead students are dead by step 500 (Pong at lr 2e-3), and live
    ones have left the constant policy they start at by step 1,000 (``COLLAPSE_WARNING_STEP``)."""
    precision: str = "fp32"
    """fp32 (default: the same cells on every CPU, AVX2 or AVX-512), bf16 or auto."""
    results: str = "docs/tuning/{game}.jsonl"
    """JSON-lines table of the runs, {game} replaced; read to skip finished runs."""
    runs_dir: str = "runs/tuning"
    """Root of run directories: <runs_dir>/<game>/frac<x>-<setting>-seed<s>-<precision>."""
    out: str = "docs/tuning/{game}.md"
    """Page written from the rows, {game} replaced."""
    hparams: str = DEFAULT_HPARAMS
    """Hyperparameter file whose entry for the game --write-hparams replaces."""
    write_hparams: bool = False
    """Replace the game's entry in --hparams with the choices (once every tuned fraction is done)."""
    grid_fractions: str = DEFAULT_FRACTIONS
    """The grid's fractions, each mapped to the nearest tuned fraction (log scale)."""
    report_only: bool = False
    """Write the page (and entry) from the rows so far; run nothing."""
    preface: str = ""
    """Hand-written markdown placed under the page's title (default: the page's path with
    ``.preface.md`` for ``.md`` when that file exists): what a reader must know first, e.g. that
    a search is archived."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "game", game_info(self.game).name)
        check_fields(
            "tuning settings",
            [
                within(self, "validation_fraction", 0, 1, open_low=True, open_high=True),
                within(self, "plateau_tolerance", 0, 1, open_high=True),
                at_least(self, "steps", 1),
                at_least(self, "check_steps", 1),
                at_least(self, "seed", 0),
                within(self, "recording_seed", 0, MAX_ENV_SEED),
                at_least(self, "recording_frames", 1),
                one_of(self, "precision", PRECISION_CHOICES),
                ("budget_steps", f"must be >= steps ({self.steps}), got {self.budget_steps}")
                if self.budget_steps < self.steps
                else None,
                (
                    "start_learning_rate",
                    f"{self.start_learning_rate:g} is not on the ladder {self.learning_rates}",
                )
                if not any(math.isclose(self.start_learning_rate, v) for v in self.lr_ladder())
                else None,
            ],
        )
        self.fraction_list()
        self.alpha_ladder()
        self.estimator_list()
        self.check_seed_list()
        parse_fractions(self.grid_fractions)

    def fraction_list(self) -> list[float]:
        return parse_fractions(self.fractions)

    def lr_ladder(self) -> list[float]:
        return _ladder(self.learning_rates, "learning_rates", high=1.0)

    def alpha_ladder(self) -> list[float]:
        return _ladder(self.alphas, "alphas", high=math.inf)

    def check_seed_list(self) -> list[int]:
        try:
            seeds = [int(v) for v in self.check_seeds.split(",") if v.strip()]
        except ValueError:
            seeds = [-1]
        if any(v < 0 for v in seeds) or self.seed in seeds or len(set(seeds)) < len(seeds):
            raise UserError(
                f"`check_seeds` {self.check_seeds!r}: use distinct comma-separated seeds >= 0 other than "
                f"`seed` ({self.seed}), or an empty string for no check"
            )
        return seeds

    def estimator_list(self) -> list[str]:
        names = [e.strip() for e in self.estimators.split(",") if e.strip()]
        unknown = [e for e in names if e not in SOBOLEV_ESTIMATORS]
        if unknown or not names:
            raise UserError(
                f"`estimators` {self.estimators!r}: use comma-separated {', '.join(SOBOLEV_ESTIMATORS)}"
            )
        return ["vjp", *dict.fromkeys(e for e in names if e != "vjp")]

    def path(self, template: str) -> Path:
        return Path(template.replace("{game}", self.game))

    def preface_path(self) -> Path:
        return Path(self.preface) if self.preface else self.path(self.out).with_suffix(".preface.md")


def _ladder(text: str, name: str, *, high: float) -> list[float]:
    try:
        values = sorted({float(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise UserError(f"`{name}` must be comma-separated numbers, got {text!r}") from None
    if not values or not all(0 < v < high for v in values):
        raise UserError(f"`{name}` must be numbers in (0, {high:g}), got {text!r}")
    return values


# --- The walk --------------------------------------------------------------------------------


class NotRun(Exception):
    """A run the choice needs has no row yet (reading rows only)."""


def nearest(ladder: Sequence[float], value: float) -> float:
    """The ladder value nearest ``value`` on a log scale (the first of a tie)."""
    return min(ladder, key=lambda v: abs(math.log(v / value)))


def ladder_search(ladder: Sequence[float], start: float, score: Callable[[float], float]) -> float:
    """The ladder value of lowest score, found by walking from ``start``.

    Scores ``start`` and its neighbours, then keeps stepping outwards past the best while it is
    the outermost one scored, so a score that falls and rises once along the ladder (one valley)
    is minimised exactly with at most ``valley distance + 3`` evaluations. Ties go to the value
    scored first. ``score`` may return ``inf`` (a run that diverged).
    """
    i = ladder.index(nearest(ladder, start))
    lo, hi = max(0, i - 1), min(len(ladder) - 1, i + 1)
    scores = {i: score(ladder[i])}
    for j in (lo, hi):
        if j not in scores:
            scores[j] = score(ladder[j])
    while True:
        best = min(scores, key=lambda j: (scores[j], list(scores).index(j)))
        if best == lo and lo > 0:
            lo -= 1
            scores[lo] = score(ladder[lo])
        elif best == hi and hi < len(ladder) - 1:
            hi += 1
            scores[hi] = score(ladder[hi])
        else:
            return ladder[best]


def plateau_step(history: Sequence[tuple[int, float]], tolerance: float) -> int:
    """The first evaluation step after which no later evaluation lowers the validation KL by
    more than ``tolerance`` of its value: ``[(step, kl), ...]`` in step order -> step."""
    for i, (step, kl) in enumerate(history):
        later = [k for _, k in history[i + 1 :]]
        if not later or min(later) >= kl * (1 - tolerance):
            return step
    raise ValueError("empty history")


CONFIRMING_EVALUATIONS = 2
"""Later evaluations of a search run that must show its plateau (none lower by more than the
tolerance) for its budget to be taken without continuing the run to ``budget_steps``."""


@dataclass(frozen=True)
class Setting:
    """The hyperparameters of one run (besides game, fraction and seed)."""

    method: str
    learning_rate: float
    alpha: float = 0.0
    sobolev_estimator: str = "vjp"

    def label(self) -> str:
        name = self.method if self.method == "kl" else f"sobolev-{self.sobolev_estimator}"
        return f"{name}-lr{self.learning_rate:g}" + (f"-alpha{self.alpha:g}" if self.alpha else "")


@dataclass(frozen=True)
class Choice:
    """What the walk chose at one tuned fraction."""

    fraction: float
    kl: Setting
    sobolev: Setting
    budgets: dict[str, int]
    """Per method: the step budget (the plateau of its winner's continued run)."""
    converged: dict[str, bool]
    """Per method: False where the budget is its run's last evaluation (still improving)."""
    budget_runs: dict[str, int]
    """Per method: steps of the winner's run the budget was read from (search or continued)."""


Lookup = Callable[..., dict[str, Any]]
"""``(setting, steps[, seed]) -> row``: see :func:`choose`."""


def choose(cfg: TuneConfig, fraction: float, lookup: Lookup) -> Choice:
    """The walk of the module docstring at one fraction. ``lookup(setting, steps)`` returns the
    run's row with ``cfg.seed``, ``lookup(setting, steps, seed)`` with another (running it, or
    reading it: :class:`NotRun` where it has none).

    Raises:
        UserError: every value of a ladder diverged (the fix: lower values on it).
    """

    def score(setting: Setting) -> float:
        return _score(lookup(setting, cfg.steps))

    def walk(ladder: list[float], start: float, make: Callable[[float], Setting], flag: str) -> Setting:
        chosen = make(ladder_search(ladder, start, lambda v: score(make(v))))
        if math.isinf(score(chosen)):
            raise UserError(
                f"every value of `{flag}` tried for {chosen.label()} at fraction {fraction:g} diverged; "
                f"add lower values to `{flag}`"
            )
        return chosen

    def trains_with_every_seed(setting: Setting) -> Setting:
        """``setting``, or the first learning rate down its ladder whose students train with
        every check seed (each run at ``check_steps``; one that ends dead fails the check)."""
        while any(_fails_check(lookup(setting, cfg.check_steps, seed)) for seed in cfg.check_seed_list()):
            lower = [v for v in lrs if v < setting.learning_rate]
            if not lower:
                raise UserError(
                    f"{setting.label()} at fraction {fraction:g}: students die with a check seed at every "
                    "learning rate down the ladder; add lower values to `learning_rates`"
                )
            setting = dataclasses.replace(setting, learning_rate=max(lower))
        return setting

    lrs, alphas = cfg.lr_ladder(), cfg.alpha_ladder()
    kl = walk(lrs, cfg.start_learning_rate, lambda lr: Setting("kl", lr), "learning_rates")
    kl = trains_with_every_seed(kl)
    lr, first_alpha = kl.learning_rate, nearest(alphas, TUNED_ALPHA["vjp"])
    while ended_dead(lookup(Setting("sobolev", lr, first_alpha), cfg.steps)) and min(lrs) < lr:
        lr = max(v for v in lrs if v < lr)
    alpha = walk(alphas, first_alpha, lambda a: Setting("sobolev", lr, a), "alphas").alpha
    best = walk(lrs, lr, lambda v: Setting("sobolev", v, alpha), "learning_rates")
    sobolev_lr = best.learning_rate
    for estimator in cfg.estimator_list()[1:]:
        candidate = walk(
            alphas,
            TUNED_ALPHA[estimator],
            lambda a, e=estimator: Setting("sobolev", sobolev_lr, a, e),
            "alphas",
        )
        if score(candidate) < score(best):
            best = candidate
    best = trains_with_every_seed(best)
    winners = {"kl": kl, "sobolev": best}
    budgets, converged, budget_runs = {}, {}, {}
    for method, setting in winners.items():
        run_steps, history = cfg.steps, _curve(lookup(setting, cfg.steps))
        budget = plateau_step(history, cfg.plateau_tolerance)
        levelled_off = sum(step > budget for step, _ in history) >= CONFIRMING_EVALUATIONS
        if not levelled_off and cfg.budget_steps > cfg.steps:
            continued = lookup(setting, cfg.budget_steps)
            if not continued.get("diverged"):  # a continuation that diverged leaves the search's budget
                run_steps, history = cfg.budget_steps, _curve(continued)
                budget = plateau_step(history, cfg.plateau_tolerance)
        budgets[method] = budget
        converged[method] = budget < history[-1][0]
        budget_runs[method] = run_steps
    return Choice(fraction, kl, best, budgets, converged, budget_runs)


def _curve(row: dict[str, Any]) -> list[tuple[int, float]]:
    """``[(step, validation KL), ...]`` of a run, in step order."""
    return [(h["step"], h["kl"]) for h in row["history"]]


def _fails_check(row: dict[str, Any]) -> bool:
    """Whether a check run's student did not train: it ended dead, diverged, or has no evaluation."""
    return bool(row.get("diverged")) or not row["history"] or ended_dead(row)


def ended_dead(row: dict[str, Any]) -> bool:
    """Whether a run's student ended with (almost) no input-gradient on the fidelity frames:
    gradient cosine 0 and relative L2 error 1
    (:func:`~policy_distill.metrics.has_no_input_gradient`), as when every unit of a ReLU layer is
    dead. Its policy then no longer depends on the frame (a constant policy), whatever alpha asked
    of its gradients."""
    if row.get("diverged") or not row["history"]:
        return False
    return has_no_input_gradient(row["history"][-1])


def _score(row: dict[str, Any]) -> float:
    """A run's validation KL after its last step (inf where it diverged).

    The final value, not the lowest over the evaluations: the grid reports each run after its
    last step, and a setting whose student collapses after its best evaluation must not win
    (Breakout at 5%, lr 4e-3, alpha 0.01: 0.180 at step 2,500, 3.02 at step 3,000).
    """
    if row.get("diverged") or not row["history"]:
        return math.inf
    return row["history"][-1]["kl"]


# --- Runs and rows ---------------------------------------------------------------------------


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row.get(k) for k in KEY_FIELDS)


def _key(
    cfg: TuneConfig, fraction: float, setting: Setting, steps: int, precision: str, seed: int
) -> tuple[Any, ...]:
    return (
        cfg.game,
        fraction,
        cfg.validation_fraction,
        setting.method,
        setting.sobolev_estimator,
        setting.learning_rate,
        setting.alpha,
        steps,
        seed,
        precision,
        cfg.batch_size,
        cfg.eval_every,
        cfg.eval_frames,
        cfg.fidelity_frames,
    )


class Runner:
    """``lookup`` for :func:`choose`: a row from the table, else a distill run (its row appended).

    Holds the rows of this search only (same game, validation fraction, seed, precision and
    schedule); rows of another teacher or recording are refused, never mixed in.
    """

    def __init__(self, cfg: TuneConfig, *, run: bool) -> None:
        from agents.loading import load_teacher
        from policy_distill.devices import pick_device, resolve_precision

        self.cfg = cfg
        self.run = run
        self.precision = resolve_precision(cfg.precision, pick_device(cfg.device))
        self.results = cfg.path(cfg.results)
        mine = {
            "game": cfg.game,
            "validation_fraction": cfg.validation_fraction,
            "precision": self.precision,
            **{k: getattr(cfg, k) for k in ("batch_size", "eval_every", "eval_frames", "fidelity_frames")},
        }
        seeds = {cfg.seed, *cfg.check_seed_list()}
        self.rows = {
            row_key(r): r
            for r in read_rows(self.results)
            if all(r.get(k) == v for k, v in mine.items()) and r.get("seed") in seeds
        }
        self.teacher_sha256 = load_teacher(cfg.teacher or cfg.game, game=cfg.game).source.sha256
        self._check_provenance()
        self.ran = 0

    def _check_provenance(self) -> None:
        """Refuse to add runs on another teacher or recording than the table's, or on none: a
        missing recording would be recorded afresh, and its runs would mix with the old ones.
        A page written from the table alone (``run`` False) needs no recording."""
        data = self.cfg.path(self.cfg.data)
        dataset_sha = recorded_content_sha256(data)
        for row in self.rows.values():
            if dataset_sha is None and self.run:
                raise UserError(
                    f"{data} holds no recording, but {self.results} holds {self.cfg.game} runs made on "
                    f"recording sha256 {str(row.get('dataset_sha256'))[:12]}...; pass `data` holding "
                    "that recording, or a new `results` and `runs_dir` for a new search"
                )
            # Without a recording (a page from the rows alone) only the teacher is checked.
            other_recording = dataset_sha is not None and row.get("dataset_sha256") != dataset_sha
            if row.get("teacher_sha256") != self.teacher_sha256 or other_recording:
                raise UserError(
                    f"{self.results} holds {self.cfg.game} runs of another teacher or recording than "
                    f"{self.cfg.teacher or self.cfg.game} and {data}; "
                    "pass a new `results` and `runs_dir`"
                )

    def lookup_at(self, fraction: float) -> Lookup:
        return lambda setting, steps, seed=None: self.lookup(fraction, setting, steps, seed)

    def lookup(
        self, fraction: float, setting: Setting, steps: int, seed: int | None = None
    ) -> dict[str, Any]:
        seed = self.cfg.seed if seed is None else seed
        key = _key(self.cfg, fraction, setting, steps, self.precision, seed)
        if key in self.rows:
            return self.rows[key]
        if not self.run:
            raise NotRun(f"frac {fraction:g} {setting.label()} {steps} steps seed {seed}")
        self._check_provenance()  # again: a search runs for hours, and the recording may change
        row = self._distill(fraction, setting, steps, key, seed)
        earlier = {r.get("dataset_sha256") for r in self.rows.values()}
        if earlier and row["dataset_sha256"] not in earlier:  # changed while this run loaded it
            raise UserError(
                f"{row['run_dir']} trained on recording sha256 {str(row['dataset_sha256'])[:12]}..., not the "
                f"one of {self.results}'s runs: its row is left out; restore that recording as `data`"
            )
        append_row(self.results, row)
        self.rows[key] = row
        self.ran += 1
        return row

    def run_name(self, fraction: float, setting: Setting, seed: int) -> str:
        """One directory per setting of this search (the search and continued runs share it)."""
        cfg = self.cfg
        schedule = {
            f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainingSchedule) if f.name != "device"
        }
        default = {k: v for k, v in dataclasses.asdict(TrainingSchedule()).items() if k != "device"}
        tag = (
            ""
            if schedule == default
            else "-" + hashlib.sha256(json.dumps(schedule, sort_keys=True).encode()).hexdigest()[:8]
        )
        name = f"frac{fraction:g}-val{cfg.validation_fraction:g}-{setting.label()}-seed{seed}"
        return f"{name}-{self.precision}{tag}"

    def _distill(
        self, fraction: float, setting: Setting, steps: int, key: tuple[Any, ...], seed: int
    ) -> dict[str, Any]:
        from policy_distill.checkpoint import safe_torch_load
        from policy_distill.dataset import load_dataset
        from policy_distill.devices import cpu_capability
        from policy_distill.distill import DistillConfig, distill

        cfg = self.cfg
        run_cfg = DistillConfig(
            game=cfg.game,
            teacher=cfg.teacher,
            data=str(cfg.path(cfg.data)),
            train_fraction=fraction,
            validation_fraction=cfg.validation_fraction,
            validation_boundary="previous",
            steps=steps,
            learning_rate=setting.learning_rate,
            alpha=setting.alpha,
            sobolev_estimator=setting.sobolev_estimator,
            seed=seed,
            precision=self.precision,
            run=self.run_name(fraction, setting, seed),
            runs_dir=cfg.runs_dir,
            **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainingSchedule)},
        )
        print(
            f"tune {cfg.game} frac {fraction:g}: {setting.label()} seed {seed} to step {steps} in "
            f"{run_cfg.run_dir}",
            flush=True,
        )
        # A run continued from its directory (a budget run, or one a stopped session left) is
        # timed from there on: its row says so, so that its wall time is not read as the whole.
        resumed_from = resume_step(run_cfg.run_dir)
        started = time.perf_counter()
        try:
            distill(run_cfg)
            diverged = False
        except NonFiniteLoss as e:
            print(f"  diverged: {e}", flush=True)
            diverged = True
        latest_path = run_cfg.run_dir / "latest.pt"
        latest = safe_torch_load(latest_path, what="student checkpoint") if latest_path.is_file() else None
        # Evaluations up to this row's steps only: a directory continued further by an earlier
        # search (with a larger budget) holds more.
        history = [h for h in latest["history"] if h["step"] <= steps] if latest else []
        if latest:  # what the run trained on, as its checkpoint recorded it
            trained_on = latest["dataset"]
        else:  # diverged before its first checkpoint
            dataset = load_dataset(run_cfg.data)
            split = dataset.split(fraction, cfg.validation_fraction, "previous")
            trained_on = {
                "train_frames": len(split.train),
                "test_frames": len(split.test),
                "content_sha256": dataset.meta.get("content_sha256"),
            }
        row = {
            **dict(zip(KEY_FIELDS, key)),
            "history": [{"step": h["step"], **h["metrics"], "train_kl": h.get("train_kl")} for h in history],
            "diverged": diverged,
            "run_dir": str(run_cfg.run_dir),
            "train_frames": trained_on["train_frames"],
            "validation_frames": trained_on["test_frames"],
            "teacher_sha256": self.teacher_sha256,
            "dataset_sha256": trained_on.get("content_sha256"),
            "wall_s": time.perf_counter() - started,
            "resumed_from_step": resumed_from,
            "hardware": hardware_description(),
            "cpu_capability": cpu_capability(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if not diverged:
            print(f"  done: final validation KL {_score(row):.4f} ({row['wall_s']:.0f} s)", flush=True)
        return row


# --- The page and the hparams entry ----------------------------------------------------------


def _wall_time(row: dict[str, Any]) -> str:
    """A row's wall time, with the steps it covers when the run resumed part-way."""
    resumed = row.get("resumed_from_step") or 0
    if resumed >= row["steps"]:  # its directory had run further for a longer search
        return "none (read from a run continued further)"
    span = f" (steps {resumed:,}-{row['steps']:,})" if resumed else ""
    return f"{row['wall_s'] / 60:.1f} min{span}"


def tune(cfg: TuneConfig) -> dict[str, Any]:
    """Run the walk at ``cfg.fractions`` (unless report_only), then write the page (and entry)."""
    if cfg.preface and not Path(cfg.preface).is_file():
        raise UserError(f"`preface` {cfg.preface}: no such file; write it or leave `preface` out")
    runner = Runner(cfg, run=not cfg.report_only)
    if not cfg.report_only:
        _check_output(cfg)
        _record_if_missing(cfg)
        for fraction in cfg.fraction_list():
            choose(cfg, fraction, runner.lookup_at(fraction))
    reader = Runner(cfg, run=False)
    choices: dict[float, Choice | None] = {}
    for fraction in sorted({*cfg.fraction_list(), *(r["train_fraction"] for r in reader.rows.values())}):
        try:
            choices[fraction] = choose(cfg, fraction, reader.lookup_at(fraction))
        except NotRun:
            choices[fraction] = None
    recordings = {r.get("dataset_sha256") for r in reader.rows.values()}
    recording = next(iter(recordings)) if len(recordings) == 1 else None
    entry = hparams_entry(
        cfg, {f: c for f, c in choices.items() if c is not None}, reader.precision, recording=recording
    )
    page = render_page(cfg, reader, choices, entry)
    out = cfg.path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, page.encode())
    wrote_hparams = False
    if cfg.write_hparams:
        unfinished = [f"{f:g}" for f, c in choices.items() if c is None]
        if entry is None or unfinished:
            raise UserError(
                f"the search of {cfg.game} is not finished at fraction(s) {', '.join(unfinished)}; run "
                "tune for them (without report_only) before write_hparams"
            )
        if not recording:  # the grid's guard against its own recording needs the one searched on
            raise UserError(
                f"{runner.results}'s {cfg.game} runs name {len(recordings)} recordings, not one; an entry "
                "must name the recording it was tuned on: keep one recording's rows in `results`"
            )
        _write_entry(Path(cfg.hparams), cfg.game, entry)
        wrote_hparams = True
    return {
        "game": cfg.game,
        "ran": runner.ran,
        "results": str(runner.results),
        "page": str(out),
        "finished_fractions": [f for f, c in choices.items() if c is not None],
        "hparams_written": wrote_hparams,
        "entry": entry,
    }


def _record_if_missing(cfg: TuneConfig) -> None:
    """Record the search's own recording, seeded ``recording_seed``, before its first run (a
    distill run would record one seeded 0: the grid's)."""
    from agents.loading import load_teacher
    from policy_distill.collect import CollectConfig, collect

    data = cfg.path(cfg.data)
    if recorded_content_sha256(data) is not None:
        return
    teacher = load_teacher(cfg.teacher or cfg.game, game=cfg.game)
    print(f"no recording in {data}: recording {cfg.recording_frames:,} frames, seed {cfg.recording_seed}")
    collect(teacher, CollectConfig(frames=cfg.recording_frames, seed=cfg.recording_seed), data)


def _check_output(cfg: TuneConfig) -> None:
    """Fail before hours of runs, not after: the table and page must be writable."""
    from policy_distill.checkpoint import check_writable_directory

    for path in (cfg.path(cfg.results), cfg.path(cfg.out)):
        check_writable_directory(path.parent, what="tuning output folder", fix="pass another --results/--out")


def _nearest(fraction: float, tuned: Sequence[float]) -> float:
    return min(tuned, key=lambda t: abs(math.log(fraction / t)))


def hparams_entry(
    cfg: TuneConfig, choices: dict[float, Choice], precision: str, *, recording: str | None = None
) -> dict[str, Any] | None:
    """The game's hparams.json entry: the largest tuned fraction's values as the base, an
    override per method and group of grid fractions whose tuned fraction chose otherwise.
    ``recording``: the content sha256 of the recording the search ran on, named in ``chosen_by``
    (the grid may run on another recording of the same teacher)."""
    if not choices:
        return None
    tuned = sorted(choices)
    base_choice = choices[tuned[-1]]
    kl, sob = base_choice.kl, base_choice.sobolev
    base = {
        "learning_rate": kl.learning_rate,
        "alpha": sob.alpha,
        "steps": base_choice.budgets["kl"],
        "precision": precision,
        "sobolev_estimator": sob.sobolev_estimator,
    }

    def cell_values(choice: Choice, method: str) -> dict[str, Any]:
        setting = choice.kl if method == "kl" else choice.sobolev
        values = {"learning_rate": setting.learning_rate, "steps": choice.budgets[method]}
        if method == "sobolev":
            values.update(alpha=setting.alpha, sobolev_estimator=setting.sobolev_estimator)
        return values

    grid = parse_fractions(cfg.grid_fractions)
    overrides = []
    for method in ("kl", "sobolev"):
        groups = []  # (grid fractions, values that differ from the base) per tuned fraction
        for fraction in tuned:
            group = [g for g in grid if _nearest(g, tuned) == fraction]
            changed = {k: v for k, v in cell_values(choices[fraction], method).items() if base[k] != v}
            if group:
                groups.append((group, changed))
        if groups and all(changed == groups[0][1] for _, changed in groups):  # the same everywhere
            if groups[0][1]:
                overrides.append(
                    {"methods": [method], **groups[0][1], "why": "chosen on the validation split"}
                )
            continue
        for group, changed in groups:
            if changed:
                why = f"chosen on the validation split at fraction {_nearest(group[0], tuned):g}"
                overrides.append({"methods": [method], "fractions": group, **changed, "why": why})
    converged = [
        f"{m} at {f:g}: {'plateau' if c.converged[m] else 'NOT converged'} at {c.budgets[m]} steps"
        for f, c in sorted(choices.items())
        for m in ("kl", "sobolev")
    ]
    chosen_by = (
        f"policy_distill tune on {cfg.path(cfg.data)}"
        + (f", recording sha256 {recording[:12]}..." if recording else "")
        + f" (validation split: the last {cfg.validation_fraction:g} of each tuned "
        f"fraction's training part, from the episode start before the cut; never the test part), "
        f"tuned at fractions {', '.join(f'{f:g}' for f in tuned)}, seed {cfg.seed}, {precision}: "
        f"learning rate, alpha and estimator by the lowest final validation KL of {cfg.steps}-step runs"
        + (
            f" (each choice checked to train, not die, with seeds {cfg.check_seeds} in "
            f"{cfg.check_steps}-step runs, else a learning rate lower)"
            if cfg.check_seed_list()
            else ""
        )
        + ", "
        f"steps by where validation KL stops improving (within {cfg.plateau_tolerance:g}) in runs "
        f"continued to {cfg.budget_steps} ({'; '.join(converged)}). Runs and walk: "
        f"{cfg.path(cfg.out)}."
    )
    return {
        **base,
        "chosen_by": chosen_by,
        **({"tuning_recording_sha256": recording} if recording else {}),
        **({"overrides": overrides} if overrides else {}),
    }


def _write_entry(path: Path, game: str, entry: dict[str, Any]) -> None:
    """Replace the game's entry in the hyperparameter file, checked before the file is touched."""
    import tempfile

    from policy_distill.experiments.sweep import load_hparams

    try:
        raw = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(
            f"hyperparameter file {path} is not readable JSON ({e}); fix it or pass another `hparams`"
        ) from None
    # Tune's runs are the paper's student, uncentred: values chosen for it must not be paired
    # silently with another student that a hand-written entry asked for.
    kept = {k: raw.get(game, {}).get(k) for k in ("student_width", "centre_first_layer")}
    other = [f"{k} {v}" for k, v in kept.items() if v not in (None, False, 1, 1.0)]
    if other:
        raise UserError(
            f"the {game} entry of {path} sets {', '.join(other)}, but tune chose its values for the "
            "paper's student; pass another `hparams` file or remove those fields first"
        )
    raw[game] = entry
    text = json.dumps(raw, indent=2) + "\n"
    with tempfile.TemporaryDirectory() as scratch:
        check = Path(scratch) / "hparams.json"
        check.write_text(text)
        load_hparams(check)  # every entry of the new file reads back
    atomic_write_bytes(path, text.encode())


def _number(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def runs_by_alpha(
    rows: Sequence[dict[str, Any]], steps: int, seed: int | None
) -> dict[float, list[dict[str, Any]]]:
    """The walk's runs of one fraction's search: ``steps`` steps (budget runs ran longer) with the
    walk's ``seed`` (check runs have others), that did not diverge, grouped by alpha (0: KL only)."""
    by_alpha: dict[float, list[dict[str, Any]]] = {}
    for r in rows:
        if r["steps"] == steps and r.get("seed") == seed and not r.get("diverged") and r["history"]:
            by_alpha.setdefault(0.0 if r["method"] == "kl" else float(r["alpha"]), []).append(r)
    return by_alpha


def lowest_by_alpha(
    rows: Sequence[dict[str, Any]], steps: int, seed: int | None
) -> dict[float, dict[str, Any]]:
    """Per alpha, the run of :func:`runs_by_alpha` with the lowest final validation KL."""
    return {
        alpha: min(runs, key=lambda r: r["history"][-1]["kl"])
        for alpha, runs in runs_by_alpha(rows, steps, seed).items()
    }


def walk_rows(rows: Sequence[dict[str, Any]]) -> tuple[int, int | None] | None:
    """``(steps, seed)`` of the walk's runs among one fraction's search rows: the seed most rows
    have (check runs are a few per choice) and its shortest runs (budget runs ran longer)."""
    seeds = [r.get("seed") for r in rows]  # None in rows older than seeds were recorded
    if not seeds:
        return None
    seed = max(set(seeds), key=seeds.count)
    return min(r["steps"] for r in rows if r.get("seed") == seed), seed


def _alpha_table(cfg: TuneConfig, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Per alpha, the lowest final validation KL of the search-length runs at one fraction."""
    by_alpha = runs_by_alpha(rows, cfg.steps, cfg.seed)
    best = lowest_by_alpha(rows, cfg.steps, cfg.seed)
    if not best:
        return []
    lines = [
        f"By alpha: the lowest final validation KL of the {cfg.steps}-step runs at each alpha, over "
        "learning rates and estimators (alpha 0 is KL only). How much the Sobolev term buys on the "
        "validation split, and how much it depends on alpha:",
        "",
        "| alpha | runs | lowest final validation KL | against KL only | run |",
        "|---:|---:|---:|---:|---|",
    ]
    kl_only = best[0.0]["history"][-1]["kl"] if 0.0 in best else None
    for alpha in sorted(best):
        r, n = best[alpha], len(by_alpha[alpha])
        kl = r["history"][-1]["kl"]
        versus = "" if kl_only is None or alpha == 0 else f"{100 * (kl - kl_only) / kl_only:+.1f}%"
        label = Setting(r["method"], r["learning_rate"], r["alpha"], r["sobolev_estimator"]).label()
        lines.append(f"| {alpha:g} | {n} | {kl:.4f} | {versus} | {label} |")
    return [*lines, ""]


def render_page(
    cfg: TuneConfig, reader: Runner, choices: dict[float, Choice | None], entry: dict[str, Any] | None
) -> str:
    """docs/tuning/<game>.md: every run's row, the walk's choices, budgets and the entry."""
    rows = sorted(
        (r for r in reader.rows.values() if r["game"] == cfg.game),
        key=lambda r: (r["train_fraction"], r["finished_at"]),
    )
    data_flag = "" if cfg.path(cfg.data) == cfg.path(TuneConfig.data) else f" --data {cfg.data}"
    if cfg.recording_seed != TuneConfig.recording_seed:
        data_flag += f" --recording-seed {cfg.recording_seed}"
    # A search made before the seed check (or without it) reads back only with its setting.
    if cfg.check_seeds != TuneConfig.check_seeds:
        data_flag += f" --check-seeds {shlex.quote(cfg.check_seeds)}"
    if cfg.check_steps != TuneConfig.check_steps and cfg.check_seed_list():
        data_flag += f" --check-steps {cfg.check_steps}"
    # A table or page of its own (an archived search, an experiment) is not the game's search:
    # its commands name them, and do not offer to write the game's hparams.json entry.
    own_table = cfg.path(cfg.results) != cfg.path(TuneConfig.results)
    for name in ("results", "out"):
        if cfg.path(getattr(cfg, name)) != cfg.path(getattr(TuneConfig, name)):
            data_flag += f" --{name} {cfg.path(getattr(cfg, name))}"
    if cfg.preface:
        data_flag += f" --preface {cfg.preface}"
    recordings = sorted({str(r.get("dataset_sha256")) for r in rows})
    lines = [
        f"# {cfg.game}: hyperparameters chosen on validation splits",
        "",
        "Generated by `python -m policy_distill tune` from "
        f"`{cfg.path(cfg.results)}`; do not edit by hand. The protocol is in the docstring of "
        "`policy_distill/experiments/tune.py`: per tuned fraction the learning rate (KL only), "
        "then alpha and the learning rate (Sobolev, vjp; first one step down the learning rate where "
        "the default alpha's student dies), then the other estimators' alpha, each "
        "by the lowest final validation KL; "
        + (
            "each method's choice checked to train with other seeds (a learning rate lower where a "
            "student dies); "
            if cfg.check_seed_list()
            else "no check with other seeds (`--check-seeds ''`); "
        )
        + "then each winner continued to find its step budget. The test part of the recording is "
        "never read.",
        "",
        "```bash",
        f"python -m policy_distill tune --game {cfg.game}{data_flag} --fractions {cfg.fractions} "
        f"--steps {cfg.steps} --budget-steps {cfg.budget_steps} --precision {cfg.precision}",
        f"python -m policy_distill tune --game {cfg.game}{data_flag} --report-only"
        + ("" if own_table else " --write-hparams"),
        "```",
        "",
    ]
    preface = cfg.preface_path()
    if preface.is_file():
        lines[1:1] = ["", preface.read_text(encoding="utf-8", errors="replace").strip()]
    hardware = sorted({f"{r['hardware']}, {r['cpu_capability']}" for r in rows})
    cpu_s = sum(r["wall_s"] for r in rows)
    lines += [
        f"{len(rows)} runs, {cpu_s / 3600:.1f} hours of wall time (one process each; a resumed run counts "
        "from the step it resumed at) on: " + ("; ".join(hardware) or "none yet") + ". "
        f"Recording (data content sha256): {', '.join(recordings) or 'none yet'}.",
        "",
    ]
    for fraction, choice in choices.items():
        here = [r for r in rows if r["train_fraction"] == fraction]
        frames = here[0] if here else None
        lines += [f"## Fraction {fraction:g}", ""]
        if frames:
            lines += [
                f"Training {frames['train_frames']:,} frames, "
                f"validation {frames['validation_frames']:,} frames.",
                "",
            ]
        lines += [
            "| run | steps | lowest validation KL (at step) | final validation KL | final training KL "
            "| final action error | final gradient cosine | wall time |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in here:
            label = Setting(r["method"], r["learning_rate"], r["alpha"], r["sobolev_estimator"]).label()
            if r["seed"] != cfg.seed:
                label += f" (check, seed {r['seed']})"
            if r.get("diverged") or not r["history"]:
                lines.append(f"| {label} | {r['steps']} | diverged | | | | | {_wall_time(r)} |")
                continue
            last = r["history"][-1]
            low = min(r["history"], key=lambda h: h["kl"])
            lines.append(
                f"| {label} | {r['steps']} | {low['kl']:.4f} ({low['step']}) | {last['kl']:.4f} "
                f"| {_number(last.get('train_kl'))} | {last['action_error']:.4f} | {last['grad_cosine']:.3f} "
                f"| {_wall_time(r)} |"
            )
        lines.append("")
        lines += _alpha_table(cfg, here)
        if choice is None:
            lines += ["The walk at this fraction is not finished: run the tune command again.", ""]
            continue
        edges = [
            f"{name} {value:g}"
            for name, value, ladder in (
                ("KL-only learning rate", choice.kl.learning_rate, cfg.lr_ladder()),
                ("Sobolev learning rate", choice.sobolev.learning_rate, cfg.lr_ladder()),
                ("alpha", choice.sobolev.alpha, cfg.alpha_ladder()),
            )
            if len(ladder) > 1 and value in (ladder[0], ladder[-1])
        ]
        lines += [
            f"Chosen: KL only `{choice.kl.label()}`, Sobolev `{choice.sobolev.label()}`."
            + (
                f" At the end of its ladder (a value beyond it might be better): {', '.join(edges)}."
                if edges
                else ""
            ),
            "",
            "| method | step budget | converged | validation KL by step (the run it was read from) |",
            "|---|---:|---|---|",
        ]
        for method, setting in (("kl", choice.kl), ("sobolev", choice.sobolev)):
            row = reader.lookup(fraction, setting, choice.budget_runs[method])
            curve = ", ".join(f"{h['step']}: {h['kl']:.4f}" for h in row["history"])
            converged = "yes" if choice.converged[method] else "no"
            lines.append(f"| {method} | {choice.budgets[method]} | {converged} | {curve} |")
        lines.append("")
    lines += ["## The hparams.json entry", ""]
    if entry is None:
        lines += ["None yet: no tuned fraction is finished.", ""]
    else:
        lines += ["```json", json.dumps({cfg.game: entry}, indent=2), "```", ""]
    return "\n".join(lines)
