"""The validation-split search (policy_distill tune): the walk, the budget rule, the hparams entry
it writes, and a whole search on the tiny recording."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from agents.loading import load_teacher
from policy_distill.collect import CollectConfig, collect
from policy_distill.dataset import load_dataset
from policy_distill.errors import NonFiniteLoss, UserError
from policy_distill.experiments.sweep import append_row, cell_key, load_hparams
from policy_distill.experiments.tune import (
    KEY_FIELDS,
    Choice,
    Setting,
    TuneConfig,
    choose,
    ended_dead,
    hparams_entry,
    ladder_search,
    plateau_step,
    read_rows,
    tune,
    walk_rows,
)


@pytest.mark.parametrize("trial", range(200))
def test_ladder_search_finds_the_valley_of_a_one_valley_score(trial: int) -> None:
    rng = np.random.default_rng(trial)
    ladder = sorted(set(np.round(10 ** rng.uniform(-5, 0, size=rng.integers(1, 9)), 8)))
    start = ladder[rng.integers(len(ladder))] * float(rng.choice([1.0, 1.1]))  # on the ladder or near it
    low = int(rng.integers(len(ladder)))
    # A valley: strictly falling to `low`, strictly rising after it.
    values = {v: abs(i - low) + rng.uniform(0, 0.5) * (i != low) for i, v in enumerate(ladder)}
    calls: list[float] = []

    def score(v: float) -> float:
        calls.append(v)
        return values[v]

    assert ladder_search(ladder, start, score) == ladder[low]
    assert len(calls) == len(set(calls))  # nothing scored twice
    begin = min(range(len(ladder)), key=lambda j: abs(math.log(ladder[j] / start)))
    assert len(calls) <= abs(begin - low) + 3


def test_ladder_search_keeps_the_start_on_ties_and_skips_diverged_runs() -> None:
    assert ladder_search([1e-4, 1e-3, 1e-2], 1e-3, lambda v: 1.0) == 1e-3
    scores = {1e-4: 0.3, 1e-3: 0.2, 2e-3: math.inf}
    assert ladder_search(sorted(scores), 1e-3, scores.__getitem__) == 1e-3


@pytest.mark.parametrize(
    ("curve", "expected"),
    [
        ([0.5, 0.3, 0.2, 0.15, 0.1], 5),  # still falling: the last evaluation
        ([0.5, 0.1, 0.099, 0.0995, 0.0991], 2),  # later gains under 2%
        ([0.5, 0.2, 0.1, 0.12, 0.2], 3),  # over-fits after its best step
        ([0.5, 0.1, 0.105, 0.09], 4),  # a later evaluation 10% lower counts
        ([0.4], 1),
    ],
)
def test_plateau_step(curve: list[float], expected: int) -> None:
    history = [(500 * (i + 1), kl) for i, kl in enumerate(curve)]
    assert plateau_step(history, 0.02) == 500 * expected


def _choice(fraction: float, kl_lr: float, alpha: float, est: str, budgets: tuple[int, int]) -> Choice:
    return Choice(
        fraction,
        Setting("kl", kl_lr),
        Setting("sobolev", kl_lr / 2, alpha, est),
        {"kl": budgets[0], "sobolev": budgets[1]},
        {"kl": True, "sobolev": budgets[1] < 6000},
        {"kl": 6000, "sobolev": 6000},
    )


def test_hparams_entry_reproduces_every_choice_per_method_and_grid_fraction(tmp_path) -> None:
    cfg = TuneConfig(game="breakout", fractions="0.05,0.8")
    choices = {
        0.05: _choice(0.05, 5e-4, 0.1, "vjp", (1500, 2500)),
        0.8: _choice(0.8, 1e-3, 0.01, "fd", (4000, 6000)),
    }
    entry = hparams_entry(cfg, choices, "fp32")
    assert "NOT converged at 6000" in entry["chosen_by"] and "0.05, 0.8" in entry["chosen_by"]
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"breakout": entry}))
    hp = load_hparams(path)["breakout"]
    for grid_fraction, tuned in [(0.01, 0.05), (0.05, 0.05), (0.1, 0.05), (0.3, 0.8), (0.5, 0.8), (0.8, 0.8)]:
        c = choices[tuned]
        kl, sob = hp.for_cell("kl", grid_fraction), hp.for_cell("sobolev", grid_fraction)
        assert (kl.learning_rate, kl.steps) == (c.kl.learning_rate, c.budgets["kl"])
        assert (sob.learning_rate, sob.alpha, sob.steps, sob.sobolev_estimator) == (
            c.sobolev.learning_rate, c.sobolev.alpha, c.budgets["sobolev"], c.sobolev.sobolev_estimator
        )  # fmt: skip
        # The grid's cell keys carry the same values (what the sweep runs and the report checks).
        key = cell_key("breakout", "sobolev", grid_fraction, 0, hp)
        assert (key[4], key[5], key[6]) == (c.sobolev.learning_rate, c.sobolev.alpha, c.budgets["sobolev"])
    # Only what differs from the base gets an override: Sobolev's own learning rate, the same at
    # every tuned fraction, is one override for all fractions.
    same = hparams_entry(cfg, {f: _choice(f, 1e-3, 0.01, "vjp", (3000, 3000)) for f in (0.05, 0.8)}, "fp32")
    assert [{k: v for k, v in o.items() if k != "why"} for o in same["overrides"]] == [
        {"methods": ["sobolev"], "learning_rate": 5e-4}
    ]


def test_choose_walks_each_stage_and_continues_only_runs_still_improving() -> None:
    """choose() on synthetic validation curves: KL-only best at lr 5e-4, vjp best at alpha 0.03
    and lr 1e-3, fd worse than vjp; the KL-only winner levels off inside its search run, the
    Sobolev one is still improving at step 3,000 and is continued to 6,000."""
    cfg = TuneConfig(estimators="vjp,fd")
    asked: list[tuple[Setting, int]] = []

    def curve(setting: Setting, steps: int) -> list[float]:
        if setting.method == "kl":
            low = 0.05 + abs(math.log10(setting.learning_rate / 5e-4))
            return [low * (1 + 500 / s) if s < 1500 else low for s in range(500, steps + 1, 500)]
        low = 0.03 + abs(math.log10(setting.alpha / 0.03)) + abs(math.log10(setting.learning_rate / 1e-3))
        low += 0.01 if setting.sobolev_estimator == "fd" else 0.0
        return [low * (1 + 6000 / s) for s in range(500, steps + 1, 500)]  # still falling

    def lookup(setting: Setting, steps: int, seed: int = 0) -> dict:
        asked.append((setting, steps))
        return {"history": [{"step": 500 * (i + 1), "kl": kl} for i, kl in enumerate(curve(setting, steps))]}

    choice = choose(cfg, 0.8, lookup)
    assert choice.kl == Setting("kl", 5e-4)
    assert choice.sobolev == Setting("sobolev", 1e-3, 0.03, "vjp")
    assert choice.budgets == {"kl": 1500, "sobolev": 6000} and choice.budget_runs == {
        "kl": 3000,
        "sobolev": 6000,
    }
    assert choice.converged == {"kl": True, "sobolev": False}
    assert [s for s, steps in asked if steps == 6000] == [choice.sobolev]  # KL only was not continued
    assert any(s.sobolev_estimator == "fd" for s, _ in asked)


def test_a_setting_that_collapses_after_its_best_evaluation_does_not_win() -> None:
    """Scores are final validation KLs: alpha 0.03 reaches the lowest KL of all mid-run, then
    collapses; alpha 0.01 ends lower and is chosen."""
    cfg = TuneConfig(estimators="vjp", steps=1500, budget_steps=1500)
    curves = {0.003: [0.5, 0.3, 0.25], 0.01: [0.5, 0.2, 0.1], 0.03: [0.5, 0.05, 3.0]}

    def lookup(setting: Setting, steps: int, seed: int = 0) -> dict:
        curve = [0.5, 0.3, 0.2] if setting.method == "kl" else curves.get(setting.alpha, [0.6, 0.6, 0.6])
        if setting.method == "sobolev" and setting.learning_rate != 1e-3:
            curve = [k + 0.1 for k in curve]
        return {"history": [{"step": 500 * (i + 1), "kl": kl} for i, kl in enumerate(curve)]}

    assert choose(cfg, 0.05, lookup).sobolev == Setting("sobolev", 1e-3, 0.01)


def test_the_alpha_walk_steps_down_the_learning_rate_while_its_first_student_dies() -> None:
    """Pong at 80%: KL only is best at lr 2e-3, where Sobolev students die (no input-gradient left:
    cosine 0, relative L2 error 1). The alpha walk's first run (alpha 0.01) dies there, so the walk
    moves to 1e-3, where they train and alpha 0.03 is best; the learning-rate walk starts there."""
    cfg = TuneConfig(estimators="vjp", steps=1500, budget_steps=1500)
    asked: list[Setting] = []

    def lookup(setting: Setting, steps: int, seed: int = 0) -> dict:
        asked.append(setting)
        if setting.method == "kl":
            kl = 0.05 + abs(math.log10(setting.learning_rate / 2e-3))
            dead = False
        else:
            dead = setting.learning_rate >= 2e-3
            kl = 4.5 - setting.alpha if dead else 0.04 + abs(math.log10(setting.alpha / 0.03))
        last = {"grad_cosine": 0.0, "grad_rel_l2": 1.0} if dead else {"grad_cosine": 0.4, "grad_rel_l2": 0.9}
        return {"history": [{"step": 500 * (i + 1), "kl": kl, **last} for i in range(3)]}

    choice = choose(cfg, 0.8, lookup)
    assert choice.kl == Setting("kl", 2e-3)
    assert choice.sobolev == Setting("sobolev", 1e-3, 0.03)
    # One Sobolev run at 2e-3, the default alpha's, before the alpha walk at 1e-3.
    sobolev = [s for s in asked if s.method == "sobolev"]
    assert sobolev[0] == Setting("sobolev", 2e-3, 0.01) and sobolev[1].learning_rate == 1e-3
    assert Setting("sobolev", 2e-3, 0.003) not in sobolev
    assert ended_dead(lookup(Setting("sobolev", 2e-3, 0.01), 1500))
    assert not ended_dead(lookup(Setting("sobolev", 1e-3, 0.01), 1500))
    assert not ended_dead({"diverged": True, "history": []})
    # Nearly dead counts (Pong's alpha 0.003 at 2e-3 ended at cosine 2e-5); a live KL-only student
    # with little gradient fidelity (cosine 0.009, relative L2 error 0.999) does not.
    nearly = {"history": [{"kl": 4.5, "grad_cosine": 2.1e-5, "grad_rel_l2": 1.000023}]}
    assert ended_dead(nearly)
    assert not ended_dead({"history": [{"kl": 0.3, "grad_cosine": 0.009, "grad_rel_l2": 0.999}]})


def test_a_choice_whose_student_dies_with_a_check_seed_steps_down_the_learning_rate() -> None:
    """Pong at 80%: KL only's lr 2e-3 wins with seed 0 but its student dies with seed 2, so the
    choice moves to 1e-3, which trains with both check seeds; the Sobolev walk then starts from
    1e-3. A Sobolev choice whose students all train is kept, checked with each seed once."""
    cfg = TuneConfig(estimators="vjp", steps=1500, budget_steps=1500, check_seeds="1,2", check_steps=1000)
    checked: list[tuple[Setting, int]] = []

    def lookup(setting: Setting, steps: int, seed: int = 0) -> dict:
        if seed:
            assert steps == 1000
            checked.append((setting, seed))
        if setting.method == "kl":
            kl = 0.05 + abs(math.log10(setting.learning_rate / 2e-3))
        else:
            kl = 0.04 + abs(math.log10(setting.alpha / 0.03)) + abs(math.log10(setting.learning_rate / 1e-3))
        dead = setting.method == "kl" and setting.learning_rate >= 2e-3 and seed == 2
        last = {"grad_cosine": 0.0, "grad_rel_l2": 1.0} if dead else {"grad_cosine": 0.4, "grad_rel_l2": 0.9}
        return {"history": [{"step": 500 * (i + 1), "kl": 4.5 if dead else kl, **last} for i in range(3)]}

    choice = choose(cfg, 0.8, lookup)
    assert choice.kl == Setting("kl", 1e-3)
    assert choice.sobolev == Setting("sobolev", 1e-3, 0.03)
    assert checked == [
        (Setting("kl", 2e-3), 1),
        (Setting("kl", 2e-3), 2),
        (Setting("kl", 1e-3), 1),
        (Setting("kl", 1e-3), 2),
        (choice.sobolev, 1),
        (choice.sobolev, 2),
    ]
    # Dead at every rate down the ladder: refused in argument terms.
    with pytest.raises(UserError, match="add lower values to `learning_rates`"):
        choose(
            TuneConfig(estimators="vjp", steps=1500, budget_steps=1500, learning_rates="1e-3,2e-3"),
            0.8,
            lambda s, n, seed=0: lookup(Setting("kl", 2e-3), n, 2) if seed else lookup(s, n),
        )

    # A check run that diverged, or left no evaluation, fails the check too.
    def diverging(setting: Setting, steps: int, seed: int = 0) -> dict:
        return (
            {"diverged": True, "history": []}
            if seed and setting.learning_rate >= 2e-3
            else lookup(setting, steps)
        )

    assert choose(cfg, 0.8, diverging).kl == Setting("kl", 1e-3)
    # No check seeds: the walk's choice stands.
    assert choose(dataclasses.replace(cfg, check_seeds=""), 0.8, lookup).kl == Setting("kl", 2e-3)


def test_walk_rows_are_the_seed_most_rows_have_at_its_shortest_runs() -> None:
    rows = [{"seed": 0, "steps": 3000}] * 5 + [{"seed": 0, "steps": 6000}] + [{"seed": 1, "steps": 1000}] * 2
    assert walk_rows(rows) == (3000, 0)
    assert walk_rows([]) is None


@pytest.mark.parametrize("seeds", ["0,1", "1,1", "x", "-1"])
def test_check_seeds_must_be_distinct_and_not_the_walks_seed(seeds: str) -> None:
    with pytest.raises(UserError, match="`check_seeds`"):
        TuneConfig(check_seeds=seeds)


def test_check_runs_are_rows_of_their_seed_and_shown_on_the_page(tiny_tune_config, tmp_path) -> None:
    """A real search with one check seed: each method's choice runs again with seed 1, for
    check_steps; the rows carry the seed, the page labels them, and the entry says so."""
    cfg = tiny_tune_config(tmp_path, learning_rates="1e-3", alphas="0.01", estimators="vjp",
                           check_seeds="1", check_steps=2)  # fmt: skip
    result = tune(cfg)
    rows = read_rows(tmp_path / "pong.jsonl")
    checks = [r for r in rows if r["seed"] == 1]
    assert {(r["method"], r["steps"]) for r in checks} == {("kl", 2), ("sobolev", 2)}
    assert all("seed1" in r["run_dir"] for r in checks)
    page = (tmp_path / "pong.md").read_text()
    assert page.count("(check, seed 1)") == 2
    # The alpha table counts the walk's runs only, though the check runs have as many steps.
    assert "| 0 | 1 | " in page and "| 0.01 | 1 | " in page
    assert "checked to train, not die, with seeds 1 in 2-step runs" in result["entry"]["chosen_by"]
    # Read again from the rows, nothing runs.
    assert tune(dataclasses.replace(cfg, report_only=True))["entry"] == result["entry"]


def test_writing_an_entry_refuses_to_pair_tuned_values_with_another_student(tmp_path) -> None:
    """Tune's values are the paper's student's: an entry asking for a wider one is not overwritten."""
    from policy_distill.experiments.tune import _write_entry

    entry = {"learning_rate": 1e-3, "alpha": 0.5, "steps": 2, "chosen_by": "tune"}
    path = tmp_path / "hparams.json"
    path.write_text(json.dumps({"pong": {**entry, "student_width": 2.0}}))
    with pytest.raises(UserError, match="the pong entry of .* sets student_width 2.0, but tune chose"):
        _write_entry(path, "pong", entry)
    assert json.loads(path.read_text())["pong"]["student_width"] == 2.0  # untouched
    path.write_text(json.dumps({"pong": {**entry, "student_width": 1}}))
    _write_entry(path, "pong", {**entry, "learning_rate": 2e-3})
    assert json.loads(path.read_text())["pong"]["learning_rate"] == 2e-3


