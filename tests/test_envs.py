"""The environment module: raw rewards, and whole-game accounting with life-loss signals."""

from __future__ import annotations

import numpy as np

from policy_distill.envs import GameTracker, make_vector_env
from policy_distill.settings import EnvSettings


def test_observation_layout_and_raw_rewards(rng) -> None:
    env = make_vector_env(EnvSettings("pong"), 2)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    assert (obs[:, :3] == 0).all() and (obs[:, 3] > 0).any()  # the stack starts with zero frames
    env.close()
    # Space Invaders pays 5 to 30 points per alien: a clipping environment would give 1.
    env = make_vector_env(EnvSettings("space_invaders"), 2)
    env.reset(seed=0)
    rewards = []
    for _ in range(300):
        _, reward, _, _, _ = env.step(rng.integers(0, 6, size=2))
        rewards.extend(reward[reward != 0])
    env.close()
    assert rewards and max(rewards) >= 5


def test_life_loss_signals_do_not_end_the_game(rng) -> None:
    settings = EnvSettings("breakout", life_loss_terminal=True)
    env = make_vector_env(settings, 1)
    _, info = env.reset(seed=3)
    tracker = GameTracker(1, life_loss_terminal=True)
    ids = np.arange(1)
    tracker.start(ids, info["episode_frame_number"])
    terminals, games, lives_at_terminal = 0, [], []
    while len(games) < 2:
        _, reward, terminated, truncated, info = env.step(rng.integers(0, 4, size=1))
        game_over, scores, lengths = tracker.update(
            ids, reward, terminated, truncated, info["episode_frame_number"]
        )
        if terminated[0]:
            terminals += 1
            lives_at_terminal.append(int(info["lives"][0]))
        games.extend(zip(scores, lengths))
        if game_over[0]:
            assert info["lives"][0] == 5, "a game over restarts the game with all lives"
    env.close()
    # Breakout has 5 lives: each game gives 5 terminal signals but only one game over.
    assert terminals == 10
    assert lives_at_terminal == [4, 3, 2, 1, 5] * 2
    assert all(length > 0 for _, length in games)
