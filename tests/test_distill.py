"""The distillation loop, student checkpoints and evaluation, on a tiny recorded dataset."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import policy_distill.distill as distill_module
from agents.loading import load_teacher
from policy_distill.collect import CollectConfig, collect
from policy_distill.dataset import FrameStore, load_dataset
from policy_distill.distill import TUNED, TUNED_ALPHA, DistillConfig, distill
from policy_distill.errors import UserError
from policy_distill.evaluation import evaluate_policy
from policy_distill.metrics import gradient_fidelity
from policy_distill.student import load_student


def test_run_writes_self_describing_checkpoints_that_load(short_settings, tiny, tiny_distill_config) -> None:
    cfg = tiny_distill_config(run="describe")
    result = distill(cfg)
    assert 0 <= result["test_action_error"] <= 1 and result["test_kl"] >= 0
    assert -1 <= result["test_grad_cosine"] <= 1
    student = load_student(result["best_checkpoint"])
    record = student.record
    assert record["arch"]["num_actions"] == 6 and record["game"] == "pong"
    assert record["settings"] == short_settings.to_dict() and record["config"]["alpha"] == cfg.alpha > 0
    assert record["step"] in (2, 4) and set(record["metrics"]) >= {"action_error", "kl", "grad_cosine"}
    meta = load_dataset(tiny / "data").meta
    assert record["dataset"]["content_sha256"] == meta["content_sha256"]
    assert record["teacher"]["sha256"] == meta["teacher"]["sha256"]
    assert "torch" in record["versions"]
    obs = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    assert student.act(obs).shape == (3,)
    torch.testing.assert_close(student.log_probs(obs.float() / 255).exp().sum(1), torch.ones(3))


def test_interrupted_run_resumes_to_the_same_weights(tiny_distill_config) -> None:
    whole = distill(tiny_distill_config(run="whole", steps=6))
    distill(tiny_distill_config(run="parts", steps=4))  # "interrupted" after step 4
    parts = distill(tiny_distill_config(run="parts", steps=6))  # the same command again resumes
    a = torch.load(whole["run_dir"] + "/latest.pt", weights_only=True)
    b = torch.load(parts["run_dir"] + "/latest.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=0)


def test_resume_with_other_settings_is_refused(tiny_distill_config) -> None:
    distill(tiny_distill_config(run="fixed"))
    with pytest.raises(UserError, match="other settings"):
        distill(tiny_distill_config(run="fixed", alpha=0.5))


def test_resume_on_another_dataset_is_refused(tiny, tiny_distill_config) -> None:
    other = tiny / "data-seed1"
    collect(
        load_teacher(tiny / "teacher.pt"),
        CollectConfig(frames=200, seed=1, num_envs=2, batch_size=2),
        other,
        progress=False,
    )
    distill(tiny_distill_config(run="moved", steps=2))
    with pytest.raises(UserError, match="another dataset or teacher"):
        distill(tiny_distill_config(run="moved", steps=4, data=str(other)))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
    tiny_distill_config, monkeypatch
) -> None:
    real = distill_module.distillation_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        if calls["n"] == 3:
            return dataclasses.replace(loss, total=loss.total * float("nan"))
        return loss

    monkeypatch.setattr(distill_module, "distillation_loss", poisoned)
    cfg = tiny_distill_config(run="nan", steps=4)
    with pytest.raises(UserError, match="loss became nan at step 3"):
        distill(cfg)
    kept = torch.load(cfg.run_dir / "latest.pt", weights_only=True)
    assert kept["step"] == 2 and all(torch.isfinite(v).all() for v in kept["state_dict"].values())


def test_bf16_runs_train_in_bf16_and_are_not_resumed_in_fp32(tiny_distill_config) -> None:
    settings = dict(alpha=0.0, eval_every=1, learning_rate=3e-3)
    one = {
        p: distill(tiny_distill_config(run=f"one-{p}", precision=p, steps=1, **settings))
        for p in ("fp32", "bf16")
    }
    weights = {
        p: torch.load(r["run_dir"] + "/latest.pt", weights_only=True)["state_dict"] for p, r in one.items()
    }
    # The same seed and batch: the first step differs only by the precision it ran in.
    assert any(not torch.equal(weights["fp32"][k], weights["bf16"][k]) for k in weights["fp32"])
    for key in weights["fp32"]:
        torch.testing.assert_close(weights["bf16"][key], weights["fp32"][key], rtol=0, atol=1e-2)
    result = distill(
        tiny_distill_config(run="bf16", precision="bf16", steps=30, **{**settings, "eval_every": 30})
    )
    assert result["test_kl"] < one["bf16"]["test_kl"]
    assert load_student(result["best_checkpoint"]).record["config"]["precision"] == "bf16"
    with pytest.raises(UserError, match="other settings"):
        distill(tiny_distill_config(run="bf16", steps=31, **{**settings, "eval_every": 30}))
    # By default a bf16 run has its own directory, so it never meets an fp32 run of the same cell.
    assert tiny_distill_config(precision="bf16").run_dir.name == "sobolev-frac0.5-seed0-bf16"
    assert tiny_distill_config().run_dir.name == "sobolev-frac0.5-seed0"
    with pytest.raises(UserError, match=r"precision must be one of auto, fp32, bf16, got 'fp16'"):
        tiny_distill_config(precision="fp16")


def test_runs_saved_before_precision_existed_resume_in_fp32(tiny_distill_config) -> None:
    from policy_distill.checkpoint import atomic_torch_save

    cfg = tiny_distill_config(run="old-style", steps=2)
    distill(cfg)
    path = cfg.run_dir / "latest.pt"
    state = torch.load(path, weights_only=True)
    # Neither precision nor student_width existed then (the paper's student was the only one).
    key = {k: v for k, v in state["resume_key"].items() if k not in ("precision", "student_width")}
    atomic_torch_save({**state, "resume_key": {**key, "teacher_bf16": False}}, path)
    distill(tiny_distill_config(run="old-style", steps=4))  # resumes: the old key counts as fp32
    assert torch.load(path, weights_only=True)["step"] == 4
    with pytest.raises(UserError, match="other settings"):
        distill(tiny_distill_config(run="old-style", steps=6, precision="bf16"))


def test_each_evaluation_records_the_mean_training_kl_since_the_last(
    tiny_distill_config, monkeypatch
) -> None:

    seen: list[float] = []
    real_step = distill_module.train_step

    def recording_step(*args, **kwargs):
        loss = real_step(*args, **kwargs)
        seen.append(loss.kl.item())
        return loss

    monkeypatch.setattr(distill_module, "train_step", recording_step)
    result = distill(tiny_distill_config(run="train-kl", steps=6, eval_every=2))
    history = torch.load(Path(result["run_dir"]) / "latest.pt", weights_only=True)["history"]
    assert len(seen) == 6 and [h["step"] for h in history] == [2, 4, 6]
    for i, h in enumerate(history):
        assert h["train_kl"] == pytest.approx(np.mean(seen[2 * i : 2 * i + 2]), rel=1e-5)
    assert result["train_kl"] == history[-1]["train_kl"]


def test_kl_only_students_train_and_lower_the_kl(tiny_distill_config) -> None:
    result = distill(tiny_distill_config(run="kl", alpha=0.0, steps=30, eval_every=30, learning_rate=3e-3))
    first = distill(tiny_distill_config(run="kl0", alpha=0.0, steps=1, eval_every=1, learning_rate=3e-3))
    assert result["test_kl"] < first["test_kl"]
    assert result["method"] == "kl"


def test_dataset_from_another_teacher_and_empty_test_split_are_refused(
    short_settings, tiny_distill_config, make_teacher_file
) -> None:
    other = make_teacher_file(short_settings, seed=1)
    with pytest.raises(UserError, match="recorded by another teacher"):
        distill(tiny_distill_config(teacher=str(other), run="other"))
    with pytest.raises(UserError, match="leaves no held-out episode"):
        distill(tiny_distill_config(train_fraction=1.0, run="all"))


def test_a_test_set_is_measured_whole_and_must_come_from_the_same_teacher(
    short_settings, tiny, tiny_distill_config, make_teacher_file, tmp_path
) -> None:
    # Another recording of the same teacher: every frame of it is held out, none of the training set.
    same = tmp_path / "same-teacher"
    collect(load_teacher(tiny / "teacher.pt"), CollectConfig(frames=120, num_envs=2, batch_size=2), same)
    result = distill(
        tiny_distill_config(run="test-set", steps=2, eval_every=2, train_fraction=1.0, test_data=str(same))
    )
    recorded = load_student(result["best_checkpoint"]).record["dataset"]
    assert recorded["test_frames"] == 120 and recorded["train_frames"] == len(load_dataset(tiny / "data"))

    # A recording of another teacher would measure the student against that teacher: refused.
    other = tmp_path / "other-teacher"
    collect(load_teacher(make_teacher_file(short_settings, seed=1)), CollectConfig(frames=40), other)
    with pytest.raises(
        UserError, match=r"other-teacher was recorded by another teacher .* pass a `test_data` set"
    ):
        distill(tiny_distill_config(run="other-test-set", steps=2, train_fraction=1.0, test_data=str(other)))


def test_frame_store_batches_equal_the_dataset_observations(tiny) -> None:
    ds = load_dataset(tiny / "data")
    store = FrameStore(ds, torch.device("cpu"))
    idx = np.array([0, 5, 77, 399])
    x, logp = store.batch(torch.from_numpy(idx))
    torch.testing.assert_close(x, torch.from_numpy(ds.observations(idx)).float() / 255)
    torch.testing.assert_close(logp, torch.from_numpy(ds.log_probs[idx]))


def test_gradient_fidelity_of_a_network_with_itself_is_perfect() -> None:
    from policy_distill.losses import input_jacobian
    from policy_distill.student import StudentArch, StudentNet

    torch.manual_seed(0)
    net, other = StudentNet(StudentArch(num_actions=6)), StudentNet(StudentArch(num_actions=6))
    x = torch.rand(2, 4, 84, 84)
    _, jac = input_jacobian(net.log_probs, x, create_graph=False)
    same = gradient_fidelity(net.log_probs, x, jac)
    assert same["grad_cosine"] == pytest.approx(1.0, abs=1e-5) and same["grad_rel_l2"] == pytest.approx(
        0, abs=1e-5
    )
    different = gradient_fidelity(other.log_probs, x, jac)
    assert different["grad_cosine"] < 0.9 and different["grad_rel_l2"] > 0.1


def test_gradient_fidelity_in_chunks_equals_the_whole_batch_formula() -> None:
    """Over more frames than one chunk, the per-frame cosine and relative error averaged over
    frames are those of the flattened [B, A*D] Jacobians."""
    from policy_distill.losses import input_jacobian
    from policy_distill.metrics import FIDELITY_CHUNK
    from policy_distill.student import StudentArch, StudentNet

    torch.manual_seed(1)
    teacher, student = StudentNet(StudentArch(num_actions=4)), StudentNet(StudentArch(num_actions=4))
    x = torch.rand(2 * FIDELITY_CHUNK + 5, 4, 84, 84, dtype=torch.float64)
    teacher.double()
    student.double()
    _, j_t = input_jacobian(teacher.log_probs, x, create_graph=False)
    _, j_s = input_jacobian(student.log_probs, x, create_graph=False)
    flat_s, flat_t = j_s.transpose(0, 1).flatten(1), j_t.transpose(0, 1).flatten(1)
    cosine = torch.nn.functional.cosine_similarity(flat_s, flat_t, dim=1).mean().item()
    rel = ((flat_s - flat_t).norm(dim=1) / flat_t.norm(dim=1)).mean().item()
    got = gradient_fidelity(student.log_probs, x, j_t)
    assert got["grad_cosine"] == pytest.approx(cosine, rel=1e-9)
    assert got["grad_rel_l2"] == pytest.approx(rel, rel=1e-9)


def test_load_student_refuses_foreign_and_corrupted_files(tiny, tiny_distill_config, tmp_path) -> None:
    with pytest.raises(UserError, match="not a student checkpoint"):
        load_student(tiny / "teacher.pt")
    good = distill(tiny_distill_config(run="corrupt"))["best_checkpoint"]
    data = open(good, "rb").read()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError, match="truncated or corrupted"):
        load_student(cut)
    record = torch.load(good, weights_only=True)
    record["state_dict"].pop("policy_head.weight")
    broken = tmp_path / "broken.pt"
    torch.save(record, broken)
    with pytest.raises(UserError, match="corrupted"):
        load_student(broken)


def test_evaluation_plays_whole_games_with_raw_scores(short_settings, tiny) -> None:
    teacher = load_teacher(tiny / "teacher.pt")
    scores = evaluate_policy(teacher, short_settings, episodes=3, num_envs=2, seed=5)
    assert len(scores.scores) == 3 and len(scores.lengths) == 3
    assert all(float(s).is_integer() and -21 <= s <= 21 for s in scores.scores)
    assert all(0 < n <= 240 // 4 for n in scores.lengths)
    assert scores.summary()["lengths"] == scores.lengths  # printed by `evaluate --json`


def test_visited_kl_is_zero_against_itself_and_leaves_the_games_unchanged(short_settings, tiny) -> None:
    """Measured against a reference, the policy plays the same games (same seed, same scores);
    against itself every game's visited KL is 0, against another policy it is positive."""
    teacher = load_teacher(tiny / "teacher.pt")
    plain = evaluate_policy(teacher, short_settings, episodes=3, num_envs=2, seed=5)
    assert plain.visited_kl is None and "visited_kl" not in plain.summary()
    itself = evaluate_policy(teacher, short_settings, episodes=3, num_envs=2, seed=5, reference=teacher)
    assert (itself.scores, itself.lengths) == (plain.scores, plain.lengths)
    assert itself.visited_kl == pytest.approx([0.0] * 3, abs=1e-6)

    class Uniform:
        num_actions = 6

        def log_probs(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((len(x), 6), -math.log(6))

    other = evaluate_policy(teacher, short_settings, episodes=3, num_envs=2, seed=5, reference=Uniform())
    assert (other.scores, other.lengths) == (plain.scores, plain.lengths)
    # KL(teacher || uniform) = log 6 - H(teacher) per frame: positive unless the teacher is uniform.
    assert len(other.visited_kl) == 3 and all(0 < kl <= math.log(6) for kl in other.visited_kl)
    assert other.summary()["visited_kl"] == other.visited_kl


def test_package_level_loaders(tiny, tiny_distill_config) -> None:
    import policy_distill

    path = distill(tiny_distill_config(run="pkg"))["best_checkpoint"]
    student = policy_distill.load_student(path, device="cpu")
    assert student.num_actions == 6
    assert policy_distill.load_teacher(tiny / "teacher.pt").num_actions == 6


def test_validation_run_holds_out_part_of_the_training_split(tiny, tiny_distill_config) -> None:
    cfg = tiny_distill_config(train_fraction=0.9, validation_fraction=0.3, steps=2)
    assert cfg.run_dir.name == "sobolev-frac0.9-val0.3-seed0"
    result = distill(cfg)
    dataset = load_dataset(tiny / "data")
    val = dataset.split(0.9, 0.3)
    record = load_student(result["best_checkpoint"]).record
    assert record["dataset"]["train_frames"] == len(val.train)
    assert record["dataset"]["test_frames"] == len(val.test)
    assert val.test[-1] < len(dataset.split(0.9).train)  # the test part is never looked at
    with pytest.raises(UserError, match="validation_fraction cannot be combined with `test_data`"):
        tiny_distill_config(validation_fraction=0.3, test_data=str(tiny / "data"))


def test_previous_boundary_validation_and_a_training_part_inside_one_episode(
    tiny, tiny_distill_config
) -> None:
    cfg = tiny_distill_config(
        train_fraction=0.9, validation_fraction=0.3, validation_boundary="previous", steps=2
    )
    assert (
        cfg.run_dir.name == "sobolev-frac0.9-val0.3prev-seed0"
    )  # its own directory, never resumed as "next"
    record = load_student(distill(cfg)["best_checkpoint"]).record
    val = load_dataset(tiny / "data").split(0.9, 0.3, "previous")
    assert (record["dataset"]["train_frames"], record["dataset"]["test_frames"]) == (
        len(val.train),
        len(val.test),
    )
    dataset = load_dataset(tiny / "data")
    inside_first = (dataset.episode_starts[1] - 1) / len(dataset)  # no episode start but sample 0
    with pytest.raises(
        UserError, match="holds no episode start before its validation part.*raise `train_fraction`"
    ):
        distill(
            tiny_distill_config(
                train_fraction=inside_first, validation_fraction=0.3, validation_boundary="previous"
            )
        )
    with pytest.raises(UserError, match="validation_boundary"):
        tiny_distill_config(validation_boundary="before")


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "constant",
    [
        {"actions_used": 1.0},  # one action everywhere
        # No input-gradient left, two near-tied actions (a dead bf16 Pong student's metrics).
        {"actions_used": 2.0, "grad_cosine": 0.0, "grad_rel_l2": 1.0001},
    ],
    ids=["one-action", "no-input-gradient"],
)
def test_a_constant_student_is_warned_about_once(
    tiny_distill_config, tmp_path, monkeypatch, capsys, constant: dict[str, float]
):
    # Evaluations at steps 2 and 4 (tiny runs): the first before the warning step, the second
    # after it; a constant student then is warned about, once. The metrics are set, not trained:
    # a 4-step tiny student may well be constant.
    monkeypatch.setattr(distill_module, "COLLAPSE_WARNING_STEP", 3)
    real = distill_module.policy_metrics
    live = {"actions_used": 2.0, "grad_cosine": 0.05, "grad_rel_l2": 0.999}
    fidelity = distill_module.gradient_fidelity
    monkeypatch.setattr(distill_module, "policy_metrics", lambda *a: {**real(*a), **constant})
    monkeypatch.setattr(distill_module, "gradient_fidelity", lambda *a: {**fidelity(*a), **constant})
    distill(tiny_distill_config(runs_dir=str(tmp_path), steps=6), progress=False)
    out = capsys.readouterr().out
    assert out.count("warning: at step 4 the student's policy does not depend on the frame") == 1
    assert "at step 2 the student" not in out and "at step 6 the student" not in out
    monkeypatch.setattr(distill_module, "policy_metrics", lambda *a: {**real(*a), **live})
    monkeypatch.setattr(distill_module, "gradient_fidelity", lambda *a: {**fidelity(*a), **live})
    distill(tiny_distill_config(runs_dir=str(tmp_path), steps=4, run="fine"), progress=False)
    assert "constant policy" not in capsys.readouterr().out


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.1, 0.3, 0.5, 0.8])
def test_defaults_are_the_tuned_choices_of_the_grids_hyperparameter_file(fraction: float) -> None:
    """``TUNED`` repeats, for distill's defaults, what docs/reproduce/hparams.json holds with its
    evidence: a new search's entry must change both, or this fails."""
    from policy_distill.experiments.sweep import load_hparams

    entries = load_hparams(REPO / "docs" / "reproduce" / "hparams.json")
    assert entries, "no game entry to compare with"
    for game, entry in entries.items():
        for method in ("kl", "sobolev"):
            cell = entry.for_cell(method, fraction)
            cfg = DistillConfig(
                game=game, train_fraction=fraction, **({"alpha": 0} if method == "kl" else {})
            )
            assert (cfg.learning_rate, cfg.steps, cfg.alpha) == (
                cell.learning_rate,
                cell.steps,
                cell.alpha_for(method),
            ), (game, method, fraction)
            if method == "sobolev":
                assert cfg.sobolev_estimator == cell.sobolev_estimator, (game, fraction)


