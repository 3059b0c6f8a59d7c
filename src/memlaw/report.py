"""Figures: loss curves and token-probability histograms of training runs (PNG)."""

from __future__ import annotations

import math
from pathlib import Path


def plot_runs(runs: list[tuple[str, object]], path: str | Path) -> Path:
    """Plot runs side by side: loss per step (log scale) with the ln 2 boundary, and the
    histogram of final target-token probabilities with the p = 0.5 boundary.

    ``runs`` holds ``(label, TrainResult)`` pairs; the PNG is written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    figure, (curves, histogram) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, run in runs:
        steps = [entry.step for entry in run.log]
        curves.plot(steps, [entry.loss for entry in run.log], label=label, linewidth=1.6)
    curves.axhline(math.log(2), color="grey", linestyle="--", linewidth=1, label="ln 2 (p = 0.5)")
    curves.set_yscale("log")
    curves.set_xlabel("step")
    curves.set_ylabel("mean target-token loss (nats)")
    curves.set_title("training loss")
    curves.legend()

    bins = [i / 20 for i in range(21)]
    for label, run in runs:
        probabilities = [p for item in run.report.items for p in item.probabilities]
        histogram.hist(probabilities, bins=bins, alpha=0.55, label=label)
    histogram.axvline(0.5, color="grey", linestyle="--", linewidth=1, label="p = 0.5")
    histogram.set_yscale("log")
    histogram.set_xlabel("teacher-forced probability of the target token")
    histogram.set_ylabel("tokens")
    histogram.set_title("final token probabilities")
    histogram.legend()
    figure.tight_layout()

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(staging, dpi=110)
    plt.close(figure)
    staging.replace(path)
    return path
