"""The PPO teacher trainer on tiny runs: it writes loadable teachers and resumes."""

from __future__ import annotations

import pytest
import torch

from agents.loading import load_teacher
from agents.ppo import PPOConfig, export_teacher, generalised_advantages, train_ppo
from policy_distill.errors import ConfigError, UserError


def tiny_config(**kw) -> PPOConfig:
    base = dict(
        game="pong",
        total_steps=64,
        num_envs=2,
        num_steps=16,
        num_minibatches=2,
        update_epochs=1,
        checkpoint_every=1,
        device="cpu",
    )
    base.update(kw)
    return PPOConfig(**base)


def test_train_resume_and_export(tmp_path) -> None:
    run = tmp_path / "run"
    teacher_path = train_ppo(tiny_config(total_steps=32), run).teacher_path
    first = torch.load(run / "trainer_state.pt", weights_only=True)
    assert first["global_step"] == 32
    teacher = load_teacher(teacher_path, game="pong")
    assert teacher.num_actions == 6
    train_ppo(tiny_config(total_steps=64), run)  # the same run, longer: resumes at step 32
    second = torch.load(run / "trainer_state.pt", weights_only=True)
    assert second["global_step"] == 64 and second["update"] == 2
    assert any(not torch.equal(first["model"][k], second["model"][k]) for k in first["model"])
    shipped = export_teacher(run, tmp_path / "pong.pt")
    record = torch.load(shipped, weights_only=True)
    assert record["training"]["agent_steps"] == 64
    assert all(v.dtype == torch.float16 for v in record["state_dict"].values())
    # Continuing in a new directory from the exported teacher keeps the step count.
    train_ppo(tiny_config(total_steps=96), tmp_path / "again", init_from=shipped)
    assert torch.load(tmp_path / "again" / "trainer_state.pt", weights_only=True)["global_step"] == 96


def test_continuing_from_an_export_keeps_schedule_machines_and_curve(tmp_path) -> None:
    """A teacher continued in a new session from its committed export resumes the learning-rate
    schedule at its step, and keeps the record of machines and the learning curve."""
    run = tmp_path / "run"
    train_ppo(tiny_config(total_steps=64, precision="fp32"), run)
    shipped = export_teacher(run, tmp_path / "pong.pt")
    record = torch.load(shipped, weights_only=True)["training"]
    assert record["finished"] is True and record["agent_steps"] == 64
    (segment,) = record["segments"]
    assert (segment["from_step"], segment["to_step"], segment["precision"]) == (0, 64, "fp32")
    assert segment["cpu_capability"] and segment["wall_time_s"] > 0

    result = train_ppo(tiny_config(total_steps=128, precision="fp32"), tmp_path / "next", init_from=shipped)
    assert result.agent_steps == 128 and result.steps_this_call == 64 and result.finished
    state = torch.load(tmp_path / "next" / "trainer_state.pt", weights_only=True)
    assert state["update"] == 4  # updates 3 and 4 of 4: the schedule resumed where it stopped
    assert [(s["from_step"], s["to_step"]) for s in state["segments"]] == [(0, 64), (64, 128)]
    assert state["curve"][: len(record["curve"])] == record["curve"]


def test_a_final_export_before_the_planned_total_is_finished_and_its_card_says_so(tmp_path) -> None:
    """A teacher that met its target is exported as finished (``--final``); without the flag the
    same run is unfinished and its card says training continues."""
    from agents.model_card import write_model_card
    from policy_distill.evaluation import Scores

    run = tmp_path / "run"
    train_ppo(tiny_config(total_steps=96, precision="fp32"), run, stop_after_s=0.0)  # 32 of 96
    scores = Scores("pong", [1.0, 2.0], [10, 10])
    texts = {}
    for final in (False, True):
        shipped = export_teacher(run, tmp_path / f"final{final}" / "pong.pt", final=final)
        training = torch.load(shipped, weights_only=True)["training"]
        assert training["finished"] is final and training.get("stopped_early", False) is final
        texts[final] = write_model_card(shipped, scores, seed=0, command="c").read_text()
    assert "**Unfinished**: 32 of 96 planned agent steps" in texts[False]
    assert "Training finished at 32 of 96 planned agent steps" in texts[True]
    assert "Unfinished" not in texts[True]


def test_a_run_planned_off_the_batch_grid_finishes_and_its_card_says_so(tmp_path) -> None:
    """The trainer plans whole updates: 100 planned steps in batches of 32 end at 96, finished."""
    from agents.model_card import write_model_card
    from policy_distill.evaluation import Scores

    result = train_ppo(tiny_config(total_steps=100, precision="fp32"), tmp_path / "run")
    assert result.finished and result.agent_steps == 96
    shipped = export_teacher(tmp_path / "run", tmp_path / "pong.pt")
    assert torch.load(shipped, weights_only=True)["training"]["finished"] is True
    text = write_model_card(shipped, Scores("pong", [1.0], [10]), seed=0, command="c").read_text()
    assert "Training finished." in text and "Unfinished" not in text