def test_a_kl_only_run_keeps_the_estimator_name_it_always_had() -> None:
    """KL only uses no estimator: it stays vjp whatever the game's Sobolev estimator, so KL-only
    runs made before estimators were tuned per game still resume (their key says vjp)."""
    assert DistillConfig(game="space_invaders", alpha=0).sobolev_estimator == "vjp"
    assert DistillConfig(game="space_invaders", alpha=0, sobolev_estimator="fd").sobolev_estimator == "fd"
    assert DistillConfig(game="space_invaders").sobolev_estimator == "fd"


def test_resuming_a_run_made_with_earlier_defaults_names_its_values(tiny_distill_config, tmp_path) -> None:
    distill(tiny_distill_config(runs_dir=str(tmp_path), learning_rate=5e-4), progress=False)
    with pytest.raises(
        UserError, match=r"learning_rate 0.0005 -> 0.001.*pass its values, `learning_rate` 0.0005"
    ):
        distill(tiny_distill_config(runs_dir=str(tmp_path), learning_rate=1e-3, steps=6), progress=False)


def test_an_explicit_setting_wins_over_the_games_tuned_default() -> None:
    cfg = DistillConfig(game="breakout", learning_rate=5e-4, steps=100, alpha=0.2, sobolev_estimator="jvp")
    assert (cfg.learning_rate, cfg.steps, cfg.alpha, cfg.sobolev_estimator) == (5e-4, 100, 0.2, "jvp")
    # Another estimator than the game's takes that estimator's alpha, the game's learning rate.
    other = DistillConfig(game="space_invaders", sobolev_estimator="vjp")
    assert (other.alpha, other.learning_rate) == (TUNED_ALPHA["vjp"], 4e-3)


