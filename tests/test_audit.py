import json
import math

import pytest
import torch

from memlaw.adapters import LoraSpec
from memlaw.audit import audit, token_budget
from memlaw.data import encode_items, generate_phonebook
from memlaw.models import load_model
from memlaw.probe import teacher_forced
from memlaw.train import TrainConfig, save_run, train
from tests.test_cli import memlaw


def test_budget_shares_match_the_token_probabilities():
    model, tokenizer = load_model("tiny")
    encoded = encode_items(generate_phonebook(4, seed=1), tokenizer)
    run = train(
        model, tokenizer, encoded, LoraSpec(rank=8), TrainConfig(steps=15), final_probe=False
    )
    budget = token_budget(run.model, encoded, tokenizer.pad_token_id)
    nll = [x for s in teacher_forced(run.model, encoded, tokenizer.pad_token_id) for x in s.nll]
    assert budget.tokens == len(nll) == 40
    assert budget.above == sum(x < math.log(2) for x in nll)
    assert budget.loss == pytest.approx(sum(nll), rel=1e-5)
    above_boundary = sum(x for x in nll if x < math.log(2))
    assert budget.loss_above == pytest.approx(above_boundary, rel=1e-5, abs=1e-6)
    # a token's logit-gradient norm is at least 1 - p and at most sqrt(2)(1 - p)
    rest = budget.gradient - budget.gradient_above
    for value, total in (
        (budget.gradient_above, budget.above),
        (rest, budget.tokens - budget.above),
    ):
        assert 0 <= value <= math.sqrt(2) * total


def test_one_token_gradient_norm_by_hand():
    # logits (0, ln 3) over 2 tokens, target 1: p = (1/4, 3/4); gradient (1/4, -1/4)
    from memlaw.data import EncodedItem

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask):
            logits = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0]]])
            return type("Out", (), {"logits": logits})

    budget = token_budget(Fixed(), [EncodedItem((0,), (1,))], pad_token_id=0)
    assert (budget.tokens, budget.above) == (1, 1)
    assert budget.gradient == pytest.approx(math.sqrt(2) / 4)
    assert budget == tuple(budget)  # still unpacks as the six numbers, in this order


