"""The Sobolev estimators compared on quality, and the default chosen from quality and cost.

Two steps, each reading what runs already wrote (both resumable, both reproducible from the
commands in ``docs/estimators.md``):

1. ``tuning RUN_ROOT``: the runs of an alpha search on a validation split (``distill
   --train-fraction 1.0 --validation-fraction 0.1 --sobolev-estimator E --alpha A``, one run
   directory each under RUN_ROOT). Prints their validation metrics and, per estimator, the alpha
   with the lowest validation KL. The scales of the estimators differ (``vjp`` projects onto a
   unit vector in action space, ``jvp``/``fd`` onto a +-1 vector over all input pixels), so
   alpha is chosen for each.
2. ``study RESULTS [--benchmark JSON]``: the held-out rows of the grid (``reproduce`` with one
   hyperparameter file per estimator). Prints mean and 95% interval over seeds of held-out
   action error, KL and gradient cosine per estimator and training fraction, and the default:
   the estimator with the smallest time ratio (from the benchmark's JSON) among those that
   match the paper's (``vjp``) on held-out KL within the seed spread at every fraction.

"Within the seed spread": ``|mean_e - mean_vjp| <= max(sd_e, sd_vjp)``, sd the standard
deviation over seeds: a difference no larger than the seed-to-seed scatter of either.

    python -m policy_distill.experiments.estimators tuning runs/estimators-tuning/pong
    python -m policy_distill.experiments.estimators study docs/estimators/results.jsonl \
        --benchmark docs/estimators/benchmark.json
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from policy_distill.errors import UserError
from policy_distill.experiments.statistics import Interval, fmt, interval
from policy_distill.experiments.sweep import latest_rows, read_rows
from policy_distill.losses import SOBOLEV_ESTIMATORS

QUALITY = ("action_error", "kl", "grad_cosine")
"""Held-out metrics compared (``final_<name>`` in the results rows)."""


def label(method: str, estimator: str | None, samples_per_direction: int | None = 1) -> str:
    """``kl`` for KL-only rows, else the Sobolev estimator's name, with ``-share<n>`` when n
    samples share each input direction (rows without the field had one direction each)."""
    if method == "kl":
        return "kl"
    n = samples_per_direction or 1
    return (estimator or "vjp") + (f"-share{n}" if n > 1 else "")


def row_label(row: Mapping[str, Any]) -> str:
    """:func:`label` of a results row or a run's settings."""
    return label(row["method"], row.get("sobolev_estimator"), row.get("samples_per_direction"))


# --- 1. alpha on the validation split -------------------------------------------------------


def tuning_rows(run_root: str | Path) -> list[dict[str, Any]]:
    """One row per finished validation run under ``run_root``: estimator, alpha, its metrics.

    Raises:
        UserError: ``run_root`` holds no run, or a run evaluated on the test part.
    """
    from policy_distill.checkpoint import safe_torch_load

    root = Path(run_root)
    rows = []
    for latest in sorted(root.glob("*/latest.pt")):
        record = safe_torch_load(latest, what="student checkpoint")
        cfg = record["config"]
        if not cfg.get("validation_fraction"):
            raise UserError(
                f"{latest.parent} was evaluated on the test part (validation_fraction 0); an alpha "
                "search reads validation runs only: rerun it with --validation-fraction 0.1"
            )
        rows.append(
            {
                "run": latest.parent.name,
                "estimator": label(
                    "sobolev" if cfg["alpha"] > 0 else "kl",
                    cfg.get("sobolev_estimator"),
                    cfg.get("samples_per_direction"),
                ),
                "alpha": float(cfg["alpha"]),
                "learning_rate": float(cfg["learning_rate"]),
                "step": int(record["step"]),
                "steps": int(cfg["steps"]),
                **{m: float(record["metrics"][m]) for m in QUALITY},
            }
        )
    if not rows:
        raise UserError(f"{root} holds no finished run (no */latest.pt); run the alpha search first")
    return rows


