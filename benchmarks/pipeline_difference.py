"""How far ale-py's AtariVectorEnv is from SB3's AtariWrapper (RL Zoo) and CleanRL's pipeline.

Two measurements, written up in ``docs/imported-teachers.md``:

1. Same emulator states. One ``<Game>NoFrameskip-v4`` emulator is stepped 4 frames per action;
   from the last two raw frames of every step it builds the frame each pipeline would show:

   - ale-py ``AtariVectorEnv``: ALE palette grayscale of each frame, max of the two, 84x84 INTER_AREA;
   - SB3 ``AtariWrapper`` (RL Zoo): max of the two RGB frames, OpenCV grayscale, 84x84 INTER_AREA;
   - CleanRL ``ppo_atari.py``: max of the two RGB frames, 84x84 INTER_AREA on RGB, then grayscale.

   A real ``AtariVectorEnv`` and a real SB3 ``AtariWrapper`` env run in lockstep with it (same
   seed, same actions, no no-op starts, the FIRE/2 start of SB3's FireResetEnv replayed on the
   others) and every frame they return is checked against the rebuilt one, which proves that the
   states are aligned and the rebuilt pipelines are exact. The teacher plays (sampling from its
   policy on the ale-py frames) and is also asked for its policy on the SB3 and CleanRL stacks of
   the same states: how often its argmax changes, and by how much its distribution moves.
   CleanRL's frame stack differs too: gymnasium's ``FrameStack`` fills the stack with copies of
   the first frame at each reset, and behind ``EpisodicLifeEnv`` a lost life is a reset, where
   ale-py starts from zero frames and keeps the stack across lives. The teacher is also asked
   for its policy on that CleanRL stack (``cleanrl_stack``), overall and on the steps where the
   two stacks hold different frames (the three after a game start or a lost life).

2. Scores. The teacher plays whole games in a real ``AtariVectorEnv`` configured as
   ``agents.imported.imported_settings`` and in real SB3 ``AtariWrapper`` envs with RL Zoo's
   defaults (1-30 no-ops, FIRE reset, episodic life), with a 4-frame stack as ``VecFrameStack``.

Usage (a few minutes on one CPU core; the teacher may be any ``load_teacher`` path)::

    nice -n 19 .venv/bin/python benchmarks/pipeline_difference.py \\
        --teacher runs/teachers/pong/teacher.pt --game pong --steps 3000 --score-episodes 8 \\
        --json docs/pipeline_difference_pong.json

Needs ``opencv-python-headless`` and ``stable-baselines3`` (the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import deque
from pathlib import Path
from typing import Any

import ale_py
import cv2
import gymnasium as gym
import numpy as np
import torch
from ale_py.vector_env import AtariVectorEnv
from stable_baselines3.common.atari_wrappers import AtariWrapper

from agents.imported import imported_settings
from agents.loading import Teacher, load_teacher
from policy_distill.envs import GameTracker, make_vector_env
from policy_distill.policy import to_float
from policy_distill.settings import game_info

gym.register_envs(ale_py)

SIZE = 84


def ale_frame(gray_a: np.ndarray, gray_b: np.ndarray) -> np.ndarray:
    """ale-py ``AtariVectorEnv``: ``[210, 160]`` palette-grayscale frames -> max -> ``[84, 84]``."""
    return cv2.resize(np.maximum(gray_a, gray_b), (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def sb3_frame(rgb_a: np.ndarray, rgb_b: np.ndarray) -> np.ndarray:
    """SB3 ``MaxAndSkipEnv`` + ``WarpFrame``: ``[210, 160, 3]`` RGB -> max -> gray -> ``[84, 84]``."""
    gray = cv2.cvtColor(np.maximum(rgb_a, rgb_b), cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def cleanrl_frame(rgb_a: np.ndarray, rgb_b: np.ndarray) -> np.ndarray:
    """CleanRL (``MaxAndSkipEnv``, ``ResizeObservation``, ``GrayScaleObservation``): resize, then gray."""
    small = cv2.resize(np.maximum(rgb_a, rgb_b), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)


PIPELINES = {"ale": ale_frame, "sb3": sb3_frame, "cleanrl": cleanrl_frame}


def env_id(game: str) -> str:
    return "".join(part.capitalize() for part in game_info(game).name.split("_")) + "NoFrameskip-v4"


class RawEmulator:
    """One NoFrameskip-v4 emulator, stepped ``frameskip`` frames per action like both pipelines."""

    def __init__(self, game: str, frameskip: int = 4) -> None:
        self.env = gym.make(env_id(game))
        self.ale = self.env.unwrapped.ale
        self.actions = self.env.unwrapped._action_set
        self.frameskip = frameskip

    def reset(self, seed: int) -> None:
        self.env.reset(seed=seed)

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool]:
        """Act; return ({pipeline: [84, 84] uint8}, raw reward, game over)."""
        reward, rgb, gray = 0.0, [], []
        for i in range(self.frameskip):
            reward += self.ale.act(self.actions[action])
            if i >= self.frameskip - 2:
                rgb.append(self.ale.getScreenRGB())
                gray.append(self.ale.getScreenGrayscale())
            if self.ale.game_over():
                break
        while len(rgb) < 2:  # game over early in the skip: this frame is never shown to a policy
            rgb.append(self.ale.getScreenRGB())
            gray.append(self.ale.getScreenGrayscale())
        frames = {
            "ale": ale_frame(gray[0], gray[1]),
            "sb3": sb3_frame(rgb[0], rgb[1]),
            "cleanrl": cleanrl_frame(rgb[0], rgb[1]),
        }
        return frames, reward, self.ale.game_over()


def pixel_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """``a``, ``b`` ``[T, 84, 84] uint8``: how far apart, in 0-255 grey levels."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {
        "mean_abs_diff": float(d.mean()),
        "max_abs_diff": int(d.max()),
        "fraction_pixels_differing": float((d > 0).mean()),
        "fraction_pixels_differing_by_more_than_8": float((d > 8).mean()),
        "fraction_frames_with_any_difference": float((d.reshape(len(d), -1).max(1) > 0).mean()),
        "mean_abs_diff_on_differing_pixels": float(d[d > 0].mean()) if (d > 0).any() else 0.0,
    }