def test_stop_after_seconds_checkpoints_and_resumes(tmp_path) -> None:
    run = tmp_path / "run"
    first = train_ppo(tiny_config(total_steps=96), run, stop_after_s=0.0)  # stops after its first update
    assert not first.finished and first.agent_steps == 32
    assert torch.load(run / "trainer_state.pt", weights_only=True)["global_step"] == 32
    assert train_ppo(tiny_config(total_steps=96), run).finished


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_envs": 0}, "num_envs must be at least 1, got 0"),
        ({"learning_rate": float("nan")}, "learning_rate must lie in"),
        ({"learning_rate": -1e-4}, "learning_rate must lie in"),
        ({"total_steps": 0}, "total_steps must be at least 1"),
        ({"gamma": 1.5}, "gamma must lie in [0, 1], got 1.5"),
        ({"num_minibatches": 3}, "num_minibatches must divide"),
        ({"precision": "fp16"}, "precision must be one of auto, fp32, bf16"),
    ],
)
def test_trainer_settings_are_checked(overrides, message) -> None:
    with pytest.raises(ConfigError) as info:
        tiny_config(**overrides)
    assert message in str(info.value)
    assert info.value.problems[0][0] == next(iter(overrides))


def test_resume_names_the_setting_that_differs(tmp_path) -> None:
    train_ppo(tiny_config(total_steps=32), tmp_path)
    with pytest.raises(UserError, match=r"other settings \(ent_coef 0.01 -> 0.02\)"):
        train_ppo(tiny_config(total_steps=32, ent_coef=0.02), tmp_path)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, "errors must be one line"
    return message


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (lambda r: r["state_dict"].pop("policy_head.weight"), "has no policy_head.weight"),
        (lambda r: r.pop("settings"), "lacks its settings record"),
        (
            lambda r: r["state_dict"].update({"extra.weight": torch.zeros(1)}),
            "does not fit the teacher network",
        ),
        (lambda r: r["training"].update(curve=[[1, 2]]), "records a malformed learning curve"),
        (lambda r: r["training"].update(agent_steps="many"), "a malformed step count"),
    ],
    ids=["no policy head", "no settings", "another network", "bad curve", "bad step count"],
)
def test_continuing_from_a_malformed_teacher_is_one_line(
    tmp_path, make_teacher_file, spoil, expected
) -> None:
    path = make_teacher_file()
    record = torch.load(path, weights_only=True)
    record["training"] = {"agent_steps": 32, "curve": [[50_000, 1.0, 2]]}
    spoil(record)
    torch.save(record, path)
    with pytest.raises(UserError) as err:
        train_ppo(tiny_config(), tmp_path / "run", init_from=path)
    message = _one_line(err)
    assert expected in message and str(path) in message, message
    assert not (tmp_path / "run" / "trainer_state.pt").exists()


def _drop_config(name: str):
    return lambda s: s["config"].pop(name)


def _rename_config(old: str, new: str):
    return lambda s: s["config"].update({new: s["config"].pop(old)})


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (_drop_config("ent_coef"), "records no ent_coef"),
        (_rename_config("ent_coef", "entropy_coef"), "records unknown settings entropy_coef and no ent_coef"),
        (lambda s: s.pop("config"), "lacks its trainer settings"),
        (
            lambda s: s["config"].update(num_envs=0),
            "holds invalid trainer settings: num_envs must be at least 1",
        ),
        (lambda s: s["config"].update(game=7), "holds malformed trainer settings"),
        (lambda s: s.pop("global_step"), "records no valid global_step"),
        (lambda s: s.update(update="2"), "records no valid update"),
        (lambda s: s.pop("model"), "lacks the network's weights"),
        (lambda s: s.update(segments=[{"from_step": 0}]), "a malformed record of machines"),
        (lambda s: s["model"].pop("policy_head.weight"), "does not fit the teacher network or its optimizer"),
        (lambda s: s["optimizer"].pop("param_groups"), "does not fit the teacher network or its optimizer"),
    ],
    ids=[
        "missing field",
        "renamed field",
        "no config",
        "invalid value",
        "malformed value",
        "no global_step",
        "update a string",
        "no model",
        "bad segments",
        "model lacks a weight",
        "optimizer lacks its groups",
    ],
)
def test_a_malformed_trainer_state_is_one_line_on_resume_and_export(tmp_path, spoil, expected) -> None:
    run = tmp_path / "run"
    train_ppo(tiny_config(total_steps=32, precision="fp32"), run)
    good = export_teacher(run, tmp_path / "pong.pt")  # a good teacher a bad export must not replace
    good_bytes = good.read_bytes()
    state_path = run / "trainer_state.pt"
    state = torch.load(state_path, weights_only=True)
    spoil(state)
    torch.save(state, state_path)
    with pytest.raises(UserError) as err:
        train_ppo(tiny_config(total_steps=64, precision="fp32"), run)
    message = _one_line(err)
    assert expected in message and str(state_path) in message, message
    if "param_groups" not in state["optimizer"]:  # export does not need the optimizer's state
        assert export_teacher(run, good) == good
        return
    with pytest.raises(UserError) as err:
        export_teacher(run, good)
    message = _one_line(err)
    if "fit the teacher network" in expected:  # the model lacks policy_head.weight: the reader's check
        expected = "makes no readable teacher (has no policy_head.weight matrix in its state_dict"
        assert f"so {str(good)!r} was not written" in message, message
    assert expected in message and str(state_path) in message, message
    assert good.read_bytes() == good_bytes


