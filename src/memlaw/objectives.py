"""Training objectives as pure tensor functions, in the style of ``torch.nn.functional``.

All work on per-token negative log-likelihoods ``nll`` of shape ``(batch, positions)`` with a
boolean ``mask`` of supervised positions (see :func:`token_nll`). τ is a probability threshold;
the matching loss threshold is θ = −ln τ (ln 2 ≈ 0.693 for τ = 0.5). :data:`OBJECTIVES`, the one
registry of methods, names each objective with its weights and settings; memlaw's loop and the
Trainer integration both run it through :func:`resolve` and :func:`objective_step`.

>>> nll = torch.tensor([[0.1, 1.0, 2.0]])
>>> mask = torch.ones_like(nll, dtype=torch.bool)
>>> round(sft_loss(nll, mask).item(), 4)
1.0333
>>> memft_ot_loss(nll, mask).item()  # only the two tokens with p < 0.5 count
1.5
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from memlaw.data import IGNORE_INDEX
from memlaw.errors import MemlawError

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


def supervised_mean(nll: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w·ℓ / (supervised tokens): normalized by every supervised token instead of by Σ w, so a
    token that leaves training lowers the loss instead of raising the others' share of it.

    >>> nll = torch.tensor([[0.1, 1.0, 2.0]])
    >>> supervised_mean(nll, nll > 0, torch.tensor([[0.0, 1.0, 1.0]])).item()
    1.0
    """
    return (nll * weights).sum() / mask.sum().clamp(min=1)


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


def memft_ot_all_loss(nll: torch.Tensor, mask: torch.Tensor, **options: float) -> torch.Tensor:
    """MemFT-OT normalized by all supervised tokens instead of the active ones: the weights of
    :func:`memft_ot_weights` (``options``: its ``tau`` and ``position_decay``), the denominator
    of :func:`sft_loss`. Zero (an update to skip) when no token is below the boundary.

    >>> nll = torch.tensor([[0.1, 1.0, 2.0]])
    >>> memft_ot_all_loss(nll, nll > 0).item()  # (1.0 + 2.0) / 3: the easy token still counts
    1.0
    """
    return supervised_mean(nll, mask, memft_ot_weights(nll, mask, **options))


SFT_CAP = 0.99


def sft_cap_loss(nll: torch.Tensor, mask: torch.Tensor, *, cap: float = SFT_CAP) -> torch.Tensor:
    """SFT with a margin cap: a token stops training once p > ``cap`` (weight 1 while p < cap,
    else 0), and the loss is normalized by all supervised tokens, as SFT's is. It is
    :func:`memft_ot_all_loss` with τ = ``cap``.

    >>> nll = torch.tensor([[0.001, 1.0, 2.0]])  # p ≈ 0.999 (capped), 0.37, 0.14
    >>> sft_cap_loss(nll, nll > 0).item()
    1.0
    >>> round(sft_loss(nll, nll > 0).item(), 4)  # plain SFT still trains the capped token
    1.0003
    """
    return memft_ot_all_loss(nll, mask, tau=cap)


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


def default_boundaries(epochs: int) -> tuple[int, ...]:
    """The curriculum's default boundaries: equal fifths of ``epochs``.

    >>> default_boundaries(10)
    (2, 4, 6, 8)
    """
    return tuple(round(epochs * k / 5) for k in range(1, 5))


def curriculum_items(order: list[int], epoch: int, boundaries: tuple[int, ...]) -> list[int]:
    """The items in training at ``epoch``: a growing prefix of one fixed random ``order``."""
    count = max(1, math.ceil(curriculum_share(epoch, boundaries) * len(order) - 1e-9))
    return order[:count]


