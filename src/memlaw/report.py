"""The self-contained HTML report of a sweep (:func:`write_sweep_report`): the law it fits the
same way as ``memlaw fit`` (memlaw.fit), its checks, and every figure (memlaw.figures)."""

from __future__ import annotations

import base64
import html
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memlaw.atomic import atomic_write_dir, atomic_write_text
from memlaw.errors import MemlawError
from memlaw.figures import Figure, bits_per_param, fixed, predicted_delta, save_pngs, sweep_figures
from memlaw.fit import fit_store, law_points
from memlaw.law import MemoryLaw
from memlaw.recipe import describe_lr
from memlaw.sweep import SweepSpec, SweepStore, fingerprint, point_seconds

# --- the sweep report ------------------------------------------------------------------------
#
# One HTML file a reader can mail around or open offline: figures inline as base64 PNG, CSS
# inline, no scripts and no links out. Every figure is also saved as a PNG in a folder beside
# the report, for slides and papers; the law it shows is saved beside it as JSON.


@dataclass
class _Fit:
    """The law the report shows; what could not be computed leaves a line in ``notes``
    instead of stopping the report. Its checks live in the law's metadata (memlaw.fit)."""

    law: MemoryLaw | None
    excluded_capped: int | None = None
    r2_converged: float | None = None
    notes: list[str] = field(default_factory=list)

    def check(self, name: str) -> Any:
        return None if self.law is None else (self.law.metadata_ or {}).get(name)


def write_sweep_report(
    db_path: str | Path,
    out_path: str | Path,
    *,
    law: MemoryLaw | None = None,
    point: str | None = None,
) -> Path:
    """Write the HTML report of a sweep database and return its path.

    ``law`` is a fitted :class:`~memlaw.law.MemoryLaw` (default: the law
    :func:`memlaw.fit.fit_store` fits on this database, exactly as ``memlaw fit`` does).
    ``point`` is the key of the point whose token probabilities and loss curve are shown
    (default: the largest ℓ at the smallest rank). The figures land as PNG files in
    ``<out stem>_figures/`` and the law as ``<out stem>_law.json`` beside the report; all are
    replaced atomically.

    Example (after ``memlaw sweep --db sweep.db``)::

        write_sweep_report("sweep.db", "sweep.html", point="r1-l512-n1-sft-s0")
    """
    out_path = Path(out_path)
    if out_path.is_dir():
        raise MemlawError(
            f"report path '{out_path}' is a folder; give a file name like report.html"
        )
    if law is not None and not (isinstance(law, MemoryLaw) and hasattr(law, "alpha_")):
        raise MemlawError(
            "law must be a fitted MemoryLaw (MemoryLaw(...).fit(points) or MemoryLaw.load(path))"
        )
    spec, rows = _read_sweep(db_path)
    shown = _choose_point(rows, point)  # a bad key fails before anything is fitted or drawn
    fit = _fit_for_report(db_path, rows, law)
    figures = sweep_figures(rows, fit.law, shown, fit.r2_converged)
    page = _page(db_path, spec, rows, fit, figures)

    # Figures first: once the HTML is in place, its folder of PNGs is complete too.
    folder = out_path.with_name(f"{out_path.stem}_figures")
    atomic_write_dir(folder, lambda staging: save_pngs(staging, figures), overwrite=True)
    if fit.law is not None:
        fit.law.save(law_path_for(out_path))
    else:  # a law left by an earlier report is not the law of this one
        law_path_for(out_path).unlink(missing_ok=True)
    atomic_write_text(out_path, page)
    return out_path


def law_path_for(report_path: str | Path) -> Path:
    """Where the report saves the law it shows: ``<stem>_law.json`` beside it."""
    report_path = Path(report_path)
    return report_path.with_name(f"{report_path.stem}_law.json")


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


