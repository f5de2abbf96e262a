"""The reproduction sweep (resumable results table) and its report, on a tiny teacher and dataset."""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import policy_distill.distill as distill_module
import policy_distill.experiments.sweep as sweep_module
from policy_distill.checkpoint import hardware_description
from policy_distill.dataset import load_dataset
from policy_distill.errors import UserError
from policy_distill.experiments.report import (
    ReportConfig,
    Summary,
    claim_sentences,
    make_report,
    paired_difference,
    paired_verdict,
)
from policy_distill.experiments.statistics import interval
from policy_distill.experiments.sweep import (
    KEY_FIELDS,
    append_row,
    cell_key,
    latest_rows,
    load_hparams,
    read_rows,
    reproduce,
)


def test_without_games_the_sweep_runs_every_game_of_its_hparams(
    tiny_sweep_config, write_hparams, tmp_path
) -> None:
    entry = {"learning_rate": 1e-3, "alpha": 0.5, "steps": 2, "chosen_by": "a test"}
    write_hparams(tmp_path / "hparams.json", breakout=entry, pong=entry)
    assert tiny_sweep_config(tmp_path, games="").game_list() == ["breakout", "pong"]
    assert tiny_sweep_config(tmp_path, games="Pong").game_list() == ["pong"]
    write_hparams(tmp_path / "hparams.json", **{"_only": "a comment"})
    with pytest.raises(UserError, match="`games` is empty and .*hparams.json has no game entry"):
        tiny_sweep_config(tmp_path, games="").game_list()  # read when the sweep runs


def test_sweep_writes_a_row_per_run_and_never_repeats_one(
    tiny, tiny_sweep_config, read_json_lines, write_hparams, tmp_path, monkeypatch, capsys
) -> None:
    write_hparams(tmp_path / "hparams.json")
    cfg = tiny_sweep_config(tmp_path)
    first = reproduce(cfg)
    assert (first["ran"], first["skipped"]) == (4, 0)
    rows = read_json_lines(tmp_path / "results.jsonl")
    assert len(rows) == 4
    assert {(r["method"], r["train_fraction"], r["alpha"]) for r in rows} == {
        ("kl", 0.3, 0.0),
        ("kl", 0.6, 0.0),
        ("sobolev", 0.3, 0.5),
        ("sobolev", 0.6, 0.5),
    }
    for r in rows:
        assert (r["game"], r["seed"], r["learning_rate"], r["steps"]) == ("pong", 0, 1e-3, 2)
        assert (
            Path(r["run_dir"])
            == tmp_path / "runs" / "pong" / f"{r['method']}-frac{r['train_fraction']:g}-seed0"
        )
        latest = torch.load(Path(r["run_dir"]) / "latest.pt", weights_only=True)
        best = torch.load(r["best_checkpoint"], weights_only=True)
        assert (
            r["final_kl"] == latest["metrics"]["kl"]
            and r["final_action_error"] == latest["metrics"]["action_error"]
        )
        assert r["best_kl"] == best["metrics"]["kl"] == min(h["metrics"]["kl"] for h in latest["history"])
        assert r["best_grad_cosine"] == best["metrics"]["grad_cosine"] and "grad_rel_l2" in best["metrics"]
        assert r["final_train_kl"] == latest["history"][-1]["train_kl"] > 0
        ds = load_dataset(tiny / "data")
        # The random teacher is nearly uniform: per-frame entropies lie within ~1e-6 of log 6, so the
        # means of different frame sets differ by ~1e-7 relative; pytest.approx's default rel=1e-6
        # could not tell them apart. Same float64 arithmetic as the sweep: equal to rounding.
        exact = dict(rel=1e-12, abs=0)
        logp = ds.log_probs[: r["train_frames"]].astype(np.float64)
        assert r["teacher_entropy_train"] == pytest.approx(-(np.exp(logp) * logp).sum(1).mean(), **exact)
        test_idx = ds.split(r["train_fraction"]).test  # from the first episode start after the cut
        assert r["test_frames"] == len(test_idx) > 0
        logp = ds.log_probs[test_idx].astype(np.float64)
        assert r["teacher_entropy_test"] == pytest.approx(-(np.exp(logp) * logp).sum(1).mean(), **exact)
        assert 0 < r["teacher_entropy_test"] <= math.log(6)
        assert r["wall_s"] > 0 and r["resumed_from_step"] == 0 and r["hardware"] == hardware_description()
        assert "score_mean" not in r
    # The sweep's cuts (samples 120 and 240) fall on episode starts of the tiny recording; one in the
    # middle of an episode shows that the test part skips that episode's rest.
    middle = (ds.episode_starts[1] + ds.episode_starts[2]) / 2 / len(ds)
    split = ds.split(middle)
    assert split.test[0] == ds.episode_starts[2] > len(split.train)
    logp = ds.log_probs[split.test].astype(np.float64)
    entropies = sweep_module._teacher_entropies(str(tiny / "data"), middle)
    assert entropies["teacher_entropy_test"] == pytest.approx(-(np.exp(logp) * logp).sum(1).mean(), **exact)
    assert "running" in capsys.readouterr().out

    calls = {"distill": 0}

    def counting(cfg):
        calls["distill"] += 1
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(distill_module, "distill", counting)
    again = reproduce(cfg)
    assert calls["distill"] == 0 and (again["ran"], again["skipped"]) == (0, 4)
    assert len(read_json_lines(tmp_path / "results.jsonl")) == 4
    assert capsys.readouterr().out.count("skipped") == 4

    # Asking for scores later plays the largest fraction's students (one new row each) and the teacher.
    scored = reproduce(dataclasses.replace(cfg, score_episodes=1))
    assert calls["distill"] == 0 and (scored["scored"], scored["teachers_scored"]) == (2, 1)
    rows = read_json_lines(tmp_path / "results.jsonl")
    assert len(rows) == 7
    latest = latest_rows(rows)
    assert len(latest) == 5
    assert {r["train_fraction"] for r in latest if "score_mean" in r and r["method"] != "teacher"} == {0.6}
    teacher = [r for r in latest if r["method"] == "teacher"]
    assert len(teacher) == 1 and teacher[0]["score_episodes"] == 1
    assert float(teacher[0]["score_mean"]).is_integer() and -21 <= teacher[0]["score_mean"] <= 21
    reproduce(dataclasses.replace(cfg, score_episodes=1))  # all scored and the teacher cached
    assert len(read_json_lines(tmp_path / "results.jsonl")) == 7

    # Another step budget is another cell: it resumes its run directory from latest.pt.
    monkeypatch.undo()
    write_hparams(
        tmp_path / "hparams.json",
        pong={"learning_rate": 1e-3, "alpha": 0.5, "steps": 4, "chosen_by": "longer", "precision": "fp32"},
    )
    longer = reproduce(dataclasses.replace(cfg, fractions="0.3", methods="kl"))
    assert (longer["ran"], longer["skipped"]) == (1, 0)
    row = read_json_lines(tmp_path / "results.jsonl")[-1]
    assert (row["steps"], row["resumed_from_step"], row["method"], row["train_fraction"]) == (4, 2, "kl", 0.3)
    assert torch.load(Path(row["run_dir"]) / "latest.pt", weights_only=True)["step"] == 4


