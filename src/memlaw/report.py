"""Figures and reports: loss curves and token-probability histograms of training runs (PNG),
and the self-contained HTML report of a sweep (:func:`write_sweep_report`)."""

from __future__ import annotations

import base64
import html
import io
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memlaw.atomic import atomic_write_dir, atomic_write_text
from memlaw.errors import MemlawError
from memlaw.law import LawPoint, MemoryLaw, capacity, compare_forms, holdout_check
from memlaw.sweep import SweepSpec, SweepStore, fingerprint


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


# --- the sweep report ------------------------------------------------------------------------
#
# One HTML file a reader can mail around or open offline: figures inline as base64 PNG, CSS
# inline, no scripts and no links out. Every figure is also saved as a PNG in a folder beside
# the report, for slides and papers.

# Published capacity of GPT-style models trained from scratch (bits per parameter): the
# reference line of the capacity figure.
GPT_BITS_PER_PARAM = 3.6
# Bootstrap refits when the report fits the law itself (a fraction of a second for 35 points).
REPORT_BOOTSTRAP = 200
# matplotlib's PNG resolution; 110 dpi keeps a report of eight figures under 1 MB.
FIGURE_DPI = 110


@dataclass
class _Fit:
    """The fitted law and its checks as the report shows them; what could not be computed
    leaves a line in ``notes`` instead of stopping the report."""

    law: MemoryLaw | None
    forms: list[dict] | None = None
    holdout: dict | None = None
    boundary: Any = None
    excluded_capped: int | None = None
    r2_converged: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class _Figure:
    """One rendered figure: its file name, heading, caption and PNG bytes."""

    name: str
    title: str
    caption: str
    png: bytes


def write_sweep_report(
    db_path: str | Path,
    out_path: str | Path,
    *,
    law: MemoryLaw | None = None,
    extras: Mapping[str, Any] | None = None,
    point: str | None = None,
) -> Path:
    """Write the HTML report of a sweep database and return its path.

    ``law`` is a fitted :class:`~memlaw.law.MemoryLaw` (default: ``extras["law"]``, else the
    full form fitted here on the points that did not hit the step cap). ``extras`` may carry
    ``forms`` (:func:`~memlaw.law.compare_forms`), ``holdout``
    (:func:`~memlaw.law.holdout_check`), ``boundary`` and ``excluded_capped``; the first two
    are computed here when absent. ``point`` is the key of the point whose token
    probabilities and loss curve are shown (default: the largest ℓ at the smallest rank).
    The figures also land as PNG files in ``<out stem>_figures/`` beside the report; both
    are replaced atomically.

    Example (after ``memlaw sweep --db sweep.db``)::

        write_sweep_report("sweep.db", "sweep.html", point="r1-l512-n1-sft-s0")
    """
    out_path = Path(out_path)
    if out_path.is_dir():
        raise MemlawError(
            f"report path '{out_path}' is a folder; give a file name like report.html"
        )
    if extras is not None and not isinstance(extras, Mapping):
        raise MemlawError(
            f"extras must be a dict (e.g. plan.fit_sweep's result), got {type(extras).__name__}"
        )
    spec, rows = _read_sweep(db_path)
    shown = _choose_point(rows, point)  # a bad key fails before anything is fitted or drawn
    fit = _fit_for_report(rows, spec, law, dict(extras or {}))
    figures = _render_figures(rows, fit, shown)
    page = _page(db_path, spec, rows, fit, figures)

    # Figures first: once the HTML is in place, its folder of PNGs is complete too.
    folder = out_path.with_name(f"{out_path.stem}_figures")
    atomic_write_dir(folder, lambda staging: _save_pngs(staging, figures), overwrite=True)
    atomic_write_text(out_path, page)
    return out_path


# --- reading and fitting ---------------------------------------------------------------------


