"""The reproduction report: ``policy_distill report`` / ``make report``.

Reads the results table(s) written by ``policy_distill reproduce`` and writes
``docs/reproduce/README.md`` with three figures beside it:

- ``figure4.png``: the layout of the paper's Figure 4 (Czarnecki et al. 2017, section 4.2):
  held-out action-prediction error and held-out KL against the training fraction (log axis),
  KL-only against Sobolev students, one column per game; the mean over seeds with a 95%
  Student-t interval (mean ± t(0.975, n-1) s / sqrt(n), s the sample std over n seeds);
- ``gradient_fidelity.png``: cosine and relative L2 error between the students' and the
  teacher's input-gradients of log pi, against the fraction;
- ``sobolev_gain.png``: the paper's claim itself, Sobolev's relative gain over KL only, seed by
  seed, on held-out KL and action error against the fraction, with its 95% t-interval.

The page also gives the game scores at the largest fraction next to the teacher's, the
hardware and wall time, the hyperparameters with how they were chosen, the commands that
reproduce it, the cells still waiting, and a "Do the paper's claims hold?" section whose
sentences are computed from the numbers in the table.
"""

from __future__ import annotations

import io
import shlex
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policy_distill.errors import UserError, check_fields, one_of
from policy_distill.experiments.statistics import Interval, fmt, interval, sign_test_two_sided, significant
from policy_distill.experiments.sweep import (
    DEFAULT_FRACTIONS,
    DEFAULT_HPARAMS,
    DEFAULT_RESULTS,
    METHODS,
    GameHparams,
    SweepConfig,
    latest_rows,
    load_hparams,
    parse_fractions,
    parse_seeds,
    read_rows,
    rows_of_hparams,
)
from policy_distill.metrics import has_no_input_gradient
from policy_distill.settings import game_info

LABELS = {"kl": "KL only", "sobolev": "Sobolev"}
COLOURS = {"kl": "#7f7f7f", "sobolev": "#1f77b4"}
METRIC_LABELS = {
    "action_error": "held-out action-prediction error",
    "kl": "held-out KL",
    "grad_cosine": "gradient cosine (student vs teacher)",
    "grad_rel_l2": "gradient relative L2 error",
    "score_mean": "game score",
}
# KL spans an order of magnitude across fractions (Breakout: 0.9 at 1%, 0.05 at 80%); on a linear
# axis the high-data cells, where the methods are closest, would be flat lines.
LOG_Y_METRICS = ("kl",)
SHORT_LABELS = {"action_error": "action error", "kl": "KL", "grad_cosine": "cosine", "grad_rel_l2": "rel. L2"}


@dataclass(frozen=True)
class ReportConfig:
    """Where the report reads from and writes to, and the grid it expects."""

    results: str = DEFAULT_RESULTS
    """Results table(s) written by reproduce, comma-separated (e.g. one per machine)."""
    hparams: str = DEFAULT_HPARAMS
    """The hyperparameter file the sweep used: its games are expected, its chosen_by is quoted."""
    out: str = "docs/reproduce"
    """Folder for README.md, figure4.png, gradient_fidelity.png and sobolev_gain.png."""
    fractions: str = DEFAULT_FRACTIONS
    """The expected training fractions; cells without a row are listed as waiting."""
    seeds: str = "0,1,2"
    """The expected seeds."""
    games: str = ""
    """Games expected beyond the hyperparameter file's (comma-separated): one with no entry there
    yet is listed under "Waiting" as waiting for its hyperparameter search."""
    metrics: str = "final"
    """final: held-out metrics after the last step (default); best: at best.pt, the step of
    lowest held-out KL (chosen on the test split itself, so optimistic)."""
    discussion: str = ""
    """Hand-written markdown placed under "Discussion" after the generated claims (default:
    ``<out>/discussion.md`` when it exists): the explanations numbers cannot generate."""

    tuning_results: str = "docs/tuning/{game}.jsonl"
    """Each game's hyperparameter-search table ({game} replaced): its runs on the recording the
    game's entry was tuned on (``tuning_recording_sha256``) count towards the CPU time; a missing
    table counts as none."""
    capacity_results: str = ""
    """Results table(s) of wider students, comma-separated (``reproduce --hparams`` with a
    ``student_width`` in each entry): the page compares the Sobolev gap at each width."""
    capacity_hparams: str = ""
    """The hyperparameter file those wider students were trained with (needed with
    capacity_results)."""

    entropy_bins: str = ""
    """The table of ``policy_distill by-entropy`` (default: ``<out>/by_entropy.jsonl`` when it
    exists): the final students' held-out KL per bin of the teacher's entropy."""
    preface: str = ""
    """Hand-written markdown placed under the title (default: ``<out>/preface.md`` when it
    exists): what a reader must know first, e.g. that a page was made with an earlier teacher."""

    def __post_init__(self) -> None:
        check_fields("report settings", [one_of(self, "metrics", ("final", "best"))])
        parse_fractions(self.fractions)
        parse_seeds(self.seeds)
        self.expected_games()
        if bool(self.capacity_results) != bool(self.capacity_hparams):
            raise UserError(
                "capacity_results and capacity_hparams go together: give both (the wider students' "
                "results table and the hyperparameter file they were trained with) or neither"
            )

    def expected_games(self) -> list[str]:
        """``games`` as canonical names; an unknown game raises UserError naming the known ones."""
        return [game_info(g).name for g in self.games.split(",") if g.strip()]

    def discussion_path(self) -> Path:
        return Path(self.discussion) if self.discussion else Path(self.out) / "discussion.md"

    def entropy_bins_path(self) -> Path:
        return Path(self.entropy_bins) if self.entropy_bins else Path(self.out) / "by_entropy.jsonl"

    def preface_path(self) -> Path:
        return Path(self.preface) if self.preface else Path(self.out) / "preface.md"


# --- Summaries -------------------------------------------------------------------------------


class Summary:
    """The rows of one report, grouped: per (game, method, fraction) an Interval per metric."""

    def __init__(self, rows: Sequence[dict[str, Any]], hparams: dict[str, GameHparams], which: str) -> None:
        self.which = which
        kept, self.excluded = rows_of_hparams(rows, hparams)
        self.students = kept
        """Every student row made with the file's hyperparameters (dead ones included: CPU time)."""
        self.dead = [r for r in kept if ended_constant(r, which)]
        """Students whose policy ended constant: left out of every statistic, listed apart."""
        self.teachers = [r for r in rows if r.get("method") == "teacher"]
        self.hparams = hparams
        seen = sorted({r["game"] for r in kept} | {r["game"] for r in self.teachers})
        self.games = list(hparams) + [g for g in seen if g not in hparams]

    def runs(self, game: str, method: str, fraction: float, *, dead: bool = False) -> list[dict[str, Any]]:
        """A cell's live students by seed (``dead``: its dead ones instead)."""
        return sorted(
            (
                r
                for r in self.students
                if (r["game"], r["method"], r["train_fraction"]) == (game, method, fraction)
                and ended_constant(r, self.which) == dead
            ),
            key=lambda r: r["seed"],
        )

    def fractions(self, game: str) -> list[float]:
        return sorted({r["train_fraction"] for r in self.students if r["game"] == game})

    def cell(self, game: str, method: str, fraction: float, metric: str) -> Interval | None:
        """Interval over seeds of ``metric`` (action_error, kl, grad_cosine, grad_rel_l2 or score_mean)."""
        field = metric if metric.startswith("score") else f"{self.which}_{metric}"
        values = [r[field] for r in self.runs(game, method, fraction) if r.get(field) is not None]
        return interval(values) if values else None


