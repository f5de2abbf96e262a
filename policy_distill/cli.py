"""``python -m policy_distill``: one subcommand per job; the Make targets wrap these.

One convention for every command: its settings are frozen config dataclasses that validate
themselves (messages in field terms); :data:`COMMANDS` lists each command's dataclasses and the
function that runs it; the parser maps fields to flags and adds ``--json`` once. Every error a
user can cause ends as one line ``error: ...`` and exit status 2, with config fields spelled as
flags. Commands that report a result print it as one JSON object on the last line with ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from policy_distill.config_args import add_config_arguments, config_from_args, flag
from policy_distill.errors import (
    MAX_ENV_SEED,
    ConfigError,
    Problem,
    UserError,
    at_least,
    check_fields,
    within,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line and exit 2, like every other user error (argparse's default adds usage).
        # self.prog is "policy_distill" for the top level, "policy_distill <command>" below it.
        help_command = " ".join(["python -m", *self.prog.split(), "--help"])
        print(f"error: {message}; see `{help_command}`", file=sys.stderr)
        raise SystemExit(2)


# --- Settings of the commands that have no library config of their own ------------------------


@dataclass(frozen=True)
class Progress:
    """Progress output of a long command."""

    no_progress: bool = False
    """No progress bar."""


@dataclass(frozen=True)
class CollectTarget:
    """Which teacher to record and where the dataset goes."""

    game: str
    """pong, breakout or space_invaders."""
    teacher: str = ""
    """Shipped name or checkpoint path (default: the game's shipped teacher)."""
    out: str = ""
    """Dataset directory (default data/<game>)."""
    overwrite: bool = False
    """Replace an existing dataset."""


@dataclass(frozen=True)
class EvaluateTeacherConfig:
    """Play a teacher for whole games."""

    teacher: str = "pong"
    """Shipped name (pong, breakout, space_invaders) or checkpoint path."""
    game: str = ""
    """Check that the teacher plays this game (required for a CleanRL file)."""
    episodes: int = 20
    """Games to play."""
    seed: int = 1000
    """Evaluation seed."""
    greedy: bool = False
    """Argmax actions instead of sampling."""

    def __post_init__(self) -> None:
        check_fields("evaluation settings", [at_least(self, "episodes", 1), _env_seed(self)])


def _env_seed(cfg: Any) -> Problem:
    """An evaluation seed ale-py takes: its 8 parallel games get seed .. seed + 7 (32-bit)."""
    return within(cfg, "seed", 0, MAX_ENV_SEED + 1 - 8)


@dataclass(frozen=True)
class EvaluateConfig:
    """Play a student checkpoint (and its teacher) for whole games."""

    checkpoint: str
    """Student checkpoint (runs/<game>/<run>/best.pt)."""
    episodes: int = 10
    """Games to play."""
    seed: int = 1000
    """Evaluation seed."""
    greedy: bool = False
    """Argmax actions instead of sampling."""
    teacher: str = ""
    """Teacher to compare with (default: the one the student was distilled from)."""
    no_teacher: bool = False
    """Do not play the teacher."""
    visited_kl: bool = False
    """Also measure, per game, the student's mean KL to the teacher on the frames the student
    visited (one teacher forward per step): a lost game whose frames the student imitates badly
    is one where it drifted from the states of the teacher's games."""

    def __post_init__(self) -> None:
        check_fields(
            "evaluation settings",
            [
                at_least(self, "episodes", 1),
                _env_seed(self),
                ("visited_kl", "needs the teacher: leave out `no_teacher`")
                if self.visited_kl and self.no_teacher
                else None,
            ],
        )


# --- Commands -----------------------------------------------------------------------------------


def cmd_train_teacher(cfg: Any, run: Any) -> dict[str, Any]:
    from agents.ppo import train_ppo

    result = train_ppo(
        cfg,
        run.out or f"runs/teachers/{cfg.game}",
        init_from=run.init_from or None,
        stop_after_s=60 * run.stop_after_minutes if run.stop_after_minutes else None,
    )
    return {
        "teacher": str(result.teacher_path),
        "agent_steps": result.agent_steps,
        "steps_per_s": round(result.steps_per_s, 1),
        "precision": result.precision,
        "finished": result.finished,
    }


def cmd_export_teacher(cfg: Any) -> dict[str, Any]:
    from agents.ppo import export_teacher

    path = export_teacher(cfg.run, cfg.out, half=not cfg.float32, final=cfg.final)
    print(f"wrote {path}")
    result: dict[str, Any] = {"teacher": str(path)}
    if cfg.card_episodes:
        from agents.model_card import evaluate_and_card

        card, scores, greedy = evaluate_and_card(path, cfg.card_episodes, cfg.seed)
        print(f"wrote {card}: {scores.mean:.2f} +- {scores.std:.2f} over {cfg.card_episodes} games")
        result.update(card=str(card), **scores.summary(), greedy_mean=greedy.mean)
    return result


def cmd_evaluate_teacher(cfg: EvaluateTeacherConfig) -> dict[str, Any]:
    from agents.loading import load_teacher
    from policy_distill.evaluation import evaluate_policy

    teacher = load_teacher(cfg.teacher, game=cfg.game or None)
    result = evaluate_policy(teacher, teacher.settings, cfg.episodes, seed=cfg.seed, greedy=cfg.greedy)
    print(
        f"teacher {teacher.source.name} on {teacher.settings.game}: {result.mean:.2f} +- {result.std:.2f} "
        f"over {cfg.episodes} games (human-normalised {result.human_normalized:.3f})"
    )
    return {"teacher": teacher.source.name, "game": teacher.settings.game, **result.summary()}


def cmd_collect(target: CollectTarget, cfg: Any, progress: Progress) -> dict[str, Any]:
    from agents.loading import load_teacher
    from policy_distill.collect import collect
    from policy_distill.dataset import default_data_dir
    from policy_distill.settings import game_info

    game = game_info(target.game).name
    teacher = load_teacher(target.teacher or game, game=game)
    out = target.out or default_data_dir(game)
    meta = collect(teacher, cfg, out, overwrite=target.overwrite, progress=not progress.no_progress)
    keys = ("game", "frames", "episodes", "complete_episodes", "collection_fps", "teacher_score_mean")
    return {"dataset": str(out), **{k: meta[k] for k in keys}}


def cmd_distill(cfg: Any, progress: Progress) -> dict[str, Any]:
    from policy_distill.distill import distill

    result = distill(cfg, progress=not progress.no_progress)
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 alone reports
        return result
    print(
        f"best student: {result['best_checkpoint']} (test KL {result['best_test_kl']:.4f}); "
        f"TensorBoard: tensorboard --logdir {result['run_dir']}"
    )
    return result


def cmd_evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    from agents.loading import load_teacher
    from policy_distill.evaluation import evaluate_policy
    from policy_distill.student import load_student

    student = load_student(cfg.checkpoint)
    settings = student.settings
    teacher = None
    if not cfg.no_teacher:  # loaded before any game is played, so a bad teacher wastes none
        recorded = student.record.get("teacher", {}).get("path")
        if not cfg.teacher and recorded and not os.path.exists(recorded):
            raise UserError(
                f"the student's teacher {recorded!r} does not exist (moved or deleted?); pass `teacher` "
                "with its new path, or `no_teacher` to play the student alone"
            )
        teacher_ref = cfg.teacher or recorded or settings.game
        teacher = load_teacher(teacher_ref, game=settings.game, settings=settings)
    result: dict[str, Any] = {"checkpoint": cfg.checkpoint, "game": settings.game}
    s = evaluate_policy(
        student,
        settings,
        cfg.episodes,
        seed=cfg.seed,
        greedy=cfg.greedy,
        reference=teacher if cfg.visited_kl else None,
    )
    print(
        f"student {cfg.checkpoint}: {s.mean:.2f} +- {s.std:.2f} over {cfg.episodes} games "
        f"(human-normalised {s.human_normalized:.3f})"
    )
    if s.visited_kl is not None:
        print(
            "  per game, score (student's mean KL to the teacher on the frames it visited): "
            + ", ".join(f"{score:g} ({kl:.3f})" for score, kl in zip(s.scores, s.visited_kl, strict=True))
        )
    result["student"] = s.summary()
    if teacher is not None:
        t = evaluate_policy(teacher, settings, cfg.episodes, seed=cfg.seed, greedy=cfg.greedy)
        print(
            f"teacher {teacher.source.name}: {t.mean:.2f} +- {t.std:.2f} over {cfg.episodes} games "
            f"(human-normalised {t.human_normalized:.3f})"
        )
        result["teacher"] = t.summary()
        result["student_over_teacher_hns"] = (
            s.human_normalized / t.human_normalized if t.human_normalized else None
        )
    return result


def cmd_reproduce(cfg: Any) -> dict[str, Any]:
    from policy_distill.experiments.sweep import reproduce

    result = reproduce(cfg)
    print(
        f"{result['ran']} run(s) finished, {result['skipped']} cell(s) already in {result['results']}; "
        f"report: python -m policy_distill report --results {result['results']}"
    )
    return result


def cmd_report(cfg: Any) -> dict[str, Any]:
    from policy_distill.experiments.report import make_report

    return make_report(cfg)


@dataclass(frozen=True)
class Command:
    """One subcommand: its config dataclasses (flags from their fields) and what runs it."""

    name: str
    help: str
    configs: Callable[[], tuple[type, ...]]
    """Returns the config classes, imported only when the parser is built."""
    run: Callable[..., dict[str, Any]]
    """Called with one instance of each config class, in order; returns the JSON result."""
    required: tuple[str, ...] = ()
    """Fields required on the command line although the library gives them a default."""
    on_interrupt: str = "interrupted"
    """What Ctrl-C leaves behind, printed after it."""


def _ppo_configs() -> tuple[type, ...]:
    from agents.ppo import PPOConfig, TeacherRun

    return PPOConfig, TeacherRun


def _export_configs() -> tuple[type, ...]:
    from agents.ppo import ExportTeacherConfig

    return (ExportTeacherConfig,)


def _collect_configs() -> tuple[type, ...]:
    from policy_distill.collect import CollectConfig

    return CollectTarget, CollectConfig, Progress


def _distill_configs() -> tuple[type, ...]:
    from policy_distill.distill import DistillConfig

    return DistillConfig, Progress


def _sweep_configs() -> tuple[type, ...]:
    from policy_distill.experiments.sweep import SweepConfig

    return (SweepConfig,)


def _tune_configs() -> tuple[type, ...]:
    from policy_distill.experiments.tune import TuneConfig

    return (TuneConfig,)


def cmd_tune(cfg: Any) -> dict[str, Any]:
    from policy_distill.experiments.tune import tune

    result = tune(cfg)
    done = ", ".join(f"{f:g}" for f in result["finished_fractions"]) or "none"
    print(
        f"{result['ran']} run(s) finished; tuned fractions finished: {done}; page {result['page']}"
        + (f"; entry written to {cfg.hparams}" if result["hparams_written"] else "")
    )
    return result


def _report_configs() -> tuple[type, ...]:
    from policy_distill.experiments.report import ReportConfig

    return (ReportConfig,)


def _by_entropy_configs() -> tuple[type, ...]:
    from policy_distill.experiments.by_entropy import ByEntropyConfig

    return (ByEntropyConfig,)


def cmd_by_entropy(cfg: Any) -> dict[str, Any]:
    from policy_distill.experiments.by_entropy import measure_by_entropy

    return measure_by_entropy(cfg)


def _export_student_configs() -> tuple[type, ...]:
    from policy_distill.export import ExportStudentConfig

    return (ExportStudentConfig,)


def _regression_configs() -> tuple[type, ...]:
    from policy_distill.experiments.regression.benchmark import RegressionConfig, RegressionOutput

    return RegressionConfig, RegressionOutput


def cmd_export_student(cfg: Any) -> dict[str, Any]:
    """Export, check, and say what was written."""
    from policy_distill.export import export_student

    result = export_student(cfg.checkpoint, cfg.format, cfg.out or None)
    if "skipped" in result.check:
        checked = f"not checked: {result.check['skipped']}"
    else:
        checked = (
            f"checked in {result.check['runtime']}: log-probabilities within "
            f"{result.check['max_abs_diff']:.1e} of the checkpoint's"
        )
    print(f"wrote {result.model} ({result.bytes / 1e6:.2f} MB, {result.fmt}; {checked}) and {result.sidecar}")
    return {
        "model": str(result.model),
        "sidecar": str(result.sidecar),
        "format": result.fmt,
        "bytes": result.bytes,
        "check": result.check,
    }


def cmd_regression_benchmark(cfg: Any, output: Any) -> dict[str, Any]:
    """The sweep of the regression benchmark, written to ``output.out``."""
    from policy_distill.experiments.regression.benchmark import run_benchmark

    return run_benchmark(cfg, output.out)


COMMANDS = (
    Command(
        "train-teacher",
        "train a PPO teacher on one game (resumable)",
        _ppo_configs,
        cmd_train_teacher,
        ("game",),
        "interrupted; run the same command again to resume from its last checkpoint",
    ),
    Command(
        "export-teacher",
        "write a training run's policy as a teacher checkpoint + model card",
        _export_configs,
        cmd_export_teacher,
    ),
    Command(
        "evaluate-teacher",
        "play a teacher and print its raw score",
        lambda: (EvaluateTeacherConfig,),
        cmd_evaluate_teacher,
    ),
    Command(
        "collect",
        "record a teacher playing into data/<game>/",
        _collect_configs,
        cmd_collect,
        on_interrupt="interrupted; nothing was written (a recording does not resume: the same command "
        "starts it over)",
    ),
    Command(
        "distill",
        "distil a student from a teacher's recorded play",
        _distill_configs,
        cmd_distill,
        on_interrupt="interrupted; run the same command again to resume from its last checkpoint "
        "(latest.pt, written every `--eval-every` steps)",
    ),
    Command(
        "evaluate",
        "play a student checkpoint (and its teacher) and print raw scores",
        lambda: (EvaluateConfig,),
        cmd_evaluate,
    ),
    Command(
        "export-student",
        "write a student as one self-contained TorchScript or ONNX file plus a JSON sidecar",
        _export_student_configs,
        cmd_export_student,
    ),
    Command(
        "reproduce",
        "the paper's Figure 4 sweep: games x fractions x {kl, sobolev} x seeds, resumable",
        _sweep_configs,
        cmd_reproduce,
        on_interrupt="interrupted; run the same command again: finished runs are skipped, the "
        "interrupted one resumes",
    ),
    Command(
        "tune",
        "choose a game's learning rate, alpha, estimator and steps on validation splits (resumable)",
        _tune_configs,
        cmd_tune,
        on_interrupt="interrupted; run the same command again: finished runs are skipped, the "
        "interrupted one resumes",
    ),
    Command(
        "report",
        "write docs/reproduce/README.md and figures from reproduce's results",
        _report_configs,
        cmd_report,
    ),
    Command(
        "by-entropy",
        "measure the grid's final students per teacher-entropy bin of their held-out frames",
        _by_entropy_configs,
        cmd_by_entropy,
        on_interrupt="interrupted; run the same command again: measured runs are skipped",
    ),
    Command(
        "regression-benchmark",
        "the paper's section 4.1 regression benchmark (Figure 2 right), values only vs Sobolev",
        _regression_configs,
        cmd_regression_benchmark,
    ),
)


def _run_command(command: Command, args: argparse.Namespace) -> dict[str, Any]:
    """Build the command's configs from the parsed flags (validating them) and run it."""
    return command.run(*(config_from_args(cls, args) for cls in command.configs()))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="policy_distill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help)
        for cls in command.configs():
            add_config_arguments(p, cls, required=command.required)
        p.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
        p.set_defaults(
            on_interrupt=command.on_interrupt,
            func=lambda args, command=command: _run_command(command, args),
            fields={f.name for cls in command.configs() for f in dataclasses.fields(cls)},
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], dict[str, Any]] = args.func
    try:
        result = func(args)
    except ConfigError as e:
        print(f"error: {e.render(flag)}", file=sys.stderr)
        return 2
    except UserError as e:
        # Library messages name arguments in backticks (`overwrite`); spell this command's as flags.
        fields = getattr(args, "fields", set())
        message = re.sub(r"`([a-z_]+)`", lambda m: f"`{flag(m[1])}`" if m[1] in fields else m[0], str(e))
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(getattr(args, "on_interrupt", "interrupted"), file=sys.stderr)
        return 130
    if getattr(args, "json", False) and os.environ.get("RANK", "0") == "0":  # torchrun: rank 0's
        print(json.dumps(result, sort_keys=True))
    return 0