def test_precision_is_part_of_a_cells_identity(
    tiny_sweep_config, read_json_lines, write_hparams, tmp_path
) -> None:
    """A bf16 entry runs bf16 students in their own directories; rows written before precision
    existed count as fp32, so neither kind of run is taken for the other."""
    entry = {"learning_rate": 1e-3, "alpha": 0.5, "steps": 2, "chosen_by": "a test", "precision": "fp32"}
    write_hparams(tmp_path / "hparams.json", pong=entry)
    cfg = tiny_sweep_config(tmp_path, fractions="0.5", methods="sobolev")
    assert reproduce(cfg)["ran"] == 1
    fp32_row = read_json_lines(tmp_path / "results.jsonl")[0]
    assert fp32_row["precision"] == "fp32"
    old_style = {k: v for k, v in fp32_row.items() if k != "precision"}
    (tmp_path / "results.jsonl").write_text(json.dumps(old_style) + "\n")
    assert reproduce(cfg)["skipped"] == 1  # an old row is the fp32 cell

    write_hparams(tmp_path / "hparams.json", pong={**entry, "precision": "bf16"})
    assert load_hparams(tmp_path / "hparams.json")["pong"].precision == "bf16"
    assert reproduce(cfg)["ran"] == 1
    bf16_row = read_json_lines(tmp_path / "results.jsonl")[-1]
    assert bf16_row["precision"] == "bf16" and bf16_row["run_dir"].endswith("sobolev-frac0.5-seed0-bf16")
    checkpoint = torch.load(bf16_row["best_checkpoint"], weights_only=True)
    assert checkpoint["config"]["precision"] == "bf16"
    assert reproduce(cfg)["skipped"] == 1

    write_hparams(tmp_path / "bad.json", pong={**entry, "precision": "fp16"})
    with pytest.raises(UserError, match="precision must be auto, fp32 or bf16"):
        load_hparams(tmp_path / "bad.json")


def test_missing_game_in_hparams_is_a_one_line_error(tiny_sweep_config, write_hparams, tmp_path) -> None:
    path = write_hparams(
        tmp_path / "hparams.json", breakout={"learning_rate": 1e-3, "alpha": 1, "steps": 2, "chosen_by": "x"}
    )
    with pytest.raises(UserError, match=r"hparams\.json has no entry for pong") as info:
        reproduce(tiny_sweep_config(tmp_path))
    assert "\n" not in str(info.value) and not (tmp_path / "results.jsonl").exists()
    result = subprocess.run(
        [sys.executable, "-m", "policy_distill", "reproduce", "--games", "pong", "--hparams", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 2
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: {path} has no entry for pong; add")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"learning_rate": 1e-3, "alpha": 1, "steps": 2}, "lacks chosen_by"),
        ({"learning_rate": 2, "alpha": 1, "steps": 2, "chosen_by": "x"}, "learning_rate must be"),
        ({"learning_rate": 1e-3, "alpha": 0, "steps": 2, "chosen_by": "x"}, "alpha must be a number > 0"),
        ({"learning_rate": 1e-3, "alpha": 1, "steps": 2.5, "chosen_by": "x"}, "steps must be an integer"),
        (
            {"learning_rate": 1e-3, "alpha": 1, "steps": 2, "chosen_by": "x", "lr": 1},
            r"unknown field\(s\) lr",
        ),
        (
            {
                "learning_rate": 1e-3,
                "alpha": 1,
                "steps": 2,
                "chosen_by": "x",
                "tuning_recording_sha256": "7247",
            },
            "tuning_recording_sha256 must be a recording's content sha256",
        ),
    ],
)
def test_bad_hparams_entries_are_refused(write_hparams, tmp_path, entry: dict, expected: str) -> None:
    path = write_hparams(tmp_path / "h.json", pong=entry)
    with pytest.raises(UserError, match=expected):
        load_hparams(path)
    assert load_hparams(write_hparams(tmp_path / "ok.json"))["pong"].chosen_by == "a test"


OVERRIDDEN = {
    "learning_rate": 1e-3,
    "alpha": 0.5,
    "steps": 2,
    "chosen_by": "a test",
    "precision": "fp32",
    "overrides": [
        {"methods": ["sobolev"], "learning_rate": 5e-4},
        {"fractions": [0.3], "steps": 3, "why": "small data"},
        {"methods": ["sobolev"], "fractions": [0.3], "alpha": 2.0, "learning_rate": 2e-4},
    ],
}