def _read_sweep(db_path: str | Path) -> tuple[SweepSpec, list[dict]]:
    """The sweep's spec and its finished rows (records included)."""
    store = SweepStore(db_path)  # MemlawError for a missing or corrupt file
    try:
        spec = store.spec()
        rows = store.rows(with_record=True)
    finally:
        store.close()
    if not rows:
        raise MemlawError(
            f"sweep database '{db_path}' has no finished points yet; run the sweep first"
        )
    return spec, rows


def _choose_point(rows: list[dict], key: str | None) -> dict:
    """The row named ``key``, or by default the largest ℓ at the smallest rank (the point
    closest to failing, so its probabilities show stubborn tokens best).

    >>> rows = [{"key": "a", "rank": 1, "length": 8}, {"key": "b", "rank": 1, "length": 64},
    ...         {"key": "c", "rank": 2, "length": 512}]
    >>> _choose_point(rows, None)["key"], _choose_point(rows, "c")["key"]
    ('b', 'c')
    """
    if key is None:
        smallest = min(row["rank"] for row in rows)
        return max((row for row in rows if row["rank"] == smallest), key=lambda row: row["length"])
    for row in rows:
        if row["key"] == key:
            return row
    known = ", ".join(row["key"] for row in rows[:4]) + (", …" if len(rows) > 4 else "")
    raise MemlawError(f"no point '{key}' in the sweep; its {len(rows)} points are {known}")


def _law_points(rows: list[dict]) -> list[LawPoint]:
    return [LawPoint.from_dict(row) for row in rows]


def _fit_for_report(rows: list[dict], spec: SweepSpec, law: Any, extras: dict) -> _Fit:
    """The law and its checks: taken from the caller where given, computed here otherwise.

    Only points that plateaued are fitted: a point stopped at the step cap measures how far
    the optimizer got, not the capacity.
    """
    law = law if law is not None else extras.get("law")
    if law is not None and not (isinstance(law, MemoryLaw) and hasattr(law, "alpha_")):
        raise MemlawError(
            "law must be a fitted MemoryLaw (MemoryLaw(...).fit(points) or MemoryLaw.load(path))"
        )
    fit = _Fit(
        law=law,
        forms=extras.get("forms"),
        holdout=extras.get("holdout"),
        boundary=extras.get("boundary"),
        excluded_capped=extras.get("excluded_capped"),
    )
    converged = _law_points(_rows_for_law(rows, law, fit.notes))
    if not converged:
        fit.notes.append(
            f"All {len(rows)} points hit the step cap, so none of them measures capacity: no "
            "law is fitted or checked here. Raise max_steps and rerun the sweep."
        )
        return fit
    if fit.law is None:
        metadata = {"model": spec.model, "data": spec.data, "modules": spec.modules}
        fit.law = _attempt(
            "fitting the law",
            fit.notes,
            lambda: MemoryLaw("full", n_bootstrap=REPORT_BOOTSTRAP, seed=0).fit(
                converged, metadata=metadata
            ),
        )
        fit.excluded_capped = len(rows) - len(converged)
    if fit.forms is None:
        fit.forms = _attempt("comparing the forms", fit.notes, lambda: compare_forms(converged))
    if fit.holdout is None:
        form = fit.law.form if fit.law is not None else "full"
        fit.holdout = _attempt(
            "the hold-out check", fit.notes, lambda: holdout_check(converged, form=form)
        )
    if fit.law is not None:
        fit.r2_converged = _attempt("scoring the law", fit.notes, lambda: fit.law.score(converged))
    return fit


