"""Teachers trained elsewhere (``agents/imported.py``): SB3 / RL Zoo zips and CleanRL state dicts.

Real (untrained) SB3 PPO, A2C, DQN and QR-DQN CnnPolicy models are saved as zips; through
``load_teacher`` they must give the same action probabilities / Q-values as SB3's own policy on
the same uint8 observations, to float tolerance. CleanRL networks are rebuilt here as in CleanRL's
``ppo_atari.py`` and ``dqn_atari.py``.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from agents.imported import Q_TEMPERATURE, imported_settings
from agents.loading import load_teacher
from policy_distill.errors import UserError
from policy_distill.policy import to_float

sb3 = pytest.importorskip("stable_baselines3")
sb3_contrib = pytest.importorskip("sb3_contrib")
gym = pytest.importorskip("gymnasium")

NUM_ACTIONS = 6  # Pong's minimal action set


class _FrameStackEnv(gym.Env):
    """A stand-in for RL Zoo's Atari env: ``(84, 84, 4) uint8`` observations, 6 actions.

    Channel-last like ``VecFrameStack`` over ``AtariWrapper``; SB3 transposes it to
    ``(4, 84, 84)`` (``VecTransposeImage``) exactly as it does for a real Atari env.
    """

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(0, 255, (84, 84, 4), np.uint8)
        self.action_space = gym.spaces.Discrete(NUM_ACTIONS)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return np.zeros((84, 84, 4), np.uint8), {}

    def step(self, action: int):
        return np.zeros((84, 84, 4), np.uint8), 0.0, False, False, {}


def _make(algo: str, **policy_kwargs):
    from sb3_contrib import QRDQN
    from stable_baselines3 import A2C, DQN, PPO

    cls = {"ppo": PPO, "a2c": A2C, "dqn": DQN, "qrdqn": QRDQN}[algo]
    extra = {"buffer_size": 1} if algo in ("dqn", "qrdqn") else {}
    model = cls(
        "CnnPolicy", _FrameStackEnv(), policy_kwargs=policy_kwargs or None, device="cpu", seed=0, **extra
    )
    # Untrained heads give near-uniform policies (PPO/A2C start at gain 0.01; QR-DQN averages 200
    # quantiles), against which any torso would agree: scale the head so that a wrong torso,
    # frame order or pixel scale shows.
    head = {
        "ppo": lambda: model.policy.action_net,
        "a2c": lambda: model.policy.action_net,
        "dqn": lambda: model.q_net.q_net[0],
        "qrdqn": lambda: model.policy.quantile_net.quantile_net[0],
    }[algo]()
    with torch.no_grad():
        head.weight.mul_({"ppo": 300.0, "a2c": 300.0, "dqn": 1.0, "qrdqn": 30.0}[algo])
    return model


@pytest.fixture(scope="module")
def sb3_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[object, Path]]:
    out = {}
    folder = tmp_path_factory.mktemp("sb3")
    for algo in ("ppo", "a2c", "dqn", "qrdqn"):
        model = _make(algo)
        path = folder / f"{algo}_pong.zip"
        model.save(path)
        out[algo] = (model, path)
    return out


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    """``[8, 4, 84, 84] uint8``: random pixels plus a few Pong-like frames (dark with bright bars)."""
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, size=(8, 4, 84, 84), dtype=np.uint8)
    obs[4:] = 87
    for i in range(4, 8):
        for f in range(4):
            obs[i, f, 30 + 2 * f + i : 42 + 2 * f + i, 75:77] = 147  # paddle moving down
            obs[i, f, 20 + 3 * f, 40 + 4 * f - i] = 236  # ball
    return torch.from_numpy(obs)


def _sb3_reference(algo: str, model, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SB3's own (action values, log-probabilities) on ``obs`` ``[B, 4, 84, 84] uint8``."""
    with torch.no_grad():
        if algo in ("ppo", "a2c"):
            dist = model.policy.get_distribution(obs)
            logp = dist.distribution.logits  # torch Categorical: normalised log-probabilities
            return logp, logp
        if algo == "dqn":
            q = model.q_net(obs)
        else:
            q = model.policy.quantile_net(obs).mean(dim=1)  # how QR-DQN acts
        return q, torch.log_softmax(q / Q_TEMPERATURE, dim=-1)


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "qrdqn"])
def test_sb3_zip_matches_sb3_policy(algo: str, sb3_models, frames: torch.Tensor) -> None:
    model, path = sb3_models[algo]
    teacher = load_teacher(path, game="pong")
    assert teacher.source.kind == f"sb3-{algo}"
    assert teacher.num_actions == NUM_ACTIONS
    assert teacher.settings == imported_settings("pong")

    values, logp_ref = _sb3_reference(algo, model, frames)
    x = to_float(frames)
    with torch.no_grad():
        logp = teacher.log_probs(x)
        ours = teacher.net.action_values(x)
    if algo in ("ppo", "a2c"):
        ours = torch.log_softmax(ours, dim=-1)
    torch.testing.assert_close(ours, values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logp, logp_ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(len(frames)))
    assert torch.equal(logp.argmax(-1), values.argmax(-1))
    # The test is only as strong as the policy is far from uniform.
    assert (logp.exp().max(-1).values > 1.5 / NUM_ACTIONS).any()


