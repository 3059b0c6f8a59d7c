"""Plan a LoRA rank from a fitted law instead of by trial and error.

:func:`plan` answers a user's two questions about a memory set, from a law that
:func:`memlaw.fit.fit_sweep` fitted and saved:

- *What is the smallest rank that certifies this set?* From the law's recall boundary
  N*(ℓ) = A · ℓ^k (with its 95% interval): every target token p > 0.5, so greedy decoding
  reproduces every item.
- *How much can this rank hold?* The most target tokens that rank certifies, ℓ*(N), and the
  memorized information it is predicted to store on this set.
- *Which method?* The law's own at a rank that certifies the set; SFT at a rank the set is
  past the capacity of, where no MemFT variant certified more (:data:`AT_CAPACITY_METHOD`),
  with a note that MemFT-SW on the paper's 700 epochs gets more items exactly right by greedy
  decoding there (:data:`AT_CAPACITY_EXACT`), certifying no more.

Both come with ΔL and memorized bits per rank. A plan for data of another kind, another model
or other adapted modules than the law was measured on is refused (``force`` turns the refusal
into a note). A law without recall data plans no certifying rank.

>>> from memlaw.law import LawPoint
>>> points = [LawPoint(n, l, float(saturating_delta(900 * n**0.6 / l, 3.4, 2.3)), base_loss=3.4,
...                    info_baseline=2.3, certified_share=float(n * 250 >= l))
...           for n in (1, 2, 4, 8) for l in (250, 500, 1000, 2000)]
>>> law = MemoryLaw("saturating", n_bootstrap=0).fit(points, metadata={"data_kind": "facts"})
>>> law.metadata_["recall"] = recall_law(points, n_bootstrap=0)
>>> result = plan(law, MemorySet(length=1000, base_loss=3.4, info_baseline=2.3, kind="facts"))
>>> result.certifying_rank, result.certifying_rank_range  # no bootstrap: no interval width
(3, (3, 3))
>>> result.method  # trained as the law was measured
'sft'
>>> plan(law, result.memory, current_rank=1).method  # past rank 1's capacity
'sft'
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from memlaw.errors import MemlawError
from memlaw.fit import (
    N_EFF_SLACK,
    boundary_draws,
    certified_length,
    certifies,
    certifying_n_eff,
    has_recall_data,
    held_certified_length,
    held_certifying_n_eff,
    measured_limits,
    predicted_certified_share,
    recall_law,  # noqa: F401 (the doctest's)
)
from memlaw.information import HasCeiling
from memlaw.law import MemoryLaw, saturating_delta  # noqa: F401 (the doctest's)
from memlaw.recipe import ANNEAL_MIN_UPDATES, ANNEAL_PATIENCE

DEFAULT_RANKS = tuple(2**i for i in range(7))  # 1, 2, 4, …, 64
# The method to train a rank that cannot hold the set: past capacity no MemFT variant
# certified more items than SFT (bench/memft_at_capacity.py, docs/benchmarks.md).
AT_CAPACITY_METHOD = "sft"
AT_CAPACITY_EVIDENCE = (
    "measured on smollm2-135m, PhoneBook, rank 1 on 2,000 tokens, 3 seeds to plateau: "
    "sft certified 28% of items, memft 30% (ahead on 2 seeds, behind on 1), sft-cap 26%, "
    "memft-soft 6%, memft-ot-all 3%, memft-sw 2%, memft-ot 2%"
)
# Exact recall is another matter: with the paper's longer schedule MemFT-SW reproduces more
# items under greedy decoding than SFT while certifying no more, so a user who needs the most
# items right (not the p > 0.5 guarantee) is told so.
AT_CAPACITY_EXACT = "--method memft-sw --epochs 700"
AT_CAPACITY_EXACT_EVIDENCE = (
    "same set, 700-epoch cap, 3 seeds: 84% of items exact (78–88.5%) against sft's 62% "
    "(42.5–72.5%), while certifying 23% against 30%"
)


@dataclass(frozen=True)
class MemorySet(HasCeiling):
    """What a plan needs to know of the user's data: ℓ, and when measured, L0, the
    information baseline H (None: H = L0), the data kind and the number of items."""

    length: float
    base_loss: float | None = None
    info_baseline: float | None = None
    kind: str | None = None
    items: int | None = None


@dataclass
class PlanResult:
    """What :func:`plan` predicts for one memory set.

    ``rows``: per rank, ``rank``, ``n_eff``, ``predicted_delta`` (ΔL, nats per token, never
    above L0), ``predicted_final`` (L1), ``memorized_bits`` (ℓ · max(0, min(L0, H) − L1) in
    bits), ``bits_per_param``, ``certified_share`` (the recall law's), ``certifies`` and
    ``extrapolated``. ``certifying_rank`` is the smallest rank whose N_eff reaches N*(ℓ),
    ``certifying_rank_range`` the ranks at N*'s 95% interval; ``holds`` answers "how much can
    this rank hold" for ``current`` (or the certifying rank); ``method`` is the method to
    train that rank with: the law's own where it certifies the set, :data:`AT_CAPACITY_METHOD`
    where the set is past its capacity (None: no recall data to tell).
    """

    memory: MemorySet
    layers: int
    law: str
    rows: list[dict[str, Any]]
    certifying_n_eff: float | None
    certifying_rank: int | None
    certifying_rank_range: tuple[int, int] | None
    holds: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    method: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)

    def table(self) -> list[dict[str, str]]:
        """The per-rank rows as text (column → value), the notable ranks marked."""
        current = None if self.holds is None else self.holds["rank"]

        def number(value: float | None, spec: str) -> str:
            return "—" if value is None else format(value, spec)

        table = []
        for row in self.rows:
            marks = [
                mark
                for mark, on in (
                    ("smallest certifying", row["rank"] == self.certifying_rank),
                    ("asked", row["rank"] == current and current != self.certifying_rank),
                    ("extrapolated", row["extrapolated"]),
                )
                if on
            ]
            share = row["certified_share"]
            table.append(
                {
                    "rank": str(row["rank"]),
                    "N_eff": str(row["n_eff"]),
                    "ΔL": number(row["predicted_delta"], ".3f"),
                    "L1": number(row["predicted_final"], ".3f"),
                    "memorized bits": number(row["memorized_bits"], ",.0f"),
                    "bits/param": number(row["bits_per_param"], ".3f"),
                    "certified": "—" if share is None else f"{100 * share:.0f}%",
                    "mark": ", ".join(marks),
                }
            )
        return table


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise MemlawError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise MemlawError(f"{name} must be finite, got {value!r}")
    return float(value)


def _whole(value: Any, name: str) -> int:
    """A positive whole number (a rank, a layer count), refused rather than truncated."""
    number = _positive(value, name)
    if not number.is_integer():
        raise MemlawError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def _rank_for(n_eff: float, layers: int) -> int:
    return max(1, math.ceil(n_eff / layers * (1 - N_EFF_SLACK)))


def _fitted_range(law: MemoryLaw) -> tuple[tuple[float, float], tuple[float, float]] | None:
    points = getattr(law, "points_", None) or []
    if not points:
        return None
    caps = [float(getattr(p, law.capacity_variable)) for p in points]
    lengths = [float(p.length) for p in points]
    return (min(caps), max(caps)), (min(lengths), max(lengths))


def _recall(law: MemoryLaw) -> Mapping[str, Any] | None:
    """The law's recall record: a fitted boundary, or (every grid point certified) only the
    measured points; None without either."""
    recall = (getattr(law, "metadata_", None) or {}).get("recall")
    return recall if has_recall_data(recall) else None


def _per_item(memory: MemorySet) -> float | None:
    """Target tokens per item of the user's set (None: not counted; the law's grid's is
    used)."""
    return memory.length / memory.items if memory.items else None


def _certifying(recall: Mapping[str, Any], memory: MemorySet, layers: int, notes: list[str]):
    """(N_eff, rank range) that certifies the whole set: the fitted boundary at the set's
    level and its interval held to the measured points, or the measured points alone where
    no boundary was fitted."""
    length, per_item = memory.length, _per_item(memory)
    certifying = held_certifying_n_eff(recall, length, tokens_per_item=per_item)
    if "boundary" not in recall:
        return certifying, _measured_rank(recall, certifying, length, layers, notes)
    if per_item is None and not recall.get("tokens_per_item"):
        notes.append(
            "neither the set's items nor the law's tokens per item are known, so the plan "
            "certifies the median item, not every item: pass --data, or refit the law with "
            "memlaw fit"
        )
    fitted = certifying_n_eff(recall, length, tokens_per_item=per_item)
    if certifying != fitted:
        notes.append(
            f"the recall law's N*(ℓ) = {fitted:.3g} (rank {_rank_for(fitted, layers)}) is "
            f"held to the law's own measurements ({_measured_text(recall, length)}):"
            f" rank {_rank_for(certifying, layers)}"
        )
    low = held_certifying_n_eff(recall, length, quantile=0.025, tokens_per_item=per_item)
    high = held_certifying_n_eff(recall, length, quantile=0.975, tokens_per_item=per_item)
    return certifying, (_rank_for(low, layers), _rank_for(high, layers))


def _measured_rank(
    recall: Mapping[str, Any], n_eff: float | None, length: float, layers: int, notes: list[str]
) -> tuple[int, int] | None:
    """The rank range from the measured points alone (no boundary fitted): from above what
    failed (rank 1 where nothing failed) to the N_eff that certified; none past the longest
    set certified."""
    if n_eff is None:
        longest = max((ell for _, ell, share in recall["points"] if share >= 1.0), default=0)
        notes.append(
            f"the law's grid has no recall boundary, and no point of it certified a set as long "
            f"as ℓ = {length:g} (the longest certified: ℓ = {longest:g}), so no rank is planned "
            "to certify the set: sweep longer sets to find the recall boundary"
        )
        return None
    failed, _ = measured_limits(recall, length)
    notes.append(
        f"measured, not fitted: N_eff {n_eff:g} certified a set at least this long on the law's "
        "grid, which has no recall boundary to fit"
        + (
            ""
            if failed is not None
            else " (no smaller N_eff failed it: how small a rank suffices was not measured)"
        )
    )
    rank = _rank_for(n_eff, layers)
    low = 1 if failed is None else _rank_for(failed * (1 + 1e-6), layers)
    return min(low, rank), rank


def _params_per_rank(law: MemoryLaw) -> float | None:
    """Trainable parameters per unit of N_eff, from the fitted points (None: unknown)."""
    for point in getattr(law, "points_", None) or []:
        if point.trainable_params and point.n_eff:
            return float(point.trainable_params) / float(point.n_eff)
    return None


def _row(law: MemoryLaw, memory: MemorySet, rank: int, layers: int, span, recall) -> dict:
    n_eff = rank * layers
    unit = law.capacity_of(rank, layers)
    delta = float(
        law.predict(
            unit, memory.length, base_loss=memory.base_loss, info_baseline=memory.info_baseline
        )
    )
    if memory.base_loss is not None:
        delta = min(delta, memory.base_loss)  # a loss cannot fall below 0
    final = None if memory.base_loss is None else memory.base_loss - delta
    bits = None
    if final is not None:
        bits = memory.length * max(0.0, memory.ceiling - final) / math.log(2)
    per_rank = _params_per_rank(law)
    fitted = recall is not None and "boundary" in recall
    share = predicted_certified_share(recall, n_eff, memory.length) if fitted else None
    outside = span is not None and not (
        span[0][0] <= unit <= span[0][1] and span[1][0] <= memory.length <= span[1][1]
    )
    return {
        "rank": rank,
        "n_eff": n_eff,
        "predicted_delta": delta,
        "predicted_final": final,
        "memorized_bits": bits,
        "bits_per_param": None if bits is None or per_rank is None else bits / (per_rank * n_eff),
        "certified_share": share,
        "certifies": None
        if recall is None
        else certifies(recall, n_eff, memory.length, _per_item(memory)),
        "extrapolated": outside,
    }


def plan(
    law: MemoryLaw,
    memory: MemorySet,
    *,
    layers: int = 1,
    ranks: Iterable[int] | None = None,
    current_rank: int | None = None,
    model: str | None = None,
    modules: str | None = None,
    force: bool = False,
) -> PlanResult:
    """The smallest certifying rank and what each rank holds on ``memory``, from ``law``."""
    if not isinstance(law, MemoryLaw) or not hasattr(law, "alpha_"):
        raise MemlawError("plan needs a fitted MemoryLaw: memlaw fit, or MemoryLaw.load(path)")
    _positive(memory.length, "the memory set's length")
    layers = _whole(layers, "layers")
    grid = sorted({_whole(r, "every rank") for r in (ranks or DEFAULT_RANKS)})
    notes = law.check_applies(model=model, modules=modules, data_kind=memory.kind, force=force)
    span = _fitted_range(law)
    if span is not None and not span[1][0] <= memory.length <= span[1][1]:
        notes.append(
            f"ℓ = {memory.length:g} is outside the lengths the law was measured on "
            f"({span[1][0]:g}–{span[1][1]:g}): the prediction extrapolates"
        )
    recall = _recall(law)
    certifying, certifying_range, holds = None, None, None
    if recall is None:
        notes.append(
            "the law holds no recall data, so no rank is planned to certify the set: refit it "
            "with memlaw fit on a sweep that records certified shares"
        )
    else:
        certifying, certifying_range = _certifying(recall, memory, layers, notes)
    certifying_rank = None if certifying is None else _rank_for(certifying, layers)
    if certifying_rank is not None:
        grid = sorted(set(grid) | {certifying_rank})
    rows = [_row(law, memory, rank, layers, span, recall) for rank in grid]
    if current_rank is not None:
        current_rank = _whole(current_rank, "the current rank")
    held_rank = current_rank or certifying_rank
    method = None
    if held_rank is not None:
        holds = _holds(law, memory, held_rank, layers, span, recall)
        method = _method_for(law, holds, certifying_rank, notes)
    return PlanResult(
        memory=memory,
        layers=layers,
        law=law.describe(),
        rows=rows,
        certifying_n_eff=certifying,
        certifying_rank=certifying_rank,
        certifying_rank_range=certifying_range,
        holds=holds,
        notes=notes,
        method=method,
    )


def _law_method(law: MemoryLaw) -> str:
    """The method the law's sweep trained with (SFT for laws that do not say)."""
    return str((getattr(law, "metadata_", None) or {}).get("method", "sft"))


