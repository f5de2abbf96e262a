"""What every policy in the toolkit provides: the pixel convention, the observation contract of a
loaded policy, and the link between a policy's settings record and a user's own environment.

Networks take the observation as a float tensor of pixels scaled to [0, 1] (``uint8 / 255``),
newest frame last. Input-gradients (the Sobolev term, gradient maps) are taken with respect to
that float tensor, for teachers and students alike, so their scales compare directly.

A *loaded* policy (:class:`policy_distill.student.Student`, :class:`agents.loading.Teacher`)
takes what the environment gives instead, through :func:`as_observation`:

- ``[B, 4, 84, 84]`` or ``[4, 84, 84]`` ``uint8`` pixels, numpy or torch, newest frame last
  (an unbatched input gives unbatched outputs);
- the fast path: a torch floating tensor of the same shapes, already divided by 255. It is
  used as it is (no copy, gradients flow), which is how training calls ``log_probs``.

Anything else is refused with one line naming the expected shape and dtype.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor

from policy_distill.errors import UserError
from policy_distill.settings import EnvSettings, game_info


def to_float(obs: Tensor) -> Tensor:
    """``[B, 4, 84, 84] uint8`` pixels -> ``[B, 4, 84, 84] float32`` in [0, 1]."""
    return obs.to(torch.float32).div_(255.0) if obs.dtype == torch.uint8 else obs


class Policy(Protocol):
    """A discrete-action policy over stacked Atari frames."""

    num_actions: int

    def log_probs(self, x: Tensor) -> Tensor:
        """``[B, 4, 84, 84] float`` in [0, 1] -> ``[B, A]`` log-probabilities."""
        ...


class SourceRecord(Protocol):
    """Where a teacher came from (``agents.loading.TeacherSource`` is one)."""

    name: str
    path: str
    sha256: str
    kind: str


class TeacherPolicy(Policy, Protocol):
    """What collection and distillation need of a teacher: a policy, the settings record it was
    trained with, and its provenance. ``agents.loading.Teacher`` is one; the core library
    depends on this protocol, never on ``agents``."""

    settings: EnvSettings
    source: SourceRecord


def sample_actions(logp: Tensor, *, greedy: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """``[B, A]`` log-probabilities -> ``[B] int64`` actions: sampled, or argmax when ``greedy``."""
    if greedy:
        return logp.argmax(dim=-1)
    return torch.multinomial(logp.float().exp(), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def act(
    policy: Policy, obs: Tensor, *, greedy: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """Pick actions for ``obs`` ``[B, 4, 84, 84] uint8``: sampled, or argmax when ``greedy``.

    Returns ``[B] int64`` actions.
    """
    return sample_actions(policy.log_probs(to_float(obs)), greedy=greedy, generator=generator)


# --- The observation contract of a loaded policy ----------------------------------------------


class Observation(NamedTuple):
    """An observation after :func:`as_observation`."""

    x: Tensor
    """``[B, stack, size, size] float32`` in [0, 1] on the policy's device."""
    batched: bool
    """Whether the caller gave a batch dimension (outputs drop it when not)."""


def _describe(obs: object) -> str:
    if isinstance(obs, Tensor):
        return f"torch {str(obs.dtype).removeprefix('torch.')} {list(obs.shape)}"
    if isinstance(obs, np.ndarray):
        return f"numpy {obs.dtype} {list(obs.shape)}"
    return type(obs).__name__


def _refuse(obs: object, stack: int, size: int, hint: str = "") -> UserError:
    return UserError(
        f"observation must be [B, {stack}, {size}, {size}] or [{stack}, {size}, {size}] uint8 pixels "
        f"(numpy or torch, newest frame last) or a torch float tensor of those pixels / 255; "
        f"got {_describe(obs)}{hint}"
    )


