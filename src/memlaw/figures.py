"""Every figure memlaw draws, each saved atomically through memlaw.atomic: the training-run
plot of the demo (:func:`plot_runs`), the rank plan (:func:`plot_plan`) and the sweep report's
figures (:func:`sweep_figures`).

matplotlib's object API (no pyplot state) with the Agg backend: figures draw headless.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memlaw.atomic import atomic_write_bytes
from memlaw.law import LawPoint, MemoryLaw, capacity

# Published capacity of GPT-style models trained from scratch (bits per parameter): the
# reference line of the capacity figure.
GPT_BITS_PER_PARAM = 3.6
# matplotlib's PNG resolution; 110 dpi keeps a report of eight figures under 1 MB.
FIGURE_DPI = 110
# The recall boundary (p = 0.5, loss ln 2) in the figures of one point.
BOUNDARY = {"color": "firebrick", "linestyle": "--", "linewidth": 1.2}


def png_bytes(figure: Any) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return buffer.getvalue()


def save_png(figure: Any, path: str | Path) -> Path:
    """Write a figure as a PNG, atomically (a reader never sees half a file)."""
    path = Path(path)
    atomic_write_bytes(path, png_bytes(figure))
    return path


def plot_runs(runs: list[tuple[str, object]], path: str | Path) -> Path:
    """Plot runs side by side: loss per step (log scale) with the ln 2 boundary, and the
    histogram of final target-token probabilities with the p = 0.5 boundary.

    ``runs`` holds ``(label, TrainResult)`` pairs; the PNG is written atomically.
    """
    figure, (curves, histogram) = _panels(2, width=5.5, height=4.2)
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
    return save_png(figure, path)


@dataclass
class Figure:
    """One rendered figure: its file name, heading, caption and PNG bytes."""

    name: str
    title: str
    caption: str
    png: bytes


def predicted_delta(law: MemoryLaw | None, row: dict) -> float | None:
    """The law's ΔL for a sweep row, on that row's own L0 and H where the form needs them."""
    if law is None:
        return None
    unit = law.capacity_of(row["rank"], row["layers"])
    return float(
        law.predict(
            unit,
            row["length"],
            base_loss=row.get("base_loss"),
            info_baseline=row.get("info_baseline"),
        )
    )


def _series_set(rows: list[dict]) -> tuple[float | None, float | None]:
    """The median L0 and H of a series of rows (None where a row lacks them)."""
    bases = [row.get("base_loss") for row in rows]
    baselines = [row.get("info_baseline") for row in rows]
    base = None if None in bases else float(np.median(bases))
    return base, None if None in baselines else float(np.median(baselines))


def bits_per_param(row: dict) -> float | None:
    """Memorized bits per trainable parameter of a sweep row (memlaw.information)."""
    if row.get("base_loss") is None:
        return None
    return capacity(LawPoint.from_dict(row))["bits_per_param"]


# --- figures ---------------------------------------------------------------------------------


def sweep_figures(
    rows: list[dict], law: MemoryLaw | None, shown: dict, r2: float | None = None
) -> list[Figure]:
    """The report's figures: ΔL against rank and ℓ with the law, predicted against measured,
    final loss, exact match, memorized bits per parameter, and one point's token
    probabilities and loss curve."""
    figures = [
        _figure("delta_vs_rank", "ΔL vs rank", *_delta_vs(rows, law, "rank", "length")),
        _figure("delta_vs_length", "ΔL vs length ℓ", *_delta_vs(rows, law, "length", "rank")),
    ]
    if law is not None:
        figures.append(
            _figure(
                "predicted_vs_measured",
                "Predicted vs measured ΔL",
                *_predicted_vs_measured(rows, law, r2),
            )
        )
    figures += [
        _figure(
            "final_loss",
            "Final loss L1 over (rank, ℓ)",
            *_heatmap(rows, "final_loss", "final loss L1 (nats per token)", cmap="viridis_r"),
        ),
        _figure(
            "exact_match",
            "Exact-match accuracy over (rank, ℓ)",
            *_heatmap(
                rows, "exact_match", "exact-match accuracy", cmap="RdYlGn", limits=(0.0, 1.0)
            ),
        ),
        _figure(
            "capacity",
            "Capacity: memorized bits per trainable parameter",
            *_capacity_figure(rows, law),
        ),
        _figure(
            "token_probabilities", f"Token probabilities of {shown['key']}", *_probabilities(shown)
        ),
        _figure("loss_curve", f"Loss curve of {shown['key']}", *_loss_curve(shown)),
    ]
    for number, figure in enumerate(figures, start=1):  # numbered: the folder sorts like the report
        figure.name = f"{number:02d}_{figure.name}.png"
    return figures


def _figure(name: str, title: str, figure: Any, caption: str) -> Figure:
    return Figure(name=name, title=title, caption=caption, png=png_bytes(figure))


def save_pngs(folder: Path, figures: list[Figure]) -> None:
    """Each figure as a PNG file in ``folder`` (named as in the report)."""
    for figure in figures:
        (folder / figure.name).write_bytes(figure.png)


def _panels(count: int, *, width: float = 7.6, height: float = 4.6) -> tuple[Any, list[Any]]:
    """A figure with ``count`` axes, at most two a row: one per (layer count, method).

    matplotlib's object API (no pyplot) draws with Agg and leaves no global state behind.
    """
    from matplotlib.figure import Figure

    columns = min(count, 2)
    lines = math.ceil(count / columns)
    figure = Figure(figsize=(width * columns, height * lines), layout="constrained")
    axes = list(figure.subplots(lines, columns, squeeze=False).ravel())
    for spare in axes[count:]:
        spare.set_visible(False)
    return figure, axes[:count]


def _groups(rows: list[dict]) -> dict[tuple[int, str], list[dict]]:
    """Rows by (adapted layers, method): points of one group share a fitted curve."""
    groups: dict[tuple[int, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["layers"], row["method"]), []).append(row)
    return dict(sorted(groups.items()))


def _group_label(layers: int, method: str) -> str:
    return f"{method}, {layers} layer{'s' if layers != 1 else ''}"


def _colors(values: list) -> dict:
    """One viridis colour per value, stopping short of its pale yellow end."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return {v: cmap(0.85 * i / max(len(values) - 1, 1)) for i, v in enumerate(values)}


