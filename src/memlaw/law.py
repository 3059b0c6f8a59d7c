"""The Parametric Memory Law as an estimator: ΔL(N_eff, ℓ) = C · N_eff^α · ℓ^(−β) + b.

ΔL is the loss reduction (nats per target token) that LoRA with N_eff = rank × adapted layers
effective parameters reaches on a memory set of ℓ target tokens. :class:`MemoryLaw` fits the
law in log space with bounds, several starting points and a bootstrap over points for
confidence intervals, in the style of a scikit-learn estimator (settings in the constructor,
``fit`` returns self, fitted values end in ``_``).

>>> points = [
...     LawPoint(n, l, 2.0 * n**0.35 * l**-0.45 + 0.05)
...     for n in (1, 4, 16, 64)
...     for l in (100, 400, 1600)
... ]
>>> law = MemoryLaw(n_bootstrap=0).fit(points)
>>> round(law.C_, 3), round(law.alpha_, 3), round(law.beta_, 3), round(law.b_, 3)
(2.0, 0.35, 0.45, 0.05)
>>> round(float(law.predict(32, 800)), 4)
0.3822
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from memlaw.atomic import atomic_write_json
from memlaw.errors import MemlawError
from memlaw.information import HasCeiling

FORMS = ("full", "no-offset", "rank", "saturating")
PARAMS = ("C", "alpha", "beta", "b")
LAW_FORMAT = "memlaw.law/1"
KIND_NAMES = {"random": "random tokens", "facts": "key→value facts", "text": "text"}

# Bounds of the log-space fit. α and β are positive by definition of the law; 5 is far beyond
# any published exponent (≈0.2–0.8) yet keeps the optimizer out of overflow. C is fitted as
# log C, which keeps it positive; ±100 covers any ΔL in nats for N_eff, ℓ up to ~1e8 at
# exponents up to 5. b ≥ 0 with C > 0 keeps every prediction positive, so its log exists; an
# offset above the largest observed ΔL would predict more than every point, hence b ≤ max ΔL.
EXPONENT_BOUNDS = (1e-6, 5.0)
LOG_C_BOUNDS = (-100.0, 100.0)

# The starting grid: α and β from each of these, b at 0 and at half the smallest ΔL (the
# offset is the floor of ΔL, so it cannot be much above the smallest value seen).
START_EXPONENTS = (0.1, 0.5, 1.5)
START_OFFSET_FRACTIONS = (0.0, 0.5)

# Tight tolerances: the fit is tiny (a few parameters, tens of points), and exact recovery on
# clean data is what the tests and the doctests check.
_TOLERANCE = 1e-10


@dataclass(frozen=True)
class LawPoint(HasCeiling):
    """One measurement: ΔL (nats per target token) reached with N_eff on ℓ target tokens.

    ``rank``, ``layers`` and ``trainable_params`` are optional; the ``"rank"`` form needs
    ``rank`` and :func:`capacity` uses ``trainable_params``. ``base_loss`` (L0) and
    ``info_baseline`` (H per token, None: H = L0) make :func:`capacity` count memorized
    information ℓ · max(0, min(L0, H) − L1) and let the ``"saturating"`` form respect the
    ceiling; ``certified_share`` and ``exact_match`` feed the recall law.

    >>> LawPoint(n_eff=8, length=1000, delta_loss=0.4, rank=8, layers=1).n_eff
    8
    >>> LawPoint.from_dict({"n_eff": 8, "length": 1000, "delta_loss": 0.4, "seed": 3}).rank
    """

    n_eff: float
    length: float
    delta_loss: float
    rank: int | None = None
    layers: int | None = None
    trainable_params: int | None = None
    base_loss: float | None = None
    info_baseline: float | None = None
    certified_share: float | None = None
    exact_match: float | None = None

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> LawPoint:
        """A point from a mapping with at least ``n_eff``, ``length``, ``delta_loss``.

        Other keys (a sweep record carries many) are ignored.
        """
        missing = [name for name in ("n_eff", "length", "delta_loss") if name not in record]
        if missing:
            raise MemlawError(
                f"a law point needs n_eff, length and delta_loss; missing {', '.join(missing)} "
                f"in {dict(record)!r}"
            )
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce(points: Iterable[LawPoint | Mapping[str, Any]]) -> list[LawPoint]:
    if isinstance(points, (LawPoint, Mapping)):
        raise MemlawError("pass a list of law points, not a single point")
    out = [p if isinstance(p, LawPoint) else LawPoint.from_dict(p) for p in points]
    if not out:
        raise MemlawError("no law points given; measure ΔL on a grid of ranks × lengths first")
    return out


def _column(points: list[LawPoint], name: str) -> np.ndarray:
    """One field of every point as floats (a sweep record may hold strings or None)."""
    values = []
    for i, point in enumerate(points):
        value = getattr(point, name)
        try:
            if isinstance(value, bool):
                raise TypeError
            values.append(float(value))
        except (TypeError, ValueError):
            raise MemlawError(f"point {i} has {name}={value!r}; {name} must be a number") from None
    return np.array(values)


def _capacities(points: list[LawPoint], form: str) -> np.ndarray:
    """The capacity variable of ``form``: N_eff, or the rank for the ``"rank"`` form."""
    if form != "rank":
        return _column(points, "n_eff")
    missing = [i for i, p in enumerate(points) if p.rank is None]
    if missing:
        raise MemlawError(
            f"form 'rank' needs the rank of every point; point {missing[0]} has none "
            "(set LawPoint.rank, or use form='full' with N_eff)"
        )
    return _column(points, "rank")


def _arrays(points: list[LawPoint], form: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Capacity, length and ΔL as arrays, with capacity and length checked positive."""
    capacity = _capacities(points, form)
    length = _column(points, "length")
    delta = _column(points, "delta_loss")
    name = "rank" if form == "rank" else "n_eff"
    for label, values, hint in (
        (name, capacity, "rank × adapted layers" if name == "n_eff" else "the LoRA rank"),
        ("length", length, "the number of target tokens"),
    ):
        bad = np.flatnonzero(~np.isfinite(values) | (values <= 0))
        if bad.size:
            i = int(bad[0])
            given = getattr(points[i], label)  # as the user wrote it, not numpy's repr
            raise MemlawError(
                f"point {i} has {label}={given!r}; {label} ({hint}) must be a positive number"
            )
    bad = np.flatnonzero(~np.isfinite(delta))
    if bad.size:
        i = int(bad[0])
        raise MemlawError(
            f"point {i} has delta_loss={points[i].delta_loss!r}; ΔL must be a finite number"
        )
    return capacity, length, delta


