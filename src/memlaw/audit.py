"""Budget audit: how much of a standard SFT step goes to tokens that are already memorized.

For each supervised token, SFT spends loss ℓ_t = −ln p_t and a gradient at the logits of norm
‖softmax − onehot‖₂. Tokens with p > τ are already reproduced by greedy decoding; whatever
share of the loss and gradient mass lands on them is budget that does not move recall.

>>> from memlaw.models import load_model
>>> from memlaw.data import generate_phonebook, encode_items
>>> model, tokenizer = load_model("tiny")
>>> report = audit(model, tokenizer, encode_items(generate_phonebook(2), tokenizer))
>>> report.tokens, report.above_share
(20, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from memlaw.data import EncodedItem
from memlaw.objectives import DEFAULT_TAU, loss_threshold
from memlaw.probe import TokenScores, eval_batches, probe, token_scores


@dataclass
class AuditReport:
    """Where a standard SFT step's budget goes, and what to do about it."""

    tau: float
    tokens: int
    above_share: float  # share of supervised tokens already above the boundary (p > tau)
    loss_mass_above: float  # share of SFT's summed loss on those tokens
    gradient_mass_above: float  # share of SFT's summed logit-gradient norm on those tokens
    certified_share: float
    exact_match: float | None
    stubborn_tokens: int
    recommendation: str

    def to_dict(self) -> dict:
        return asdict(self)


class TokenBudget(NamedTuple):
    """Where a standard SFT step's budget goes on a memory set: supervised tokens, their summed
    loss and summed logit-gradient norm, each in total and on the tokens already above τ."""

    tokens: int
    above: int
    loss: float
    loss_above: float
    gradient: float
    gradient_above: float


def token_budget(
    model, encoded: list[EncodedItem], pad_token_id: int, tau: float = DEFAULT_TAU
) -> TokenBudget:
    """The SFT budget of ``encoded`` under the model (eval mode, no gradient)."""
    return _budget_and_scores(model, encoded, pad_token_id, tau)[0]


@torch.no_grad()
def _budget_and_scores(
    model, encoded: list[EncodedItem], pad_token_id: int, tau: float
) -> tuple[TokenBudget, list[TokenScores]]:
    """The token budget and, from the same forward pass, the teacher-forced scores a probe
    needs (one pass over the set instead of two)."""
    scores: list[TokenScores] = []
    threshold = loss_threshold(tau)
    totals = [0, 0, 0.0, 0.0, 0.0, 0.0]
    for logits, labels, nll, mask in eval_batches(model, encoded, pad_token_id):
        scores += token_scores(logits, labels, nll=nll, mask=mask)
        probabilities = logits[:, :-1].float().softmax(-1)[mask]
        targets = labels[:, 1:][mask]
        # d ℓ / d logits = softmax − onehot(target): its norm is the gradient SFT sends back
        probabilities[torch.arange(len(targets)), targets] -= 1.0
        gradient = probabilities.norm(dim=-1)
        losses = nll[mask]
        above = losses < threshold
        totals[0] += int(mask.sum())
        totals[1] += int(above.sum())
        totals[2] += float(losses.sum())
        totals[3] += float(losses[above].sum())
        totals[4] += float(gradient.sum())
        totals[5] += float(gradient[above].sum())
    return TokenBudget(*totals), scores


