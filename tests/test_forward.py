"""The fast path gives the reference path's results: same losses step after step."""

import pytest
import torch

from memlaw.adapters import LoraSpec, decoder_layers
from memlaw.data import MemoryItem, encode_items, generate_phonebook
from memlaw.forward import FastForward, ReferenceForward, choose_forward
from memlaw.models import load_model
from memlaw.probe import mean_target_loss, teacher_forced
from memlaw.train import TrainConfig, train


def trajectories(name, items_fn, lora, **config):
    runs = {}
    for fast in (False, True):
        model, tokenizer = load_model(name)
        encoded = encode_items(items_fn(tokenizer), tokenizer)
        config = {"batch_size": 0} | config  # the whole set per step unless a test says
        settings = TrainConfig(steps=50, stop_when_certified=False, fast_path=fast, **config)
        runs[fast] = train(model, tokenizer, encoded, lora, settings, final_probe=False)
    return runs[False], runs[True]


def assert_same_trajectory(reference, fast):
    assert reference.config["forward"] == "reference path requested"
    assert fast.config["forward"].startswith("fast path from layer")
    assert len(reference.log) == len(fast.log) == 50
    for a, b in zip(reference.log, fast.log, strict=True):
        assert b.loss == pytest.approx(a.loss, rel=1e-4)
        assert b.objective == pytest.approx(a.objective, rel=1e-4, abs=1e-7)
        assert b.active_tokens == a.active_tokens


@pytest.mark.parametrize("method", ["sft", "memft-ot", "memft-sw"])
def test_fast_path_matches_reference_on_tiny(method):
    def items(tokenizer):  # uneven prompt and target lengths, so padding is exercised
        return generate_phonebook(5, seed=3) + [MemoryItem("A longer key, with more words:", "42")]

    reference, fast = trajectories("tiny", items, LoraSpec(rank=4, layers=(2, 3)), method=method)
    assert_same_trajectory(reference, fast)


def test_fast_path_matches_reference_with_minibatches_and_sliding_window():
    def items(tokenizer):
        return generate_phonebook(7, seed=5)

    reference, fast = trajectories("tiny", items, LoraSpec(rank=2, layers=(1,)), batch_size=3)
    assert_same_trajectory(reference, fast)


@pytest.mark.slow
def test_fast_path_matches_reference_on_the_default_model():
    def items(tokenizer):
        return generate_phonebook(4, seed=0)

    reference, fast = trajectories("smollm2-135m", items, LoraSpec(rank=1), method="memft-ot")
    assert_same_trajectory(reference, fast)


def test_fast_path_caches_only_below_the_adapter(tiny):
    model, tokenizer = tiny
    encoded = encode_items(generate_phonebook(3), tokenizer)
    fast = FastForward(model, encoded, tokenizer.pad_token_id, first_layer=2)
    assert [tuple(s.shape) for s in fast.cache] == [(len(e.input_ids), 64) for e in encoded]
    chosen, note = choose_forward(model, encoded, tokenizer.pad_token_id, 2)
    assert isinstance(chosen, FastForward) and note == "fast path from layer 2"


def test_fallback_when_the_fast_path_disagrees(tiny, monkeypatch):
    model, tokenizer = tiny
    encoded = encode_items(generate_phonebook(3), tokenizer)
    original = FastForward.__call__

    def off_by_a_bit(self, rows):
        losses = original(self, rows)
        losses.nll = losses.nll * 1.01
        return losses

    monkeypatch.setattr(FastForward, "__call__", off_by_a_bit)
    chosen, note = choose_forward(model, encoded, tokenizer.pad_token_id, 2)
    assert isinstance(chosen, ReferenceForward) and "disagrees" in note


def test_hidden_states_beyond_the_memory_limit_live_in_a_mapped_file(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMLAW_CACHE", str(tmp_path))
    model, tokenizer = tiny
    encoded = encode_items(generate_phonebook(4), tokenizer)
    in_memory = FastForward(model, encoded, tokenizer.pad_token_id, first_layer=2)
    on_disk = FastForward(model, encoded, tokenizer.pad_token_id, first_layer=2, memory_limit=1)
    assert not in_memory.on_disk and on_disk.on_disk
    assert not list((tmp_path / "hidden-states").iterdir())  # unlinked: no file left behind
    a, b = in_memory([0, 1, 2, 3]), on_disk([0, 1, 2, 3])
    assert torch.equal(a.nll, b.nll)


@pytest.mark.parametrize("fast", [False, True])
def test_the_base_loss_shares_the_fast_paths_pass(fast):
    model, tokenizer = load_model("tiny")
    encoded = encode_items(generate_phonebook(40, seed=1), tokenizer)  # two caching batches
    plain = mean_target_loss(teacher_forced(model, encoded, tokenizer.pad_token_id))
    calls = []
    decoder_layers(model)[0].register_forward_hook(lambda *args: calls.append(1))
    config = TrainConfig(steps=1, batch_size=0, stop_when_certified=False, fast_path=fast)
    run = train(model, tokenizer, encoded, LoraSpec(rank=2, layers=(2,)), config, final_probe=False)
    assert run.base_loss == pytest.approx(plain, rel=1e-5)
    assert run.config["forward"].startswith("fast path" if fast else "reference")
    # fast: 2 caching batches and the 8-row check, nothing more (the base loss reads the cache);
    # reference: the base-loss pass (2 batches) and the one training step (the whole set)
    assert len(calls) == 3