def ended_constant(row: dict[str, Any], which: str = "final") -> bool:
    """Whether a student row's policy ended constant (no input-gradient on the held-out fidelity
    frames: :func:`~policy_distill.metrics.has_no_input_gradient`), as Pong's students do where a
    learning rate kills every unit of a layer. Such a run measures the learning rate's luck, not
    the method: its held-out KL (4-6 on Pong) would swamp a cell's mean, so the report leaves it
    out of every statistic and lists it instead."""
    return has_no_input_gradient(
        {"grad_cosine": row.get(f"{which}_grad_cosine"), "grad_rel_l2": row.get(f"{which}_grad_rel_l2")}
    )


def _dead_paragraph(summary: Summary) -> list[str]:
    if not summary.dead:
        return []
    listed = "; ".join(
        f"{r['game']} {LABELS[r['method']]} at {r['train_fraction']:g}, seed {r['seed']} (lr "
        f"{r['learning_rate']:g}, held-out KL {r[f'{summary.which}_kl']:.3g})"
        for r in sorted(summary.dead, key=lambda r: (r["game"], r["method"], r["train_fraction"], r["seed"]))
    )
    return [
        f"**Dead students, left out of every statistic** ({len(summary.dead)}): their policy ended "
        "constant, with no input-gradient left (gradient cosine 0 and relative L2 error 1 on the "
        f"held-out fidelity frames, every unit of a layer dead): {listed}. The tables' seed counts "
        "show them as `+n dead`.",
        "",
    ]


def _gap(kl: Interval, sob: Interval) -> float | None:
    """(KL-only - Sobolev) / KL-only of the means: positive where Sobolev is lower."""
    return (kl.mean - sob.mean) / kl.mean if kl.mean else None


def claims(summary: Summary, game: str) -> dict[str, Any]:
    """Per metric (action error, KL): the fractions where Sobolev's mean is lower, where its
    interval lies wholly below KL-only's, where the seed-by-seed difference resolves either way,
    the sign test of the lower means across fractions, and the relative gaps at the smallest and
    largest fraction measured for both methods."""
    out: dict[str, Any] = {}
    for metric in ("action_error", "kl"):
        pairs = []
        for f in summary.fractions(game):
            kl, sob = summary.cell(game, "kl", f, metric), summary.cell(game, "sobolev", f, metric)
            if kl is not None and sob is not None:
                pairs.append((f, kl, sob))
        if not pairs:
            continue
        lower = [f for f, kl, sob in pairs if sob.mean < kl.mean]
        higher = [f for f, kl, sob in pairs if sob.mean > kl.mean]
        paired = {f: paired_verdict(paired_difference(summary, game, f, metric)) for f, _, _ in pairs}
        apart = [
            f
            for f, kl, sob in pairs
            if kl.half_width is not None and sob.half_width is not None and sob.high < kl.low
        ]
        out[metric] = {
            "fractions": [f for f, _, _ in pairs],
            "sobolev_lower": lower,
            "sobolev_interval_below": apart,
            "gap_smallest": _gap(pairs[0][1], pairs[0][2]),
            "gap_largest": _gap(pairs[-1][1], pairs[-1][2]),
            "gaps": {f: _gap(kl, sob) for f, kl, sob in pairs},
            "min_seeds": min(min(kl.n, sob.n) for _, kl, sob in pairs),
            "paired_closer": [f for f, v in paired.items() if v == "closer"],
            "paired_further": [f for f, v in paired.items() if v == "further"],
            "sobolev_higher": higher,
            # Ties dropped. Approximate: the fractions are separate runs, but each seed starts them
            # all from the same initial weights and their held-out parts overlap.
            "sign_test_p": sign_test_two_sided(len(lower), len(lower) + len(higher)),
        }
    return out


def _fracs(values: Sequence[float]) -> str:
    return ", ".join(f"{f:g}" for f in values) or "none"


def _pct(x: float | None) -> str:
    return "n/a (KL-only mean is 0)" if x is None else f"{100 * x:+.1f}%"


def claim_sentences(
    summary: Summary,
    game: str,
    expected_fractions: Sequence[float] = (),
    expected_seeds: Sequence[int] = (),
) -> list[str]:
    """The "Do the paper's claims hold?" sentences of one game, generated from its numbers; the
    summing-up one is marked provisional while cells of the expected grid are missing."""
    found = claims(summary, game)
    if not found:
        return [f"**{game}**: no fraction has runs of both methods yet; nothing to compare."]
    lines = []
    for metric, c in found.items():
        fr, lower = c["fractions"], c["sobolev_lower"]
        others = [f for f in fr if f not in lower]
        sentence = (
            f"**{game}**, {METRIC_LABELS[metric]}: Sobolev's mean is lower than KL-only's at "
            f"{len(lower)} of {len(fr)} fractions ({_fracs(lower)})"
            + (f", not at {_fracs(others)}" if lower and others else "")
            + "."
        )
        if c["min_seeds"] >= 2:
            sentence += (
                f" Its 95% interval lies wholly below KL-only's at {len(c['sobolev_interval_below'])} of "
                f"{len(fr)} ({_fracs(c['sobolev_interval_below'])})."
            )
            sentence += (
                f" Paired by seed, the difference's 95% interval lies above 0 at {len(c['paired_closer'])} "
                f"({_fracs(c['paired_closer'])})"
                + (
                    f" and below 0 at {len(c['paired_further'])} ({_fracs(c['paired_further'])})"
                    if c["paired_further"]
                    else ""
                )
                + "."
            )
        else:
            sentence += " Some of these cells have a single seed, so no interval is compared."
        untied = len(lower) + len(c["sobolev_higher"])
        if untied > 1:
            sentence += (
                f" Sign test over the fractions (two-sided, ties dropped): p {c['sign_test_p']:.2g}, "
                "approximate (a seed starts every fraction from the same weights)."
            )
        if len(fr) > 1:
            sentence += (
                f" Relative gap (KL-only − Sobolev) / KL-only: {_pct(c['gap_smallest'])} at the smallest "
                f"fraction ({fr[0]:g}) and {_pct(c['gap_largest'])} at the largest ({fr[-1]:g})"
            )
            known = {f: g for f, g in c["gaps"].items() if g is not None}
            peak = max(known, key=lambda f: known[f]) if known else None
            sentence += (
                f"; widest at {peak:g} ({_pct(known[peak])})." if peak not in (None, fr[0], fr[-1]) else "."
            )
        else:
            sentence += (
                f" Relative gap (KL-only − Sobolev) / KL-only at {fr[0]:g}: {_pct(c['gap_smallest'])}."
            )
        lines.append(sentence)
    verdict = _verdict(game, found)
    measured = {f for c in found.values() for f in c["fractions"]}
    missing_fractions = [f for f in expected_fractions if f not in measured]
    fewest = min(c["min_seeds"] for c in found.values())
    if missing_fractions or fewest < len(expected_seeds):
        total = len(set(expected_fractions) | measured)
        verdict += f" Provisional: {len(measured)} of {total} fractions measured" + (
            f", some with {fewest} of {len(expected_seeds)} seeds." if fewest < len(expected_seeds) else "."
        )
    lines.append(verdict)
    return lines