def _r2(observed: np.ndarray, predicted: np.ndarray) -> float:
    total = float(np.sum((observed - observed.mean()) ** 2))
    if total == 0.0:
        raise MemlawError(
            f"R² needs at least two points with different ΔL, got {observed.size}; "
            "score on more points"
        )
    return 1.0 - float(np.sum((observed - predicted) ** 2)) / total


def _log_power(theta: np.ndarray, log_x: np.ndarray, log_l: np.ndarray) -> np.ndarray:
    return theta[0] + theta[1] * log_x - theta[2] * log_l


def saturating_delta(power: Any, base_loss: Any, ceiling: Any) -> Any:
    """The saturating form's ΔL: (L0 − H⁺) + H⁺ · (1 − exp(−power)), H⁺ = min(L0, H).

    The part of ΔL that is not memory (L0 − H⁺: the data's format, or un-learning the base
    model's over-confidence) comes first; the memorized part H⁺ · (1 − e^(−C·N^α·ℓ^(−β)))
    grows as the paper's power law while it is small and can never pass H⁺, so ΔL never
    passes L0 and memorized information never passes ℓ · H⁺. For β = 1 and a large ℓ the
    memorized information tends to H⁺ · C · N^α nats: a capacity that depends on N_eff only.

    >>> round(float(saturating_delta(1e9, 3.4, 2.3)), 6), round(float(saturating_delta(0.0, 3.4, 2.3)), 6)
    (3.4, 1.1)
    """
    return (
        np.asarray(base_loss)
        - np.asarray(ceiling)
        - np.asarray(ceiling) * np.expm1(-np.asarray(power))
    )


def _solve(
    log_x: np.ndarray,
    log_l: np.ndarray,
    delta: np.ndarray,
    offset: bool,
    starts: list[np.ndarray],
    saturation: tuple[np.ndarray, np.ndarray] | None = None,
) -> Any | None:
    """The best bounded least-squares fit over ``starts`` (θ = log C, α, β[, b]), or None.

    Residuals are log(prediction) − log(ΔL), so every point weighs by its relative error, as
    ΔL spans orders of magnitude across a grid. ``saturation`` (L0 and H⁺ per point) fits
    the saturating form instead of the power law.
    """
    log_y = np.log(delta)
    lower = [LOG_C_BOUNDS[0], EXPONENT_BOUNDS[0], EXPONENT_BOUNDS[0]]
    upper = [LOG_C_BOUNDS[1], EXPONENT_BOUNDS[1], EXPONENT_BOUNDS[1]]
    if offset:
        lower.append(0.0)
        upper.append(float(delta.max()))
    lower_arr, upper_arr = np.array(lower), np.array(upper)

    def residuals(theta: np.ndarray) -> np.ndarray:
        log_power = _log_power(theta, log_x, log_l)
        if saturation is not None:
            predicted = saturating_delta(np.exp(log_power), *saturation)
            return np.log(np.clip(predicted, 1e-300, None)) - log_y
        if not offset:
            return log_power - log_y
        return np.log(np.exp(log_power) + theta[3]) - log_y

    def jacobian(theta: np.ndarray) -> np.ndarray:
        power = np.exp(_log_power(theta, log_x, log_l))
        if not offset:
            share = np.ones_like(power)
            return np.column_stack([share, log_x, -log_l])
        prediction = power + theta[3]
        share = power / prediction  # d log(pred) / d log(power)
        return np.column_stack([share, share * log_x, -share * log_l, 1.0 / prediction])

    best = None
    for start in starts:
        x0 = np.clip(np.asarray(start, dtype=float), lower_arr, upper_arr)
        try:
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                result = least_squares(
                    residuals,
                    x0,
                    jac="2-point" if saturation is not None else jacobian,
                    bounds=(lower_arr, upper_arr),
                    method="trf",
                    ftol=_TOLERANCE,
                    xtol=_TOLERANCE,
                    gtol=_TOLERANCE,
                )
        except (ValueError, FloatingPointError, np.linalg.LinAlgError):
            continue  # e.g. non-finite residuals at this start: the other starts decide
        if result.status <= 0 or not np.all(np.isfinite(result.x)):
            continue
        if not np.isfinite(result.cost):
            continue
        if best is None or result.cost < best.cost:
            best = result
    return best


def _saturating_power(delta: np.ndarray, base: np.ndarray, ceiling: np.ndarray) -> np.ndarray:
    """The power C·N^α·ℓ^(−β) that the saturating form needs to reach each ΔL (clipped to the
    attainable range): where its fit starts from."""
    share = np.clip((delta - (base - ceiling)) / np.maximum(ceiling, 1e-12), 1e-6, 1 - 1e-6)
    return -np.log1p(-share)


