import json
import math

import pytest
import torch
from peft import PeftModel

from memlaw.adapters import LoraSpec
from memlaw.data import encode_items, generate_phonebook, generate_random_tokens
from memlaw.errors import MemlawError
from memlaw.models import load_model
from memlaw.objectives import OBJECTIVES, memft_ot_all_loss, sft_cap_loss
from memlaw.probe import probe
from memlaw.train import TrainConfig, save_run, train


def run(method="sft", steps=40, n=4, **config):
    model, tokenizer = load_model("tiny")
    encoded = encode_items(generate_phonebook(n, seed=1), tokenizer)
    return train(
        model,
        tokenizer,
        encoded,
        LoraSpec(rank=8),
        TrainConfig(method=method, steps=steps, **config),
    )


def test_same_seed_same_losses_other_seed_other_losses():
    a = run(steps=8, stop_when_certified=False)
    b = run(steps=8, stop_when_certified=False)
    c = run(steps=8, stop_when_certified=False, seed=1)
    assert [e.loss for e in a.log] == [e.loss for e in b.log]
    assert [e.loss for e in a.log] != [e.loss for e in c.log]


@pytest.mark.parametrize("method", ["sft", "memft-ot", "memft-soft", "memft-sw"])
def test_each_method_memorizes_and_stops_when_certified(method):
    result = run(method=method, steps=150)
    assert result.stop_reason == "certified"
    assert result.steps < 150
    report = result.report
    assert report.certified_share == 1.0 and report.exact_match == 1.0
    assert report.delta_loss == pytest.approx(result.base_loss - report.final_loss)
    assert report.final_loss < math.log(2) < result.base_loss
    assert result.config["method"] == ("memft-sw-curriculum" if method == "memft-sw" else method)


def test_step_log_counts_tokens_consistently():
    result = run(method="memft-ot", steps=30, stop_when_certified=False)
    for entry in result.log:
        assert 0 <= entry.active_tokens <= 40
        assert entry.active_tokens == 0 or entry.above_share < 1.0
        assert entry.skipped == (entry.active_tokens == 0)
        if entry.skipped:
            assert entry.grad_norm is None
        # p > 0.5 makes a token the argmax, so a certified item is an exact one
        assert entry.certified_items <= entry.exact_items <= 4
    first = result.log[0]
    assert first.active_tokens == 40 and first.above_share == 0.0
    assert first.objective == pytest.approx(first.loss)  # everything is below the boundary at start


def test_memft_ot_skips_updates_once_everything_is_above_threshold():
    result = run(method="memft-ot", steps=120, stop_when_certified=False)
    skipped = [e for e in result.log if e.skipped]
    assert skipped, "a certified run under MemFT-OT with skipping must skip"
    # a skipped step changes no weight, so the next step's loss is identical
    for entry in skipped:
        if entry.step < len(result.log):
            assert result.log[entry.step].loss == entry.loss


def test_minibatches_and_epochs():
    result = run(steps=1, epochs=3, batch_size=3, n=5, stop_when_certified=False)
    assert result.steps == 6  # ceil(5/3) batches x 3 epochs


def test_sliding_window_on_one_long_sequence():
    model, tokenizer = load_model("tiny")
    encoded = encode_items(generate_random_tokens(tokenizer, 60, seed=2), tokenizer)
    result = train(
        model, tokenizer, encoded, LoraSpec(rank=8), TrainConfig(method="memft-sw", steps=6)
    )
    assert result.config["method"] == "memft-sw-window"
    assert result.log[0].objective != pytest.approx(result.log[0].loss)  # weighted, not the mean