def test_sb3_zip_provenance_and_gradients(sb3_models, frames: torch.Tensor) -> None:
    from policy_distill.checkpoint import sha256_file

    _, path = sb3_models["dqn"]
    teacher = load_teacher(path, game="pong")
    assert teacher.source.sha256 == sha256_file(path)
    assert teacher.source.path == str(path.resolve())
    assert all(not p.requires_grad for p in teacher.parameters())
    x = to_float(frames[:2]).requires_grad_(True)
    teacher.log_probs(x)[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def _rewrite_zip(src: Path, dst: Path, **members: bytes) -> Path:
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for name in a.namelist():
            b.writestr(name, members.get(name.replace(".", "_"), a.read(name)))
    return dst


def _policy_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def test_sb3_before_1_7_layout(sb3_models, frames: torch.Tensor, tmp_path: Path) -> None:
    """SB3 < 1.7 saved the extractor once, with no pi_/vf_features_extractor copies."""
    model, path = sb3_models["ppo"]
    state = {k: v for k, v in model.policy.state_dict().items() if not k.startswith(("pi_", "vf_"))}
    old = _rewrite_zip(path, tmp_path / "old.zip", policy_pth=_policy_bytes(state))
    new = load_teacher(path, game="pong")
    teacher = load_teacher(old, game="pong")
    x = to_float(frames)
    with torch.no_grad():
        torch.testing.assert_close(teacher.log_probs(x), new.log_probs(x), rtol=0, atol=0)


def test_sb3_unshared_extractors(frames: torch.Tensor, tmp_path: Path) -> None:
    model = _make("ppo", share_features_extractor=False)
    path = tmp_path / "ppo_unshared.zip"
    model.save(path)
    teacher = load_teacher(path, game="pong")
    ref, _ = _sb3_reference("ppo", model, frames)
    with torch.no_grad():
        torch.testing.assert_close(teacher.log_probs(to_float(frames)), ref, rtol=1e-5, atol=1e-4)


def test_sb3_game_from_rl_zoo_file_name(sb3_models, tmp_path: Path) -> None:
    _, path = sb3_models["ppo"]
    zoo = tmp_path / "ppo" / "PongNoFrameskip-v4_1" / "PongNoFrameskip-v4.zip"
    zoo.parent.mkdir(parents=True)
    zoo.write_bytes(path.read_bytes())
    assert load_teacher(zoo).settings.game == "pong"
    with pytest.raises(UserError, match="named after pong"):
        load_teacher(zoo, game="space_invaders")
    with pytest.raises(UserError, match="`game`"):
        load_teacher(path)  # ppo_pong.zip names no game that the loader recognises


_CALLED: list[str] = []


def _mark_called() -> dict:
    _CALLED.append("unpickled")
    return {}


class _Payload:
    """Unpickling this would call ``_mark_called``: weights_only loading must refuse it."""

    def __reduce__(self):
        return (_mark_called, ())


def test_sb3_pickled_policy_refused(sb3_models, tmp_path: Path) -> None:
    _, path = sb3_models["ppo"]
    bad = _rewrite_zip(path, tmp_path / "bad.zip", policy_pth=_policy_bytes({"payload": _Payload()}))
    with pytest.raises(UserError, match="pickled Python objects") as err:
        load_teacher(bad, game="pong")
    assert "\n" not in str(err.value)
    assert not _CALLED


def test_sb3_wrong_observation_space_refused(sb3_models, tmp_path: Path) -> None:
    _, path = sb3_models["ppo"]
    with zipfile.ZipFile(path) as z:
        data = json.loads(z.read("data"))
    for field, value in (("_shape", [4, 64, 64]), ("dtype", "float32")):
        changed = json.loads(json.dumps(data))
        changed["observation_space"][field] = value
        bad = _rewrite_zip(path, tmp_path / f"obs_{field}.zip", data=json.dumps(changed).encode())
        with pytest.raises(UserError, match="uint8 \\[4, 84, 84\\]"):
            load_teacher(bad, game="pong")


def test_sb3_action_count_and_game_checked(sb3_models) -> None:
    _, path = sb3_models["dqn"]
    with pytest.raises(UserError, match="has 6 actions .* breakout has 4"):
        load_teacher(path, game="breakout")


def test_sb3_bad_files_refused(sb3_models, tmp_path: Path) -> None:
    _, path = sb3_models["ppo"]
    not_json = _rewrite_zip(path, tmp_path / "notjson.zip", data=b"\x80not json")
    with pytest.raises(UserError, match="not JSON"):
        load_teacher(not_json, game="pong")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(UserError, match="truncated or corrupted"):
        load_teacher(truncated, game="pong")
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(UserError, match="without SB3's 'data' and 'policy.pth'"):
        load_teacher(other, game="pong")


def test_sb3_extra_layers_refused(sb3_models, tmp_path: Path) -> None:
    model = _make("dqn", net_arch=[64])
    path = tmp_path / "dqn_mlp.zip"
    model.save(path)
    with pytest.raises(UserError, match="layers beyond the default CnnPolicy"):
        load_teacher(path, game="pong")
    ppo, ppo_path = sb3_models["ppo"]
    state = {**ppo.policy.state_dict(), "features_extractor.cnn.6.weight": torch.zeros(1)}
    extra = _rewrite_zip(ppo_path, tmp_path / "extra.zip", policy_pth=_policy_bytes(state))
    with pytest.raises(UserError, match="features_extractor.cnn.6.weight"):
        load_teacher(extra, game="pong")


# ----------------------------------------------------------------------------------------------
# CleanRL
# ----------------------------------------------------------------------------------------------


def _layer_init(layer: nn.Module, std: float = math.sqrt(2), bias_const: float = 0.0) -> nn.Module:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias_const)
    return layer