@torch.no_grad()
def same_states(teacher: Teacher, game: str, steps: int, seed: int) -> dict[str, Any]:
    """Measurement 1: every pipeline's frame of the same emulator states, and the teacher on them."""
    raw = RawEmulator(game)
    vec = AtariVectorEnv(
        game_info(game).name,
        1,
        num_threads=1,
        noop_max=0,
        use_fire_reset=False,
        episodic_life=False,
        reward_clipping=False,
        repeat_action_probability=0.0,
        autoreset_mode="SameStep",
    )
    sb3 = AtariWrapper(gym.make(env_id(game)), noop_max=0, terminal_on_life_loss=False, clip_reward=False)
    gen = torch.Generator().manual_seed(seed)
    frames: dict[str, list[np.ndarray]] = {k: [] for k in PIPELINES}
    checks = {"vector_env_frames_equal": 0, "sb3_wrapper_frames_equal": 0, "frames_checked": 0}
    logps: dict[str, list[torch.Tensor]] = {k: [] for k in PIPELINES}
    clean_stack_logps: list[torch.Tensor] = []
    since_restart: list[int] = []  # steps since the CleanRL stack was last refilled
    episodes, t = 0, 0
    while t < steps:
        episode_seed = seed + episodes
        raw.reset(episode_seed)
        vec.reset(seed=episode_seed)
        sb3_obs, _ = sb3.reset(seed=episode_seed)  # FireResetEnv: FIRE, then action 2 (4 frames each)
        stacks = {k: deque([np.zeros((SIZE, SIZE), np.uint8)] * 4, maxlen=4) for k in PIPELINES}
        for action in (1, 2):  # replay SB3's reset on the raw emulator and the vector env
            shown, _, _ = raw.step(action)
            vec_obs, *_ = vec.step(np.array([action]))
        for k in PIPELINES:
            stacks[k].append(shown[k])
        clean_stack = deque([shown["cleanrl"]] * 4, maxlen=4)  # FrameStack: copies of the first frame
        steps_since, lives = 0, raw.ale.lives()
        _check(checks, vec_obs[0, -1], sb3_obs[..., 0], shown)
        over = False
        while not over and t < steps:
            batch = torch.from_numpy(
                np.stack([*(np.stack(stacks[k]) for k in PIPELINES), np.stack(clean_stack)])
            )
            logp = teacher.log_probs(to_float(batch))
            for k, row in zip(PIPELINES, logp[:-1], strict=True):
                logps[k].append(row)
            clean_stack_logps.append(logp[-1])
            since_restart.append(steps_since)
            action = int(torch.multinomial(logp[0].exp(), 1, generator=gen))  # plays on ale-py frames
            shown, _, over = raw.step(action)
            vec_obs, _, vec_term, vec_trunc, _ = vec.step(np.array([action]))
            sb3_obs, _, sb3_term, sb3_trunc, _ = sb3.step(action)
            if not over:
                _check(checks, vec_obs[0, -1], sb3_obs[..., 0], shown)
            for k in PIPELINES:
                stacks[k].append(shown[k])
                frames[k].append(shown[k])
            steps_since += 1
            if raw.ale.lives() < lives:  # EpisodicLifeEnv: a reset for CleanRL's FrameStack
                clean_stack.extend([shown["cleanrl"]] * 4)
                steps_since = 0
            else:
                clean_stack.append(shown["cleanrl"])
            lives = raw.ale.lives()
            t += 1
        episodes += 1
    vec.close()
    sb3.close()

    out: dict[str, Any] = {"steps": t, "episodes_started": episodes, "alignment": checks, "pixels": {}}
    arrays = {k: np.stack(v) for k, v in frames.items()}
    for a, b in (("ale", "sb3"), ("ale", "cleanrl"), ("sb3", "cleanrl")):
        out["pixels"][f"{a}_vs_{b}"] = pixel_stats(arrays[a], arrays[b])
    lp = {k: torch.stack(v) for k, v in logps.items()}
    out["teacher"] = {}
    for other in ("sb3", "cleanrl"):
        p, q = lp["ale"].exp(), lp[other].exp()
        out["teacher"][f"ale_vs_{other}"] = {
            "argmax_disagreement": float((lp["ale"].argmax(-1) != lp[other].argmax(-1)).float().mean()),
            "mean_total_variation": float(0.5 * (p - q).abs().sum(-1).mean()),
            "mean_kl_ale_to_other": float((p * (lp["ale"] - lp[other])).sum(-1).mean()),
            "max_total_variation": float(0.5 * (p - q).abs().sum(-1).max()),
        }
    clean = torch.stack(clean_stack_logps)
    differs = torch.tensor(since_restart) < 3  # the stacks hold different frames there
    for name, mask in (("all_steps", torch.ones_like(differs)), ("steps_where_stacks_differ", differs)):
        a, b = lp["ale"][mask], clean[mask]
        p, q = a.exp(), b.exp()
        out["teacher"][f"ale_vs_cleanrl_stack_{name}"] = {
            "steps": int(mask.sum()),
            "share_of_steps": float(mask.float().mean()),
            "argmax_disagreement": float((a.argmax(-1) != b.argmax(-1)).float().mean()) if len(a) else 0.0,
            "mean_total_variation": float(0.5 * (p - q).abs().sum(-1).mean()) if len(a) else 0.0,
            "mean_kl_ale_to_other": float((p * (a - b)).sum(-1).mean()) if len(a) else 0.0,
        }
    # Context for the disagreement: a teacher whose argmax never changes cannot disagree.
    argmax = lp["ale"].argmax(-1)
    out["teacher"]["mean_max_probability_ale"] = float(lp["ale"].exp().max(-1).values.mean())
    out["teacher"]["argmax_counts_ale"] = torch.bincount(argmax, minlength=lp["ale"].shape[-1]).tolist()
    changes = (argmax[1:] != argmax[:-1]).float().mean()
    out["teacher"]["argmax_changes_between_consecutive_steps"] = float(changes)
    return out