def test_non_finite_loss_stops_and_keeps_the_last_good_adapter(tiny):
    model, tokenizer = tiny
    encoded = encode_items(generate_phonebook(2), tokenizer)
    poisoned = {"on": False}
    last_good: list = []

    def poison(module, args, output):  # once switched on, the LM head returns NaN
        return output * float("nan") if poisoned["on"] else output

    def after_step(entry, total):
        # PEFT injects LoRA into `model` in place, so its trainable parameters are the adapter.
        # After step 1 they give step 2's finite loss; after step 2 the poison makes step 3 NaN.
        if entry.step == 1:
            last_good.extend(p.detach().clone() for p in model.parameters() if p.requires_grad)
        poisoned["on"] = entry.step == 2

    handle = model.lm_head.register_forward_hook(poison)
    try:
        config = TrainConfig(steps=10)
        result = train(
            model,
            tokenizer,
            encoded,
            LoraSpec(rank=4),
            config,
            on_step=after_step,
            final_probe=False,
        )
    finally:
        handle.remove()
    assert result.stop_reason == "non-finite loss" and result.steps == 2
    kept = [p for p in result.model.parameters() if p.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(kept, last_good, strict=True))


def test_saved_adapter_loads_with_plain_peft_and_reproduces_the_probe(tmp_path):
    model, tokenizer = load_model("tiny")
    encoded = encode_items(generate_phonebook(3, seed=4), tokenizer)
    result = train(
        model, tokenizer, encoded, LoraSpec(rank=4, layers=(1, 2)), TrainConfig(steps=25)
    )
    save_run(result, tmp_path / "run")
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
    assert not list((tmp_path / "run").glob("*.bin"))
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    for key in (
        "config",
        "length",
        "base_loss",
        "final_loss",
        "delta_loss",
        "steps",
        "train_seconds",
        "n_eff",
        "trainable_params",
        "exact_match",
        "certified_share",
    ):
        assert key in record
    assert record["n_eff"] == 8 and record["length"] == 30 and len(record["log"]) == record["steps"]

    fresh, _ = load_model("tiny")
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "run")
    again = probe(loaded, tokenizer, encoded)
    assert again.final_loss == pytest.approx(result.report.final_loss, rel=1e-6)
    assert again.base_loss == pytest.approx(result.base_loss, rel=1e-6)
    assert [i.generated_ids for i in again.items] == [i.generated_ids for i in result.report.items]
    with pytest.raises(MemlawError, match="already exists"):
        save_run(result, tmp_path / "run")


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    result = run(steps=2)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(result.model, "save_pretrained", broken)
    with pytest.raises(OSError):
        save_run(result, tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "config, message",
    [
        (TrainConfig(method="adam"), "unknown method"),
        (TrainConfig(lr=0), "learning rate"),
        (TrainConfig(steps=0), "steps must be positive"),
        (TrainConfig(tau=1.0), "tau"),
        (TrainConfig(batch_size=-1), "batch size"),
        (TrainConfig(grad_clip=0.0), "gradient clip"),
        (TrainConfig(grad_clip=float("nan")), "gradient clip"),
        (TrainConfig(weight_decay=-0.1), "weight decay"),
        (TrainConfig(seed=-1), "seed"),
        (TrainConfig(position_decay=-1.0), "position decay"),
    ],
)
def test_bad_training_configs(config, message):
    with pytest.raises(MemlawError, match=message):
        config.validate()


def test_memft_margin_trains_above_the_boundary_and_certifies_at_it():
    plain = run(method="memft-ot", steps=150)
    margin = run(method="memft-ot", steps=150, train_tau=0.9)
    assert margin.stop_reason == "certified" and margin.report.certified_share == 1.0
    # with the margin, tokens between p = 0.5 and 0.9 still get gradient
    for entry in margin.log:
        assert entry.active_tokens >= (1 - entry.above_share) * 40 - 1e-6
    assert [e.loss for e in plain.log] != [e.loss for e in margin.log]
    with pytest.raises(MemlawError, match="train tau"):
        TrainConfig(train_tau=0.3).validate()