def test_overrides_apply_per_method_and_fraction_in_file_order(write_hparams, tmp_path) -> None:
    hp = load_hparams(write_hparams(tmp_path / "h.json", pong=OVERRIDDEN))["pong"]
    got = {
        (m, f): (c.learning_rate, c.alpha_for(m), c.steps)
        for m in ("kl", "sobolev")
        for f in (0.3, 0.6)
        for c in [hp.for_cell(m, f)]
    }
    assert got == {
        ("kl", 0.3): (1e-3, 0.0, 3),
        ("kl", 0.6): (1e-3, 0.0, 2),
        ("sobolev", 0.3): (2e-4, 2.0, 3),  # the third override wins over the first
        ("sobolev", 0.6): (5e-4, 0.5, 2),
    }
    key = cell_key("pong", "sobolev", 0.3, 0, hp)
    assert (key[KEY_FIELDS.index("learning_rate")], key[KEY_FIELDS.index("steps")]) == (2e-4, 3)
    assert hp.overrides[2].describe() == "sobolev at fractions 0.3: learning rate 0.0002, alpha 2"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"methods": ["dagger"], "alpha": 1.0}, r"overrides\[0\]: methods must be a list of kl and sobolev"),
        ({"fractions": [1.5], "alpha": 1.0}, r"fractions must be a list of numbers in \(0, 1\)"),
        ({"methods": ["kl"], "batch_size": 64}, "unknown field.*batch_size"),
        ({"methods": ["kl"]}, "changes nothing"),
        ({"alpha": 0}, "alpha must be a number > 0"),
    ],
)
def test_bad_overrides_are_refused_naming_the_item(
    write_hparams, tmp_path, override: dict, expected: str
) -> None:
    entry = {**OVERRIDDEN, "overrides": [override]}
    with pytest.raises(UserError, match=expected):
        load_hparams(write_hparams(tmp_path / "h.json", pong=entry))


def test_sweep_runs_each_cell_with_its_overrides(
    tiny_sweep_config, read_json_lines, write_hparams, tmp_path
) -> None:
    write_hparams(tmp_path / "hparams.json", pong=OVERRIDDEN)
    cfg = tiny_sweep_config(tmp_path)
    assert reproduce(cfg)["ran"] == 4
    rows = {(r["method"], r["train_fraction"]): r for r in read_json_lines(tmp_path / "results.jsonl")}
    assert {k: (r["learning_rate"], r["alpha"], r["steps"]) for k, r in rows.items()} == {
        ("kl", 0.3): (1e-3, 0.0, 3),
        ("kl", 0.6): (1e-3, 0.0, 2),
        ("sobolev", 0.3): (2e-4, 2.0, 3),
        ("sobolev", 0.6): (5e-4, 0.5, 2),
    }
    for r in rows.values():  # what the student was trained with, not only what the row says
        config = torch.load(r["best_checkpoint"], weights_only=True)["config"]
        assert (config["learning_rate"], config["alpha"], config["steps"]) == (
            r["learning_rate"], r["alpha"], r["steps"]
        )  # fmt: skip
    assert reproduce(cfg)["skipped"] == 4
    cfg_report = ReportConfig(
        results=cfg.results, hparams=cfg.hparams, out=str(tmp_path / "docs"), fractions="0.3,0.6", seeds="0"
    )
    assert make_report(cfg_report)["excluded_rows"] == 0  # rows made with overrides belong to the file
    page = (tmp_path / "docs" / "README.md").read_text()
    assert "- pong, both methods at fractions 0.3: steps 3 (small data)" in page


def test_rows_of_another_teacher_are_not_mixed_in(tiny_sweep_config, write_hparams, tmp_path) -> None:
    write_hparams(tmp_path / "hparams.json")
    append_row(tmp_path / "results.jsonl", {"game": "pong", "method": "kl", "teacher_sha256": "0" * 64})
    with pytest.raises(UserError, match="another teacher or dataset"):
        reproduce(tiny_sweep_config(tmp_path))


def test_the_grid_is_refused_on_the_recording_its_hyperparameters_were_tuned_on(
    tiny, tiny_sweep_config, write_hparams, tmp_path
) -> None:
    tuned_on = json.loads((tiny / "data" / "meta.json").read_text())["content_sha256"]
    entry = {"learning_rate": 1e-3, "alpha": 0.5, "steps": 2, "chosen_by": "a test", "precision": "fp32"}
    write_hparams(tmp_path / "hparams.json", pong={**entry, "tuning_recording_sha256": tuned_on})
    cfg = tiny_sweep_config(tmp_path)
    with pytest.raises(UserError, match="is the recording pong's hyperparameters were tuned on"):
        reproduce(cfg)
    assert not (tmp_path / "results.jsonl").exists()
    # A recording a cell's own run made (none was there at the start) is checked before its row lands.
    chosen = {"pong": load_hparams(tmp_path / "hparams.json")["pong"]}
    row = {"game": "pong", "dataset_sha256": tuned_on}
    with pytest.raises(UserError, match="hyperparameters were tuned on"):
        sweep_module._finish(cfg, sweep_module.Cell((), "cell", False), row, {}, {}, chosen)
    assert not (tmp_path / "results.jsonl").exists()
    # Another recording's sha: the grid runs.
    write_hparams(tmp_path / "hparams.json", pong={**entry, "tuning_recording_sha256": "0" * 64})
    assert reproduce(dataclasses.replace(cfg, methods="kl", fractions="0.6"))["ran"] == 1


def test_a_line_cut_short_neither_breaks_reading_nor_swallows_the_next_row(tmp_path, capsys) -> None:
    path = tmp_path / "r.jsonl"
    append_row(path, {"game": "pong", "n": 1})
    with open(path, "a") as f:
        f.write('{"game": "pong", "n"')  # a crash mid-line
    append_row(path, {"game": "pong", "n": 3})
    assert [r["n"] for r in read_rows(path)] == [1, 3]
    assert "r.jsonl:2 is not a JSON row" in capsys.readouterr().err


# --- The report -----------------------------------------------------------------------------