def _method_for(law, holds, certifying_rank: int | None, notes: list[str]) -> str | None:
    """The method to train the held rank with; a note when the set is past its capacity."""
    certifies = holds["on_this_set"]["certifies"]
    if certifies is None:
        return None
    if certifies:
        return _law_method(law)
    whole = "" if certifying_rank is None else f"; to hold it all, train rank {certifying_rank}"
    notes.append(
        f"rank {holds['rank']} cannot certify this set, it is past that rank's capacity: "
        f"train it with --method {AT_CAPACITY_METHOD}, as no MemFT variant "
        f"certified more there on every seed ({AT_CAPACITY_EVIDENCE}); for the most items "
        f"reproduced exactly by greedy decoding instead of the p > 0.5 certificate, "
        f"{AT_CAPACITY_EXACT} ({AT_CAPACITY_EXACT_EVIDENCE}){whole}"
    )
    return AT_CAPACITY_METHOD


def _measured_text(recall: Mapping[str, Any], length: float) -> str:
    failed, certified = measured_limits(recall, length)
    said = []
    if failed is not None:
        said.append(f"N_eff {failed:g} did not certify a set of ℓ ≤ {length:g}")
    if certified is not None:
        said.append(f"N_eff {certified:g} certified one of ℓ ≥ {length:g}")
    return "; ".join(said)