@pytest.mark.parametrize("estimator", ["vjp", "jvp", "fd"])
def test_alpha_defaults_to_the_value_tuned_for_the_estimator(estimator: str) -> None:
    """The estimators' terms differ in scale, so a user who picks one gets its own alpha: the
    game's tuned alpha for the game's estimator, another's value on Pong for another; an explicit
    alpha (0 included: KL only) always wins."""
    tuned = TUNED["breakout"][("large", "sobolev")]
    expected = tuned.alpha if estimator == tuned.sobolev_estimator else TUNED_ALPHA[estimator]
    assert DistillConfig(game="breakout", sobolev_estimator=estimator).alpha == expected
    assert DistillConfig(sobolev_estimator=estimator, alpha=0.5).alpha == 0.5
    assert DistillConfig(sobolev_estimator=estimator, alpha=0).method == "kl"
    with pytest.raises(UserError, match="sobolev_estimator"):
        DistillConfig(sobolev_estimator="exact")


def test_samples_per_direction_must_divide_the_batch_and_names_the_run() -> None:
    """One direction per sample unless asked; a count that does not divide the batch is refused
    in argument terms; a shared run gets its own name, so the two never resume each other."""
    assert DistillConfig(sobolev_estimator="fd").samples_per_direction == 1
    with pytest.raises(UserError, match="samples_per_direction 3 does not divide `batch_size` 200"):
        DistillConfig(sobolev_estimator="fd", samples_per_direction=3)
    with pytest.raises(UserError, match="samples_per_direction"):
        DistillConfig(samples_per_direction=0)
    shared = DistillConfig(sobolev_estimator="fd", samples_per_direction=4, precision="fp32")
    assert shared.run_dir.name == "sobolev-fd-share4-frac0.9-seed0"
    assert DistillConfig(sobolev_estimator="fd", precision="fp32").run_dir.name == "sobolev-fd-frac0.9-seed0"
    centred = DistillConfig(alpha=0, precision="fp32", centre_first_layer=True)
    assert centred.run_dir.name == "kl-frac0.9-seed0-centred"


