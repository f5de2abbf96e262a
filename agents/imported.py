"""Teachers trained elsewhere: Stable-Baselines3 / RL Zoo zips and CleanRL Atari checkpoints.

Every supported teacher is the "Nature DQN" torso (conv 32 8x8/4, conv 64 4x4/2, conv 64 3x3/1,
linear 512, ReLU after each) with one linear head. :class:`ImportedNet` holds that network and
turns the head's output into a policy:

- actor-critic (SB3 PPO / A2C ``CnnPolicy``, CleanRL ``ppo_atari``): the head gives logits,
  ``log pi = log_softmax(logits)``; the value head is not loaded (distillation needs no values);
- Q-learning (SB3 DQN, sb3-contrib QR-DQN, CleanRL ``dqn_atari``): the head gives Q-values (QR-DQN:
  quantiles, averaged per action as QR-DQN itself acts), and ``log pi = log_softmax(Q / tau)``
  with ``tau = 0.01`` (:data:`Q_TEMPERATURE`), the policy that Rusu et al. 2015 ("Policy
  Distillation") distilled from DQN teachers.

Nothing is unpickled. An SB3 zip is read as a zip archive: its ``data`` member is JSON, from which
only plain fields are read (``observation_space`` -> ``_shape``/``shape`` and ``dtype``,
``action_space`` -> ``n``, ``n_quantiles``, the first-level keys of ``policy_kwargs``, and which
algorithm's hyperparameters are present); the base64 cloudpickle under ``":serialized:"`` is
never decoded. Its ``policy.pth`` member is a state dict, loaded with ``weights_only=True``; the
zip's other members (optimizer state, ``pytorch_variables.pth``) are never read. A CleanRL
checkpoint is a plain state dict, already loaded with ``weights_only=True`` by the caller.

Pixel convention: SB3 (``normalize_images=True``) and CleanRL compute ``obs.float() / 255``
inside the network, with the newest frame last in the 4-frame stack. The toolkit hands networks
that same ``uint8 / 255`` float tensor (:mod:`policy_distill.policy`), so the imported network
starts at the torso and its outputs are the original's, bit for bit.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from agents.networks import nature_torso
from policy_distill.checkpoint import torch_load_weights_only
from policy_distill.errors import UserError
from policy_distill.settings import EnvSettings, game_info

Q_TEMPERATURE = 0.01
"""Softmax temperature tau that turns Q-values into a policy (Rusu et al. 2015)."""

FRAME_SHAPE = (4, 84, 84)
"""The observation every supported teacher takes: 4 stacked 84x84 grayscale uint8 frames."""

HIDDEN = 512
"""Width of the Nature torso's linear layer."""

_MAX_DATA_BYTES = 64 << 20
_MAX_POLICY_BYTES = 1 << 30

HeadKind = Literal["logits", "q", "quantiles"]

# Torso layer -> index in ImportedNet.torso (the same indices as TeacherNet.torso and CleanRL's
# ``network``): conv 0, ReLU 1, conv 2, ReLU 3, conv 4, ReLU 5, Flatten 6, linear 7, ReLU 8.
_SB3_TORSO = {"cnn.0": "torso.0", "cnn.2": "torso.2", "cnn.4": "torso.4", "linear.0": "torso.7"}
_CLEANRL_TORSO = {
    "network.0": "torso.0",
    "network.2": "torso.2",
    "network.4": "torso.4",
    "network.7": "torso.7",
}