def synthetic_rows(sobolev_shift: float) -> list[dict]:
    """Pong: 2 fractions x 2 methods x 3 seeds, Sobolev = KL-only + shift on action error and KL;
    breakout: one seed at one fraction; a teacher row; one row with other hyperparameters."""
    rows = []
    kl_error = {0.1: [0.3, 0.4, 0.5], 0.5: [0.2, 0.2, 0.2]}
    for fraction, errors in kl_error.items():
        for seed, err in enumerate(errors):
            for method, shift, alpha in (("kl", 0.0, 0.0), ("sobolev", sobolev_shift, 1.0)):
                rows.append(
                    {
                        "game": "pong",
                        "method": method,
                        "train_fraction": fraction,
                        "seed": seed,
                        "learning_rate": 5e-4,
                        "alpha": alpha,
                        "steps": 3000,
                        **{f"{w}_action_error": err + shift for w in ("final", "best")},
                        **{f"{w}_kl": err / 10 + shift / 10 for w in ("final", "best")},
                        **{f"{w}_grad_cosine": 0.5 - shift for w in ("final", "best")},
                        **{f"{w}_grad_rel_l2": 0.9 + shift for w in ("final", "best")},
                        "final_train_kl": err / 20,
                        "teacher_entropy_train": 0.25 + fraction,
                        # One slow run (its core shared, say): the page's median ignores it.
                        "wall_s": 60.0
                        * (2 if method == "sobolev" else 1)
                        * (10 if (fraction, seed) == (0.1, 2) else 1),
                        "resumed_from_step": 0,
                        "hardware": "CPU only, 2 cores (test)",
                        "teacher": "pong",
                        "teacher_sha256": "a" * 64,
                        "data": "data/pong",
                        "batch_size": 200,
                        "eval_every": 500,
                        "eval_frames": 10_000,
                        "fidelity_frames": 128,
                        **(
                            {"score_mean": 5.0 + seed, "score_std": 1.0, "score_episodes": 10}
                            if fraction == 0.5
                            else {}
                        ),
                    }
                )
    rows.append(dict(rows[0], learning_rate=1e-4))  # another hyperparameter set: left out
    breakout = dict(
        rows[0], game="breakout", learning_rate=1e-3, steps=100, final_action_error=0.7,
        score_mean=250.0, score_std=10.0, score_episodes=20,
    )  # fmt: skip
    rows += [breakout, dict(breakout, method="sobolev", alpha=2.0, final_action_error=0.6)]
    rows.append(
        {"game": "pong", "method": "teacher", "teacher_sha256": "a" * 64, "score_mean": 9.5, "score_std": 6.9,
         "score_episodes": 20}
    )  # fmt: skip
    return rows


def write_report(
    tmp_path: Path, sobolev_shift: float, write_hparams: Callable[..., Path]
) -> tuple[dict, str, Summary]:
    results = tmp_path / "results.jsonl"
    for row in synthetic_rows(sobolev_shift):
        append_row(results, row)
    hparams = write_hparams(
        tmp_path / "hparams.json",
        pong={"learning_rate": 5e-4, "alpha": 1.0, "steps": 3000, "chosen_by": "grid over 1e-4..1e-3"},
        breakout={"learning_rate": 1e-3, "alpha": 2.0, "steps": 100, "chosen_by": "guess"},
        space_invaders={"learning_rate": 1e-3, "alpha": 2.0, "steps": 100, "chosen_by": "guess"},
    )
    cfg = ReportConfig(
        results=str(results), hparams=str(hparams), out=str(tmp_path / "docs"), fractions="0.1,0.5,0.8"
    )
    result = make_report(cfg)
    summary = Summary(latest_rows(read_rows(results)), load_hparams(hparams), "final")
    return result, (tmp_path / "docs" / "README.md").read_text(), summary