def test_a_trainer_state_from_before_a_machine_setting_existed_still_resumes(tmp_path) -> None:
    """Machine settings (precision, channels_last...) may be missing from an older state: they take
    their defaults, as they always did; the learning problem's may not."""
    from agents.ppo import read_trainer_state

    run = tmp_path / "run"
    train_ppo(tiny_config(total_steps=32, precision="fp32"), run)
    state = torch.load(run / "trainer_state.pt", weights_only=True)
    for name in ("precision", "channels_last"):
        del state["config"][name]
    torch.save(state, run / "trainer_state.pt")
    saved = read_trainer_state(run / "trainer_state.pt")
    assert (saved.config.precision, saved.config.channels_last) == ("auto", True)
    assert (saved.global_step, saved.update) == (32, 1)


def test_export_teacher_card_plays_the_exported_file_sampled_and_greedy(tmp_path) -> None:
    """``export-teacher --card-episodes N``: the card's scores are games of exactly that file."""
    from agents.model_card import evaluate_and_card

    train_ppo(tiny_config(total_steps=32, precision="fp32"), tmp_path / "run")
    shipped = export_teacher(tmp_path / "run", tmp_path / "pong.pt")
    card, scores, greedy = evaluate_and_card(shipped, episodes=2, seed=3)
    assert card == tmp_path / "pong.md" and len(scores.scores) == len(greedy.scores) == 2
    text = card.read_text()
    assert f"--teacher {shipped} --episodes 2 --seed 3" in text
    assert f"{scores.mean:.2f}" in text and f"{greedy.mean:.2f}" in text


def _gae_by_definition(rewards, values, dones, next_value, next_done, gamma, lam):
    """GAE as its defining sum, sum_k (gamma lam)^k delta_{t+k}, cut at the episode's end."""
    steps, envs = rewards.shape
    ends = torch.cat([dones[1:], next_done[None]])  # ends[t]: step t's next observation is a new episode
    following = torch.cat([values[1:], next_value[None]])
    deltas = rewards + gamma * following * (1 - ends) - values
    out = torch.zeros_like(rewards)
    for n in range(envs):
        for t in range(steps):
            for k in range(steps - t):
                out[t, n] += (gamma * lam) ** k * deltas[t + k, n]
                if ends[t + k, n]:
                    break
    return out


@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_generalised_advantages_match_their_definition_and_stop_at_episode_ends(lam: float) -> None:
    gen = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(6, 2, generator=gen), torch.randn(6, 2, generator=gen)
    dones = torch.zeros(6, 2)
    dones[3, 0] = 1.0  # env 0: an episode ends after step 2, a new one starts at step 3
    next_value, next_done = torch.randn(2, generator=gen), torch.tensor([0.0, 1.0])
    adv, returns = generalised_advantages(rewards, values, dones, next_value, next_done, 0.9, lam)
    expected = _gae_by_definition(rewards, values, dones, next_value, next_done, 0.9, lam)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(returns, adv + values)
    # lam 1, env 0, step 2 (its episode's last): the reward alone, nothing bootstrapped past the end.
    if lam == 1.0:
        assert adv[2, 0].item() == pytest.approx(rewards[2, 0].item() - values[2, 0].item())
        # env 0, step 5 (the rollout's last, episode still going): bootstrapped from next_value.
        expected_last = rewards[5, 0] + 0.9 * next_value[0] - values[5, 0]
        assert adv[5, 0].item() == pytest.approx(expected_last.item())
