import math

from memlaw.adapters import LoraSpec
from memlaw.data import encode_items, generate_phonebook
from memlaw.models import load_model
from memlaw.probe import phase_transition_table, probe, teacher_forced
from memlaw.train import TrainConfig, train


def test_half_trained_probe_is_consistent():
    model, tokenizer = load_model("tiny")
    encoded = encode_items(generate_phonebook(6, seed=2), tokenizer)
    result = train(
        model, tokenizer, encoded, LoraSpec(rank=4), TrainConfig(steps=12), final_probe=False
    )
    report = probe(result.model, tokenizer, encoded)
    assert report.length == 60 and len(report.items) == 6
    assert report.base_loss > report.final_loss
    for item in report.items:
        # greedy decoding reproduces an item exactly when every target token is the argmax
        # given the correct prefix (induction over positions)
        assert item.exact_match == all(item.argmax_ok)
        if item.first_error is not None:
            assert item.first_error == item.argmax_ok.index(False)
        if item.certified:
            assert item.exact_match
    above, below = report.phase_transition[:2]
    assert above["tokens"] + below["tokens"] == 60
    assert above["reproduced"] in (None, 1.0)  # p > 0.5 is always the argmax
    assert len(report.stubborn) == sum(not i.exact_match for i in report.items)
    for s in report.stubborn:
        assert s["probability"] < 0.5 and s["expected"] != s["generated"]
    mean = sum(-math.log(p) for i in report.items for p in i.probabilities) / 60
    assert abs(mean - report.final_loss) < 1e-5


def test_phase_table_bins(tiny):
    model, tokenizer = tiny
    encoded = encode_items(generate_phonebook(2), tokenizer)
    report = probe(model, tokenizer, encoded, generate=False)
    assert report.exact_match is None and report.base_loss is None
    bins = report.phase_transition[2:]
    assert len(bins) == 10 and sum(b["tokens"] for b in bins) == 20
    assert phase_transition_table(report.items)[0]["bin"] == "p > 0.5"


def test_teacher_forced_batches_agree(tiny):
    model, tokenizer = tiny
    encoded = encode_items(generate_phonebook(5), tokenizer)
    whole = teacher_forced(model, encoded, tokenizer.pad_token_id)
    pieces = teacher_forced(model, encoded, tokenizer.pad_token_id, batch_size=2)
    for a, b in zip(whole, pieces, strict=False):
        assert all(abs(x - y) < 1e-5 for x, y in zip(a.nll, b.nll, strict=False))