def test_tune_runs_the_walk_once_and_writes_its_page_and_entry(
    tiny, tiny_tune_config, tmp_path, capsys
) -> None:
    (tmp_path / "hparams.json").write_text(json.dumps({"_comment": "x"}))
    cfg = tiny_tune_config(tmp_path, write_hparams=True)
    first = tune(cfg)
    rows = read_rows(tmp_path / "pong.jsonl")
    assert first["ran"] == len(rows) >= 7 and first["finished_fractions"] == [0.6]
    n_train = round(0.6 * len(load_dataset(tiny / "data")))
    for r in rows:
        # Fit and validation parts lie inside the training part: nothing from the test part.
        assert (
            r["train_frames"] + r["validation_frames"] == n_train
            and r["validation_frames"] >= 0.1 * n_train - 1
        )
        assert r["precision"] == "fp32" and r["history"][-1]["step"] == r["steps"]
    budget_runs = [r for r in rows if r["steps"] == 4]
    assert len(budget_runs) == 2 and {r["method"] for r in budget_runs} == {"kl", "sobolev"}
    # The continued run resumed its search run's directory: its history starts with the search's.
    for r in budget_runs:
        search = next(s for s in rows if s["run_dir"] == r["run_dir"] and s["steps"] == 2)
        assert r["history"][0] == search["history"][0]
        # ...and its wall time covers steps 2-4 only, which its row and the page say.
        assert r["resumed_from_step"] == 2 and search["resumed_from_step"] == 0

    hp = load_hparams(tmp_path / "hparams.json")["pong"]
    assert "policy_distill tune" in hp.chosen_by and hp.precision == "fp32"
    recording = json.loads((tiny / "data" / "meta.json").read_text())["content_sha256"]
    assert f"recording sha256 {recording[:12]}..." in hp.chosen_by
    assert hp.tuning_recording_sha256 == recording  # reproduce refuses a grid on it
    page = (tmp_path / "pong.md").read_text()
    assert "Chosen: KL only `kl-lr" in page and '"pong": {' in page
    assert f"{len(rows)} runs" in page
    assert page.count(" min (steps 2-4) |") == len(budget_runs)
    # By alpha: the best 2-step run per alpha (0: KL only), the 4-step budget runs left out.
    search_runs = [r for r in rows if r["steps"] == 2]
    kl_only = min(r["history"][-1]["kl"] for r in search_runs if r["method"] == "kl")
    for alpha in (0.01, 0.1):
        at = [r for r in search_runs if r["method"] == "sobolev" and r["alpha"] == alpha]
        best = min(r["history"][-1]["kl"] for r in at)
        assert f"| {alpha:g} | {len(at)} | {best:.4f} | {100 * (best - kl_only) / kl_only:+.1f}% |" in page
    n_kl = sum(r["method"] == "kl" for r in search_runs)
    assert f"| 0 | {n_kl} | {kl_only:.4f} |  | kl-lr" in page

    again = tune(cfg)
    assert again["ran"] == 0 and len(read_rows(tmp_path / "pong.jsonl")) == len(rows)
    assert again["entry"] == first["entry"]
    assert "done: final validation KL" in capsys.readouterr().out

    # A table and page of their own: the commands name them, and do not offer --write-hparams
    # (that is for the game's own search); a preface beside the page goes under its title.
    results, out = tmp_path / "pong.jsonl", tmp_path / "pong.md"
    assert "--write-hparams" not in page
    commands = page.split("```bash\n")[1].split("```")[0].splitlines()
    assert commands[1].endswith(f"--results {results} --out {out} --report-only")
    (tmp_path / "pong.preface.md").write_text("> **Archived.** Kept for comparison.\n")
    tune(tiny_tune_config(tmp_path, report_only=True))
    page = out.read_text()
    assert page.startswith("# pong: hyperparameters chosen on validation splits\n\n> **Archived.** Kept")
    with pytest.raises(UserError, match="`preface` .*nowhere.md: no such file"):
        tune(tiny_tune_config(tmp_path, report_only=True, preface=str(tmp_path / "nowhere.md")))

    # An entry names the one recording it was tuned on: a table of two recordings is refused.
    append_row(tmp_path / "pong.jsonl", {**rows[0], "dataset_sha256": "f" * 64})
    from_rows = tiny_tune_config(
        tmp_path, data=str(tmp_path / "absent"), report_only=True, write_hparams=True
    )
    with pytest.raises(UserError, match="runs name 2 recordings, not one"):
        tune(from_rows)


