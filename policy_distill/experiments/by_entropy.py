"""Where on the held-out frames Sobolev students gain: the grid's students by teacher entropy.

The report's "What could explain it" names the teacher's entropy as one explanation: a teacher
sure of its action gives the KL little to teach beyond the argmax, and whether the Sobolev term's
input-gradients add most there or on the frames where the teacher hesitates can be measured. The
mean entropy per fraction barely moves within a game (Breakout: 0.83-0.88 nats), and three games
are three points, so this measures it frame by frame instead:

- bin edges: quantiles of the teacher's policy entropy over the game's whole recording
  (``bins`` bins with equal shares of its frames);
- per grid run (a results row of ``reproduce``), its final student (``latest.pt``, checked to be
  at the row's last step) on the held-out frames its row's KL and action error were measured on
  (:func:`policy_distill.distill.held_out_eval_indices`); the frame-weighted mean over the bins
  must give back the row's ``final_kl``, or the checkpoint is refused as not that row's student;
- one row per run, appended to ``out`` (a JSON-lines table: this module reads and writes it):
  per bin the frames, mean KL(pi_student || pi_teacher) and action error. A run already measured
  (same run directory, same ``finished_at``) is skipped, so the command resumes.

``policy_distill report`` shows the table (its ``entropy_bins`` option) when it exists: per bin,
KL-only against Sobolev students and how many seed pairs favour Sobolev.

    python -m policy_distill by-entropy --games breakout
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policy_distill.errors import UserError, at_least, check_fields
from policy_distill.experiments.sweep import (
    DEFAULT_HPARAMS,
    DEFAULT_RESULTS,
    append_row,
    latest_rows,
    load_hparams,
    read_rows,
    rows_of_hparams,
)

DEFAULT_ENTROPY_BINS = "docs/reproduce/by_entropy.jsonl"
FORMAT = "policy-distill/by-entropy-v1"
KL_TOLERANCE = 1e-4
"""Relative difference allowed between the bins' frame-weighted KL and the row's ``final_kl`` when
both were measured on a CPU: the same frames and float32 forward, summed in another order."""
KL_TOLERANCE_OTHER_HARDWARE = 2e-3
"""The same for a row measured on a GPU: CUDA convolutions default to TF32, which moved the KL of
a Breakout student by 2.5e-4 (relative) in an emulation of it."""
NEEDED_FIELDS = ("game", "method", "train_fraction", "seed", "run_dir", "finished_at", "data", "steps",
                 "eval_frames", "final_kl", "dataset_sha256")  # fmt: skip


@dataclass(frozen=True)
class ByEntropyConfig:
    """Which grid runs to measure per teacher-entropy bin, and where the table goes."""

    results: str = DEFAULT_RESULTS
    """Results table(s) written by reproduce, comma-separated."""
    hparams: str = DEFAULT_HPARAMS
    """The hyperparameter file the sweep used: rows made with others are left out, as on the report."""
    games: str = ""
    """Games to measure, comma-separated (default: every game with rows)."""
    bins: int = 5
    """Entropy bins, with equal shares of the recording's frames."""
    out: str = DEFAULT_ENTROPY_BINS
    """The JSON-lines table the rows are appended to (the report reads it)."""
    device: str = "cpu"
    """Where the students run (cpu, cuda, ...)."""

    def __post_init__(self) -> None:
        check_fields("by-entropy settings", [at_least(self, "bins", 2)])


def entropy_bin_edges(entropies: np.ndarray, bins: int) -> np.ndarray:
    """``[N]`` entropies -> ``[bins - 1]`` inner edges: the quantiles that split them into
    ``bins`` groups of equal size (up to ties)."""
    return np.quantile(np.asarray(entropies, dtype=np.float64), np.linspace(0, 1, bins + 1)[1:-1])