def _verdict(game: str, found: dict[str, Any]) -> str:
    everywhere = all(len(c["sobolev_lower"]) == len(c["fractions"]) for c in found.values())
    nowhere = all(not c["sobolev_lower"] for c in found.values())
    wider = all(
        len(c["fractions"]) > 1
        and c["gap_smallest"] is not None
        and c["gap_largest"] is not None
        and c["gap_smallest"] > c["gap_largest"]
        for c in found.values()
    )
    if everywhere and wider:
        return (
            f"**{game}, in sum**: consistent with the paper: Sobolev students have the lower mean on "
            "both metrics at every fraction measured, by a wider relative margin at the smallest "
            "fraction than at the largest."
        )
    if everywhere:
        narrower = [
            f"{METRIC_LABELS[m]} ({_pct(c['gap_smallest'])} at {c['fractions'][0]:g} against "
            f"{_pct(c['gap_largest'])} at {c['fractions'][-1]:g})"
            for m, c in found.items()
            if len(c["fractions"]) > 1
            and c["gap_smallest"] is not None
            and c["gap_largest"] is not None
            and c["gap_smallest"] <= c["gap_largest"]
        ]
        return (
            f"**{game}, in sum**: partly consistent: Sobolev students have the lower mean on both "
            "metrics at every fraction measured, but "
            + (
                "the relative margin is not wider at the smallest fraction than at the largest on "
                + " and on ".join(narrower)
                if narrower
                else "only one fraction is measured"
                if any(len(c["fractions"]) < 2 for c in found.values())
                else "a relative margin cannot be computed (a KL-only mean of 0)"
            )
            + "."
        )
    if nowhere:
        return (
            f"**{game}, in sum**: not consistent with the paper: KL-only students have the lower or an "
            "equal mean on both metrics at every fraction measured."
        )
    return (
        f"**{game}, in sum**: mixed: Sobolev's mean is lower at some fractions or on one metric, "
        "not at every fraction on both."
    )


def cell_verdict(summary: Summary, game: str, fraction: float, metric: str) -> str | None:
    """Sobolev against KL only at one cell, lower being closer to the teacher: ``closer`` or
    ``further`` where the 95% intervals lie apart, ``overlap`` where they do not, ``one seed``
    where a side has no interval; None where a side has no runs."""
    kl, sob = (summary.cell(game, m, fraction, metric) for m in METHODS)
    if kl is None or sob is None:
        return None
    if kl.half_width is None or sob.half_width is None:
        return "one seed"
    if sob.high < kl.low:
        return "closer"
    if sob.low > kl.high:
        return "further"
    return "overlap"


def paired_difference(
    summary: Summary, game: str, fraction: float, metric: str, *, relative: bool = False
) -> Interval | None:
    """KL-only minus Sobolev, seed by seed, over the seeds both methods have at this cell: its mean
    and 95% t-interval. Positive where the Sobolev student is closer to the teacher. ``relative``:
    each seed's difference divided by its KL-only value (seeds whose KL-only value is 0 dropped).

    Seed s starts both methods from the same initial weights and the same first minibatch (their
    later minibatches differ: the Sobolev term draws its directions from the same generator), and
    the seeds are independent draws, so the differences are an independent sample however
    strongly the pairing ties the two methods. Where it ties them (a seed good for one method is
    good for the other) the spread they share cancels and this interval is narrower than the
    methods' own; where it does not, it is not. It is also a test at the 5% level, where two 95%
    intervals lying apart is one near the 0.5% level: it can resolve what they do not."""
    by_seed = {m: {r["seed"]: r for r in summary.runs(game, m, fraction)} for m in METHODS}
    field = f"{summary.which}_{metric}"
    pairs = [
        (by_seed["kl"][s][field], by_seed["sobolev"][s][field])
        for s in sorted(by_seed["kl"].keys() & by_seed["sobolev"].keys())
        if by_seed["kl"][s].get(field) is not None and by_seed["sobolev"][s].get(field) is not None
    ]
    values = [(k - sob) / k if relative else k - sob for k, sob in pairs if k or not relative]
    return interval(values) if values else None


def paired_verdict(diff: Interval | None) -> str | None:
    """``closer`` / ``further`` where the paired interval lies wholly above / below 0, ``not
    resolved`` where it holds 0, ``one seed`` without an interval, None without pairs."""
    if diff is None:
        return None
    if diff.half_width is None:
        return "one seed"
    if diff.low > 0:
        return "closer"
    if diff.high < 0:
        return "further"
    return "not resolved"


def _verdict_table(summary: Summary, games: Sequence[str]) -> list[str]:
    """Fractions x games: where Sobolev students are closer to the teacher than KL-only ones."""
    fractions = sorted({f for g in games for f in summary.fractions(g)})
    lines = ["| fraction | " + " | ".join(games) + " |", "|---:|" + "---|" * len(games)]
    for f in fractions:
        cells = []
        for game in games:
            parts = []
            for m in ("kl", "action_error"):
                unpaired = cell_verdict(summary, game, f, m)
                paired = paired_verdict(paired_difference(summary, game, f, m))
                if unpaired is not None:
                    parts.append(
                        f"{SHORT_LABELS[m]}: {_bold_resolved(unpaired)}"
                        + (f", paired {_bold_resolved(paired)}" if paired is not None else "")
                    )
            cells.append("; ".join(parts) or "waiting")
        lines.append(f"| {f:g} | " + " | ".join(cells) + " |")
    return lines


def _paired_table(summary: Summary, games: Sequence[str]) -> list[str]:
    """Per game and fraction: the seed-by-seed differences behind the paired verdicts."""
    lines = [
        "| game | fraction | seeds paired | KL: KL only − Sobolev | action error: KL only − Sobolev |",
        "|---|---:|---:|---:|---:|",
    ]
    for game in games:
        for f in summary.fractions(game):
            diffs = [paired_difference(summary, game, f, m) for m in ("kl", "action_error")]
            if diffs[0] is None:
                continue
            cells = [_bold_resolved_value(d) for d in diffs]
            lines.append(f"| {game} | {f:g} | {diffs[0].n} | " + " | ".join(cells) + " |")
    return lines


def _bold_resolved_value(diff: Interval | None) -> str:
    if diff is None:
        return "n/a"
    text = fmt(diff, digits=3)
    return f"**{text}**" if paired_verdict(diff) in ("closer", "further") else text


def _bold_resolved(verdict: str) -> str:
    return f"**{verdict}**" if verdict in ("closer", "further") else verdict


def _mean_of(runs: Sequence[dict[str, Any]], field: str) -> float | None:
    values = [r[field] for r in runs if r.get(field) is not None]
    return float(np.mean(values)) if values else None


