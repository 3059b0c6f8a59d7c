"""Training objectives as pure tensor functions, in the style of ``torch.nn.functional``.

All work on per-token negative log-likelihoods ``nll`` of shape ``(batch, positions)`` with a
boolean ``mask`` of supervised positions (see :func:`token_nll`). τ is a probability threshold;
the matching loss threshold is θ = −ln τ (ln 2 ≈ 0.693 for τ = 0.5).

>>> nll = torch.tensor([[0.1, 1.0, 2.0]])
>>> mask = torch.ones_like(nll, dtype=torch.bool)
>>> round(sft_loss(nll, mask).item(), 4)
1.0333
>>> memft_ot_loss(nll, mask).item()  # only the two tokens with p < 0.5 count
1.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from memlaw.data import IGNORE_INDEX

DEFAULT_TAU = 0.5


def loss_threshold(tau: float = DEFAULT_TAU) -> float:
    """θ = −ln τ: a token is above the recall boundary (p > τ) exactly when its loss < θ."""
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau must be within (0, 1), got {tau}")
    return -math.log(tau)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy (float32) and the mask of supervised positions.

    ``labels`` use the Hugging Face convention (``labels[t]`` predicted from ``logits[t-1]``,
    ``IGNORE_INDEX`` where unsupervised); both outputs have ``positions - 1`` columns.
    """
    shifted_logits = logits[:, :-1].float()
    shifted_labels = labels[:, 1:]
    mask = shifted_labels != IGNORE_INDEX
    nll = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(shifted_labels)
    return nll, mask


