"""The paper-reproduction sweep: ``policy_distill reproduce`` / ``make reproduce``.

Section 4.2 / Figure 4 of Czarnecki et al. 2017: for every game x training fraction x method
(``kl``: alpha = 0; ``sobolev``: alpha > 0) x seed, one :func:`policy_distill.distill.distill`
run on the game's one 100K-frame recording (``data/<game>``), in
``runs/reproduce/<game>/<method>-frac<f>-seed<s>[-bf16]``. Learning rate, alpha, steps and
precision come per game from a JSON file (``docs/reproduce/hparams.json``), each with the
reason it was chosen.

Every finished run appends one row to a JSON-lines results table, by default the committed
``docs/reproduce/results.jsonl`` (so that the grid can be finished over sessions and machines,
and ``make report`` rebuilds the committed page from it): one ``os.write`` of the whole line,
then ``fsync``. Running the same command again reads the table and skips every cell whose key
(game, method, fraction, seed, learning rate, alpha, steps, precision) already has a row, so a
finished run is never repeated; an
interrupted run resumes from its ``latest.pt`` (distill's own resume). ``--games``,
``--fractions``, ``--seeds`` and ``--methods`` cut the grid into pieces for several machines;
``policy_distill report`` reads their tables together.

With ``--score-episodes N`` the students of the largest fraction (their ``best.pt``) and, once
per game, the teacher are played for N games (sampled actions, as ``evaluate``); the teacher's
score is cached in the table as a row with method ``teacher``. A student row that lacks a score
when one is asked for gets a second, complete row with the score; readers keep the last row of
each key (:func:`latest_rows`).

``--executor ray [--address ADDRESS]`` runs the cells as tasks on a Ray cluster (one started on
this machine without ``--address``); :mod:`.executors` holds both executors. Whichever runs the
cells, this process (the driver) alone appends the rows, as each cell finishes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policy_distill.dataset import recorded_content_sha256
from policy_distill.distill import TrainingSchedule
from policy_distill.errors import UserError, at_least, check_fields, one_of, within
from policy_distill.losses import SOBOLEV_ESTIMATORS
from policy_distill.settings import PRECISION_CHOICES, game_info

METHODS = ("kl", "sobolev")
"""``kl``: KL(pi || pi*) alone (alpha = 0); ``sobolev``: KL + alpha * the Sobolev term."""
EXECUTORS = ("local", "ray")
"""Where the cells run: here, one after another, or as tasks of a Ray cluster (.executors)."""
DEFAULT_FRACTIONS = "0.01,0.05,0.1,0.3,0.5,0.8"
DEFAULT_SEEDS = "0,1,2"
DEFAULT_HPARAMS = "docs/reproduce/hparams.json"
DEFAULT_RESULTS = "docs/reproduce/results.jsonl"
METRICS = ("action_error", "kl", "grad_cosine", "grad_rel_l2")
"""Held-out metrics of a run, stored as ``final_<name>`` (last step) and ``best_<name>`` (best.pt)."""
KEY_FIELDS = (
    "game",
    "method",
    "train_fraction",
    "seed",
    "learning_rate",
    "alpha",
    "steps",
    "precision",
    "sobolev_estimator",
    "samples_per_direction",
    "centre_first_layer",
    "student_width",
)
"""A results row's identity: a cell with a row under this key is never run again."""
KEY_DEFAULTS = {
    "precision": "fp32",
    "sobolev_estimator": "vjp",
    "samples_per_direction": 1,
    "centre_first_layer": False,
    "student_width": 1.0,
}
"""Values of key fields that rows written before the field existed implicitly had."""