def choose_alphas(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Per estimator, the alpha of the run with the lowest validation KL (finished runs only)."""
    best: dict[str, tuple[float, float]] = {}
    for r in rows:
        if r["estimator"] == "kl" or r["step"] < r["steps"]:
            continue
        if r["estimator"] not in best or r["kl"] < best[r["estimator"]][0]:
            best[r["estimator"]] = (r["kl"], r["alpha"])
    return {est: alpha for est, (_, alpha) in sorted(best.items())}


def tuning_table(rows: Sequence[Mapping[str, Any]]) -> str:
    chosen = choose_alphas(rows)
    lines = [
        "| estimator | alpha | steps | validation action error | validation KL | gradient cosine | chosen |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["estimator"], -r["alpha"])):
        mark = "yes" if chosen.get(r["estimator"]) == r["alpha"] and r["estimator"] != "kl" else ""
        steps = f"{r['step']}" + ("" if r["step"] >= r["steps"] else f" of {r['steps']} (unfinished)")
        lines.append(
            f"| {r['estimator']} | {r['alpha']:g} | {steps} | {r['action_error']:.4f} | {r['kl']:.4f} "
            f"| {r['grad_cosine']:.3f} | {mark} |"
        )
    return "\n".join(lines)


# --- 2. held-out quality over fractions and seeds -------------------------------------------


Summary = dict[tuple[str, float], dict[str, Interval]]
"""(estimator label, training fraction) -> metric -> interval over seeds."""


def summarise(rows: Iterable[Mapping[str, Any]], game: str) -> Summary:
    """Group the game's latest grid rows by estimator and fraction; intervals over seeds.

    Raises:
        UserError: the rows mix centred and uncentred students (``centre_first_layer``) or
            students of several widths (``student_width``): the study compares estimators under
            one student and initialisation, so each goes in its own file.
    """
    values: dict[tuple[str, float], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    grid = [r for r in latest_rows(rows) if r.get("game") == game and r.get("method") in ("kl", "sobolev")]
    # A centred or wider student is another student: one file holds one kind.
    for field, default, kinds in (
        ("centre_first_layer", False, "centred and uncentred first layers"),
        ("student_width", 1.0, "students of several widths"),
    ):
        if len({r.get(field, default) for r in grid}) > 1:
            raise UserError(f"the {game} rows mix {kinds} ({field}); summarise each in its own results file")
    for r in grid:
        cell = values[(row_label(r), float(r["train_fraction"]))]
        for m in QUALITY:
            cell[m].append(float(r[f"final_{m}"]))
    return {key: {m: interval(v) for m, v in cell.items()} for key, cell in values.items()}


COLLAPSED_COSINE = 0.01
"""A student whose input-gradients have a held-out cosine below this with the teacher's has
stopped depending on its input: a constant policy (its ReLUs died), whatever its loss says."""


def collapsed(rows: Iterable[Mapping[str, Any]], game: str) -> list[Mapping[str, Any]]:
    """The game's latest grid rows whose student collapsed to a constant policy."""
    return [
        r
        for r in latest_rows(rows)
        if r.get("game") == game
        and r.get("method") in ("kl", "sobolev")
        and float(r["final_grad_cosine"]) < COLLAPSED_COSINE
    ]


def _sd(iv: Interval) -> float:
    return float(np.std(iv.values, ddof=1)) if iv.n > 1 else math.inf


def matches_reference(summary: Summary, estimator: str, reference: str = "vjp") -> bool | None:
    """Whether ``estimator``'s held-out KL is within the seed spread of ``reference``'s at every
    fraction both have (None: no common fraction with 2+ seeds each)."""
    fractions = [f for (e, f) in summary if e == estimator and (reference, f) in summary]
    checked = False
    for f in fractions:
        a, b = summary[(estimator, f)]["kl"], summary[(reference, f)]["kl"]
        if a.n < 2 or b.n < 2:
            continue
        checked = True
        if abs(a.mean - b.mean) > max(_sd(a), _sd(b)):
            return False
    return True if checked else None


def choose_default(summary: Summary, time_ratios: Mapping[str, float]) -> tuple[str, dict[str, Any]]:
    """The fastest estimator (smallest time ratio to a KL step) among those matching ``vjp``.

    Returns:
        ``(name, evidence)``: evidence maps each estimator to whether it matched and its ratio.
    """
    evidence = {
        est: {"matches_vjp": matches_reference(summary, est), "time_ratio": time_ratios.get(est)}
        for est in _labels(summary)
        if est != "kl"
    }
    eligible = [est for est, ev in evidence.items() if ev["matches_vjp"] and ev["time_ratio"] is not None]
    if not eligible:
        return "vjp", evidence
    return min(eligible, key=lambda est: evidence[est]["time_ratio"]), evidence


def _labels(summary: Summary) -> list[str]:
    """The summary's labels: kl, the estimators in SOBOLEV_ESTIMATORS order, each estimator's
    shared-direction variants after it."""
    present = {e for e, _ in summary}
    rank = {name: i for i, name in enumerate(["kl", *SOBOLEV_ESTIMATORS])}
    return sorted(present, key=lambda e: (rank.get(e.split("-share")[0], len(rank)), e))


def study_table(summary: Summary) -> str:
    fractions = sorted({f for _, f in summary})
    order = _labels(summary)
    lines = [
        "| fraction | estimator | seeds | held-out action error | held-out KL | gradient cosine |",
        "|---:|---|---:|---|---|---|",
    ]
    for f in fractions:
        for est in order:
            cell = summary.get((est, f))
            if cell is None:
                continue
            lines.append(
                f"| {f:g} | {est} | {cell['kl'].n} | {fmt(cell['action_error'])} | {fmt(cell['kl'])} "
                f"| {fmt(cell['grad_cosine'], 3)} |"
            )
    return "\n".join(lines)


def time_ratios_from(benchmark: str | Path | None) -> dict[str, float]:
    """Time ratio to a KL step per label (:func:`label`) from ``benchmarks/distill_throughput.py
    --json``'s object: its ``time_ratios_by_label``, or for older files ``<estimator>_time_ratio``."""
    if not benchmark:
        return {}
    try:
        data = json.loads(Path(benchmark).read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError) as e:
        raise UserError(f"benchmark file {benchmark} is not the benchmark's JSON line ({e})") from None
    if "time_ratios_by_label" in data:
        return {name: float(ratio) for name, ratio in data["time_ratios_by_label"].items()}
    return {
        est: float(data[f"{est}_time_ratio"]) for est in SOBOLEV_ESTIMATORS if f"{est}_time_ratio" in data
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    tune = sub.add_parser("tuning", help="alpha per estimator from validation runs")
    tune.add_argument("run_root")
    study = sub.add_parser("study", help="held-out quality per estimator and the default")
    study.add_argument("results", nargs="+")
    study.add_argument("--game", default="pong")
    study.add_argument("--benchmark", default="")
    args = parser.parse_args(argv)
    try:
        if args.step == "tuning":
            rows = tuning_rows(args.run_root)
            print(tuning_table(rows))
            print(json.dumps({"chosen_alpha": choose_alphas(rows)}))
            return
        rows = read_rows(args.results)
        summary = summarise(rows, args.game)
        if not summary:
            raise UserError(f"{', '.join(args.results)} hold no {args.game} rows; run the grid first")
        print(study_table(summary))
        for r in collapsed(rows, args.game):
            print(
                f"collapsed: {row_label(r)} fraction "
                f"{r['train_fraction']:g} seed {r['seed']} (held-out KL {r['final_kl']:.4f}, "
                f"gradient cosine {r['final_grad_cosine']:.4f})"
            )
        name, evidence = choose_default(summary, time_ratios_from(args.benchmark))
        print(json.dumps({"default": name, "evidence": evidence}))
    except UserError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
