"""What is memorized, token by token: probabilities, greedy recall, certificates, stubborn tokens.

A target token with teacher-forced probability p > 0.5 is necessarily the argmax, so greedy
decoding reproduces it; an item whose every target token has p > 0.5 is *certified*: greedy
decoding reproduces it verbatim. The probe measures both sides of that boundary.

>>> from memlaw.models import load_model
>>> from memlaw.data import generate_phonebook, encode_items
>>> model, tokenizer = load_model("tiny")
>>> report = probe(model, tokenizer, encode_items(generate_phonebook(2), tokenizer))
>>> report.length, report.exact_match, report.certified_share
(20, 0.0, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from memlaw.data import EncodedItem, collate
from memlaw.objectives import DEFAULT_TAU, loss_threshold, token_nll

EVAL_BATCH = 32
PROBABILITY_BINS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class TokenScores:
    """Teacher-forced scores of one item's target tokens."""

    nll: list[float]
    argmax_ok: list[bool]

    @property
    def probabilities(self) -> list[float]:
        return [math.exp(-x) for x in self.nll]


def token_scores(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    nll: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> list[TokenScores]:
    """Each row's target-token losses and argmax hits, from a batch's logits and labels.
    ``nll`` and ``mask``: :func:`token_nll`'s result, when the caller has it already."""
    if nll is None or mask is None:
        nll, mask = token_nll(logits, labels)
    ok = (logits[:, :-1].argmax(-1) == labels[:, 1:]) & mask
    return [
        TokenScores(nll[r][mask[r]].tolist(), ok[r][mask[r]].tolist()) for r in range(len(mask))
    ]


@contextmanager
def _evaluating(model) -> Iterator[torch.device]:
    """The model in eval mode while inside (its mode restored after); yields its device."""
    was_training = model.training
    model.eval()
    try:
        yield next(model.parameters()).device
    finally:
        model.train(was_training)


@torch.no_grad()
def eval_batches(
    model,
    encoded: Sequence[EncodedItem] | Sequence[Mapping[str, Any]],
    pad_token_id: int,
    batch_size: int = EVAL_BATCH,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The one evaluation loop: ``(logits, labels, nll, mask)`` of each batch of encoded items
    or rows (:func:`memlaw.data.collate`), teacher-forced in eval mode without gradients; the
    model's mode is restored once the loop is done."""
    with _evaluating(model) as device:
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate(chunk, pad_token_id).items()}
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            yield logits, batch["labels"], *token_nll(logits, batch["labels"])


def teacher_forced(
    model,
    encoded: Sequence[EncodedItem] | Sequence[Mapping[str, Any]],
    pad_token_id: int,
    batch_size: int = EVAL_BATCH,
) -> list[TokenScores]:
    """Per-item target-token losses and whether each target token is the argmax (eval mode)."""
    scores: list[TokenScores] = []
    for logits, labels, nll, mask in eval_batches(model, encoded, pad_token_id, batch_size):
        scores += token_scores(logits, labels, nll=nll, mask=mask)
    return scores


def mean_target_loss(scores: list[TokenScores]) -> float:
    """Mean per-token cross-entropy over every target token of the set (nats)."""
    values = [x for s in scores for x in s.nll]
    return sum(values) / len(values)


@torch.no_grad()
def greedy_generate(
    model, encoded: list[EncodedItem], pad_token_id: int, batch_size: int = EVAL_BATCH
) -> list[list[int]]:
    """Greedy continuation of each prompt, as many tokens as its target (no early stop)."""
    from transformers import GenerationConfig

    outputs: list[list[int]] = []
    with _evaluating(model) as device:
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            width = max(len(item.prompt_ids) for item in chunk)
            new_tokens = max(len(item.target_ids) for item in chunk)
            input_ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for row, item in enumerate(chunk):  # left padding, so every prompt ends at the edge
                input_ids[row, width - len(item.prompt_ids) :] = torch.tensor(item.prompt_ids)
                attention_mask[row, width - len(item.prompt_ids) :] = 1
            config = GenerationConfig(
                do_sample=False,
                num_beams=1,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=pad_token_id,
            )
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=config,
            )
            for row, item in enumerate(chunk):
                outputs.append(generated[row, width : width + len(item.target_ids)].tolist())
    return outputs


@dataclass
class ItemProbe:
    """One item's probe: its target tokens' probabilities and what greedy decoding produced."""

    index: int
    target_ids: list[int]
    probabilities: list[float]
    argmax_ok: list[bool]
    generated_ids: list[int] | None
    exact_match: bool | None
    certified: bool
    first_error: int | None  # first target position greedy decoding gets wrong