def _fit_for_report(db_path: str | Path, rows: list[dict], law: MemoryLaw | None) -> _Fit:
    """The given law, or the one memlaw fit would fit on this database (a sweep half done
    still deserves a report, so a failed fit becomes a note)."""
    fit = _Fit(law=law)
    if fit.law is None:
        fitted = _attempt(
            "fitting the law",
            fit.notes,
            lambda: fit_store(db_path, method=_only_method(rows)),
        )
        fit.law = None if fitted is None else fitted.law
    if fit.law is None:
        return fit
    meta = fit.law.metadata_ or {}
    fit.excluded_capped = meta.get("excluded_capped")
    chosen = [row for row in rows if meta.get("include_capped") or not row["hit_cap"]]
    if len(chosen) < len(rows):
        fit.notes.append(
            f"The law was fitted on {len(chosen)} of {len(rows)} points: those that hit the cap "
            "are left out. Its checks below use the same points."
        )
    if chosen:
        fit.r2_converged = _attempt(
            "scoring the law", fit.notes, lambda: fit.law.score(law_points(chosen))
        )
    return fit


def _only_method(rows: list[dict]) -> str | None:
    methods = sorted({row["method"] for row in rows})
    return methods[0] if len(methods) == 1 else None


def _attempt(what: str, notes: list[str], compute: Callable[[], Any]) -> Any:
    """Run ``compute``; a MemlawError or warning becomes a note of the report, and a failure
    returns None."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = compute()
        except MemlawError as error:
            notes.append(f"{what}: {error}")
            result = None
    notes.extend(f"{what}: {warning.message}" for warning in caught)
    return result


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
    figures: list[Figure],
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
    wall = sum(point_seconds(row) for row in rows)
    facts = [
        ("model", spec.model),
        ("data", spec.data),
        ("modules", spec.modules),
        ("method(s)", ", ".join(sorted({row["method"] for row in rows}))),
        ("grid", _grid_text(rows)),
        ("points", points),
        (
            "training",
            f"{describe_lr(spec.lr)}, at most {spec.max_steps} steps, plateau window {spec.plateau_window} "
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
    forms, holdouts, recall = fit.check("forms"), fit.check("holdouts"), fit.check("recall")
    if isinstance(forms, list) and forms:
        parts.append(
            "<h3>Form comparison (AIC on log ΔL; lowest preferred, and shipped)</h3>"
            + _forms_table(forms)
        )
    elif forms:
        parts.append("<h3>Form comparison</h3>" + _generic_html(forms))
    for form, holdout in (holdouts or {}).items():
        parts.append(f"<h3>Hold-out check, form “{_esc(form)}”</h3>" + _holdout_html(holdout))
    if recall is not None:
        parts.append("<h3>Recall law and boundary</h3>" + _recall_html(recall))
    validation = fit.check("validation")
    if validation:
        parts.append(
            f"<h3>Off-grid points ({_esc(validation['db'])}), never seen by the fit</h3>"
            + _validation_html(validation)
        )
    return "\n".join(parts)


def _validation_html(validation: dict) -> str:
    def said(value: Any) -> str:
        return "—" if value is None else ("yes" if value else "no")

    header = ["rank", "ℓ", "ΔL", "predicted ΔL", "error", "bits", "predicted bits"]
    header += ["certified", "law says certified"]
    rows = [
        [
            _text(p["rank"]),
            _text(p["length"]),
            _number(p["delta_loss"], 4),
            _number(p["predicted_delta"], 4),
            _percent(p["relative_error"]),
            _text(None if p.get("bits") is None else round(p["bits"])),
            _text(None if p.get("predicted_bits") is None else round(p["predicted_bits"])),
            said(p["certified"]),
            said(p.get("predicted_certified")),
        ]
        for p in validation["points"]
    ]
    median = _percent(validation["median_relative_error"])
    return f"<p>Median relative ΔL error {median}.</p>" + _table(header, rows)


def _recall_html(recall: dict) -> str:
    if "error" in recall:
        return f"<p>{_esc(recall['error'])}</p>" + _measured_html(recall)
    b, intervals = recall["boundary"], recall.get("intervals", {})
    text = (
        f"<p>{_esc(recall['rule'])}: a = {b['a']:.3f}, b = {b['b']:.3f}, c = {b['c']:.3f}; "
        f"half of the items at N<sub>½</sub>(ℓ) = {b['A']:.4g} · ℓ<sup>{b['k']:.3f}</sup>, a "
        f"whole set of n items {_per_item_text(recall)}from that times "
        f"(2n − 1)<sup>1/{b['b']:.3f}</sup> "
        f"(A {_interval(intervals.get('A'))}, k {_interval(intervals.get('k'))}; "
        f"{recall.get('bootstrap_ok', 0)} bootstrap refits). Mean |error| of the certified "
        f"share: {_percent(recall.get('mean_abs_error'))}.</p>"
    )
    return text + _measured_html(recall)


def _per_item_text(recall: dict) -> str:
    per_item = recall.get("tokens_per_item")
    return f"(the grid's: one per {per_item:g} tokens) " if per_item else ""


def _measured_html(recall: dict) -> str:
    rows = [
        [
            _text(m["length"]),
            _text(m["n_eff"]),
            _text(m["max_n_eff"]),
            _percent(m["best_certified_share"]),
        ]
        for m in recall.get("measured", [])
    ]
    if not rows:
        return ""
    header = ["ℓ", "smallest N_eff that certified", "largest N_eff run", "best certified share"]
    return _table(header, rows)


def _law_summary(fit: _Fit) -> str:
    law = fit.law
    capacity_name = "r" if law.form == "rank" else "N<sub>eff</sub>"
    power = (
        f"{law.C_:.4g} · {capacity_name}<sup>{law.alpha_:.4f}</sup> · ℓ<sup>−{law.beta_:.4f}</sup>"
    )
    if law.form == "saturating":
        power = f"(L0 − H⁺) + H⁺ · (1 − exp(−{power})), H⁺ = min(L0, H)"
    else:
        power += f" + {law.b_:.4g}"
    formula = (
        f'<p class="formula">ΔL = {power} &nbsp; <small>(form “{_esc(law.form)}”)</small></p>'
        f"<p>{_esc(law.describe())}</p>"
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
        stats.append(("left out at the cap", str(fit.excluded_capped)))
    if not intervals:
        stats.append(("intervals", "none (fitted without bootstrap)"))
    elif law.n_bootstrap_ok_ is not None and not law.intervals_trusted_:  # None: not recorded
        refits = f"{law.n_bootstrap_ok_} of {law.n_bootstrap} bootstrap refits succeeded"
        stats.append(("intervals", f"not to be trusted: only {refits}"))
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
                fixed(form.get("aic"), 1),
                fixed(form.get("delta_aic"), 1),
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
    """A mapping as a table, anything else as a paragraph (a check that did not run says why
    in a shape the report does not know)."""
    if isinstance(value, Mapping):
        return _facts_table([(str(k), _text(v)) for k, v in value.items()])
    return f"<p>{_esc(_text(value))}</p>"


def _figure_html(figure: Figure) -> str:
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
        ("L0", lambda row: fixed(row["base_loss"], 3)),
        ("L1", lambda row: fixed(row["final_loss"], 3)),
        ("ΔL", lambda row: fixed(row["delta_loss"], 4)),
        ("predicted ΔL", lambda row: fixed(predicted_delta(law, row), 4)),
        ("exact match", lambda row: _percent(row["exact_match"])),
        ("certified", lambda row: _percent(row["certified_share"])),
        ("bits/param", lambda row: _number(bits_per_param(row), 3)),
        ("steps", lambda row: row["steps"]),
        ("stop", lambda row: "step cap" if row["hit_cap"] else row["stop_reason"]),
        ("wall", lambda row: _duration(point_seconds(row))),
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
