"""The default recipe: batch size by set size, the epoch cap, and annealing on plateau."""

from pathlib import Path

import pytest
import torch

from memlaw.adapters import LoraSpec
from memlaw.data import encode_items, generate_phonebook, generate_random_tokens
from memlaw.models import load_model
from memlaw.recipe import (
    ANNEAL_FLOOR,
    ANNEAL_PATIENCE,
    LARGE_BATCH_LEARNING_RATE,
    LEARNING_RATE,
    MAX_EPOCHS,
    UPDATES_PER_EPOCH,
    anneal_patience,
    default_batch_size,
    default_lr,
    default_recipe,
    updates_per_epoch,
)
from memlaw.train import TrainConfig, train


@pytest.mark.parametrize("items, batch", [(1, 1), (3, 3), (4, 4), (30, 5), (60, 10), (500, 16)])
def test_batch_size_keeps_about_six_updates_per_epoch(items, batch):
    assert default_batch_size(items) == batch
    assert default_recipe(items).batch_size == batch


def test_train_without_a_budget_uses_the_recipe():
    model, tokenizer = load_model("tiny")
    encoded = encode_items(generate_phonebook(30, seed=1), tokenizer)
    run = train(model, tokenizer, encoded, LoraSpec(rank=1), TrainConfig(epochs=1))
    assert run.config["batch_size"] == default_batch_size(30)
    assert run.steps == 6  # ⌈30 / 5⌉ batches in the one epoch
    model, tokenizer = load_model("tiny")
    budget = train(
        model, tokenizer, encoded[:4], LoraSpec(rank=1), TrainConfig(), final_probe=False
    )
    assert budget.config["total_steps"] == MAX_EPOCHS  # one batch of 4 per epoch


@pytest.mark.parametrize(
    "items, lr", [(4, LEARNING_RATE), (30, LEARNING_RATE), (90, LEARNING_RATE),
                  (91, LARGE_BATCH_LEARNING_RATE), (112, LARGE_BATCH_LEARNING_RATE),
                  (113, LEARNING_RATE), (200, LEARNING_RATE), (1000, LEARNING_RATE)]
)  # fmt: skip
def test_the_rate_follows_batch_and_updates_per_epoch(items, lr):
    """3e-2 only where it was measured to win: batches of 16 with at most 7 updates per epoch."""
    batch = default_recipe(items).batch_size
    assert default_recipe(items).lr == lr == default_lr(batch, items)


def test_train_takes_the_rate_of_the_batch_it_uses_unless_told():
    _, tokenizer = load_model("tiny")
    phonebook = encode_items(generate_phonebook(200, seed=1), tokenizer)

    def rate(items: int = 100, **config) -> float:
        model = load_model("tiny")[0]  # each run on the bare model
        run = train(model, tokenizer, phonebook[:items], LoraSpec(rank=1),
                    TrainConfig(steps=1, **config), final_probe=False)  # fmt: skip
        return run.config["lr"]

    assert rate() == LARGE_BATCH_LEARNING_RATE  # batch 16, 7 updates per epoch
    assert rate(items=200) == LEARNING_RATE  # batch 16, but 13 updates per epoch
    assert rate(batch_size=4) == LEARNING_RATE  # the user's batch, the rate for it
    assert rate(batch_size=4, lr=0.05) == 0.05  # the user's rate wins


def test_annealing_halves_the_rate_to_its_floor_then_stops_at_the_plateau():
    model, tokenizer = load_model("tiny")
    # far more random tokens than a rank-1 adapter on a 4-layer model can hold
    encoded = encode_items(generate_random_tokens(tokenizer, 256, seed=0), tokenizer)
    config = TrainConfig(method="sft", lr=1e-2, epochs=300, anneal_patience=3, seed=0)
    run = train(model, tokenizer, encoded, LoraSpec(rank=1), config, final_probe=False)
    assert run.stop_reason == "plateau"
    assert run.config["final_lr"] == pytest.approx(1e-2 * ANNEAL_FLOOR)
    assert run.steps < 300