def test_a_diverged_run_is_recorded_and_the_walk_goes_on(tiny_tune_config, tmp_path, monkeypatch) -> None:
    import policy_distill.distill as distill_module

    real = distill_module.distill

    def diverging_at_2e3(cfg):
        if cfg.learning_rate == 2e-3:  # as a NaN loss at the first step: no checkpoint
            raise NonFiniteLoss("loss became nan at step 1; no checkpoint was written; lower `learning_rate`")
        return real(cfg)

    monkeypatch.setattr(distill_module, "distill", diverging_at_2e3)
    cfg = tiny_tune_config(tmp_path, learning_rates="5e-4,1e-3,2e-3", estimators="vjp")
    result = tune(cfg)
    diverged = [r for r in read_rows(tmp_path / "pong.jsonl") if r["diverged"]]
    assert diverged and all(r["learning_rate"] == 2e-3 and r["history"] == [] for r in diverged)
    assert result["finished_fractions"] == [0.6]
    assert result["entry"]["learning_rate"] in (5e-4, 1e-3)
    assert "| kl-lr0.002 | 2 | diverged |" in (tmp_path / "pong.md").read_text()
    # A ladder on which everything diverges is an error that names the ladder, not a choice.
    with pytest.raises(UserError, match="every value of `learning_rates` tried for kl-lr0.002 .* diverged"):
        tune(
            tiny_tune_config(
                tmp_path / "all", learning_rates="2e-3", start_learning_rate=2e-3, estimators="vjp"
            )
        )


