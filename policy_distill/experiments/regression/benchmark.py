"""Sobolev regression benchmark: section 4.1 and Figure 2 (right) of Czarnecki et al. 2017.

For every function x training size x seed, two ReLU MLPs start from the same weights and see the
same training points: one is trained on values only (MSE), the other with the Sobolev loss (MSE
of values + squared L2 error of the input gradient); errors are measured on uniform test points
in the functions' original units. This module runs the sweep and is its command; the parts:

- :mod:`.config`: :class:`RegressionConfig`, the settings (``--flags`` of the command);
- :mod:`.functions`: the seven target functions with their exact gradients;
- :mod:`.training`: the batched ensemble of networks, its training and its errors;
- :mod:`.statistics`: statistics over seeds and the check of the paper's claims;
- :mod:`.tables`, :mod:`.figures`: ``table.md`` and ``figure2_right.png``.

Outputs in ``out``: ``results.json`` (settings, hardware, every run, the summary), ``table.md``
and ``figure2_right.png``. Finished training sizes are kept in ``results.json``, so running the
same command again after an interruption resumes.

Stand-alone: ``python -m policy_distill.experiments.regression.benchmark regression-benchmark ...``
(the toolkit's ``python -m policy_distill regression-benchmark`` is the same command).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from policy_distill.checkpoint import (
    atomic_write_bytes,
    atomic_write_json,
    hardware_description,
    package_versions,
)
from policy_distill.experiments.regression.config import RegressionConfig
from policy_distill.experiments.regression.figures import plot_figure
from policy_distill.experiments.regression.statistics import check_claims, summarise
from policy_distill.experiments.regression.tables import format_table
from policy_distill.experiments.regression.training import METHODS, log, make_test_sets, train_group

RESULTS_FORMAT = "policy-distill/regression-benchmark"


def _key(r: dict[str, Any]) -> tuple[str, int, int, str]:
    return r["function"], r["size"], r["seed"], r["method"]


def run_benchmark(cfg: RegressionConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run (or resume) the sweep and write results.json, table.md and figure2_right.png.

    Returns:
        A summary: output paths, number of runs, wall time and the claims check.
    """
    out = Path(out_dir)
    torch.set_num_threads(cfg.threads)
    targets, sizes = cfg.function_list(), cfg.size_list()
    path = out / "results.json"
    records: dict[tuple[str, int, int, str], dict[str, Any]] = {}
    groups: list[dict[str, Any]] = []
    if cfg.resume and path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("format") == RESULTS_FORMAT and old.get("training_settings") == cfg.training_settings():
            records = {_key(r): r for r in old.get("runs", [])}
            groups = list(old.get("groups", []))
            log(f"resuming: {len(records)} runs already in {path}")
        elif old:
            log(f"{path} was written with other settings; starting afresh")
    test_sets = make_test_sets(cfg, targets)

    def save(extra: dict[str, Any]) -> None:
        atomic_write_json(
            path,
            {
                "format": RESULTS_FORMAT,
                "config": dataclasses.asdict(cfg),
                "training_settings": cfg.training_settings(),
                "hardware": hardware_description(),
                "torch_threads": torch.get_num_threads(),
                "versions": package_versions(),
                "groups": groups,
                "train_seconds": sum(g["seconds"] for g in groups),
                "runs": sorted(records.values(), key=_key),
                **extra,
            },
        )

    for n in sizes:
        todo = [
            (t, s)
            for t in targets
            for s in range(cfg.seeds)
            if any((t.name, n, s, m) not in records for m in METHODS)
        ]
        if not todo:
            continue
        log(f"training size {n}: {len(todo)} networks per method, batched")
        start = time.perf_counter()
        for r in train_group(cfg, todo, n, test_sets):
            records[_key(r)] = r
        seconds = time.perf_counter() - start
        groups.append({"size": n, "networks_per_method": len(todo), "seconds": seconds})
        log(f"  size {n} done in {seconds:.0f} s")
        save({})  # after every size, so an interruption loses at most one size

    chosen = [
        r
        for r in records.values()
        if r["function"] in {t.name for t in targets} and r["size"] in sizes and r["seed"] < cfg.seeds
    ]
    summary = summarise(chosen, targets, sizes, test_sets)
    claims = check_claims(summary, targets, sizes)
    table = format_table(summary, claims, targets, sizes, cfg.seeds)
    atomic_write_bytes(out / "table.md", table.encode())
    atomic_write_bytes(out / "figure2_right.png", plot_figure(summary, targets, sizes, chosen))
    save({"summary": summary, "claims": claims})
    log(table)
    return {
        "results": str(path),
        "table": str(out / "table.md"),
        "figure": str(out / "figure2_right.png"),
        "runs": len(chosen),
        "train_seconds": round(sum(g["seconds"] for g in groups), 1),
        "claims": {k: v for k, v in claims.items() if k != "margins"},
    }


@dataclasses.dataclass(frozen=True)
class RegressionOutput:
    """Where the ``regression-benchmark`` command writes."""

    out: str = "docs/regression"
    """Folder for results.json, table.md and figure2_right.png."""
