"""Plan a LoRA rank from the Parametric Memory Law instead of by trial and error.

:func:`fit_sweep` turns sweep rows into a fitted :class:`~memlaw.law.MemoryLaw` with its checks
(form comparison, held-out extrapolation, the recall boundary, stored bits per parameter);
:func:`plan` reads a law and a memory-set length ℓ and says, per rank, what loss reduction to
expect, where more rank stops paying, and which rank should reach verbatim recall.

>>> law = MemoryLaw.from_dict({"format": "memlaw.law/1", "form": "full",
...     "params": {"C": 2.0, "alpha": 0.35, "beta": 0.45, "b": 0.05}})
>>> result = plan(law, 64, base_loss=1.0, ranks=(1, 2, 4, 8, 16, 32))
>>> [round(row["predicted_delta"], 3) for row in result.rows]
[0.358, 0.442, 0.55, 0.687, 0.862, 1.085]
>>> [round(row["gain_per_rank"], 3) for row in result.rows]
[0.085, 0.054, 0.034, 0.022, 0.009, 0.0]
>>> result.diminishing_rank, result.recall_rank, result.recall_source
(4, 16, 'loss < ln2/4')
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import linregress

from memlaw.errors import MemlawError
from memlaw.law import LawPoint, MemoryLaw, capacity, compare_forms, holdout_check

DEFAULT_RANKS = tuple(2**i for i in range(11))  # 1, 2, 4, …, 1024
DEFAULT_RECALL_THRESHOLD = 0.99

# Fallback recall criterion when the law carries no recall boundary: a mean loss below ln 2
# is the certified boundary in loss terms only if every token sits at the mean; stubborn
# tokens sit far above it, so we ask for a margin of 4 on the mean (p̄ ≈ 0.84).
RECALL_LOSS = math.log(2) / 4

# Metadata keys fit_sweep writes into the law (and plan reads back).
BOUNDARY_KEY = "recall_boundary"
HOLDOUT_KEY = "holdout"
FORMS_KEY = "forms"

_ROW_KEYS = ("rank", "length", "layers", "method", "seed", "n_eff", "delta_loss", "hit_cap")


# --- sweep rows -------------------------------------------------------------------------------


def _name(row: Mapping[str, Any], index: int) -> str:
    return str(row.get("key") or f"row {index}")


def _check_rows(rows: Any, needed: Sequence[str]) -> list[Mapping[str, Any]]:
    """The rows as a list of mappings, each holding ``needed``."""
    if isinstance(rows, Mapping) or not isinstance(rows, Iterable):
        raise MemlawError("pass a list of sweep rows (SweepStore.rows()), not a single row")
    rows = list(rows)
    if not rows:
        raise MemlawError("no sweep rows given; run memlaw sweep first")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise MemlawError(f"sweep row {i} is a {type(row).__name__}, not a dict of columns")
        missing = [key for key in needed if key not in row]
        if missing:
            raise MemlawError(
                f"sweep row {_name(row, i)} lacks {', '.join(missing)}; pass rows from "
                "SweepStore.rows()"
            )
    return rows


def _number(row: Mapping[str, Any], key: str, index: int) -> float:
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MemlawError(
            f"sweep row {_name(row, index)} has {key}={value!r}; it must be a finite number "
            "(rerun that point)"
        )
    return float(value)


def _single_method(rows: list[Mapping[str, Any]]) -> str:
    methods = sorted({str(row["method"]) for row in rows})
    if len(methods) > 1:
        raise MemlawError(
            f"the rows mix methods {', '.join(methods)}; fit one method at a time: keep only "
            f"the rows of one (e.g. method == {methods[0]!r})"
        )
    return methods[0]


# --- the recall boundary ----------------------------------------------------------------------


def recall_boundary(
    rows: Iterable[Mapping[str, Any]], threshold: float = DEFAULT_RECALL_THRESHOLD
) -> dict[str, Any]:
    """Per length ℓ, the smallest N_eff whose exact match reaches ``threshold``; and a power
    curve N*(ℓ) = a · ℓ^k through those points.

    Rows sharing (N_eff, ℓ) — seeds, or layer counts with the same N_eff — are averaged first.
    ``n_eff`` is None at a length where no measured N_eff reaches the threshold. N* is a grid
    value, so it is an upper bound on the true boundary (``at_grid_floor`` marks lengths where
    even the smallest N_eff measured reached it); the curve inherits that upward rounding,
    which errs on the side of enough rank. The curve is a least-squares line in log–log
    (``scipy.stats.linregress``) and needs at least two lengths with an N*, else it is None.

    >>> rows = [{"method": "sft", "n_eff": n, "length": l, "exact_match": float(n >= l / 64)}
    ...         for n in (1, 2, 4, 8, 16) for l in (128, 256, 512)]
    >>> boundary = recall_boundary(rows)
    >>> [(p["length"], p["n_eff"]) for p in boundary["points"]]
    [(128, 2), (256, 4), (512, 8)]
    >>> round(boundary["curve"]["k"], 6), round(boundary_n_eff(boundary, 1024), 6)
    (1.0, 16.0)
    """
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not 0 < threshold <= 1
    ):
        raise MemlawError(f"threshold must be an exact-match share in (0, 1], got {threshold!r}")
    rows = _check_rows(rows, ("method", "n_eff", "length", "exact_match"))
    _single_method(rows)
    groups: dict[tuple[float, float], list[float]] = {}
    for i, row in enumerate(rows):
        n_eff, length = _number(row, "n_eff", i), _number(row, "length", i)
        groups.setdefault((n_eff, length), []).append(_number(row, "exact_match", i))

    points = []
    for length in sorted({length for _, length in groups}):
        measured = sorted((n, float(np.mean(v))) for (n, at), v in groups.items() if at == length)
        found = next(((n, em) for n, em in measured if em >= threshold), None)
        points.append(
            {
                "length": _plain(length),
                "n_eff": None if found is None else _plain(found[0]),
                "exact_match": None if found is None else found[1],
                "at_grid_floor": found is not None and found[0] == measured[0][0],
                "max_n_eff": _plain(measured[-1][0]),
                "best_exact_match": max(em for _, em in measured),
            }
        )
    found_points = [p for p in points if p["n_eff"] is not None]
    curve, note = None, None
    if len(found_points) < 2:
        note = (
            f"the curve needs at least 2 lengths that reach exact match ≥ {threshold:g}, got "
            f"{len(found_points)}; measure larger ranks"
        )
    else:
        log_l = np.log([p["length"] for p in found_points])
        log_n = np.log([p["n_eff"] for p in found_points])
        fit = linregress(log_l, log_n)
        curve = {
            "a": float(math.exp(fit.intercept)),
            "k": float(fit.slope),
            "r2": float(fit.rvalue**2),
            "n_points": len(found_points),
            "lengths": [found_points[0]["length"], found_points[-1]["length"]],
        }
    return {
        "threshold": float(threshold),
        "rule": "smallest N_eff with mean exact match ≥ threshold; N*(ℓ) = a·ℓ^k",
        "points": points,
        "curve": curve,
        "note": note,
    }


def boundary_n_eff(boundary: Mapping[str, Any] | None, length: float) -> float | None:
    """N*(ℓ) = a · ℓ^k from a :func:`recall_boundary` record; None when it has no curve.

    >>> boundary_n_eff({"curve": {"a": 0.5, "k": 0.5}}, 400)
    10.0
    >>> boundary_n_eff({"curve": None}, 400) is None
    True
    """
    length = _positive(length, "length", "the number of target tokens")
    if boundary is None:
        return None
    if not isinstance(boundary, Mapping):
        raise MemlawError(
            f"a recall boundary is a dict from recall_boundary(), got {type(boundary).__name__}"
        )
    curve = boundary.get("curve")
    if curve is None:
        return None
    try:
        a, k = float(curve["a"]), float(curve["k"])
    except (TypeError, KeyError, ValueError):
        raise MemlawError(
            f"malformed recall-boundary curve {curve!r}; it needs numbers a and k "
            "(refit the law with fit_sweep)"
        ) from None
    if not (a > 0 and math.isfinite(a) and math.isfinite(k)):
        raise MemlawError(f"malformed recall-boundary curve: a={a!r}, k={k!r}; refit the law")
    return a * length**k


# --- fitting a sweep --------------------------------------------------------------------------


def fit_sweep(
    rows: Iterable[Mapping[str, Any]],
    *,
    metadata: Mapping[str, Any],
    include_capped: bool = False,
    saturation_loss: float | None = None,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit ``MemoryLaw("full")`` on sweep rows, with its checks.

    With ``saturation_loss``, rows whose final loss fell below it are left out of the law (not
    of the recall boundary): the set is memorized outright, so ΔL ≈ L0 is bounded by the data,
    not by the adapter's capacity, and would flatten the fitted exponents.

    Rows that hit the step cap (not converged, so their ΔL understates capacity) are left out
    unless ``include_capped``; the rows must hold one method. ΔL is averaged over seeds per
    (rank, layers, ℓ) — per (N_eff, ℓ) for a one-layer-count sweep. The recall boundary is
    measured on the same rows. The law's metadata gets ``metadata`` plus the method, seeds,
    the recall boundary, the held-out check and the form comparison, so
    :meth:`MemoryLaw.save` keeps them. A check that cannot run on this grid (too few points)
    is recorded as ``{"error": ...}`` instead of failing the fit.

    Returns ``{"law", "forms", "holdout", "boundary", "capacity", "excluded_capped"}``;
    ``capacity`` holds, per averaged point, the stored information ΔL·ℓ in nats and bits and
    bits per trainable parameter.

    >>> rows = [{"rank": r, "layers": 1, "n_eff": r, "length": l, "method": "sft", "seed": 0,
    ...          "delta_loss": 2.0 * r**0.35 * l**-0.45 + 0.05, "hit_cap": False,
    ...          "exact_match": 1.0, "trainable_params": 1000 * r}
    ...         for r in (1, 2, 4, 8, 16) for l in (100, 200, 400, 800)]
    >>> fitted = fit_sweep(rows, metadata={"model": "tiny"}, n_bootstrap=0)
    >>> round(fitted["law"].alpha_, 3), fitted["excluded_capped"]
    (0.35, 0)
    >>> sorted(fitted["law"].metadata_)[:4]
    ['capped_in_fit', 'excluded_capped', 'excluded_saturated', 'forms']
    """
    if not isinstance(metadata, Mapping):
        raise MemlawError(
            f"metadata must be a dict (model, data, …), got {type(metadata).__name__}"
        )
    rows = _check_rows(rows, _ROW_KEYS)
    # Indices into ``rows``, so an error names the row the caller passed.
    indexed = [(i, row) for i, row in enumerate(rows) if include_capped or not row["hit_cap"]]
    kept = [row for _, row in indexed]
    excluded = len(rows) - len(kept)
    if saturation_loss is not None:
        if any("final_loss" not in row for _, row in indexed):
            raise MemlawError("saturation_loss needs a final_loss in every row: drop the option")
        unsaturated = [(i, row) for i, row in indexed if row["final_loss"] >= saturation_loss]
        saturated = len(indexed) - len(unsaturated)
        indexed = unsaturated
    else:
        saturated = 0
    if not kept:
        raise MemlawError(
            f"all {len(rows)} sweep rows hit the step cap (not converged); rerun with more "
            "steps, or pass include_capped=True to fit them anyway"
        )
    method = _single_method(kept)
    if "method" in metadata and str(metadata["method"]) != method:
        raise MemlawError(
            f"metadata says method {metadata['method']!r} but the rows hold {method!r}; "
            "pass the rows of that method or fix the metadata"
        )

    # Average over seeds: one point per (rank, layers, ℓ), so no seed weighs the fit twice.
    groups: dict[tuple[Any, Any, float], list[tuple[float, float, Any]]] = {}
    for i, row in indexed:
        length = _number(row, "length", i)
        measured = (_number(row, "n_eff", i), _number(row, "delta_loss", i))
        rank, layers = _plain(_number(row, "rank", i)), _plain(_number(row, "layers", i))
        groups.setdefault((rank, layers, length), []).append(
            (*measured, row.get("trainable_params"))
        )
    points = [
        LawPoint(
            n_eff=_plain(members[0][0]),
            length=_plain(length),
            delta_loss=float(np.mean([delta for _, delta, _ in members])),
            rank=rank,
            layers=layers,
            trainable_params=None if members[0][2] is None else int(members[0][2]),
        )
        for (rank, layers, length), members in sorted(groups.items())
    ]

    law = MemoryLaw("full", n_bootstrap=n_bootstrap, seed=seed).fit(points, metadata=metadata)
    forms = _guarded(lambda: compare_forms(points))
    holdout = _guarded(lambda: holdout_check(points, form="full"))
    boundary = _guarded(lambda: recall_boundary(kept))
    law.metadata_ = {
        **law.metadata_,
        "method": method,
        "seeds": sorted({row["seed"] for row in kept}),
        "layer_counts": sorted({point.layers for point in points}),
        "include_capped": include_capped,
        "excluded_capped": excluded,
        "saturation_loss": saturation_loss,
        "excluded_saturated": saturated,
        # Kept rows that stopped at the step cap: for them ΔL is what the budget stored.
        "capped_in_fit": sum(1 for _, row in indexed if row["hit_cap"]),
        "runs_in_fit": len(indexed),  # sweep rows, before averaging over seeds
        BOUNDARY_KEY: boundary,
        HOLDOUT_KEY: _holdout_summary(holdout),
        FORMS_KEY: forms,
    }
    return {
        "law": law,
        "forms": forms,
        "holdout": holdout,
        "boundary": boundary,
        "capacity": [
            {
                "n_eff": p.n_eff,
                "rank": p.rank,
                "layers": p.layers,
                "length": p.length,
                "delta_loss": p.delta_loss,
                **capacity(p),
            }
            for p in points
        ],
        "excluded_capped": excluded,
        "excluded_saturated": saturated,
    }


