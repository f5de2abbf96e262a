"""The command line: bad input gives one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "policy_distill", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["collect", "--game", "tetris"], "unknown game 'tetris'"),
        (["collect", "--game", "pong", "--frames", "0"], "--frames must be at least 1"),
        (["collect", "--game", "pong", "--frames", "ten"], "invalid int value"),
        (["collect", "--game", "pong", "--teacher", "missing.pt"], "does not exist"),
        (["collect", "--game", "breakout", "--teacher", "pong"], "plays pong, not breakout"),
        (["distill", "--game", "pong", "--data", "nowhere", "--frames", "0"], "--frames"),
        (
            ["distill", "--game", "pong", "--grad-norm", "l3"],
            "--grad-norm must be one of l2, squared_l2, l1, got 'l3'",
        ),
        (["distill", "--game", "pong", "--alpha", "-1"], "--alpha must be at least 0, got -1.0"),
        # A field named inside a problem's text is spelled as a flag too, not as the field.
        (
            ["distill", "--game", "pong", "--samples-per-direction", "3"],
            "--samples-per-direction 3 does not divide `--batch-size` 200",
        ),
        (["evaluate", "--checkpoint", "nothing.pt"], "does not exist"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path, args: list[str], expected: str) -> None:
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["frobnicate"], "see `python -m policy_distill --help`"),
        (["report", "--bogus"], "see `python -m policy_distill --help`"),
        (["report", "--metrics"], "see `python -m policy_distill report --help`"),
    ],
)
def test_error_points_at_the_right_help(args: list[str], hint: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2 and result.stderr.strip().endswith(hint), result.stderr


def test_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("train-teacher", "collect", "distill", "evaluate", "evaluate-teacher"):
        assert command in result.stdout


def test_collect_json_result_is_last_line(tmp_path) -> None:
    result = run_cli(
        "collect",
        "--game",
        "Pong",
        "--frames",
        "24",
        "--num-envs",
        "2",
        "--batch-size",
        "2",
        "--out",
        str(tmp_path / "ds"),
        "--no-progress",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["frames"] == 24 and record["game"] == "pong"


def test_run_name_is_the_torchrun_safe_spelling_of_run() -> None:
    from policy_distill.cli import build_parser

    assert build_parser().parse_args(["distill", "--run-name", "ddp"]).run == "ddp"
    assert build_parser().parse_args(["distill", "--run", "one"]).run == "one"


def test_switches_set_their_fields() -> None:
    """A field off by default is a plain switch: --no-progress and --no-teacher turn theirs on
    (argparse's BooleanOptionalAction would have read them as negations and set them False)."""
    from policy_distill.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["evaluate", "--checkpoint", "x.pt", "--no-teacher"]).no_teacher is True
    assert parse(["evaluate", "--checkpoint", "x.pt"]).no_teacher is None  # the default stays
    assert parse(["collect", "--game", "pong", "--no-progress", "--overwrite"]).no_progress is True
    assert parse(["distill", "--no-channels-last"]).channels_last is False  # on by default: --x/--no-x