def _explanation_table(summary: Summary, game: str) -> list[str]:
    """Per fraction: the teacher's entropy on the training part, each method's training KL
    against its held-out KL (memorising shows as a large ratio), and Sobolev's alpha."""
    lines = [
        "| fraction | teacher entropy (train part, nats) | KL only: training KL / held-out KL | "
        "Sobolev: training KL / held-out KL | Sobolev alpha |",
        "|---:|---:|---:|---:|---:|",
    ]
    for f in summary.fractions(game):
        runs = {m: summary.runs(game, m, f) for m in METHODS}
        entropy = _mean_of(runs["kl"] + runs["sobolev"], "teacher_entropy_train")
        cells = [f"{entropy:.3f}" if entropy is not None else "n/a"]
        for m in METHODS:
            train, held = _mean_of(runs[m], "final_train_kl"), _mean_of(runs[m], f"{summary.which}_kl")
            if train is None or held is None or train <= 0:
                cells.append("n/a")
            else:
                cells.append(f"{train:.4f} / {held:.4f} ({held / train:.1f}x)")
        alphas = sorted({r["alpha"] for r in runs["sobolev"]})
        cells.append(", ".join(f"{a:g}" for a in alphas) or "n/a")
        lines.append(f"| {f:g} | " + " | ".join(cells) + " |")
    return lines


def _entropy_section(summary: Summary, cfg: ReportConfig, games: Sequence[str]) -> list[str]:
    """The by-entropy tables of the games measured, from rows of the runs on this page only."""
    path = cfg.entropy_bins_path()
    if not path.is_file():
        return []
    if summary.which != "final":
        return [f"(`{path}` measures the final students; this page shows `{summary.which}` metrics.)", ""]
    from policy_distill.experiments.by_entropy import read_bins

    runs = {(r["run_dir"], r["finished_at"]): r for r in summary.students}
    measured = [b for b in read_bins(path) if (b["run_dir"], b["finished_at"]) in runs]
    stale = len(read_bins(path)) - len(measured)
    lines = [
        "**By the teacher's entropy on the frame.** Each final student measured again on its held-out "
        "frames (the row's, giving back its held-out KL), with the frames split into bins of the "
        "teacher's policy entropy (quantiles over the game's recording, equal shares of its frames; "
        "nats). Cells: mean held-out KL over seeds, KL only → Sobolev, and the relative gap; last "
        "row: the seed pairs (all fractions) where the Sobolev student has the lower KL in that bin, "
        "ties dropped, with a two-sided sign test; approximate, as a seed starts every fraction "
        "from the same weights and the bins hold the same students. From "
        f"`{path}`, written by `python -m policy_distill by-entropy`"
        + (
            f"; {stale} row(s) of runs not on this page (redone, or other hyperparameters) left out."
            if stale
            else "."
        ),
        "",
    ]
    for game in games:
        rows = [b for b in measured if b["game"] == game]
        if rows:
            lines += [f"**{game}**", "", *_entropy_table(rows), ""]
    return lines


