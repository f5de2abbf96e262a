"""``load_teacher``: a shipped name or a checkpoint path -> a frozen, checked teacher policy.

Loaders are registered by file kind, so teachers trained elsewhere (Stable-Baselines3 zips,
CleanRL state dicts) plug in beside the toolkit's own format.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from agents.imported import is_cleanrl_state_dict, is_sb3_zip, load_cleanrl_state_dict, load_sb3_zip
from agents.teacher_file import teacher_from_record
from policy_distill.checkpoint import safe_torch_load, sha256_file
from policy_distill.errors import UserError
from policy_distill.settings import GAMES, EnvSettings, game_info

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


@dataclass(frozen=True)
class TeacherSource:
    """Where a teacher came from, recorded in datasets and students."""

    name: str
    """Shipped name or file name."""
    path: str
    """Absolute path of the file loaded."""
    sha256: str
    """SHA-256 of that file."""
    kind: str
    """Loader kind: ``policy-distill``, or for imported teachers ``sb3-ppo``, ``sb3-a2c``,
    ``sb3-dqn``, ``sb3-qrdqn``, ``cleanrl-ppo``, ``cleanrl-dqn`` (see ``agents/imported.py``)."""
    game_source: str = "file"
    """Where its game came from: ``file`` (recorded in it), ``file name`` (an RL Zoo name) or
    ``user`` (the file does not record it, and another game has as many actions: taken on the
    user's word, see :func:`load_teacher`)."""


class Teacher(nn.Module):
    """A frozen teacher policy: ``log_probs([B, 4, 84, 84] float in [0, 1]) -> [B, A]``.

    Parameters never require gradients, and the module stays in eval mode, so teacher
    input-gradients (the Sobolev targets) cost no parameter-gradient work.
    """

    def __init__(self, net: nn.Module, settings: EnvSettings, source: TeacherSource) -> None:
        super().__init__()
        self.net = net.eval()
        self.settings = settings
        self.source = source
        self.num_actions = settings.num_actions
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        # A teacher is never put in training mode (no dropout/batch-norm updates).
        return super().train(False)

    def log_probs(self, x: Any) -> Tensor:
        """Observations -> ``[B, A]`` float32 log-probabilities (``[A]`` for one unbatched observation).

        Takes what the environment gives, ``[B, 4, 84, 84]`` or ``[4, 84, 84]`` ``uint8`` pixels
        (numpy or torch, newest frame last), or, the fast path that training and the Sobolev
        targets use, a torch float tensor of pixels / 255, passed on unchanged so that
        input-gradients flow. Anything else is refused with one line (see
        :func:`policy_distill.policy.as_observation`).
        """
        from policy_distill.policy import contract_log_probs

        return contract_log_probs(self.net, x, self.settings)

    def forward(self, x: Any) -> Tensor:
        return self.log_probs(x)

    def act(self, obs: Any, *, greedy: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Observations -> ``[B] int64`` actions (``[]`` unbatched): sampled, or argmax when ``greedy``."""
        from policy_distill.policy import contract_act

        return contract_act(self.net, obs, self.settings, greedy=greedy, generator=generator)

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[Any, None]:
        """Stable-Baselines3's ``predict``: observations -> (``[B] int64`` numpy actions, ``None``);
        ``state`` and ``episode_start`` are ignored (a feed-forward policy has no recurrent state)."""
        from policy_distill.policy import contract_predict

        return contract_predict(
            self.net, observation, self.settings, deterministic=deterministic, generator=generator
        )

    @property
    def action_meanings(self) -> tuple[str, ...]:
        """Names of the actions in the order of the log-probabilities (``NOOP``, ``FIRE``...)."""
        from policy_distill.policy import action_meanings

        return action_meanings(self.settings.game)

    def env_kwargs(self) -> dict[str, Any]:
        """``gymnasium.make_vec`` / ``AtariVectorEnv`` arguments that reproduce the teacher's settings."""
        from policy_distill.policy import env_kwargs

        return env_kwargs(self.settings)

    def check_env(self, env: Any) -> list[str]:
        """Refuse with one line a vector environment whose settings differ from the teacher's;
        returns the settings checked (see :func:`policy_distill.policy.check_env`)."""
        from policy_distill.policy import check_env

        return check_env(self.settings, env, what="teacher")


def shipped_teachers() -> list[str]:
    """Names of the teachers committed under ``agents/pretrained``."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt"))


def _resolve(name_or_path: str | Path) -> tuple[Path, str]:
    text = str(name_or_path)
    path = Path(text)
    if path.suffix or path.exists() or "/" in text:
        return path, path.name
    try:
        game = game_info(text).name
    except UserError:
        game = text
    candidate = PRETRAINED_DIR / f"{game}.pt"
    if not candidate.exists():
        raise UserError(
            f"no shipped teacher named {text!r} (shipped: {', '.join(shipped_teachers()) or 'none'}); "
            "pass a checkpoint path or train one with `make teacher GAME=...`"
        )
    return candidate, game


def _warn_game_on_trust(path: Path, game: str) -> None:
    """Warn (stderr) when a file that does not record its game fits another game's action count."""
    same = [g for g, info in GAMES.items() if g != game and info.num_actions == GAMES[game].num_actions]
    if same:
        print(
            f"warning: teacher {str(path)!r} does not record its game and {', '.join(same)} has as many "
            f"actions ({GAMES[game].num_actions}) as {game}: taking {game} on your word (recorded as "
            "game_source 'user' in the datasets and students made with it)",
            file=sys.stderr,
        )


def load_teacher(
    name_or_path: str | Path,
    *,
    game: str | None = None,
    settings: EnvSettings | None = None,
    device: str | torch.device = "cpu",
) -> Teacher:
    """Load a teacher by shipped name (``pong``) or path, and check it against its use.

    Args:
        name_or_path: A shipped teacher name or a checkpoint file: the toolkit's own, a
            Stable-Baselines3 / RL Zoo ``.zip`` (PPO, A2C, DQN, QR-DQN CnnPolicy) or a CleanRL
            Atari state dict (``ppo_atari``, ``dqn_atari``).
        game: If given, the teacher must play this game. Required for CleanRL files, which do
            not record their game; SB3 zips fall back to an RL Zoo file name
            (``PongNoFrameskip-v4.zip``).
        settings: If given, the teacher's settings record must equal it.
        device: Where to put the network.

    Raises:
        UserError: unknown name, missing/truncated/corrupted/pickled file, wrong game, or
            settings that do not match, each as one line naming the fix.
    """
    path, name = _resolve(name_or_path)
    kind, game_source = "policy-distill", "file"
    if is_sb3_zip(path) or (path.suffix == ".zip" and path.is_file()):
        imported = load_sb3_zip(path, game=game)
        net, teacher_settings, kind = imported.net, imported.settings, imported.kind
        game_source = imported.game_source
    else:
        record = safe_torch_load(path, what="teacher checkpoint")
        if is_cleanrl_state_dict(record):
            imported = load_cleanrl_state_dict(record, path, game=game)
            net, teacher_settings, kind = imported.net, imported.settings, imported.kind
            game_source = imported.game_source
        else:
            native = teacher_from_record(record, path)
            net, teacher_settings = native.net, native.settings
    if game is not None and game_info(game).name != teacher_settings.game:
        raise UserError(
            f"teacher {str(path)!r} plays {teacher_settings.game}, not {game_info(game).name}; "
            f"pass a {game_info(game).name} teacher (shipped: {', '.join(shipped_teachers())})"
        )
    if settings is not None:
        teacher_settings.check_matches(settings, mine="teacher", theirs="environment")
    if game_source == "user":
        _warn_game_on_trust(path, teacher_settings.game)
    source = TeacherSource(
        name=name, path=str(path.resolve()), sha256=sha256_file(path), kind=kind, game_source=game_source
    )
    return Teacher(net, teacher_settings, source).to(device)


__all__ = ["GAMES", "Teacher", "TeacherSource", "load_teacher", "shipped_teachers"]