def _start_grid(
    log_x: np.ndarray, log_l: np.ndarray, delta: np.ndarray, offset: bool
) -> list[np.ndarray]:
    """Starting points: α, β over a small grid, b over a few fractions of min ΔL, and log C
    chosen so that the start passes through the points on average."""
    starts = []
    for fraction in START_OFFSET_FRACTIONS if offset else (0.0,):
        b = fraction * float(delta.min())
        log_rest = np.log(np.clip(delta - b, 1e-300, None))
        for alpha in START_EXPONENTS:
            for beta in START_EXPONENTS:
                log_c = float(np.mean(log_rest - alpha * log_x + beta * log_l))
                log_c = min(max(log_c, LOG_C_BOUNDS[0]), LOG_C_BOUNDS[1])
                starts.append(np.array([log_c, alpha, beta, b] if offset else [log_c, alpha, beta]))
    return starts


def _describe_starts(offset: bool) -> str:
    exponents = "{" + ", ".join(f"{v:g}" for v in START_EXPONENTS) + "}"
    text = f"α ∈ {exponents}, β ∈ {exponents}"
    if offset:
        fractions = ", ".join(f"{v:g}" for v in START_OFFSET_FRACTIONS)
        text += f", b ∈ {{{fractions}}} × min ΔL"
    return text


# Bootstrap refits that must succeed before a law's intervals are trusted (below it they are
# still widened to hold the estimate, and flagged).
MIN_TRUSTED_REFITS = 20