def _plot_measured(
    axes: Any, rows: list[dict], x_name: str, y_of: Callable, color: Any, label: str
) -> int:
    """One series: points filled when they plateaued and hollow at the step cap; the line
    joins the means over seeds of the points that plateaued (a capped point would bend it
    for a reason that is not capacity). Returns how many were left out for y ≤ 0 (no log)."""
    points = [(row[x_name], y_of(row), row["hit_cap"]) for row in rows]
    points = [(x, y, capped) for x, y, capped in points if y is not None and y > 0]
    xs = sorted({x for x, _, capped in points if not capped})
    means = [float(np.mean([y for x2, y, c in points if x2 == x and not c])) for x in xs]
    axes.plot(xs, means, "-", color=color, linewidth=1.2, alpha=0.75, label=label)
    for capped in (False, True):
        part = [(x, y) for x, y, c in points if c == capped]
        if part:
            _scatter(axes, *zip(*part, strict=True), color=color, capped=capped)
    return len(rows) - len(points)


def _scatter(axes: Any, xs: Any, ys: Any, *, color: Any, capped: bool, label: str | None = None):
    """Measured points: filled when they plateaued, hollow when they hit the step cap."""
    axes.scatter(
        xs,
        ys,
        s=30,
        facecolors="none" if capped else [color],
        edgecolors=[color],
        linewidths=1.3,
        label=None if capped else label,
        zorder=3,
    )


def _grid(values: list[float]) -> np.ndarray:
    """Log-spaced x values across the measured range, for smooth fitted curves."""
    return np.geomspace(min(values), max(values), 60)


def _legend(axes: Any, *, law: bool, capped: bool) -> None:
    """The series legend plus keys for the fitted curves and the hollow (capped) markers."""
    from matplotlib.lines import Line2D

    handles, _ = axes.get_legend_handles_labels()
    if law:
        handles.append(Line2D([], [], linestyle="--", color="grey", label="fitted law"))
    if capped:
        hollow = {"marker": "o", "markerfacecolor": "none", "markeredgecolor": "grey"}
        handles.append(Line2D([], [], linestyle="", **hollow, label="hit the step cap"))
    _outside_legend(axes, handles)


def _outside_legend(axes: Any, handles: list | None = None) -> None:
    """A legend right of the axes: inside, it would hide points of some grid or other."""
    axes.legend(
        handles=handles,
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        ncols=2 if handles and len(handles) > 14 else 1,
    )