class ImportedNet(nn.Module):
    """Nature-CNN torso plus one linear head, over ``[B, 4, 84, 84]`` float frames in [0, 1].

    Args:
        num_actions: Size of the action set ``A``.
        head: ``logits`` (actor-critic), ``q`` (DQN) or ``quantiles`` (QR-DQN).
        n_quantiles: Quantiles per action (QR-DQN only); the head has ``A * n_quantiles`` outputs,
            laid out quantile-major as in sb3-contrib (``view(-1, n_quantiles, A)``).
        temperature: Softmax temperature over the head's action values (1 for logits).
    """

    def __init__(
        self,
        num_actions: int,
        *,
        head: HeadKind,
        n_quantiles: int = 1,
        temperature: float = 1.0,
        in_frames: int = 4,
    ) -> None:
        super().__init__()
        self.num_actions = num_actions
        self.head_kind = head
        self.n_quantiles = n_quantiles
        self.temperature = temperature
        self.torso = nature_torso(in_frames, HIDDEN)
        self.head = nn.Linear(HIDDEN, num_actions * n_quantiles)

    def action_values(self, x: Tensor) -> Tensor:
        """``[B, 4, 84, 84] float`` in [0, 1] -> ``[B, A]``: logits, Q-values or mean quantiles."""
        out = self.head(self.torso(x))
        if self.head_kind == "quantiles":
            out = out.view(-1, self.n_quantiles, self.num_actions).mean(dim=1)
        return out

    def log_probs(self, x: Tensor) -> Tensor:
        """``[B, 4, 84, 84] float`` in [0, 1] -> ``[B, A]`` log-probabilities (softmax at tau)."""
        values = self.action_values(x).float()
        if self.temperature != 1.0:
            values = values / self.temperature
        return torch.log_softmax(values, dim=-1)


@dataclass(frozen=True)
class ImportedTeacher:
    """A loaded foreign teacher: the network, its loader kind and its settings record."""

    net: ImportedNet
    kind: str
    """``sb3-ppo``, ``sb3-a2c``, ``sb3-dqn``, ``sb3-qrdqn``, ``cleanrl-ppo`` or ``cleanrl-dqn``."""
    settings: EnvSettings
    """See :func:`imported_settings`."""
    game_source: str = "user"
    """Where the game came from: ``file name`` (an RL Zoo name) or ``user`` (taken on the caller's
    word: the file does not record it)."""


def imported_settings(game: str) -> EnvSettings:
    """The settings record of a teacher trained with RL Zoo (SB3) or CleanRL on Atari.

    RL Zoo's Atari teachers were trained on ``<Game>NoFrameskip-v4`` with SB3's ``AtariWrapper``
    and ``VecFrameStack(4)``: no sticky actions, 1 to 30 no-op frames at reset, action repeat 4
    with a max over the last two frames, a terminal at each life loss while the game goes on,
    FIRE at reset, 84x84 grayscale frames, sign-clipped rewards. CleanRL's Atari scripts use the
    same wrappers (or envpool with the same options). This record is the nearest that
    ale-py's ``AtariVectorEnv`` comes to that; what it cannot match (grayscale before or after the
    max, the exact no-op and FIRE sequence at reset, FIRE after a lost life) is measured in
    ``docs/imported-teachers.md``.
    """
    return EnvSettings(
        game=game_info(game).name,
        frameskip=4,
        frame_size=84,
        stack=4,
        sticky_action_prob=0.0,
        noop_max=30,
        life_loss_terminal=True,
        clip_rewards=True,
        fire_reset=True,
        max_episode_frames=108_000,
    )


# --------------------------------------------------------------------------------------------
# Stable-Baselines3 / RL Zoo zips
# --------------------------------------------------------------------------------------------