def weighted_mean(nll: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w·ℓ / Σ w; zero (with a gradient path) when every weight is zero."""
    total = weights.sum()
    if total <= 0:
        return (nll * weights).sum()
    return (nll * weights).sum() / total


def sft_loss(nll: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SFT: the plain mean of the per-token losses over supervised positions."""
    return weighted_mean(nll, mask.to(nll.dtype))


def memft_ot_weights(
    nll: torch.Tensor,
    mask: torch.Tensor,
    *,
    tau: float = DEFAULT_TAU,
    position_decay: float | None = None,
) -> torch.Tensor:
    """MemFT-OT weights: 1 on supervised tokens below the boundary (p < τ), 0 elsewhere.

    With ``position_decay`` λ, the k-th hard token of each sequence (k = 0..K−1 by position) is
    weighted exp(−λ·k / max(K−1, 1)), so the first stubborn token, which starts a cascade of
    greedy errors, weighs most.

    >>> nll = torch.tensor([[2.0, 0.1, 2.0, 2.0]])
    >>> memft_ot_weights(nll, nll > 0, position_decay=2.0)
    tensor([[1.0000, 0.0000, 0.3679, 0.1353]])
    """
    hard = mask & (nll.detach() > loss_threshold(tau))
    weights = hard.to(nll.dtype)
    if position_decay is not None:
        rank_in_sequence = hard.cumsum(dim=1) - 1
        count = hard.sum(dim=1, keepdim=True).clamp(min=2) - 1
        weights = weights * torch.exp(-position_decay * rank_in_sequence / count)
    return weights


def memft_ot_loss(
    nll: torch.Tensor,
    mask: torch.Tensor,
    *,
    tau: float = DEFAULT_TAU,
    fallback: str = "skip",
    position_decay: float | None = None,
) -> torch.Tensor:
    """MemFT-OT: the mean loss over tokens below the boundary only.

    When no token is below it, ``fallback="skip"`` gives a zero loss (zero gradient: the
    training loop skips the update) and ``fallback="mean"`` the plain SFT mean.
    """
    weights = memft_ot_weights(nll, mask, tau=tau, position_decay=position_decay)
    if weights.sum() <= 0 and fallback == "mean":
        return sft_loss(nll, mask)
    if fallback not in ("skip", "mean"):
        raise ValueError(f"fallback must be 'skip' or 'mean', got {fallback!r}")
    return weighted_mean(nll, weights)


def memft_soft_weights(
    nll: torch.Tensor, mask: torch.Tensor, *, tau: float = DEFAULT_TAU, sharpness: float = 10.0
) -> torch.Tensor:
    """Soft MemFT weights sigmoid(s·(ℓ_t − θ)) on supervised tokens: ½ at the boundary, → 1
    far below it, → 0 far above it. A token just above p = τ keeps some gradient instead of
    none, so it is not left to slide back below the boundary.

    >>> nll = torch.tensor([[0.0, math.log(2), 3.0]])
    >>> memft_soft_weights(nll, nll >= 0).round(decimals=3)
    tensor([[0.0010, 0.5000, 1.0000]])
    """
    return torch.sigmoid(sharpness * (nll.detach() - loss_threshold(tau))) * mask


def memft_soft_loss(
    nll: torch.Tensor, mask: torch.Tensor, *, tau: float = DEFAULT_TAU, sharpness: float = 10.0
) -> torch.Tensor:
    """MemFT with soft weights (the weighting of MemFT-SW, without the window) on many items:
    Σ w·ℓ / Σ w with w from :func:`memft_soft_weights`."""
    return weighted_mean(nll, memft_soft_weights(nll, mask, tau=tau, sharpness=sharpness))


@dataclass(frozen=True)
class SlidingWindowState:
    """Per-sequence state of MemFT-SW: the anchor (first wrong target position, −1 when none),
    how many consecutive steps it has not moved, and the window expansion e."""

    anchor: torch.Tensor
    stalled: torch.Tensor
    expansion: torch.Tensor

    @classmethod
    def initial(
        cls, sequences: int, device: torch.device | str | None = None
    ) -> SlidingWindowState:
        return cls(
            anchor=torch.full((sequences,), -1, dtype=torch.long, device=device),
            stalled=torch.zeros(sequences, dtype=torch.long, device=device),
            expansion=torch.ones(sequences, device=device),
        )

    def select(self, rows: torch.Tensor) -> SlidingWindowState:
        return SlidingWindowState(self.anchor[rows], self.stalled[rows], self.expansion[rows])

    def update(self, rows: torch.Tensor, part: SlidingWindowState) -> SlidingWindowState:
        anchor, stalled, expansion = (
            self.anchor.clone(),
            self.stalled.clone(),
            self.expansion.clone(),
        )
        anchor[rows], stalled[rows], expansion[rows] = part.anchor, part.stalled, part.expansion
        return SlidingWindowState(anchor, stalled, expansion)


def advance_window(
    wrong: torch.Tensor,
    mask: torch.Tensor,
    state: SlidingWindowState,
    *,
    patience: int = 3,
    growth: float = 0.5,
    max_expansion: float = 4.0,
) -> SlidingWindowState:
    """The state after one step: find each sequence's anchor and apply the patience rule.

    If the anchor has not moved for ``patience`` consecutive steps, e grows by ``growth`` (at
    most ``max_expansion``) and the count restarts; when it moves, e returns to 1.
    """
    wrong = wrong & mask
    target_index = (mask.cumsum(dim=1) - 1).clamp(min=0)
    sentinel = torch.full_like(target_index, torch.iinfo(torch.long).max)
    first_wrong = torch.where(wrong, target_index, sentinel).min(dim=1).values
    anchor = torch.where(wrong.any(dim=1), first_wrong, torch.full_like(first_wrong, -1))
    still = (anchor == state.anchor) & (anchor >= 0)
    stalled = torch.where(still, state.stalled + 1, torch.zeros_like(state.stalled))
    grow = stalled >= patience
    expansion = torch.where(
        still,
        torch.where(grow, (state.expansion + growth).clamp(max=max_expansion), state.expansion),
        torch.ones_like(state.expansion),
    )
    stalled = torch.where(grow, torch.zeros_like(stalled), stalled)
    return SlidingWindowState(anchor, stalled, expansion)


def memft_sw_weights(
    nll: torch.Tensor,
    mask: torch.Tensor,
    state: SlidingWindowState,
    *,
    tau: float = DEFAULT_TAU,
    sharpness: float = 10.0,
    window: int = 50,
    decay: float = 20.0,
    floor: float = 0.01,
) -> torch.Tensor:
    """MemFT-SW weights for a state already advanced to this step (:func:`advance_window`).

    Soft weights sigmoid(s·(ℓ_t − θ)); with an anchor a, target positions t < a + W·e keep a
    multiplier exp(−max(t − a, 0)/τ_w) and those beyond get ``floor``; a sequence with no
    wrong position keeps the plain soft weights.
    """
    soft = memft_soft_weights(nll, mask, tau=tau, sharpness=sharpness)
    t = (mask.cumsum(dim=1) - 1).clamp(min=0).to(nll.dtype)
    anchor = state.anchor.to(nll.dtype).unsqueeze(1)
    inside = t < anchor + window * state.expansion.to(nll.dtype).unsqueeze(1)
    multiplier = torch.where(inside, torch.exp(-(t - anchor).clamp(min=0) / decay), floor)
    multiplier = torch.where(
        state.anchor.unsqueeze(1) >= 0, multiplier, torch.ones_like(multiplier)
    )
    return soft * multiplier


def memft_sw_loss(
    nll: torch.Tensor,
    mask: torch.Tensor,
    wrong: torch.Tensor,
    state: SlidingWindowState,
    *,
    tau: float = DEFAULT_TAU,
    **window_options: float,
) -> tuple[torch.Tensor, SlidingWindowState]:
    """MemFT-SW (sliding window): returns the loss and the advanced per-sequence state.

    ``wrong`` marks positions whose argmax is not the target token.
    """
    patience_options = {
        k: window_options.pop(k)
        for k in ("patience", "growth", "max_expansion")
        if k in window_options
    }
    state = advance_window(wrong, mask, state, **patience_options)
    weights = memft_sw_weights(nll, mask, state, tau=tau, **window_options)
    return weighted_mean(nll, weights), state


CURRICULUM_FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)


def curriculum_share(epoch: int, boundaries: tuple[int, ...]) -> float:
    """MemFT-SW curriculum: the share of items trained at ``epoch`` (0-based).

    ``boundaries`` are the epochs at which the prefix grows (four of them: 20% → 40% → 60% →
    80% → 100%).

    >>> [curriculum_share(e, (2, 4, 6, 8)) for e in range(0, 10, 2)]
    [0.2, 0.4, 0.6, 0.8, 1.0]
    """
    stage = sum(1 for boundary in boundaries if epoch >= boundary)
    return CURRICULUM_FRACTIONS[min(stage, len(CURRICULUM_FRACTIONS) - 1)]


def curriculum_items(order: list[int], epoch: int, boundaries: tuple[int, ...]) -> list[int]:
    """The items in training at ``epoch``: a growing prefix of one fixed random ``order``."""
    count = max(1, math.ceil(curriculum_share(epoch, boundaries) * len(order) - 1e-9))
    return order[:count]
