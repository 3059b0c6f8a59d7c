"""Memorized information, measured against the data's own baseline (not ΔL · ℓ).

ΔL = L0 − L1 also counts what an adapter learns without memorizing anything: on random tokens
the base model is over-confident (L0 ≈ 13 nats against ln 49152 ≈ 10.8 for uniform guessing),
on phone numbers it first learns that digits follow a colon. The **information baseline** H is
the per-token loss of the best prediction that ignores *which* item is being memorized; only
loss below min(L0, H) is memory:

    memorized information = ℓ · max(0, min(L0, H) − L1)   nats (÷ ln 2 for bits)

How H is obtained, by data kind (:func:`information_baseline`):

- ``random`` tokens drawn uniformly from V ordinary tokens: H = ln V, exactly.
- ``facts`` (many short key→value items), memlaw's phonebook generator: the exact entropy of its
  digit format (first digit 2–9, then 0–9). Other fact files: estimated from the data as the
  mean over target positions of the entropy of the per-position marginal over items, with the
  Miller–Madow correction ((K − 1) / 2n for K distinct tokens among n items). The plug-in
  estimate is biased low by about that amount; what remains after the correction is second
  order. A marginal over few items says little, so fewer than :data:`MIN_ITEMS_FOR_ESTIMATE`
  items fall back to H = L0.
- ``text`` (one long sequence or long targets): no better baseline than the base model itself,
  so H = L0 and all of ΔL counts.

>>> round(memorized_nats(length=100, base_loss=13.0, final_loss=11.5, baseline=10.8), 6)
0.0
>>> round(memorized_bits(length=10, base_loss=3.0, final_loss=0.0, baseline=math.log(2)), 6)
10.0
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from memlaw.errors import MemlawError

DATA_KINDS = ("random", "facts", "text")
MIN_ITEMS_FOR_ESTIMATE = 16
# Items whose targets are at most this many tokens (median) count as facts, not text.
FACT_TARGET_TOKENS = 32


@dataclass(frozen=True)
class InformationBaseline:
    """H per target token (None: use L0), the data kind, and how H was obtained."""

    kind: str
    nats_per_token: float | None
    how: str

    def ceiling(self, base_loss: float) -> float:
        """min(L0, H): the most ΔL that can be memory, per token."""
        return ceiling(base_loss, self.nats_per_token)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "nats_per_token": self.nats_per_token, "how": self.how}


def ceiling(base_loss: float, baseline: float | None) -> float:
    """min(L0, H) per token, the most of ΔL that can be memory; ``baseline`` None means H = L0.

    >>> ceiling(13.1, 10.8), ceiling(3.0, None)
    (10.8, 3.0)
    """
    return float(base_loss) if baseline is None else min(float(base_loss), float(baseline))


class HasCeiling:
    """For records that carry a memory set's L0 (``base_loss``) and H (``info_baseline``, None:
    H = L0): their :attr:`ceiling`."""

    base_loss: float | None
    info_baseline: float | None

    @property
    def ceiling(self) -> float | None:
        """min(L0, H) per token: the most ΔL that can be memory (None without L0)."""
        return None if self.base_loss is None else ceiling(self.base_loss, self.info_baseline)


def memorized_nats(
    length: float, base_loss: float, final_loss: float, baseline: float | None
) -> float:
    """ℓ · max(0, min(L0, H) − L1); ``baseline`` None means H = L0."""
    return float(length) * max(0.0, ceiling(base_loss, baseline) - final_loss)


def memorized_bits(
    length: float, base_loss: float, final_loss: float, baseline: float | None
) -> float:
    """:func:`memorized_nats` in bits."""
    return memorized_nats(length, base_loss, final_loss, baseline) / math.log(2)


def classify(target_ids: Sequence[Sequence[int]]) -> str:
    """``facts`` for many short targets, ``text`` otherwise (random tokens are known by their
    generator, not guessed from the data).

    >>> classify([[1, 2]] * 20), classify([[1] * 500])
    ('facts', 'text')
    """
    lengths = sorted(len(t) for t in target_ids)
    if len(lengths) >= 2 and lengths[len(lengths) // 2] <= FACT_TARGET_TOKENS:
        return "facts"
    return "text"


def marginal_entropy(target_ids: Sequence[Sequence[int]]) -> float:
    """Mean over target tokens of the Miller–Madow entropy (nats) of the per-position marginal
    over items: what a predictor that knows the format, but not the item, must pay.

    >>> round(marginal_entropy([[0], [1]] * 50), 4)  # a fair coin: ln 2 + 1/200
    0.6981
    """
    columns: list[Counter] = []
    for target in target_ids:
        for position, token in enumerate(target):
            if position == len(columns):
                columns.append(Counter())
            columns[position][token] += 1
    total, tokens = 0.0, 0
    for column in columns:
        n = sum(column.values())
        plug_in = -sum(c / n * math.log(c / n) for c in column.values())
        total += (plug_in + (len(column) - 1) / (2 * n)) * n  # weight: tokens at this position
        tokens += n
    return total / max(tokens, 1)


def phonebook_entropy(target_ids: Sequence[Sequence[int]], tokenizer) -> float | None:
    """The exact entropy of memlaw's phone-number format per target token (first digit 2–9,
    then 0–9), or None when the digits do not tokenize one per token."""
    total, tokens = 0.0, 0
    for target in target_ids:
        for position, token in enumerate(target):
            if not tokenizer.decode([token]).strip().isdigit():
                return None
            total += math.log(8 if position == 0 else 10)
            tokens += 1
    return total / max(tokens, 1)


def information_baseline(
    target_ids: Sequence[Sequence[int]], *, generator: str | None = None, tokenizer=None
) -> InformationBaseline:
    """H for a memory set: exact for memlaw's generators, estimated for files.

    ``generator`` is ``random``, ``phonebook`` or ``noisy`` for generated data, None for a file.

    >>> information_baseline([[5] * 40], generator="random", tokenizer=None).kind
    Traceback (most recent call last):
    ...
    memlaw.errors.MemlawError: the random-token baseline needs the tokenizer it was drawn from
    >>> b = information_baseline([[3, 4]] * 20)
    >>> b.kind, round(b.nats_per_token, 6)
    ('facts', 0.0)
    """
    if generator == "random":
        if tokenizer is None:
            raise MemlawError("the random-token baseline needs the tokenizer it was drawn from")
        from memlaw.data import ordinary_token_ids

        size = len(ordinary_token_ids(tokenizer))
        return InformationBaseline("random", math.log(size), f"exact: uniform over {size} tokens")
    if generator == "phonebook" and tokenizer is not None:
        exact = phonebook_entropy(target_ids, tokenizer)
        if exact is not None:
            return InformationBaseline("facts", exact, "exact: phone-number digit format")
    kind = classify(target_ids)
    if kind == "facts" and len(target_ids) >= MIN_ITEMS_FOR_ESTIMATE:
        return InformationBaseline(
            "facts",
            marginal_entropy(target_ids),
            f"estimated: per-position marginal over {len(target_ids)} items (Miller-Madow)",
        )
    return InformationBaseline(kind, None, "L0: no baseline better than the base model")