def bin_means(
    values: dict[str, np.ndarray], entropies: np.ndarray, edges: np.ndarray
) -> dict[str, list[float | None]]:
    """Per-frame values (each ``[N]``) averaged within entropy bins: bin i holds the frames with
    ``edges[i-1] <= entropy < edges[i]`` (the first from -inf, the last to +inf). Returns
    ``frames`` (counts) and each value's per-bin mean (None for an empty bin)."""
    which = np.digitize(entropies, edges)  # 0 .. len(edges)
    counts = np.bincount(which, minlength=len(edges) + 1)
    out: dict[str, list[Any]] = {"frames": [int(c) for c in counts]}
    for name, v in values.items():
        sums = np.bincount(which, weights=np.asarray(v, dtype=np.float64), minlength=len(edges) + 1)
        out[name] = [float(s / c) if c else None for s, c in zip(sums, counts)]
    return out


@torch.no_grad()
def per_frame_metrics(
    student: Any, store: Any, idx: np.ndarray, device: torch.device
) -> dict[str, np.ndarray]:
    """``[N]`` KL(pi_student || pi_teacher) and action mismatch (0/1) of ``student`` on samples
    ``idx`` of ``store`` (a :class:`~policy_distill.dataset.FrameStore`), 1,000 at a time."""
    from policy_distill.losses import kl_divergence

    kls, wrong = [], []
    for start in range(0, len(idx), 1000):
        x, teacher_logp = store.batch(torch.from_numpy(idx[start : start + 1000]).to(device))
        student_logp = student.log_probs(x)
        kls.append(kl_divergence(student_logp, teacher_logp, per_sample=True).cpu())
        wrong.append((student_logp.argmax(-1) != teacher_logp.argmax(-1)).float().cpu())
    return {"kl": torch.cat(kls).numpy(), "action_error": torch.cat(wrong).numpy()}