def _rows_for_law(rows: list[dict], law: Any, notes: list[str]) -> list[dict]:
    """The rows the law was (or will be) fitted on, so its checks and R² use the same points:
    plateaued ones by default; a given law's own choice (capped points kept, points memorized
    outright left out) where its metadata records one."""
    metadata = getattr(law, "metadata_", None) or {}
    include_capped = bool(metadata.get("include_capped"))
    saturation = metadata.get("saturation_loss")
    chosen = [
        row
        for row in rows
        if (include_capped or not row["hit_cap"])
        and (saturation is None or row["final_loss"] >= saturation)
    ]
    if include_capped or saturation is not None:
        notes.append(
            f"The law was fitted on {len(chosen)} of {len(rows)} points"
            + ("; points that hit the step cap were kept" if include_capped else "")
            + (
                f"; points memorized outright (final loss < {saturation}) were left out: their "
                "ΔL ≈ L0 is bounded by the data, not by the adapter"
                if saturation is not None
                else ""
            )
            + ". Its checks below use the same points."
        )
    return chosen


def _attempt(what: str, notes: list[str], compute: Callable[[], Any]) -> Any:
    """Run ``compute``; a MemlawError or warning becomes a note of the report (a sweep half
    done still deserves a report), and a failure returns None."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = compute()
        except MemlawError as error:
            notes.append(f"{what}: {error}")
            result = None
    notes.extend(f"{what}: {warning.message}" for warning in caught)
    return result


def _capacity_variable(law: MemoryLaw, rank: Any, layers: int) -> Any:
    """What the law takes as capacity: the rank for form ``"rank"``, N_eff = r · n otherwise."""
    return rank if law.form == "rank" else np.asarray(rank) * layers


def _predicted(law: MemoryLaw | None, row: dict) -> float | None:
    if law is None:
        return None
    return float(law.predict(_capacity_variable(law, row["rank"], row["layers"]), row["length"]))


def _bits_per_param(row: dict) -> float | None:
    return capacity(LawPoint.from_dict(row))["bits_per_param"]


# --- figures ---------------------------------------------------------------------------------


def _render_figures(rows: list[dict], fit: _Fit, shown: dict) -> list[_Figure]:
    law = fit.law
    figures = [
        _figure("delta_vs_rank", "ΔL vs rank", *_delta_vs(rows, law, "rank", "length")),
        _figure("delta_vs_length", "ΔL vs length ℓ", *_delta_vs(rows, law, "length", "rank")),
    ]
    if law is not None:
        figures.append(
            _figure(
                "predicted_vs_measured",
                "Predicted vs measured ΔL",
                *_predicted_vs_measured(rows, fit),
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
        _figure("capacity", "Capacity: bits per trainable parameter", *_capacity_figure(rows, law)),
        _figure(
            "token_probabilities", f"Token probabilities of {shown['key']}", *_probabilities(shown)
        ),
        _figure("loss_curve", f"Loss curve of {shown['key']}", *_loss_curve(shown)),
    ]
    for number, figure in enumerate(figures, start=1):
        figure.name = (
            f"{number:02d}_{figure.name}.png"  # numbered: the folder sorts like the report
        )
    return figures


def _figure(name: str, title: str, figure: Any, caption: str) -> _Figure:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return _Figure(name=name, title=title, caption=caption, png=buffer.getvalue())


def _save_pngs(folder: Path, figures: list[_Figure]) -> None:
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
            axes.scatter(
                *zip(*part, strict=True),
                s=30,
                facecolors="none" if capped else [color],
                edgecolors=[color],
                linewidths=1.3,
                zorder=3,
            )
    return len(rows) - len(points)


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
        handles.append(
            Line2D(
                [],
                [],
                linestyle="",
                marker="o",
                markerfacecolor="none",
                markeredgecolor="grey",
                label="hit the step cap",
            )
        )
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
    """Log-log axes with the measured x values as ticks and plain-number labels (8 and 0.3,
    not 10^0.9 and 3×10^−1): grids are powers of two more often than of ten."""
    from matplotlib.ticker import NullLocator

    axes.set_xscale("log")
    axes.set_yscale("log")
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
                curve = law.predict(_capacity_variable(law, rank, layers), length)
                axes.plot(xs, curve, "--", color=colors[value], linewidth=1.1)
        _log_axes(axes, [row[x_name] for row in group])
        axes.set_xlabel("LoRA rank r" if x_name == "rank" else "target tokens ℓ")
        axes.set_ylabel("ΔL = L0 − L1 (nats per target token)")
        axes.set_title(
            f"ΔL vs {'rank' if x_name == 'rank' else 'ℓ'} — {_group_label(layers, method)}",
            fontsize=10,
        )
        axes.grid(True, which="major", alpha=0.3)
        _legend(axes, law=law is not None, capped=any(row["hit_cap"] for row in group))
    caption = (
        f"Measured loss reduction per {'rank, one line per length ℓ' if x_name == 'rank' else 'length ℓ, one line per rank'} "
        "(the line joins the points that plateaued, mean over seeds)"
        + ("; dashed: the fitted law." if law is not None else ".")
        + _hidden_note(hidden)
    )
    return figure, caption


def _predicted_vs_measured(rows: list[dict], fit: _Fit) -> tuple[Any, str]:
    """Every point at (measured ΔL, predicted ΔL), with the y = x line."""
    figure, (axes,) = _panels(1, width=7.0, height=5.2)
    lengths = sorted({row["length"] for row in rows})
    colors = _colors(lengths)
    shown = [row for row in rows if row["delta_loss"] > 0]
    for length in lengths:
        for capped in (False, True):
            part = [row for row in shown if row["length"] == length and row["hit_cap"] == capped]
            if part:
                axes.scatter(
                    [row["delta_loss"] for row in part],
                    [_predicted(fit.law, row) for row in part],
                    s=30,
                    facecolors="none" if capped else [colors[length]],
                    edgecolors=[colors[length]],
                    linewidths=1.3,
                    label=None if capped else f"ℓ = {length}",
                    zorder=3,
                )
    ends = [row["delta_loss"] for row in shown] + [_predicted(fit.law, row) for row in shown]
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
    r2 = "n/a" if fit.r2_converged is None else f"{fit.r2_converged:.4f}"
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
    """Bits stored per trainable parameter, ΔL · ℓ / ln 2 / params, against rank per ℓ."""
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
                axes, series, "rank", _bits_per_param, colors[length], f"ℓ = {length}"
            )
            if law is not None:
                ranks = _grid([row["rank"] for row in series])
                delta = law.predict(_capacity_variable(law, ranks, layers), length)
                axes.plot(
                    ranks,
                    delta * length / math.log(2) / (per_rank * ranks),
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
        axes.set_ylabel("bits per trainable parameter")
        axes.set_title(f"capacity — {_group_label(layers, method)}", fontsize=10)
        axes.grid(True, which="major", alpha=0.3)
        _legend(axes, law=law is not None, capped=any(row["hit_cap"] for row in group))
    caption = (
        "Stored information ΔL · ℓ / ln 2 bits divided by the trainable LoRA parameters"
        + ("; dashed: the fitted law" if law is not None else "")
        + "; dotted: "
        f"about {GPT_BITS_PER_PARAM} bits per parameter published for GPT-style models trained from scratch."
        + _hidden_note(hidden)
    )
    return figure, caption


def _probabilities(row: dict) -> tuple[Any, str]:
    """Histogram of the final teacher-forced probability of every target token of one point."""
    probabilities = (row["record"] or {}).get("probabilities") or []
    figure, (axes,) = _panels(1, width=8.4, height=3.8)
    if not probabilities:
        return _empty(figure, axes, f"{row['key']} recorded no token probabilities")
    axes.axvspan(0.0, 0.5, color="#fdecea", zorder=0)
    axes.hist(probabilities, bins=np.linspace(0.0, 1.0, 41), color="#3b6ea8")
    axes.axvline(
        0.5,
        color="firebrick",
        linestyle="--",
        linewidth=1.2,
        label="p = 0.5: above it, greedy\ndecoding reproduces the token",
    )
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
    losses = (row["record"] or {}).get("losses") or []
    figure, (axes,) = _panels(1, width=8.4, height=3.8)
    if not losses:
        return _empty(figure, axes, f"{row['key']} recorded no losses")
    axes.plot(
        range(1, len(losses) + 1), losses, color="#3b6ea8", linewidth=1.5, label="training loss"
    )
    axes.axhline(
        math.log(2),
        color="firebrick",
        linestyle="--",
        linewidth=1.2,
        label="ln 2 (p = 0.5 on average)",
    )
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
        f"Training loss of {row['key']} per step; L0 = {_fixed(row['base_loss'], 3)}, "
        f"L1 = {_fixed(row['final_loss'], 3)} nats per token, {how}."
    )
    return figure, caption


def _empty(figure: Any, axes: Any, message: str) -> tuple[Any, str]:
    """A figure that says what is missing rather than an empty frame."""
    figure.set_size_inches(figure.get_size_inches()[0], 1.2)  # a message, not a plot
    axes.set_axis_off()
    axes.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="grey")
    return figure, f"{message}."


# --- the HTML page ---------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       color: #1d2430; max-width: 1180px; margin: 2rem auto; padding: 0 1.5rem; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #d7dce3; padding-bottom: 0.2rem; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; }
.subtitle { color: #5a6474; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.86rem; margin: 0.6rem 0; }
th, td { border: 1px solid #d7dce3; padding: 0.25rem 0.55rem; text-align: right; }
th { background: #eef1f5; }
td.text, th.text { text-align: left; }
table.facts td { text-align: left; }
table.facts th { text-align: left; width: 15rem; }
.points table { font-size: 0.8rem; }
.points td { white-space: nowrap; padding: 0.2rem 0.45rem; }
tr.capped td { background: #fff4e0; }
tr.preferred td { font-weight: 600; }
.scroll { overflow-x: auto; }
.warning { background: #fff4e0; border: 1px solid #f0b45a; border-left: 6px solid #e8930c;
           padding: 0.7rem 1rem; border-radius: 4px; margin: 1rem 0; }
.note { background: #eef3fb; border-left: 6px solid #6d8fc7; padding: 0.5rem 1rem; margin: 0.8rem 0; }
.formula { font-size: 1.1rem; margin: 0.6rem 0; }
figure { margin: 1.4rem 0; }
figure img { max-width: 100%; border: 1px solid #e3e7ec; }
figcaption { color: #4a5363; font-size: 0.88rem; margin-top: 0.3rem; }
code { font-size: 0.85rem; }
"""