def test_sft_wastes_budget_once_tokens_are_memorized(tmp_path, capsys, monkeypatch):
    model, tokenizer = load_model("tiny")
    encoded = encode_items(generate_phonebook(4, seed=1), tokenizer)
    early = audit(model, tokenizer, encoded)
    assert early.above_share == 0.0 and early.gradient_mass_above == 0.0
    run = train(model, tokenizer, encoded, LoraSpec(rank=8), TrainConfig(steps=150))
    late = audit(run.model, tokenizer, encoded)
    assert late.above_share == 1.0 and late.certified_share == 1.0
    assert "certified" in late.recommendation
    save_run(run, tmp_path / "run")
    code, out, err = memlaw(
        capsys,
        monkeypatch,
        "audit",
        "-m",
        "tiny",
        "-a",
        tmp_path / "run",
        "-g",
        "phonebook:4",
        "--data-seed",
        1,
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["above_share"] == 1.0


def test_an_adapter_trained_to_plateau_is_told_to_raise_the_rank_not_to_switch_method(
    tmp_path, capsys, monkeypatch
):
    """At capacity MemFT certified no more than SFT (bench/memft_at_capacity.py): when the
    adapter's own record says its training plateaued on this set, the audit says raise the rank
    instead of "train with MemFT"; on another set the record says nothing."""
    model, tokenizer = load_model("tiny")
    encoded = encode_items(generate_phonebook(4, seed=1), tokenizer)
    run = train(model, tokenizer, encoded, LoraSpec(rank=8), TrainConfig(steps=20))
    before = audit(run.model, tokenizer, encoded)
    assert before.above_share >= 0.25 and before.certified_share < 1.0
    assert before.recommendation.startswith("train with MemFT")  # without the record
    save_run(run, tmp_path / "run")
    record_file = tmp_path / "run" / "record.json"
    record = json.loads(record_file.read_text())
    record_file.write_text(json.dumps(record | {"stop_reason": "plateau"}))  # as a plateau stop
    args = ("audit", "-m", "tiny", "-a", tmp_path / "run", "--data-seed", 1, "--json")
    code, out, err = memlaw(capsys, monkeypatch, *args, "-g", "phonebook:4")
    assert code == 0, err
    advice = json.loads(out)["recommendation"]
    assert (
        advice.startswith("at capacity: training stopped at a plateau")
        and "raise the rank" in advice
    )
    code, out, err = memlaw(capsys, monkeypatch, *args, "-g", "phonebook:3")  # another set
    assert code == 0, err
    assert not json.loads(out)["recommendation"].startswith("at capacity")


def test_audit_reuses_one_pass_matches_probe_and_quotes_the_law(tmp_path, capsys, monkeypatch):
    from memlaw.law import MemoryLaw
    from memlaw.probe import probe

    model, tokenizer = load_model("tiny")
    encoded = encode_items(generate_phonebook(4, seed=1), tokenizer)
    run = train(
        model, tokenizer, encoded, LoraSpec(rank=2), TrainConfig(steps=3), final_probe=False
    )
    law = MemoryLaw.from_dict(
        {
            "format": "memlaw.law/1",
            "form": "full",
            "params": {"C": 2.0, "alpha": 0.5, "beta": 0.5, "b": 0.0},
            "metadata": {"model": "tiny"},
        }
    )
    report = audit(run.model, tokenizer, encoded, law=law, n_eff=2)
    alone = probe(run.model, tokenizer, encoded)
    assert report.certified_share == alone.certified_share
    assert report.exact_match == alone.exact_match
    assert report.stubborn_tokens == len(alone.stubborn)
    assert report.above_share < 0.25
    # C·N^0.5·ℓ^-0.5 at ℓ = 40: N = 2 → 0.447, N = 4 → 0.632
    assert "ΔL 0.45 → 0.63" in report.recommendation and "N_eff 2 to 4" in report.recommendation

    save_run(run, tmp_path / "run")
    law_file = tmp_path / "law.json"
    law_file.write_text(json.dumps(law.to_dict()))
    args = ("audit", "-m", "tiny", "-g", "phonebook:4", "--data-seed", 1, "--law", law_file)
    code, out, err = memlaw(capsys, monkeypatch, *args, "-a", tmp_path / "run", "--json")
    assert code == 0, err
    assert "the law predicts ΔL 0.45 → 0.63" in json.loads(out)["recommendation"]
    code, out, err = memlaw(capsys, monkeypatch, *args)
    assert code == 2 and "--law needs --adapter" in err
    other = tmp_path / "other.json"
    other.write_text(json.dumps(law.to_dict() | {"metadata": {"model": "smollm2-135m"}}))
    code, out, err = memlaw(capsys, monkeypatch, *args[:-1], other, "-a", tmp_path / "run")
    assert code == 2 and "fitted for model smollm2-135m, not tiny" in err


def test_the_budget_from_probabilities_alone_brackets_the_models_audit():
    """Without the model: the share of tokens and of loss above τ are the audit's own, and the
    audit's gradient share lies inside the bounds."""
    from memlaw.audit import budget_from_probabilities
    from memlaw.probe import probe

    model, tokenizer = load_model("tiny")
    encoded = encode_items(generate_phonebook(4, seed=1), tokenizer)
    run = train(
        model, tokenizer, encoded, LoraSpec(rank=8), TrainConfig(steps=12), final_probe=False
    )
    report = audit(run.model, tokenizer, encoded)
    probabilities = [
        p for item in probe(run.model, tokenizer, encoded).items for p in item.probabilities
    ]
    budget = budget_from_probabilities(probabilities)
    assert 0 < report.above_share < 1  # a mixed state, so the bounds are not trivial
    assert budget.tokens == report.tokens
    assert budget.above_share == pytest.approx(report.above_share)
    assert budget.loss_mass_above == pytest.approx(report.loss_mass_above, rel=1e-4)
    low, high = budget.gradient_mass_above_low, budget.gradient_mass_above_high
    assert low - 1e-6 <= report.gradient_mass_above <= high + 1e-6
    assert high - low < 0.5
