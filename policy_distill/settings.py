"""Games and the environment settings record shared by teachers, datasets and students.

One :class:`EnvSettings` is written into every teacher checkpoint, dataset and student
checkpoint; :meth:`EnvSettings.check_matches` turns any difference into a clear error, because
a policy that was trained on one preprocessing and run on another silently plays worse.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from policy_distill.errors import UserError

PRECISIONS = ("fp32", "bf16")
"""Resolved training precisions: float32, or bf16 autocast (``devices.autocast``)."""
PRECISION_CHOICES = ("auto", *PRECISIONS)
"""What a user may ask for; ``auto`` resolves by the hardware (``devices.resolve_precision``)."""


@dataclass(frozen=True)
class GameInfo:
    """Static facts about one supported Atari game."""

    name: str
    """Canonical snake_case name, also the ale-py ROM id (``space_invaders``)."""
    num_actions: int
    """Size of the minimal action set."""
    human_score: float
    """Human reference score used for human normalisation (Mnih et al. 2015)."""
    random_score: float
    """Uniform-random policy score used for human normalisation."""


GAMES: dict[str, GameInfo] = {
    "pong": GameInfo("pong", 6, human_score=14.6, random_score=-20.7),
    "breakout": GameInfo("breakout", 4, human_score=30.5, random_score=1.7),
    "space_invaders": GameInfo("space_invaders", 6, human_score=1668.7, random_score=148.0),
}


def _squash(name: str) -> str:
    """Lower-case a game name and drop gym prefixes/suffixes and separators."""
    name = name.strip()
    name = re.sub(r"^ALE/", "", name, flags=re.IGNORECASE)
    name = re.sub(r"(NoFrameskip)?-v\d+$", "", name, flags=re.IGNORECASE)
    return re.sub(r"[\s_\-]", "", name).lower()


_ALIASES = {_squash(game): game for game in GAMES}


def game_info(name: str) -> GameInfo:
    """Look a game up as a user types it: ``pong``, ``SpaceInvaders``, ``ALE/Breakout-v5``.

    Raises:
        UserError: for an unknown game, listing the known ones.
    """
    key = _squash(name)
    if key not in _ALIASES:
        known = ", ".join(sorted(GAMES))
        raise UserError(f"unknown game {name!r}; known games: {known}")
    return GAMES[_ALIASES[key]]


def human_normalized(game: str, score: float) -> float:
    """Human-normalised score: 0 is random play, 1 is the human reference."""
    info = game_info(game)
    return (score - info.random_score) / (info.human_score - info.random_score)


@dataclass(frozen=True)
class EnvSettings:
    """Everything about the environment that changes what a policy sees or how it is scored.

    The defaults follow the common Atari protocol of DQN/A3C-era work (and RL Zoo): 84x84
    grayscale frames, a 4-frame stack, action repeat 4 with a max over the last two frames, up
    to 30 no-op starts, no sticky actions (``ALE/*-v5`` would add 0.25), FIRE pressed on reset.
    """

    game: str
    """Canonical game name (see :data:`GAMES`)."""
    frameskip: int = 4
    """Emulator frames per agent step (action repeat)."""
    frame_size: int = 84
    """Side of the square grayscale frame in pixels."""
    stack: int = 4
    """Frames stacked into one observation, newest last."""
    sticky_action_prob: float = 0.0
    """Probability that the emulator repeats the previous action (ALE v5 uses 0.25)."""
    noop_max: int = 30
    """Up to this many random no-op steps after each reset."""
    life_loss_terminal: bool = False
    """Learner sees a terminal at each life loss while the game goes on (SB3's EpisodicLife)."""
    clip_rewards: bool = True
    """The learner trains on sign(reward). Scores are always raw: the env never clips."""
    fire_reset: bool = True
    """Press FIRE after reset in games that need it to start."""
    max_episode_frames: int = 108_000
    """Emulator frames after which a game is truncated (30 minutes of play)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "game", game_info(self.game).name)

    @property
    def num_actions(self) -> int:
        return GAMES[self.game].num_actions

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> EnvSettings:
        """Rebuild settings from a stored record; unknown keys are a corrupted or foreign record."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(record) - names
        if unknown or "game" not in record:
            raise UserError(
                f"settings record has unexpected fields {sorted(unknown)}; "
                "the file was written by another tool or version"
            )
        return cls(**record)

    def differences(self, other: EnvSettings) -> list[str]:
        """Human-readable ``field: a != b`` lines for every field that differs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]

    def check_matches(self, other: EnvSettings, *, mine: str, theirs: str) -> None:
        """Raise a one-line error if ``other`` differs from ``self`` in any field.

        ``clip_rewards`` and ``life_loss_terminal`` only change what a learner trains on, never
        what a policy sees or how a game is scored, so they are not compared.
        """
        learner_only = ("clip_rewards", "life_loss_terminal")
        diffs = [d for d in self.differences(other) if not d.startswith(learner_only)]
        if diffs:
            raise UserError(
                f"settings of the {mine} and the {theirs} do not match ({'; '.join(diffs)}); "
                f"use a {theirs} made with the {mine}'s settings"
            )
