"""Write the model card that sits beside a shipped teacher's weights.

Everything on the card comes from the checkpoint's own record (settings, hyperparameters, agent
steps, the machines it trained on, its learning curve) and from an evaluation of exactly that
file. A hand-written ``## Notes`` section already on the card is kept when the card is rewritten.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from agents.teacher_file import history_problem, read_teacher
from policy_distill.checkpoint import atomic_write_bytes, sha256_file
from policy_distill.errors import UserError
from policy_distill.evaluation import Scores

NOTES_HEADING = "## Notes"


def _score_line(scores: Scores) -> str:
    return (
        f"mean **{scores.mean:.2f}**, standard deviation {scores.std:.2f}, "
        f"min {min(scores.scores):.0f}, max {max(scores.scores):.0f}, {len(scores.scores)} games"
    )


def _segments_table(segments: list[dict[str, Any]]) -> list[str]:
    """One row per sitting: where, in what precision, which steps, how long."""
    lines = [
        "| sitting | machine | CPU capability | precision | agent steps | wall time |",
        "|---|---|---|---|---|---|",
    ]
    for i, seg in enumerate(segments, 1):
        lines.append(
            f"| {i} | {seg.get('hardware', 'unknown')} | {seg.get('cpu_capability', 'not recorded')} | "
            f"{seg.get('precision', 'not recorded')} | {seg['from_step']:,} to {seg['to_step']:,} | "
            f"{seg['wall_time_s'] / 60:.0f} min |"
        )
    return lines


def plot_learning_curve(curve: list[list[float]], game: str, path: Path) -> Path | None:
    """Draw episodic return (training games, mean per bin of agent steps) against agent steps.

    Returns the PNG's path, or None when matplotlib (the ``plots`` extra) is missing or there is
    no curve.
    """
    if not curve:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = [point[0] / 1e6 for point in curve]
    returns = [point[1] for point in curve]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, returns, color="#1f77b4")
    ax.set_xlabel("agent steps (millions)")
    ax.set_ylabel("episodic return (raw, training games)")
    ax.set_title(f"{game}: PPO teacher learning curve")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _training_problem(training: dict[str, Any]) -> str | None:
    """What in a teacher's ``training`` record the card cannot be written from, or None."""
    hp = training.get("hyperparameters", {})
    if not isinstance(hp, dict):
        return "malformed hyperparameters"
    numbers = {k: training.get(k, 0) for k in ("agent_steps", "emulator_frames", "wall_time_s")}
    if hp.get("total_steps") is not None:
        numbers["total_steps"] = hp["total_steps"]
    for key, value in numbers.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"a malformed {key} ({value!r})"
    return history_problem(training.get("segments"), training.get("curve", []))