def _check(checks: dict[str, int], vec_frame: np.ndarray, sb3_frame_: np.ndarray, shown: dict) -> None:
    checks["frames_checked"] += 1
    checks["vector_env_frames_equal"] += int(np.array_equal(vec_frame, shown["ale"]))
    checks["sb3_wrapper_frames_equal"] += int(np.array_equal(sb3_frame_, shown["sb3"]))


@torch.no_grad()
def score_ale(teacher: Teacher, game: str, episodes: int, seed: int) -> list[float]:
    """Whole-game raw scores in a real AtariVectorEnv with the imported-teacher settings."""
    settings = imported_settings(game)
    num_envs = min(episodes, 4)
    env = make_vector_env(settings, num_envs, num_threads=1)
    obs, info = env.reset(seed=seed)
    tracker = GameTracker(num_envs, life_loss_terminal=settings.life_loss_terminal)
    gen = torch.Generator().manual_seed(seed)
    quota = np.array([episodes // num_envs + (i < episodes % num_envs) for i in range(num_envs)])
    scores: list[float] = []
    ids = np.arange(num_envs)
    while len(scores) < episodes:
        logp = teacher.log_probs(to_float(torch.from_numpy(obs)))
        actions = torch.multinomial(logp.exp(), 1, generator=gen).squeeze(-1).numpy()
        obs, reward, term, trunc, info = env.step(actions)
        over, finished, _ = tracker.update(ids, reward, term, trunc, info["episode_frame_number"])
        for i, s in zip(ids[over], finished, strict=True):
            if quota[i] > 0:
                quota[i] -= 1
                scores.append(float(s))
    env.close()
    return scores


@torch.no_grad()
def score_sb3(teacher: Teacher, game: str, episodes: int, seed: int) -> list[float]:
    """Whole-game raw scores in real SB3 AtariWrapper envs with RL Zoo's defaults."""
    env = AtariWrapper(gym.make(env_id(game)), clip_reward=False)  # noop 30, episodic life, FIRE reset
    gen = torch.Generator().manual_seed(seed)
    scores = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        stack = deque([np.zeros((SIZE, SIZE), np.uint8)] * 4, maxlen=4)  # VecFrameStack: zeros, newest last
        stack.append(obs[..., 0])
        total = 0.0
        while True:
            logp = teacher.log_probs(to_float(torch.from_numpy(np.stack(stack))[None]))
            action = int(torch.multinomial(logp[0].exp(), 1, generator=gen))
            obs, reward, term, trunc, _ = env.step(action)
            total += float(reward)
            stack.append(obs[..., 0])
            if trunc or (term and env.unwrapped.ale.game_over()):
                break
            if term:  # a lost life: EpisodicLifeEnv's soft reset (no-op, then FIRE and action 2)
                obs, _ = env.reset()
                stack.append(obs[..., 0])
        scores.append(total)
    env.close()
    return scores


def _teacher_steps(path: str) -> int | None:
    """Training steps recorded in a toolkit teacher checkpoint (None for other files)."""
    try:
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            record = torch.load(path, map_location="cpu", weights_only=True)
        return int(record["training"]["agent_steps"])
    except Exception:  # an SB3 zip, a CleanRL state dict, a shipped name
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="any load_teacher name or path")
    parser.add_argument("--game", default="pong")
    parser.add_argument("--steps", type=int, default=3000, help="agent steps for the same-state comparison")
    parser.add_argument("--score-episodes", type=int, default=0, help="whole games per pipeline (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    # Teachers written by the toolkit before checkpoint.package_versions stored str(torch.__version__)
    # hold a TorchVersion (a str subclass); allow that one class, nothing else.
    with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
        teacher = load_teacher(args.teacher, game=args.game)
    start = time.time()
    result: dict[str, Any] = {
        "game": game_info(args.game).name,
        "teacher": {
            "path": teacher.source.path,
            "sha256": teacher.source.sha256,
            "kind": teacher.source.kind,
            "agent_steps": _teacher_steps(args.teacher),
        },
        "versions": {
            "ale-py": ale_py.__version__,
            "opencv": cv2.__version__,
            "gymnasium": gym.__version__,
            "python": platform.python_version(),
        },
        "same_states": same_states(teacher, args.game, args.steps, args.seed),
    }
    if args.score_episodes:
        ale_scores = score_ale(teacher, args.game, args.score_episodes, args.seed + 10_000)
        sb3_scores = score_sb3(teacher, args.game, args.score_episodes, args.seed + 20_000)
        result["scores"] = {
            name: {"mean": float(np.mean(s)), "std": float(np.std(s)), "scores": s}
            for name, s in (("ale_vector_env", ale_scores), ("sb3_atari_wrapper", sb3_scores))
        }
    result["wall_time_s"] = round(time.time() - start, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