def as_observation(
    obs: Tensor | np.ndarray,
    *,
    stack: int = 4,
    frame_size: int = 84,
    device: torch.device | str | None = None,
    check_range: bool = False,
) -> Observation:
    """Turn what the environment gives into the network's input, converting once.

    Args:
        obs: ``[B, stack, size, size]`` or ``[stack, size, size]`` ``uint8`` pixels (numpy array
            or torch tensor), newest frame last; or, the fast path, a torch floating tensor of
            the same shape already scaled to [0, 1], passed on without a copy (float32 on the
            right device) so that gradients with respect to it flow.
        stack, frame_size: The policy's settings (``EnvSettings.stack``, ``.frame_size``).
        device: Where the network lives; the input is moved there (uint8 before converting,
            4x fewer bytes to move).
        check_range: Refuse float inputs outside [0, 1] (raw 0-255 pixels cast to float, the
            usual mistake). It reads every value, so the training fast path leaves it off.

    Raises:
        UserError: any other type, dtype or shape, as one line naming the expected ones.
    """
    given = obs  # named in refusals as the caller passed it
    if isinstance(obs, np.ndarray):
        if obs.dtype != np.uint8:
            hint = (
                "; numpy floats are not taken: pass the uint8 stack"
                if np.issubdtype(obs.dtype, np.floating)
                else ""
            )
            raise _refuse(given, stack, frame_size, hint)
        # np.require copies only read-only (e.g. memory-mapped) or non-contiguous arrays, which
        # torch.from_numpy cannot wrap or wraps with a warning.
        obs = torch.from_numpy(np.require(obs, requirements=["C", "W"]))
    if not isinstance(obs, Tensor):
        raise _refuse(given, stack, frame_size)
    if obs.dtype != torch.uint8 and not obs.is_floating_point():
        raise _refuse(given, stack, frame_size)
    expected = (stack, frame_size, frame_size)
    if obs.dim() not in (3, 4) or tuple(obs.shape[-3:]) != expected:
        hint = ""
        if obs.dim() in (3, 4) and tuple(obs.shape[-3:]) == (frame_size, frame_size, stack):
            axes = "(0, 3, 1, 2)" if obs.dim() == 4 else "(2, 0, 1)"
            call = "transpose" if isinstance(given, np.ndarray) else "permute"
            hint = f"; this looks channels-last: move the stack axis first, e.g. obs.{call}{axes}"
        raise _refuse(given, stack, frame_size, hint)
    batched = obs.dim() == 4
    x = obs if batched else obs.unsqueeze(0)
    if device is not None and x.device != torch.device(device):
        x = x.to(device)
    if x.dtype == torch.uint8:
        x = x.to(torch.float32).div_(255.0)
    else:
        if x.dtype != torch.float32:
            x = x.to(torch.float32)  # the weights are float32; autocast, if on, casts inside
        if check_range and x.numel():
            low, high = torch.aminmax(x)
            if low < 0 or high > 1:
                raise UserError(
                    f"float observations must be pixels / 255 in [0, 1], got values in "
                    f"[{low.item():g}, {high.item():g}]; pass the uint8 stack as the environment gives it"
                )
    return Observation(x, batched)


def policy_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without any)."""
    return next(module.parameters(), torch.empty(0)).device


def contract_log_probs(net: Any, obs: Tensor | np.ndarray, settings: EnvSettings) -> Tensor:
    """``log_probs`` of a loaded policy: ``obs`` as :func:`as_observation` takes it ->
    ``[B, A]`` (or ``[A]`` for an unbatched input) float32 log-probabilities.

    ``net`` is the wrapped network, with ``log_probs([B, 4, 84, 84] float) -> [B, A]``.
    """
    x, batched = as_observation(
        obs, stack=settings.stack, frame_size=settings.frame_size, device=policy_device(net)
    )
    logp = net.log_probs(x)
    return logp if batched else logp.squeeze(0)


@torch.no_grad()
def contract_act(
    net: Any,
    obs: Tensor | np.ndarray,
    settings: EnvSettings,
    *,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``act`` of a loaded policy: ``obs`` -> ``[B]`` (or ``[]``) int64 actions on the policy's device."""
    x, batched = as_observation(
        obs,
        stack=settings.stack,
        frame_size=settings.frame_size,
        device=policy_device(net),
        check_range=True,
    )
    actions = sample_actions(net.log_probs(x), greedy=greedy, generator=generator)
    return actions if batched else actions.squeeze(0)