def test_a_constant_rate_without_a_plateau_test_trains_the_whole_budget():
    model, tokenizer = load_model("tiny")
    encoded = encode_items(generate_random_tokens(tokenizer, 64, seed=0), tokenizer)
    config = TrainConfig(method="sft", epochs=30, seed=0)
    run = train(model, tokenizer, encoded, LoraSpec(rank=1), config, final_probe=False)
    assert run.stop_reason == "budget" and run.steps == 30
    assert run.config["final_lr"] == pytest.approx(1e-2)


def _stopper(patience: int, lr: float):
    """The recipe's stopper on a one-weight optimizer: (optimizer, stopper)."""
    from memlaw.train import _Stopper

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    config = TrainConfig(method="memft", lr=lr, anneal_patience=patience)
    return optimizer, _Stopper(config, optimizer, 3.0)


def _epoch_entry(epoch: int, loss: float, certified: int):
    """One log entry standing for a whole epoch: its loss and certified items."""
    from memlaw.train import StepLog

    return StepLog(step=epoch, loss=loss, objective=loss, active_tokens=1, above_share=0.5,
                   certified_items=certified, exact_items=0, skipped=False, grad_norm=None,
                   seconds=0.0, epoch=epoch, tokens=1)  # fmt: skip


def _stop_epoch(certified_per_epoch: list[int], patience: int = 2) -> int | None:
    """The epoch at which the recipe's stop ends a run whose plain loss is flat throughout."""
    _, stopper = _stopper(patience, lr=1.0)
    log = []
    for epoch, certified in enumerate(certified_per_epoch, start=1):
        log.append(_epoch_entry(epoch, 0.5, certified))
        if stopper.plateaued(log):
            return epoch
    return None


def test_the_stop_waits_while_items_still_cross_the_boundary():
    # a flat loss halves the rate every 3 epochs (patience 2) to the floor, then stops
    flat = _stop_epoch([5] * 40)
    assert flat is not None and flat < 20
    # the same flat loss, one more item certified every other epoch until epoch 30: not a plateau
    rising = [5 + min(epoch, 30) // 2 for epoch in range(60)]
    stopped = _stop_epoch(rising)
    assert stopped is not None and 30 < stopped < 40
    # a count that only falls back and returns to an earlier best is no progress
    assert _stop_epoch([7, 5, 6, 7, 6, 7] * 7) == flat


LAWS = Path(__file__).resolve().parents[1] / "laws"


def test_the_shipped_laws_runs_decide_the_same_under_the_recipes_patience():
    """The PhoneBook law's sweep annealed after 10 epochs on every set; memlaw train's recipe
    now waits at least 60 updates, so 12 epochs on its ℓ 250 sets (5 updates per epoch).
    Replaying each stored run's epoch losses through the stopper under both gives the same
    rate and stop at every epoch: the law's runs are the runs memlaw train makes (by
    induction: the same decisions give the same next epoch)."""
    from memlaw.sweep import SweepStore

    lengthened = 0
    for row in SweepStore(LAWS / "smollm2-135m-phonebook.db").rows(with_record=True):
        config = row["record"]["config"]
        assert config["anneal_patience"] == ANNEAL_PATIENCE
        recipe = anneal_patience(config["items"], config["batch_size"])
        lengthened += recipe > ANNEAL_PATIENCE
        deciders = [(*_stopper(p, lr=config["lr"]), []) for p in (ANNEAL_PATIENCE, recipe)]
        for epoch, (loss, certified) in enumerate(row["record"]["epochs"], start=1):
            entry = _epoch_entry(epoch, loss, certified)
            decisions = []
            for optimizer, stopper, log in deciders:
                log.append(entry)
                decisions.append((stopper.plateaued(log), optimizer.param_groups[0]["lr"]))
            assert decisions[0] == decisions[1], (row["key"], epoch)
    assert lengthened == 4  # ℓ 250: 25 items in batches of 5


def test_one_long_document_waits_as_many_updates_as_a_set_of_many_items():
    assert updates_per_epoch(1, 1) == 1 and anneal_patience(1) == 6 * ANNEAL_PATIENCE
    for items in (24, 100, 1000):  # 6 updates per epoch or more: the epochs alone
        assert updates_per_epoch(items, default_batch_size(items)) >= UPDATES_PER_EPOCH
        assert anneal_patience(items) == ANNEAL_PATIENCE
