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
        print(f"error: {message}; see `python -m policy_distill {self.prog.split()[-1]} --help`", file=sys.stderr)
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
    path = train_ppo(cfg, out)
    return {"teacher": str(path)}


def build_parser() -> argparse.ArgumentParser:
    from agents.ppo import PPOConfig
    from policy_distill.config_args import add_config_arguments

    parser = _Parser(prog="policy_distill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train-teacher", help="train a PPO teacher on one game")
    add_config_arguments(p, PPOConfig, skip=("game",))
    p.add_argument("--game", required=True, help="pong, breakout or space_invaders")
    p.add_argument("--out", help="run directory (default runs/teachers/<game>); resumes if present")
    p.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    p.set_defaults(func=cmd_train_teacher)
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