# --- the registry: every training objective by name ------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What the objectives read, with the meaning of the fields of the same name in
    :class:`memlaw.train.TrainConfig` and :class:`memlaw.integrations.MemFTConfig`.

    ``tau`` certifies; MemFT trains a token while p < ``train_tau`` (default ``tau``; a margin
    such as 0.8 keeps pushing tokens just above the boundary). ``fallback``: with no token left
    to train, ``skip`` the update or train the plain ``mean``. ``position_decay``: MemFT-OT's
    position weighting λ.
    """

    tau: float = DEFAULT_TAU
    train_tau: float | None = None
    fallback: str = "skip"
    position_decay: float | None = None

    @classmethod
    def of(cls, config: object) -> Settings:
        """The settings of any config with these four fields (``TrainConfig``, ``MemFTConfig``)."""
        return cls(config.tau, config.train_tau, config.fallback, config.position_decay)

    @property
    def training_tau(self) -> float:
        return self.train_tau or self.tau


# weights(nll, mask, settings, MemFT-SW state advanced to this step, or None)
Weights = Callable[[torch.Tensor, torch.Tensor, Settings, SlidingWindowState | None], torch.Tensor]


@dataclass(frozen=True)
class Objective:
    """One registry entry: the loss Σ w·ℓ / Σ w (``normalize="weights"``) or Σ w·ℓ over the
    supervised tokens (``"supervised"``), with w from ``weights``.

    ``skips``: the weights can all be zero; with no token to train the update is skipped (or,
    with ``fallback="mean"``, the plain mean is trained). ``window``: MemFT-SW's per-sequence
    state (needs each sequence's index and argmax errors). ``curriculum``: trains a growing
    prefix of the items (needs the epoch). An alias has no weights: it ``runs`` another entry
    (``runs_alone`` on a single sequence) with ``train_tau`` as its default margin.
    """

    name: str
    description: str
    weights: Weights | None = None
    normalize: str = "weights"
    skips: bool = False
    window: bool = False
    curriculum: bool = False
    runs: str | None = None
    runs_alone: str | None = None
    train_tau: float | None = None


def _sft_weights(nll, mask, settings, state):
    return mask.to(nll.dtype)


def _ot_weights(nll, mask, settings, state):
    return memft_ot_weights(
        nll, mask, tau=settings.training_tau, position_decay=settings.position_decay
    )


def _soft_weights(nll, mask, settings, state):
    return memft_soft_weights(nll, mask, tau=settings.training_tau)


def _window_weights(nll, mask, settings, state):
    return memft_sw_weights(nll, mask, state, tau=settings.training_tau)


OBJECTIVES: dict[str, Objective] = {
    entry.name: entry
    for entry in (
        Objective("sft", "SFT: the plain mean loss of every target token", _sft_weights),
        # memlaw's recommended MemFT. In bench/memft_vs_sft.py (3 seeds, docs/benchmarks.md) it
        # reached certified recall fastest on both shared benchmarks (0.97x and 0.95x SFT's
        # steps; soft weights with the same margin tie with it on PhoneBook), where plain
        # MemFT-OT took 1.74x and 1.15x.
        Objective(
            "memft",
            "memlaw's recommended MemFT: memft-ot with train_tau 0.8 (an explicit train_tau "
            "wins; never below tau)",
            runs="memft-ot",
            train_tau=0.8,
        ),
        Objective(
            "memft-ot",
            "MemFT-OT: the mean loss of the tokens with p < train_tau (default tau); with none, "
            "the update is skipped",
            _ot_weights,
            skips=True,
        ),
        Objective(
            "memft-soft", "MemFT with sigmoid weights around train_tau, no window", _soft_weights
        ),
        Objective(
            "memft-sw",
            "MemFT-SW: memft-sw-window on one sequence, memft-sw-curriculum on several items",
            runs="memft-sw-curriculum",
            runs_alone="memft-sw-window",
        ),
        Objective(
            "memft-sw-window",
            "MemFT-SW sliding window: soft weights, decaying after each sequence's first wrong "
            "token",
            _window_weights,
            window=True,
        ),
        Objective(
            "memft-sw-curriculum",
            "MemFT-SW curriculum: memft-ot on a growing prefix (20% to 100%) of one random item "
            "order",
            _ot_weights,
            skips=True,
            curriculum=True,
        ),
        Objective(
            "memft-ot-all",
            "memft-ot normalized by all supervised tokens instead of the active ones",
            _ot_weights,
            normalize="supervised",
            skips=True,
        ),
        Objective(
            "sft-cap",
            f"SFT with a margin cap: memft-ot-all with train_tau {SFT_CAP} (a token stops "
            f"training once p > {SFT_CAP}; the loss over all supervised tokens)",
            runs="memft-ot-all",
            train_tau=SFT_CAP,
        ),
    )
}
METHODS = tuple(OBJECTIVES)


def check_settings(method: str, settings: Settings) -> None:
    """The one check of a method's name and settings, wherever it runs (memlaw's loop, the
    Trainer)."""
    if method not in OBJECTIVES:
        raise MemlawError(f"unknown method '{method}': use one of {', '.join(METHODS)}")
    tau, train_tau = settings.tau, settings.train_tau
    if not 0.0 < tau < 1.0:
        raise MemlawError(f"tau must be within (0, 1), got {tau}")
    if train_tau is not None and not tau <= train_tau < 1.0:
        raise MemlawError(f"train tau must be within [tau, 1), got {train_tau}")
    if settings.fallback not in ("skip", "mean"):
        raise MemlawError(f"fallback must be skip or mean, got '{settings.fallback}'")
    decay = settings.position_decay
    if decay is not None and not (decay >= 0 and math.isfinite(decay)):
        raise MemlawError(f"position decay must be 0 or more, got {decay}")


def resolve(
    method: str, settings: Settings, sequences: int | None = None
) -> tuple[Objective, Settings]:
    """The entry that runs for ``method`` and the settings it runs with, checked.

    An alias runs its target with its margin as the default ``train_tau``: an explicit one
    wins, and the margin never sits below ``tau``. ``memft-sw`` needs the number of
    ``sequences``: the window on one, the curriculum on several.

    >>> objective, settings = resolve("memft", Settings())
    >>> objective.name, settings.train_tau
    ('memft-ot', 0.8)
    >>> resolve("memft-sw", Settings(), sequences=1)[0].name
    'memft-sw-window'
    """
    check_settings(method, settings)
    entry = OBJECTIVES[method]
    if entry.runs is None:
        return entry, settings
    if entry.runs_alone is not None and sequences is None:
        raise MemlawError(
            f"{method} picks {entry.runs_alone} for one sequence and {entry.runs} for several: "
            "name one of them, or give the number of sequences"
        )
    if entry.train_tau is not None and settings.train_tau is None:
        settings = replace(settings, train_tau=max(entry.train_tau, settings.tau))
    target = entry.runs_alone if sequences == 1 and entry.runs_alone else entry.runs
    return resolve(target, settings, sequences)


@dataclass(frozen=True)
class ObjectiveStep:
    """One batch's objective: the loss to back-propagate, the supervised tokens it trains
    (p < train_tau), whether the update is skipped, and MemFT-SW's advanced state."""

    loss: torch.Tensor
    active: int
    skipped: bool
    state: SlidingWindowState | None = None