def is_sb3_zip(path: str | Path) -> bool:
    """True if ``path`` is a zip archive with SB3's ``data`` and ``policy.pth`` members.

    A ``torch.save`` file is a zip too, but its members live under one top-level folder.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
    return {"data", "policy.pth"} <= names


def _read_member(archive: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise UserError(
            f"SB3 zip {str(path)!r} has a {info.file_size >> 20} MiB {name!r} member, far larger "
            "than an Atari CnnPolicy's; it is not an SB3 Atari model"
        )
    return archive.read(name)


def _load_state_dict_bytes(raw: bytes, path: Path, member: str) -> dict[str, Tensor]:
    """``torch.load(weights_only=True)`` of a zip member, every failure a one-line UserError."""
    where = f"{str(path)!r} (member {member!r})"
    state = torch_load_weights_only(
        io.BytesIO(raw),
        label=f"SB3 zip {where}",
        pickled_fix="re-save the model with stable-baselines3's model.save()",
        corrupt_fix="re-download it",
    )
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"SB3 zip {where} is not a state dict of tensors; re-save it with model.save()")
    return state


def _space_field(data: dict[str, Any], space: str, *fields: str) -> Any:
    entry = data.get(space)
    if not isinstance(entry, dict):
        return None
    for field in fields:
        if field in entry:
            return entry[field]
    return None


def _plain_int(value: Any) -> int | None:
    """An int stored as JSON number or as its string form (SB3 writes ``"n": "6"``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        return int(value)
    return None


def _check_policy_kwargs(data: dict[str, Any], path: Path) -> None:
    """Refuse policy options that change the forward pass without changing any weight shape.

    ``policy_kwargs`` is plain JSON, or (when it holds classes) a cloudpickle blob whose
    first-level items SB3 also writes out as JSON or strings; only those are read.
    """
    kwargs = data.get("policy_kwargs")
    if not isinstance(kwargs, dict):
        return
    normalize = kwargs.get("normalize_images", True)
    if normalize is False or str(normalize) == "False":
        raise UserError(
            f"SB3 model {str(path)!r} was trained with normalize_images=False (pixels not divided "
            "by 255); only the default CnnPolicy is supported"
        )
    extractor = kwargs.get("features_extractor_class")
    if extractor is not None and "NatureCNN" not in str(extractor):
        raise UserError(
            f"SB3 model {str(path)!r} uses the features extractor {str(extractor)[:80]}; only "
            "CnnPolicy's NatureCNN is supported"
        )


def _take(
    state: dict[str, Tensor],
    mapping: dict[str, str],
    src_prefix: str,
    path: Path,
    what: str,
) -> dict[str, Tensor]:
    """Copy ``src_prefix + key.{weight,bias}`` to ``mapping[key].{weight,bias}``."""
    out = {}
    for src, dst in mapping.items():
        for param in ("weight", "bias"):
            key = f"{src_prefix}{src}.{param}"
            if key not in state:
                raise UserError(
                    f"{what} {str(path)!r} has no {key!r}; it is not an Atari CnnPolicy model "
                    "(or it is corrupted)"
                )
            out[f"{dst}.{param}"] = state[key].float()
    return out


def _layer_keys(*layers: str) -> set[str]:
    return {f"{layer}.{param}" for layer in layers for param in ("weight", "bias")}


def _torso_keys(*prefixes: str) -> set[str]:
    """The NatureCNN keys (``cnn.{0,2,4}``, ``linear.0``) under each prefix, and no others."""
    return _layer_keys(*(prefix + src for prefix in prefixes for src in _SB3_TORSO))


def _sb3_layout(state: dict[str, Tensor], path: Path) -> tuple[str, dict[str, Tensor], set[str]]:
    """Recognise the SB3 key layout; return (family, mapped torso+head, the keys it may hold).

    Any key outside the last set (a layer added by ``net_arch``, an LSTM, a custom extractor's
    extra layer) is refused by the caller.
    """
    keys = set(state)
    if "action_net.weight" in keys:
        # SB3 >= 1.7 saves the (shared) extractor three times: features_extractor,
        # pi_features_extractor and vf_features_extractor. Before 1.7 only features_extractor.
        # The actor reads pi_features_extractor, which is always the same module as
        # features_extractor.
        has_pi = any(k.startswith("pi_features_extractor.") for k in keys)
        prefix = "pi_features_extractor." if has_pi else "features_extractor."
        mapped = _take(state, _SB3_TORSO, prefix, path, "SB3 model")
        if has_pi and "features_extractor.cnn.0.weight" in keys:
            for src in _SB3_TORSO:
                for param in ("weight", "bias"):
                    a, b = (
                        state[f"features_extractor.{src}.{param}"],
                        state[f"pi_features_extractor.{src}.{param}"],
                    )
                    if a.shape != b.shape or not torch.equal(a, b):
                        raise UserError(
                            f"SB3 model {str(path)!r} has features_extractor and "
                            "pi_features_extractor weights that differ; the file is corrupted"
                        )
        mapped.update(_take(state, {"action_net": "head"}, "", path, "SB3 model"))
        accounted = _torso_keys("features_extractor.", "pi_features_extractor.", "vf_features_extractor.")
        accounted |= _layer_keys("action_net", "value_net")
        return "actor-critic", mapped, accounted
    # DQN and QR-DQN differ only in the name of their network: <net>.features_extractor, <net>.<net>.0
    for net, kind, label in (("q_net", "dqn", "SB3 DQN model"), ("quantile_net", "qrdqn", "QR-DQN model")):
        if f"{net}.{net}.0.weight" in keys:
            mapped = _take(state, _SB3_TORSO, f"{net}.features_extractor.", path, label)
            mapped.update(_take(state, {f"{net}.{net}.0": "head"}, "", path, label))
            accounted = _torso_keys(f"{net}.features_extractor.", f"{net}_target.features_extractor.")
            accounted |= _layer_keys(f"{net}.{net}.0", f"{net}_target.{net}.0")
            return kind, mapped, accounted
    sample = ", ".join(sorted(keys)[:4])
    raise UserError(
        f"SB3 zip {str(path)!r} holds a policy this toolkit cannot read (keys {sample}, ...); "
        "supported: PPO/A2C/DQN/QR-DQN with CnnPolicy"
    )


def _sb3_kind(family: str, data: dict[str, Any]) -> str:
    if family == "dqn":
        return "sb3-dqn"
    if family == "qrdqn":
        return "sb3-qrdqn"
    # PPO and A2C save the same policy; their hyperparameters tell them apart.
    return "sb3-ppo" if "clip_range" in data else "sb3-a2c"


def game_from_file_name(path: str | Path) -> str | None:
    """The game named by an RL Zoo file (``PongNoFrameskip-v4.zip``) or its run folder, if any."""
    path = Path(path)
    # The stem may be a bare game name; a folder counts only when it holds a gym id, so that
    # ``runs/teachers/pong/model.zip`` is not read as a claim about the game.
    folders = [re.sub(r"_\d+$", "", path.parent.name), path.parent.name.split("__")[0]]
    candidates = [path.stem] + [f for f in folders if re.search(r"-v\d+$", f)]
    for text in candidates:
        try:
            return game_info(text).name
        except UserError:
            continue
    return None


def _resolve_game(game: str | None, path: Path, *, what: str, infer_from_name: bool) -> str:
    named = game_from_file_name(path) if infer_from_name else None
    if game is None:
        if named is None:
            raise UserError(
                f"{what} {str(path)!r} does not record its game; pass `game` "
                "(load_teacher(..., game=...)) with pong, breakout or space_invaders"
            )
        return named
    chosen = game_info(game).name
    if named is not None and named != chosen:
        raise UserError(
            f"{what} {str(path)!r} is named after {named} but `game` is {chosen}; "
            "pass the teacher of the game you mean"
        )
    return chosen


def _check_actions(found: int, game: str, path: Path, *, source: str) -> None:
    expected = game_info(game).num_actions
    if found != expected:
        raise UserError(
            f"teacher {str(path)!r} has {found} actions ({source}) but {game} has {expected} "
            "(minimal action set); pass a teacher trained on this game"
        )


def load_sb3_zip(path: str | Path, *, game: str | None = None) -> ImportedTeacher:
    """Load an SB3 / RL Zoo ``.zip`` (PPO, A2C, DQN with CnnPolicy; sb3-contrib QR-DQN).

    Args:
        path: The zip written by ``model.save()`` (RL Zoo: ``<algo>/<EnvId>_<n>/<EnvId>.zip``).
        game: The game it plays. The zip does not record it; if not given, it is taken from an
            RL Zoo file or folder name (``PongNoFrameskip-v4``).

    Checks: the observation space (``data`` -> ``observation_space``: ``_shape`` must be
    ``[4, 84, 84]`` and ``dtype`` ``uint8``; when those fields are absent, the first conv's 4
    input channels and the 3136-wide linear layer, which imply 4 frames of 84x84, stand in),
    the action count (``data`` -> ``action_space`` -> ``n``, and the head's rows) against the
    game, and the exact key layout.

    Raises:
        UserError: a pickled or corrupted ``policy.pth``, another policy or observation space,
            a wrong action count, or a missing game.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if not {"data", "policy.pth"} <= names:
                raise UserError(
                    f"{str(path)!r} is a zip without SB3's 'data' and 'policy.pth' members; "
                    "pass a file written by stable-baselines3's model.save()"
                )
            raw_data = _read_member(archive, "data", _MAX_DATA_BYTES, path)
            raw_policy = _read_member(archive, "policy.pth", _MAX_POLICY_BYTES, path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(
            f"SB3 zip {str(path)!r} is truncated or corrupted ({type(e).__name__}); re-download it"
        ) from None
    try:
        data = json.loads(raw_data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(
            f"SB3 zip {str(path)!r} has a 'data' member that is not JSON; re-download it"
        ) from None
    if not isinstance(data, dict):
        raise UserError(
            f"SB3 zip {str(path)!r} has a 'data' member that is not a JSON object; re-download it"
        )
    state = _load_state_dict_bytes(raw_policy, path, "policy.pth")
    chosen = _resolve_game(game, path, what="SB3 zip", infer_from_name=True)
    _check_policy_kwargs(data, path)

    family, mapped, accounted = _sb3_layout(state, path)
    extra = sorted(set(state) - accounted)
    if extra:
        raise UserError(
            f"SB3 model {str(path)!r} has layers beyond the default CnnPolicy ({', '.join(extra[:3])}); "
            "only CnnPolicy with its default net_arch is supported"
        )

    shape = _space_field(data, "observation_space", "_shape", "shape")
    dtype = _space_field(data, "observation_space", "dtype")
    if shape is not None or dtype is not None:
        if list(shape or []) != list(FRAME_SHAPE) or str(dtype) != "uint8":
            raise UserError(
                f"SB3 model {str(path)!r} observes {dtype} frames of shape {shape}, not uint8 "
                f"{list(FRAME_SHAPE)}; pass a model trained with AtariWrapper and VecFrameStack(4)"
            )
    _check_input_size(mapped, path, "SB3 model")

    head_rows = mapped["head.weight"].shape[0]
    n = _plain_int(_space_field(data, "action_space", "n"))
    n_quantiles = 1
    if family == "qrdqn":
        n_quantiles = _plain_int(data.get("n_quantiles")) or 0
        if n_quantiles <= 0 and n is not None and head_rows % n == 0:
            n_quantiles = head_rows // n
        if n_quantiles <= 0 or head_rows % n_quantiles:
            raise UserError(
                f"QR-DQN model {str(path)!r} records no usable n_quantiles ({head_rows} head rows); "
                "re-save it with sb3-contrib's model.save()"
            )
    num_actions = head_rows // n_quantiles
    if n is not None and n != num_actions:
        raise UserError(
            f"SB3 model {str(path)!r} says it has {n} actions but its head has {num_actions}; "
            "the file is corrupted"
        )
    _check_actions(num_actions, chosen, path, source="action_space.n" if n is not None else "head size")

    head: HeadKind = {"actor-critic": "logits", "dqn": "q", "qrdqn": "quantiles"}[family]  # type: ignore[assignment]
    net = ImportedNet(
        num_actions,
        head=head,
        n_quantiles=n_quantiles,
        temperature=1.0 if head == "logits" else Q_TEMPERATURE,
    )
    _load_mapped(net, mapped, path)
    return ImportedTeacher(
        net=net,
        kind=_sb3_kind(family, data),
        settings=imported_settings(chosen),
        game_source="file name" if game_from_file_name(path) is not None else "user",
    )


def _check_input_size(mapped: dict[str, Tensor], path: Path, what: str) -> None:
    """The first conv must take 4 frames and the flatten be 64x7x7: 4 stacked 84x84 frames."""
    conv, linear = mapped["torso.0.weight"], mapped["torso.7.weight"]
    if (
        conv.dim() != 4
        or conv.shape[1] != FRAME_SHAPE[0]
        or linear.dim() != 2
        or linear.shape[1] != 64 * 7 * 7
    ):
        raise UserError(
            f"{what} {str(path)!r} has layers sized for {tuple(conv.shape[1:2])} frames and a "
            f"{tuple(linear.shape[1:])}-wide flatten, not 4 stacked 84x84 frames; pass an Atari model"
        )


def _load_mapped(net: ImportedNet, mapped: dict[str, Tensor], path: Path) -> None:
    try:
        net.load_state_dict(mapped)
    except RuntimeError as e:
        raise UserError(
            f"teacher {str(path)!r} does not fit the Nature CNN ({str(e).splitlines()[-1].strip()[:150]}); "
            "pass an Atari CnnPolicy model"
        ) from None


# --------------------------------------------------------------------------------------------
# CleanRL
# --------------------------------------------------------------------------------------------


def is_cleanrl_state_dict(record: Any) -> bool:
    """True for a plain state dict in CleanRL's Atari layout (``network.0.weight`` ...)."""
    return (
        isinstance(record, dict)
        and "format" not in record
        and "network.0.weight" in record
        and all(isinstance(k, str) for k in record)
    )


def load_cleanrl_state_dict(record: dict[str, Any], path: str | Path, *, game: str | None) -> ImportedTeacher:
    """Build a teacher from a CleanRL Atari checkpoint (``torch.save(agent.state_dict(), ...)``).

    Layouts: ``ppo_atari*.py`` keys ``network.{0,2,4,7}``, ``actor``, ``critic``;
    ``dqn_atari.py`` keys ``network.{0,2,4,7,9}`` (``network.9`` is the Q head).

    Args:
        record: The state dict, loaded with ``weights_only=True``.
        path: The file it came from, for messages.
        game: The game it plays; required, since the file does not record it.
    """
    path = Path(path)
    if game is None:
        raise UserError(
            f"CleanRL checkpoint {str(path)!r} does not record its game; pass `game` "
            "(load_teacher(..., game=...)) with pong, breakout or space_invaders"
        )
    chosen = game_info(game).name
    if not all(isinstance(v, Tensor) for v in record.values()):
        raise UserError(
            f"CleanRL checkpoint {str(path)!r} is not a state dict of tensors; save agent.state_dict()"
        )
    keys = set(record)
    torso_keys = {f"{k}.{p}" for k in _CLEANRL_TORSO for p in ("weight", "bias")}
    if "actor.weight" in keys:
        kind, head, head_src = "cleanrl-ppo", "logits", "actor"
        expected = torso_keys | {"actor.weight", "actor.bias", "critic.weight", "critic.bias"}
    elif "network.9.weight" in keys:
        kind, head, head_src = "cleanrl-dqn", "q", "network.9"
        expected = torso_keys | {"network.9.weight", "network.9.bias"}
    else:
        raise UserError(
            f"CleanRL checkpoint {str(path)!r} has neither an 'actor' nor a 'network.9' head; "
            "supported: ppo_atari (actor-critic) and dqn_atari (Q-network) checkpoints"
        )
    if keys != expected:
        odd = sorted(keys ^ expected)
        raise UserError(
            f"CleanRL checkpoint {str(path)!r} does not have the {kind} layout (keys differ: "
            f"{', '.join(odd[:3])}); supported: ppo_atari and dqn_atari checkpoints"
        )
    mapped = _take(record, _CLEANRL_TORSO, "", path, "CleanRL checkpoint")
    mapped.update(_take(record, {head_src: "head"}, "", path, "CleanRL checkpoint"))
    _check_input_size(mapped, path, "CleanRL checkpoint")
    num_actions = mapped["head.weight"].shape[0]
    _check_actions(num_actions, chosen, path, source="head size")
    net = ImportedNet(num_actions, head=head, temperature=1.0 if head == "logits" else Q_TEMPERATURE)  # type: ignore[arg-type]
    _load_mapped(net, mapped, path)
    return ImportedTeacher(net=net, kind=kind, settings=imported_settings(chosen))


__all__ = [
    "FRAME_SHAPE",
    "ImportedNet",
    "ImportedTeacher",
    "Q_TEMPERATURE",
    "game_from_file_name",
    "imported_settings",
    "is_cleanrl_state_dict",
    "is_sb3_zip",
    "load_cleanrl_state_dict",
    "load_sb3_zip",
]