class MemoryLaw:
    """ΔL(N_eff, ℓ) = C · N_eff^α · ℓ^(−β) + b, fitted in log space with bootstrap intervals.

    ``form``: ``"full"`` (all four parameters), ``"no-offset"`` (b fixed at 0), ``"rank"``
    (like ``"full"``, with the rank instead of N_eff as capacity variable, for grids whose
    layer counts vary; :meth:`predict` then takes a rank as first argument), or
    ``"saturating"`` (:func:`saturating_delta`: C, α, β with a ceiling at each point's
    L0 and H⁺ = min(L0, H); its points need ``base_loss``, and :meth:`predict` takes the
    memory set's L0 and H, by default the medians of the fitted points).
    ``n_bootstrap`` resamples of the points (with replacement, each refitted) give percentile
    intervals at ``confidence``; ``n_bootstrap=0`` skips them.

    After :meth:`fit`: ``C_``, ``alpha_``, ``beta_``, ``b_``, ``intervals_`` (name → (low,
    high)), ``r2_`` (R² of ΔL on the fitted points), ``r2_log_`` (R² of log ΔL),
    ``rss_log_`` (log-space residual sum of squares), ``n_points_``, ``dropped_`` (points
    left out for ΔL ≤ 0, which have no logarithm), ``points_`` and ``metadata_``.

    >>> points = [
    ...     LawPoint(r, l, 1.5 * r**0.3 * l**-0.5, rank=r, layers=1)
    ...     for r in (1, 8, 64)
    ...     for l in (100, 1000)
    ... ]
    >>> law = MemoryLaw("no-offset", n_bootstrap=20, seed=0).fit(points, metadata={"model": "x"})
    >>> round(law.alpha_, 3), law.b_, round(law.r2_, 6), law.n_points_
    (0.3, 0.0, 1.0, 6)
    >>> sorted(law.intervals_)
    ['C', 'alpha', 'b', 'beta']
    """

    def __init__(
        self,
        form: str = "full",
        *,
        n_bootstrap: int = 200,
        seed: int | None = 0,
        confidence: float = 0.95,
    ) -> None:
        if form not in FORMS:
            raise MemlawError(f"unknown law form {form!r}; choose one of {', '.join(FORMS)}")
        if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 0:
            raise MemlawError(f"n_bootstrap must be a whole number ≥ 0, got {n_bootstrap!r}")
        if not 0.0 < confidence < 1.0:
            raise MemlawError(f"confidence must be within (0, 1), e.g. 0.95, got {confidence!r}")
        self.form = form
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        self.confidence = confidence

    def __repr__(self) -> str:
        return (
            f"MemoryLaw(form={self.form!r}, n_bootstrap={self.n_bootstrap}, "
            f"seed={self.seed!r}, confidence={self.confidence})"
        )

    @property
    def offset(self) -> bool:
        """Whether the form fits b (``"no-offset"`` and ``"saturating"`` have none)."""
        return self.form in ("full", "rank")

    @property
    def capacity_variable(self) -> str:
        """``rank`` for form ``"rank"``, else ``n_eff``: what :meth:`predict` takes first."""
        return "rank" if self.form == "rank" else "n_eff"

    def capacity_of(self, rank: Any, layers: Any = 1) -> Any:
        """The law's capacity variable for a LoRA of ``rank`` on ``layers`` layers.

        >>> MemoryLaw("rank").capacity_of(4, 2), MemoryLaw().capacity_of(4, 2)
        (4, 8)
        """
        return (
            rank
            if self.form == "rank"
            else np.asarray(rank) * layers
            if np.ndim(rank)
            else rank * layers
        )

    @property
    def n_params(self) -> int:
        """The number of fitted parameters: 4, or 3 with b fixed at 0."""
        return 4 if self.offset else 3

    # --- fitting ---------------------------------------------------------------------------

    def fit(
        self,
        points: Iterable[LawPoint | Mapping[str, Any]],
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> MemoryLaw:
        """Fit the law to ``points`` and return self.

        ``metadata`` (model name, modules, layers, method, data kind, grid, …) travels with
        the law into :meth:`to_dict` and :meth:`save`; it must be JSON-serializable.
        """
        metadata = dict(metadata or {})
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as error:
            raise MemlawError(
                f"law metadata must be JSON-serializable (strings, numbers, lists, dicts): {error}"
            ) from None
        all_points = _coerce(points)
        capacity, length, delta = _arrays(all_points, self.form)
        keep = delta > 0
        dropped = int((~keep).sum())
        if not keep.any():
            raise MemlawError(
                f"every point has ΔL ≤ 0 ({len(all_points)} points); the law needs loss "
                "reductions > 0 — train longer or check that L1 is measured after training"
            )
        points_kept = [p for p, k in zip(all_points, keep, strict=True) if k]
        capacity, length, delta = capacity[keep], length[keep], delta[keep]
        needed = self.n_params + 1
        if delta.size < needed:
            note = f" ({dropped} dropped for ΔL ≤ 0)" if dropped else ""
            hint = "" if self.form == "no-offset" else " or use form='no-offset'"
            raise MemlawError(
                f"form {self.form!r} has {self.n_params} parameters and needs at least {needed} "
                f"points with ΔL > 0, got {delta.size}{note}; add grid points (ranks × lengths)"
                f"{hint}"
            )
        name = "rank" if self.form == "rank" else "N_eff"
        if np.unique(capacity).size < 2:
            raise MemlawError(
                f"all points share one {name} ({capacity[0]:g}), so α cannot be estimated; "
                "measure at least two ranks"
            )
        if np.unique(length).size < 2:
            raise MemlawError(
                f"all points share one length ({length[0]:g}), so β cannot be estimated; "
                "measure at least two lengths"
            )

        log_x, log_l = np.log(capacity), np.log(length)
        saturation = self._saturation(points_kept)
        target = delta if saturation is None else _saturating_power(delta, *saturation)
        starts = _start_grid(log_x, log_l, target, self.offset)
        best = _solve(log_x, log_l, delta, self.offset, starts, saturation)
        if best is None:
            raise MemlawError(
                f"the law (form {self.form!r}) did not converge from any of {len(starts)} "
                f"starting points ({_describe_starts(self.offset)}); check that ΔL grows with "
                f"{name} and falls with length"
                + (", or try form='no-offset'" if self.offset else "")
            )
        theta = best.x
        self._set_params(theta)
        self.n_points_ = int(delta.size)
        self.dropped_ = dropped
        self.points_ = points_kept
        self.metadata_ = metadata
        if saturation is not None:  # the memory set a plan assumes unless told its own
            self.base_loss_ = float(np.median(saturation[0]))
            self.ceiling_ = float(np.median(saturation[1]))
        predicted = self._predict_arrays(capacity, length, saturation)
        self.rss_log_ = float(np.sum((np.log(predicted) - np.log(delta)) ** 2))
        self.r2_ = _r2(delta, predicted)
        self.r2_log_ = _r2(np.log(delta), np.log(predicted))
        self._bootstrap(log_x, log_l, delta, theta, saturation)
        return self

    def _saturation(self, points: list[LawPoint]) -> tuple[np.ndarray, np.ndarray] | None:
        """L0 and H⁺ per point for the saturating form (None for the power-law forms)."""
        if self.form != "saturating":
            return None
        missing = [i for i, p in enumerate(points) if p.base_loss is None]
        if missing:
            raise MemlawError(
                f"form 'saturating' needs the base loss L0 of every point; point {missing[0]} "
                "has none (set LawPoint.base_loss, or use form='full')"
            )
        return _column(points, "base_loss"), np.array([p.ceiling for p in points])

    def _set_params(self, theta: np.ndarray) -> None:
        self.C_ = float(math.exp(theta[0]))
        self.alpha_ = float(theta[1])
        self.beta_ = float(theta[2])
        self.b_ = float(theta[3]) if self.offset else 0.0

    def _bootstrap(
        self,
        log_x: np.ndarray,
        log_l: np.ndarray,
        delta: np.ndarray,
        theta: np.ndarray,
        saturation: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Percentile intervals from refits on points resampled with replacement."""
        self.intervals_: dict[str, tuple[float, float]] = {}
        self.bootstrap_params_ = np.empty((0, 4))
        self.n_bootstrap_ok_ = 0
        if self.n_bootstrap == 0:
            return
        rng = np.random.default_rng(self.seed)
        # Start each refit at the point estimate (close to the answer, so fast), and for the
        # offset forms also with b = 0, where resamples without the low-ΔL points may land.
        starts = [theta]
        if self.offset:
            starts.append(np.concatenate([theta[:3], [0.0]]))
        n = delta.size
        rows = []
        for _ in range(self.n_bootstrap):
            pick = rng.integers(0, n, size=n)
            # A resample with too few distinct points, ranks or lengths cannot identify the law.
            if (
                np.unique(pick).size <= self.n_params
                or np.unique(log_x[pick]).size < 2
                or np.unique(log_l[pick]).size < 2
            ):
                continue
            picked = None if saturation is None else (saturation[0][pick], saturation[1][pick])
            result = _solve(log_x[pick], log_l[pick], delta[pick], self.offset, starts, picked)
            if result is None:
                continue
            x = result.x
            rows.append([math.exp(x[0]), x[1], x[2], x[3] if self.offset else 0.0])
        self.n_bootstrap_ok_ = len(rows)
        if not rows:
            warnings.warn(
                f"no bootstrap refit out of {self.n_bootstrap} succeeded; the law has no "
                "intervals — add points to the grid",
                stacklevel=3,
            )
            return
        if not self.intervals_trusted_:
            warnings.warn(
                f"only {len(rows)} of {self.n_bootstrap} bootstrap refits succeeded; the "
                f"intervals cannot be trusted (they need at least {MIN_TRUSTED_REFITS} and half "
                "of the resamples) — add points to the grid or raise n_bootstrap",
                stacklevel=3,
            )
        self.bootstrap_params_ = np.array(rows)
        tail = 100.0 * (1.0 - self.confidence) / 2.0
        low = np.percentile(self.bootstrap_params_, tail, axis=0)
        high = np.percentile(self.bootstrap_params_, 100.0 - tail, axis=0)
        # A percentile interval of a skewed (or small) bootstrap can miss the estimate itself;
        # widen it to hold the estimate, so that an interval never contradicts its value.
        estimate = [math.exp(theta[0]), theta[1], theta[2], theta[3] if self.offset else 0.0]
        self.intervals_ = {
            name: (float(min(lo, est)), float(max(hi, est)))
            for name, lo, hi, est in zip(PARAMS, low, high, estimate, strict=True)
        }

    # --- using a fitted law ----------------------------------------------------------------

    @property
    def intervals_trusted_(self) -> bool:
        """Whether enough bootstrap refits succeeded for the intervals to mean anything: few
        refits give percentile "intervals" from a handful of values. Derived from the counts,
        so a law read back from JSON says the same as when it was fitted."""
        ok = getattr(self, "n_bootstrap_ok_", None)
        return ok is not None and ok > 0 and ok >= max(MIN_TRUSTED_REFITS, self.n_bootstrap / 2)

    def _check_fitted(self) -> None:
        if not hasattr(self, "alpha_"):
            raise MemlawError(
                "this MemoryLaw is not fitted yet; call fit(points) or MemoryLaw.load(path)"
            )

    def _predict_arrays(
        self,
        capacity: np.ndarray,
        length: np.ndarray,
        saturation: tuple[Any, Any] | None = None,
    ) -> np.ndarray:
        power = self.C_ * capacity**self.alpha_ * length ** (-self.beta_)
        if self.form != "saturating":
            return power + self.b_
        base, ceiling = saturation or (self.base_loss_, self.ceiling_)
        return saturating_delta(power, base, ceiling)

    def predict(
        self,
        n_eff: Any,
        length: Any,
        *,
        base_loss: float | None = None,
        info_baseline: float | None = None,
    ) -> np.ndarray:
        """Predicted ΔL (nats per target token) for N_eff (the rank for form ``"rank"``)
        and ℓ target tokens; scalars or arrays, broadcast together.

        The saturating form needs the memory set's L0 (``base_loss``) and H
        (``info_baseline``, None: H = L0); without ``base_loss`` it assumes the median L0
        and H⁺ of the points it was fitted on.

        >>> law = MemoryLaw.from_dict(
        ...     {"format": "memlaw.law/1", "form": "full",
        ...      "params": {"C": 2.0, "alpha": 0.5, "beta": 0.5, "b": 0.0}}
        ... )
        >>> law.predict([1, 4], 100).tolist()
        [0.2, 0.4]
        """
        self._check_fitted()
        capacity = np.asarray(n_eff, dtype=float)
        tokens = np.asarray(length, dtype=float)
        for label, values in (("n_eff", capacity), ("length", tokens)):
            if not np.all(np.isfinite(values)) or np.any(values <= 0):
                raise MemlawError(f"predict needs positive {label} values, got {values.tolist()}")
        saturation = None
        if self.form == "saturating" and base_loss is not None:
            ceiling = base_loss if info_baseline is None else min(base_loss, info_baseline)
            saturation = (float(base_loss), float(ceiling))
        try:
            return np.asarray(self._predict_arrays(capacity, tokens, saturation))
        except ValueError as error:
            raise MemlawError(
                f"n_eff and length must broadcast together, got shapes {capacity.shape} and "
                f"{tokens.shape}"
            ) from error

    def score(self, points: Iterable[LawPoint | Mapping[str, Any]]) -> float:
        """R² of ΔL in linear space on ``points`` (all of them, ΔL ≤ 0 included).

        On the fitted points (when none was dropped) this equals ``r2_``.
        """
        self._check_fitted()
        points = _coerce(points)
        capacity, length, delta = _arrays(points, self.form)
        return _r2(delta, self._predict_arrays(capacity, length, self._saturation(points)))

    # --- persistence -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record: form, settings, parameters, intervals, R², metadata, points."""
        self._check_fitted()
        return {
            "format": LAW_FORMAT,
            "form": self.form,
            "settings": {
                "n_bootstrap": self.n_bootstrap,
                "seed": self.seed,
                "confidence": self.confidence,
            },
            "params": {
                "C": self.C_,
                "alpha": self.alpha_,
                "beta": self.beta_,
                "b": self.b_,
            },
            "intervals": {
                name: list(pair) for name, pair in getattr(self, "intervals_", {}).items()
            },
            "r2": getattr(self, "r2_", None),
            "r2_log": getattr(self, "r2_log_", None),
            "rss_log": getattr(self, "rss_log_", None),
            "n_points": getattr(self, "n_points_", None),
            "dropped": getattr(self, "dropped_", 0),
            "bootstrap_ok": getattr(self, "n_bootstrap_ok_", None),
            "reference_set": (
                {"base_loss": self.base_loss_, "ceiling": self.ceiling_}
                if self.form == "saturating"
                else None
            ),
            "metadata": dict(getattr(self, "metadata_", {})),
            "points": [p.to_dict() for p in getattr(self, "points_", [])],
        }

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> MemoryLaw:
        """A fitted law from :meth:`to_dict`'s record; only format, form and params are required.

        >>> record = {"format": "memlaw.law/1", "form": "no-offset",
        ...           "params": {"C": 1.0, "alpha": 0.3, "beta": 0.4, "b": 0.0}}
        >>> MemoryLaw.from_dict(record).alpha_
        0.3
        """
        read = _LawReader()
        if not isinstance(payload, Mapping):
            raise read.malformed(f"expected an object, got {type(payload).__name__}")
        if payload.get("format") != LAW_FORMAT:
            raise read.malformed(f"format is {payload.get('format')!r}, expected {LAW_FORMAT!r}")
        form = payload.get("form")
        if form not in FORMS:
            raise read.malformed(f"form is {form!r}, expected one of {', '.join(FORMS)}")
        settings = read.mapping(payload, "settings")
        try:
            law = cls(
                form,
                n_bootstrap=settings.get("n_bootstrap", 0),
                seed=settings.get("seed"),
                confidence=settings.get("confidence", 0.95),
            )
        except MemlawError as error:
            raise read.malformed(f"bad settings ({error})") from None
        read.params(law, payload)
        read.intervals(law, payload)
        read.fit_record(law, payload)
        return law

    # --- what the law was measured on --------------------------------------------------------

    def check_applies(
        self,
        *,
        model: str | None = None,
        modules: str | None = None,
        data_kind: str | None = None,
        force: bool = False,
    ) -> list[str]:
        """Refuse a use the law was not measured for: another model, other adapted modules, or
        data of another kind (random tokens, key→value facts, text). None: not checked.
        With ``force`` the refusals come back as warnings instead.

        >>> law = MemoryLaw.from_dict({"format": "memlaw.law/1", "form": "no-offset",
        ...     "params": {"C": 1.0, "alpha": 0.3, "beta": 0.4, "b": 0.0},
        ...     "metadata": {"model": "tiny", "modules": "mlp", "data_kind": "facts"}})
        >>> law.check_applies(model="tiny", modules="gate_proj,up_proj,down_proj")
        []
        >>> law.check_applies(data_kind="text", force=True)[0][:40]
        'the law was measured on key→value facts,'
        """
        from memlaw.adapters import module_names

        meta = dict(getattr(self, "metadata_", None) or {})
        problems = []
        fitted_model = meta.get("model")
        if model is not None and fitted_model is not None and str(fitted_model) != str(model):
            problems.append(
                f"the law was fitted for model {fitted_model}, not {model}: fit one for {model} "
                "with memlaw sweep and memlaw fit, or pass its --law"
            )
        fitted_modules = meta.get("modules")
        if modules is not None and fitted_modules is not None:
            if set(module_names(modules)) != set(module_names(str(fitted_modules))):
                problems.append(
                    f"the law was fitted for LoRA on {fitted_modules}, not {modules}: fit one "
                    f"with memlaw sweep --modules {modules} and memlaw fit, or pass its --law"
                )
        kind = meta.get("data_kind")
        if data_kind is not None and kind is not None and data_kind != kind:
            problems.append(
                f"the law was measured on {KIND_NAMES.get(kind, kind)}, and this data is "
                f"{KIND_NAMES.get(data_kind, data_kind)}: fit a law on data of this kind "
                "(memlaw sweep --data FILE, memlaw fit), or pass --force to plan anyway"
            )
        if problems and not force:
            raise MemlawError(problems[0])
        return problems

    def describe(self) -> str:
        """One line saying what the law was measured on, from its metadata.

        >>> MemoryLaw.from_dict({"format": "memlaw.law/1", "form": "no-offset",
        ...     "params": {"C": 1.0, "alpha": 0.3, "beta": 0.4, "b": 0.0},
        ...     "metadata": {"model": "tiny", "modules": "mlp", "method": "sft",
        ...                  "data_kind": "facts", "recipe": "AdamW lr 0.01, batch 16"}}).describe()
        'tiny · LoRA on mlp · sft · key→value facts · AdamW lr 0.01, batch 16 · form no-offset'
        """
        meta = dict(getattr(self, "metadata_", {}) or {})
        parts = [str(meta.get("model", "unknown model"))]
        if meta.get("modules"):
            counts = meta.get("layer_counts") or [1]
            layers = "" if list(counts) == [1] else f" of {'/'.join(map(str, counts))} layers"
            parts.append(f"LoRA on {meta['modules']}{layers}")
        if meta.get("method"):
            parts.append(str(meta["method"]))
        if meta.get("data_kind"):
            parts.append(KIND_NAMES.get(meta["data_kind"], str(meta["data_kind"])))
        elif meta.get("data"):
            parts.append(f"{meta['data']} data")
        if meta.get("recipe"):
            parts.append(str(meta["recipe"]))
        elif meta.get("lr"):
            parts.append(
                f"lr {meta['lr']:g}"
                + (f", ≤ {meta['max_steps']} steps" if meta.get("max_steps") else "")
            )
        parts.append(f"form {self.form}")
        if getattr(self, "n_points_", None):
            parts.append(f"{self.n_points_} points")
        if getattr(self, "r2_", None) is not None:
            parts.append(f"R² {self.r2_:.3f}")
        return " · ".join(parts)

    def save(self, path: str | Path) -> Path:
        """Write the law as JSON (atomically) and return the path."""
        path = Path(path)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> MemoryLaw:
        """Read a law written by :meth:`save`."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MemlawError(f"no law file at {path}; fit one and save it first") from None
        except OSError as error:
            raise MemlawError(f"cannot read the law file {path}: {error.strerror}") from None
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as error:
            raise MemlawError(
                f"malformed law JSON in {path}: not JSON ({error.msg} at line {error.lineno}); "
                f"write it with MemoryLaw.save (format {LAW_FORMAT})"
            ) from None
        try:
            return cls.from_dict(payload)
        except MemlawError as error:
            raise MemlawError(f"{path}: {error}") from None


class _LawReader:
    """Reads a law record field by field; every problem is one ``malformed law JSON`` line."""

    def malformed(self, problem: str) -> MemlawError:
        return MemlawError(
            f"malformed law JSON: {problem}; write it with MemoryLaw.save (format {LAW_FORMAT})"
        )

    def number(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.malformed(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise self.malformed(f"{where} must be finite, got {value!r}")
        return float(value)

    def mapping(self, payload: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = payload.get(key, {})
        if not isinstance(value, Mapping):
            raise self.malformed(f"{key} must be an object")
        return value

    def params(self, law: MemoryLaw, payload: Mapping[str, Any]) -> None:
        params = payload.get("params")
        if not isinstance(params, Mapping):
            raise self.malformed("params must be an object with C, alpha, beta, b")
        missing = [name for name in PARAMS if name not in params]
        if missing:
            raise self.malformed(f"params lack {', '.join(missing)}")
        values = {name: self.number(params[name], f"params.{name}") for name in PARAMS}
        if values["C"] <= 0 or values["alpha"] <= 0 or values["beta"] <= 0 or values["b"] < 0:
            raise self.malformed(f"params need C, alpha, beta > 0 and b ≥ 0, got {values}")
        if law.form in ("no-offset", "saturating") and values["b"] != 0:
            raise self.malformed(f"form {law.form!r} needs b = 0, got {values['b']}")
        law.C_, law.alpha_, law.beta_, law.b_ = (values[name] for name in PARAMS)
        if law.form == "saturating":
            reference = payload.get("reference_set")
            if not isinstance(reference, Mapping):
                raise self.malformed(
                    "form 'saturating' needs reference_set with base_loss, ceiling"
                )
            law.base_loss_ = self.number(reference.get("base_loss"), "reference_set.base_loss")
            law.ceiling_ = self.number(reference.get("ceiling"), "reference_set.ceiling")

    def intervals(self, law: MemoryLaw, payload: Mapping[str, Any]) -> None:
        if not isinstance(payload.get("intervals", {}), Mapping):
            raise self.malformed("intervals must be an object of name → [low, high]")
        law.intervals_ = {}
        for name, pair in payload.get("intervals", {}).items():
            if name not in PARAMS or not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise self.malformed(
                    f"intervals.{name} must be [low, high] for one of C, alpha, beta, b"
                )
            law.intervals_[name] = (
                self.number(pair[0], f"intervals.{name}[0]"),
                self.number(pair[1], f"intervals.{name}[1]"),
            )

    def fit_record(self, law: MemoryLaw, payload: Mapping[str, Any]) -> None:
        """R², counts, metadata and the fitted points."""
        for key, attribute in (("r2", "r2_"), ("r2_log", "r2_log_"), ("rss_log", "rss_log_")):
            value = payload.get(key)
            setattr(law, attribute, None if value is None else self.number(value, key))
        n_points = payload.get("n_points")
        law.n_points_ = None if n_points is None else int(self.number(n_points, "n_points"))
        law.dropped_ = int(self.number(payload.get("dropped", 0), "dropped"))
        ok = payload.get("bootstrap_ok")  # absent from laws saved before it was recorded
        law.n_bootstrap_ok_ = None if ok is None else int(self.number(ok, "bootstrap_ok"))
        law.metadata_ = dict(self.mapping(payload, "metadata"))
        points = payload.get("points", [])
        if not isinstance(points, list) or not all(isinstance(p, Mapping) for p in points):
            raise self.malformed("points must be a list of objects")
        try:
            law.points_ = [LawPoint.from_dict(p) for p in points]
        except (MemlawError, TypeError) as error:
            raise self.malformed(f"bad point ({error})") from None


# --- checks around the law ------------------------------------------------------------------


def compare_forms(
    points: Iterable[LawPoint | Mapping[str, Any]],
    *,
    forms: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """Fit each form and compare them by AIC; the lowest AIC is ``preferred``.

    AIC = n · ln(RSS / n) + 2k with the log-space residual sum of squares (the quantity the fit
    minimizes) and k fitted parameters. By default the forms are ``"full"``, ``"no-offset"``
    and, when every point has a rank, ``"rank"``. Fits skip the bootstrap.

    >>> points = [LawPoint(n, l, n**0.4 * l**-0.5) for n in (1, 4, 16) for l in (100, 1000)]
    >>> [(row["form"], row["n_params"]) for row in compare_forms(points)]
    [('full', 4), ('no-offset', 3)]
    """
    points = _coerce(points)
    if forms is None:
        forms = (
            ["full", "no-offset"]
            + (["rank"] if all(p.rank is not None for p in points) else [])
            + (["saturating"] if all(p.base_loss is not None for p in points) else [])
        )
    rows = []
    for form in forms:
        law = MemoryLaw(form, n_bootstrap=0).fit(points)
        n, rss = law.n_points_, max(law.rss_log_, np.finfo(float).tiny)
        rows.append(
            {
                "form": form,
                "n_params": law.n_params,
                "n_points": n,
                "r2": law.r2_,
                "r2_log": law.r2_log_,
                "rss_log": law.rss_log_,
                "aic": n * math.log(rss / n) + 2 * law.n_params,
                "params": law.to_dict()["params"],
            }
        )
    if not rows:
        raise MemlawError("no forms to compare; pass forms=('full', 'no-offset')")
    best = min(row["aic"] for row in rows)
    for row in rows:
        row["delta_aic"] = row["aic"] - best
        row["preferred"] = False
    # Ties (e.g. "rank" and "full" with one layer count) go to the first form listed.
    next(row for row in rows if row["aic"] == best)["preferred"] = True
    return rows


def holdout_check(
    points: Iterable[LawPoint | Mapping[str, Any]],
    *,
    form: str = "full",
) -> dict[str, Any]:
    """Fit on the smaller capacities and lengths, then predict the held-out edge of the grid.

    The points at the largest N_eff (rank for form ``"rank"``) or the largest ℓ are held
    out; the law is fitted on the rest and its relative errors |pred − ΔL| / ΔL on the held-out
    points are reported (held-out points with ΔL ≤ 0 are skipped and counted), so the check
    is an extrapolation in both directions.

    >>> points = [LawPoint(n, l, n**0.4 * l**-0.5 + 0.01) for n in (1, 4, 16, 64)
    ...           for l in (100, 300, 1000, 3000)]
    >>> report = holdout_check(points)
    >>> report["n_fit"], report["n_held_out"], report["max_relative_error"] < 1e-4
    (9, 7, True)
    """
    points = _coerce(points)
    capacity, length, delta = _arrays(points, form)
    held = (capacity == capacity.max()) | (length == length.max())
    train = [p for p, h in zip(points, held, strict=True) if not h]
    try:
        law = MemoryLaw(form, n_bootstrap=0).fit(train)
    except MemlawError as error:
        raise MemlawError(
            f"holdout check: fitting the {len(train)} points below the largest capacity and "
            f"length failed: {error}"
        ) from None
    records, skipped = [], 0
    for i in np.flatnonzero(held):
        if delta[i] <= 0:
            skipped += 1
            continue
        own = None if form != "saturating" else (points[i].base_loss, points[i].ceiling)
        predicted = float(law._predict_arrays(capacity[i], length[i], own))
        error = abs(predicted - delta[i]) / delta[i]
        records.append(
            {**points[i].to_dict(), "predicted": predicted, "relative_error": float(error)}
        )
    if not records:
        raise MemlawError(
            "holdout check: no held-out point has ΔL > 0; add points at the largest rank and length"
        )
    errors = np.array([r["relative_error"] for r in records])
    return {
        "form": form,
        "n_fit": len(train),
        "n_held_out": len(records),
        "skipped": skipped,
        "held_out": records,
        "mean_relative_error": float(errors.mean()),
        "max_relative_error": float(errors.max()),
        "law": law.to_dict(),
    }


def capacity(
    point: LawPoint | Mapping[str, Any], trainable_params: int | None = None
) -> dict[str, Any]:
    """Memorized information ℓ · max(0, min(L0, H) − L1) in nats and bits, and bits per
    trainable parameter (memlaw.information). ΔL · ℓ is not capacity: the part of ΔL above
    L0 − min(L0, H) is the adapter learning the data's format or un-learning over-confidence.

    Needs the point's ``base_loss`` (L0); ``info_baseline`` None means H = L0. Compare bits per
    parameter with ≈3.6 for GPT-style models trained from scratch on random data.
    ``trainable_params`` defaults to the point's own; without either it is None.

    >>> point = LawPoint(n_eff=8, length=1000, delta_loss=3.0, base_loss=3.3,
    ...                  info_baseline=math.log(10))
    >>> info = capacity(point, 500)   # L1 = 0.3: (ln 10 − 0.3) nats per token are memory
    >>> round(info["bits"], 1), round(info["bits_per_param"], 3), round(info["delta_l_bits"], 1)
    (2889.1, 5.778, 4328.1)
    >>> capacity(LawPoint(8, 1000, 2.0, base_loss=13.0, info_baseline=10.8))["bits"]
    0.0
    """
    from memlaw.information import memorized_nats

    point = point if isinstance(point, LawPoint) else LawPoint.from_dict(point)
    count = trainable_params if trainable_params is not None else point.trainable_params
    if count is not None and (isinstance(count, bool) or count <= 0):
        raise MemlawError(f"trainable_params must be a positive count, got {count!r}")
    if not (math.isfinite(point.length) and point.length > 0):
        raise MemlawError(
            f"length must be a positive number of target tokens, got {point.length!r}"
        )
    if point.base_loss is None:
        raise MemlawError(
            "memorized information needs the base loss L0 of the point (LawPoint.base_loss); "
            "ΔL · ℓ alone is not capacity"
        )
    final_loss = float(point.base_loss) - float(point.delta_loss)
    nats = memorized_nats(point.length, float(point.base_loss), final_loss, point.info_baseline)
    bits = nats / math.log(2)
    return {
        "nats": nats,
        "bits": bits,
        "trainable_params": count,
        "bits_per_param": None if count is None else bits / count,
        "delta_l_bits": float(point.delta_loss) * float(point.length) / math.log(2),
    }


# Laws shipped with memlaw (src/memlaw/laws/, see laws/README.md): the default law per
# built-in model.
REFERENCE_LAWS = {"smollm2-135m": "smollm2-135m.json"}


def reference_law_path(model: str) -> Path:
    """The law shipped with memlaw for a built-in model.

    >>> reference_law_path("smollm2-135m").name
    'smollm2-135m.json'
    """
    if model not in REFERENCE_LAWS:
        raise MemlawError(
            f"memlaw ships no law for '{model}': pass --law (fit one with memlaw sweep + memlaw fit)"
        )
    return Path(__file__).parent / "laws" / REFERENCE_LAWS[model]