def _guarded(check: Any) -> Any:
    """A check's result, or ``{"error": message}`` when this grid cannot support it."""
    try:
        return check()
    except MemlawError as error:
        return {"error": str(error)}


def _holdout_summary(holdout: Mapping[str, Any]) -> dict[str, Any]:
    """The held-out check without its refitted law (the saved law JSON needs one law)."""
    if "error" in holdout:
        return dict(holdout)
    keep = ("n_eff", "length", "delta_loss", "predicted", "relative_error")
    return {
        **{key: value for key, value in holdout.items() if key not in ("law", "held_out")},
        "held_out": [{key: point[key] for key in keep} for point in holdout["held_out"]],
    }


def _plain(value: float) -> int | float:
    """A whole float as int, so JSON and labels read ``64`` rather than ``64.0``."""
    return int(value) if float(value).is_integer() else float(value)


# --- planning ---------------------------------------------------------------------------------


@dataclass
class PlanResult:
    """What :func:`plan` predicts for one memory-set length ℓ.

    ``rows`` has one dict per rank: ``rank``, ``n_eff``, ``predicted_delta`` (ΔL, nats per
    token, as the law says), ``predicted_final`` (L0 − ΔL clipped at 0, None without a base
    loss), ``saturated`` (the law predicts ΔL ≥ L0: it extrapolates past full
    memorization), ``gain_nats`` and ``gain_percent`` (what doubling this rank adds to ΔL),
    ``gain_per_rank`` (that gain divided by the ranks it adds) and ``extrapolated`` (outside
    the N_eff or ℓ the law was fitted on).
    """

    length: float
    layers: int
    base_loss: float | None
    min_gain: float
    law_form: str
    model: str | None
    rows: list[dict[str, Any]]
    diminishing_rank: int | None
    recall_rank: int | None
    recall_source: str | None
    recall_n_eff: float | None
    current: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


