"""Play a policy for whole games and report raw scores: one evaluator for every policy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from policy_distill.envs import GameTracker, make_vector_env
from policy_distill.losses import kl_divergence
from policy_distill.policy import Policy, sample_actions, to_float
from policy_distill.settings import EnvSettings, human_normalized


@dataclass(frozen=True)
class Scores:
    """Raw game scores of a finished evaluation."""

    game: str
    scores: list[float]
    lengths: list[int]
    visited_kl: list[float] | None = None
    """Per game, the mean KL(policy || reference) over the frames the policy acted on, where a
    reference policy was given: how far from its teacher a student is on its own games' states,
    not on the teacher's (which the held-out KL measures)."""

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        return float(np.std(self.scores))

    @property
    def human_normalized(self) -> float:
        return human_normalized(self.game, self.mean)

    def summary(self) -> dict[str, float | int | list[float]]:
        return {
            "episodes": len(self.scores),
            "mean": self.mean,
            "std": self.std,
            "human_normalized": self.human_normalized,
            "scores": self.scores,
            # Agent steps per game: a policy caught in a loop shows as games of one length.
            "lengths": self.lengths,
            **({"visited_kl": self.visited_kl} if self.visited_kl is not None else {}),
        }


@torch.no_grad()
def evaluate_policy(
    policy: Policy,
    settings: EnvSettings,
    episodes: int,
    *,
    seed: int = 1000,
    num_envs: int = 8,
    greedy: bool = False,
    device: torch.device | str = "cpu",
    reference: Policy | None = None,
) -> Scores:
    """Play ``episodes`` whole games and return their raw (unclipped) scores.

    Each of the parallel environments plays a fixed quota of games, decided up front, so the
    result is not biased towards short games (taking the first N games to finish would be).

    Args:
        policy: Anything with ``log_probs([B, 4, 84, 84] float) -> [B, A]``.
        settings: The settings record the policy was made for.
        episodes: Number of games.
        seed: Emulator and sampling seed (distinct from collection's default seed 0).
        greedy: Argmax actions instead of sampling from the policy.
        reference: A policy (the teacher) to measure ``policy`` against on the frames it acts
            on (:attr:`Scores.visited_kl`), on ``device`` like ``policy``; it plays no part in
            the games, so the scores are those of an evaluation without it.
    """
    num_envs = max(1, min(num_envs, episodes))
    quota = np.full(num_envs, episodes // num_envs)
    quota[: episodes % num_envs] += 1
    env = make_vector_env(settings, num_envs)
    tracker = GameTracker(num_envs, life_loss_terminal=settings.life_loss_terminal)
    env_ids = np.arange(num_envs)
    obs, info = env.reset(seed=seed)
    tracker.start(env_ids, info["episode_frame_number"])
    generator = torch.Generator().manual_seed(seed)
    scores: list[float] = []
    lengths: list[int] = []
    visited_kl: list[float] = []
    kl_sum = np.zeros(num_envs)  # per environment, over its current game's frames
    kl_frames = np.zeros(num_envs, dtype=np.int64)
    played = np.zeros(num_envs, dtype=np.int64)
    while (played < quota).any():
        x = to_float(torch.from_numpy(obs).to(device))
        logp = policy.log_probs(x)
        actions = sample_actions(
            logp, greedy=greedy, generator=generator if torch.device(device).type == "cpu" else None
        )
        if reference is not None:
            kl_sum += kl_divergence(logp, reference.log_probs(x), per_sample=True).double().cpu().numpy()
            kl_frames += 1
        obs, reward, terminated, truncated, info = env.step(actions.cpu().numpy().astype(np.int64))
        game_over, ended_scores, ended_lengths = tracker.update(
            env_ids, reward, terminated, truncated, info["episode_frame_number"]
        )
        for e, score, length in zip(env_ids[game_over], ended_scores, ended_lengths):
            if played[e] < quota[e]:
                scores.append(float(score))
                lengths.append(int(length))
                visited_kl.append(float(kl_sum[e] / max(kl_frames[e], 1)))
            played[e] += 1
            kl_sum[e], kl_frames[e] = 0.0, 0
    env.close()
    return Scores(
        game=settings.game,
        scores=scores,
        lengths=lengths,
        visited_kl=visited_kl if reference is not None else None,
    )
