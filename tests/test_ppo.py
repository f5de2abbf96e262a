"""The PPO teacher trainer on tiny runs: it writes loadable teachers and resumes."""

from __future__ import annotations

import torch

from agents.loading import load_teacher
from agents.ppo import PPOConfig, export_teacher, train_ppo


def tiny(**kw) -> PPOConfig:  # noqa: ANN003
    base = dict(
        game="pong",
        total_steps=64,
        num_envs=2,
        num_steps=16,
        num_minibatches=2,
        update_epochs=1,
        checkpoint_every=1,
        device="cpu",
    )
    base.update(kw)
    return PPOConfig(**base)


def test_train_resume_and_export(tmp_path) -> None:  # noqa: ANN001
    run = tmp_path / "run"
    teacher_path = train_ppo(tiny(total_steps=32), run)
    first = torch.load(run / "trainer_state.pt", weights_only=True)
    assert first["global_step"] == 32
    teacher = load_teacher(teacher_path, game="pong")
    assert teacher.num_actions == 6
    train_ppo(tiny(total_steps=64), run)  # the same run, longer: resumes at step 32
    second = torch.load(run / "trainer_state.pt", weights_only=True)
    assert second["global_step"] == 64 and second["update"] == 2
    assert any(not torch.equal(first["model"][k], second["model"][k]) for k in first["model"])
    shipped = export_teacher(run, tmp_path / "pong.pt")
    record = torch.load(shipped, weights_only=True)
    assert record["training"]["agent_steps"] == 64
    assert all(v.dtype == torch.float16 for v in record["state_dict"].values())
    # Continuing in a new directory from the exported teacher keeps the step count.
    train_ppo(tiny(total_steps=96), tmp_path / "again", init_from=shipped)
    assert torch.load(tmp_path / "again" / "trainer_state.pt", weights_only=True)["global_step"] == 96