def objective_step(
    objective: Objective,
    settings: Settings,
    nll: torch.Tensor,
    mask: torch.Tensor,
    *,
    wrong: torch.Tensor | None = None,
    state: SlidingWindowState | None = None,
    active_total: int | None = None,
) -> ObjectiveStep:
    """The objective of one batch. ``wrong`` (argmax ≠ target) and ``state`` (of these
    sequences) serve MemFT-SW's window. ``active_total`` overrides the count of trainable tokens
    that decides a skip (multi-process training: the count over every process).

    >>> nll = torch.tensor([[0.1, 2.0, 0.2]])
    >>> step = objective_step(OBJECTIVES["memft-ot"], Settings(), nll, nll > 0)
    >>> step.loss.item(), step.active, step.skipped
    (2.0, 1, False)
    """
    if objective.weights is None:
        raise MemlawError(f"{objective.name} is an alias: resolve() it first")
    active = int((mask & (nll.detach() > loss_threshold(settings.training_tau))).sum())
    if objective.window:
        if wrong is None or state is None:
            raise MemlawError(f"{objective.name} needs the argmax errors and per-sequence state")
        state = advance_window(wrong, mask, state)
    weights = objective.weights(nll, mask, settings, state)
    if objective.skips and active == 0 and settings.fallback == "mean":
        loss = sft_loss(nll, mask)
    elif objective.normalize == "supervised":
        loss = supervised_mean(nll, mask, weights)
    else:
        loss = weighted_mean(nll, weights)
    decisive = active if active_total is None else active_total
    skipped = objective.skips and settings.fallback == "skip" and decisive == 0
    return ObjectiveStep(loss, active, skipped, state if objective.window else None)