@dataclass(frozen=True)
class SweepConfig(TrainingSchedule):
    """The reproduction grid; the defaults are the paper's fractions, both methods, three seeds."""

    games: str = ""
    """Comma-separated games (each needs an entry in --hparams); empty: every game in --hparams."""
    fractions: str = DEFAULT_FRACTIONS
    """Comma-separated training fractions: the first x of each recording trains, the rest tests."""
    seeds: str = DEFAULT_SEEDS
    """Comma-separated seeds of the students' initialisation, batch order and directions."""
    methods: str = "kl,sobolev"
    """Comma-separated methods: kl (alpha = 0) and/or sobolev (alpha from --hparams)."""
    hparams: str = DEFAULT_HPARAMS
    """JSON file: per game learning_rate, alpha, steps and chosen_by (why these values)."""
    results: str = DEFAULT_RESULTS
    """JSON-lines results table; one row per finished run, read to skip finished cells."""
    runs_dir: str = "runs/reproduce"
    """Root of run directories: <runs_dir>/<game>/<method>-frac<f>-seed<s>."""
    data: str = "data/{game}"
    """Dataset directory, {game} replaced by the game; recorded (100K frames) if missing."""
    teacher: str = ""
    """Teacher name or path, {game} replaced by the game; empty: each game's shipped teacher."""
    score_episodes: int = 0
    """Games to play with each student of the largest fraction and once with each teacher (0: none)."""
    score_fraction: float = 0.0
    """Fraction whose students are played (0: the largest of the fractions; give it when the
    fractions are split over machines)."""
    score_seed: int = 1000
    """Evaluation seed of the games played (evaluate's default)."""
    executor: str = "local"
    """local (one cell after another in this process) or ray (each cell a Ray task; needs
    `pip install policy-distill[ray]`; this process alone writes the results table)."""
    address: str = ""
    """Ray cluster address (host:6379 or ray://host:10001); empty starts Ray on this machine."""
    cpus_per_cell: float = 1.0
    """CPUs a cell's Ray task reserves where the cluster has no GPU (with GPUs: one GPU each)."""
    cell_retries: int = 3
    """Times Ray reruns a cell whose worker died (the rerun resumes from the cell's latest.pt)."""

    def game_list(self) -> list[str]:
        names = [game_info(g).name for g in _items(self.games)] or list(load_hparams(self.hparams))
        if not names:
            raise UserError(f"`games` is empty and {self.hparams} has no game entry; give e.g. pong")
        return list(dict.fromkeys(names))

    def fraction_list(self) -> list[float]:
        return parse_fractions(self.fractions)

    def seed_list(self) -> list[int]:
        return parse_seeds(self.seeds)

    def method_list(self) -> list[str]:
        methods = [m.lower() for m in _items(self.methods)]
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise UserError(f"`methods` {self.methods!r}: use kl, sobolev or both (comma-separated)")
        return [m for m in METHODS if m in methods]

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise UserError for settings that cannot run (messages name the fields)."""
        if _items(self.games):  # empty: every game of the hparams file, read when the sweep runs
            self.game_list()
        self.seed_list()
        self.method_list()
        fractions = self.fraction_list()
        if self.score_episodes < 0:
            raise UserError(f"`score_episodes` must be >= 0, got {self.score_episodes}")
        check_fields(
            "sweep settings",
            [
                one_of(self, "executor", EXECUTORS),
                within(self, "cpus_per_cell", 0, math.inf, open_low=True, open_high=True),
                at_least(self, "cell_retries", 0),
                ("address", "is only used with executor ray")
                if self.address and self.executor != "ray"
                else None,
            ],
        )
        if self.score_fraction and self.score_fraction not in fractions:
            raise UserError(
                f"`score_fraction` {self.score_fraction:g} is not one of `fractions` {self.fractions}"
            )

    def scored_fraction(self) -> float:
        return self.score_fraction or max(self.fraction_list())


def _items(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def parse_fractions(text: str) -> list[float]:
    """``"0.01,0.1"`` -> ascending fractions in (0, 1); UserError otherwise."""
    try:
        values = sorted({float(t) for t in _items(text)})
    except ValueError:
        raise UserError(f"`fractions` must be comma-separated numbers, got {text!r}") from None
    if not values or not all(0 < f < 1 for f in values):
        raise UserError(f"`fractions` must lie in (0, 1) (the rest of the recording tests), got {text!r}")
    return values


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ascending non-negative seeds; UserError otherwise."""
    try:
        values = sorted({int(t) for t in _items(text)})
    except ValueError:
        raise UserError(f"`seeds` must be comma-separated integers, got {text!r}") from None
    if not values or values[0] < 0:
        raise UserError(f"`seeds` must be non-negative integers, got {text!r}")
    return values


OVERRIDABLE = (
    "learning_rate",
    "alpha",
    "steps",
    "sobolev_estimator",
    "samples_per_direction",
    "centre_first_layer",
    "student_width",
)
"""Fields of a game's entry that an override may change for some methods or fractions."""