def write_model_card(
    teacher_path: str | Path,
    scores: Scores,
    *,
    seed: int,
    command: str,
    greedy: Scores | None = None,
) -> Path:
    """Write ``<teacher>.md`` (and ``<teacher>_curve.png``) from the checkpoint's own record and
    a measured evaluation.

    Args:
        teacher_path: The shipped checkpoint (``agents/pretrained/<game>.pt``).
        scores: Raw scores of an evaluation of exactly this file, actions sampled.
        seed: Evaluation seed, for reproduction.
        command: The command that reproduces the evaluation.
        greedy: The same games with argmax actions, when measured.
    """
    teacher_path = Path(teacher_path)
    teacher = read_teacher(teacher_path)
    record, training, game = teacher.record, teacher.training, teacher.settings.game
    problem = _training_problem(training)
    if problem is not None:
        raise UserError(
            f"teacher checkpoint {str(teacher_path)!r} records {problem} in its training record; "
            "re-export it from its run (`export-teacher`)"
        )
    hp = training.get("hyperparameters", {})
    steps, frames = training.get("agent_steps", 0), training.get("emulator_frames", 0)
    total = hp.get("total_steps")
    dtype = training.get("weights_dtype", "float32")
    recorded = record.get("versions")
    versions = ", ".join(f"{k} {v}" for k, v in (recorded if isinstance(recorded, dict) else {}).items())
    card = teacher_path.with_suffix(".md")
    curve_png = plot_learning_curve(
        training.get("curve", []), game, teacher_path.with_name(f"{teacher_path.stem}_curve.png")
    )
    # The trainer's own verdict first: it plans whole updates, so a finished run may stop a few
    # steps short of total_steps (10M planned, 4,882 updates of 2,048 = 9,998,336 steps).
    finished = training.get("finished")
    unfinished = finished is False if finished is not None else total is not None and steps < total
    if unfinished and total:
        status = (
            f"**Unfinished**: {steps:,} of {total:,} planned agent steps; training continues in a "
            "later session from these weights (`--init-from`)."
        )
    elif training.get("stopped_early") and total:
        status = (
            f"Training finished at {steps:,} of {total:,} planned agent steps: stopped there "
            "(`export-teacher --final`), so the learning rate had not annealed to zero."
        )
    else:
        status = "Training finished."
    lines = [
        f"# Teacher: {game} (`{teacher_path.name}`)",
        "",
        f"The paper's teacher network ({teacher.architecture}: conv 32 8x8/4, conv 64 4x4/2, "
        "conv 64 3x3/1, linear 512, policy and value heads), trained by this toolkit's PPO trainer "
        "(`agents/ppo.py`).",
        "",
        status,
        "",
        "## Score",
        "",
        "Raw game score (unclipped rewards summed over whole games), the toolkit's default environment "
        "(the settings record's `life_loss_terminal` and `clip_rewards` only change what the learner "
        f"trained on), evaluation seed {seed}:",
        "",
        f"- actions sampled from the policy: {_score_line(scores)}; human-normalised "
        f"{scores.human_normalized:.3f}",
    ]
    if greedy is not None:
        lines.append(
            f"- greedy (argmax) actions: {_score_line(greedy)}; "
            f"human-normalised {greedy.human_normalized:.3f}"
        )
    lines += [
        f"- sampled scores: {', '.join(f'{s:.0f}' for s in scores.scores)}",
        "",
        f"Reproduce: `{command}` (add `--greedy` for argmax actions)",
        "",
    ]
    if greedy is not None:
        lines += [
            "Sampled and greedy play differ because PPO trains a stochastic policy and the entropy bonus "
            "keeps it stochastic: the teacher was only ever trained on the states its sampled actions "
            "lead to, and argmax play can fall into loops it never saw (e.g. repeating one move where "
            "the sampled policy would vary). Scores and datasets in this toolkit use sampled actions.",
            "",
        ]
    lines += [
        "## Training",
        "",
        f"- algorithm: {training.get('algorithm', 'unknown')}",
        f"- agent steps: {steps:,} ({frames:,} emulator frames)"
        + (f" of {total:,} planned" if total else ""),
        f"- wall time: {training.get('wall_time_s', 0) / 60:.0f} minutes in all, by sitting (each on one "
        "core beside other work, so more than the machine needs alone):",
        "",
        *_segments_table(training.get("segments") or []),
        "",
        f"- weights stored as {dtype}; SHA-256 `{sha256_file(teacher_path)}`",
    ]
    if curve_png is not None:
        lines += ["", f"![learning curve]({curve_png.name})", ""]
        lines.append(
            "Learning curve: mean raw return of the training games that ended in each bin of "
            "50,000 agent steps (kept in the checkpoint, so it spans every sitting)."
        )
    lines += [
        "",
        "Hyperparameters:",
        "",
        "```json",
        json.dumps(hp, indent=2, sort_keys=True, default=str),
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
    notes = ""
    if card.exists():
        old = card.read_text()
        if NOTES_HEADING in old:
            notes = old[old.index(NOTES_HEADING) :]
    atomic_write_bytes(card, ("\n".join(lines) + notes).encode())
    return card


def evaluate_and_card(teacher_path: str | Path, episodes: int, seed: int) -> tuple[Path, Scores, Scores]:
    """Play ``episodes`` games with the teacher at ``teacher_path``, sampled and greedy, from
    ``seed``, and write its card from those scores (what ``export-teacher --card-episodes`` does).

    Returns:
        The card's path, the sampled scores and the greedy scores.
    """
    from agents.loading import load_teacher
    from policy_distill.evaluation import evaluate_policy

    teacher = load_teacher(teacher_path)
    scores = evaluate_policy(teacher, teacher.settings, episodes, seed=seed)
    greedy = evaluate_policy(teacher, teacher.settings, episodes, seed=seed, greedy=True)
    command = (
        f"python -m policy_distill evaluate-teacher --teacher {teacher_path} "
        f"--episodes {episodes} --seed {seed}"
    )
    card = write_model_card(teacher_path, scores, seed=seed, command=command, greedy=greedy)
    return card, scores, greedy