def _entropy_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One game's by-entropy rows -> fractions x bins, KL only → Sobolev; the seed pairs per bin
    where Sobolev is lower; and whether its relative gap is larger on the upper bins than on the
    lower ones, pair by pair (a per-bin count alone cannot say that one bin gains more)."""
    edges = rows[0]["bin_edges"]
    if any(r["bin_edges"] != edges for r in rows):
        return [
            "Bin edges differ between its rows (two recordings?): run `by-entropy` again into a new table."
        ]
    names = [f"< {edges[0]:.2f}"]
    names += [f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(edges[:-1], edges[1:])]
    names += [f"≥ {edges[-1]:.2f}"]
    half = len(names) // 2  # the upper and lower halves; an odd middle bin is in neither
    lines = ["| fraction | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    lower, higher = [0] * len(names), [0] * len(names)  # per bin: pairs where Sobolev is lower / higher
    upper_gains = []  # per pair: mean relative gap on the upper half minus on the lower half
    for f in sorted({r["train_fraction"] for r in rows}):
        by = {
            m: {r["seed"]: r for r in rows if r["train_fraction"] == f and r["method"] == m} for m in METHODS
        }
        for seed in sorted(by["kl"].keys() & by["sobolev"].keys()):
            kl_only, sobolev = by["kl"][seed]["kl"], by["sobolev"][seed]["kl"]
            gaps = [
                (k - s) / k if k is not None and s is not None and k > 0 else None
                for k, s in zip(kl_only, sobolev)
            ]
            for b, g in enumerate(gaps):
                lower[b] += g is not None and g > 0
                higher[b] += g is not None and g < 0
            if all(g is not None for g in gaps[:half] + gaps[-half:]):
                upper_gains.append(float(np.mean(gaps[-half:]) - np.mean(gaps[:half])))
        cells = []
        for b in range(len(names)):
            means = {m: _mean_of([{"kl": r["kl"][b]} for r in by[m].values()], "kl") for m in METHODS}
            if means["kl"] is None or means["sobolev"] is None:
                cells.append("waiting")
            else:
                gap = (means["kl"] - means["sobolev"]) / means["kl"] if means["kl"] else None
                cells.append(f"{means['kl']:.3g} → {means['sobolev']:.3g} ({_pct(gap)})")
        lines.append(f"| {f:g} | " + " | ".join(cells) + " |")
    lines.append(
        "| Sobolev lower (seed pairs) | "
        + " | ".join(
            f"{k} of {k + h} (p {sign_test_two_sided(k, k + h):.2g})" if k + h else "n/a"
            for k, h in zip(lower, higher)
        )
        + " |"
    )
    up = sum(g > 0 for g in upper_gains)
    untied = up + sum(g < 0 for g in upper_gains)
    if untied:
        lines += [
            "",
            f"Relative gap larger on the upper {half} (higher-entropy) bins than on the lower {half}: in "
            f"{up} of {untied} seed pairs, smaller in {untied - up} (two-sided sign test p "
            f"{sign_test_two_sided(up, untied):.2g}).",
        ]
    return lines


def _width_of(runs: Sequence[dict[str, Any]]) -> str:
    widths = sorted({float(r.get("student_width", 1.0)) for r in runs})
    return ", ".join(f"{w:g}" for w in widths) or "n/a"


def _capacity_table(summary: Summary, wider: Summary) -> list[str]:
    """Per game and fraction the wider students were run at: the paper's student (width 1) and
    the wider one side by side, held-out KL of both methods, Sobolev's relative gap and verdict.

    A Sobolev gain that shrinks or turns into a loss as the student widens says the term helped
    a student too small to fit the teacher's values alone; one that holds says it does not
    depend on capacity."""
    lines = [
        "| game | fraction | student width | seeds (KL / Sob.) | KL: KL only | KL: Sobolev | "
        "gap (KL only − Sobolev) / KL only | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for game in wider.games:
        for f in wider.fractions(game):
            for which in (summary, wider):
                kl, sob = (which.cell(game, m, f, "kl") for m in METHODS)
                runs = which.runs(game, "kl", f) + which.runs(game, "sobolev", f)
                seeds = " / ".join(str(len(which.runs(game, m, f))) for m in METHODS)
                gap = _gap(kl, sob) if kl is not None and sob is not None else None
                verdict = cell_verdict(which, game, f, "kl") or "waiting"
                lines.append(
                    f"| {game} | {f:g} | {_width_of(runs)} | {seeds} | {fmt(kl)} | {fmt(sob)} | "
                    f"{_pct(gap)} | {verdict} |"
                )
    return lines


# --- Figures ---------------------------------------------------------------------------------


def _plot(
    summary: Summary,
    games: Sequence[str],
    metrics: Sequence[str],
    fractions: Sequence[float],
    title: str,
    *,
    gain: bool = False,
) -> bytes:
    """One column per game, one row per metric: mean over seeds against the fraction (log x),
    error bars the 95% t-interval, open markers single seeds, dots the seeds. Per method; or,
    with ``gain``, Sobolev's relative gain seed by seed (:func:`paired_difference`, relative),
    against a line at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    fig, axes = plt.subplots(
        len(metrics), len(games), figsize=(3.4 * len(games) + 0.6, 2.8 * len(metrics) + 0.6), squeeze=False
    )
    for col, game in enumerate(games):
        for row, metric in enumerate(metrics):
            ax = axes[row][col]
            if gain:
                series = [
                    (
                        "Sobolev's gain",
                        COLOURS["sobolev"],
                        [
                            (f, paired_difference(summary, game, f, metric, relative=True))
                            for f in summary.fractions(game)
                        ],
                    )
                ]
                ax.axhline(0.0, color=COLOURS["kl"], linewidth=1, label="KL only (no gain)")
            else:
                series = [
                    (
                        LABELS[m],
                        COLOURS[m],
                        [(f, summary.cell(game, m, f, metric)) for f in summary.fractions(game)],
                    )
                    for m in METHODS
                ]
            for j, (label, colour, found) in enumerate(series):
                cells = [(f, c) for f, c in found if c is not None]
                if not cells:
                    continue
                # Nudge the two methods apart on the log axis so their bars do not overlap.
                shift = 1.0 + (j - 0.5) * 0.06 if len(series) > 1 else 1.0
                xs = [f * shift for f, _ in cells]
                ax.plot(xs, [c.mean for _, c in cells], "-", color=colour, label=label)
                for x, (_, c) in zip(xs, cells):
                    if c.half_width is None:
                        ax.plot(x, c.mean, "o", mfc="white", color=colour)
                    else:
                        ax.errorbar(x, c.mean, yerr=c.half_width, fmt="o", color=colour, capsize=3)
                    ax.plot([x] * c.n, c.values, ".", color="k", markersize=2, alpha=0.5)
            ticks = sorted(set(fractions) | set(summary.fractions(game)))
            if gain:
                ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{100 * value:+.0f}%"))
                ax.tick_params(axis="y", labelsize=7)
            elif metric in LOG_Y_METRICS:
                ax.set_yscale("log", nonpositive="clip")  # an interval reaching below 0 is cut off
                # Ticks at 1, 2 and 5 of each decade, written 0.05 rather than 5x10^-2.
                ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_minor_locator(NullLocator())
                ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
                ax.tick_params(axis="y", labelsize=7)
            ax.set_xscale("log")
            ax.set_xticks(ticks, [f"{f:g}" for f in ticks], fontsize=7)
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlim(min(ticks) / 1.5, max(ticks) * 1.5)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(game)
            if row == len(metrics) - 1:
                ax.set_xlabel("training fraction of the 100K frames")
            if col == 0:
                label = (
                    f"{SHORT_LABELS[metric]}: (KL only − Sobolev) / KL only"
                    if gain
                    else METRIC_LABELS[metric]
                )
                ax.set_ylabel(label, fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes.flat:  # the first panel may be empty
        if handles:
            break
        handles, labels = ax.get_legend_handles_labels()
    fig.suptitle(title, fontsize=9)
    if handles:
        fig.legend(
            handles,
            labels,
            loc="upper center",
            bbox_to_anchor=(0.5, 0.955),
            ncol=2,
            frameon=False,
            fontsize=8,
        )
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


# --- The page --------------------------------------------------------------------------------


def _metric_table(summary: Summary, game: str, metrics: Sequence[str]) -> list[str]:
    head = " | ".join(f"{SHORT_LABELS[m]}: {LABELS[k]}" for m in metrics for k in METHODS)
    lines = [f"| fraction | seeds (KL / Sob.) | {head} |", "|---:|---:|" + "---:|" * (2 * len(metrics))]
    for f in summary.fractions(game):
        n = [
            f"{len(summary.runs(game, m, f))}"
            + (f" (+{dead} dead)" if (dead := len(summary.runs(game, m, f, dead=True))) else "")
            for m in METHODS
        ]
        cells = [fmt(summary.cell(game, m, f, metric)) for metric in metrics for m in METHODS]
        lines.append(f"| {f:g} | {n[0]} / {n[1]} | " + " | ".join(cells) + " |")
    return lines


def _scores_table(summary: Summary) -> list[str]:
    lines = [
        "| game | fraction | KL-only students | Sobolev students | teacher |",
        "|---|---:|---:|---:|---:|",
    ]
    any_row = False
    for game in summary.games:
        scored = [r for r in summary.students if r["game"] == game and r.get("score_mean") is not None]
        teachers = [r for r in summary.teachers if r["game"] == game]
        if not scored and not teachers:
            continue
        any_row = True
        fraction = max((r["train_fraction"] for r in scored), default=None)
        shas = {r.get("teacher_sha256") for r in scored}
        teacher = next((t for t in reversed(teachers) if t["teacher_sha256"] in shas), None) or (
            teachers[-1] if teachers else None
        )
        cells = []
        for method in METHODS:
            iv = summary.cell(game, method, fraction, "score_mean") if fraction is not None else None
            if iv is None:
                cells.append("waiting")
                continue
            episodes = sorted(
                {r["score_episodes"] for r in summary.runs(game, method, fraction) if "score_mean" in r}
            )
            games = f"{'/'.join(map(str, episodes))} games"
            if iv.half_width is None:  # fmt would add "(1 seed)" itself
                cells.append(f"{significant(iv.mean, 3)} (1 seed x {games})")
            else:
                cells.append(f"{fmt(iv, 3)} ({iv.n} seeds x {games})")
        teacher_cell = "waiting"
        if teacher:
            mean, std, episodes = (teacher[k] for k in ("score_mean", "score_std", "score_episodes"))
            teacher_cell = f"{significant(mean, 3)} ± {significant(std, 2)} std ({episodes} games)"
        frac = f"{fraction:g}" if fraction is not None else "waiting"
        lines.append(f"| {game} | {frac} | {cells[0]} | {cells[1]} | {teacher_cell} |")
    if not any_row:
        return ["Waiting: no game has been played yet (run `reproduce` with `--score-episodes N`)."]
    return lines


def _waiting(
    summary: Summary, cfg: ReportConfig, fractions: Sequence[float], seeds: Sequence[int]
) -> list[str]:
    lines = [
        f"- {game}: waiting for its hyperparameters (no entry in `{cfg.hparams}`; "
        f"`tune --game {game} --write-hparams` adds one when its search is finished)."
        for game in cfg.expected_games()
        if game not in summary.games
    ]
    for game in summary.games:
        runs = [r for r in summary.students if r["game"] == game]
        if not runs:
            lines.append(f"- {game}: waiting, no runs yet.")
            continue
        have = {(r["method"], r["train_fraction"], r["seed"]) for r in runs}
        for f in fractions:
            for m in METHODS:
                missing = [s for s in seeds if (m, f, s) not in have]
                if len(missing) == len(seeds):
                    lines.append(f"- {game}, {LABELS[m]}, fraction {f:g}: waiting (no seed yet).")
                elif missing:
                    seeds_text = ", ".join(map(str, missing))
                    lines.append(f"- {game}, {LABELS[m]}, fraction {f:g}: seeds {seeds_text} waiting.")
        if not any(r.get("score_mean") is not None for r in runs):
            lines.append(f"- {game}: game scores waiting (`reproduce --score-episodes N`).")
    return lines or ["Nothing: every expected cell has a row."]


def _commands(summary: Summary, cfg: ReportConfig) -> list[str]:
    defaults = SweepConfig()
    lines = []
    for game in summary.games:
        runs = [r for r in summary.students if r["game"] == game]
        args = ["python", "-m", "policy_distill", "reproduce", "--games", game]
        args += ["--fractions", cfg.fractions, "--seeds", cfg.seeds, "--hparams", cfg.hparams]
        if runs:
            first = runs[0]
            if first.get("teacher") not in (None, game):
                args += ["--teacher", str(first["teacher"])]
            if first.get("data") not in (None, defaults.data.replace("{game}", game)):
                args += ["--data", str(first["data"])]
            for name in ("batch_size", "eval_every", "eval_frames", "fidelity_frames"):
                if first.get(name) not in (None, getattr(defaults, name)):
                    args += [f"--{name.replace('_', '-')}", str(first[name])]
            episodes = sorted({r["score_episodes"] for r in runs if r.get("score_episodes")})
            if episodes:
                args += ["--score-episodes", str(episodes[-1])]
        lines.append(" ".join(shlex.quote(a) for a in args))
    bins = cfg.entropy_bins_path()
    bin_rows = [b for b in read_rows(bins) if b.get("game") in summary.games] if bins.is_file() else []
    if bin_rows:  # measures the runs above (their checkpoints), before the page reads it
        measured = sorted({b["game"] for b in bin_rows})
        lines.append(
            " ".join(
                shlex.quote(a)
                for a in ["python", "-m", "policy_distill", "by-entropy", "--results", cfg.results]
                + ["--hparams", cfg.hparams, "--games", ",".join(measured)]
                + ["--bins", str(len(bin_rows[0]["frames"])), "--out", str(bins)]
            )
        )
    lines.append(
        " ".join(
            shlex.quote(a)
            for a in [
                "python",
                "-m",
                "policy_distill",
                "report",
                "--results",
                cfg.results,
                "--hparams",
                cfg.hparams,
            ]
            + ["--out", cfg.out, "--fractions", cfg.fractions, "--seeds", cfg.seeds]
            + (["--games", cfg.games] if cfg.games else [])
            + (
                ["--tuning-results", cfg.tuning_results]
                if cfg.tuning_results != ReportConfig.tuning_results
                else []
            )
            + (
                ["--capacity-results", cfg.capacity_results, "--capacity-hparams", cfg.capacity_hparams]
                if cfg.capacity_results
                else []
            )
            + (["--metrics", cfg.metrics] if cfg.metrics != "final" else [])
            + (["--discussion", cfg.discussion] if cfg.discussion else [])
            + (["--entropy-bins", cfg.entropy_bins] if cfg.entropy_bins else [])
            + (["--preface", cfg.preface] if cfg.preface else [])
        )
    )
    return lines


def _search_rows(summary: Summary, cfg: ReportConfig, game: str) -> list[dict[str, Any]]:
    """The rows of ``game``'s search on the recording its entry names (none for an entry written
    before it named its recording: its search is not known)."""
    hp = summary.hparams.get(game)
    if hp is None or not hp.tuning_recording_sha256:
        return []
    return [
        r
        for r in read_rows(cfg.tuning_results.replace("{game}", game))
        if r.get("game") == game and r.get("dataset_sha256") == hp.tuning_recording_sha256
    ]


def _search_hours(summary: Summary, cfg: ReportConfig) -> list[tuple[str, int, float]]:
    """Per game with an entry: (game, runs, process-hours) of its search on the recording its
    entry names, from ``cfg.tuning_results``."""
    out = []
    for game in summary.hparams:
        rows = _search_rows(summary, cfg, game)
        if rows:
            out.append((game, len(rows), sum(r.get("wall_s") or 0.0 for r in rows) / 3600))
    return out


def _alpha_section(summary: Summary, cfg: ReportConfig) -> list[str]:
    """Per game and tuned fraction, validation KL at each alpha against KL only, from the search:
    how much the Sobolev term can buy on that game, and how narrow the window of alpha is."""
    from policy_distill.experiments.tune import lowest_by_alpha, walk_rows

    found = []  # (game, fraction, {alpha: relative to KL only}, chosen alpha)
    for game in summary.hparams:
        needed = ("train_fraction", "steps", "method", "alpha", "history")
        rows = [r for r in _search_rows(summary, cfg, game) if all(r.get(k) is not None for k in needed)]
        for f in sorted({r["train_fraction"] for r in rows}):
            at = [r for r in rows if r["train_fraction"] == f]
            walk = walk_rows(at)
            if walk is None:
                continue
            best = lowest_by_alpha(at, *walk)
            if 0.0 not in best or len(best) < 2:
                continue
            kl_only = best[0.0]["history"][-1]["kl"]
            gains = {a: (r["history"][-1]["kl"] - kl_only) / kl_only for a, r in best.items() if a > 0}
            found.append((game, f, gains, summary.hparams[game].for_cell("sobolev", f).alpha))
    if not found:
        return []
    alphas = sorted({a for _, _, gains, _ in found for a in gains})
    lines = [
        "**alpha.** From each game's search (on its own recording, never the grid's): at each tuned "
        "fraction, the lowest final validation KL over learning rates and estimators at each alpha, "
        "against KL only's (search-length runs); bold the alpha the grid uses. Negative: the Sobolev "
        "student is closer. A narrow window of helpful alpha makes the gain fragile on new data.",
        "",
        "| game | fraction | " + " | ".join(f"alpha {a:g}" for a in alphas) + " |",
        "|---|---:|" + "---:|" * len(alphas),
    ]
    for game, f, gains, chosen in found:
        cells = [
            ("**{}**" if a == chosen else "{}").format(_pct(gains[a])) if a in gains else "" for a in alphas
        ]
        lines.append(f"| {game} | {f:g} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _setup(summary: Summary, cfg: ReportConfig) -> list[str]:
    # Which teacher (and recording) made each game's rows: a figure is traceable to its teacher,
    # and rows of two teachers can never sit in one table unnoticed.
    teachers = Counter(
        (
            r["game"],
            r.get("teacher", r["game"]),
            r.get("teacher_sha256") or "unknown",
            r.get("dataset_sha256"),
        )
        for r in summary.students
    )
    lines = ["Teachers and recordings (runs):", ""]
    lines += [
        f"- {game}: teacher `{name}` sha256 {sha[:16]}..., "
        f"recording sha256 {(data or 'unknown')[:16]}...: {n}"
        for (game, name, sha, data), n in sorted(teachers.items())
    ] or ["- none yet"]
    hardware = Counter(
        f"{r.get('hardware', 'unknown')}" + (f", {r['cpu_capability']}" if r.get("cpu_capability") else "")
        for r in summary.students
    )
    lines += ["", "Hardware (runs):", ""]
    lines += [f"- {hw}: {n}" for hw, n in sorted(hardware.items())] or ["- none yet"]
    lines += [
        "",
        "Wall time per run (of runs that started from step 0: a resumed run's time covers only its "
        "last part). The median, beside the range: a run that shared its core with other work (a "
        "test suite, say) took longer, and one such run would drag a mean:",
        "",
        "| hardware | game | method | runs | median wall time | range | total |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in summary.students:
        if not r.get("resumed_from_step"):
            groups.setdefault((r.get("hardware", "unknown"), r["game"], r["method"]), []).append(r["wall_s"])
    for (hw, game, method), times in sorted(groups.items()):
        lines.append(
            f"| {hw} | {game} | {LABELS[method]} | {len(times)} | {np.median(times) / 60:.1f} min "
            f"| {min(times) / 60:.1f}-{max(times) / 60:.1f} min | {sum(times) / 3600:.2f} h |"
        )
    resumed = sum(1 for r in summary.students if r.get("resumed_from_step"))
    if resumed:
        lines += ["", f"{resumed} resumed run(s) left out of the wall times above."]
    total = sum(r.get("wall_s") or 0.0 for r in summary.students)
    lines += [
        "",
        f"In all: {len(summary.students)} student runs, {total / 3600:.1f} process-hours of wall time "
        "(one process per run; unlike the table, resumed runs are counted, from the step each resumed "
        "at; teacher scoring and recording not included).",
    ]
    searches = _search_hours(summary, cfg)
    if searches:
        hours = sum(h for _, _, h in searches)
        lines += [
            "",
            "Hyperparameter searches (`tune`, on each entry's own recording; from "
            f"`{cfg.tuning_results}`): "
            + "; ".join(f"{game} {n} runs, {h:.1f} process-hours" for game, n, h in searches)
            + f". Grid and searches together: {(total / 3600 + hours):.1f} process-hours.",
        ]
    return lines


def write_page(
    summary: Summary,
    cfg: ReportConfig,
    fractions: Sequence[float],
    seeds: Sequence[int],
    wider: Summary | None = None,
) -> str:
    """The markdown of ``README.md``; ``wider``: the wider students of ``cfg.capacity_results``."""
    which = (
        "after the last step"
        if cfg.metrics == "final"
        else "at best.pt (lowest held-out KL, chosen on the test split)"
    )
    teacher_rows = len(summary.teachers)
    lines = [
        "# Reproduction: Sobolev policy distillation (Czarnecki et al. 2017, section 4.2, Figure 4)",
        "",
        f"Generated by `policy_distill report` from `{cfg.results}` ({len(summary.students)} student runs, "
        f"{teacher_rows} teacher score row(s)); do not edit by hand, run the commands below again.",
        "",
        "Each run distils the game's teacher into the paper's student from the first x of one "
        "100K-frame recording (`data/<game>`) and measures it on the rest of the recording (later, "
        "unseen episodes; the held-out part shrinks as x grows): action-prediction error is the share of "
        "frames where the student's most likely action differs from the teacher's, KL the mean "
        "KL(pi_student ∥ pi_teacher). KL only: alpha = 0; Sobolev: KL + "
        "alpha times the stochastic Jacobian-projection term. Metrics are held-out values "
        f"{which}. Intervals are 95% Student-t intervals of the mean over seeds "
        "(mean ± t(0.975, n-1) s / sqrt(n)); a cell with one seed shows its mean without an interval.",
        "",
    ]
    preface = cfg.preface_path()
    if preface.is_file():
        lines[2:2] = [preface.read_text(encoding="utf-8", errors="replace").strip(), ""]
    if summary.excluded:
        lines += [
            f"{summary.excluded} row(s) made with other hyperparameters than `{cfg.hparams}` are left out.",
            "",
        ]
    lines += _dead_paragraph(summary)
    lines += ["## Setup", "", *_setup(summary, cfg), "", "## Hyperparameters", ""]
    overridden = [(game, o) for game, hp in summary.hparams.items() for o in hp.overrides]
    lines += [
        f"From `{cfg.hparams}`; "
        + (
            "the values below hold for both methods and every fraction except where an override "
            "says otherwise."
            if overridden
            else "both methods share the learning rate and steps."
        ),
        "",
    ]
    # Optional columns appear once a game departs from the paper (older pages stay as they were).
    optional = [
        (title, value)
        for title, value, shown in (
            ("Sobolev estimator", lambda hp: hp.sobolev_estimator, lambda hp: hp.sobolev_estimator != "vjp"),
            ("student width", lambda hp: f"{hp.student_width:g}", lambda hp: hp.student_width != 1),
        )
        if any(shown(hp) for hp in summary.hparams.values())
    ]
    lines += [
        "| game | learning rate | alpha (Sobolev) | steps | precision |"
        + "".join(f" {title} |" for title, _ in optional)
        + " chosen by |",
        "|---|---:|---:|---:|---|" + "---|" * len(optional) + "---|",
    ]
    for game in summary.games:
        hp = summary.hparams.get(game)
        if hp:
            cells = [f"{hp.learning_rate:g}", f"{hp.alpha:g}", str(hp.steps), hp.precision]
            cells += [value(hp) for _, value in optional]
            lines.append("| " + " | ".join([game, *cells, hp.chosen_by]) + " |")
        else:
            lines.append(f"| {game} |" + " |" * (4 + len(optional)) + f" not in `{cfg.hparams}` |")
    if overridden:
        lines += ["", "Overrides, applied in this order (a later one wins):", ""]
        lines += [f"- {game}, {o.describe()}" for game, o in overridden]
    lines += ["", "## Reproduce", "", "```bash", *_commands(summary, cfg), "```", ""]
    defaults = ReportConfig()
    if (cfg.results, cfg.hparams, cfg.out) == (defaults.results, defaults.hparams, defaults.out):
        example = summary.games[0] if summary.games else "pong"
        make_line = (
            "The same through make: `make reproduce` (every game of the hyperparameter file; "
            f'`ARGS="--games {example}"` for one) and `make report` (`ARGS=` for the other flags). '
        )
    else:  # make's targets default to docs/reproduce's files: these tables need the flags above
        make_line = (
            'The same through make: `make reproduce ARGS="..."` and `make report ARGS="..."` with the '
            "flags above. "
        )
    lines += [
        make_line + "Each "
        "`reproduce` skips the cells already in its results table; `--games`, `--fractions`, `--seeds` "
        "and `--methods` split the grid over machines, and `report --results a.jsonl,b.jsonl` joins "
        "their tables.",
        "",
        "## Results",
        "",
    ]
    figures = (
        (
            "![Figure 4 layout](figure4.png)",
            "Held-out action-prediction error (top) and KL (bottom, log scale) against the training "
            "fraction; grey KL only, blue Sobolev; error bars 95% t-intervals over seeds, open markers "
            "single seeds, black dots the seeds.",
            ("action_error", "kl"),
        ),
        (
            "![gradient fidelity](gradient_fidelity.png)",
            "Gradient fidelity: cosine (top, 1 is perfect) and relative L2 error (bottom, 0 is perfect) "
            "between the student's and the teacher's input-gradients of log pi over all actions, on "
            "fixed held-out frames.",
            ("grad_cosine", "grad_rel_l2"),
        ),
    )
    for image, caption, metrics in figures:
        lines += [image, "", caption, ""]
        for game in summary.games:
            if summary.fractions(game):
                lines += [f"**{game}**", "", *_metric_table(summary, game, metrics), ""]
    lines += [
        "## Game scores",
        "",
        "Students of the largest fraction (their best.pt) and the teacher, sampled actions, raw "
        "(unclipped) game scores. Students: mean over seeds of each seed's mean score, with the "
        "95% t-interval over seeds; teacher: mean ± std over its games.",
        "",
        *_scores_table(summary),
        "",
        "## Do the paper's claims hold?",
        "",
        "Claim tested: Sobolev-trained students reach lower held-out action-prediction error and KL "
        "than KL-only students, with the largest advantage when little data is available. Generated "
        "from the table above; a lower mean with overlapping intervals is not by itself evidence of a "
        "difference, so the seed-by-seed differences and a sign test across fractions are given too.",
        "",
    ]
    if summary.students:
        lines += [
            "![Sobolev gain](sobolev_gain.png)",
            "",
            "Sobolev's relative gain, (KL only − Sobolev) / KL only, taken seed by seed (both methods of "
            "a seed start from the same weights) on held-out KL (top) and action error (bottom); above "
            "0: Sobolev students closer to the teacher. Error bars: 95% t-intervals over seeds; black "
            "dots: the seeds.",
            "",
        ]
    for game in summary.games:
        if summary.fractions(game):
            lines += [f"- {s}" for s in claim_sentences(summary, game, fractions, seeds)]
    if not summary.students:
        lines.append("Nothing to judge yet: no runs.")
    judged = [g for g in summary.games if summary.fractions(g)]
    if judged:
        lines += [
            "",
            "### Verdict per game and fraction",
            "",
            "Sobolev students against KL-only ones on held-out KL and action error: **closer** or "
            "**further** where the two methods' 95% intervals lie apart, overlap where they do not (no "
            "resolved difference); then paired: **closer** or **further** where the 95% interval of "
            "the seed-by-seed difference (KL only − Sobolev, table below) lies wholly above or below 0, "
            "not resolved where it holds 0. Each paired interval is a test at the 5% level: of a game's "
            f"{2 * len(fractions)} (two metrics at {len(fractions)} fractions), "
            f"{0.05 * 2 * len(fractions):.2g} would come out resolved on average were the methods alike.",
            "",
            *_verdict_table(summary, judged),
            "",
            "Seed-by-seed differences, KL only − Sobolev (positive: the Sobolev student is closer), mean "
            "± 95% t-interval over the seeds both methods have:",
            "",
            *_paired_table(summary, judged),
            "",
            "### What could explain it",
            "",
            "Measured beside each run: the teacher's mean policy entropy on the training part (a "
            "near-deterministic teacher leaves the KL little beyond its argmax to teach), each "
            "student's training KL (mean batch KL over its last evaluation interval) against its "
            "held-out KL (a large ratio: it memorised its frames, which a regulariser can help), "
            'and the Sobolev weight alpha (how validation KL depends on it: the "By alpha" tables of each '
            "game's tuning page, `docs/tuning/<game>.md`). n/a: rows written before these were recorded.",
            "",
        ]
        for game in judged:
            lines += [f"**{game}**", "", *_explanation_table(summary, game), ""]
        lines += _alpha_section(summary, cfg)
        lines += _entropy_section(summary, cfg, judged)
        if wider is not None:
            lines += [
                "**Student capacity.** Wider students (`student_width`: channels and hidden units "
                f"times the width) from `{cfg.capacity_results}`, trained with `{cfg.capacity_hparams}` "
                "(the paper's student's hyperparameters unless it says otherwise), beside the paper's "
                "student at the same fractions. Held-out KL; verdict as above. A Sobolev gain that "
                "shrinks as the student widens points to capacity: the term helps a student too small "
                "to fit the teacher's values alone.",
                "",
                *(_capacity_table(summary, wider) if wider.students else ["Waiting: no wider student yet."]),
                "",
            ]
    discussion = cfg.discussion_path()
    if discussion.is_file():
        lines += ["", "## Discussion", "", f"Hand-written, from `{discussion}`.", ""]
        lines += [discussion.read_text(encoding="utf-8", errors="replace").strip()]
    lines += ["", "## Waiting", "", *_waiting(summary, cfg, fractions, seeds), ""]
    return "\n".join(lines)


def _paths(tables: str) -> list[str]:
    """The comma-separated results tables of a setting, without blanks."""
    return [p.strip() for p in tables.split(",") if p.strip()]


def make_report(cfg: ReportConfig) -> dict[str, Any]:
    """Write README.md, figure4.png, gradient_fidelity.png and sobolev_gain.png into ``cfg.out``."""
    from policy_distill.checkpoint import atomic_write_bytes

    fractions, seeds = parse_fractions(cfg.fractions), parse_seeds(cfg.seeds)
    paths = _paths(cfg.results)
    for given in (cfg.results, cfg.capacity_results):
        missing = [p for p in _paths(given) if not Path(p).is_file()]
        if missing or (given == cfg.results and not paths):
            raise UserError(f"no results table at {', '.join(missing) or repr(given)}; run `reproduce` first")
    for name in ("discussion", "preface", "entropy_bins"):
        given = getattr(cfg, name)
        if given and not Path(given).is_file():
            raise UserError(f"`{name}` {given}: no such file; write it or leave `{name}` out")
    hparams = load_hparams(cfg.hparams)
    summary = Summary(latest_rows(read_rows(paths)), hparams, cfg.metrics)
    wider = (
        Summary(
            latest_rows(read_rows(_paths(cfg.capacity_results))),
            load_hparams(cfg.capacity_hparams),
            cfg.metrics,
        )
        if cfg.capacity_results
        else None
    )
    out = Path(cfg.out)
    games = [g for g in summary.games if summary.fractions(g)] or summary.games[:1] or ["(no runs)"]
    atomic_write_bytes(
        out / "figure4.png",
        _plot(
            summary,
            games,
            ("action_error", "kl"),
            fractions,
            f"Figure 4 layout: held-out metrics ({cfg.metrics})",
        ),
    )
    atomic_write_bytes(
        out / "gradient_fidelity.png",
        _plot(
            summary, games, ("grad_cosine", "grad_rel_l2"), fractions, f"Gradient fidelity ({cfg.metrics})"
        ),
    )
    atomic_write_bytes(
        out / "sobolev_gain.png",
        _plot(
            summary,
            games,
            ("kl", "action_error"),
            fractions,
            f"Sobolev's gain over KL only, seed by seed ({cfg.metrics})",
            gain=True,
        ),
    )
    page = write_page(summary, cfg, fractions, seeds, wider)
    atomic_write_bytes(out / "README.md", page.encode())
    verdicts = {g: claims(summary, g) for g in summary.games if summary.fractions(g)}
    per_fraction = {
        g: {
            f"{f:g}": {m: cell_verdict(summary, g, f, m) for m in ("kl", "action_error")}
            for f in summary.fractions(g)
        }
        for g in verdicts
    }
    paired = {
        g: {
            f"{f:g}": {m: paired_verdict(paired_difference(summary, g, f, m)) for m in ("kl", "action_error")}
            for f in summary.fractions(g)
        }
        for g in verdicts
    }
    print(
        f"wrote {out / 'README.md'}, figure4.png, gradient_fidelity.png, sobolev_gain.png "
        f"({len(summary.students)} runs)"
    )
    return {
        "page": str(out / "README.md"),
        "figures": [str(out / name) for name in ("figure4.png", "gradient_fidelity.png", "sobolev_gain.png")],
        "runs": len(summary.students),
        "teacher_rows": len(summary.teachers),
        "excluded_rows": summary.excluded,
        "dead_rows": len(summary.dead),
        "claims": verdicts,
        "verdicts": per_fraction,
        "paired_verdicts": paired,
    }