@dataclass(frozen=True)
class Override:
    """Values that replace a game's own for the cells it matches (an ``overrides`` item)."""

    values: tuple[tuple[str, Any], ...]
    """(field, value) pairs, fields from ``OVERRIDABLE``."""
    methods: tuple[str, ...] = ()
    """Methods it applies to (empty: both)."""
    fractions: tuple[float, ...] = ()
    """Training fractions it applies to (empty: all)."""
    why: str = ""
    """Free text: the evidence for it."""

    def describe(self) -> str:
        """``"sobolev at fractions 0.01, 0.05: alpha 0.1"``: for reports."""
        who = " and ".join(self.methods) if self.methods else "both methods"
        where = f" at fractions {', '.join(f'{f:g}' for f in self.fractions)}" if self.fractions else ""
        what = ", ".join(
            f"{k.replace('_', ' ')} {v:g}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
            for k, v in self.values
        )
        return f"{who}{where}: {what}" + (f" ({self.why})" if self.why else "")

    def matches(self, method: str, fraction: float) -> bool:
        return (not self.methods or method in self.methods) and (
            not self.fractions or any(math.isclose(fraction, f) for f in self.fractions)
        )


@dataclass(frozen=True)
class GameHparams:
    """One game's entry in the hyperparameter file."""

    learning_rate: float
    """Adam step size of both methods."""
    alpha: float
    """Weight of the Sobolev term for the sobolev method (kl uses 0)."""
    steps: int
    """Optimiser steps of every run."""
    chosen_by: str
    """Free text: how these values were chosen."""
    precision: str = "auto"
    """auto, fp32 or bf16 (distill's precision). Optional in the file (default auto: bf16 where
    the hardware does bf16 natively, else fp32). The resolved precision is part of a cell's
    identity, so fp32 and bf16 runs of a cell are never confused."""
    sobolev_estimator: str = "vjp"
    """vjp (the paper's), jvp or fd: how the sobolev method estimates its term (distill's
    sobolev_estimator). Optional in the file; part of a Sobolev cell's identity."""
    samples_per_direction: int = 1
    """jvp and fd: samples sharing an input direction (distill's samples_per_direction).
    Optional in the file (default 1: none shared); part of a Sobolev cell's identity."""
    centre_first_layer: bool = False
    """Both methods: centre the student's first layer on training frames before step 0
    (distill's centre_first_layer). Optional in the file (default false); part of a cell's identity."""
    student_width: float = 1.0
    """Both methods: multiplier of the student's channels and hidden units (distill's
    student_width; 1 is the paper's student). Optional in the file; part of a cell's identity."""
    tuning_recording_sha256: str = ""
    """Optional in the file (``tune --write-hparams`` writes it): the content sha256 of the
    recording these values were chosen on. The grid is refused on that recording, whose frames
    would then be both the search's and the grid's test frames."""
    overrides: tuple[Override, ...] = ()
    """Optional in the file: ``[{"methods": [...], "fractions": [...], "<field>": value, ...}]``,
    applied in order to the cells each matches (a method's own learning rate, an alpha for the
    small fractions); see :meth:`for_cell`."""

    def alpha_for(self, method: str) -> float:
        return self.alpha if method == "sobolev" else 0.0

    def for_cell(self, method: str, fraction: float) -> GameHparams:
        """The values one cell runs with: this entry with its matching overrides applied in
        file order (a later one wins), and no overrides left."""
        values: dict[str, Any] = {}
        for override in self.overrides:
            if override.matches(method, fraction):
                values.update(override.values)
        return dataclasses.replace(self, **values, overrides=())


