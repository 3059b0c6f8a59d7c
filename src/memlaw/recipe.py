"""The default training recipe: learning rate, batch size and epoch cap for a memory set.

Measured in a one-seed pilot (the full search, ``bench/time_to_recall.py --search``, is still
to run; docs/benchmarks.md, "Time to certified recall"): on PB1000 (100 phone numbers,
ℓ ≈ 1000), rank 4 on the MLP of layer 20 of SmolLM2-135M, whole-set
batches are the slowest way to certified recall (1 update per epoch: after 76 epochs, 309 s,
the loss was still 1.66 nats and nothing was certified), while batches of 16 certify in about
60 epochs. Small batches cost more per token (fixed costs per step), large ones give too few
updates per epoch; the rule keeps about :data:`UPDATES_PER_EPOCH` updates per epoch within
[:data:`MIN_BATCH`, :data:`MAX_BATCH`] items. lr 3e-2 at batch 16 was worse than 1e-2 (loss
2.11 against 1.31 at epoch 32). At a constant 1e-2 the last items keep falling back below
p = 0.5 (rank 8 on 1000 PhoneBook tokens reached 98 of 100 items certified at epoch 68, then
69 at epoch 91), so the rate is annealed on plateau (:data:`ANNEAL_PATIENCE`).

>>> default_recipe(100)
Recipe(lr=0.01, batch_size=16, max_epochs=400, anneal_patience=10)
>>> default_recipe(3).batch_size  # a small set: the whole set in every step
3
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LEARNING_RATE = 1e-2
UPDATES_PER_EPOCH = 6
MIN_BATCH = 4
MAX_BATCH = 16
MAX_EPOCHS = 400
# Halve the rate after this many epochs without a 1% better loss, down to lr / 8; a plateau
# there ends the run (memlaw.train._Stopper).
ANNEAL_PATIENCE = 10
ANNEAL_FLOOR = 1 / 8


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


def default_batch_size(n_items: int) -> int:
    """About :data:`UPDATES_PER_EPOCH` updates per epoch, within [MIN_BATCH, MAX_BATCH] items;
    a set smaller than MIN_BATCH is one batch.

    >>> [default_batch_size(n) for n in (1, 4, 30, 100, 1000)]
    [1, 4, 5, 16, 16]
    """
    if n_items <= MIN_BATCH:
        return max(n_items, 1)
    return min(MAX_BATCH, max(MIN_BATCH, math.ceil(n_items / UPDATES_PER_EPOCH)))


def default_recipe(n_items: int) -> Recipe:
    """The recipe for a set of ``n_items`` memory items."""
    return Recipe(lr=LEARNING_RATE, batch_size=default_batch_size(n_items), max_epochs=MAX_EPOCHS)
