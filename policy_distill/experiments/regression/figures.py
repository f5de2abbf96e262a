"""Figure 2 (right) of the paper, reproduced from the section 4.1 sweep (``figure2_right.png``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from policy_distill.experiments.regression.functions import RegressionTarget
from policy_distill.experiments.regression.statistics import cell
from policy_distill.experiments.regression.training import METHODS

LABELS = {"values": "values only", "sobolev": "Sobolev"}
"""Legend text of each method."""


def plot_figure(
    summary: dict[str, Any],
    targets: Sequence[RegressionTarget],
    sizes: Sequence[int],
    records: Sequence[dict[str, Any]],
) -> bytes:
    """Figure 2 (right) of the paper, plus a gradient row: PNG bytes.

    One panel per function; per training size, a bar per method (mean log10 test MSE over
    seeds, error bar one sample std, dots the seeds). Top row values, bottom row gradients.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"values": "#9e9e9e", "sobolev": "#1f77b4"}
    fig, axes = plt.subplots(2, len(targets), figsize=(2.3 * len(targets), 5.6), squeeze=False)
    for row, (kind, label) in enumerate((("value", "values"), ("grad", "gradients"))):
        for col, t in enumerate(targets):
            ax = axes[row][col]
            cells = [c for c in summary["cells"] if c["function"] == t.name]
            if not cells:
                continue
            stat = f"log10_test_{kind}_mse"
            floor = math.floor(min(c[stat]["min"] for c in cells)) - 0.5
            for i, n in enumerate(sizes):
                for j, m in enumerate(METHODS):
                    c = cell(summary, t.name, n, m)
                    if c is None:
                        continue
                    pos = i + (j - 0.5) * 0.4
                    ax.bar(
                        pos,
                        c[stat]["mean"] - floor,
                        bottom=floor,
                        width=0.38,
                        color=colours[m],
                        yerr=c[stat]["std"],
                        capsize=2,
                        label=LABELS[m] if (i, col, row) == (0, 0, 0) else None,
                    )
                    pts = [
                        math.log10(r[f"test_{kind}_mse"])
                        for r in records
                        if (r["function"], r["size"], r["method"]) == (t.name, n, m)
                    ]
                    ax.plot([pos] * len(pts), pts, "k.", markersize=3)
            ax.set_xticks(range(len(sizes)), [str(n) for n in sizes])
            ax.set_ylim(bottom=floor)
            ax.grid(axis="y", alpha=0.3)
            if row == 0:
                ax.set_title(t.name.replace("_", "-"))
            if col == 0:
                ax.set_ylabel(f"log10 test MSE ({label})")
            if row == 1:
                ax.set_xlabel("training points")
    fig.legend(loc="upper right", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