def _checked_value(where: str, name: str, value: Any) -> Any:
    """One field of a hyperparameter entry, checked (UserError naming the entry and the field)."""

    def number(x: Any) -> bool:
        return not isinstance(x, bool) and isinstance(x, (int, float))

    if name == "learning_rate" and not (number(value) and 0 < value < 1):
        raise UserError(f"{where}: learning_rate must be a number in (0, 1), got {value!r}")
    if name == "alpha" and not (number(value) and 0 < value < math.inf):
        raise UserError(f"{where}: alpha must be a number > 0 (the kl method uses 0), got {value!r}")
    if name == "steps" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise UserError(f"{where}: steps must be an integer >= 1, got {value!r}")
    if name == "precision" and value not in PRECISION_CHOICES:
        raise UserError(f"{where}: precision must be auto, fp32 or bf16, got {value!r}")
    if name == "sobolev_estimator" and value not in SOBOLEV_ESTIMATORS:
        raise UserError(
            f"{where}: sobolev_estimator must be one of {', '.join(SOBOLEV_ESTIMATORS)}, got {value!r}"
        )
    if name == "samples_per_direction" and not (
        isinstance(value, int) and not isinstance(value, bool) and value >= 1
    ):
        raise UserError(f"{where}: samples_per_direction must be an integer >= 1, got {value!r}")
    if name == "centre_first_layer" and not isinstance(value, bool):
        raise UserError(f"{where}: centre_first_layer must be true or false, got {value!r}")
    if name == "student_width" and not (number(value) and 0 < value <= 16):
        raise UserError(f"{where}: student_width must be a number in (0, 16], got {value!r}")
    return float(value) if name in ("learning_rate", "alpha", "student_width") else value


def _overrides(where: str, raw: Any) -> tuple[Override, ...]:
    """The ``overrides`` list of an entry, checked."""
    if not isinstance(raw, list):
        raise UserError(f"{where}: overrides must be a list of objects")
    out = []
    for i, item in enumerate(raw):
        here = f"{where}: overrides[{i}]"
        if not isinstance(item, dict):
            raise UserError(f"{here} must be an object")
        methods = item.get("methods", [])
        if not isinstance(methods, list) or any(m not in METHODS for m in methods):
            raise UserError(f"{here}: methods must be a list of {' and '.join(METHODS)}, got {methods!r}")
        fractions = item.get("fractions", [])
        if not isinstance(fractions, list) or not all(
            not isinstance(f, bool) and isinstance(f, (int, float)) and 0 < f < 1 for f in fractions
        ):
            raise UserError(f"{here}: fractions must be a list of numbers in (0, 1), got {fractions!r}")
        unknown = sorted(set(item) - {"methods", "fractions", "why", *OVERRIDABLE})
        if unknown:
            raise UserError(
                f"{here}: unknown field(s) {', '.join(unknown)}; an override sets "
                f"{', '.join(OVERRIDABLE)} for some methods and fractions (and says why)"
            )
        values = tuple((k, _checked_value(here, k, item[k])) for k in OVERRIDABLE if k in item)
        if not values:
            raise UserError(f"{here} changes nothing; give one of {', '.join(OVERRIDABLE)}")
        why = item.get("why", "")
        if not isinstance(why, str):
            raise UserError(f"{here}: why must be text")
        out.append(
            Override(values, tuple(methods), tuple(float(f) for f in fractions), " ".join(why.split()))
        )
    return tuple(out)