def contract_predict(
    net: Any,
    observation: Tensor | np.ndarray,
    settings: EnvSettings,
    *,
    deterministic: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[np.ndarray, None]:
    """Stable-Baselines3's ``predict``: ``observation`` -> (``[B]`` or ``[]`` int64 numpy actions, None).

    ``None`` is the recurrent state, which a feed-forward policy does not have.
    """
    actions = contract_act(net, observation, settings, greedy=deterministic, generator=generator)
    return actions.cpu().numpy(), None


# --- A policy's settings record and a user's own environment -----------------------------------


@functools.cache
def action_meanings(game: str) -> tuple[str, ...]:
    """Names of the game's minimal action set in the order the policy indexes it (``NOOP``, ``FIRE``...).

    Read from ale-py's bundled ROM, offline; it is the order ``AtariVectorEnv`` uses.
    """
    import ale_py

    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)  # ROM loading otherwise prints a banner
    ale.loadROM(ale_py.roms.get_rom_path(game_info(game).name))
    return tuple(action.name for action in ale.getMinimalActionSet())


def env_id(settings: EnvSettings) -> str:
    """The game's gymnasium id for ale-py's vector environment (``ALE/Pong-v5``)."""
    import ale_py  # noqa: F401  (importing it registers the ALE/* ids)
    import gymnasium

    for spec in gymnasium.registry.values():
        if spec.namespace == "ALE" and spec.version == 5 and spec.kwargs.get("game") == settings.game:
            return spec.id
    raise UserError(
        f"ale-py registers no ALE/*-v5 id for {settings.game}; update ale-py (pip install -U ale-py)"
    )


def env_kwargs(settings: EnvSettings) -> dict[str, Any]:
    """``AtariVectorEnv`` / ``gymnasium.make_vec`` keyword arguments that reproduce ``settings``.

    The same arguments as :func:`policy_distill.envs.make_vector_env`, without the game (the id
    or first argument names it) and the loop's own choices (threads, autoreset mode). Rewards are
    left unclipped, so that scores are raw game scores as the toolkit reports them.
    """
    return {
        "max_num_frames_per_episode": settings.max_episode_frames,
        "repeat_action_probability": settings.sticky_action_prob,
        "full_action_space": False,
        "img_height": settings.frame_size,
        "img_width": settings.frame_size,
        "grayscale": True,
        "stack_num": settings.stack,
        "frameskip": settings.frameskip,
        "maxpool": True,
        "noop_max": settings.noop_max,
        "episodic_life": False,
        "life_loss_info": settings.life_loss_terminal,
        "reward_clipping": False,
        "use_fire_reset": settings.fire_reset,
    }


def make_env(settings: EnvSettings, num_envs: int, **overrides: Any) -> Any:
    """``gymnasium.make_vec(env_id, num_envs, **env_kwargs(settings) | overrides)``, checked.

    Built through gymnasium so that the environment's spec records its settings and
    :func:`check_env` can read them back.
    """
    import gymnasium

    env = gymnasium.make_vec(
        env_id(settings),
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        **{**env_kwargs(settings), **overrides},
    )
    try:
        check_env(settings, env)
    except UserError:
        env.close()
        raise
    return env