def test_report_runs_from_a_directory_without_the_default_hparams(
    write_hparams, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no docs/reproduce/hparams.json here: only the given files count
    result, page, _ = write_report(tmp_path, sobolev_shift=-0.2, write_hparams=write_hparams)
    assert result["runs"] > 0 and "## Setup" in page


def test_report_writes_page_and_figures_with_intervals(write_hparams, tmp_path) -> None:
    result, page, summary = write_report(tmp_path, sobolev_shift=-0.2, write_hparams=write_hparams)
    for name in ("figure4.png", "gradient_fidelity.png", "sobolev_gain.png"):
        data = (tmp_path / "docs" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    assert result["runs"] == 14 and result["excluded_rows"] == 1 and result["teacher_rows"] == 1
    sob = summary.cell("pong", "sobolev", 0.1, "action_error")  # 0.1, 0.2, 0.3
    assert sob.n == 3 and sob.mean == pytest.approx(0.2)
    assert sob.half_width == pytest.approx(4.3027 * 0.1 / math.sqrt(3))
    assert "0.2 ± 0.25" in page and "0.4 ± 0.25" in page
    flat = summary.cell("pong", "kl", 0.5, "action_error")
    assert flat.half_width == pytest.approx(0.0, abs=1e-12)
    assert "0.7 (1 seed)" in page  # breakout's single seed: a mean without an interval
    assert "have a single seed, so no interval is compared" in page
    assert "- space_invaders: waiting, no runs yet." in page
    assert "pong, Sobolev, fraction 0.8: waiting (no seed yet)" in page
    assert "breakout, KL only, fraction 0.1: seeds 1, 2 waiting" in page
    assert "grid over 1e-4..1e-3" in page and "CPU only, 2 cores (test)" in page
    assert "| CPU only, 2 cores (test) | pong | KL only | 6 | 1.0 min | 1.0-10.0 min | 0.25 h |" in page
    assert "| CPU only, 2 cores (test) | pong | Sobolev | 6 | 2.0 min | 2.0-20.0 min | 0.50 h |" in page
    # 12 pong runs (15 and 30 min) and 2 breakout ones (1 min each).
    assert "In all: 14 student runs, 0.8 process-hours of wall time" in page
    assert "- pong: teacher `pong` sha256 aaaaaaaaaaaaaaaa..., recording sha256 unknown...: 12" in page
    assert "| CPU only, 2 cores (test) | pong | Sobolev | 6 | 2.0 min |" in page
    assert "9.5 ± 6.9 std (20 games)" in page  # the teacher's score
    assert "6 ± 2.5 (3 seeds x 10 games)" in page  # students' scores 5, 6, 7 over seeds
    assert "| breakout | 0.1 | 250 (1 seed x 20 games) | 250 (1 seed x 20 games) | waiting |" in page
    assert "python -m policy_distill reproduce --games pong --fractions 0.1,0.5,0.8" in page
    # make's targets default to docs/reproduce's files, so the page says they need the flags.
    assert 'The same through make: `make reproduce ARGS="..."` and `make report ARGS="..."`' in page
    # Verdicts per fraction: at 0.5 every seed of Sobolev is 0.2 lower (intervals apart), at 0.1
    # the spread of the seeds makes the intervals overlap; breakout has a single seed.
    assert (
        "| 0.5 | KL: **closer**, paired **closer**; action error: **closer**, paired **closer** | waiting |"
    ) in page
    # Paired by seed the shift is exactly 0.2 in every seed, so the same cell resolves.
    assert (
        "| 0.1 | KL: overlap, paired **closer**; action error: overlap, paired **closer** | "
        "KL: one seed, paired one seed; action error: one seed, paired one seed |"
    ) in page
    assert result["verdicts"]["pong"]["0.5"] == {"kl": "closer", "action_error": "closer"}
    assert result["paired_verdicts"]["pong"]["0.1"] == {"kl": "closer", "action_error": "closer"}
    # The explanations: entropy, training against held-out KL (KL only at 0.5: 0.01 vs 0.02).
    assert "| 0.5 | 0.750 | 0.0100 / 0.0200 (2.0x) | 0.0100 / 0.0000 (0.0x) | 1 |" in page


def test_report_lists_an_expected_game_without_hyperparameters_as_waiting(write_hparams, tmp_path) -> None:
    results = tmp_path / "results.jsonl"
    for row in synthetic_rows(-0.2):
        append_row(results, row)
    hparams = write_hparams(
        tmp_path / "hparams.json",
        pong={"learning_rate": 5e-4, "alpha": 1.0, "steps": 3000, "chosen_by": "guess"},
    )
    cfg = ReportConfig(
        results=str(results),
        hparams=str(hparams),
        out=str(tmp_path / "docs"),
        fractions="0.1,0.5,0.8",
        games="Pong,SpaceInvaders",  # as a user types them; pong has an entry, space_invaders none
    )
    make_report(cfg)
    page = (tmp_path / "docs" / "README.md").read_text()
    waiting = page.split("## Waiting")[1]
    assert "- space_invaders: waiting for its hyperparameters (no entry in" in waiting
    assert "tune --game space_invaders --write-hparams" in waiting
    assert "pong: waiting for its hyperparameters" not in waiting
    assert "--games Pong,SpaceInvaders" in page  # the regeneration command keeps the option
    assert "| space_invaders |" not in page.split("## Waiting")[0]  # no empty tables for it


def test_report_compares_the_sobolev_gap_of_wider_students(write_hparams, tmp_path) -> None:
    results, wider_results = tmp_path / "results.jsonl", tmp_path / "wider.jsonl"
    for row in synthetic_rows(-0.1):  # width 1: Sobolev's KL 0.01 lower than KL only's
        append_row(results, row)
    entry = {"learning_rate": 5e-4, "alpha": 1.0, "steps": 3000, "chosen_by": "guess"}
    hparams = write_hparams(tmp_path / "hparams.json", pong=entry)
    wider_hparams = write_hparams(tmp_path / "wider.json", pong=dict(entry, student_width=2))
    for row in synthetic_rows(+0.1):  # width 2: Sobolev's KL 0.01 higher, at fraction 0.5 only
        if row["game"] == "pong" and row["method"] != "teacher" and row["train_fraction"] == 0.5:
            append_row(wider_results, dict(row, student_width=2.0))
    out = tmp_path / "docs"
    common = dict(results=str(results), hparams=str(hparams), out=str(out), fractions="0.1,0.5")
    make_report(
        ReportConfig(**common, capacity_results=str(wider_results), capacity_hparams=str(wider_hparams))
    )
    page = (out / "README.md").read_text()
    # KL-only held-out KL at 0.5 is 0.02 for every seed; Sobolev 0.01 (width 1) and 0.03 (width 2).
    assert "| pong | 0.5 | 1 | 3 / 3 | 0.02 ± 0 | 0.01 ± 0 | +50.0% | closer |" in page
    assert "| pong | 0.5 | 2 | 3 / 3 | 0.02 ± 0 | 0.03 ± 0 | -50.0% | further |" in page
    assert "| pong | 0.1 |" not in page.split("**Student capacity.**")[1]  # no wider run there
    assert f"--capacity-results {wider_results} --capacity-hparams {wider_hparams}" in page

    with pytest.raises(UserError, match="capacity_results and capacity_hparams go together"):
        ReportConfig(**common, capacity_results=str(wider_results))
    with pytest.raises(UserError, match="no results table at .*nowhere.jsonl"):
        make_report(
            ReportConfig(**common, capacity_results="nowhere.jsonl", capacity_hparams=str(wider_hparams))
        )


def test_report_adds_the_search_on_each_entrys_own_recording_to_the_cpu_time(write_hparams, tmp_path) -> None:
    results = tmp_path / "results.jsonl"
    for row in synthetic_rows(-0.2):
        append_row(results, row)
    tuned_on = "c" * 64
    entry = {"learning_rate": 5e-4, "alpha": 1.0, "steps": 3000, "chosen_by": "tune"}
    hparams = write_hparams(tmp_path / "hparams.json", pong=dict(entry, tuning_recording_sha256=tuned_on))
    search = tmp_path / "tuning" / "pong.jsonl"
    for sha, wall_s in (
        (tuned_on, 1800.0),
        (tuned_on, 3600.0),
        ("d" * 64, 7200.0),
    ):  # the last: another recording
        append_row(search, {"game": "pong", "dataset_sha256": sha, "wall_s": wall_s})
    out = tmp_path / "docs"
    cfg = ReportConfig(
        results=str(results), hparams=str(hparams), out=str(out), fractions="0.1,0.5",
        tuning_results=str(tmp_path / "tuning" / "{game}.jsonl"),
    )  # fmt: skip
    make_report(cfg)
    page = (out / "README.md").read_text()
    # 12 pong runs (0.75 h) and 2 breakout ones (1 min each): 0.8 h of grid, 1.5 h of search.
    assert "pong 2 runs, 1.5 process-hours. Grid and searches together: 2.3 process-hours." in page
    assert f"--tuning-results {shlex.quote(str(tmp_path / 'tuning' / '{game}.jsonl'))}" in page
    assert "**alpha.**" not in page  # rows without the search's fields: no alpha table

    # A search's runs at 0.05: KL only 0.3; alpha 1 (the entry's) 0.15 and 0.12 (the lowest of two
    # learning rates); alpha 0.1 0.33; a budget run, longer, and one on another recording: ignored.
    def run(alpha: float, kl: float, steps: int = 3000, sha: str = tuned_on) -> dict:
        method = "sobolev" if alpha else "kl"
        history = [{"kl": 9.9}, {"kl": kl}]  # the final validation KL is the last
        return {"game": "pong", "dataset_sha256": sha, "wall_s": 60.0, "train_fraction": 0.05,
                "steps": steps, "method": method, "alpha": alpha, "history": history}  # fmt: skip

    for row in (run(0.0, 0.3), run(1.0, 0.15), run(1.0, 0.12), run(0.1, 0.33), run(1.0, 0.01, steps=6000),
                run(0.1, 0.01, sha="d" * 64)):  # fmt: skip
        append_row(search, row)
    make_report(cfg)
    page = (out / "README.md").read_text()
    assert "| game | fraction | alpha 0.1 | alpha 1 |" in page
    assert "| pong | 0.05 | +10.0% | **-60.0%** |" in page


def test_paired_difference_pairs_seeds_and_resolves_what_overlapping_intervals_hide(
    write_hparams, tmp_path
) -> None:
    # The KL-only seeds spread 0.3, 0.4, 0.5 at 0.1; each Sobolev seed is its twin minus 0.1 plus a
    # little noise: the per-method intervals overlap, the seed-by-seed differences do not hold 0.
    rows = synthetic_rows(-0.1)
    noise = {0: 0.01, 1: -0.01, 2: 0.0}
    for row in rows:
        if row["method"] == "sobolev" and row["game"] == "pong" and row["train_fraction"] == 0.1:
            row["final_action_error"] += noise[row["seed"]]
    hparams = write_hparams(
        tmp_path / "hparams.json", pong={"learning_rate": 5e-4, "alpha": 1.0, "steps": 3000, "chosen_by": "x"}
    )

    def summarise(kept: list[dict], name: str) -> Summary:
        results = tmp_path / name
        for row in kept:
            append_row(results, row)
        return Summary(latest_rows(read_rows(results)), load_hparams(hparams), "final")

    summary = summarise(rows, "all.jsonl")
    kl_side, sob_side = (summary.cell("pong", m, 0.1, "action_error") for m in ("kl", "sobolev"))
    assert sob_side.high > kl_side.low  # the two intervals overlap
    diff = paired_difference(summary, "pong", 0.1, "action_error")
    assert diff.values == pytest.approx((0.09, 0.11, 0.1))  # seed by seed, KL only - Sobolev
    relative = paired_difference(summary, "pong", 0.1, "action_error", relative=True)
    assert relative.values == pytest.approx((0.09 / 0.3, 0.11 / 0.4, 0.1 / 0.5))  # of each seed's KL only
    assert diff.half_width == pytest.approx(4.3027 * 0.01 / math.sqrt(3))
    assert paired_verdict(diff) == "closer"
    # Only the seeds both methods have are paired, seed with seed: without Sobolev's seed 0, KL
    # only's seeds 1 and 2 are set against Sobolev's seeds 1 and 2 (not its seeds 0 and 1).
    gap = summarise([r for r in rows if (r["method"], r.get("seed")) != ("sobolev", 0)], "gap.jsonl")
    assert paired_difference(gap, "pong", 0.1, "action_error").values == pytest.approx((0.11, 0.1))
    reversed_diff = interval([-v for v in diff.values])
    assert paired_verdict(reversed_diff) == "further"
    assert paired_verdict(interval([0.1, -0.05, 0.02])) == "not resolved"
    assert paired_verdict(interval([0.1])) == "one seed" and paired_verdict(None) is None


def test_claim_sentences_name_an_inner_fraction_where_the_gap_is_widest() -> None:
    # KL-only 1.0 everywhere; Sobolev 0.9, 0.5, 0.8 at 0.1, 0.3, 0.5: widest at 0.3 (+50%).
    rows = [
        {
            "game": "pong",
            "method": m,
            "train_fraction": f,
            "seed": seed,
            "final_kl": v,
            "final_action_error": v,
        }  # fmt: skip
        for f, sob in ((0.1, 0.9), (0.3, 0.5), (0.5, 0.8))
        for m, v in (("kl", 1.0), ("sobolev", sob))
        for seed in (0, 1)
    ]
    sentences = claim_sentences(Summary(rows, {}, "final"), "pong")
    assert (
        "+10.0% at the smallest fraction (0.1) and +20.0% at the largest (0.5); widest at 0.3 (+50.0%)."
        in (sentences[0])
    )


def test_claim_sentences_follow_the_numbers(write_hparams, tmp_path) -> None:
    _, page, summary = write_report(tmp_path / "lower", sobolev_shift=-0.1, write_hparams=write_hparams)
    sentences = " ".join(claim_sentences(summary, "pong"))
    expected = (
        "action-prediction error: Sobolev's mean is lower than KL-only's at 2 of 2 fractions (0.1, 0.5)"
    )
    assert expected in sentences
    # KL-only 0.4 vs Sobolev 0.3 at 0.1 (+25%); 0.2 vs 0.1 at 0.5 (+50%): the gap is not wider at 0.1.
    assert "+25.0% at the smallest fraction (0.1) and +50.0% at the largest (0.5)" in sentences
    assert "partly consistent" in sentences
    assert "Sign test over the fractions (two-sided, ties dropped): p 0.5, approximate" in sentences
    assert "Paired by seed, the difference's 95% interval lies above 0 at 2 (0.1, 0.5)." in sentences
    assert (
        "not wider at the smallest fraction than at the largest on held-out action-prediction error "
        "(+25.0% at 0.1 against +50.0% at 0.5) and on held-out KL (+25.0% at 0.1 against +50.0% at 0.5)."
    ) in sentences
    on_page = claim_sentences(summary, "pong", (0.1, 0.5, 0.8), (0, 1, 2))
    assert all(f"- {s}" in page for s in on_page)
    # The page expects fraction 0.8 too: its summing-up says the verdict is provisional.
    assert on_page[-1].endswith("Provisional: 2 of 3 fractions measured.")
    one_seed = claim_sentences(summary, "pong", (0.1, 0.5), (0, 1, 2, 3))
    assert one_seed[-1].endswith("Provisional: 2 of 2 fractions measured, some with 3 of 4 seeds.")
    assert "Provisional" not in claim_sentences(summary, "pong", (0.1, 0.5), (0, 1, 2))[-1]

    _, page, summary = write_report(tmp_path / "higher", sobolev_shift=+0.1, write_hparams=write_hparams)
    sentences = " ".join(claim_sentences(summary, "pong"))
    assert "Sobolev's mean is lower than KL-only's at 0 of 2 fractions (none)" in sentences
    assert "-25.0% at the smallest fraction" in sentences and "not consistent with the paper" in sentences
    assert "lies above 0 at 0 (none) and below 0 at 2 (0.1, 0.5)." in sentences
    assert "Sign test over the fractions (two-sided, ties dropped): p 0.5" in sentences
    assert "lower than KL-only's at 2 of 2" not in page


def test_report_cli_prints_json_and_needs_a_table(write_hparams, tmp_path) -> None:
    write_report(tmp_path, sobolev_shift=-0.2, write_hparams=write_hparams)
    args = [sys.executable, "-m", "policy_distill", "report", "--hparams", str(tmp_path / "hparams.json")]
    ok = subprocess.run(
        [*args, "--results", str(tmp_path / "results.jsonl"), "--out", str(tmp_path / "cli"), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.strip().splitlines()[-1])["runs"] == 14
    assert (tmp_path / "cli" / "README.md").is_file()
    missing = subprocess.run(
        [*args, "--results", str(tmp_path / "none.jsonl")], capture_output=True, text=True
    )
    assert (
        missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no results table" in missing.stderr
    )


def test_report_places_a_hand_written_discussion_and_preface_and_refuses_a_missing_one(
    write_hparams, tmp_path
) -> None:
    _, page, _ = write_report(tmp_path, sobolev_shift=-0.2, write_hparams=write_hparams)
    assert "## Discussion" not in page

    def page_with(**files: str) -> str:
        make_report(
            ReportConfig(
                results=str(tmp_path / "results.jsonl"),
                hparams=str(tmp_path / "hparams.json"),
                out=str(tmp_path / "docs"),
                **files,
            )
        )
        return (tmp_path / "docs" / "README.md").read_text()

    (tmp_path / "docs" / "discussion.md").write_text("Why the gap is small on Pong.\n")
    page = page_with()
    assert (
        page.index("## Do the paper's claims hold?") < page.index("## Discussion") < page.index("## Waiting")
    )
    assert "Why the gap is small on Pong." in page
    # A preface goes under the title, before the setup: e.g. the teacher a page was made with.
    (tmp_path / "docs" / "preface.md").write_text("> Made with the earlier teacher.\n")
    page = page_with()
    title, preface = page.index("# Reproduction"), page.index("> Made with the earlier teacher.")
    assert title < preface < page.index("## Setup")
    for name in ("discussion", "preface"):
        with pytest.raises(UserError, match=f"`{name}` .*nope.md: no such file"):
            page_with(**{name: str(tmp_path / "nope.md")})


def test_the_estimator_is_part_of_a_sobolev_cells_identity(
    tiny_sweep_config, read_json_lines, write_hparams, tmp_path
) -> None:
    """An fd entry runs its Sobolev students in their own directories; KL-only cells and rows
    written before the field existed (the paper's vjp) are not taken for them."""
    entry = {"learning_rate": 1e-3, "alpha": 0.5, "steps": 2, "chosen_by": "a test", "precision": "fp32"}
    write_hparams(tmp_path / "hparams.json", pong=entry)
    cfg = tiny_sweep_config(tmp_path, fractions="0.5")
    assert reproduce(cfg)["ran"] == 2
    old_style = [
        {k: v for k, v in row.items() if k not in ("sobolev_estimator", "samples_per_direction")}
        for row in read_json_lines(tmp_path / "results.jsonl")
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(row) + "\n" for row in old_style))
    assert reproduce(cfg)["skipped"] == 2  # old rows are vjp cells

    write_hparams(tmp_path / "hparams.json", pong={**entry, "sobolev_estimator": "fd"})
    again = reproduce(cfg)
    assert (again["ran"], again["skipped"]) == (1, 1)  # the KL-only cell is the same cell
    fd_row = read_json_lines(tmp_path / "results.jsonl")[-1]
    assert fd_row["sobolev_estimator"] == "fd" and fd_row["samples_per_direction"] == 1
    assert fd_row["run_dir"].endswith("sobolev-fd-frac0.5-seed0")
    assert torch.load(fd_row["best_checkpoint"], weights_only=True)["config"]["sobolev_estimator"] == "fd"
    # Input directions shared by 4 samples: another cell, with its own run directory.
    write_hparams(
        tmp_path / "hparams.json", pong={**entry, "sobolev_estimator": "fd", "samples_per_direction": 4}
    )
    assert reproduce(cfg)["ran"] == 1
    shared = read_json_lines(tmp_path / "results.jsonl")[-1]
    assert shared["samples_per_direction"] == 4
    assert shared["run_dir"].endswith("sobolev-fd-share4-frac0.5-seed0")
    write_hparams(tmp_path / "bad.json", pong={**entry, "samples_per_direction": 0})
    with pytest.raises(UserError, match="samples_per_direction must be an integer >= 1, got 0"):
        load_hparams(tmp_path / "bad.json")
    write_hparams(tmp_path / "bad.json", pong={**entry, "sobolev_estimator": "exact"})
    with pytest.raises(UserError, match="sobolev_estimator must be one of vjp, jvp, fd"):
        load_hparams(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("field", "value", "suffix", "bad", "message"),
    [
        (
            "centre_first_layer",
            True,
            "-seed0-centred",
            "yes",
            "centre_first_layer must be true or false, got 'yes'",
        ),
        ("student_width", 2.0, "-seed0-w2", 0, r"student_width must be a number in \(0, 16\], got 0"),
    ],
)
def test_a_student_field_makes_both_methods_other_cells(
    tiny_sweep_config, read_json_lines, write_hparams, tmp_path, field, value, suffix, bad, message
) -> None:
    """centre_first_layer or student_width (the capacity test) in the file: KL and Sobolev cells
    both run again, in their own directories, with that student; rows without the field are the
    paper's student, and the report keeps them out of the new cells."""
    entry = {"learning_rate": 1e-3, "alpha": 0.5, "steps": 2, "chosen_by": "a test", "precision": "fp32"}
    write_hparams(tmp_path / "hparams.json", pong=entry)
    cfg = tiny_sweep_config(tmp_path, fractions="0.5")
    assert reproduce(cfg)["ran"] == 2
    old_style = [
        {k: v for k, v in r.items() if k != field} for r in read_json_lines(tmp_path / "results.jsonl")
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(row) + "\n" for row in old_style))
    assert reproduce(cfg)["skipped"] == 2

    write_hparams(tmp_path / "hparams.json", pong={**entry, field: value})
    assert reproduce(cfg)["ran"] == 2 and reproduce(cfg)["skipped"] == 2
    new = read_json_lines(tmp_path / "results.jsonl")[-2:]
    assert {r["method"] for r in new} == {"kl", "sobolev"}
    for row in new:
        assert row[field] == value and row["run_dir"].endswith(suffix)
        assert torch.load(row["best_checkpoint"], weights_only=True)["config"][field] == value
    report = ReportConfig(
        results=str(tmp_path / "results.jsonl"),
        hparams=str(tmp_path / "hparams.json"),
        out=str(tmp_path / "page"),
        fractions="0.5",
        seeds="0",
    )
    assert make_report(report)["excluded_rows"] == 2
    if field == "student_width":
        assert "| student width |" in (tmp_path / "page" / "README.md").read_text()
    write_hparams(tmp_path / "bad.json", pong={**entry, field: bad})
    with pytest.raises(UserError, match=message):
        load_hparams(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"metrics": "median"}, "metrics must be one of final, best, got 'median'"),
        ({"fractions": "0.5,2"}, "fraction"),
        ({"seeds": "a"}, "seed"),
        ({"games": "pong,tetris"}, "unknown game 'tetris'; known games: breakout, pong, space_invaders"),
    ],
)
def test_bad_report_settings_are_refused_before_anything_is_read(changes: dict, expected: str) -> None:
    with pytest.raises(UserError, match=expected):
        ReportConfig(results="nowhere.jsonl", **changes)


