"""Build the Atari environment, one way for every use: teacher training, collection, evaluation.

The environment is ale-py's C++ vectorised ``AtariVectorEnv``. Two of its defaults are traps
that this module closes: it clips rewards by default (scores must be raw, so clipping is always
off here and learners clip for themselves), and its ``episodic_life`` resets the whole game at a
life loss (the SB3 meaning, game goes on, is ``life_loss_info``).
"""

from __future__ import annotations

import numpy as np
from ale_py.vector_env import AtariVectorEnv

from policy_distill.settings import EnvSettings


def make_vector_env(
    settings: EnvSettings,
    num_envs: int,
    *,
    num_threads: int = 0,
    batch_size: int = 0,
) -> AtariVectorEnv:
    """Create ``num_envs`` copies of the game described by ``settings``.

    Observations are ``[num_envs, stack, frame_size, frame_size] uint8``, newest frame last.
    Autoreset is "same step": the observation returned with ``terminated | truncated`` is
    already the first observation of the next game.

    Args:
        settings: The settings record.
        num_envs: Number of parallel emulators.
        num_threads: C++ worker threads (0: one per core).
        batch_size: For asynchronous use, how many environments ``recv`` returns (0: all).
    """
    return AtariVectorEnv(
        settings.game,
        num_envs,
        batch_size=batch_size,
        num_threads=num_threads,
        max_num_frames_per_episode=settings.max_episode_frames,
        repeat_action_probability=settings.sticky_action_prob,
        autoreset_mode="SameStep",
        img_height=settings.frame_size,
        img_width=settings.frame_size,
        grayscale=True,
        stack_num=settings.stack,
        frameskip=settings.frameskip,
        maxpool=True,
        noop_max=settings.noop_max,
        episodic_life=False,
        life_loss_info=settings.life_loss_terminal,
        reward_clipping=False,
        use_fire_reset=settings.fire_reset,
    )


class GameTracker:
    """Sums raw rewards per environment and reports whole-game scores.

    With ``life_loss_terminal`` the environment signals ``terminated`` at every life loss, but
    only a game over resets the emulator. A game over then shows as the episode frame counter
    going back to the start, which is how this tracker tells the two apart.
    """

    def __init__(self, num_envs: int, *, life_loss_terminal: bool = False) -> None:
        self.life_loss_terminal = life_loss_terminal
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.lengths = np.zeros(num_envs, dtype=np.int64)
        self._frame = np.zeros(num_envs, dtype=np.int64)

    def start(self, env_ids: np.ndarray, episode_frame_number: np.ndarray) -> None:
        """Begin accounting for environments whose first observation just arrived."""
        self.returns[env_ids] = 0.0
        self.lengths[env_ids] = 0
        self._frame[env_ids] = episode_frame_number

    def update(
        self,
        env_ids: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        episode_frame_number: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Account one step of the environments ``env_ids``.

        Args:
            env_ids: ``[n] int`` which environments stepped.
            rewards: ``[n]`` raw rewards.
            terminated, truncated: ``[n] bool`` from the environment.
            episode_frame_number: ``[n] int`` from ``info`` after the step.

        Returns:
            ``(game_over [n] bool, scores [k] float64, lengths [k] int64)``: which of the
            environments finished a game on this step, and the raw score and agent-step length
            of each finished game, in the order of ``env_ids``.
        """
        self.returns[env_ids] += rewards
        self.lengths[env_ids] += 1
        if self.life_loss_terminal:
            restarted = episode_frame_number < self._frame[env_ids]
            game_over = truncated | (terminated & restarted)
        else:
            game_over = terminated | truncated
        self._frame[env_ids] = episode_frame_number
        ended = env_ids[game_over]
        scores, lengths = self.returns[ended].copy(), self.lengths[ended].copy()
        self.returns[ended] = 0.0
        self.lengths[ended] = 0
        return game_over, scores, lengths