def _page(
    db_path: str | Path,
    spec: SweepSpec,
    rows: list[dict],
    fit: _Fit,
    figures: list[_Figure],
) -> str:
    title = f"memlaw sweep report — {spec.model} on {spec.data}"
    body = [
        f"<h1>{_esc(title)}</h1>",
        f'<p class="subtitle">Parametric Memory Law: ΔL(N<sub>eff</sub>, ℓ) = C · N<sub>eff</sub><sup>α</sup> · ℓ<sup>−β</sup> + b · '
        f"generated {_esc(time.strftime('%Y-%m-%d %H:%M'))} from <code>{_esc(db_path)}</code></p>",
        _header_section(spec, rows),
        _capped_warning(rows, fit),
        _law_section(fit),
        "<h2>Figures</h2>",
        *(_figure_html(figure) for figure in figures),
        _points_section(rows, fit.law),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body>\n</html>\n"
    )


def _header_section(spec: SweepSpec, rows: list[dict]) -> str:
    finished = {row["key"] for row in rows}
    left = sum(point.key not in finished for point in spec.points())
    points = f"{len(rows)} finished" + (f" ({left} of the grid still to run)" if left else "")
    wall = sum(row["wall_seconds"] or 0.0 for row in rows)
    facts = [
        ("model", spec.model),
        ("data", spec.data),
        ("modules", spec.modules),
        ("method(s)", ", ".join(sorted({row["method"] for row in rows}))),
        ("grid", _grid_text(rows)),
        ("points", points),
        (
            "training",
            f"AdamW lr {spec.lr:g}, at most {spec.max_steps} steps, plateau window {spec.plateau_window} "
            f"(relative tolerance {spec.plateau_tolerance:g})",
        ),
        ("total wall time", f"{_duration(wall)} (summed over points; parallel workers overlap)"),
        ("sweep fingerprint", fingerprint(spec)),
    ]
    return "<h2>Sweep</h2>\n" + _facts_table(facts)


