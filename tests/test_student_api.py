"""The observation contract of a loaded student and teacher, SB3-style predict, and the check of a
user's own environment against the settings record (policy_distill/policy.py)."""

from __future__ import annotations

import copy
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from ale_py.vector_env import AtariVectorEnv

import policy_distill.envs as envs_module
from agents.loading import load_teacher
from policy_distill.errors import UserError
from policy_distill.policy import as_observation, env_kwargs
from policy_distill.settings import EnvSettings
from policy_distill.student import load_student

SETTINGS = EnvSettings("pong")


@pytest.fixture(scope="module")
def student(tmp_path_factory, write_student_file):
    """A randomly initialised student, loaded from a checkpoint file as a user would."""
    path = write_student_file(tmp_path_factory.mktemp("student") / "best.pt", SETTINGS, seed=0, step=0)
    return load_student(path)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, write_teacher_file):
    """A randomly initialised teacher, loaded from a checkpoint file."""
    return load_teacher(
        write_teacher_file(tmp_path_factory.mktemp("teacher") / "teacher.pt", SETTINGS, seed=1)
    )


@pytest.fixture(params=["student", "teacher"])
def policy(request, student, teacher):
    """Both loaded-policy types: the contract is the same."""
    return student if request.param == "student" else teacher


@pytest.fixture
def obs(rng) -> np.ndarray:
    """``[3, 4, 84, 84] uint8``, as AtariVectorEnv gives for 3 environments."""
    return rng.integers(0, 256, (3, 4, 84, 84), dtype=np.uint8)


def test_every_accepted_form_gives_the_same_log_probs(policy, obs) -> None:
    with torch.no_grad():
        expected = policy.log_probs(torch.from_numpy(obs).float() / 255)  # the float fast path
        assert expected.shape == (3, 6) and expected.dtype == torch.float32
        assert torch.allclose(expected.exp().sum(-1), torch.ones(3))
        strided = np.zeros((3, 4, 84, 168), np.uint8)
        strided[..., ::2] = obs
        read_only = obs.copy()
        read_only.flags.writeable = False
        for form in (obs, torch.from_numpy(obs), strided[..., ::2], read_only):
            torch.testing.assert_close(policy.log_probs(form), expected, rtol=0, atol=0)
            torch.testing.assert_close(policy(form), expected, rtol=0, atol=0)
        for i in range(3):  # one environment's observation, no batch dimension -> [A]
            # Compared with a batch of one: kernels for other batch sizes differ in the last bit.
            single = policy.log_probs(torch.from_numpy(obs[i : i + 1]).float() / 255)[0]
            torch.testing.assert_close(policy.log_probs(obs[i]), single, rtol=0, atol=0)
            torch.testing.assert_close(policy.log_probs(torch.from_numpy(obs[i])), single, rtol=0, atol=0)
            torch.testing.assert_close(single, expected[i])
        half = torch.from_numpy(obs).double() / 255  # other float dtypes are cast to float32
        torch.testing.assert_close(policy.log_probs(half), expected)


def test_float_fast_path_is_passed_on_and_keeps_input_gradients(policy, obs) -> None:
    x = (torch.from_numpy(obs).float() / 255).requires_grad_(True)
    assert as_observation(x).x is x  # no copy, no conversion: training pays nothing
    policy.log_probs(x)[:, 0].sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "bad, hint",
    [
        (np.zeros((2, 4, 84, 84), np.float32), "numpy floats are not taken"),
        (
            np.zeros((2, 84, 84, 4), np.uint8),
            "channels-last: move the stack axis first, e.g. obs.transpose(0, 3, 1, 2)",
        ),
        (torch.zeros((84, 84, 4), dtype=torch.uint8), "e.g. obs.permute(2, 0, 1)"),
        (torch.zeros(2, 3, 84, 84, dtype=torch.uint8), "torch uint8 [2, 3, 84, 84]"),
        (torch.zeros(2, 4, 84, 84, dtype=torch.int64), "torch int64"),
        (np.zeros((2, 1, 4, 84, 84), np.uint8), "numpy uint8 [2, 1, 4, 84, 84]"),
        (np.zeros((210, 160, 3), np.uint8), "numpy uint8 [210, 160, 3]"),
        (torch.zeros(2, 4, 84, 84, dtype=torch.bool), "torch bool"),
        ([[0] * 84] * 84, "got list"),
    ],
)
def test_anything_else_is_refused_with_one_line_naming_shape_and_dtype(
    policy,
    bad,
    hint: str,
) -> None:
    for method in (policy.log_probs, policy.act, lambda o: policy.predict(o)):
        with pytest.raises(UserError) as e:
            method(bad)
        message = str(e.value)
        assert "\n" not in message
        assert "[B, 4, 84, 84] or [4, 84, 84] uint8" in message and hint in message


def test_act_and_predict_shapes_and_determinism(policy, obs) -> None:
    greedy = policy.log_probs(obs).argmax(-1)
    actions = policy.act(obs, greedy=True)
    assert actions.dtype == torch.int64 and actions.shape == (3,) and torch.equal(actions, greedy)
    assert policy.act(obs[0], greedy=True).shape == () and int(policy.act(obs[0], greedy=True)) == greedy[0]
    predicted, state = policy.predict(obs, deterministic=True)
    assert state is None and isinstance(predicted, np.ndarray) and predicted.dtype == np.int64
    np.testing.assert_array_equal(predicted, greedy.numpy())
    single, _ = policy.predict(obs[1], deterministic=True)  # SB3: one observation -> a 0-d action
    assert single.shape == () and single == greedy[1]
    a = policy.predict(obs, generator=torch.Generator().manual_seed(3))[0]
    b = policy.predict(obs, generator=torch.Generator().manual_seed(3))[0]
    np.testing.assert_array_equal(a, b)
    assert ((a >= 0) & (a < 6)).all()