class _CleanRLPPOAgent(nn.Module):
    """CleanRL ``ppo_atari.py``'s Agent (its forward divides by 255)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.network = nn.Sequential(
            _layer_init(nn.Conv2d(4, 32, 8, stride=4)),
            nn.ReLU(),
            _layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            _layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
            _layer_init(nn.Linear(64 * 7 * 7, 512)),
            nn.ReLU(),
        )
        self.actor = _layer_init(nn.Linear(512, n), std=1.0)  # CleanRL uses 0.01; see _make
        self.critic = _layer_init(nn.Linear(512, 1), std=1)

    def log_probs(self, obs: torch.Tensor) -> torch.Tensor:
        logits = self.actor(self.network(obs / 255.0))
        return torch.distributions.Categorical(logits=logits).logits


class _CleanRLQNetwork(nn.Module):
    """CleanRL ``dqn_atari.py``'s QNetwork."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3136, 512),
            nn.ReLU(),
            nn.Linear(512, n),
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.network(obs / 255.0)


@pytest.mark.parametrize("kind", ["ppo", "dqn"])
def test_cleanrl_matches_cleanrl_network(kind: str, frames: torch.Tensor, tmp_path: Path) -> None:
    torch.manual_seed(0)
    agent = _CleanRLPPOAgent(NUM_ACTIONS) if kind == "ppo" else _CleanRLQNetwork(NUM_ACTIONS)
    path = tmp_path / f"{kind}_atari.cleanrl_model"
    torch.save(agent.state_dict(), path)
    teacher = load_teacher(path, game="pong")
    assert teacher.source.kind == f"cleanrl-{kind}"
    assert teacher.settings == imported_settings("pong")
    x = to_float(frames)
    with torch.no_grad():
        if kind == "ppo":
            ref = agent.log_probs(frames.float())
        else:
            q = agent(frames.float())
            torch.testing.assert_close(teacher.net.action_values(x), q, rtol=1e-5, atol=1e-5)
            ref = torch.log_softmax(q / Q_TEMPERATURE, dim=-1)
        torch.testing.assert_close(teacher.log_probs(x), ref, rtol=1e-5, atol=1e-4)


def test_cleanrl_needs_game(tmp_path: Path) -> None:
    path = tmp_path / "ppo_atari.cleanrl_model"
    torch.save(_CleanRLPPOAgent(NUM_ACTIONS).state_dict(), path)
    with pytest.raises(UserError, match="pass `game`"):
        load_teacher(path)
    with pytest.raises(UserError, match="has 6 actions .* breakout has 4"):
        load_teacher(path, game="breakout")


def test_cleanrl_pickled_or_foreign_refused(tmp_path: Path) -> None:
    state = _CleanRLQNetwork(NUM_ACTIONS).state_dict()
    pickled = tmp_path / "pickled.cleanrl_model"
    torch.save({**state, "payload": _Payload()}, pickled)
    with pytest.raises(UserError, match="pickled Python objects"):
        load_teacher(pickled, game="pong")
    assert not _CALLED
    lstm = tmp_path / "lstm.cleanrl_model"
    torch.save({**_CleanRLPPOAgent(NUM_ACTIONS).state_dict(), "lstm.weight_ih_l0": torch.zeros(4)}, lstm)
    with pytest.raises(UserError, match="does not have the cleanrl-ppo layout"):
        load_teacher(lstm, game="pong")


def test_native_checkpoints_still_load(tmp_path: Path, frames: torch.Tensor) -> None:
    """The dispatch leaves the toolkit's own format to the native loader."""
    from agents.networks import TeacherNet
    from agents.teacher_file import TEACHER_FORMAT
    from policy_distill.settings import EnvSettings

    net = TeacherNet(NUM_ACTIONS)
    settings = EnvSettings("pong")
    record = {
        "format": TEACHER_FORMAT,
        "num_actions": NUM_ACTIONS,
        "settings": settings.to_dict(),
        "state_dict": net.state_dict(),
    }
    path = tmp_path / "teacher.pt"
    torch.save(record, path)
    teacher = load_teacher(path, game="pong")
    assert teacher.source.kind == "policy-distill"
    assert teacher.settings == settings
    with torch.no_grad():
        torch.testing.assert_close(teacher.log_probs(to_float(frames)), net.log_probs(to_float(frames)))