def test_a_row_holds_only_its_own_steps_of_a_directory_run_further(tiny_tune_config, tmp_path) -> None:
    tune(tiny_tune_config(tmp_path, steps=4, budget_steps=4))  # directories run to step 4
    tune(tiny_tune_config(tmp_path, steps=2, budget_steps=4, results=str(tmp_path / "short.jsonl")))
    short = read_rows(tmp_path / "short.jsonl")
    assert short and all(r["history"][-1]["step"] == r["steps"] for r in short)
    assert {r["steps"] for r in short} >= {2}
    # Such a row cost nothing, and the page says so rather than a backwards step range.
    reused = [r for r in short if r["resumed_from_step"] >= r["steps"]]
    assert reused and all(r["resumed_from_step"] == 4 for r in reused)
    page = (tmp_path / "pong.md").read_text()
    assert page.count("| none (read from a run continued further) |") == len(reused)


def test_rows_of_another_teacher_are_refused(tiny_tune_config, tmp_path) -> None:
    cfg = tiny_tune_config(tmp_path)
    row = {k: None for k in KEY_FIELDS}
    row.update(game="pong", validation_fraction=0.1, seed=0, precision="fp32", batch_size=16, eval_every=2,
               eval_frames=64, fidelity_frames=4, teacher_sha256="0" * 64)  # fmt: skip
    append_row(tmp_path / "pong.jsonl", row)
    with pytest.raises(UserError, match="runs of another teacher or recording"):
        tune(cfg)
    # Also for a page written from the rows alone, with no recording at hand.
    page_only = tiny_tune_config(tmp_path, data=str(tmp_path / "absent"), report_only=True)
    with pytest.raises(UserError, match="runs of another teacher or recording"):
        tune(page_only)