def test_sft_warmup_then_memft_and_token_probabilities_are_recorded():
    result = run(
        method="memft-ot",
        steps=30,
        stop_when_certified=False,
        sft_warmup_steps=10,
        record_token_probabilities=True,
    )
    assert all(e.objective == pytest.approx(e.loss) for e in result.log[:10])  # SFT phase
    assert not any(e.skipped for e in result.log[:10])
    # after the switch, MemFT leaves out tokens above the boundary, so the objective differs
    later = [e for e in result.log[10:] if 0 < e.above_share < 1]
    assert later and all(e.objective > e.loss for e in later)
    assert len(result.token_probabilities) == len(result.log)
    for entry, (rows, probs) in zip(result.log, result.token_probabilities, strict=True):
        assert rows == [0, 1, 2, 3] and [len(p) for p in probs] == [10] * 4
        flat = [p for item in probs for p in item]
        assert sum(-math.log(p) for p in flat) / len(flat) == pytest.approx(entry.loss, rel=1e-4)
        above = sum(p > 0.5 for p in flat) / len(flat)
        assert above == pytest.approx(entry.above_share)


def test_negative_sft_warmup_is_rejected():
    with pytest.raises(MemlawError, match="warm-up"):
        TrainConfig(sft_warmup_steps=-1).validate()


def test_memft_is_the_recommended_variant_and_records_what_was_asked():
    entry = OBJECTIVES["memft"]
    assert "memft-ot with train_tau 0.8" in entry.description
    result = run(method="memft", steps=4, stop_when_certified=False)
    assert result.config["requested_method"] == "memft"
    assert result.config["objective"] == entry.description
    assert result.config["method"] == entry.runs == "memft-ot"
    assert result.config["train_tau"] == entry.train_tau == 0.8
    explicit = run(method="memft-ot", steps=4, stop_when_certified=False, train_tau=0.8)
    assert [e.loss for e in result.log] == [e.loss for e in explicit.log]
    assert run(method="memft", steps=1, train_tau=0.95).config["train_tau"] == 0.95
    assert run(method="memft", steps=1, tau=0.9).config["train_tau"] >= 0.9
    assert run(method="sft", steps=1).config["train_tau"] is None


@pytest.mark.parametrize(
    "method, runs, loss",
    [
        ("memft-ot-all", "memft-ot-all", lambda nll, mask: memft_ot_all_loss(nll, mask)),
        ("sft-cap", "memft-ot-all", lambda nll, mask: sft_cap_loss(nll, mask)),
    ],
)
def test_variants_normalized_by_all_supervised_tokens(method, runs, loss):
    result = run(method=method, steps=25, stop_when_certified=False)
    assert result.config["method"] == runs and result.config["requested_method"] == method
    for entry in result.log:
        # Σ w·ℓ over every supervised token (40): never above the plain mean, which weighs all
        assert entry.objective <= entry.loss + 1e-6
        assert entry.skipped == (entry.active_tokens == 0)
    first = result.log[0]
    assert first.active_tokens == 40 and first.objective == pytest.approx(first.loss)
    nll = torch.tensor([[0.001, 0.3, 2.0]])
    assert loss(nll, nll > 0).item() == pytest.approx(
        (2.0 if method == "memft-ot-all" else 2.3) / 3
    )


def test_lr_warm_up_raises_the_rate_linearly_then_hands_it_to_the_anneal():
    warming = run(steps=2, stop_when_certified=False, lr=0.01, lr_warmup_steps=4)
    assert warming.config["final_lr"] == pytest.approx(0.01 * 2 / 4)
    warmed = run(steps=6, stop_when_certified=False, lr=0.01, lr_warmup_steps=4)
    assert warmed.config["final_lr"] == pytest.approx(0.01)
    plain = run(steps=6, stop_when_certified=False, lr=0.01)
    assert [e.loss for e in warmed.log][1:] != [e.loss for e in plain.log][1:]
    with pytest.raises(MemlawError, match="lr warm-up"):
        TrainConfig(lr_warmup_steps=-1).validate()
