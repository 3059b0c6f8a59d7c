"""The prompt/target convention: items are recalled with the separator they were trained with."""

from memlaw.adapters import LoraSpec
from memlaw.data import MemoryItem, encode_items
from memlaw.models import load_model
from memlaw.probe import probe
from memlaw.train import TrainConfig, train

ITEMS = [MemoryItem("Ada Lovelace:", "3141592653"), MemoryItem("Alan Turing:", "2718281828")]


def test_encode_items_puts_the_separator_at_the_end_of_the_prompt():
    _, tokenizer = load_model("tiny")
    plain = encode_items(ITEMS, tokenizer)
    spaced = encode_items(ITEMS, tokenizer, separator=" ")
    assert spaced[0].target_ids == plain[0].target_ids  # the supervised span is unchanged
    assert tokenizer.decode(list(plain[0].input_ids)).endswith("Lovelace:3141592653")
    assert tokenizer.decode(list(spaced[0].input_ids)).endswith("Lovelace: 3141592653")


def test_items_are_recalled_with_the_convention_they_were_trained_with():
    model, tokenizer = load_model("tiny")
    trained_with = encode_items(ITEMS, tokenizer, separator=" ")
    config = TrainConfig(method="sft", lr=3e-2, steps=150, seed=0)
    run = train(model, tokenizer, trained_with, LoraSpec(rank=8), config, final_probe=False)
    same = probe(run.model, tokenizer, trained_with)
    other = probe(run.model, tokenizer, encode_items(ITEMS, tokenizer))
    assert same.summary()["certified_share"] == 1.0
    assert same.summary()["exact_match"] == 1.0
    # Without the separator the prompt is not the one trained: recall is not guaranteed.
    assert other.summary()["final_loss"] > same.summary()["final_loss"]