def test_a_dead_student_is_left_out_of_the_statistics_and_listed(write_hparams, tmp_path) -> None:
    """A KL-only student at 0.1 whose policy ended constant (cosine 0, relative L2 error 1, KL 5.7
    as Pong's at lr 1e-3) is a fourth seed of its cell: the cell's interval and the seed-by-seed
    difference are those of the three live seeds, the seed count says `+1 dead`, and the page
    lists it; its CPU time still counts."""
    rows = synthetic_rows(-0.2)
    dead = next(r for r in rows if (r["method"], r["train_fraction"], r["seed"]) == ("kl", 0.1, 0))
    dead = {**dead, "seed": 3, **{f"{w}_kl": 5.7 for w in ("final", "best")}}
    dead.update({f"{w}_grad_cosine": 0.0 for w in ("final", "best")})
    dead.update({f"{w}_grad_rel_l2": 1.0002 for w in ("final", "best")})
    hparams = load_hparams(
        write_hparams(
            tmp_path / "hparams.json",
            pong={"learning_rate": 5e-4, "alpha": 1.0, "steps": 3000, "chosen_by": "guess"},
        )  # fmt: skip
    )
    live, with_dead = Summary(rows, hparams, "final"), Summary([*rows, dead], hparams, "final")
    assert with_dead.cell("pong", "kl", 0.1, "kl") == live.cell("pong", "kl", 0.1, "kl")
    assert paired_difference(with_dead, "pong", 0.1, "kl") == paired_difference(live, "pong", 0.1, "kl")
    assert with_dead.dead == [dead] and len(with_dead.students) == len(live.students) + 1

    results = tmp_path / "results.jsonl"
    for row in [*rows, dead]:
        append_row(results, row)
    out = str(tmp_path / "docs")
    cfg = ReportConfig(
        results=str(results), hparams=str(tmp_path / "hparams.json"), out=out, fractions="0.1,0.5"
    )
    assert make_report(cfg)["dead_rows"] == 1
    page = (tmp_path / "docs" / "README.md").read_text()
    assert "| 0.1 | 3 (+1 dead) / 3 |" in page
    assert "**Dead students, left out of every statistic** (1)" in page
    assert "pong KL only at 0.1, seed 3 (lr 0.0005, held-out KL 5.7)" in page