def read_bins(paths: str | Path | Sequence[str | Path]) -> list[dict[str, Any]]:
    """The rows of by-entropy table(s), the last one per run directory and ``finished_at``."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in read_rows(paths):
        if row.get("format") == FORMAT:
            latest[(row["run_dir"], row["finished_at"])] = row
    return list(latest.values())


def _final_student(row: dict[str, Any], device: torch.device) -> Any:
    from policy_distill.student import load_student

    path = Path(row["run_dir"]) / "latest.pt"
    if not path.is_file():
        raise UserError(
            f"no {path}: the run of this results row is not on this machine; measure on the machine "
            "that ran it, or pass `games` without this game"
        )
    student = load_student(path, device=device)
    if student.record.get("step") != row["steps"]:
        raise UserError(
            f"{path} is at step {student.record.get('step')}, not the row's last step {row['steps']}: "
            "the run directory was reused after its row was written; run the cell again with reproduce"
        )
    return student


def measure_by_entropy(cfg: ByEntropyConfig) -> dict[str, Any]:
    """Append one per-bin row for every grid run of ``cfg.games`` not yet in ``cfg.out``."""
    from policy_distill.dataset import FrameStore, load_dataset
    from policy_distill.devices import pick_device
    from policy_distill.distill import held_out_eval_indices
    from policy_distill.metrics import policy_entropy
    from policy_distill.settings import game_info

    paths = [p for p in cfg.results.split(",") if p]
    missing_tables = [p for p in paths if not Path(p).is_file()]
    if missing_tables or not paths:
        raise UserError(
            f"no results table at {', '.join(missing_tables) or repr(cfg.results)}; check `results`, "
            "or run `policy_distill reproduce` first"
        )
    rows, _ = rows_of_hparams(latest_rows(read_rows(paths)), load_hparams(cfg.hparams))
    asked = [game_info(g).name for g in cfg.games.split(",") if g.strip()]
    rows = [r for r in rows if not asked or r["game"] in asked]
    for r in rows:
        missing = [k for k in NEEDED_FIELDS if r.get(k) is None]
        if missing or r.get("validation_fraction") or r.get("test_data"):
            why = (
                f"lacks {', '.join(missing)}"
                if missing
                else "was measured on a validation split or test_data"
            )
            raise UserError(
                f"a row of {cfg.results} ({r.get('run_dir')}) {why}: by-entropy measures rows of "
                "`reproduce` grids only; pass that results table"
            )
    games = asked or sorted({r["game"] for r in rows})
    if not games:
        raise UserError(
            f"no grid rows in {cfg.results} made with {cfg.hparams}'s hyperparameters; pass the "
            "`hparams` the grid ran with, or run `policy_distill reproduce` first"
        )
    earlier = read_bins(cfg.out)
    done = {(r["run_dir"], r["finished_at"]) for r in earlier}
    other_bins = sorted({len(r["frames"]) for r in earlier if r["game"] in games} - {cfg.bins})
    if other_bins:
        raise UserError(
            f"{cfg.out} holds rows of {other_bins[0]} bins, not `bins` {cfg.bins}: pass that, or "
            "another `out`"
        )
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)  # fails here, before any work, if it cannot be
    device = pick_device(cfg.device)
    measured, skipped = 0, 0
    for game in games:
        todo = sorted(
            (r for r in rows if r["game"] == game),
            key=lambda r: (r["train_fraction"], r["seed"], r["method"]),
        )
        if not todo:
            raise UserError(f"no grid rows for {game} in {cfg.results}; check `games`")
        recordings = {r["data"] for r in todo}
        if len(recordings) != 1:
            raise UserError(
                f"{game}'s rows come from several recordings ({', '.join(sorted(recordings))}); pass "
                "`results` tables of one recording"
            )
        dataset = load_dataset(recordings.pop())
        entropies = policy_entropy(dataset.log_probs)
        edges = entropy_bin_edges(entropies, cfg.bins)
        store = FrameStore(dataset, device)
        for row in todo:
            if (row["run_dir"], row["finished_at"]) in done:
                skipped += 1
                continue
            if row.get("dataset_sha256") != dataset.meta.get("content_sha256"):
                theirs, ours = (
                    str(row.get("dataset_sha256"))[:12],
                    str(dataset.meta.get("content_sha256"))[:12],
                )
                raise UserError(
                    f"{row['run_dir']} was trained on another recording than {dataset.path} (sha256 "
                    f"{theirs}... against {ours}...); record the grid's data again with the same command"
                )
            idx = held_out_eval_indices(dataset.split(row["train_fraction"]).test, row["eval_frames"])
            per_frame = per_frame_metrics(_final_student(row, device), store, idx, device)
            overall = float(per_frame["kl"].mean())
            on_cpu = str(row.get("hardware", "")).startswith("CPU") and device.type == "cpu"
            tolerance = KL_TOLERANCE if on_cpu else KL_TOLERANCE_OTHER_HARDWARE
            if abs(overall - row["final_kl"]) > tolerance * max(row["final_kl"], 1e-12):
                raise UserError(
                    f"{row['run_dir']}/latest.pt gives held-out KL {overall:.6g}, its row "
                    f"{row['final_kl']:.6g} (measured on {row.get('hardware', 'unknown hardware')}): not "
                    "the row's student, or its frames differ; run the cell again with reproduce"
                )
            binned = bin_means(per_frame, entropies[idx], edges)
            append_row(
                out,
                {
                    "format": FORMAT,
                    **{
                        k: row[k]
                        for k in ("game", "method", "train_fraction", "seed", "run_dir", "finished_at")
                    },
                    "dataset_sha256": row["dataset_sha256"],
                    "bin_edges": [float(e) for e in edges],
                    "frames": binned["frames"],
                    "kl": binned["kl"],
                    "action_error": binned["action_error"],
                    "final_kl": overall,
                },
            )
            measured += 1
            by_bin = ", ".join(f"{v:.4g}" if v is not None else "-" for v in binned["kl"])
            print(f"{game} {row['method']} {row['train_fraction']:g} seed {row['seed']}: KL by bin {by_bin}")
    return {"table": str(out), "measured": measured, "already_there": skipped, "games": games}