def audit(
    model,
    tokenizer,
    encoded: list[EncodedItem],
    *,
    tau: float = DEFAULT_TAU,
    law=None,
    n_eff: int | None = None,
    plateaued: bool = False,
) -> AuditReport:
    """Audit a model (+ adapter) on a memory set: the SFT budget spent on memorized tokens,
    certified share, stubborn tokens, and a recommendation. With a fitted ``law``
    (:class:`memlaw.law.MemoryLaw`) and the adapter's ``n_eff``, the advice to raise the rank
    quotes the law's predicted gain of doubling it. ``plateaued``: the adapter's training
    stopped at a plateau on this set (:func:`trained_to_plateau`), so it is at capacity, where
    skipping recalled tokens (MemFT) certified no more than SFT (``bench/memft_at_capacity.py``)
    and only a larger rank helps."""
    budget, scores = _budget_and_scores(model, encoded, tokenizer.pad_token_id, tau)
    report = probe(model, tokenizer, encoded, tau=tau, measure_base=False, scores=scores)
    above_share = budget.above / budget.tokens
    gradient_share = budget.gradient_above / budget.gradient if budget.gradient > 0 else 0.0
    law_gain = ""
    if law is not None and n_eff:
        now, doubled = (float(law.predict(n, report.length)) for n in (n_eff, 2 * n_eff))
        law_gain = (
            f"; the law predicts ΔL {now:.2f} → {doubled:.2f} nats per token "
            f"(+{doubled - now:.2f}) from N_eff {n_eff} to {2 * n_eff} at ℓ = {report.length}"
        )
    if report.certified_share == 1.0:
        advice = (
            "certified: every target token has p > tau, greedy recall is guaranteed; stop training"
        )
    elif plateaued:
        advice = (
            f"at capacity: training stopped at a plateau with {report.certified_share:.0%} of "
            f"the items certified. An SFT step spends {gradient_share:.0%} of its gradient on the "
            f"{above_share:.0%} of tokens already above the boundary, but at capacity skipping "
            "them (MemFT) certified no more than SFT (docs/benchmarks.md): raise the rank "
            "(memlaw plan shows which rank holds the set)" + law_gain
        )
    elif above_share >= 0.25:
        advice = (
            f"train with MemFT: {above_share:.0%} of the tokens are already above the boundary, and "
            f"an SFT step would spend {gradient_share:.0%} of its gradient on them; MemFT skips them"
        )
    else:
        advice = (
            f"most tokens are still below the boundary ({1 - above_share:.0%}): train longer, or "
            "raise the rank (memlaw plan shows what each doubling gains)" + law_gain
        )
    return AuditReport(
        tau=tau,
        tokens=budget.tokens,
        above_share=above_share,
        loss_mass_above=budget.loss_above / budget.loss if budget.loss > 0 else 0.0,
        gradient_mass_above=gradient_share,
        certified_share=report.certified_share,
        exact_match=report.exact_match,
        stubborn_tokens=len(report.stubborn),
        recommendation=advice,
    )


def trained_to_plateau(record: dict, encoded: Sequence[EncodedItem]) -> bool:
    """Whether the run behind an adapter (its memlaw record, :func:`memlaw.adapters.adapter_record`)
    stopped at a plateau on a set of this length: then the adapter holds what its rank can.

    >>> from memlaw.data import EncodedItem
    >>> items = [EncodedItem((1, 2), (3, 4))]
    >>> trained_to_plateau({"stop_reason": "plateau", "length": 2}, items)
    True
    >>> trained_to_plateau({"stop_reason": "plateau", "length": 500}, items)  # another set
    False
    >>> trained_to_plateau({}, items)  # no record: nothing known
    False
    """
    length = sum(len(item.target_ids) for item in encoded)
    return record.get("stop_reason") == "plateau" and record.get("length") == length


class ProbabilityBudget(NamedTuple):
    """Where SFT's budget goes, from the target tokens' probabilities alone: the share of
    tokens above τ, of SFT's loss on them (exact), and bounds on the share of its gradient."""

    tokens: int
    above_share: float
    loss_mass_above: float
    gradient_mass_above_low: float
    gradient_mass_above_high: float


def budget_from_probabilities(
    probabilities: Sequence[float], tau: float = DEFAULT_TAU
) -> ProbabilityBudget:
    """The budget audit without a model: from each target token's probability p (a probe's,
    or a sweep row's ``probabilities``). SFT's loss on a token is −ln p, so its share is exact;
    the norm of its logit gradient ‖softmax − onehot‖ lies between 1 − p and √2 (1 − p)
    whatever the other probabilities are, so its share on the tokens above τ is bounded.

    >>> budget = budget_from_probabilities([0.99, 0.9, 0.6, 0.3])
    >>> budget.above_share, round(budget.loss_mass_above, 3)
    (0.75, 0.342)
    >>> round(budget.gradient_mass_above_low, 3), round(budget.gradient_mass_above_high, 3)
    (0.34, 0.507)
    """
    above = [min(max(p, 0.0), 1.0) for p in probabilities if p > tau]
    below = [min(max(p, 0.0), 1.0) for p in probabilities if p <= tau]
    loss_above = sum(-math.log(p) for p in above)
    loss = loss_above + sum(-math.log(max(p, 1e-45)) for p in below)
    gap_above, gap_below = sum(1 - p for p in above), sum(1 - p for p in below)
    root2 = math.sqrt(2)

    def share(part: float, rest: float) -> float:
        return part / (part + rest) if part + rest > 0 else 0.0

    return ProbabilityBudget(
        tokens=len(above) + len(below),
        above_share=len(above) / max(len(above) + len(below), 1),
        loss_mass_above=share(loss_above, loss - loss_above),
        gradient_mass_above_low=share(gap_above, root2 * gap_below),
        gradient_mass_above_high=share(root2 * gap_above, gap_below),
    )