def _grid_text(rows: list[dict]) -> str:
    """The measured grid, e.g. ``ranks 1, 2, 4 × ℓ 64, 128 × layers 1 × seeds 0``."""
    parts = [
        (label, sorted({row[name] for row in rows}))
        for label, name in (
            ("ranks", "rank"),
            ("ℓ", "length"),
            ("layers", "layers"),
            ("seeds", "seed"),
        )
    ]
    return " × ".join(f"{label} {', '.join(str(v) for v in values)}" for label, values in parts)


def _capped_warning(rows: list[dict], fit: _Fit) -> str:
    capped = [row["key"] for row in rows if row["hit_cap"]]
    if not capped:
        return ""
    excluded = " They are left out of the fit." if fit.excluded_capped else ""
    return (
        f'<div class="warning"><strong>{len(capped)} of {len(rows)} points hit the step cap</strong> '
        "before their loss plateaued, so their ΔL measures how fast the optimizer got there, "
        f"not the capacity of the adapter.{excluded} They are drawn hollow in the figures and "
        "tinted in the table: "
        + ", ".join(f"<code>{_esc(key)}</code>" for key in capped)
        + ". Raise the step cap (or the learning rate) and rerun them for capacity numbers.</div>"
    )


def _law_section(fit: _Fit) -> str:
    parts = ["<h2>The fitted law</h2>"]
    parts += [f'<div class="note">{_esc(note)}</div>' for note in fit.notes]
    if fit.law is not None:
        parts.append(_law_summary(fit))
    if fit.forms:
        parts.append(
            "<h3>Form comparison (AIC on log ΔL; lowest preferred)</h3>" + _forms_table(fit.forms)
        )
    if fit.holdout:
        parts.append("<h3>Hold-out check</h3>" + _holdout_html(fit.holdout))
    if fit.boundary is not None:
        parts.append("<h3>Recall boundary</h3>" + _generic_html(fit.boundary))
    return "\n".join(parts)


