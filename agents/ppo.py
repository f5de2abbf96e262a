"""PPO teacher trainer on ale-py's vectorised environment (CleanRL's ppo_atari, made resumable).

Reads top to bottom: collect ``num_steps`` steps from ``num_envs`` games, compute GAE
advantages, run ``update_epochs`` epochs of clipped-PPO minibatch updates, log, checkpoint.

Precision follows the hardware (``precision="auto"``): bf16 autocast where the CPU or GPU has
native bf16 units, float32 elsewhere (bf16 is ~10x slower than float32 on an AVX2-only CPU).
The resolved precision and the CPU capability of every machine a run trained on are recorded
(``training["segments"]``), because a teacher trained over several sessions may see several.

Outputs in ``out_dir``: ``trainer_state.pt`` (resumable state, rewritten atomically every
``checkpoint_every`` updates), ``teacher.pt`` (the policy in the teacher checkpoint format) and
TensorBoard events. Run the same command again after an interruption and it resumes exactly.
A run continued from an exported teacher (``init_from``) carries the weights, the step counter
(so the learning-rate schedule's position) and the segments; it does not carry Adam's moments,
the emulators' states or the random streams.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

from agents.networks import TeacherNet
from agents.teacher_file import (
    CorruptTeacher,
    TeacherFile,
    history_problem,
    read_teacher,
    teacher_from_record,
    teacher_record,
)
from policy_distill.checkpoint import (
    atomic_torch_save,
    hardware_description,
    require_format,
    safe_torch_load,
)
from policy_distill.devices import (
    autocast,
    cpu_capability,
    keep_freed_memory_for_reuse,
    pick_device,
    resolve_precision,
)
from policy_distill.envs import GameTracker, make_vector_env
from policy_distill.errors import (
    MAX_ENV_SEED,
    MAX_TORCH_SEED,
    ConfigError,
    UserError,
    at_least,
    check_fields,
    one_of,
    within,
)
from policy_distill.policy import to_float
from policy_distill.settings import PRECISION_CHOICES, EnvSettings, game_info

TRAINER_FORMAT = "policy-distill/ppo-trainer-state"


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters.

    CleanRL's ppo_atari (Huang et al. 2022; clip 0.1, lr 2.5e-4 annealed, entropy 0.01), whose
    published curves reach ~400 on Breakout and ~1,000 on Space Invaders at 10M agent steps,
    with the rollout and update shape of envpool's tuned Atari example: 16 environments, 8
    minibatches of 256, 3 epochs. Measured with ``benchmarks/teacher_throughput.py`` on two free
    AVX-512-bf16 cores (Breakout): 689 agent steps/s against 516 for CleanRL's 8 environments x
    4 minibatches x 4 epochs (1.3x), with the minibatch size, and so the noise of each step,
    unchanged; bf16 autocast 1.37x faster than float32 there (689 vs 504), channels_last 1.17x
    in float32 (504 vs 431) and no different in bf16. Two epochs would be 1.1-1.2x faster again
    but take a third fewer gradient steps per sample, which the published curves do not cover.
    The learner sees a terminal at each lost life (``life_loss_terminal``), as CleanRL's does.
    """

    game: str = "pong"
    """Game to train on."""
    total_steps: int = 3_000_000
    """Agent steps over all environments (x4 emulator frames)."""
    num_envs: int = 16
    """Parallel games."""
    num_steps: int = 128
    """Steps per environment per rollout."""
    learning_rate: float = 2.5e-4
    """Adam step size, annealed linearly to 0 over ``total_steps``."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    num_minibatches: int = 8
    """Minibatches per epoch (of 256 samples at the defaults, as CleanRL's)."""
    update_epochs: int = 3
    """Passes over each rollout."""
    clip_coef: float = 0.1
    """PPO ratio clip."""
    ent_coef: float = 0.01
    """Entropy bonus weight."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    seed: int = 1
    """Seed for torch, numpy and the emulators."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    precision: str = "auto"
    """auto (bf16 autocast where the hardware does bf16 natively, else fp32), fp32 or bf16."""
    channels_last: bool = True
    """Run the network's convolutions in the channels_last memory format."""
    checkpoint_every: int = 20
    """Updates between checkpoints."""
    sticky_action_prob: float = 0.0
    """Environment setting, see EnvSettings."""
    life_loss_terminal: bool = True
    """The learner sees a terminal at each life loss (the game goes on), as CleanRL's and SB3's
    Atari training do; a learner-only signal: the policy sees the same frames and is scored on
    whole games either way (EnvSettings)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "game", game_info(self.game).name)
        checks = [
            *(
                at_least(self, name, 1)
                for name in (
                    "total_steps",
                    "num_envs",
                    "num_steps",
                    "num_minibatches",
                    "update_epochs",
                    "checkpoint_every",
                )
            ),
            within(self, "learning_rate", 0, 1, open_low=True),
            within(self, "clip_coef", 0, math.inf, open_low=True, open_high=True),
            within(self, "gamma", 0, 1),
            within(self, "gae_lambda", 0, 1),
            *(
                within(self, name, 0, math.inf, open_high=True)
                for name in ("ent_coef", "vf_coef", "max_grad_norm")
            ),
            within(self, "seed", 0, MAX_TORCH_SEED),
            one_of(self, "precision", PRECISION_CHOICES),
        ]
        check_fields("trainer settings", checks)
        if self.batch_size % self.num_minibatches:
            raise ConfigError(
                "trainer settings",
                [
                    (
                        "num_minibatches",
                        f"must divide num_envs x num_steps ({self.batch_size}) into equal minibatches, "
                        f"got {self.num_minibatches}",
                    )
                ],
            )

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return max(1, self.total_steps // self.batch_size)

    def settings(self) -> EnvSettings:
        return EnvSettings(
            game=self.game,
            sticky_action_prob=self.sticky_action_prob,
            life_loss_terminal=self.life_loss_terminal,
        )


@dataclass(frozen=True)
class TeacherRun:
    """Where a teacher trains, what it starts from, and how long this sitting lasts."""

    out: str = ""
    """Run directory (default runs/teachers/<game>); a run there is resumed."""
    init_from: str = ""
    """Teacher checkpoint to continue from when the run directory is new (e.g. a shipped,
    unfinished teacher)."""
    stop_after_minutes: float = 0.0
    """Checkpoint and stop after this many minutes of training (0: train to total_steps); run
    the same command again to continue."""

    def __post_init__(self) -> None:
        check_fields("teacher run", [at_least(self, "stop_after_minutes", 0)])


@dataclass(frozen=True)
class ExportTeacherConfig:
    """Which training run to export as a shippable teacher, and how to score it for its card."""

    run: str
    """train-teacher output directory (holds trainer_state.pt)."""
    out: str
    """Destination, e.g. agents/pretrained/pong.pt (the model card goes beside it)."""
    float32: bool = False
    """Keep float32 weights (default float16: half the size, loaded back as float32)."""
    card_episodes: int = 30
    """Games to play for the model card (0: no card)."""
    seed: int = 1000
    """Evaluation seed of the model card's games."""
    final: bool = False
    """Training is over at these steps, before the planned total (the teacher met its target):
    the checkpoint and card say finished, not that training continues."""

    def __post_init__(self) -> None:
        check_fields(
            "export settings",
            # The model card's games run on 8 emulators seeded seed .. seed + 7 (32-bit in ale-py).
            [at_least(self, "card_episodes", 0), within(self, "seed", 0, MAX_ENV_SEED + 1 - 8)],
        )


def generalised_advantages(
    rewards: Tensor,
    values: Tensor,
    dones: Tensor,
    next_value: Tensor,
    next_done: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over one rollout, as in CleanRL.

    Args:
        rewards, values: ``[T, N]``, the (clipped) reward after and the value of each step's
            observation, for N environments.
        dones: ``[T, N]``, 1 where the step's observation is the first of a new episode (the
            previous step ended one), so nothing is bootstrapped across it.
        next_value, next_done: ``[N]``, the value of the observation after the rollout and
            whether it starts a new episode.

    Returns:
        ``(advantages, returns)``, each ``[T, N]``; returns = advantages + values, the value
        targets.
    """
    steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(next_value)
    for t in reversed(range(steps)):
        not_done = 1.0 - (next_done if t == steps - 1 else dones[t + 1])
        following_value = next_value if t == steps - 1 else values[t + 1]
        delta = rewards[t] + gamma * following_value * not_done - values[t]
        last_gae = delta + gamma * gae_lambda * not_done * last_gae
        advantages[t] = last_gae
    return advantages, advantages + values


def _ppo_loss(
    net: TeacherNet,
    cfg: PPOConfig,
    obs: Tensor,
    actions: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    returns: Tensor,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped PPO objective on one minibatch.

    Args:
        obs: ``[M, 4, 84, 84] uint8``; actions, old_logprobs, advantages, returns: ``[M]``.
    """
    logits, values = net(to_float(obs))
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    logp = logp_all.gather(1, actions[:, None]).squeeze(1)
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
    log_ratio = logp - old_logprobs
    ratio = log_ratio.exp()
    adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
    v_loss = 0.5 * (values.float() - returns).pow(2).mean()
    loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean().item()
        clipfrac = ((ratio - 1).abs() > cfg.clip_coef).float().mean().item()
    stats = {
        "policy_loss": pg_loss.item(),
        "value_loss": v_loss.item(),
        "entropy": entropy.item(),
        "approx_kl": approx_kl,
        "clipfrac": clipfrac,
    }
    return loss, stats


@dataclass(frozen=True)
class TrainResult:
    """What a ``train_ppo`` call did."""

    teacher_path: Path
    """The run's ``teacher.pt`` (float32)."""
    agent_steps: int
    """Agent steps of the run so far, over all sittings."""
    steps_this_call: int
    """Agent steps trained by this call."""
    steps_per_s: float
    """Agent steps per second of this call (rollouts + updates, excluding set-up)."""
    precision: str
    """The precision this call resolved to and trained in."""
    finished: bool
    """Whether the run reached ``total_steps`` (False: stopped by ``stop_after_s``)."""


CURVE_BIN_STEPS = 50_000
"""Width of the learning-curve bins kept in checkpoints (agent steps); the curve outlives the
TensorBoard logs, which stay on the machine that wrote them."""


def _add_to_curve(curve: list[list[float]], step: int, score: float) -> None:
    """Add one finished game to the learning curve ``[[bin_end_step, mean_score, games], ...]``."""
    bin_end = (step // CURVE_BIN_STEPS + 1) * CURVE_BIN_STEPS
    if curve and curve[-1][0] == bin_end:
        games = curve[-1][2]
        curve[-1][1] = (curve[-1][1] * games + score) / (games + 1)
        curve[-1][2] = games + 1
    else:
        curve.append([bin_end, score, 1])


def train_ppo(
    cfg: PPOConfig,
    out_dir: str | Path,
    *,
    init_from: str | Path | None = None,
    stop_after_s: float | None = None,
    log_every: int = 10,
) -> TrainResult:
    """Train (or resume training) a teacher.

    Args:
        cfg: Hyperparameters.
        out_dir: Run directory; a ``trainer_state.pt`` there is resumed exactly (the learning
            problem must be the same; device, precision, memory format, budget and checkpoint
            period may change).
        init_from: A teacher checkpoint of this toolkit to continue from when ``out_dir`` holds no
            state (e.g. a shipped unfinished teacher, on a machine without the original run). The
            weights, the step count (so the learning-rate schedule), the learning curve and the
            record of machines carry over; Adam's moments, the emulators and the random streams
            start afresh.
        stop_after_s: Checkpoint and return after this many seconds of training (for a session
            with a deadline); the run continues when called again.
        log_every: Updates between printed progress lines.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = cfg.settings()
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    # A minibatch's frames as floats are 29 MB; reusing freed blocks instead of mapping fresh
    # ones cut the page faults 6-9x, for agent steps/s 681 / 754 / 772 against 691 / 724 / 699
    # (`benchmarks/teacher_throughput.py --only "defaults (auto precision)" --updates 5
    # --repeats 1` with and without --default-malloc, three pairs; AMD EPYC, 2 cores, bf16):
    # +4%, within this machine's noise, kept because distill shares the setting.
    keep_freed_memory_for_reuse()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    net = TeacherNet(settings.num_actions).to(device).to(memory_format=memory_format)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate, eps=1e-5)
    global_step, first_update = 0, 1
    segments: list[dict[str, Any]] = []
    curve: list[list[float]] = []

    state_path = out_dir / "trainer_state.pt"
    if state_path.exists():
        state = read_trainer_state(state_path)
        saved = state.config
        # What may change on resume: the budget (the schedule stretches), the machine's settings.
        free = ("total_steps", *_MACHINE_SETTINGS)
        differ = [
            f"{f.name} {getattr(saved, f.name)!r} -> {getattr(cfg, f.name)!r}"
            for f in dataclasses.fields(cfg)
            if f.name not in free and getattr(saved, f.name) != getattr(cfg, f.name)
        ]
        if differ:
            raise UserError(
                f"{out_dir} holds a run with other settings ({', '.join(differ)}); pass the same "
                "arguments to resume or choose another output directory"
            )
        try:
            net.load_state_dict(state.model)
            optimizer.load_state_dict(state.optimizer)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise UserError(
                f"trainer state {str(state_path)!r} does not fit the teacher network or its optimizer "
                f"({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}); {_STATE_FIX}"
            ) from None
        global_step, first_update = state.global_step, state.update + 1
        segments, curve = state.segments, state.curve
        print(f"resuming {out_dir} at step {global_step:,}")
    elif init_from is not None:
        teacher = read_teacher(init_from)
        teacher.settings.check_matches(settings, mine="teacher", theirs="run")
        net.load_state_dict(teacher.state_dict)
        global_step, segments, curve = _history_of_teacher(teacher)
        first_update = global_step // cfg.batch_size + 1
        print(f"continuing from {init_from} at step {global_step:,} (fresh Adam moments)")
    segment = {
        "hardware": hardware_description(),
        "cpu_capability": cpu_capability(),
        "precision": precision,
        "channels_last": cfg.channels_last,
        "from_step": global_step,
        "to_step": global_step,
        "wall_time_s": 0.0,
    }
    segments.append(segment)
    print(f"training in {precision} on {device} (CPU capability {cpu_capability()})", flush=True)

    writer = SummaryWriter(str(out_dir), purge_step=global_step or None)
    if first_update == 1:
        writer.add_text(
            "hyperparameters", "\n".join(f"|{k}|{v}|" for k, v in dataclasses.asdict(cfg).items())
        )

    env = make_vector_env(settings, cfg.num_envs)
    tracker = GameTracker(cfg.num_envs, life_loss_terminal=settings.life_loss_terminal)
    env_ids = np.arange(cfg.num_envs)
    next_obs_np, info = env.reset(seed=int(rng.integers(2**31)) + first_update)
    tracker.start(env_ids, info["episode_frame_number"])
    next_obs = torch.from_numpy(next_obs_np).to(device)
    next_done = torch.zeros(cfg.num_envs, device=device)

    obs_buf = torch.zeros(
        (cfg.num_steps, cfg.num_envs, *next_obs.shape[1:]), dtype=torch.uint8, device=device
    )
    actions_buf = torch.zeros((cfg.num_steps, cfg.num_envs), dtype=torch.long, device=device)
    logp_buf = torch.zeros((cfg.num_steps, cfg.num_envs), device=device)
    rewards_buf = torch.zeros((cfg.num_steps, cfg.num_envs), device=device)
    dones_buf = torch.zeros((cfg.num_steps, cfg.num_envs), device=device)
    values_buf = torch.zeros((cfg.num_steps, cfg.num_envs), device=device)
    bf16 = precision == "bf16"

    recent_scores: list[float] = [point[1] for point in curve[-1:]]
    start = time.time()
    steps_at_start = global_step
    update = first_update - 1
    for update in range(first_update, cfg.num_updates + 1):
        lr = cfg.learning_rate * (1.0 - (update - 1.0) / cfg.num_updates)
        for group in optimizer.param_groups:
            group["lr"] = lr

        net.eval()
        for step in range(cfg.num_steps):
            global_step += cfg.num_envs
            obs_buf[step] = next_obs
            dones_buf[step] = next_done
            with torch.no_grad(), autocast(device, enabled=bf16):
                logits, value = net(to_float(next_obs).contiguous(memory_format=memory_format))
            logp_all = torch.log_softmax(logits.float(), dim=-1)
            action = torch.multinomial(logp_all.exp(), 1).squeeze(1)
            actions_buf[step] = action
            logp_buf[step] = logp_all.gather(1, action[:, None]).squeeze(1)
            values_buf[step] = value.float()

            next_obs_np, reward, terminated, truncated, info = env.step(action.cpu().numpy())
            game_over, scores, _ = tracker.update(
                env_ids, reward, terminated, truncated, info["episode_frame_number"]
            )
            for score in scores:
                recent_scores.append(float(score))
                _add_to_curve(curve, global_step, float(score))
                writer.add_scalar("charts/episodic_return", score, global_step)
            train_reward = np.sign(reward) if settings.clip_rewards else reward
            rewards_buf[step] = torch.as_tensor(train_reward, dtype=torch.float32, device=device)
            next_obs = torch.from_numpy(next_obs_np).to(device)
            next_done = torch.as_tensor(terminated | truncated, dtype=torch.float32, device=device)

        # Generalised advantage estimation, bootstrapped from the value of the last observation.
        with torch.no_grad(), autocast(device, enabled=bf16):
            _, next_value = net(to_float(next_obs).contiguous(memory_format=memory_format))
        advantages, returns = generalised_advantages(
            rewards_buf, values_buf, dones_buf, next_value.float(), next_done, cfg.gamma, cfg.gae_lambda
        )

        b_obs = obs_buf.reshape(-1, *obs_buf.shape[2:])
        b_actions, b_logp = actions_buf.reshape(-1), logp_buf.reshape(-1)
        b_adv, b_returns = advantages.reshape(-1), returns.reshape(-1)
        minibatch = cfg.batch_size // cfg.num_minibatches
        net.train()
        for _epoch in range(cfg.update_epochs):
            order = torch.randperm(cfg.batch_size, device=device)
            for begin in range(0, cfg.batch_size, minibatch):
                idx = order[begin : begin + minibatch]
                with autocast(device, enabled=bf16):
                    loss, stats = _ppo_loss(
                        net,
                        cfg,
                        b_obs[idx].contiguous(memory_format=memory_format),
                        b_actions[idx],
                        b_logp[idx],
                        b_adv[idx],
                        b_returns[idx],
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)
                optimizer.step()

        elapsed = time.time() - start
        sps = (global_step - steps_at_start) / max(elapsed, 1e-9)
        writer.add_scalar("charts/learning_rate", lr, global_step)
        writer.add_scalar("charts/steps_per_second", sps, global_step)
        for key, value in stats.items():
            writer.add_scalar(f"losses/{key}", value, global_step)
        if update % log_every == 0 or update == cfg.num_updates:
            mean20 = float(np.mean(recent_scores[-20:])) if recent_scores else float("nan")
            print(
                f"update {update}/{cfg.num_updates} step {global_step:,} sps {sps:.0f} "
                f"return(last 20) {mean20:.1f}",
                flush=True,
            )
        out_of_time = stop_after_s is not None and elapsed >= stop_after_s
        if update % cfg.checkpoint_every == 0 or update == cfg.num_updates or out_of_time:
            segment.update(to_step=global_step, wall_time_s=round(elapsed, 1))
            _save(net, optimizer, cfg, settings, out_dir, global_step, update, segments, curve)
        if out_of_time:
            print(f"stopping after {elapsed / 60:.1f} min at step {global_step:,}; run again to continue")
            break

    env.close()
    writer.close()
    elapsed = time.time() - start
    return TrainResult(
        teacher_path=out_dir / "teacher.pt",
        agent_steps=global_step,
        steps_this_call=global_step - steps_at_start,
        steps_per_s=(global_step - steps_at_start) / max(elapsed, 1e-9),
        precision=precision,
        finished=update >= cfg.num_updates,
    )


def _segments_of(
    segments: list[dict[str, Any]] | None, steps: int, wall_time_s: float, hardware: str | None
) -> list[dict[str, Any]]:
    """The record of machines a run trained on; runs saved before segments existed become one
    segment whose CPU capability and precision were not recorded (the trainer then always ran
    bf16 autocast)."""
    if segments:
        return [dict(seg) for seg in segments]
    if steps == 0:
        return []
    return [
        {
            "hardware": hardware or "unknown",
            "cpu_capability": "not recorded",
            "precision": "bf16 (autocast, not recorded)",
            "from_step": 0,
            "to_step": steps,
            "wall_time_s": wall_time_s,
        }
    ]


def _history_of_teacher(teacher: TeacherFile) -> tuple[int, list[dict[str, Any]], list[list[float]]]:
    """The step count, record of machines and learning curve a run continued from ``teacher`` carries."""
    training = teacher.training
    problem = history_problem(training.get("segments"), training.get("curve", []))
    try:
        global_step = int(training.get("agent_steps", 0))
        wall_time_s = float(training.get("wall_time_s", 0.0))
    except (TypeError, ValueError):
        problem = problem or "a malformed step count or wall time"
    if problem is not None:
        raise UserError(
            f"teacher checkpoint {str(teacher.path)!r} records {problem} in its training history; "
            "continue from another teacher checkpoint, or start afresh without --init-from"
        )
    segments = _segments_of(training.get("segments"), global_step, wall_time_s, training.get("hardware"))
    return global_step, segments, [list(point) for point in training.get("curve", [])]


_MACHINE_SETTINGS = ("device", "checkpoint_every", "precision", "channels_last")
"""Trainer settings of the machine, not of the learning problem: they may change on resume, and a
state written before one existed takes its default."""
_STATE_FIX = (
    "use the policy-distill version that wrote it, or start the run afresh in another output directory"
)


@dataclass(frozen=True)
class TrainerState:
    """A ``trainer_state.pt`` read and checked by :func:`read_trainer_state`."""

    config: PPOConfig
    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    global_step: int
    update: int
    segments: list[dict[str, Any]]
    """The record of machines (see :func:`_segments_of`)."""
    curve: list[list[float]]


def read_trainer_state(path: str | Path) -> TrainerState:
    """Read a trainer state (``weights_only``) and check its fields, for resuming or exporting.

    Raises:
        UserError: a missing, truncated, pickled or foreign file, or one whose settings or
            counters are missing, unknown or malformed: one line naming the file and the fix.
    """
    path = Path(path)
    record = safe_torch_load(path, what="trainer state")
    state = require_format(record, TRAINER_FORMAT, path, what="trainer state")

    def bad(problem: str) -> UserError:
        return UserError(f"trainer state {str(path)!r} {problem}; {_STATE_FIX}")

    config = state.get("config")
    if not isinstance(config, dict):
        raise bad("lacks its trainer settings (config)")
    names = [f.name for f in dataclasses.fields(PPOConfig)]
    unknown = [str(k) for k in config if k not in names]
    missing = [n for n in names if n not in config and n not in _MACHINE_SETTINGS]
    if unknown or missing:
        found = [f"unknown settings {', '.join(unknown)}"] if unknown else []
        found += [f"no {', '.join(missing)}"] if missing else []
        raise bad(f"records {' and '.join(found)} (written by another version of policy-distill?)")
    try:
        cfg = PPOConfig(**config)
    except UserError as e:
        raise bad(f"holds {e}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise bad(f"holds malformed trainer settings ({type(e).__name__}: {str(e)[:100]})") from None
    model, optimizer = state.get("model"), state.get("optimizer")
    if not isinstance(model, dict) or not all(isinstance(v, Tensor) for v in model.values()):
        raise bad("lacks the network's weights (model)")
    if not isinstance(optimizer, dict):
        raise bad("lacks the optimizer's state (optimizer)")
    counters = {k: state.get(k) for k in ("global_step", "update", "wall_time_s")}
    for key, value in counters.items():
        if not isinstance(value, (float, int) if key == "wall_time_s" else int) or isinstance(value, bool):
            raise bad(f"records no valid {key} ({value!r})")
    problem = history_problem(state.get("segments"), state.get("curve", []))
    if problem is not None:
        raise bad(f"records {problem}")
    return TrainerState(
        config=cfg,
        model=model,
        optimizer=optimizer,
        global_step=state["global_step"],
        update=state["update"],
        segments=_segments_of(state.get("segments"), state["global_step"], state["wall_time_s"], None),
        curve=[list(point) for point in state.get("curve", [])],
    )


def _training_record(
    cfg: PPOConfig,
    settings: EnvSettings,
    global_step: int,
    segments: list[dict[str, Any]],
    curve: list[list[float]],
) -> dict[str, Any]:
    """The ``training`` entry of a teacher checkpoint: what made these weights."""
    return {
        "algorithm": "PPO (clipped, GAE)",
        "hyperparameters": dataclasses.asdict(cfg),
        "agent_steps": global_step,
        "emulator_frames": global_step * settings.frameskip,
        "wall_time_s": round(sum(seg["wall_time_s"] for seg in segments), 1),
        "hardware": hardware_description(),
        "segments": segments,
        "curve": curve,
        "training_return_last_bin": curve[-1][1] if curve else None,
    }


def _save(
    net: TeacherNet,
    optimizer: torch.optim.Optimizer,
    cfg: PPOConfig,
    settings: EnvSettings,
    out_dir: Path,
    global_step: int,
    update: int,
    segments: list[dict[str, Any]],
    curve: list[list[float]],
) -> None:
    """Write the resumable trainer state and the teacher checkpoint, each atomically."""
    model_state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_torch_save(
        {
            "format": TRAINER_FORMAT,
            "config": dataclasses.asdict(cfg),
            "model": model_state,
            "optimizer": optimizer.state_dict(),
            "global_step": global_step,
            "update": update,
            "wall_time_s": round(sum(seg["wall_time_s"] for seg in segments), 1),
            "segments": segments,
            "curve": curve,
        },
        out_dir / "trainer_state.pt",
    )
    training = _training_record(cfg, settings, global_step, segments, curve)
    atomic_torch_save(teacher_record(model_state, settings, training), out_dir / "teacher.pt")


def export_teacher(
    run_dir: str | Path, out_path: str | Path, *, half: bool = True, final: bool = False
) -> Path:
    """Write the policy of a training run as a shippable teacher checkpoint.

    Args:
        run_dir: A ``train-teacher`` output directory (reads its ``trainer_state.pt``).
        out_path: Destination, e.g. ``agents/pretrained/pong.pt``.
        half: Store weights as float16 (half the size; they load back as float32).
        final: Training ends here even if the planned total is not reached (recorded as
            ``training["stopped_early"]``, and the card says so).
    """
    run_dir = Path(run_dir)
    state_path = run_dir / "trainer_state.pt"
    state = read_trainer_state(state_path)
    cfg = state.config
    settings = cfg.settings()
    model = {k: (v.half() if half and v.is_floating_point() else v) for k, v in state.model.items()}
    training = _training_record(cfg, settings, state.global_step, state.segments, state.curve)
    reached_total = state.global_step >= cfg.num_updates * cfg.batch_size
    training["finished"] = reached_total or final
    if final and not reached_total:
        training["stopped_early"] = True
    training["weights_dtype"] = "float16" if half else "float32"
    out_path = Path(out_path)
    record = teacher_record(model, settings, training)
    try:  # the reader's own checks, before a good teacher at out_path is replaced
        teacher_from_record(record, out_path)
    except CorruptTeacher as e:
        raise UserError(
            f"trainer state {str(state_path)!r} makes no readable teacher ({e.problem}), so "
            f"{str(out_path)!r} was not written; {_STATE_FIX}"
        ) from None
    atomic_torch_save(record, out_path)
    return out_path
