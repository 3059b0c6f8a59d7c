"""Sweep rows → one fitted law: the single fitting recipe that ``memlaw fit``, ``memlaw report``
and the Python API share.

:func:`law_points` averages a sweep's runs over seeds into :class:`~memlaw.law.LawPoint` s
that carry L0, the information baseline H and the recall measures. :func:`fit_sweep` fits
every candidate form, compares them by AIC and on held-out points, ships the better one, and
adds the recall law (:func:`recall_law`) and each point's memorized information; everything
lands in the law's metadata, so the law JSON is all that plan and report read.

>>> rows = [{"rank": r, "layers": 1, "n_eff": r, "length": l, "method": "sft", "seed": 0,
...          "delta_loss": 2.0 * r**0.35 * l**-0.45 + 0.05, "base_loss": 3.0,
...          "stop_reason": "plateau", "hit_cap": False, "exact_match": float(r * 200 >= l),
...          "certified_share": float(r * 200 >= l), "trainable_params": 1000 * r}
...         for r in (1, 2, 4, 8, 16) for l in (100, 200, 400, 800)]
>>> fitted = fit_sweep(rows, metadata={"model": "tiny"}, forms=("full",), n_bootstrap=0)
>>> round(fitted.law.alpha_, 3), fitted.excluded_capped
(0.35, 0)
>>> fitted.law.metadata_["recall"]["boundary"]["k"] > 0
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import brentq, minimize

from memlaw.errors import MemlawError
from memlaw.law import LawPoint, MemoryLaw, capacity, compare_forms, holdout_check

# Forms fitted by default; the preferred one by AIC is shipped (compare_forms).
DEFAULT_FORMS = ("full", "saturating")
ROW_KEYS = ("rank", "length", "layers", "method", "seed", "n_eff", "delta_loss", "hit_cap")
# A small ridge on the recall law's slopes: sweeps often separate certified from uncertified
# points cleanly, where the unpenalized logistic fit runs off to infinite slopes.
RECALL_RIDGE = 1e-2


@dataclass
class SweepFit:
    """What :func:`fit_sweep` returns: the shipped law and the evidence behind it."""

    law: MemoryLaw
    forms: list[dict[str, Any]] | dict[str, str]
    holdout: dict[str, Any]
    recall: dict[str, Any]
    capacity: list[dict[str, Any]]
    excluded_capped: int


# --- rows → points ----------------------------------------------------------------------------


def _name(row: Mapping[str, Any], index: int) -> str:
    return str(row.get("key") or f"row {index}")


def check_rows(rows: Any, needed: Sequence[str] = ROW_KEYS) -> list[Mapping[str, Any]]:
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


def _optional_mean(rows: list[Mapping[str, Any]], key: str) -> float | None:
    values = [row.get(key) for row in rows]
    if any(v is None for v in values):
        return None
    return float(np.mean(values))


def single_method(rows: list[Mapping[str, Any]]) -> str:
    methods = sorted({str(row["method"]) for row in rows})
    if len(methods) > 1:
        raise MemlawError(
            f"the rows mix methods {', '.join(methods)}; fit one method at a time: keep only "
            f"the rows of one (e.g. method == {methods[0]!r})"
        )
    return methods[0]


def plain(value: float) -> int | float:
    """A whole float as int, so JSON and labels read ``64`` rather than ``64.0``."""
    return int(value) if float(value).is_integer() else float(value)


def law_points(rows: list[Mapping[str, Any]]) -> list[LawPoint]:
    """One point per (rank, layers, ℓ), averaged over seeds so no seed weighs the fit twice."""
    groups: dict[tuple[Any, Any, float], list[Mapping[str, Any]]] = {}
    for i, row in enumerate(rows):
        for key in ("length", "n_eff", "delta_loss", "rank", "layers"):
            _number(row, key, i)
        key = (plain(row["rank"]), plain(row["layers"]), plain(row["length"]))
        groups.setdefault(key, []).append(row)
    points = []
    for (rank, layers, length), members in sorted(groups.items()):
        params = members[0].get("trainable_params")
        points.append(
            LawPoint(
                n_eff=plain(members[0]["n_eff"]),
                length=length,
                delta_loss=float(np.mean([m["delta_loss"] for m in members])),
                rank=rank,
                layers=layers,
                trainable_params=None if params is None else int(params),
                base_loss=_optional_mean(members, "base_loss"),
                info_baseline=_optional_mean(members, "info_baseline"),
                certified_share=_optional_mean(members, "certified_share"),
                exact_match=_optional_mean(members, "exact_match"),
            )
        )
    return points


# --- the recall law ---------------------------------------------------------------------------


def _logistic_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """θ = (a, b, c) of P = σ(a + b·ln N − c·ln ℓ), x = columns (ln N, ln ℓ); y in [0, 1]
    (a share counts as that fraction of a success). Ridge on b and c."""

    def loss(theta: np.ndarray) -> float:
        z = theta[0] + theta[1] * x[:, 0] - theta[2] * x[:, 1]
        # log(1 + e^z) − y·z, computed stably
        return float(np.sum(np.logaddexp(0.0, z) - y * z)) + RECALL_RIDGE * (
            theta[1] ** 2 + theta[2] ** 2
        )

    result = minimize(
        loss,
        np.array([0.0, 1.0, 1.0]),
        method="L-BFGS-B",
        bounds=[(None, None), (1e-6, None), (1e-6, None)],
    )
    return result.x


def recall_law(
    points: list[LawPoint],
    *,
    n_bootstrap: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
    tokens_per_item: float | None = None,
) -> dict[str, Any]:
    """Certified share as a function of (N_eff, ℓ), and the recall boundary with intervals.

    A logistic law P(certified) = σ(a + b·ln N_eff − c·ln ℓ) is fitted to each point's
    certified share (the share of items whose every target token has p > 0.5). Its median
    boundary, P = ½, is N½(ℓ) = A · ℓ^k with k = c/b, A = e^(−a/b): where half the items
    certify. A whole set of n items certifies where P reaches :func:`whole_set_level` (the
    expected number of uncertified items below ½), a factor e^(logit(P)/b) above N½: that is
    what :func:`certifying_n_eff` and :func:`certified_length` answer. ``tokens_per_item``
    (the grid's) gives n for a length when the caller has no set of its own.
    Intervals: percentiles over refits on points resampled with replacement. The measured
    side is kept too: per ℓ, the smallest N_eff whose run certified every item.

    >>> points = [LawPoint(n, l, 1.0, certified_share=float(n * 100 >= l))
    ...           for n in (1, 2, 4, 8) for l in (100, 200, 400, 800)]
    >>> law = recall_law(points, n_bootstrap=20)
    >>> [p["n_eff"] for p in law["measured"]]
    [1, 2, 4, 8]
    >>> 0.5 < law["boundary"]["k"] < 1.5
    True
    """
    usable = [p for p in points if p.certified_share is not None]
    if len(usable) < 4:
        raise MemlawError(
            f"the recall law needs the certified share of at least 4 points, got {len(usable)}"
        )
    x = np.log([[float(p.n_eff), float(p.length)] for p in usable])
    y = np.clip([float(p.certified_share) for p in usable], 0.0, 1.0)
    # A boundary needs both sides of it on the grid.
    if y.max() < 0.5:
        raise MemlawError(
            "no recall boundary on this grid: no point certified its set; measure larger ranks "
            "or shorter sets"
        )
    if y.min() >= 0.5:
        return _all_certified(usable)
    theta = _logistic_fit(x, y)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_bootstrap):
        pick = rng.integers(0, len(usable), size=len(usable))
        if np.unique(x[pick, 0]).size < 2 or np.unique(x[pick, 1]).size < 2:
            continue
        draws.append(_logistic_fit(x[pick], y[pick]))
    tail = 100.0 * (1.0 - confidence) / 2.0
    boundary = {"a": float(theta[0]), "b": float(theta[1]), "c": float(theta[2])}
    boundary |= {"k": boundary["c"] / boundary["b"], "A": math.exp(-theta[0] / theta[1])}
    intervals = {}
    if draws:
        arr = np.array(draws)
        ks, log_as = arr[:, 2] / arr[:, 1], -arr[:, 0] / arr[:, 1]
        for name, values in (("k", ks), ("A", np.exp(log_as))):
            intervals[name] = [
                float(np.percentile(values, tail)),
                float(np.percentile(values, 100 - tail)),
            ]
        boundary["draws"] = [
            [float(k), float(a), float(slope)]
            for k, a, slope in zip(ks, log_as, arr[:, 1], strict=True)
        ]
    predicted = 1.0 / (1.0 + np.exp(-(theta[0] + theta[1] * x[:, 0] - theta[2] * x[:, 1])))
    return {
        "rule": "P(certified) = σ(a + b·ln N_eff − c·ln ℓ); a set of n items certifies from "
        "N*(ℓ) = A·ℓ^k · e^(logit(1 − 1/(2n))/b) (A·ℓ^k: half of the items)",
        "boundary": boundary,
        "tokens_per_item": tokens_per_item,
        "intervals": intervals,
        "bootstrap_ok": len(draws),
        "mean_abs_error": float(np.mean(np.abs(predicted - y))),
        "measured": measured_boundary(usable),
        "points": measured_points(usable),
        "lengths": [plain(min(p.length for p in usable)), plain(max(p.length for p in usable))],
        "n_effs": [plain(min(p.n_eff for p in usable)), plain(max(p.n_eff for p in usable))],
    }


def _all_certified(points: list[LawPoint]) -> dict[str, Any]:
    """The recall record of a grid whose every point reached a certified share of ½ or more:
    no boundary to fit, only what was measured (``points``), which a plan is held to alone.
    ``error`` says so wherever a boundary is looked for."""
    smallest = min(float(p.n_eff) for p in points)
    certified = [
        float(p.length)
        for p in points
        if float(p.n_eff) == smallest and (p.certified_share or 0.0) >= 1.0
    ]
    found = f" (N_eff {plain(smallest)} certified ℓ = {plain(max(certified))})" if certified else ""
    return {
        "error": (
            f"no recall boundary on this grid: every point certified its set{found}; "
            "measure longer sets or smaller ranks to place it"
        ),
        "measured": measured_boundary(points),
        "points": measured_points(points),
        "lengths": [plain(min(p.length for p in points)), plain(max(p.length for p in points))],
        "n_effs": [plain(smallest), plain(max(p.n_eff for p in points))],
    }


def measured_points(points: list[LawPoint]) -> list[list[float]]:
    """[N_eff, ℓ, certified share] of every point: the measurements a plan is held to."""
    return [[plain(p.n_eff), plain(p.length), float(p.certified_share)] for p in points]


def measured_limits(recall: Mapping[str, Any], length: float) -> tuple[float | None, float | None]:
    """What the measured points say of the N_eff that certifies ℓ tokens: above every N_eff
    that failed (not every item certified) on a set no longer than ℓ, and at most the smallest
    N_eff that certified a set at least as long. ``(failed, certified)``, None where no point
    says.

    >>> measured_limits({"points": [[1, 1000, 1.0], [1, 2000, 0.4], [2, 2000, 1.0]]}, 2000)
    (1, 2)
    >>> measured_limits({"points": [[1, 1000, 1.0], [1, 2000, 0.4]]}, 800)
    (None, 1)
    """
    measured = recall.get("points") or []
    failed = [n for n, ell, share in measured if share < 1.0 and ell <= length]
    certified = [n for n, ell, share in measured if share >= 1.0 and ell >= length]
    return (max(failed) if failed else None), (min(certified) if certified else None)


# A tiny relative slack: A·ℓ^k through logs may land a hair above a whole N_eff.
N_EFF_SLACK = 1e-9


def has_recall_data(recall: Any) -> bool:
    """Whether a recall record can say anything of certification: a fitted boundary, or the
    measured points of a grid that had none to fit (an error record alone cannot).

    >>> has_recall_data({"points": [[1, 1000, 1.0]]}), has_recall_data({"error": "too few"})
    (True, False)
    """
    return isinstance(recall, Mapping) and ("boundary" in recall or bool(recall.get("points")))


def held_certifying_n_eff(
    recall: Mapping[str, Any],
    length: float,
    quantile: float | None = None,
    tokens_per_item: float | None = None,
) -> float | None:
    """N*(ℓ) of the recall law (or a quantile of it), held to what the law's own points
    measured: above an N_eff that failed on a set no longer than ℓ, at most one that certified
    a set at least as long. A fitted curve may not contradict a measurement.

    Without a fitted boundary (every grid point certified), what was measured alone: the
    smallest N_eff that certified a set at least as long (N* is at most that), None beyond
    the longest set certified.

    >>> held_certifying_n_eff({"points": [[1, 1000, 1.0], [2, 2000, 1.0]]}, 1500)
    2
    >>> held_certifying_n_eff({"points": [[1, 1000, 1.0], [2, 2000, 1.0]]}, 3000) is None
    True
    """
    failed, certified = measured_limits(recall, length)
    if "boundary" not in recall:
        return certified
    needed = certifying_n_eff(recall, length, quantile=quantile, tokens_per_item=tokens_per_item)
    if failed is not None:
        needed = max(needed, failed * (1 + 1e-6))
    if certified is not None:
        needed = min(needed, certified)
    return needed


def certifies(
    recall: Mapping[str, Any], n_eff: float, length: float, tokens_per_item: float | None = None
) -> bool | None:
    """Whether N_eff certifies every item of a set of ℓ target tokens (one item per
    ``tokens_per_item``, else the grid's), by the recall law held to its points; None where
    nothing says (no boundary fitted, and N_eff between what failed and what certified).

    >>> measured = {"points": [[1, 1000, 0.4], [4, 1000, 1.0]]}
    >>> certifies(measured, 4, 1000), certifies(measured, 1, 1200), certifies(measured, 2, 1000)
    (True, False, None)
    """
    failed, _ = measured_limits(recall, length)
    if failed is not None and n_eff <= failed:
        return False
    needed = held_certifying_n_eff(recall, length, tokens_per_item=tokens_per_item)
    if needed is not None and n_eff >= needed * (1 - N_EFF_SLACK):
        return True
    return False if "boundary" in recall else None


def held_certified_length(recall: Mapping[str, Any], n_eff: float, length: float) -> float:
    """ℓ*(N) (``length``, from the fitted boundary; 0 without one) held to the measured points
    likewise: at least the longest set an N_eff no larger certified, below the shortest set
    one no smaller failed.

    >>> held_certified_length({"points": [[1, 2000, 1.0], [2, 3000, 0.5]]}, 2, 5000.0)
    2999.997
    """
    points = recall.get("points") or []
    held = [ell for n, ell, share in points if share >= 1.0 and n <= n_eff]
    lost = [ell for n, ell, share in points if share < 1.0 and n >= n_eff]
    if held:
        length = max(length, max(held))
    if lost:
        length = min(length, min(lost) * (1 - 1e-6))
    return length


def measured_boundary(points: list[LawPoint]) -> list[dict[str, Any]]:
    """Per ℓ, the smallest measured N_eff that certified every item (None: none did)."""
    rows = []
    for length in sorted({float(p.length) for p in points}):
        at = sorted(
            (float(p.n_eff), float(p.certified_share)) for p in points if p.length == length
        )
        found = next((n for n, share in at if share >= 1.0), None)
        rows.append(
            {
                "length": plain(length),
                "n_eff": None if found is None else plain(found),
                "max_n_eff": plain(at[-1][0]),
                "best_certified_share": max(s for _, s in at),
            }
        )
    return rows


def whole_set_level(items: float) -> float:
    """The certified share at which a set of ``items`` counts as certified by the recall law:
    1 − 1/(2n), where fewer than half an item is expected to be left uncertified. One item:
    ½, the median boundary.

    >>> whole_set_level(100), whole_set_level(1)
    (0.995, 0.5)
    """
    return 1.0 - 0.5 / max(float(items), 1.0)


def _items(recall: Mapping[str, Any], length: float, tokens_per_item: float | None) -> float:
    """The number of items in a set of ℓ tokens: ℓ over the caller's tokens per item, else
    the grid's; 1 (the median boundary) for a law that recorded neither."""
    per_item = tokens_per_item or recall.get("tokens_per_item")
    return max(float(length) / float(per_item), 1.0) if per_item else 1.0


def _log_n_star(draw: Sequence[float], length: float, items: float) -> float:
    """ln N*(ℓ) for a set of ``items`` under one (k, ln A, b) draw of the boundary."""
    k, log_a, slope = draw
    # logit(whole_set_level(n)) = ln(2n − 1), written so that no level rounds to 1
    return log_a + k * math.log(length) + math.log(2.0 * max(items, 1.0) - 1.0) / slope


def boundary_draws(recall: Mapping[str, Any]) -> tuple[list[float], list[list[float]]]:
    """The boundary's (k, ln A, b) and its bootstrap draws, each a (k, ln A, b) (a draw of an
    older record lacks its b: the point estimate's).

    >>> boundary_draws({"boundary": {"A": 1.0, "k": 0.5, "b": 2.0, "draws": [[0.4, 0.1]]}})
    ([0.5, 0.0, 2.0], [[0.4, 0.1, 2.0]])
    """
    boundary = recall["boundary"]
    point = [float(boundary["k"]), math.log(float(boundary["A"])), float(boundary["b"])]
    draws = [list(d) if len(d) == 3 else [*d, point[2]] for d in boundary.get("draws") or []]
    return point, draws


def certifying_n_eff(
    recall: Mapping[str, Any],
    length: float,
    quantile: float | None = None,
    tokens_per_item: float | None = None,
) -> float:
    """N*(ℓ): the smallest N_eff whose predicted certified share reaches the whole set's
    level (:func:`whole_set_level`), from a :func:`recall_law` record; with ``quantile`` (e.g.
    0.975), that quantile of N* over the bootstrap draws instead of the point estimate.

    >>> boundary = {"A": 0.01, "k": 1.0, "b": 2.0}
    >>> round(certifying_n_eff({"boundary": boundary}, 400), 6)  # no items known: half
    4.0
    >>> round(certifying_n_eff({"boundary": boundary}, 400, tokens_per_item=4), 2)  # 100 items
    56.43
    """
    point, draws = boundary_draws(recall)
    items = _items(recall, length, tokens_per_item)
    if quantile is None or not draws:
        return math.exp(min(_log_n_star(point, length, items), 700.0))
    values = [math.exp(min(_log_n_star(d, length, items), 700.0)) for d in draws]
    return float(np.percentile(values, 100 * quantile))


def certified_length(
    recall: Mapping[str, Any],
    n_eff: float,
    tokens_per_item: float | None = None,
    draw: Sequence[float] | None = None,
) -> float:
    """ℓ*(N): the most target tokens N_eff certifies as a whole set, the set growing by one
    item per ``tokens_per_item`` tokens (else the grid's); ``draw``: one (k, ln A, b) of the
    bootstrap instead of the point estimate.

    >>> round(certified_length({"boundary": {"A": 0.01, "k": 1.0, "b": 2.0}}, 4), 6)
    400.0
    >>> round(certified_length({"boundary": {"A": 0.01, "k": 1.0, "b": 2.0}}, 56.43, 4))
    400
    """
    params = list(draw) if draw is not None else boundary_draws(recall)[0]
    target = math.log(n_eff)

    def gap(log_length: float) -> float:
        length = math.exp(log_length)
        return _log_n_star(params, length, _items(recall, length, tokens_per_item)) - target

    low, high = -50.0, 300.0  # ln N* grows with ℓ: its level only rises with the item count
    if gap(low) >= 0:
        return math.exp(low)
    if gap(high) <= 0:
        return math.exp(high)
    return math.exp(brentq(gap, low, high, xtol=1e-10))


def predicted_certified_share(recall: Mapping[str, Any], n_eff: float, length: float) -> float:
    """σ(a + b·ln N − c·ln ℓ)."""
    b = recall["boundary"]
    z = b["a"] + b["b"] * math.log(n_eff) - b["c"] * math.log(length)
    return 1.0 / (1.0 + math.exp(-z))


# --- the fit ----------------------------------------------------------------------------------


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
    errors = [point["relative_error"] for point in holdout["held_out"]]
    return {
        **{key: value for key, value in holdout.items() if key not in ("law", "held_out")},
        "median_relative_error": float(np.median(errors)),
        "held_out": [{key: point[key] for key in keep} for point in holdout["held_out"]],
    }


def _chosen_form(forms: Any, candidates: Sequence[str]) -> str:
    """The form with the lowest AIC (the first candidate when the comparison failed)."""
    if isinstance(forms, list) and forms:
        return next(row["form"] for row in forms if row["preferred"])
    return candidates[0]


def fit_sweep(
    rows: Iterable[Mapping[str, Any]],
    *,
    metadata: Mapping[str, Any],
    include_capped: bool = False,
    forms: Sequence[str] = DEFAULT_FORMS,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> SweepFit:
    """Fit the law on sweep rows: every form in ``forms`` (AIC and hold-out compared, the
    lowest AIC shipped), the recall law, and each point's memorized information.

    Rows that hit the cap (not converged, so their ΔL understates capacity) are left out of
    the ΔL law unless ``include_capped``, but not of the recall law: within the recipe's cap,
    they did not certify. The rows must hold one method. Forms that need L0 (saturating)
    are skipped when the rows lack it. A check that cannot run on this grid is recorded as
    ``{"error": ...}`` instead of failing the fit.
    """
    if not isinstance(metadata, Mapping):
        raise MemlawError(
            f"metadata must be a dict (model, data, …), got {type(metadata).__name__}"
        )
    rows = check_rows(rows)
    kept = [row for row in rows if include_capped or not row["hit_cap"]]
    excluded = len(rows) - len(kept)
    if not kept:
        raise MemlawError(
            f"all {len(rows)} sweep rows hit the cap (not converged); rerun with a larger "
            "cap, or pass --include-capped to fit them anyway"
        )
    method = single_method(kept)
    if "method" in metadata and str(metadata["method"]) != method:
        raise MemlawError(
            f"metadata says method {metadata['method']!r} but the rows hold {method!r}; "
            "pass the rows of that method or fix the metadata"
        )
    points = law_points(kept)
    # A form needs L0 (saturating) or more points than parameters to be compared at all.
    candidates = [
        f
        for f in forms
        if (f != "saturating" or all(p.base_loss is not None for p in points))
        and len(points) > MemoryLaw(f, n_bootstrap=0).n_params
    ]
    candidates = candidates or list(forms[:1])  # its fit below says what is missing
    compared = _guarded(lambda: compare_forms(points, forms=candidates))
    holdouts = {
        f: _holdout_summary(_guarded(lambda f=f: holdout_check(points, form=f))) for f in candidates
    }
    form = _chosen_form(compared, candidates)
    law = MemoryLaw(form, n_bootstrap=n_bootstrap, seed=seed).fit(points, metadata=metadata)
    # Recall is what the recipe certifies within its cap, so a point that ran out of epochs
    # uncertified is a failure the recall law must see, even when ΔL leaves it out.
    recall_points = law_points([row for row in rows if str(row["method"]) == method])
    recall = _guarded(
        lambda: recall_law(
            recall_points, n_bootstrap=n_bootstrap, seed=seed, tokens_per_item=tokens_per_item(rows)
        )
    )
    table = [_capacity_row(p) for p in points]
    law.metadata_ = {
        **law.metadata_,
        "method": method,
        "seeds": sorted({row["seed"] for row in kept}),
        "layer_counts": sorted({p.layers for p in points}),
        "include_capped": include_capped,
        "excluded_capped": excluded,
        "capped_in_fit": sum(1 for row in kept if row["hit_cap"]),
        "runs_in_fit": len(kept),
        "stops": _stop_counts(kept),
        "forms": compared,
        "holdout": holdouts[form],
        "holdouts": holdouts,
        "recall": recall,
        "capacity": table,
    }
    return SweepFit(law, compared, holdouts[form], recall, table, excluded)


def validate_law(law: MemoryLaw, rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The law against points it never saw (an off-grid sweep with the same recipe): per
    point, predicted vs measured ΔL and memorized bits, and whether the recall law's
    certifying N_eff agrees with what the run certified.

    >>> rows = [{"rank": r, "layers": 1, "n_eff": r, "length": l, "method": "sft", "seed": 0,
    ...          "delta_loss": 2.0 * r**0.35 * l**-0.45 + 0.05, "base_loss": 3.0,
    ...          "hit_cap": False, "certified_share": float(r * 200 >= l)}
    ...         for r in (1, 2, 4, 8) for l in (100, 200, 400, 800)]
    >>> law = fit_sweep(rows, metadata={}, forms=("full",), n_bootstrap=0).law
    >>> off = [dict(rows[0], rank=3, n_eff=3, length=300, certified_share=1.0,
    ...             delta_loss=2.0 * 3**0.35 * 300**-0.45 + 0.05)]
    >>> check = validate_law(law, off)
    >>> check["median_relative_error"] < 1e-3, check["points"][0]["certified"]
    (True, True)
    """
    rows = check_rows(rows)
    points = law_points(rows)
    recall = (law.metadata_ or {}).get("recall") or {}
    records = []
    for point in points:
        per_item = tokens_per_item(r for r in rows if float(r["length"]) == float(point.length))
        unit = law.capacity_of(point.rank or point.n_eff, point.layers or 1)
        predicted = float(
            law.predict(
                unit, point.length, base_loss=point.base_loss, info_baseline=point.info_baseline
            )
        )
        if point.base_loss is not None:
            predicted = min(predicted, point.base_loss)
        record = {
            **{key: getattr(point, key) for key in ("rank", "n_eff", "length", "delta_loss")},
            "predicted_delta": predicted,
            "relative_error": abs(predicted - point.delta_loss) / abs(point.delta_loss),
            "certified_share": point.certified_share,
            "certified": None if point.certified_share is None else point.certified_share >= 1.0,
        }
        if point.base_loss is not None:
            measured = capacity(point)
            guess = capacity(LawPoint(**{**point.to_dict(), "delta_loss": predicted}))
            record |= {"bits": measured["bits"], "predicted_bits": guess["bits"]}
        if has_recall_data(recall):
            record |= {
                "certifying_n_eff": held_certifying_n_eff(
                    recall, point.length, tokens_per_item=per_item
                ),
                "predicted_certified": certifies(recall, point.n_eff, point.length, per_item),
            }
        if "boundary" in recall:
            record["predicted_certified_share"] = predicted_certified_share(
                recall, point.n_eff, point.length
            )
        records.append(record)
    errors = [r["relative_error"] for r in records]
    return {
        "points": records,
        "median_relative_error": float(np.median(errors)),
        "max_relative_error": float(np.max(errors)),
    }


def _stop_counts(rows: list[Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        reason = str(row.get("stop_reason") or ("budget" if row["hit_cap"] else "plateau"))
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def _capacity_row(point: LawPoint) -> dict[str, Any]:
    row = {
        "n_eff": point.n_eff,
        "rank": point.rank,
        "layers": point.layers,
        "length": point.length,
        "delta_loss": point.delta_loss,
        "certified_share": point.certified_share,
        "exact_match": point.exact_match,
    }
    if point.base_loss is None:
        return row | {"bits": None, "bits_per_param": None}
    return row | capacity(point)


# --- from a sweep database --------------------------------------------------------------------


def sweep_metadata(spec: Any, rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """What a law records of the sweep it was fitted on: model, placement, data and its kind,
    and the training recipe, so a plan can refuse what the law was not measured on and print
    the command that realizes it."""
    from memlaw.recipe import (
        ANNEAL_FLOOR,
        MAX_BATCH,
        MIN_BATCH,
        UPDATES_PER_EPOCH,
        batch_lr,
        describe_lr,
    )

    kinds = sorted({str(row["data_kind"]) for row in rows if row.get("data_kind")})
    if spec.batch_size is None:
        batch = (
            f"batch = ⌈items / {UPDATES_PER_EPOCH}⌉ within [{MIN_BATCH}, {MAX_BATCH}] "
            "(memlaw train's default)"
        )
    else:
        batch = "whole set" if spec.batch_size == 0 else f"batch {spec.batch_size}"
    cap = f"≤ {spec.max_epochs} epochs" if spec.max_epochs else f"≤ {spec.max_steps} steps"
    stop = "stop at certified recall or plateau" if spec.stop_at_certified else "stop at plateau"
    # a fixed batch may settle the recipe's rate; else each point's rate follows its set size
    # and batch (the recipe's rule)
    lr = spec.lr
    if lr is None and spec.batch_size:
        lr = batch_lr(spec.batch_size)
    rate = describe_lr(lr)
    if spec.anneal_patience:
        wait = f"{spec.anneal_patience} epochs"
        if spec.anneal_min_updates:
            wait += f" (at least {spec.anneal_min_updates} updates)"
        rate += f" halved after {wait} without progress (to lr/{round(1 / ANNEAL_FLOOR)})"
    return {
        "model": spec.model,
        "modules": spec.modules,
        "data": spec.data,
        "data_kind": kinds[0] if len(kinds) == 1 else None,
        "lr": lr,
        "batch_size": spec.batch_size,
        "max_epochs": spec.max_epochs,
        "max_steps": None if spec.max_epochs else spec.max_steps,
        "layer_counts": list(spec.layer_counts),
        "grid": {"ranks": list(spec.ranks), "lengths": list(spec.lengths)},
        "anneal_patience": spec.anneal_patience,
        "anneal_min_updates": spec.anneal_min_updates,
        "recipe": f"{rate}, {batch}, {cap}, {stop}",
        "plateau": {
            "on": spec.plateau_on,
            "window_epochs": spec.plateau_window,
            "tolerance": spec.plateau_tolerance,
        },
    }


def fit_store(
    db: Any,
    *,
    method: str | None = None,
    include_capped: bool = False,
    n_bootstrap: int = 200,
    validate: Any = None,
) -> SweepFit:
    """Fit the law of the sweep in the database ``db`` (opened read-only): what ``memlaw fit``
    and ``memlaw report`` both run, so the same database gives the same law.

    ``validate``: a second database of off-grid points trained with the same recipe; the law's
    predictions for them (:func:`validate_law`) land in its metadata as ``validation``.
    """
    spec, rows = _read_store(db)
    if method:
        rows = [row for row in rows if row["method"] == method]
        if not rows:
            raise MemlawError(f"the sweep in {db} has no points for method '{method}'")
    if not rows:
        raise MemlawError(f"the sweep in {db} has no finished points yet; run the sweep first")
    fitted = fit_sweep(
        rows,
        metadata=sweep_metadata(spec, rows),
        include_capped=include_capped,
        n_bootstrap=n_bootstrap,
    )
    if validate is not None:
        off_spec, off_rows = _read_store(validate)
        mine, theirs = spec.shared_settings(), off_spec.shared_settings()
        if mine != theirs:
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise MemlawError(
                f"the points in {validate} were trained with other settings than the sweep in "
                f"{db} ({', '.join(differ)}): validate with points of the same recipe"
            )
        if method:
            off_rows = [row for row in off_rows if row["method"] == method]
        if not off_rows:
            raise MemlawError(f"{validate} holds no finished points to validate the law with")
        fitted.law.metadata_["validation"] = {
            "db": Path(validate).name,
            **validate_law(fitted.law, off_rows),
        }
    return fitted


def _read_store(db: Any) -> tuple[Any, list[dict[str, Any]]]:
    """A sweep database's spec and finished rows, opened read-only."""
    from memlaw.sweep import SweepStore

    store = SweepStore(db)
    try:
        return store.spec(), store.rows()
    finally:
        store.close()


def tokens_per_item(rows: Iterable[Mapping[str, Any]]) -> float | None:
    """The median ℓ per item over rows that know their item count (None: none does).

    >>> tokens_per_item([{"length": 1000, "items": 100}, {"length": 250, "items": 25}, {}])
    10.0
    """
    ratios = [float(r["length"]) / r["items"] for r in rows if r.get("items") and r.get("length")]
    return float(np.median(ratios)) if ratios else None
