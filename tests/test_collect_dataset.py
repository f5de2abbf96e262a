"""Collection and the dataset: exact observation rebuilding, metadata, split, reuse rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import policy_distill.collect as collect_module
from agents.loading import load_teacher, shipped_teachers
from policy_distill.collect import CollectConfig, collect
from policy_distill.dataset import load_dataset
from policy_distill.errors import UserError
from policy_distill.policy import to_float

# Short games (truncated after 240 emulator frames = 60 agent steps) give many episode
# boundaries in a few hundred frames.


class RecordingEnv:
    """Wraps the vector env and logs, per environment, every observation handed to the agent."""

    def __init__(self, env) -> None:
        self.env = env
        self.log: dict[int, list[np.ndarray]] = {}

    def _note(self, obs: np.ndarray, info: dict) -> None:
        for j, e in enumerate(info["env_id"]):
            self.log.setdefault(int(e), []).append(obs[j].copy())

    def reset(self, **kw):
        obs, info = self.env.reset(**kw)
        self._note(obs, info)
        return obs, info

    def send(self, actions: np.ndarray) -> None:
        self.env.send(actions)

    def recv(self):
        out = self.env.recv()
        self._note(out[0], out[4])
        return out

    def close(self) -> None:
        self.env.close()


def _collect_recorded(monkeypatch, teacher_path: Path, out: Path, cfg: CollectConfig) -> RecordingEnv:
    holder: dict[str, RecordingEnv] = {}
    real = collect_module.make_vector_env

    def fake(*args, **kwargs):
        holder["env"] = RecordingEnv(real(*args, **kwargs))
        return holder["env"]

    monkeypatch.setattr(collect_module, "make_vector_env", fake)
    collect(load_teacher(teacher_path), cfg, out, progress=False)
    return holder["env"]


def _episode_obs(ds, e: int) -> np.ndarray:
    return ds.observations(np.arange(ds.episode_starts[e], ds.episode_starts[e + 1]))


def test_single_env_rebuilds_exactly_the_observations_seen(
    short_settings, monkeypatch, make_teacher_file, tmp_path
) -> None:
    teacher = make_teacher_file(short_settings)
    recorder = _collect_recorded(
        monkeypatch, teacher, tmp_path / "ds", CollectConfig(frames=250, num_envs=1, batch_size=1)
    )
    ds = load_dataset(tmp_path / "ds")
    seen = np.stack(recorder.log[0][: len(ds)])  # the last logged observation was never acted on
    assert ds.meta["complete_episodes"] >= 3, "the test needs several episode boundaries"
    np.testing.assert_array_equal(ds.observations(np.arange(len(ds))), seen)
    # Each frame is stored once: 3 extra frames per episode for the initial stack, no more.
    assert len(ds.frames) == len(ds) + 3 * ds.meta["episodes"]


def test_async_envs_rebuild_each_episode_exactly(
    short_settings, monkeypatch, make_teacher_file, tmp_path
) -> None:
    teacher = make_teacher_file(short_settings)
    recorder = _collect_recorded(
        monkeypatch, teacher, tmp_path / "ds", CollectConfig(frames=600, num_envs=4, batch_size=2)
    )
    ds = load_dataset(tmp_path / "ds")
    # Which environments finish depends on stepping order (async); 600 frames leave a margin
    # (400 gave 3 complete episodes once on a loaded machine).
    assert ds.meta["complete_episodes"] >= 4
    logs = {e: np.stack(obs) for e, obs in recorder.log.items()}
    for e in range(ds.meta["episodes"]):
        episode = _episode_obs(ds, e)
        # The episode must appear, frame for frame, as a contiguous run of one environment's log.
        found = False
        for log in logs.values():
            starts = np.flatnonzero((log == episode[0]).all(axis=(1, 2, 3)))
            for s in starts:
                if s + len(episode) <= len(log) and np.array_equal(log[s : s + len(episode)], episode):
                    found = True
                    break
            if found:
                break
        assert found, f"episode {e} does not match any environment's observations"
    # Each stored log_probs row is the teacher's output on that row's own observation: a row given
    # to another environment's stream, or shifted by one step, fails here. The teacher is fed the
    # observation as collect feeds it (uint8 -> float in [0, 1]). log_probs are stored as float32,
    # computed by the same float32 forward; only the batch size differs (2 there, all here), which
    # changed the rows by 1.2e-7 at most (measured), while consecutive frames' rows of this
    # near-uniform random teacher differ by 2e-5 to 6e-3: atol 1e-5 separates the two.
    stored_obs = torch.from_numpy(ds.observations(np.arange(len(ds))))
    with torch.no_grad():
        recomputed = load_teacher(teacher).log_probs(to_float(stored_obs)).float().numpy()
    assert ds.log_probs.dtype == np.float32
    np.testing.assert_allclose(ds.log_probs, recomputed, rtol=0, atol=1e-5)


def test_dataset_metadata_shapes_and_dtypes_with_shipped_teacher(tmp_path) -> None:
    if "pong" not in shipped_teachers():
        pytest.fail("the shipped Pong teacher agents/pretrained/pong.pt is missing")
    teacher = load_teacher("pong")
    meta = collect(
        teacher, CollectConfig(frames=300, num_envs=4, batch_size=2), tmp_path / "pong", progress=False
    )
    on_disk = json.loads((tmp_path / "pong" / "meta.json").read_text())
    assert on_disk == meta
    assert meta["frames"] == 300 and meta["game"] == "pong" and meta["format_version"] == 1
    assert meta["teacher"]["sha256"] == teacher.source.sha256 and meta["seed"] == 0
    assert meta["settings"] == teacher.settings.to_dict()
    assert set(meta["versions"]) >= {"ale-py", "gymnasium", "torch"}
    assert meta["episodes"] >= 1 and len(meta["content_sha256"]) == 64
    ds = load_dataset(tmp_path / "pong")
    assert ds.frames.dtype == np.uint8 and ds.frames.shape[1:] == (84, 84)
    assert ds.observations(np.arange(5)).shape == (5, 4, 84, 84)
    assert ds.log_probs.shape == (300, 6) and ds.log_probs.dtype == np.float32
    np.testing.assert_allclose(np.exp(ds.log_probs).sum(1), 1.0, atol=1e-5)
    assert ds.actions.shape == (300,) and ds.actions.max() < 6
    assert ds.rewards.dtype == np.float32 and set(np.unique(ds.rewards)) <= {-1.0, 0.0, 1.0}
    assert ds.episode_starts[0] == 0 and ds.episode_starts[-1] == 300


def test_a_recording_is_a_function_of_its_seed(short_settings, make_teacher_file, tmp_path) -> None:
    # The default steps all games together, so thread timing cannot reorder the teacher's draws:
    # the same command records the same content, and another seed other content.
    teacher = load_teacher(make_teacher_file(short_settings))
    cfg = CollectConfig(frames=300, num_envs=4)
    first = collect(teacher, cfg, tmp_path / "a", progress=False)
    again = collect(teacher, cfg, tmp_path / "b", progress=False)
    other = collect(teacher, CollectConfig(frames=300, num_envs=4, seed=1), tmp_path / "c", progress=False)
    assert first["collect_config"]["batch_size"] == 0
    assert first["content_sha256"] == again["content_sha256"] != other["content_sha256"]


def test_reuse_same_arguments_and_refuse_different_ones(
    short_settings, make_teacher_file, monkeypatch, capsys, tmp_path
) -> None:
    teacher = load_teacher(make_teacher_file(short_settings))
    out = tmp_path / "ds"
    recordings = []
    real_record = collect_module._record

    def counted_record(*args, **kwargs):
        recordings.append(args[2])
        return real_record(*args, **kwargs)

    monkeypatch.setattr(collect_module, "_record", counted_record)
    first = collect(teacher, CollectConfig(frames=40, num_envs=2, batch_size=2), out, progress=False)
    capsys.readouterr()
    again = collect(teacher, CollectConfig(frames=40, num_envs=2, batch_size=2), out, progress=False)
    assert recordings == [out], "a complete dataset with the same arguments should be reused, not recorded"
    assert f"reusing the complete dataset in {out} (40 frames)" in capsys.readouterr().out
    assert again == first
    with pytest.raises(UserError, match="frames: 40 != 60"):
        collect(teacher, CollectConfig(frames=60, num_envs=2, batch_size=2), out, progress=False)
    replaced = collect(
        teacher, CollectConfig(frames=60, num_envs=2, batch_size=2), out, overwrite=True, progress=False
    )
    assert replaced["frames"] == 60 and recordings == [out, out]


def test_interrupted_collection_leaves_no_dataset(
    short_settings, monkeypatch, make_teacher_file, tmp_path
) -> None:
    teacher = load_teacher(make_teacher_file(short_settings))

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(collect_module.np, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        collect(teacher, CollectConfig(frames=20, num_envs=2, batch_size=2), tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists()
    assert not list(tmp_path.glob(".ds.tmp-*")), "the temporary directory should be removed"
    with pytest.raises(UserError, match="no dataset"):
        load_dataset(tmp_path / "ds")


def _fake_dataset(tmp_path: Path, episode_lengths: list[int]):
    from policy_distill.dataset import Dataset

    starts = np.concatenate([[0], np.cumsum(episode_lengths)]).astype(np.int64)
    n = int(starts[-1])
    return Dataset(
        path=tmp_path,
        meta={"settings": {"stack": 4}},
        frames=np.zeros((n + 3, 84, 84), np.uint8),
        frame_index=np.arange(n),
        log_probs=np.zeros((n, 6), np.float32),
        actions=np.zeros(n, np.uint8),
        rewards=np.zeros(n, np.float32),
        episode_starts=starts,
        episode_complete=np.ones(len(episode_lengths), bool),
    )


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.33, 0.5, 0.8, 0.95])
def test_split_is_time_wise_exact_and_never_shares_an_episode(rng, tmp_path, fraction: float) -> None:
    ds = _fake_dataset(tmp_path, list(rng.integers(50, 400, size=60)))
    split = ds.split(fraction)
    n = len(ds)
    assert len(split.train) == round(fraction * n)
    np.testing.assert_array_equal(split.train, np.arange(len(split.train)))  # the first x% of the recording
    assert len(split.test) > 0 and split.test[0] >= len(split.train)
    assert not set(ds.episode_of(split.train)) & set(ds.episode_of(split.test))
    assert split.test[-1] == n - 1  # tests on all the rest
    # What neither side uses is only the remainder of the one episode the cut falls into.
    unused = split.test[0] - len(split.train)
    cut_episode = ds.episode_of(np.array([len(split.train) - 1]))[0]
    assert unused < ds.episode_starts[cut_episode + 1] - ds.episode_starts[cut_episode]


@pytest.mark.parametrize("fraction", [0.1, 0.5, 1.0])
def test_validation_split_stays_inside_the_training_part(rng, tmp_path, fraction: float) -> None:
    ds = _fake_dataset(tmp_path, list(rng.integers(50, 400, size=60)))
    n_train = len(ds.split(fraction).train)
    val = ds.split(fraction, validation_fraction=0.2)
    assert len(val.train) == round(0.8 * n_train)
    np.testing.assert_array_equal(val.train, np.arange(len(val.train)))
    assert len(val.test) > 0 and val.test[0] >= len(val.train)
    assert val.test[-1] == n_train - 1  # never reaches into the test part
    assert not set(ds.episode_of(val.train)) & set(ds.episode_of(val.test))
    with pytest.raises(UserError, match="`validation_fraction`"):
        ds.split(fraction, validation_fraction=1.0)


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.5, 1.0])
def test_previous_boundary_validation_holds_whole_episodes_and_at_least_v(rng, tmp_path, fraction) -> None:
    ds = _fake_dataset(tmp_path, list(rng.integers(50, 400, size=60)))
    n_train = len(ds.split(fraction).train)
    val = ds.split(fraction, validation_fraction=0.2, validation_boundary="previous")
    assert len(val.train) > 0 and val.test[0] == len(val.train)  # fit | validation, nothing unused
    assert val.test[0] in set(ds.episode_starts)  # validation starts an episode
    assert val.test[-1] == n_train - 1  # never reaches into the test part
    assert len(val.test) >= 0.2 * n_train - 1  # at least v of the training part (rounding)
    assert not set(ds.episode_of(val.train)) & set(ds.episode_of(val.test))
    # A training part inside the first episode leaves nothing to fit: an empty fit part, not an error here.
    first = ds.episode_starts[1]
    assert len(ds.split((first - 1) / len(ds), 0.2, "previous").train) == 0
    with pytest.raises(UserError, match="`validation_boundary` must be one of next, previous"):
        ds.split(fraction, 0.2, "before")


def test_split_rejects_bad_fractions(tmp_path) -> None:
    ds = _fake_dataset(tmp_path, [100, 100])
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(UserError, match="`train_fraction`"):
            ds.split(bad)


def test_partial_dataset_is_refused(short_settings, make_teacher_file, tmp_path) -> None:
    teacher = load_teacher(make_teacher_file(short_settings))
    collect(teacher, CollectConfig(frames=30, num_envs=2, batch_size=2), tmp_path / "ds", progress=False)
    (tmp_path / "ds" / "log_probs.npy").unlink()
    with pytest.raises(UserError, match="missing or corrupted"):
        load_dataset(tmp_path / "ds")