def _law_summary(fit: _Fit) -> str:
    law = fit.law
    capacity_name = "r" if law.form == "rank" else "N<sub>eff</sub>"
    formula = (
        f'<p class="formula">ΔL = {law.C_:.4g} · {capacity_name}<sup>{law.alpha_:.4f}</sup> · '
        f"ℓ<sup>−{law.beta_:.4f}</sup> + {law.b_:.4g} &nbsp; <small>(form “{_esc(law.form)}”)</small></p>"
    )
    confidence = f"{100 * law.confidence:g}% interval"
    intervals = getattr(law, "intervals_", {}) or {}
    rows = [
        [symbol, _number(getattr(law, f"{name}_"), 4), _interval(intervals.get(name))]
        for name, symbol in (("C", "C"), ("alpha", "α"), ("beta", "β"), ("b", "b"))
    ]
    table = _table(["parameter", "value", confidence], rows, text_columns=1)
    r2 = getattr(law, "r2_", None)
    stats = [
        ("R² (ΔL) of the fit", _number(r2, 4)),
        ("R² (log ΔL) of the fit", _number(getattr(law, "r2_log_", None), 4)),
        ("points fitted", _text(getattr(law, "n_points_", None))),
    ]
    if fit.r2_converged is not None and (r2 is None or abs(r2 - fit.r2_converged) > 1e-9):
        # A law fitted elsewhere (other points, capped ones included): its score on this sweep.
        stats.insert(
            2, ("R² on this sweep's points it was fitted on", _number(fit.r2_converged, 4))
        )
    if getattr(law, "dropped_", 0):
        stats.append(("left out for ΔL ≤ 0", str(law.dropped_)))
    if fit.excluded_capped is not None:
        stats.append(("left out at the step cap", str(fit.excluded_capped)))
    if not intervals:
        stats.append(("intervals", "none (fitted without bootstrap)"))
    return formula + table + _facts_table(stats)