def _log_axes(axes: Any, ticks: list[float]) -> None:
    """Log-log axes, gridded, with the measured x values as ticks and plain-number labels (8
    and 0.3, not 10^0.9 and 3×10^−1): grids are powers of two more often than of ten."""
    from matplotlib.ticker import NullLocator

    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.grid(True, which="major", alpha=0.3)
    if len(set(ticks)) <= 12:  # more would overlap; matplotlib's own ticks are fine then
        axes.set_xticks(sorted(set(ticks)), [f"{t:g}" for t in sorted(set(ticks))])
        axes.xaxis.set_minor_locator(NullLocator())
    else:
        _plain_log_labels(axes.xaxis)
    _plain_log_labels(axes.yaxis)


def _plain_log_labels(axis: Any) -> None:
    """Plain-number labels on a log axis, on the ticks matplotlib itself would label."""
    from matplotlib.ticker import LogFormatterSciNotation

    class Plain(LogFormatterSciNotation):
        def __call__(self, x: float, pos: int | None = None) -> str:
            return f"{x:g}" if super().__call__(x, pos) else ""

    axis.set_major_formatter(Plain())
    # Minor ticks get labels when the axis spans less than two decades (ΔL often does).
    axis.set_minor_formatter(Plain(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _hidden_note(hidden: int, what: str = "ΔL ≤ 0") -> str:
    return (
        f" {hidden} point{'s' if hidden != 1 else ''} with {what} cannot be shown on the log scale."
        if hidden
        else ""
    )


def _delta_vs(
    rows: list[dict], law: MemoryLaw | None, x_name: str, series_name: str
) -> tuple[Any, str]:
    """ΔL against rank (one series per ℓ) or against ℓ (one series per rank), log-log, with
    the fitted law as dashed curves in the colour of each series."""
    groups = _groups(rows)
    figure, axes_list = _panels(len(groups))
    values = sorted({row[series_name] for row in rows})
    colors = _colors(values)
    hidden = 0
    for axes, ((layers, method), group) in zip(axes_list, groups.items(), strict=True):
        for value in values:
            series = [row for row in group if row[series_name] == value]
            if not series:
                continue
            label = f"ℓ = {value}" if series_name == "length" else f"r = {value}"
            hidden += _plot_measured(
                axes, series, x_name, lambda row: row["delta_loss"], colors[value], label
            )
            if law is not None:
                xs = _grid([row[x_name] for row in series])
                rank, length = (xs, value) if x_name == "rank" else (value, xs)
                base, baseline = _series_set(series)
                curve = law.predict(
                    law.capacity_of(rank, layers), length, base_loss=base, info_baseline=baseline
                )
                if base is not None:  # never drawn above the ceiling: ΔL ≤ L0
                    curve = np.minimum(curve, base)
                axes.plot(xs, curve, "--", color=colors[value], linewidth=1.1)
        _log_axes(axes, [row[x_name] for row in group])
        axes.set_xlabel("LoRA rank r" if x_name == "rank" else "target tokens ℓ")
        axes.set_ylabel("ΔL = L0 − L1 (nats per target token)")
        axes.set_title(
            f"ΔL vs {'rank' if x_name == 'rank' else 'ℓ'} — {_group_label(layers, method)}",
            fontsize=10,
        )
        _legend(axes, law=law is not None, capped=any(row["hit_cap"] for row in group))
    caption = (
        f"Measured loss reduction per {'rank, one line per length ℓ' if x_name == 'rank' else 'length ℓ, one line per rank'} "
        "(the line joins the points that plateaued, mean over seeds)"
        + ("; dashed: the fitted law." if law is not None else ".")
        + _hidden_note(hidden)
    )
    return figure, caption


def _predicted_vs_measured(rows: list[dict], law: MemoryLaw, r2: float | None) -> tuple[Any, str]:
    """Every point at (measured ΔL, predicted ΔL), with the y = x line."""
    figure, (axes,) = _panels(1, width=7.0, height=5.2)
    lengths = sorted({row["length"] for row in rows})
    colors = _colors(lengths)
    shown = [row for row in rows if row["delta_loss"] > 0]
    for length in lengths:
        for capped in (False, True):
            part = [row for row in shown if row["length"] == length and row["hit_cap"] == capped]
            if part:
                measured = [row["delta_loss"] for row in part]
                predicted = [predicted_delta(law, row) for row in part]
                color, label = colors[length], f"ℓ = {length}"
                _scatter(axes, measured, predicted, color=color, capped=capped, label=label)
    ends = [row["delta_loss"] for row in shown] + [predicted_delta(law, row) for row in shown]
    if ends:
        low, high = min(ends) / 1.3, max(ends) * 1.3
        axes.plot([low, high], [low, high], color="grey", linewidth=1, label="y = x")
        axes.set_xlim(low, high)
        axes.set_ylim(low, high)
    axes.set_xscale("log")
    axes.set_yscale("log")
    _plain_log_labels(axes.xaxis)
    _plain_log_labels(axes.yaxis)
    axes.set_aspect("equal")
    axes.set_xlabel("measured ΔL (nats per target token)")
    axes.set_ylabel("predicted ΔL")
    r2 = "n/a" if r2 is None else f"{r2:.4f}"
    axes.set_title(f"predicted vs measured — R² = {r2} (points it was fitted on)", fontsize=10)
    axes.grid(True, alpha=0.3)
    _legend(axes, law=False, capped=any(row["hit_cap"] for row in shown))
    caption = (
        f"The law against every point; R² = {r2} on the points it was fitted on. Points at the "
        "step cap (hollow) are not fitted; they fell short of capacity, so they sit above the line."
        + _hidden_note(len(rows) - len(shown))
    )
    return figure, caption


def _heatmap(
    rows: list[dict], name: str, label: str, *, cmap: str, limits: tuple[float, float] | None = None
) -> tuple[Any, str]:
    """``name`` over (rank, ℓ), one panel per (layers, method), mean over seeds, values
    written in each cell; a star marks cells where a run hit the step cap."""
    groups = _groups(rows)
    ranks = sorted({row["rank"] for row in rows})
    lengths = sorted({row["length"] for row in rows})
    figure, axes_list = _panels(
        len(groups),
        width=max(4.8, 0.8 * len(ranks) + 2.4),
        height=max(3.4, 0.55 * len(lengths) + 1.8),
    )
    for axes, ((layers, method), group) in zip(axes_list, groups.items(), strict=True):
        values, capped = _cells(group, name, ranks, lengths)
        vmin, vmax = limits if limits else (np.nanmin(values), np.nanmax(values))
        image = axes.imshow(
            np.ma.masked_invalid(values),
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            origin="lower",
            aspect="auto",
        )
        for (i, j), value in np.ndenumerate(values):
            if not np.isnan(value):
                red, green, blue, _ = image.cmap(image.norm(value))
                ink = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.55 else "white"
                text = f"{value:.2f}" + ("*" if capped[i, j] else "")
                axes.text(j, i, text, ha="center", va="center", fontsize=8, color=ink)
        axes.set_xticks(range(len(ranks)), [str(r) for r in ranks])
        axes.set_yticks(range(len(lengths)), [str(length) for length in lengths])
        axes.set_xlabel("LoRA rank r")
        axes.set_ylabel("target tokens ℓ")
        axes.set_title(f"{label} — {_group_label(layers, method)}", fontsize=10)
        figure.colorbar(image, ax=axes, shrink=0.9)
    caption = f"{label[0].upper()}{label[1:]} of each point (mean over seeds); * marks a point that hit the step cap; blank: not measured."
    return figure, caption


def _cells(
    rows: list[dict], name: str, ranks: list[int], lengths: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``name`` per (ℓ, rank) cell (NaN where nothing was measured) and whether any
    run of the cell hit the step cap."""
    values = np.full((len(lengths), len(ranks)), np.nan)
    capped = np.zeros(values.shape, dtype=bool)
    for i, length in enumerate(lengths):
        for j, rank in enumerate(ranks):
            cell = [row for row in rows if row["rank"] == rank and row["length"] == length]
            measured = [row[name] for row in cell if row[name] is not None]
            if measured:
                values[i, j] = float(np.mean(measured))
            capped[i, j] = any(row["hit_cap"] for row in cell)
    return values, capped


def _capacity_figure(rows: list[dict], law: MemoryLaw | None) -> tuple[Any, str]:
    """Memorized bits per trainable parameter, ℓ · max(0, min(L0, H) − L1) / ln 2 / params,
    against rank per ℓ."""
    groups = _groups(rows)
    figure, axes_list = _panels(len(groups))
    lengths = sorted({row["length"] for row in rows})
    colors = _colors(lengths)
    hidden = 0
    for axes, ((layers, method), group) in zip(axes_list, groups.items(), strict=True):
        # LoRA parameters grow linearly in the rank, so one ratio turns the law into bits/param.
        per_rank = float(np.median([row["trainable_params"] / row["rank"] for row in group]))
        for length in lengths:
            series = [row for row in group if row["length"] == length]
            if not series:
                continue
            hidden += _plot_measured(
                axes, series, "rank", bits_per_param, colors[length], f"ℓ = {length}"
            )
            base, baseline = _series_set(series)
            if law is not None and base is not None:
                ranks = _grid([row["rank"] for row in series])
                delta = law.predict(
                    law.capacity_of(ranks, layers), length, base_loss=base, info_baseline=baseline
                )
                ceiling = base if baseline is None else min(base, baseline)
                memorized = np.maximum(0.0, ceiling - (base - np.minimum(delta, base)))
                axes.plot(
                    ranks,
                    memorized * length / math.log(2) / (per_rank * ranks),
                    "--",
                    color=colors[length],
                    linewidth=1.1,
                )
        axes.axhline(
            GPT_BITS_PER_PARAM,
            color="firebrick",
            linestyle=":",
            linewidth=1.2,
            label=f"{GPT_BITS_PER_PARAM} bits/param (GPT-style, from scratch)",
        )
        _log_axes(axes, [row["rank"] for row in group])
        axes.set_xlabel("LoRA rank r")
        axes.set_ylabel("memorized bits per trainable parameter")
        axes.set_title(f"capacity — {_group_label(layers, method)}", fontsize=10)
        _legend(axes, law=law is not None, capped=any(row["hit_cap"] for row in group))
    caption = (
        "Memorized information ℓ · max(0, min(L0, H) − L1) / ln 2 bits (H: the data's "
        "information baseline, not ΔL · ℓ) divided by the trainable LoRA parameters"
        + ("; dashed: the fitted law" if law is not None else "")
        + "; dotted: "
        f"about {GPT_BITS_PER_PARAM} bits per parameter published for GPT-style models trained from scratch."
        + _hidden_note(hidden, "no memorized information")
    )
    return figure, caption


def _probabilities(row: dict) -> tuple[Any, str]:
    """Histogram of the final teacher-forced probability of every target token of one point."""
    probabilities, figure, axes = _recorded(row, "probabilities")
    if not probabilities:
        return _empty(figure, axes, f"{row['key']} recorded no token probabilities")
    axes.axvspan(0.0, 0.5, color="#fdecea", zorder=0)
    axes.hist(probabilities, bins=np.linspace(0.0, 1.0, 41), color="#3b6ea8")
    axes.axvline(0.5, **BOUNDARY, label="p = 0.5: above it, greedy\ndecoding reproduces the token")
    axes.set_yscale("log")
    axes.set_xlim(0.0, 1.0)
    axes.set_xlabel("teacher-forced probability of the target token")
    axes.set_ylabel("tokens")
    below = sum(p <= 0.5 for p in probabilities)
    axes.set_title(f"{row['key']}: {below} of {len(probabilities)} tokens at p ≤ 0.5", fontsize=10)
    _outside_legend(axes)
    caption = (
        f"Point {row['key']} (rank {row['rank']}, ℓ = {row['length']}): {below} of "
        f"{len(probabilities)} target tokens are not certified (p ≤ 0.5, shaded); an item is "
        "reproduced verbatim for sure only when all its tokens are above the line."
    )
    return figure, caption


def _loss_curve(row: dict) -> tuple[Any, str]:
    """Mean target-token loss per training step of one point, with the ln 2 boundary."""
    losses, figure, axes = _recorded(row, "losses")
    if not losses:
        return _empty(figure, axes, f"{row['key']} recorded no losses")
    axes.plot(
        range(1, len(losses) + 1), losses, color="#3b6ea8", linewidth=1.5, label="training loss"
    )
    axes.axhline(math.log(2), **BOUNDARY, label="ln 2 (p = 0.5 on average)")
    if row["final_loss"] is not None:
        axes.axhline(
            row["final_loss"],
            color="grey",
            linestyle=":",
            linewidth=1,
            label=f"final loss L1 = {row['final_loss']:.3f}",
        )
    axes.set_yscale("log")
    _plain_log_labels(axes.yaxis)
    axes.set_xlabel("step")
    axes.set_ylabel("mean target-token loss (nats)")
    how = "hit the step cap" if row["hit_cap"] else f"stopped: {row['stop_reason']}"
    axes.set_title(f"{row['key']}: {len(losses)} steps, {how}", fontsize=10)
    axes.grid(True, alpha=0.3)
    _outside_legend(axes)
    caption = (
        f"Training loss of {row['key']} per step; L0 = {fixed(row['base_loss'], 3)}, "
        f"L1 = {fixed(row['final_loss'], 3)} nats per token, {how}."
    )
    return figure, caption


def _recorded(row: dict, name: str) -> tuple[list[float], Any, Any]:
    """What one point's record holds under ``name`` (empty if nothing), and a figure for it."""
    figure, (axes,) = _panels(1, width=8.4, height=3.8)
    return (row["record"] or {}).get(name) or [], figure, axes


def _empty(figure: Any, axes: Any, message: str) -> tuple[Any, str]:
    """A figure that says what is missing rather than an empty frame."""
    figure.set_size_inches(figure.get_size_inches()[0], 1.2)  # a message, not a plot
    axes.set_axis_off()
    axes.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="grey")
    return figure, f"{message}."


def fixed(value: float | None, decimals: int) -> str:
    """``value`` with ``decimals`` decimals (losses compare by their decimals), or a dash.

    >>> fixed(10.81234, 3), fixed(None, 3)
    ('10.812', '—')
    """
    return "—" if value is None else f"{value:.{decimals}f}"


def plot_plan(result: Any, law: MemoryLaw, path: str | Path) -> Path:
    """The plan as a PNG: predicted ΔL and memorized bits against N_eff at the plan's ℓ, with
    the ceilings (ΔL ≤ L0, memory ≤ ℓ · min(L0, H)) and the certifying rank with its interval.
    No prediction is drawn above its ceiling."""
    memory, layers = result.memory, result.layers
    n_grid = np.array([row["n_eff"] for row in result.rows], dtype=float)
    smooth = np.geomspace(n_grid.min(), n_grid.max(), 200)
    delta = np.asarray(
        law.predict(
            law.capacity_of(smooth / layers, layers),
            memory.length,
            base_loss=memory.base_loss,
            info_baseline=memory.info_baseline,
        ),
        dtype=float,
    )
    figure, (left, right) = _panels(2, width=5.5, height=4.4)
    if memory.base_loss is not None:
        delta = np.minimum(delta, memory.base_loss)
        left.axhline(
            memory.base_loss, color="grey", linestyle=":", label=f"L0 = {memory.base_loss:.3g}"
        )
    left.plot(smooth, delta, color="C0", linewidth=2, label=f"law, ℓ = {memory.length:g}")
    left.set_ylabel("predicted ΔL = L0 − L1 (nats per token)")
    if memory.base_loss is not None:
        ceiling = memory.ceiling
        bits = memory.length * np.maximum(0.0, ceiling - (memory.base_loss - delta)) / math.log(2)
        right.plot(smooth, bits, color="C2", linewidth=2, label="predicted memorized bits")
        most = memory.length * ceiling / math.log(2)
        right.axhline(most, color="grey", linestyle=":", label=f"ℓ · min(L0, H) = {most:.0f} bits")
    else:
        right.text(
            0.5,
            0.5,
            "memorized bits need L0: plan with --data",
            ha="center",
            transform=right.transAxes,
            color="grey",
        )
    right.set_ylabel("memorized information (bits)")
    for axes in (left, right):
        if result.certifying_rank is not None:
            axes.axvline(
                result.certifying_rank * layers,
                color="C3",
                linestyle="--",
                label=f"certifies: rank {result.certifying_rank}",
            )
            if result.certifying_rank_range is not None:
                low, high = result.certifying_rank_range
                axes.axvspan(
                    low * layers,
                    high * layers,
                    color="C3",
                    alpha=0.1,
                    label=f"95% interval: rank {low}–{high}",
                )
        axes.set_xscale("log")
        axes.set_xlabel(f"N_eff = rank × {layers} adapted layer(s)")
        axes.grid(True, which="both", alpha=0.25)
        if axes.get_legend_handles_labels()[0]:  # an empty legend is a warning in the CLI
            axes.legend(fontsize=8)
    figure.suptitle(f"rank plan for ℓ = {memory.length:g} target tokens", fontsize=11)
    return save_png(figure, path)