@dataclass
class ProbeReport:
    """Token-level report of a memory set under a model (+ adapter)."""

    tau: float
    length: int
    items: list[ItemProbe]
    final_loss: float
    base_loss: float | None = None
    exact_match: float | None = None  # share of items greedy decoding reproduces verbatim
    certified_share: float = 0.0  # share of items whose every target token has p > tau
    token_certified_share: float = 0.0  # share of target tokens with p > tau
    stubborn: list[dict] = field(default_factory=list)
    phase_transition: list[dict] = field(default_factory=list)

    @property
    def delta_loss(self) -> float | None:
        return None if self.base_loss is None else self.base_loss - self.final_loss

    def summary(self) -> dict:
        """The headline numbers (no per-token arrays)."""
        return {
            "length": self.length,
            "items": len(self.items),
            "tau": self.tau,
            "base_loss": self.base_loss,
            "final_loss": self.final_loss,
            "delta_loss": self.delta_loss,
            "exact_match": self.exact_match,
            "certified_share": self.certified_share,
            "token_certified_share": self.token_certified_share,
            "stubborn_tokens": len(self.stubborn),
        }

    def to_dict(self) -> dict:
        payload = self.summary()
        payload["phase_transition"] = self.phase_transition
        payload["stubborn"] = self.stubborn
        payload["item_reports"] = [asdict(item) for item in self.items]
        return payload


def probe(
    model,
    tokenizer,
    encoded: list[EncodedItem],
    *,
    tau: float = DEFAULT_TAU,
    generate: bool = True,
    base_loss: float | None = None,
    measure_base: bool = True,
    scores: list[TokenScores] | None = None,
) -> ProbeReport:
    """Probe a model (a PEFT model too: its base loss is measured with the adapter disabled,
    unless ``measure_base`` is off). ``scores`` reuses teacher-forced scores already computed
    for this model and set."""
    pad = tokenizer.pad_token_id
    if scores is None:
        scores = teacher_forced(model, encoded, pad)
    if base_loss is None and measure_base and hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            base_loss = mean_target_loss(teacher_forced(model, encoded, pad))
    generated = greedy_generate(model, encoded, pad) if generate else [None] * len(encoded)
    threshold = loss_threshold(tau)
    items = []
    for index, (item, score, output) in enumerate(zip(encoded, scores, generated, strict=False)):
        target = list(item.target_ids)
        first_error = None
        if output is not None:
            first_error = next(
                (i for i, (a, b) in enumerate(zip(output, target, strict=False)) if a != b), None
            )
        items.append(
            ItemProbe(
                index=index,
                target_ids=target,
                probabilities=score.probabilities,
                argmax_ok=score.argmax_ok,
                generated_ids=output,
                exact_match=None if output is None else first_error is None,
                certified=all(x < threshold for x in score.nll),
                first_error=first_error,
            )
        )
    all_nll = [x for s in scores for x in s.nll]
    report = ProbeReport(
        tau=tau,
        length=len(all_nll),
        items=items,
        final_loss=mean_target_loss(scores),
        base_loss=base_loss,
        exact_match=None if not generate else sum(i.exact_match for i in items) / len(items),
        certified_share=sum(i.certified for i in items) / len(items),
        token_certified_share=sum(x < threshold for x in all_nll) / len(all_nll),
    )
    report.stubborn = [
        _stubborn_token(item, tokenizer) for item in items if item.first_error is not None
    ]
    report.phase_transition = phase_transition_table(items, tau)
    return report


def _stubborn_token(item: ItemProbe, tokenizer) -> dict:
    position = item.first_error
    return {
        "item": item.index,
        "position": position,
        "expected": tokenizer.decode([item.target_ids[position]]),
        "generated": tokenizer.decode([item.generated_ids[position]]),
        "probability": item.probabilities[position],
    }


def phase_transition_table(items: list[ItemProbe], tau: float = DEFAULT_TAU) -> list[dict]:
    """Share of target tokens reproduced (argmax given the correct prefix) by probability bin.

    The first two rows split at τ: above it the share is 100% by construction, which the table
    lets a user check; below it is whatever the model happens to get right.
    """
    pairs = [
        (p, ok) for item in items for p, ok in zip(item.probabilities, item.argmax_ok, strict=False)
    ]
    rows = []

    def row(label: str, selected: list[bool]) -> dict:
        count = len(selected)
        return {
            "bin": label,
            "tokens": count,
            "reproduced": (sum(selected) / count) if count else None,
        }

    rows.append(row(f"p > {tau:g}", [ok for p, ok in pairs if p > tau]))
    rows.append(row(f"p <= {tau:g}", [ok for p, ok in pairs if p <= tau]))
    for low, high in zip(PROBABILITY_BINS[:-1], PROBABILITY_BINS[1:], strict=False):
        in_bin = [ok for p, ok in pairs if low < p <= high or (low == 0.0 and p == 0.0)]
        rows.append(row(f"({low:.1f}, {high:.1f}]", in_bin))
    return rows