def _holds(law, memory: MemorySet, rank: int, layers: int, span, recall) -> dict[str, Any]:
    """How much ``rank`` holds: the most tokens it certifies (with the interval of the recall
    boundary) and its predicted memory on this set."""
    row = _row(law, memory, rank, layers, span, recall)
    out = {"rank": rank, "n_eff": rank * layers, "on_this_set": row}
    if span is not None:
        out["measured_up_to"] = span[1][1]  # the longest set the law measured
    n_eff = rank * layers
    if recall is not None and "boundary" not in recall:
        measured = held_certified_length(recall, n_eff, 0.0)
        if measured > 0:
            out["certified_length_at_least"] = measured  # measured, no boundary fitted
    elif recall is not None:
        per_item = _per_item(memory)
        out["certified_length"] = held_certified_length(
            recall, n_eff, certified_length(recall, n_eff, per_item)
        )
        draws = boundary_draws(recall)[1]
        if draws:
            lengths = sorted(
                held_certified_length(recall, n_eff, certified_length(recall, n_eff, per_item, d))
                for d in draws
            )
            out["certified_length_range"] = (
                lengths[int(0.025 * (len(lengths) - 1))],
                lengths[int(0.975 * (len(lengths) - 1))],
            )
    return out


def train_command(
    result: PlanResult,
    law: MemoryLaw,
    data: str | None,
    rank: int,
    layer_indices: Sequence[int] | None = None,
) -> str:
    """The ``memlaw train`` command that realizes the plan with the law's own recipe.

    ``layer_indices``: the layers to adapt when the plan is for more than one (the default
    placement adapts one).
    """
    meta = dict(getattr(law, "metadata_", {}) or {})
    parts = ["memlaw train", f"--data {shlex.quote(str(data))}" if data else "--data FILE"]
    if meta.get("model"):
        parts.append(f"--model {shlex.quote(str(meta['model']))}")
    parts += [f"--method {_law_method(law)}", f"--rank {rank}"]
    if layer_indices:
        parts.append(f"--layers {','.join(str(x) for x in layer_indices)}")
    if meta.get("modules"):
        parts.append(f"--modules {shlex.quote(str(meta['modules']))}")
    if meta.get("lr"):
        parts.append(f"--lr {meta['lr']:g}")
    if meta.get("batch_size") is not None:
        parts.append(f"--batch-size {meta['batch_size']}")
    if meta.get("max_epochs"):
        parts.append(f"--epochs {meta['max_epochs']}")
    # memlaw train's default is the recipe's schedule (ANNEAL_PATIENCE epochs and at least
    # ANNEAL_MIN_UPDATES updates); a law swept otherwise (before the update count existed:
    # epochs only) names its epochs, which memlaw train then takes exactly.
    if "anneal_patience" in meta:
        schedule = (meta["anneal_patience"], meta.get("anneal_min_updates", 0))
        if schedule != (ANNEAL_PATIENCE, ANNEAL_MIN_UPDATES):
            parts.append(f"--anneal-patience {meta['anneal_patience'] or 0}")
    return " ".join(parts)


def measure_memory_set(
    model, tokenizer, encoded: list, *, generator: str | None = None
) -> MemorySet:
    """A :class:`MemorySet` measured on encoded items: ℓ, L0 under ``model`` (the frozen base
    model), H and the data kind (memlaw.information), and the item count."""
    from memlaw.data import target_length
    from memlaw.information import information_baseline
    from memlaw.probe import mean_target_loss, teacher_forced

    targets = [item.target_ids for item in encoded]
    baseline = information_baseline(targets, generator=generator, tokenizer=tokenizer)
    return MemorySet(
        length=target_length(encoded),
        base_loss=mean_target_loss(teacher_forced(model, encoded, tokenizer.pad_token_id)),
        info_baseline=baseline.nats_per_token,
        kind=baseline.kind,
        items=len(encoded),
    )