def test_a_search_never_mixes_recordings_when_its_data_goes_missing_or_changes(
    tiny, tiny_tune_config, tmp_path, monkeypatch
) -> None:
    import shutil

    import policy_distill.distill as distill_module

    data = tmp_path / "data"
    shutil.copytree(tiny / "data", data)
    cfg = tiny_tune_config(tmp_path, data=str(data), estimators="vjp")
    real = distill_module.distill
    calls = []

    def distill_then_rerecord(run_cfg):
        result = real(run_cfg)
        calls.append(run_cfg.run)
        # Another recording replaces the search's while it runs (`collect --overwrite`).
        collect(load_teacher(tiny / "teacher.pt"), CollectConfig(frames=400, num_envs=4, seed=7), data,
                overwrite=True, progress=False)  # fmt: skip
        return result

    monkeypatch.setattr(distill_module, "distill", distill_then_rerecord)
    with pytest.raises(UserError, match="runs of another teacher or recording"):
        tune(cfg)  # refused before its second run, which would be on the new recording
    first = read_rows(tmp_path / "pong.jsonl")
    assert len(calls) == 1 and len(first) == 1
    # The row names the recording its run trained on, not the one found after it.
    assert (
        first[0]["dataset_sha256"] == json.loads((tiny / "data" / "meta.json").read_text())["content_sha256"]
    )

    # A recording replaced after the check but before the run loads it: the row is left out.
    calls.clear()

    def rerecord_before_the_second_run(run_cfg):
        if calls:
            collect(load_teacher(tiny / "teacher.pt"), CollectConfig(frames=400, num_envs=4, seed=8), data,
                    overwrite=True, progress=False)  # fmt: skip
        calls.append(run_cfg.run)
        return real(run_cfg)

    monkeypatch.setattr(distill_module, "distill", rerecord_before_the_second_run)
    shutil.rmtree(data)
    shutil.copytree(tiny / "data", data)
    late = tiny_tune_config(tmp_path / "late", data=str(data), estimators="vjp")
    with pytest.raises(UserError, match="its row is left out; restore that recording as `data`"):
        tune(late)
    assert len(calls) == 2 and len(read_rows(tmp_path / "late" / "pong.jsonl")) == 1

    monkeypatch.setattr(distill_module, "distill", real)
    shutil.rmtree(data)  # a missing recording would be recorded afresh: refused, named
    with pytest.raises(UserError, match=r"holds no recording, but .* pass `data` holding that recording"):
        tune(cfg)
    assert not data.exists()
    # The page is still written from the committed rows, which need no recording.
    tune(tiny_tune_config(tmp_path, data=str(data), estimators="vjp", report_only=True))
    page = (tmp_path / "pong.md").read_text()
    assert f"--data {data}" in page and "Recording (data content sha256): " in page