def test_a_wider_student_is_its_own_run_and_loads_back_at_its_width(tiny_distill_config) -> None:
    """student_width scales the paper's student (2: conv 32/64, linear 512); the run directory
    and the checkpoint's architecture say so, so evaluate and play rebuild the same network."""
    from policy_distill.student import StudentArch, load_student

    assert StudentArch.scaled(6, 4, 1.0) == StudentArch(num_actions=6)
    assert DistillConfig(alpha=0, precision="fp32", student_width=2).run_dir.name == "kl-frac0.9-seed0-w2"
    with pytest.raises(UserError, match="student_width"):
        DistillConfig(student_width=0)
    wide = distill(tiny_distill_config(run="wide", steps=1, alpha=0.0, student_width=2))
    record = torch.load(wide["best_checkpoint"], weights_only=True)
    assert (record["arch"]["conv1"], record["arch"]["conv2"], record["arch"]["hidden"]) == (32, 64, 512)
    student = load_student(wide["best_checkpoint"])
    assert student.net.torso[0].out_channels == 32 and student.net.policy_head.in_features == 512


def test_centring_the_first_layer_removes_the_backgrounds_mean_response_and_moves_only_its_biases() -> None:
    """StudentNet.centre_first_layer: over the given frames and positions each first-layer unit's
    mean pre-activation becomes its initial bias (as for centred frames; the background's share
    was larger), and nothing but those biases moves."""
    from policy_distill.student import StudentArch, StudentNet

    torch.manual_seed(0)
    student = StudentNet(StudentArch(num_actions=6))
    frames = 0.3 + 0.1 * torch.rand(32, 4, 84, 84)  # a bright static background, a little noise
    before = {k: v.clone() for k, v in student.state_dict().items()}
    conv = student.torso[0]
    assert conv(frames).mean(dim=(0, 2, 3)).abs().max() > 0.05
    student.centre_first_layer(frames)
    torch.testing.assert_close(conv(frames).mean(dim=(0, 2, 3)), before["torso.0.bias"], rtol=0, atol=1e-5)
    changed = {k for k, v in student.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"torso.0.bias"}