def _atari_vector_env_defaults() -> dict[str, Any]:
    from ale_py.vector_env import AtariVectorEnv

    params = inspect.signature(AtariVectorEnv.__init__).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def check_env(settings: EnvSettings, env: Any, *, what: str = "policy") -> list[str]:
    """Refuse, with one line, an environment that differs from the policy's settings record.

    Reads what the environment tells: its observation and action spaces always; for ale-py's
    ``AtariVectorEnv`` made by ``gymnasium.make_vec`` (or :func:`make_env`), every construction
    argument, from its spec (the registered id's defaults, e.g. sticky actions 0.25 for
    ``ALE/*-v5``, plus the arguments passed). An ``AtariVectorEnv`` built directly, or another
    vector environment, does not record them: only the spaces are checked, with a warning.

    Args:
        settings: The policy's settings record.
        env: A gymnasium vector environment.
        what: Names the policy in messages (``student``, ``teacher``).

    Returns:
        The names of the settings checked.

    Raises:
        UserError: the spaces or a readable setting differ.
    """
    from ale_py.vector_env import AtariVectorEnv

    fix = f"make it with gymnasium.make_vec({env_id(settings)!r}, num_envs, **{what}.env_kwargs())"
    space = getattr(env, "single_observation_space", None)
    expected_shape = (settings.stack, settings.frame_size, settings.frame_size)
    if space is None or tuple(space.shape or ()) != expected_shape or space.dtype != np.uint8:
        found = "none" if space is None else f"{space.dtype} {list(space.shape or ())}"
        raise UserError(
            f"the environment's observations are {found}, the {what} takes uint8 {list(expected_shape)} "
            f"stacks (grayscale, newest frame last); {fix}"
        )
    actions = getattr(getattr(env, "single_action_space", None), "n", None)
    if actions != settings.num_actions:
        raise UserError(
            f"the environment has {actions} actions, the {what} plays {settings.game}'s minimal set of "
            f"{settings.num_actions}; {fix}"
        )
    checked = ["observation space", "action space"]
    unwrapped = getattr(env, "unwrapped", env)
    spec = getattr(env, "spec", None) or getattr(unwrapped, "spec", None)
    if not isinstance(unwrapped, AtariVectorEnv) or spec is None:
        warnings.warn(
            f"{type(unwrapped).__name__} does not record its settings, so only its spaces were checked "
            f"against the {what}'s; {fix} to have them all checked",
            stacklevel=3,
        )
        return checked
    kw = {**_atari_vector_env_defaults(), **spec.kwargs}
    try:
        game = game_info(str(kw.get("game"))).name
    except UserError:  # a game the toolkit does not know: still a plain mismatch
        game = str(kw.get("game"))
    if game != settings.game:
        raise UserError(f"the environment plays {game}, the {what} plays {settings.game}; {fix}")
    # Arguments with no field in the settings record because the toolkit never varies them.
    fixed = {
        "img_width": settings.frame_size,
        "grayscale": True,
        "maxpool": True,
        "episodic_life": False,
        "full_action_space": False,
        "continuous": False,
    }
    wrong = [f"{k}={kw[k]!r}" for k, v in fixed.items() if kw[k] != v]
    if wrong:
        needed = ", ".join(f"{k}={v!r}" for k, v in fixed.items() if kw[k] != v)
        raise UserError(
            f"the environment was made with {', '.join(wrong)} where the {what} needs {needed}; {fix}"
        )
    found = EnvSettings(
        game=settings.game,
        frameskip=int(kw["frameskip"]),
        frame_size=int(kw["img_height"]),
        stack=int(kw["stack_num"]),
        sticky_action_prob=float(kw["repeat_action_probability"]),
        noop_max=int(kw["noop_max"]),
        fire_reset=bool(kw["use_fire_reset"]),
        max_episode_frames=int(kw["max_num_frames_per_episode"]),
        # Learner-only, as in EnvSettings.check_matches: reward clipping has no environment
        # argument here, and life_loss_info only adds a terminal signal for a learner.
        clip_rewards=settings.clip_rewards,
        life_loss_terminal=settings.life_loss_terminal,
    )
    diffs = settings.differences(found)
    if diffs:
        raise UserError(
            f"the environment's settings differ from the {what}'s ({'; '.join(diffs)}; the {what}'s "
            f"value first); {fix}"
        )
    compared = [k for k in settings.to_dict() if k not in ("game", "clip_rewards", "life_loss_terminal")]
    return [*checked, "game", *fixed, *compared]
