"""Write the model card that sits beside a shipped teacher's weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from policy_distill.checkpoint import atomic_write_bytes, safe_torch_load, sha256_file
from policy_distill.evaluation import Scores


def write_model_card(teacher_path: str | Path, scores: Scores, *, seed: int, command: str) -> Path:
    """Write ``<teacher>.md`` from the checkpoint's own record and a measured evaluation.

    Args:
        teacher_path: The shipped checkpoint (``agents/pretrained/<game>.pt``).
        scores: Raw scores of an evaluation of exactly this file.
        seed: Evaluation seed, for reproduction.
        command: The command that reproduces the evaluation.
    """
    teacher_path = Path(teacher_path)
    record: dict[str, Any] = safe_torch_load(teacher_path, what="teacher checkpoint")
    training = record.get("training", {})
    hp = training.get("hyperparameters", {})
    steps, frames = training.get("agent_steps", 0), training.get("emulator_frames", 0)
    minutes, hardware = training.get("wall_time_s", 0) / 60, training.get("hardware", "unknown")
    dtype = training.get("weights_dtype", "float32")
    versions = ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items())
    lines = [
        f"# Teacher: {record['game']} (`{teacher_path.name}`)",
        "",
        f"The paper's teacher network ({record['architecture']['name']}: conv 32 8x8/4, conv 64 4x4/2, "
        "conv 64 3x3/1, linear 512, policy and value heads), trained by this toolkit's PPO trainer "
        "(`agents/ppo.py`).",
        "",
        "## Score",
        "",
        f"Raw game score (unclipped rewards summed over whole games), {len(scores.scores)} games, actions "
        f"sampled from the policy, evaluation seed {seed}:",
        "",
        f"- mean **{scores.mean:.2f}**, standard deviation {scores.std:.2f}, "
        f"min {min(scores.scores):.0f}, max {max(scores.scores):.0f}",
        f"- human-normalised: {scores.human_normalized:.3f}",
        f"- scores: {', '.join(f'{s:.0f}' for s in scores.scores)}",
        "",
        f"Reproduce: `{command}`",
        "",
        "## Training",
        "",
        f"- algorithm: {training.get('algorithm', 'unknown')}",
        f"- agent steps: {steps:,} ({frames:,} emulator frames)",
        f"- wall time: {minutes:.0f} minutes on {hardware}",
        f"- weights stored as {dtype}; SHA-256 `{sha256_file(teacher_path)}`",
        "- hyperparameters:",
        "",
        "```json",
        json.dumps(hp, indent=2, sort_keys=True),
        "```",
        "",
        "## Settings record (environment)",
        "",
        "```json",
        json.dumps(record["settings"], indent=2, sort_keys=True),
        "```",
        "",
        f"Package versions at export: {versions}.",
        "",
    ]
    card = teacher_path.with_suffix(".md")
    atomic_write_bytes(card, "\n".join(lines).encode())
    return card