def load_hparams(path: str | Path) -> dict[str, GameHparams]:
    """Read ``{"<game>": {"learning_rate", "alpha", "steps", "chosen_by", [optional fields],
    ["overrides"]}, ...}``.

    Keys starting with ``_`` are comments. Game names are canonicalised (``Pong`` -> ``pong``).

    Raises:
        UserError: a missing or malformed file, or an entry with a missing or invalid field.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(
            f"hyperparameter file {path} does not exist; write it or pass another `hparams`"
        ) from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"hyperparameter file {path} is not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"hyperparameter file {path} must hold a JSON object of games")
    out: dict[str, GameHparams] = {}
    for name, entry in raw.items():
        if name.startswith("_"):
            continue
        game = game_info(name).name
        where = f"{path}: {name}"
        if not isinstance(entry, dict):
            raise UserError(f"{where} must be an object with learning_rate, alpha, steps, chosen_by")
        missing = [k for k in ("learning_rate", "alpha", "steps", "chosen_by") if k not in entry]
        if missing:
            raise UserError(f"{where} lacks {', '.join(missing)}")
        unknown = sorted(
            k
            for k in entry
            if not k.startswith("_")
            and k not in {*OVERRIDABLE, "precision", "chosen_by", "tuning_recording_sha256", "overrides"}
        )
        if unknown:
            raise UserError(
                f"{where}: unknown field(s) {', '.join(unknown)}; an entry has learning_rate, alpha, "
                f"steps, chosen_by, and optionally precision, {', '.join(OVERRIDABLE[3:])}, "
                "tuning_recording_sha256, overrides"
            )
        chosen_by = entry["chosen_by"]
        if not isinstance(chosen_by, str) or not chosen_by.strip():
            raise UserError(f"{where}: chosen_by must say how the values were chosen")
        tuned_on = entry.get("tuning_recording_sha256", "")
        if not (isinstance(tuned_on, str) and re.fullmatch(r"([0-9a-f]{64})?", tuned_on)):
            raise UserError(
                f"{where}: tuning_recording_sha256 must be a recording's content sha256 (64 hex digits, "
                f"from its meta.json), got {tuned_on!r}"
            )
        values = {k: _checked_value(where, k, entry[k]) for k in (*OVERRIDABLE, "precision") if k in entry}
        out[game] = GameHparams(
            chosen_by=" ".join(chosen_by.split()),
            overrides=_overrides(where, entry.get("overrides", [])),
            tuning_recording_sha256=tuned_on,
            **values,
        )
    return out


def hparams_for(hparams: dict[str, GameHparams], game: str, path: str | Path) -> GameHparams:
    if game not in hparams:
        raise UserError(
            f"{path} has no entry for {game}; add "
            f'"{game}": {{"learning_rate": ..., "alpha": ..., "steps": ..., "chosen_by": "..."}}'
        )
    return hparams[game]


# --- The results table -----------------------------------------------------------------------


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """The identity of a results row (teacher rows: game, method ``teacher``, teacher hash)."""
    if row.get("method") == "teacher":
        return (row.get("game"), "teacher", row.get("teacher_sha256"))
    return tuple(row.get(k, KEY_DEFAULTS.get(k)) for k in KEY_FIELDS)


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Append one JSON line with a single ``write``, then flush it to disk (``fsync``).

    With ``O_APPEND`` each line lands whole at the end; a line cut short by a crash (no newline)
    is closed off first so that it cannot swallow this one, and readers skip it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, sort_keys=True, allow_nan=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    line = "\n" + line
        data = line.encode()
        written = os.write(fd, data)
        if written != len(data):  # a regular file takes the whole write unless the disk is full
            raise OSError(f"short write to {path} ({written} of {len(data)} bytes); is the disk full?")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_rows(paths: str | Path | Sequence[str | Path]) -> list[dict[str, Any]]:
    """All rows of one or more results tables, in file order; unreadable lines are skipped with
    a warning (a line cut short by a crash), a missing file counts as empty."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows: list[dict[str, Any]] = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                print(f"warning: {path}:{number} is not a JSON row (cut short?); ignored", file=sys.stderr)
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def latest_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per key, the last one written (a re-scored run's second row replaces its first)."""
    by_key: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        by_key.pop(row_key(row), None)  # keep the order of the latest write
        by_key[row_key(row)] = row
    return list(by_key.values())


def rows_of_hparams(
    rows: Iterable[dict[str, Any]], hparams: dict[str, GameHparams]
) -> tuple[list[dict[str, Any]], int]:
    """The student rows (KL only and Sobolev) made with the hyperparameters ``hparams`` gives their
    cell, and how many student rows were made with others (left out). Games without an entry
    are kept whatever their hyperparameters."""
    kept, excluded = [], 0
    for r in rows:
        if r.get("method") not in ("kl", "sobolev"):
            continue
        hp = hparams.get(r["game"])
        if hp is not None and hp.precision == "auto":  # rows carry the precision it resolved to
            hp = dataclasses.replace(hp, precision=row_key(r)[KEY_FIELDS.index("precision")])
        if hp is not None and row_key(r) != cell_key(
            r["game"], r["method"], r["train_fraction"], r["seed"], hp
        ):
            excluded += 1
            continue
        kept.append(r)
    return kept, excluded


# --- The sweep -------------------------------------------------------------------------------


def cell_key(game: str, method: str, fraction: float, seed: int, hp: GameHparams) -> tuple[Any, ...]:
    """The results-row key (:func:`row_key`) of a grid cell run with ``hp`` (its overrides applied)."""
    hp = hp.for_cell(method, fraction)
    # KL-only cells have no Sobolev term: they keep the default estimator whatever the file says.
    estimator = hp.sobolev_estimator if method == "sobolev" else KEY_DEFAULTS["sobolev_estimator"]
    shared = hp.samples_per_direction if method == "sobolev" else KEY_DEFAULTS["samples_per_direction"]
    return (
        game,
        method,
        fraction,
        seed,
        hp.learning_rate,
        hp.alpha_for(method),
        hp.steps,
        hp.precision,
        estimator,
        shared,
        hp.centre_first_layer,
        hp.student_width,
    )


def _teacher_ref(cfg: SweepConfig, game: str) -> str:
    return cfg.teacher.replace("{game}", game) if cfg.teacher else game


def _play(policy: Any, settings: Any, cfg: SweepConfig) -> dict[str, Any]:
    from policy_distill.devices import pick_device
    from policy_distill.evaluation import evaluate_policy

    scores = evaluate_policy(
        policy, settings, cfg.score_episodes, seed=cfg.score_seed, device=pick_device(cfg.device)
    )
    return {
        "score_mean": scores.mean,
        "score_std": scores.std,
        "score_episodes": len(scores.scores),
        "score_seed": cfg.score_seed,
        "score_greedy": False,
        "score_human_normalized": scores.human_normalized,
    }


def _score_student(row: dict[str, Any], cfg: SweepConfig) -> dict[str, Any]:
    from policy_distill.devices import pick_device
    from policy_distill.student import load_student

    student = load_student(row["best_checkpoint"], device=pick_device(cfg.device))
    return _play(student, student.settings, cfg)


def _best_record(path: str | Path) -> dict[str, Any]:
    from policy_distill.checkpoint import require_format, safe_torch_load
    from policy_distill.student import STUDENT_FORMAT

    return require_format(
        safe_torch_load(path, what="student checkpoint"), STUDENT_FORMAT, path, what="student checkpoint"
    )


def resume_step(run_dir: Path) -> int:
    """The step a run would resume from (0 for a fresh run)."""
    latest = run_dir / "latest.pt"
    if not latest.is_file():
        return 0
    try:
        return int(_best_record(latest)["step"])
    except (UserError, KeyError, TypeError, ValueError):
        return 0  # distill() itself reports a broken latest.pt


def _log(message: str) -> None:
    print(message, flush=True)


def reproduce(cfg: SweepConfig) -> dict[str, Any]:
    """Run (or resume) the grid, appending a row per finished run to the results table.

    The cells without a row go to the executor (``cfg.executor``: :mod:`.executors`), which
    runs them (here, or as Ray tasks) and hands back each one's row as it finishes; this
    process alone appends rows, scores students and teachers.

    Returns:
        Counts of cells run and skipped, students and teachers scored, the results table's path.
    """
    from agents.loading import load_teacher
    from policy_distill.checkpoint import hardware_description
    from policy_distill.devices import pick_device, resolve_precision
    from policy_distill.experiments.executors import make_executor

    cfg.check()
    games, fractions, seeds, methods = (
        cfg.game_list(),
        cfg.fraction_list(),
        cfg.seed_list(),
        cfg.method_list(),
    )
    hparams = load_hparams(cfg.hparams)
    device = pick_device(cfg.device)
    chosen = {  # all errors before any run; "auto" precision resolved for this machine
        game: dataclasses.replace(hp, precision=resolve_precision(hp.precision, device))
        for game, hp in ((game, hparams_for(hparams, game, cfg.hparams)) for game in games)
    }
    results = Path(cfg.results)
    done = {row_key(r): r for r in latest_rows(read_rows(results))}
    scored_fraction = cfg.scored_fraction()
    hardware = hardware_description()
    total = len(games) * len(fractions) * len(methods) * len(seeds)
    counts = {"ran": 0, "skipped": 0, "scored": 0, "teachers_scored": 0}
    teachers = {}
    pending: list[Cell] = []
    index = 0
    for game in games:
        hp = chosen[game]
        teachers[game] = load_teacher(_teacher_ref(cfg, game), game=game, device=device)
        _check_provenance(cfg, game, teachers[game], done.values())
        _check_not_tuned_on(cfg, game, hp, recorded_content_sha256(Path(cfg.data.replace("{game}", game))))
        for fraction in fractions:
            for method in methods:
                for seed in seeds:
                    index += 1
                    key = cell_key(game, method, fraction, seed, hp)
                    cell = Cell(
                        key,
                        f"[{index}/{total}] {game} {method} frac {fraction:g} seed {seed}",
                        cfg.score_episodes > 0 and fraction == scored_fraction,
                    )
                    row = done.get(key)
                    if row is None:
                        pending.append(cell)
                        continue
                    counts["skipped"] += 1
                    if not (cell.want_score and "score_mean" not in row):
                        _log(f"{cell.label}: skipped (finished, in {results})")
                        continue
                    _log(f"{cell.label}: finished (in {results}); playing {cfg.score_episodes} games")
                    _finish(cfg, cell, row, done, counts, chosen)

    if pending:
        with make_executor(cfg, functools.partial(_run_cell, cfg), hardware) as executor:
            for cell, row in executor.run(pending):  # rows as their cells finish, in any order
                counts["ran"] += 1
                _finish(cfg, cell, row, done, counts, chosen)
    if cfg.score_episodes > 0:
        for game in games:
            counts["teachers_scored"] += _score_teacher(cfg, game, teachers[game], done, results, hardware)
    return {"results": str(results), "cells": total, **counts}


@dataclass(frozen=True)
class Cell:
    """One grid cell to run: its results-row key (:func:`cell_key`), its log label, and whether
    its student is to be played once it is trained."""

    key: tuple[Any, ...]
    label: str
    want_score: bool = False


def _finish(
    cfg: SweepConfig,
    cell: Cell,
    row: dict[str, Any],
    done: dict[tuple[Any, ...], dict[str, Any]],
    counts: dict[str, int],
    chosen: dict[str, GameHparams],
) -> None:
    """Score a cell's student if wanted, append its row (the driver alone writes), log it."""
    # A recording made by the cell's own run (there was none) is checked here, before its row lands.
    _check_not_tuned_on(cfg, row["game"], chosen[row["game"]], row.get("dataset_sha256"))
    if cell.want_score and "score_mean" not in row:
        row = {**row, **_score_student(row, cfg)}
        counts["scored"] += 1
    append_row(cfg.results, row)
    done[cell.key] = row
    _log(
        f"{cell.label}: done: final err {row['final_action_error']:.4f} kl {row['final_kl']:.4f} "
        f"cos {row['final_grad_cosine']:.3f} ({row['wall_s']:.0f} s)"
        + (f", score {row['score_mean']:.2f} +- {row['score_std']:.2f}" if "score_mean" in row else "")
    )


def _check_not_tuned_on(cfg: SweepConfig, game: str, hp: GameHparams, dataset_sha: str | None) -> None:
    """Refuse to measure the grid on the recording the game's hyperparameters were chosen on."""
    if dataset_sha and dataset_sha == hp.tuning_recording_sha256:
        data = cfg.data.replace("{game}", game)
        raise UserError(
            f"{data} is the recording {game}'s hyperparameters were tuned on (sha256 {dataset_sha[:12]}...), "
            f"so its frames would be the grid's test frames too; move it away and record the grid's own "
            f"with `collect --game {game} --out {data}` (seed 0; tune records data/{game}-tuning with "
            "seed 1), or pass another `data`"
        )


def _check_provenance(cfg: SweepConfig, game: str, teacher: Any, rows: Iterable[dict[str, Any]]) -> None:
    """Refuse to mix runs of another teacher or dataset into the results of this game."""
    data = Path(cfg.data.replace("{game}", game))
    dataset_sha = recorded_content_sha256(data)
    for row in rows:
        if row.get("game") != game or row.get("method") == "teacher":
            continue
        if row.get("teacher_sha256") != teacher.source.sha256:
            what = f"teacher {teacher.source.name} (sha256 {teacher.source.sha256[:12]})"
        elif dataset_sha and row.get("dataset_sha256") != dataset_sha:
            what = f"dataset {data} (sha256 {dataset_sha[:12]})"
        else:
            continue
        raise UserError(
            f"{cfg.results} holds {game} runs made with another teacher or dataset than {what}; "
            "pass a new `results` and `runs_dir` for these"
        )


def _run_cell(cfg: SweepConfig, key: tuple[Any, ...], label: str, hardware: str) -> dict[str, Any]:
    """One distill() run of a cell; returns its results row (not yet written). Both executors
    call this: in this process, or in a Ray worker (which passes its own ``hardware``)."""
    from policy_distill.devices import cpu_capability
    from policy_distill.distill import DistillConfig, distill

    cell = dict(zip(KEY_FIELDS, key))
    game, fraction, seed = cell["game"], cell["train_fraction"], cell["seed"]
    run_cfg = DistillConfig(
        game=game,
        teacher=_teacher_ref(cfg, game) if cfg.teacher else "",
        data=cfg.data.replace("{game}", game),
        train_fraction=fraction,
        steps=cell["steps"],
        learning_rate=cell["learning_rate"],
        alpha=cell["alpha"],
        seed=seed,
        precision=cell["precision"],
        sobolev_estimator=cell["sobolev_estimator"],
        samples_per_direction=cell["samples_per_direction"],
        centre_first_layer=cell["centre_first_layer"],
        student_width=cell["student_width"],
        **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainingSchedule)},
        runs_dir=cfg.runs_dir,
    )
    resumed_from = resume_step(run_cfg.run_dir)
    _log(
        f"{label}: running in {run_cfg.run_dir} (lr {run_cfg.learning_rate:g}, alpha {run_cfg.alpha:g}, "
        f"{run_cfg.steps} steps" + (f", resuming from step {resumed_from})" if resumed_from else ")")
    )
    started = time.perf_counter()
    result = distill(run_cfg)
    seconds = time.perf_counter() - started
    best = _best_record(result["best_checkpoint"])
    return {
        **_teacher_entropies(run_cfg.data, fraction),
        **cell,
        **{f"final_{m}": result[f"test_{m}"] for m in METRICS},
        **{f"best_{m}": best["metrics"][m] for m in METRICS},
        "final_train_kl": result.get("train_kl"),
        "best_step": best["step"],
        "wall_s": seconds,
        "resumed_from_step": resumed_from,
        "hardware": hardware,
        "cpu_capability": cpu_capability(),
        "device": cfg.device,
        "run_dir": result["run_dir"],
        "best_checkpoint": result["best_checkpoint"],
        "teacher": run_cfg.teacher or game,
        "teacher_sha256": best["teacher"]["sha256"],
        "data": run_cfg.data,
        "dataset_sha256": best["dataset"].get("content_sha256"),
        "train_frames": best["dataset"]["train_frames"],
        "test_frames": best["dataset"]["test_frames"],
        "batch_size": cfg.batch_size,
        "eval_every": cfg.eval_every,
        "eval_frames": cfg.eval_frames,
        "fidelity_frames": cfg.fidelity_frames,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _teacher_entropies(data: str, fraction: float) -> dict[str, float]:
    """Mean entropy (nats) of the teacher's recorded policy over a cell's training and test
    parts: a teacher that is nearly deterministic leaves little for the KL to teach beyond the
    argmax, one explanation the report tests."""
    from policy_distill.dataset import load_dataset
    from policy_distill.metrics import policy_entropy

    dataset = load_dataset(data)
    split = dataset.split(fraction)
    return {
        "teacher_entropy_train": float(policy_entropy(dataset.log_probs[split.train]).mean()),
        "teacher_entropy_test": float(policy_entropy(dataset.log_probs[split.test]).mean()),
    }


def _score_teacher(
    cfg: SweepConfig,
    game: str,
    teacher: Any,
    done: dict[tuple[Any, ...], dict[str, Any]],
    results: Path,
    hardware: str,
) -> int:
    """Play the game's teacher once and cache its score as a ``teacher`` row; 1 if played."""
    row = {"game": game, "method": "teacher", "teacher_sha256": teacher.source.sha256}
    if row_key(row) in done:
        _log(f"{game} teacher {teacher.source.name}: score cached in {results}")
        return 0
    _log(f"{game} teacher {teacher.source.name}: playing {cfg.score_episodes} games")
    started = time.perf_counter()
    row.update(
        teacher=teacher.source.name,
        teacher_path=teacher.source.path,
        **_play(teacher, teacher.settings, cfg),
        wall_s=time.perf_counter() - started,
        hardware=hardware,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    append_row(results, row)
    done[row_key(row)] = row
    _log(f"{game} teacher: score {row['score_mean']:.2f} +- {row['score_std']:.2f}")
    return 1
