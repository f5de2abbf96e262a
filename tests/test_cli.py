"""The command line: bad input gives one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import re
import shutil
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
    from policy_distill.cli import COMMANDS, build_parser

    names = [command.name for command in COMMANDS]
    (subcommands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(subcommands.choices) == set(names)
    result = run_cli("--help")
    assert result.returncode == 0
    for name in names:
        # Each as the whole first word of its own line of the listing, where its help follows: not
        # inside "policy_distill" or "evaluate-teacher", nor only in the {a,b,...} choices.
        assert re.search(rf"^ +{re.escape(name)}(?![\w-])", result.stdout, re.MULTILINE), name


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


@pytest.fixture(scope="module")
def moved_teacher_student(tmp_path_factory, tiny, tiny_distill_config) -> tuple[str, str]:
    """A student (best.pt of a 2-step run on ``tiny``) whose teacher file was moved after the run:
    ``(checkpoint, the teacher's new path)``."""
    from policy_distill.distill import distill

    root = tmp_path_factory.mktemp("moved-teacher")
    shutil.copy(tiny / "teacher.pt", root / "teacher.pt")
    cfg = tiny_distill_config(teacher=str(root / "teacher.pt"), runs_dir=str(root / "runs"), steps=2)
    best = distill(cfg, progress=False)["best_checkpoint"]
    (root / "moved").mkdir()
    return best, str((root / "teacher.pt").rename(root / "moved" / "teacher.pt"))


def test_evaluate_with_no_teacher_plays_the_student_alone(moved_teacher_student, capsys) -> None:
    from policy_distill.cli import main

    best, _ = moved_teacher_student
    assert main(["evaluate", "--checkpoint", best, "--episodes", "1", "--no-teacher", "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    record = json.loads(out[-1])
    assert record["checkpoint"] == best and record["game"] == "pong"
    assert record["student"]["episodes"] == 1 == len(record["student"]["scores"])
    # Played with the settings the student recorded: games cut at 240 emulator frames = 60 steps.
    assert 0 < record["student"]["lengths"][0] <= 60
    assert "teacher" not in record and "student_over_teacher_hns" not in record
    assert [line for line in out if line.startswith("student ")] and not [
        line for line in out if line.startswith("teacher ")
    ]


def test_evaluate_names_the_flags_that_fix_a_moved_teacher(moved_teacher_student, capsys) -> None:
    from policy_distill.cli import main

    best, new_path = moved_teacher_student
    assert main(["evaluate", "--checkpoint", best, "--episodes", "1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "does not exist" in lines[0], lines
    assert "`--teacher`" in lines[0] and "`--no-teacher`" in lines[0], lines[0]
    # The fix it names works: the teacher at its new path is played beside the student.
    args = ["evaluate", "--checkpoint", best, "--episodes", "1", "--teacher", new_path, "--json"]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert record["teacher"]["episodes"] == 1 and "student_over_teacher_hns" in record


def test_evaluate_visited_kl_prints_each_games_kl_and_needs_the_teacher(
    moved_teacher_student, capsys
) -> None:
    from policy_distill.cli import main

    best, teacher = moved_teacher_student
    args = ["evaluate", "--checkpoint", best, "--episodes", "2", "--teacher", teacher, "--visited-kl"]
    args.append("--json")
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    record = json.loads(out[-1])
    kls = record["student"]["visited_kl"]
    assert len(kls) == 2 and all(kl >= 0 for kl in kls)
    assert any(line.startswith("  per game, score (student's mean KL") for line in out)
    assert main(["evaluate", "--checkpoint", best, "--no-teacher", "--visited-kl"]) == 2
    assert "--visited-kl needs the teacher: leave out `--no-teacher`" in capsys.readouterr().err