def _positive(value: Any, name: str, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise MemlawError(f"{name} must be a positive number ({hint}), got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise MemlawError(f"{name} must be a positive number ({hint}), got {value!r}")
    return float(value)


def _positive_int(value: Any, name: str, hint: str) -> int:
    number = _positive(value, name, hint)
    if not number.is_integer():
        raise MemlawError(f"{name} must be a whole number ({hint}), got {value!r}")
    return int(number)


def _module_set(modules: str) -> frozenset[str]:
    """``mlp`` and ``gate_proj,up_proj,down_proj`` name the same adapted modules."""
    from memlaw.adapters import module_names

    return frozenset(module_names(modules))


def _fitted_range(law: MemoryLaw) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """(capacity range, length range) of the points the law was fitted on, if it kept them."""
    points = getattr(law, "points_", None) or []
    if law.form == "rank":
        points = [p for p in points if p.rank is not None]
    if not points:
        return None
    caps = [float(p.rank if law.form == "rank" else p.n_eff) for p in points]
    lengths = [float(p.length) for p in points]
    return (min(caps), max(caps)), (min(lengths), max(lengths))


def plan(
    law: MemoryLaw,
    length: float,
    *,
    base_loss: float | None = None,
    current_rank: int | None = None,
    layers: int = 1,
    ranks: Iterable[int] | None = None,
    min_gain: float = 0.05,
    model: str | None = None,
    modules: str | None = None,
) -> PlanResult:
    """Predicted ΔL per rank for ℓ = ``length`` target tokens, and the ranks worth knowing.

    N_eff = rank × ``layers``; ΔL comes from ``law.predict``. With ``base_loss`` (L0 of the
    user's data under the base model), the final loss is L0 − ΔL, clipped at 0, and ΔL is
    capped at L0 in every gain (a loss cannot fall below 0).

    **Diminishing returns**: the first grid rank r whose doubling r → 2r gains less than
    ``min_gain`` nats per token *per added rank*, i.e. (ΔL(2r) − ΔL(r)) / r < min_gain. On a
    power law with α < 1 this marginal gain per parameter falls as r^(α−1). (The gain of a
    whole doubling, ``gain_nats``, grows as r^α, so a threshold on it would flag rank 1 or
    nothing.) At r = 1 both coincide. None when no grid rank falls below ``min_gain``.

    **Full recall**: when the law's metadata holds a recall-boundary curve (from
    :func:`fit_sweep`), N* = a·ℓ^k and the recall rank is the smallest grid rank with
    rank × layers ≥ N* (``recall_source = "boundary"``). Without a curve, and only when
    ``base_loss`` is known, the *fallback* is the smallest grid rank whose predicted final loss
    is below ln 2 / 4 ≈ 0.173 nats (``"loss < ln2/4"``) — a heuristic margin under the ln 2
    boundary, since stubborn tokens keep exact recall from following the mean loss. Else None.

    ``model``: when given and the law's metadata names another model, this fails: a law is
    fitted per model. ``modules`` (``mlp``, ``v_proj``, ``up_proj,down_proj``, …) likewise
    fails when the law was fitted on other adapted modules: N_eff counts ranks, and a rank of
    the MLP holds far more parameters than a rank of one projection.
    """
    if not isinstance(law, MemoryLaw) or not hasattr(law, "alpha_"):
        raise MemlawError(
            "plan needs a fitted MemoryLaw; fit one with fit_sweep or MemoryLaw.load(path)"
        )
    length = _positive(length, "length", "the number of target tokens to memorize")
    layers = _positive_int(layers, "layers", "the number of adapted layers")
    min_gain = _positive(min_gain, "min_gain", "nats per token per added rank")
    if base_loss is not None:
        base_loss = _positive(base_loss, "base_loss", "L0 in nats per target token")
    if current_rank is not None:
        current_rank = _positive_int(current_rank, "current_rank", "the LoRA rank in use")
    if ranks is None:
        ranks = DEFAULT_RANKS
    if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Iterable):
        raise MemlawError(f"ranks must be a list of positive integers, got {ranks!r}")
    grid = sorted({_positive_int(r, "every rank", "e.g. 1, 2, 4, …") for r in ranks})
    if not grid:
        raise MemlawError("ranks is empty; give at least one rank, e.g. 1, 2, 4, 8")
    metadata = dict(getattr(law, "metadata_", {}) or {})
    check_law_applies(law, model=model, modules=modules)
    fitted_for = metadata.get("model")

    notes: list[str] = []
    capped = metadata.get("capped_in_fit")
    if isinstance(capped, int) and capped > 0:
        cap, runs = metadata.get("max_steps"), metadata.get("runs_in_fit")
        notes.append(
            f"{capped}{f' of the {runs}' if runs else ''} runs the law was fitted on stopped at the "
            + (f"{cap}-step " if cap else "")
            + "cap before ΔL plateaued: there it predicts what that training budget stores, "
            "a lower bound on capacity"
        )
    span = _fitted_range(law)
    if span is not None and not span[1][0] <= length <= span[1][1]:
        notes.append(
            f"ℓ = {length:g} is outside the lengths the law was fitted on "
            f"({span[1][0]:g}–{span[1][1]:g}): the prediction extrapolates"
        )

    def predicted(rank: int) -> float:
        unit = rank if law.form == "rank" else rank * layers
        return float(law.predict(unit, length))

    def reachable(delta: float) -> float:
        return delta if base_loss is None else min(delta, base_loss)

    def entry(rank: int) -> dict[str, Any]:
        delta, doubled = predicted(rank), predicted(2 * rank)
        gain = reachable(doubled) - reachable(delta)
        unit = rank if law.form == "rank" else rank * layers
        outside = span is not None and not (
            span[0][0] <= unit <= span[0][1] and span[1][0] <= length <= span[1][1]
        )
        return {
            "rank": rank,
            "n_eff": rank * layers,
            "predicted_delta": delta,
            "predicted_final": None if base_loss is None else max(base_loss - delta, 0.0),
            "saturated": base_loss is not None and delta >= base_loss,
            "gain_nats": gain,
            "gain_percent": 100.0 * gain / reachable(delta),
            "gain_per_rank": gain / rank,
            "extrapolated": outside,
        }

    rows = [entry(rank) for rank in grid]
    diminishing = next((row["rank"] for row in rows if row["gain_per_rank"] < min_gain), None)
    if any(row["saturated"] for row in rows):
        first = next(row["rank"] for row in rows if row["saturated"])
        notes.append(
            f"from rank {first} the law predicts ΔL ≥ L0 = {base_loss:g}: it extrapolates past "
            "full memorization, so the final loss is clipped at 0"
        )

    recall_rank, recall_source, recall_n = None, None, None
    boundary = metadata.get(BOUNDARY_KEY)
    if isinstance(boundary, Mapping) and "error" in boundary:
        boundary = None
    recall_n = boundary_n_eff(boundary, length)
    if recall_n is not None:
        recall_source = "boundary"
        # A tiny relative slack: a·ℓ^k computed through logs may land a hair above a grid N_eff.
        recall_rank = next((r for r in grid if r * layers >= recall_n * (1 - 1e-9)), None)
        lengths = boundary["curve"].get("lengths")
        if lengths and not lengths[0] <= length <= lengths[1]:
            notes.append(
                f"the recall boundary was measured at ℓ = {lengths[0]:g}–{lengths[1]:g}; "
                f"N* = {recall_n:.3g} at ℓ = {length:g} extrapolates it"
            )
        if recall_rank is None:
            notes.append(
                f"full recall needs N_eff ≈ {recall_n:.3g}, beyond rank {grid[-1]} × {layers} "
                "layer(s): add larger ranks or more layers"
            )
    elif base_loss is not None:
        recall_source = "loss < ln2/4"
        recall_rank = next(
            (row["rank"] for row in rows if row["predicted_final"] < RECALL_LOSS), None
        )
        notes.append(
            "the law holds no recall boundary (fit it with fit_sweep to get one): recall rank "
            "from predicted final loss < ln 2 / 4, a heuristic"
        )
    else:
        notes.append("no recall rank: the law holds no recall boundary and no base loss was given")

    current = None
    if current_rank is not None:
        current = entry(current_rank)
        current["doubled_rank"] = 2 * current_rank
        current["doubled_delta"] = predicted(2 * current_rank)
        if base_loss is not None:
            current["doubled_final"] = max(base_loss - current["doubled_delta"], 0.0)
        notes.append(
            f"rank {current_rank} → {2 * current_rank} would gain "
            f"{current['gain_nats']:.3g} nats/token (+{current['gain_percent']:.1f}% ΔL)"
        )

    return PlanResult(
        length=_plain(length),
        layers=layers,
        base_loss=base_loss,
        min_gain=min_gain,
        law_form=law.form,
        model=None if fitted_for is None else str(fitted_for),
        rows=rows,
        diminishing_rank=diminishing,
        recall_rank=recall_rank,
        recall_source=recall_source,
        recall_n_eff=recall_n,
        current=current,
        notes=notes,
    )


def check_law_applies(
    law: MemoryLaw, *, model: str | None = None, modules: str | None = None
) -> None:
    """Fail when the law was fitted for another model, or on other adapted modules, than the
    ones given (None: not checked). :func:`plan` runs it; callers can run it before costly work.

    >>> law = MemoryLaw.from_dict({"format": "memlaw.law/1", "form": "no-offset",
    ...     "params": {"C": 1.0, "alpha": 0.3, "beta": 0.4, "b": 0.0},
    ...     "metadata": {"model": "tiny", "modules": "mlp"}})
    >>> check_law_applies(law, model="tiny", modules="gate_proj,up_proj,down_proj")
    >>> check_law_applies(law, modules="v_proj")
    Traceback (most recent call last):
    memlaw.errors.MemlawError: the law was fitted for LoRA on mlp, not v_proj: fit one with memlaw sweep --modules v_proj and memlaw fit, or pass its law
    """
    metadata = getattr(law, "metadata_", None) or {}
    fitted_for = metadata.get("model")
    if model is not None and fitted_for is not None and str(fitted_for) != str(model):
        raise MemlawError(
            f"the law was fitted for model {fitted_for}, not {model}: fit one for {model} "
            "with memlaw sweep or pass its law"
        )
    fitted_modules = metadata.get("modules")
    if modules is not None and fitted_modules is not None:
        if _module_set(modules) != _module_set(str(fitted_modules)):
            raise MemlawError(
                f"the law was fitted for LoRA on {fitted_modules}, not {modules}: fit one with "
                f"memlaw sweep --modules {modules} and memlaw fit, or pass its law"
            )


def describe_law(law: MemoryLaw) -> str:
    """One line saying what a fitted law was measured on, from its metadata.

    >>> from memlaw.law import LawPoint
    >>> points = [LawPoint(n_eff=r, length=l, delta_loss=3.0 * r**0.4 * l**-0.5)
    ...           for r in (1, 2, 4, 8) for l in (64, 128, 256)]
    >>> law = MemoryLaw("no-offset", n_bootstrap=0).fit(
    ...     points, metadata={"model": "tiny", "modules": "v_proj", "method": "sft",
    ...                       "data": "random", "lr": 0.02, "max_steps": 150})
    >>> describe_law(law)
    'tiny · LoRA on v_proj · sft · random data · lr 0.02 · ≤ 150 steps · 12 points · R² 1.000'
    >>> describe_law(MemoryLaw.from_dict({"format": "memlaw.law/1", "form": "no-offset",
    ...     "params": {"C": 1.0, "alpha": 0.3, "beta": 0.4, "b": 0.0}}))
    'unknown model'
    """
    meta = dict(getattr(law, "metadata_", {}) or {})
    parts = [str(meta.get("model", "unknown model"))]
    if meta.get("modules"):
        counts = meta.get("layer_counts") or [1]
        layers = "" if list(counts) == [1] else f" of {'/'.join(map(str, counts))} layers"
        parts.append(f"LoRA on {meta['modules']}{layers}")
    if meta.get("method"):
        parts.append(str(meta["method"]))
    if meta.get("data"):
        parts.append(f"{meta['data']} data")
    if meta.get("lr"):
        parts.append(f"lr {meta['lr']:g}")
    if meta.get("max_steps"):
        parts.append(f"≤ {meta['max_steps']} steps")
    if getattr(law, "n_points_", None):
        parts.append(f"{law.n_points_} points")
    if getattr(law, "r2_", None) is not None:
        parts.append(f"R² {law.r2_:.3f}")
    return " · ".join(parts)


def format_plan_table(result: PlanResult) -> list[dict[str, str]]:
    """The plan as printable rows (column name → text), with the notable ranks marked.

    >>> law = MemoryLaw.from_dict({"format": "memlaw.law/1", "form": "full",
    ...     "params": {"C": 2.0, "alpha": 0.35, "beta": 0.45, "b": 0.05}})
    >>> table = format_plan_table(plan(law, 1000, current_rank=2, ranks=(1, 2)))
    >>> list(table[0])
    ['rank', 'N_eff', 'ΔL', 'L1', 'doubling gain', 'gain/rank', 'mark']
    >>> table[1]["mark"]
    'current'
    """
    table = []
    current = None if result.current is None else result.current["rank"]
    for row in result.rows:
        marks = []
        if row["rank"] == current:
            marks.append("current")
        if row["rank"] == result.diminishing_rank:
            marks.append("diminishing returns")
        if row["rank"] == result.recall_rank:
            marks.append("full recall")
        if row["saturated"]:
            marks.append("saturated")
        if row["extrapolated"]:
            marks.append("extrapolated")
        final = row["predicted_final"]
        table.append(
            {
                "rank": str(row["rank"]),
                "N_eff": str(row["n_eff"]),
                "ΔL": f"{row['predicted_delta']:.4f}",
                "L1": "—" if final is None else f"{final:.4f}",
                "doubling gain": f"{row['gain_nats']:+.4f} ({row['gain_percent']:+.1f}%)",
                "gain/rank": f"{row['gain_per_rank']:.4f}",
                "mark": ", ".join(marks),
            }
        )
    return table


# --- the figure -------------------------------------------------------------------------------


def _nearest_length(rows: list[Mapping[str, Any]], length: float) -> float | None:
    lengths = sorted({float(row["length"]) for row in rows if float(row["length"]) > 0})
    if not lengths:
        return None
    # Nearest on a log scale: the law is a power of ℓ, so 500 is nearer 1000 than 100.
    return min(lengths, key=lambda at: (abs(math.log(at / length)), at))


def plot_plan(
    result: PlanResult,
    law: MemoryLaw,
    path: str | Path,
    measured_rows: Iterable[Mapping[str, Any]] | None = None,
) -> Path:
    """Predicted ΔL against N_eff (log–log) at the plan's ℓ, written atomically as a PNG.

    Measured rows at the same ℓ — or, when none, at the nearest ℓ (with the law drawn there
    too) — are overlaid: filled when converged, hollow when they hit the step cap. The current
    rank, the diminishing-returns rank and the full-recall rank are marked, and L0 is drawn
    when the plan has a base loss.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(result, PlanResult):
        raise MemlawError("plot_plan needs the PlanResult that plan() returned")
    path = Path(path)
    length, layers = float(result.length), result.layers

    def law_at(n_eff: np.ndarray, at_length: float) -> np.ndarray:
        unit = n_eff / layers if law.form == "rank" else n_eff
        return np.asarray(law.predict(unit, at_length))

    figure, axes = plt.subplots(figsize=(7.5, 5))
    n_grid = np.array([row["n_eff"] for row in result.rows], dtype=float)
    smooth = np.geomspace(n_grid.min(), n_grid.max() * 2, 200)
    axes.plot(smooth, law_at(smooth, length), color="C0", linewidth=2, label=f"law, ℓ = {length:g}")
    axes.plot(
        n_grid,
        [row["predicted_delta"] for row in result.rows],
        "o",
        color="C0",
        markersize=4,
    )

    if measured_rows is not None:
        measured = _check_rows(measured_rows, ("n_eff", "length", "delta_loss"))
        nearest = _nearest_length(measured, length)
        if nearest is not None:
            same = [
                row
                for row in measured
                if float(row["length"]) == nearest and float(row["delta_loss"]) > 0
            ]
            if nearest != length:
                axes.plot(
                    smooth,
                    law_at(smooth, nearest),
                    color="C1",
                    linestyle="--",
                    linewidth=1.2,
                    label=f"law, ℓ = {nearest:g}",
                )
            where = "" if nearest == length else " (nearest)"
            for capped, style in ((False, "C1"), (True, "none")):
                chosen = [row for row in same if bool(row.get("hit_cap", False)) == capped]
                if chosen:
                    axes.scatter(
                        [float(row["n_eff"]) for row in chosen],
                        [float(row["delta_loss"]) for row in chosen],
                        facecolors=style,
                        edgecolors="C1",
                        zorder=3,
                        label=f"measured, ℓ = {nearest:g}{where}"
                        + (", hit step cap" if capped else ""),
                    )

    if result.base_loss is not None:
        axes.axhline(
            result.base_loss,
            color="grey",
            linestyle=":",
            linewidth=1,
            label=f"L0 = {result.base_loss:.3g} (ΔL cannot exceed it)",
        )
    by_rank = {row["rank"]: row for row in result.rows}
    if result.diminishing_rank is not None:
        row = by_rank[result.diminishing_rank]
        axes.plot(
            row["n_eff"],
            row["predicted_delta"],
            "v",
            color="C3",
            markersize=11,
            label=f"diminishing returns: rank {result.diminishing_rank}",
        )
    if result.recall_rank is not None:
        axes.axvline(
            result.recall_rank * layers,
            color="C2",
            linestyle="--",
            linewidth=1.4,
            label=f"full recall: rank {result.recall_rank} ({result.recall_source})",
        )
    if result.current is not None:
        axes.axvline(
            result.current["n_eff"],
            color="black",
            linestyle=":",
            linewidth=1.4,
            label=f"current: rank {result.current['rank']}",
        )
        axes.plot(result.current["n_eff"], result.current["predicted_delta"], "s", color="black")

    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel(f"N_eff = rank × {layers} adapted layer(s)")
    axes.set_ylabel("ΔL = L0 − L1 (nats per target token)")
    title = f"rank plan for ℓ = {length:g} target tokens"
    axes.set_title(title + (f" — {result.model}" if result.model else ""))
    axes.grid(True, which="both", alpha=0.25)
    axes.legend(fontsize=8)
    figure.tight_layout()

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(staging, dpi=110, format="png")
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    finally:
        plt.close(figure)
    return path
