"""``python -m policy_distill``: one subcommand per job; the Make targets wrap these.

Every error a user can cause ends as one line ``error: ...`` and exit status 2.
Commands that report a result print it as one JSON object on the last line with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from policy_distill.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line and exit 2, like every other user error (argparse's default adds usage).
        # self.prog is "policy_distill" for the top level, "policy_distill <command>" below it.
        help_command = " ".join(["python -m", *self.prog.split(), "--help"])
        print(f"error: {message}; see `{help_command}`", file=sys.stderr)
        raise SystemExit(2)


def _emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, sort_keys=True))


def cmd_train_teacher(args: argparse.Namespace) -> dict[str, Any]:
    from agents.ppo import PPOConfig, train_ppo
    from policy_distill.config_args import config_from_args
    from policy_distill.settings import game_info

    cfg = config_from_args(PPOConfig, args, game=game_info(args.game).name)
    out = Path(args.out or f"runs/teachers/{cfg.game}")
    path = train_ppo(cfg, out, init_from=args.init_from)
    return {"teacher": str(path)}


def cmd_export_teacher(args: argparse.Namespace) -> dict[str, Any]:
    from agents.ppo import export_teacher

    path = export_teacher(args.run, args.out, half=not args.float32)
    print(f"wrote {path}")
    result: dict[str, Any] = {"teacher": str(path)}
    if args.card_episodes:
        from agents.loading import load_teacher
        from agents.model_card import write_model_card
        from policy_distill.evaluation import evaluate_policy

        teacher = load_teacher(path)
        scores = evaluate_policy(teacher, teacher.settings, args.card_episodes, seed=args.seed)
        command = (
            f"python -m policy_distill evaluate-teacher --teacher {path} "
            f"--episodes {args.card_episodes} --seed {args.seed}"
        )
        card = write_model_card(path, scores, seed=args.seed, command=command)
        print(f"wrote {card}: {scores.mean:.2f} +- {scores.std:.2f} over {args.card_episodes} games")
        result.update(card=str(card), **scores.summary())
    return result


def cmd_evaluate_teacher(args: argparse.Namespace) -> dict[str, Any]:
    from agents.loading import load_teacher
    from policy_distill.evaluation import evaluate_policy

    teacher = load_teacher(args.teacher, game=args.game)
    _check_positive(episodes=args.episodes)
    result = evaluate_policy(teacher, teacher.settings, args.episodes, seed=args.seed, greedy=args.greedy)
    print(
        f"teacher {teacher.source.name} on {teacher.settings.game}: {result.mean:.2f} +- {result.std:.2f} "
        f"over {args.episodes} games (human-normalised {result.human_normalized:.3f})"
    )
    return {"teacher": teacher.source.name, "game": teacher.settings.game, **result.summary()}


def cmd_collect(args: argparse.Namespace) -> dict[str, Any]:
    from agents.loading import load_teacher
    from policy_distill.collect import CollectConfig, collect
    from policy_distill.config_args import config_from_args
    from policy_distill.settings import game_info

    game = game_info(args.game).name
    cfg = config_from_args(CollectConfig, args)
    _check_positive(frames=cfg.frames, num_envs=cfg.num_envs, batch_size=cfg.batch_size)
    teacher = load_teacher(args.teacher or game, game=game)
    meta = collect(
        teacher, cfg, args.out or f"data/{game}", overwrite=args.overwrite, progress=not args.no_progress
    )
    keys = ("game", "frames", "episodes", "complete_episodes", "collection_fps", "teacher_score_mean")
    return {"dataset": str(args.out or f"data/{game}"), **{k: meta[k] for k in keys}}


def cmd_distill(args: argparse.Namespace) -> dict[str, Any]:
    from policy_distill.config_args import config_from_args
    from policy_distill.distill import DistillConfig, distill

    cfg = config_from_args(DistillConfig, args)
    result = distill(cfg)
    print(
        f"best student: {result['best_checkpoint']} (test KL {result['best_test_kl']:.4f}); "
        f"TensorBoard: tensorboard --logdir {result['run_dir']}"
    )
    return result


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from agents.loading import load_teacher
    from policy_distill.evaluation import evaluate_policy
    from policy_distill.student import load_student

    _check_positive(episodes=args.episodes)
    student = load_student(args.checkpoint)
    settings = student.settings
    result = {"checkpoint": args.checkpoint, "game": settings.game}
    s = evaluate_policy(student, settings, args.episodes, seed=args.seed, greedy=args.greedy)
    print(
        f"student {args.checkpoint}: {s.mean:.2f} +- {s.std:.2f} over {args.episodes} games "
        f"(human-normalised {s.human_normalized:.3f})"
    )
    result["student"] = s.summary()
    if not args.no_teacher:
        teacher_ref = args.teacher or student.record.get("teacher", {}).get("path") or settings.game
        teacher = load_teacher(teacher_ref, game=settings.game, settings=settings)
        t = evaluate_policy(teacher, settings, args.episodes, seed=args.seed, greedy=args.greedy)
        print(
            f"teacher {teacher.source.name}: {t.mean:.2f} +- {t.std:.2f} over {args.episodes} games "
            f"(human-normalised {t.human_normalized:.3f})"
        )
        result["teacher"] = t.summary()
        result["student_over_teacher_hns"] = (
            s.human_normalized / t.human_normalized if t.human_normalized else None
        )
    return result


def cmd_reproduce(args: argparse.Namespace) -> dict[str, Any]:
    from policy_distill.config_args import config_from_args
    from policy_distill.sweep import SweepConfig, reproduce

    result = reproduce(config_from_args(SweepConfig, args))
    print(
        f"{result['ran']} run(s) finished, {result['skipped']} cell(s) already in {result['results']}; "
        f"report: python -m policy_distill report --results {result['results']}"
    )
    return result


def cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    from policy_distill.config_args import config_from_args
    from policy_distill.report import ReportConfig, make_report

    return make_report(config_from_args(ReportConfig, args))


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def _config_command(
    sub: Any, name: str, help: str, config_cls: type, func: Callable[[argparse.Namespace], dict[str, Any]]
) -> None:
    """A subcommand whose options are exactly a config dataclass's fields, plus ``--json``."""
    from policy_distill.config_args import add_config_arguments

    p = sub.add_parser(name, help=help)
    add_config_arguments(p, config_cls)
    p.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    from agents.ppo import PPOConfig
    from policy_distill.collect import CollectConfig
    from policy_distill.config_args import add_config_arguments
    from policy_distill.distill import DistillConfig

    parser = _Parser(prog="policy_distill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train-teacher", help="train a PPO teacher on one game")
    add_config_arguments(p, PPOConfig, skip=("game",))
    p.add_argument("--game", required=True, help="pong, breakout or space_invaders")
    p.add_argument("--out", help="run directory (default runs/teachers/<game>); resumes if present")
    p.add_argument("--init-from", help="teacher checkpoint to continue from when the run directory is new")
    p.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    p.set_defaults(func=cmd_train_teacher)

    p = sub.add_parser("export-teacher", help="write a training run's policy as a teacher checkpoint")
    p.add_argument("--run", required=True, help="train-teacher output directory")
    p.add_argument("--out", required=True, help="destination, e.g. agents/pretrained/pong.pt")
    p.add_argument("--float32", action="store_true", help="keep float32 weights (default float16)")
    p.add_argument(
        "--card-episodes",
        type=int,
        default=20,
        help="evaluate this many games and write the model card beside the weights (0: no card)",
    )
    p.add_argument("--seed", type=int, default=1000, help="evaluation seed for the model card")
    p.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    p.set_defaults(func=cmd_export_teacher)

    p = sub.add_parser("evaluate-teacher", help="play a teacher and print its raw score")
    p.add_argument("--teacher", default="pong", help="shipped name (pong) or checkpoint path")
    p.add_argument("--game", help="check that the teacher plays this game")
    p.add_argument("--episodes", type=int, default=20, help="games to play (default 20)")
    p.add_argument("--seed", type=int, default=1000, help="evaluation seed (default 1000)")
    p.add_argument("--greedy", action="store_true", help="argmax actions instead of sampling")
    p.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    p.set_defaults(func=cmd_evaluate_teacher)

    p = sub.add_parser("collect", help="record a teacher playing into data/<game>/")
    p.add_argument("--game", required=True, help="pong, breakout or space_invaders")
    p.add_argument("--teacher", help="shipped name or checkpoint path (default: the game's shipped teacher)")
    add_config_arguments(p, CollectConfig)
    p.add_argument("--out", help="dataset directory (default data/<game>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    p.set_defaults(func=cmd_collect)

    _config_command(
        sub, "distill", "distil a student from a teacher's recorded play", DistillConfig, cmd_distill
    )

    p = sub.add_parser("evaluate", help="play a student checkpoint (and its teacher) and print raw scores")
    p.add_argument("--checkpoint", required=True, help="student checkpoint (runs/<game>/<run>/best.pt)")
    p.add_argument("--episodes", type=int, default=10, help="games to play (default 10)")
    p.add_argument("--seed", type=int, default=1000, help="evaluation seed (default 1000)")
    p.add_argument("--greedy", action="store_true", help="argmax actions instead of sampling")
    p.add_argument(
        "--teacher", help="teacher to compare with (default: the one the student was distilled from)"
    )
    p.add_argument("--no-teacher", action="store_true", help="do not play the teacher")
    p.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    p.set_defaults(func=cmd_evaluate)

    from policy_distill.report import ReportConfig
    from policy_distill.sweep import SweepConfig

    _config_command(
        sub,
        "reproduce",
        "the paper's Figure 4 sweep: games x fractions x {kl, sobolev} x seeds, resumable",
        SweepConfig,
        cmd_reproduce,
    )
    _config_command(
        sub,
        "report",
        "write docs/reproduce/README.md and figures from reproduce's results",
        ReportConfig,
        cmd_report,
    )

    from policy_distill.regression.benchmark import register as register_regression

    register_regression(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], dict[str, Any]] = args.func
    try:
        result = func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    _emit(result, getattr(args, "json", False))
    return 0