def test_sampled_predict_draws_from_the_policys_probabilities(policy, obs) -> None:
    """Sampled actions of one observation, counted over many draws, match exp(log_probs).

    The random fixtures are nearly uniform (every probability within 0.16-0.18), where uniform or
    mis-ordered sampling would look right, so a copy's policy-head bias is shifted to make the
    distribution lopsided (about 0.45 ... 0.01) while it still depends on the observation."""
    lopsided = copy.deepcopy(policy)
    with torch.no_grad():
        lopsided.net.policy_head.bias += torch.tensor([0.45, 0.25, 0.15, 0.1, 0.04, 0.01]).log()
    n = 2000
    draws = np.repeat(obs[:1], n, axis=0)
    p = lopsided.log_probs(draws[:1])[0].detach().exp().double().numpy()
    assert p.max() > 0.35 and p.min() < 0.03
    actions, _ = lopsided.predict(draws, generator=torch.Generator().manual_seed(0))
    frequencies = np.bincount(actions, minlength=6) / n
    # Each frequency is a binomial proportion: 5 standard errors (at most 0.056 here) make a false
    # failure of a correct sampler about 1 in 10^6 per action, while greedy, uniform, reversed or
    # temperature-2 sampling is off by 0.14 or more on the likeliest action.
    np.testing.assert_array_less(np.abs(frequencies - p), 5 * np.sqrt(p * (1 - p) / n))


def test_act_refuses_unscaled_float_pixels(policy, obs) -> None:
    with pytest.raises(UserError, match=r"pixels / 255 in \[0, 1\], got values in \[0, 255\]"):
        policy.act(torch.from_numpy(obs).float())
    with pytest.raises(UserError, match="in \\[0, 1\\]"):
        policy.predict(torch.from_numpy(obs).float())


def test_action_meanings_follow_the_minimal_action_set(student) -> None:
    assert student.action_meanings == ("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE")
    assert len(student.action_meanings) == student.num_actions
    assert student.env_id == "ALE/Pong-v5"


def test_env_kwargs_are_what_the_toolkit_builds_its_environment_with(monkeypatch) -> None:
    settings = EnvSettings("breakout", sticky_action_prob=0.25, noop_max=7, life_loss_terminal=True)
    captured: dict = {}
    monkeypatch.setattr(envs_module, "AtariVectorEnv", lambda game, n, **kw: captured.update(kw, game=game))
    envs_module.make_vector_env(settings, 2)
    assert captured.pop("game") == "breakout"
    loop_choices = {"batch_size", "num_threads", "autoreset_mode"}  # the user's loop decides these
    assert {k: v for k, v in captured.items() if k not in loop_choices} == {
        k: v for k, v in env_kwargs(settings).items() if k != "full_action_space"
    }


def test_check_env_accepts_the_recorded_settings_and_refuses_others(student) -> None:
    env = student.make_env(2)
    try:
        checked = student.check_env(env)
        assert {"sticky_action_prob", "frameskip", "noop_max", "max_episode_frames", "game"} <= set(checked)
        obs, _ = env.reset(seed=0)
        actions, _ = student.predict(obs)
        env.step(actions)
    finally:
        env.close()
    cases = [
        ({}, "sticky_action_prob: 0.0 != 0.25"),  # ALE/*-v5's default sticky actions
        ({**student.env_kwargs(), "frameskip": 5}, "frameskip: 4 != 5"),
        ({**student.env_kwargs(), "episodic_life": True}, "episodic_life=True"),
    ]
    for kwargs, expected in cases:
        env = gymnasium.make_vec("ALE/Pong-v5", num_envs=1, vectorization_mode="vector_entry_point", **kwargs)
        try:
            with pytest.raises(UserError, match=expected) as e:
                student.check_env(env)
            assert "\n" not in str(e.value) and "student.env_kwargs()" in str(e.value)
        finally:
            env.close()
    env = gymnasium.make_vec("ALE/SpaceInvaders-v5", num_envs=1, **student.env_kwargs())
    try:
        with pytest.raises(UserError, match="plays space_invaders, the student plays pong"):
            student.check_env(env)
    finally:
        env.close()
    env = gymnasium.make_vec("ALE/Breakout-v5", num_envs=1, **student.env_kwargs())
    try:
        with pytest.raises(UserError, match="has 4 actions"):
            student.check_env(env)
    finally:
        env.close()


def test_check_env_of_an_unrecorded_environment_checks_its_spaces_and_warns(student) -> None:
    env = AtariVectorEnv("pong", 1, **student.env_kwargs())
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert student.check_env(env) == ["observation space", "action space"]
        assert any("only its spaces were checked" in str(w.message) for w in caught)
    finally:
        env.close()
    env = AtariVectorEnv("pong", 1, stack_num=2)
    try:
        with pytest.raises(UserError, match=r"uint8 \[2, 84, 84\], the student takes uint8 \[4, 84, 84\]"):
            student.check_env(env)
    finally:
        env.close()