def _forms_table(forms: list[dict]) -> str:
    header = ["form", "parameters", "points", "R²", "R² (log)", "AIC", "ΔAIC"]
    rows, classes = [], []
    for form in forms:
        rows.append(
            [
                f"{form['form']}{' (preferred)' if form.get('preferred') else ''}",
                _text(form.get("n_params")),
                _text(form.get("n_points")),
                _number(form.get("r2"), 4),
                _number(form.get("r2_log"), 4),
                _fixed(form.get("aic"), 1),
                _fixed(form.get("delta_aic"), 1),
            ]
        )
        classes.append("preferred" if form.get("preferred") else "")
    return _table(header, rows, text_columns=1, row_classes=classes)


def _holdout_html(holdout: dict) -> str:
    summary = (
        f"<p>Fitted on the {_text(holdout.get('n_fit'))} points below the largest capacity and "
        f"length (form “{_esc(holdout.get('form', 'full'))}”), then predicted the "
        f"{_text(holdout.get('n_held_out'))} held-out points at the edge of the grid: mean relative "
        f"error {_percent(holdout.get('mean_relative_error'))}, largest "
        f"{_percent(holdout.get('max_relative_error'))}.</p>"
    )
    records = holdout.get("held_out") or []
    rows = [
        [
            _text(r.get("rank")),
            _text(r.get("length")),
            _text(r.get("n_eff")),
            _number(r.get("delta_loss"), 4),
            _number(r.get("predicted"), 4),
            _percent(r.get("relative_error")),
        ]
        for r in records
    ]
    header = ["rank", "ℓ", "N_eff", "measured ΔL", "predicted ΔL", "relative error"]
    return summary + (_table(header, rows) if rows else "")


def _generic_html(value: Any) -> str:
    """A table for a list of flat records or a mapping, a plain paragraph otherwise (for
    extras whose shape the report does not know)."""
    if isinstance(value, Mapping):
        return _facts_table([(str(k), _text(v)) for k, v in value.items()])
    if isinstance(value, list) and value and all(isinstance(r, Mapping) for r in value):
        header = list(dict.fromkeys(k for r in value for k in r))
        return _table(header, [[_text(r.get(k)) for k in header] for r in value])
    return f"<p>{_esc(_text(value))}</p>"