def test_centre_first_layer_is_part_of_the_run_and_keeps_the_batch_order(tiny_distill_config) -> None:
    """distill --centre-first-layer starts from centred biases and draws the same batches as a
    run without it (its own generator); resuming with the other setting is refused."""
    plain = distill(tiny_distill_config(run="plain", steps=2, alpha=0.0))
    centred = distill(tiny_distill_config(run="centred", steps=2, alpha=0.0, centre_first_layer=True))
    a = torch.load(plain["run_dir"] + "/latest.pt", weights_only=True)
    b = torch.load(centred["run_dir"] + "/latest.pt", weights_only=True)
    torch.testing.assert_close(b["generator_state"], a["generator_state"], rtol=0, atol=0)
    assert not torch.equal(a["state_dict"]["torso.0.bias"], b["state_dict"]["torso.0.bias"])
    assert b["config"]["centre_first_layer"] is True
    with pytest.raises(UserError, match="other settings"):
        distill(tiny_distill_config(run="centred", steps=4, alpha=0.0))


def test_a_missing_dataset_is_recorded_by_the_teacher_then_trained_on(
    tiny, tiny_distill_config, capsys, tmp_path
) -> None:
    data = tmp_path / "data" / "pong"
    cfg = tiny_distill_config(data=str(data), runs_dir=str(tmp_path / "runs"), frames=160, steps=2)
    result = distill(cfg, progress=False)
    assert f"no dataset in {data}: recording 160 frames" in capsys.readouterr().out
    meta = load_dataset(data).meta  # complete and verified (its content hash matches its files)
    assert meta["frames"] == 160 and meta["collect_args"]["frames"] == 160
    assert meta["teacher"]["sha256"] == load_teacher(tiny / "teacher.pt").source.sha256
    latest = torch.load(Path(result["run_dir"]) / "latest.pt", weights_only=True)
    assert result["steps"] == latest["step"] == 2 and [h["step"] for h in latest["history"]] == [2]
    record = load_student(result["best_checkpoint"]).record
    assert record["dataset"]["content_sha256"] == meta["content_sha256"]
