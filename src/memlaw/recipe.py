"""The default training recipe: learning rate, batch size and epoch cap for a memory set.

Measured with the recipe search (``bench/time_to_recall.py --search``; docs/benchmarks.md,
"Recipe search"), on PB1000 (100 phone numbers, ℓ ≈ 1000), rank 1 on the MLP of layer 20 of
SmolLM2-135M, ``memft``, seconds to certified recall on two CPU cores:

- Batch size: whole-set batches stop at a plateau without certifying (one update per epoch);
  batch 1 costs ~3× per epoch what batch 16 costs and was cut at 778 s. Small batches cost more
  per token (fixed costs per step), large ones give too few updates per epoch, so the rule
  keeps about :data:`UPDATES_PER_EPOCH` updates per epoch within [:data:`MIN_BATCH`,
  :data:`MAX_BATCH`] items.
- Learning rate: at batch 16, lr 3e-2 certified on 3 of 3 seeds (median 534 s) against 703 s
  for 1e-2 (seed 0); 3e-3 was cut at 778 s. At batch 4 the order flips: 1e-2 certified in
  632 s, 3e-2 was cut at 778 s. ``bench/recipe_rule.py`` checks other set sizes: on 25 and 50
  items (batches 5 and 9) the two rates tie; on PB2000 (200 items, batch 16, 13 updates per
  epoch, rank 4) 1e-2 won on 3 of 3 seeds (median 808 s against 1,163 s). So the faster
  rate holds where it was measured to win, batches of :data:`LARGE_BATCH` items with at most
  :data:`LARGE_BATCH_MAX_UPDATES` updates per epoch (sets of 91–112 items), and every other
  set trains at :data:`LEARNING_RATE`, the rate the shipped law was measured with
  (:func:`default_lr`).
- Schedule: at a constant rate the last items keep falling back below p = 0.5 (a constant
  3e-2 was cut at 635 s), so the rate is annealed on plateau (:data:`ANNEAL_PATIENCE`); a
  3-epoch warm-up did not help (cut at 522 s). The patience is also at least
  :data:`ANNEAL_MIN_UPDATES` updates (:func:`anneal_patience`), for sets with few updates per
  epoch, one long document above all.

>>> default_recipe(100)
Recipe(lr=0.03, batch_size=16, max_epochs=400, anneal_patience=10)
>>> default_recipe(200).lr  # 13 updates per epoch
0.01
>>> default_recipe(25)  # 5 updates per epoch: 12 epochs make 60 updates
Recipe(lr=0.01, batch_size=5, max_epochs=400, anneal_patience=12)
>>> default_recipe(3).batch_size  # a small set: the whole set in every step
3
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LEARNING_RATE = 1e-2  # every set but those below
LARGE_BATCH = 16
LARGE_BATCH_LEARNING_RATE = 3e-2  # at LARGE_BATCH items and at most LARGE_BATCH_MAX_UPDATES
LARGE_BATCH_MAX_UPDATES = 7  # measured: 7 updates per epoch won (100 items), 13 lost (200)
UPDATES_PER_EPOCH = 6
MIN_BATCH = 4
MAX_BATCH = 16
MAX_EPOCHS = 400
# Halve the rate after this many epochs without a 1% better loss, down to lr / 8; a plateau
# there ends the run unless items are still being certified (memlaw.train._Stopper).
ANNEAL_PATIENCE = 10
ANNEAL_FLOOR = 1 / 8
# ...and the recipe waits at least this many updates: the patience a set of UPDATES_PER_EPOCH
# updates per epoch gets. With one long sequence an epoch is one update, and 10 updates stopped
# MemFT-SW's window as "plateaued" with 14-39% of its tokens recalled while its loss still fell
# ~0.1% per update (bench/results/memft_at_capacity-longcontext-e400-patience10.db; given 60
# updates those runs went on to 52-58%).
ANNEAL_MIN_UPDATES = ANNEAL_PATIENCE * UPDATES_PER_EPOCH


@dataclass(frozen=True)
class Recipe:
    """How ``memlaw train`` trains a set unless told otherwise."""

    lr: float
    batch_size: int
    max_epochs: int
    anneal_patience: int = ANNEAL_PATIENCE

    def describe(self) -> str:
        """One line for records, plans and laws.

        >>> Recipe(0.01, 16, 400).describe()
        'AdamW lr 0.01 halved after 10 epochs without progress (to lr/8), batch 16, at most 400 epochs, stop at certified recall or plateau'
        """
        return (
            f"AdamW lr {self.lr:g} halved after {self.anneal_patience} epochs without progress "
            f"(to lr/{round(1 / ANNEAL_FLOOR)}), batch {self.batch_size}, at most "
            f"{self.max_epochs} epochs, stop at certified recall or plateau"
        )


def updates_per_epoch(n_items: int, batch_size: int) -> int:
    """Optimizer updates in one epoch of ``n_items`` in batches of ``batch_size`` (0, or a
    batch as large as the set: the whole set, one update).

    >>> [updates_per_epoch(100, b) for b in (16, 0, 200)]
    [7, 1, 1]
    """
    if batch_size <= 0 or batch_size >= n_items:
        return 1
    return math.ceil(n_items / batch_size)


def anneal_patience(
    n_items: int,
    batch_size: int | None = None,
    *,
    epochs: int = ANNEAL_PATIENCE,
    min_updates: int = ANNEAL_MIN_UPDATES,
) -> int:
    """The patience, in epochs, for ``n_items`` in batches of ``batch_size`` (default: the
    recipe's): ``epochs``, and at least ``min_updates`` updates. The recipe's,
    :data:`ANNEAL_PATIENCE` epochs and :data:`ANNEAL_MIN_UPDATES` updates, gives sets of
    :data:`UPDATES_PER_EPOCH` updates per epoch or more (every set of 24 items or more under
    the recipe's batch) :data:`ANNEAL_PATIENCE`.

    >>> [anneal_patience(n) for n in (1, 4, 5, 20, 25, 100, 1000)]
    [60, 60, 30, 12, 12, 10, 10]
    >>> anneal_patience(100, batch_size=50)  # 2 updates per epoch
    30
    >>> anneal_patience(1, epochs=10, min_updates=0)  # epochs only
    10
    """
    batch = default_batch_size(n_items) if batch_size is None else batch_size
    updates = updates_per_epoch(n_items, batch)
    return max(epochs, math.ceil(min_updates / updates))


def default_batch_size(n_items: int) -> int:
    """About :data:`UPDATES_PER_EPOCH` updates per epoch, within [MIN_BATCH, MAX_BATCH] items;
    a set smaller than MIN_BATCH is one batch.

    >>> [default_batch_size(n) for n in (1, 4, 30, 100, 1000)]
    [1, 4, 5, 16, 16]
    """
    if n_items <= MIN_BATCH:
        return max(n_items, 1)
    return min(MAX_BATCH, max(MIN_BATCH, math.ceil(n_items / UPDATES_PER_EPOCH)))


def batch_lr(batch_size: int) -> float | None:
    """The rate when the batch alone settles it: :data:`LEARNING_RATE` below
    :data:`LARGE_BATCH` items, whatever the set's size; ``None`` from :data:`LARGE_BATCH` up,
    where the rate also depends on the updates per epoch (:func:`default_lr`).

    >>> [batch_lr(b) for b in (4, 15, 16)]
    [0.01, 0.01, None]
    """
    return LEARNING_RATE if batch_size < LARGE_BATCH else None


def default_lr(batch_size: int, n_items: int) -> float:
    """The rate for ``n_items`` trained in batches of ``batch_size``:
    :data:`LARGE_BATCH_LEARNING_RATE` at batches of :data:`LARGE_BATCH` items or more with at
    most :data:`LARGE_BATCH_MAX_UPDATES` updates per epoch, else :data:`LEARNING_RATE` (the
    measurements are in the module's docstring).

    >>> [default_lr(16, n) for n in (91, 100, 112, 113, 200)]
    [0.03, 0.03, 0.03, 0.01, 0.01]
    >>> [default_lr(b, 100) for b in (4, 15, 100)]
    [0.01, 0.01, 0.03]
    """
    fixed = batch_lr(batch_size)
    if fixed is not None:
        return fixed
    if math.ceil(n_items / batch_size) <= LARGE_BATCH_MAX_UPDATES:
        return LARGE_BATCH_LEARNING_RATE
    return LEARNING_RATE


def describe_lr(lr: float | None) -> str:
    """A rate as records and reports name it; ``None`` is the recipe's rule.

    >>> describe_lr(0.02)
    'AdamW lr 0.02'
    >>> describe_lr(None)
    'AdamW lr 0.03 at batches of 16 items or more and at most 7 updates per epoch (else 0.01)'
    """
    if lr is not None:
        return f"AdamW lr {lr:g}"
    return (
        f"AdamW lr {LARGE_BATCH_LEARNING_RATE:g} at batches of {LARGE_BATCH} items or more and "
        f"at most {LARGE_BATCH_MAX_UPDATES} updates per epoch (else {LEARNING_RATE:g})"
    )


def default_recipe(n_items: int) -> Recipe:
    """The recipe for a set of ``n_items`` memory items."""
    batch = default_batch_size(n_items)
    return Recipe(
        lr=default_lr(batch, n_items),
        batch_size=batch,
        max_epochs=MAX_EPOCHS,
        anneal_patience=anneal_patience(n_items, batch),
    )