def test_a_search_without_a_recording_records_its_own_seeded_apart_from_the_grids(
    tiny, tiny_tune_config, tmp_path, capsys
) -> None:
    data = tmp_path / "pong-tuning"
    one_setting = dict(fractions="0.8", estimators="vjp", learning_rates="1e-3", alphas="0.01")
    cfg = tiny_tune_config(tmp_path, data=str(data), recording_frames=200, **one_setting)
    tune(cfg)
    meta = json.loads((data / "meta.json").read_text())
    assert (meta["seed"], meta["frames"]) == (1, 200)
    assert "recording 200 frames, seed 1" in capsys.readouterr().out
    grid = json.loads((tiny / "data" / "meta.json").read_text())  # recorded with collect's seed 0
    assert grid["seed"] == 0 and meta["content_sha256"] != grid["content_sha256"]
    rows = read_rows(tmp_path / "pong.jsonl")
    assert rows and {r["dataset_sha256"] for r in rows} == {meta["content_sha256"]}


def test_tune_refuses_to_write_an_entry_before_every_fraction_is_done(tiny_tune_config, tmp_path) -> None:
    cfg = tiny_tune_config(tmp_path, fractions="0.3,0.6", report_only=True, write_hparams=True)
    with pytest.raises(UserError, match=r"search of pong is not finished at fraction\(s\) 0.3, 0.6"):
        tune(cfg)
    assert "not finished: run the tune command again" in (tmp_path / "pong.md").read_text()
    assert not (tmp_path / "hparams.json").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"start_learning_rate": 3e-3}, "start_learning_rate"),
        ({"budget_steps": 1}, "budget_steps"),
        ({"estimators": "vjp,exact"}, "`estimators`"),
        ({"alphas": "0.1,-1"}, "`alphas` must be numbers"),
        ({"fractions": "0.5,1.0"}, "`fractions` must lie in"),
    ],
)
def test_bad_tuning_settings_are_refused(tmp_path, changes: dict, expected: str) -> None:
    with pytest.raises(UserError, match=expected):
        TuneConfig(**changes)


def test_the_command_line_reports_bad_flags_in_one_line(tmp_path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "policy_distill", "tune", "--game", "pong", "--start-learning-rate", "3e-3"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and "--start-learning-rate 0.003 is not on the ladder" in errors[0]


def test_a_page_made_without_the_seed_check_names_it_in_its_commands(tiny_tune_config, tmp_path) -> None:
    """The tiny search runs without check seeds; its page's commands say so, so that they read
    the rows back as the walk that made them (with the default check, its fractions would wait
    for check runs)."""
    tune(tiny_tune_config(tmp_path, learning_rates="1e-3", alphas="0.01", estimators="vjp"))
    page = (tmp_path / "pong.md").read_text()
    assert "--check-seeds ''" in page