def _figure_html(figure: _Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    return (
        f"<figure>\n<h3>{_esc(figure.title)}</h3>\n"
        f'<img src="data:image/png;base64,{data}" alt="{_esc(figure.title)}">\n'
        f"<figcaption>{_esc(figure.caption)} <code>{_esc(figure.name)}</code></figcaption>\n</figure>"
    )


def _points_section(rows: list[dict], law: MemoryLaw | None) -> str:
    columns = _point_columns(rows, law)
    table_rows = [[value(row) for _, value in columns] for row in rows]
    classes = ["capped" if row["hit_cap"] else "" for row in rows]
    table = _table([name for name, _ in columns], table_rows, text_columns=1, row_classes=classes)
    return (
        f"<h2>All points ({len(rows)})</h2>\n<p>Losses in nats per target token; tinted rows hit "
        "the step cap.</p>\n"
        f'<div class="scroll points">{table}</div>'
    )


def _point_columns(rows: list[dict], law: MemoryLaw | None) -> list[tuple[str, Callable]]:
    """The columns of the table of points; layers, method, seed and N_eff only where they
    vary (the key and the header already say the rest), so the table fits a screen."""

    def varies(value: Callable) -> bool:
        return len({value(row) for row in rows}) > 1

    optional = [
        ("layers", lambda row: row["layers"]),
        ("method", lambda row: row["method"]),
        ("seed", lambda row: row["seed"]),
        ("N_eff", lambda row: row["n_eff"]),
    ]
    if all(row["n_eff"] == row["rank"] for row in rows):
        optional.pop()  # one adapted layer: N_eff is the rank
    return [
        ("key", lambda row: row["key"]),
        ("rank", lambda row: row["rank"]),
        ("ℓ", lambda row: row["length"]),
        *[(name, value) for name, value in optional if varies(value)],
        ("params", lambda row: f"{row['trainable_params']:,}"),
        ("L0", lambda row: _fixed(row["base_loss"], 3)),
        ("L1", lambda row: _fixed(row["final_loss"], 3)),
        ("ΔL", lambda row: _fixed(row["delta_loss"], 4)),
        ("predicted ΔL", lambda row: _fixed(_predicted(law, row), 4)),
        ("exact match", lambda row: _percent(row["exact_match"])),
        ("certified", lambda row: _percent(row["certified_share"])),
        ("bits/param", lambda row: _number(_bits_per_param(row), 3)),
        ("steps", lambda row: row["steps"]),
        ("stop", lambda row: "step cap" if row["hit_cap"] else row["stop_reason"]),
        ("wall", lambda row: _duration(row["wall_seconds"] or 0.0)),
    ]


# --- small formatting helpers ----------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _table(
    header: list[str],
    rows: list[list[Any]],
    *,
    text_columns: int = 0,
    row_classes: list[str] | None = None,
) -> str:
    """An HTML table; the first ``text_columns`` columns are left-aligned text."""

    def cell(tag: str, index: int, value: Any) -> str:
        kind = ' class="text"' if index < text_columns else ""
        return f"<{tag}{kind}>{_esc(value)}</{tag}>"

    lines = ["<table>", "<tr>" + "".join(cell("th", i, h) for i, h in enumerate(header)) + "</tr>"]
    for n, row in enumerate(rows):
        css = row_classes[n] if row_classes and row_classes[n] else ""
        opening = f'<tr class="{css}">' if css else "<tr>"
        lines.append(opening + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _facts_table(facts: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in facts)
    return f'<table class="facts">{rows}</table>'


def _number(value: float | None, digits: int) -> str:
    """``value`` to ``digits`` significant digits, or a dash when missing.

    >>> _number(0.123456, 3), _number(None, 3), _number(12345.678, 4)
    ('0.123', '—', '1.235e+04')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}g}"


def _fixed(value: float | None, decimals: int) -> str:
    """``value`` with ``decimals`` decimals (losses compare by their decimals), or a dash.

    >>> _fixed(10.81234, 3), _fixed(None, 3)
    ('10.812', '—')
    """
    return "—" if value is None else f"{value:.{decimals}f}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _interval(pair: tuple[float, float] | None) -> str:
    """A bootstrap interval; an end at the optimizer's bound (b ≥ 0 lands at 1e-23) reads 0.

    >>> _interval((3.1e-23, 0.39261)), _interval(None)
    ('[0, 0.3926]', '—')
    """
    if not pair:
        return "—"
    low, high = (0.0 if abs(v) < 1e-12 else v for v in pair)
    return f"[{low:.4g}, {high:.4g}]"


def _text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return _number(value, 4)
    return str(value)


def _duration(seconds: float) -> str:
    """A wall time for people.

    >>> _duration(42.4), _duration(192), _duration(3725)
    ('42 s', '3 min 12 s', '1 h 02 min')
    """
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
