"""MemFT and the memory audit inside transformers' Trainer and TRL's SFTTrainer.

The reference is memlaw's own loop (``memlaw.train.train``): the same tiny model, data, LoRA
seed, AdamW settings and full batch must give the same per-step losses, the same skipped
steps and the same final adapter weights.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from memlaw.adapters import LoraSpec, attach_lora
from memlaw.data import encode_items, generate_phonebook, generate_random_tokens
from memlaw.errors import MemlawError
from memlaw.integrations import (
    INDEX_COLUMN,
    MemFTConfig,
    MemFTTrainer,
    MemoryAuditCallback,
    MemoryCollator,
    memft_loss_func,
    memory_dataset,
    memory_metrics,
    no_update_loss,
    with_memft,
)
from memlaw.models import load_model
from memlaw.objectives import METHODS, memft_ot_all_loss, memft_ot_loss, token_nll
from memlaw.probe import probe
from memlaw.train import TrainConfig, train

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SPEC = LoraSpec(rank=8, layers=(0, 1, 2, 3), modules="all")
LR = 0.02
OT_STEPS = 16  # the tiny model certifies 3 phonebook items in ~12 steps, then MemFT-OT skips
SW_STEPS = 20
# Relative tolerance on per-step losses. Both paths run the same float32 operations in the same
# order, so they agree bit for bit here; with the Trainer's default random sampler (rows of the
# full batch in another order) they drift by up to ~1e-4 relative after a dozen steps.
REL = 1e-4


def phonebook(tokenizer):
    return encode_items(generate_phonebook(3, seed=1), tokenizer)


def long_sequence(tokenizer):
    return encode_items(generate_random_tokens(tokenizer, 40, seed=0), tokenizer)


def reference(method, make_items, steps):
    model, tokenizer = load_model("tiny")
    items = make_items(tokenizer)
    config = TrainConfig(
        method=method, steps=steps, lr=LR, fast_path=False, stop_when_certified=False
    )
    return train(model, tokenizer, items, SPEC, config, final_probe=False), items


@pytest.fixture(scope="module")
def ot_reference():
    return reference("memft-ot", phonebook, OT_STEPS)


@pytest.fixture(scope="module")
def sw_reference():
    return reference("memft-sw-window", long_sequence, SW_STEPS)


def arguments(tmp_path, steps, batch, args_class=TrainingArguments, **overrides):
    """The Trainer settings of memlaw's loop: AdamW, constant lr, no warm-up or decay, clip 1."""
    settings = dict(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        train_sampling_strategy="sequential",
    )
    return args_class(**(settings | overrides))


def lora_model():
    model, tokenizer = load_model("tiny")
    return attach_lora(model, SPEC, seed=0), tokenizer


def memory_trainer(tmp_path, rows, steps, batch, trainer_class=MemFTTrainer, seed=42, **kwargs):
    """``trainer_class`` on a fresh LoRA model and ``rows`` with memlaw's loop settings, quiet."""
    model, tokenizer = lora_model()
    trainer = trainer_class(
        model=model,
        args=arguments(tmp_path, steps, batch, seed=seed),
        train_dataset=rows,
        data_collator=MemoryCollator(tokenizer.pad_token_id),
        **kwargs,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def step_logs(trainer):
    return [e for e in trainer.state.log_history if "loss" in e]


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def assert_same_weights(a, b, atol=1e-6):
    for p, q in zip(trainable(a), trainable(b), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=atol)


class ParamTrace(TrainerCallback):
    """The trainable weights after every optimizer step."""

    def __init__(self):
        self.after_step = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after_step.append(torch.cat([p.detach().flatten().clone() for p in trainable(model)]))


def assert_skips_make_no_update(trainer, trace, reference_log):
    skipped = [e.skipped for e in reference_log]
    assert sum(skipped) >= 2 and not all(skipped), "the run must both train and skip"
    for i, skip in enumerate(skipped):
        if i == 0:
            continue
        moved = not torch.equal(trace.after_step[i], trace.after_step[i - 1])
        assert moved != skip, f"step {i + 1}: skipped={skip} but weights moved={moved}"
    # AdamW never saw the skipped steps: its step count is the number of real updates
    counts = {float(s["step"]) for s in trainer.optimizer.state.values()}
    assert counts == {float(len(skipped) - sum(skipped))}


# --- (a) MemFT-OT: MemFTTrainer == memlaw's loop ----------------------------------------------


def test_memft_trainer_matches_memlaw_loop_including_skipped_steps(tmp_path, ot_reference):
    run, items = ot_reference
    trace = ParamTrace()
    trainer = memory_trainer(
        tmp_path,
        memory_dataset(items),
        OT_STEPS,
        len(items),
        callbacks=[trace],
        memft=MemFTConfig(method="memft-ot"),
    )
    trainer.train()

    logs = step_logs(trainer)
    assert [e["step"] for e in logs] == list(range(1, OT_STEPS + 1))
    for entry, log in zip(run.log, logs, strict=True):
        assert log["loss"] == pytest.approx(entry.objective, rel=REL, abs=1e-7)
        assert log["memft/sft_loss"] == pytest.approx(entry.loss, rel=REL)
        assert log["memft/active_tokens"] == entry.active_tokens
        assert log["memft/above_share"] == pytest.approx(entry.above_share)
        assert log["memft/skipped"] == float(entry.skipped)
        # Trainer reports a zero norm where memlaw's loop clips nothing and reports None
        assert log["grad_norm"] == pytest.approx(entry.grad_norm or 0.0, rel=REL)
    assert_skips_make_no_update(trainer, trace, run.log)
    assert_same_weights(trainer.model, run.model)

    # What the test guards against: a zero *gradient* (instead of none) still moves AdamW.
    params = trainable(trainer.model)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    trainer.optimizer.step()
    assert any(not torch.equal(p, b) for p, b in zip(params, before, strict=True))


# --- (b) MemFT-SW sliding window on one sequence ----------------------------------------------


def test_sliding_window_matches_memlaw_loop(tmp_path, sw_reference):
    run, items = sw_reference
    rows = memory_dataset(items)
    trainer = memory_trainer(
        tmp_path, rows, SW_STEPS, 1, memft=MemFTConfig(method="memft-sw-window")
    )
    trainer.train()

    logs = step_logs(trainer)
    objectives = [e.objective for e in run.log]
    assert [e["loss"] for e in logs] == pytest.approx(objectives, rel=REL)
    assert [e["memft/sft_loss"] for e in logs] == pytest.approx([e.loss for e in run.log], rel=REL)
    # the window objective differs from the plain mean: the state is really in use
    assert any(abs(e.objective - e.loss) > 1e-3 for e in run.log)
    assert_same_weights(trainer.model, run.model)


def test_sliding_window_needs_the_item_index(tmp_path):
    rows = [
        {k: v for k, v in row.items() if k != INDEX_COLUMN}
        for row in memory_dataset(long_sequence(load_model("tiny")[1]))
    ]
    for method in ("memft-sw-window", "memft-sw-curriculum"):
        trainer = memory_trainer(tmp_path, rows, 1, 1, memft=MemFTConfig(method=method))
        with pytest.raises(MemlawError, match=INDEX_COLUMN):
            trainer.train()


# --- (b') MemFT-SW curriculum: the epoch comes from the Trainer's state ------------------------


def test_curriculum_matches_memlaw_loop(tmp_path):
    steps, model, tokenizer = 10, *load_model("tiny")
    items = encode_items(generate_phonebook(5, seed=1), tokenizer)
    config = TrainConfig(
        method="memft-sw",
        steps=steps,
        lr=LR,
        batch_size=0,  # the whole set in every step, as in the Trainer below
        fast_path=False,
        stop_when_certified=False,
    )
    run = train(model, tokenizer, items, SPEC, config, final_probe=False)
    assert run.config["method"] == "memft-sw-curriculum"
    rows = memory_dataset(items)
    # the seed orders the items; memft-sw on several items is the curriculum
    trainer = memory_trainer(tmp_path, rows, steps, 5, seed=0, memft=MemFTConfig(method="memft-sw"))
    assert trainer.memft.method == "memft-sw-curriculum"
    trainer.train()

    logs = step_logs(trainer)
    assert [e.tokens for e in run.log[:3]] == [10, 10, 20]  # 1 item, then 2 from epoch 2
    for entry, log in zip(run.log, logs, strict=True):
        assert log["loss"] == pytest.approx(entry.objective, rel=REL, abs=1e-7)
        assert log["memft/sft_loss"] == pytest.approx(entry.loss, rel=REL)
        assert log["memft/active_tokens"] == entry.active_tokens
        assert log["memft/skipped"] == float(entry.skipped)
    # the Trainer's batch holds every item (those outside the prefix masked out), memlaw's only
    # the prefix: other shapes, so float rounding differs in the last digits, and Adam turns
    # that rounding into up to 2e-5 on a weight with a near-zero gradient after 10 steps (AMD
    # EPYC; within the old 1e-5 on an Intel Xeon). The bound is 1/200 of one step (lr): a wrong
    # prefix or order moves a weight by whole steps.
    assert_same_weights(trainer.model, run.model, atol=LR / 200)


def test_every_method_runs_in_the_trainer_or_is_refused_in_a_loss_func(tmp_path):
    model, tokenizer = lora_model()
    common = dict(
        model=model,
        args=arguments(tmp_path, 1, 1),
        data_collator=MemoryCollator(tokenizer.pad_token_id),
    )
    one = memory_dataset(long_sequence(tokenizer))
    resolved = {}
    for method in METHODS:
        trainer = MemFTTrainer(train_dataset=one, memft=MemFTConfig(method=method), **common)
        resolved[method] = (trainer.memft.method, trainer.memft.train_tau)
    assert resolved["memft"] == ("memft-ot", 0.8)
    assert resolved["sft-cap"] == ("memft-ot-all", 0.99)
    assert resolved["memft-sw"] == ("memft-sw-window", None)  # one sequence: the window
    with pytest.raises(MemlawError, match="no length"):
        MemFTTrainer(train_dataset=iter(one), memft=MemFTConfig(method="memft-sw"), **common)

    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 1, 2, 3], [-100, 4, 5, -100, -100]])
    nll, mask = token_nll(logits, labels)
    loss = memft_loss_func(method="memft-ot-all")({"logits": logits}, labels, None)
    assert loss.item() == pytest.approx(memft_ot_all_loss(nll, mask).item())
    for method, reason in [
        ("memft-sw-window", "a state per sequence"),
        ("memft-sw-curriculum", "the epoch"),
        ("memft-sw", "the item index and the epoch"),
    ]:
        with pytest.raises(MemlawError, match=f"{reason}.*use MemFTTrainer"):
            memft_loss_func(method=method)


# --- (c) the one-line compute_loss_func with a plain Trainer ----------------------------------


def loss_func_trainer(tmp_path, items, callback):
    """A plain Trainer with MemFT-OT as its compute_loss_func, for the MemFT-OT reference."""
    rows, loss_func = memory_dataset(items), memft_loss_func()
    return memory_trainer(
        tmp_path,
        rows,
        OT_STEPS,
        len(items),
        Trainer,
        callbacks=[callback],
        compute_loss_func=loss_func,
    )


def test_compute_loss_func_with_plain_trainer_matches_memlaw_loop(tmp_path, ot_reference):
    run, items = ot_reference
    trace = ParamTrace()
    trainer = loss_func_trainer(tmp_path, items, trace)
    trainer.train()

    logs = step_logs(trainer)
    assert [e["loss"] for e in logs] == pytest.approx([e.objective for e in run.log], rel=REL)
    assert_skips_make_no_update(trainer, trace, run.log)
    assert_same_weights(trainer.model, run.model)


def test_loss_func_units():
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.tensor([[-100, -100, 1, 2, 3], [-100, 4, 5, -100, -100]])
    nll, mask = token_nll(logits, labels)
    loss_func = memft_loss_func()
    expected = memft_ot_loss(nll, mask)
    assert loss_func({"logits": logits}, labels, None).item() == pytest.approx(expected.item())
    # gradient accumulation: a micro-batch counts by its share of the step's supervised tokens
    half = loss_func({"logits": logits}, labels, num_items_in_batch=2 * int(mask.sum()))
    assert half.item() == pytest.approx(expected.item() / 2)
    # nothing below the boundary (τ tiny): a loss that reaches no parameter
    skipped = memft_loss_func(tau=1e-6)({"logits": logits}, labels, None)
    skipped.backward()
    assert skipped.item() == 0.0 and logits.grad is None
    assert memft_loss_func(tau=1e-6, fallback="mean")({"logits": logits}, labels, None).item() > 0
    loss = no_update_loss()
    loss *= 3  # the Trainer scales the loss in place; this must not raise
    loss.backward()
    with pytest.raises(MemlawError):
        memft_loss_func(tau=1.5)
    with pytest.raises(MemlawError):
        MemFTTrainer(memft=MemFTConfig(method="dpo"))


# --- (d) TRL's SFTTrainer ---------------------------------------------------------------------


def test_trl_sft_trainer_trains_with_memft(tmp_path, sw_reference):
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")

    # prompt/completion data prepared by SFTTrainer itself (EOS appended, prompt masked)
    model, tokenizer = lora_model()
    records = [{"prompt": i.prompt, "completion": i.target} for i in generate_phonebook(3, seed=1)]
    args = arguments(
        tmp_path / "ot",
        3,
        3,
        args_class=trl.SFTConfig,
        bf16=False,  # SFTConfig autocasts to bf16 by default; memlaw compares in float32
        activation_checkpointing=False,
    )
    trainer = with_memft(trl.SFTTrainer)(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(records),
        processing_class=tokenizer,
        memft=MemFTConfig(method="memft-ot"),
    )
    trainer.remove_callback(PrinterCallback)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll, mask = token_nll(logits, batch["labels"])
    assert int(mask.sum()) == 33  # 3 × (10 digits + EOS): the prompt is not supervised
    trainer.train()
    logs = step_logs(trainer)
    assert logs[0]["loss"] == pytest.approx(memft_ot_loss(nll, mask).item(), rel=1e-5)
    assert logs[-1]["memft/sft_loss"] < logs[0]["memft/sft_loss"]

    # the audit on TRL's own SFT: SFTTrainer's prepared rows (input_ids, labels) are the
    # memory set, and the audit entries do not swallow SFTTrainer's per-step metrics
    model, tokenizer = lora_model()
    trainer = trl.SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(records),
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)
    MemoryAuditCallback(trainer.train_dataset, every=1).attach(trainer)
    trainer.train()
    audits = [e for e in trainer.state.log_history if "memlaw/target_loss" in e]
    assert [e["step"] for e in audits] == [1, 2, 3]
    assert all("mean_token_accuracy" in e for e in step_logs(trainer))
    assert not any("mean_token_accuracy" in e for e in audits)

    # the sliding window through SFTTrainer: a tokenized dataset carrying the item index
    run, items = sw_reference
    model, tokenizer = lora_model()
    args = arguments(
        tmp_path / "sw",
        5,
        1,
        args_class=trl.SFTConfig,
        bf16=False,
        activation_checkpointing=False,
    )
    trainer = with_memft(trl.SFTTrainer)(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(memory_dataset(items)),
        data_collator=MemoryCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        memft=MemFTConfig(method="memft-sw-window"),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    logs = step_logs(trainer)
    assert [e["loss"] for e in logs] == pytest.approx([e.objective for e in run.log[:5]], rel=REL)
    assert [e["grad_norm"] for e in logs] == pytest.approx([e.grad_norm for e in run.log[:5]])


# --- (e) the audit callback -------------------------------------------------------------------


class LogRecorder(TrainerCallback):
    """Placed before the audit callback: what a reporter (TensorBoard, W&B) would receive."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs)))


class ModeCheck(TrainerCallback):
    """Placed after the audit callback: the model is back in training mode."""

    def __init__(self):
        self.training = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.training.append(model.training and torch.is_grad_enabled())


def test_audit_callback_logs_through_the_trainer(tmp_path, ot_reference):
    run, items = ot_reference
    recorder = LogRecorder()
    trainer = loss_func_trainer(tmp_path, items, recorder)
    audit = MemoryAuditCallback(items, every=5).attach(trainer)
    mode = ModeCheck()
    trainer.add_callback(mode)
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert names.index("LogRecorder") < names.index("MemoryAuditCallback")
    trainer.train()

    audited = [5, 10, 15, OT_STEPS]  # every 5 steps, and after the last one
    seen = [step for step, logs in recorder.logs if "memlaw/certified_share" in logs]
    assert seen == audited
    history = [e for e in trainer.state.log_history if "memlaw/certified_share" in e]
    assert [e["step"] for e in history] == audited
    assert [e["step"] for e in audit.history] == audited
    # the Trainer's own log at an audited step is not lost, and training is unchanged
    assert [e["loss"] for e in step_logs(trainer)] == pytest.approx(
        [e.objective for e in run.log], rel=REL
    )
    assert mode.training == [True] * OT_STEPS

    # step 5's audit sees the weights after 5 updates: memlaw logged them at step 6
    at5, memlaw6 = history[0], run.log[5]
    assert at5["memlaw/target_loss"] == pytest.approx(memlaw6.loss, rel=1e-5)
    assert at5["memlaw/above_share"] == pytest.approx(memlaw6.above_share)
    assert at5["memlaw/certified_share"] == pytest.approx(memlaw6.certified_items / len(items))

    # the last audit agrees with memlaw's probe of the final model (greedy decoding included)
    report = probe(trainer.model, load_model("tiny")[1], items)
    final = history[-1]
    assert final["memlaw/certified_share"] == report.certified_share == 1.0
    assert final["memlaw/above_share"] == pytest.approx(report.token_certified_share)
    assert final["memlaw/stubborn_tokens"] == len(report.stubborn) == 0
    assert final["memlaw/target_loss"] == pytest.approx(report.final_loss, rel=1e-5)


def test_memory_metrics_agree_with_probe_midway():
    model, tokenizer = load_model("tiny")
    items = phonebook(tokenizer)
    config = TrainConfig(method="sft", steps=5, lr=LR, fast_path=False, stop_when_certified=False)
    run = train(model, tokenizer, items, SPEC, config, final_probe=False)
    run.model.train()
    metrics = memory_metrics(run.model, items)
    assert run.model.training  # mode restored
    report = probe(run.model, tokenizer, items)
    assert 0 < len(report.stubborn) < len(items)  # partly memorized: a real comparison
    assert metrics["memlaw/stubborn_tokens"] == len(report.stubborn)
    assert metrics["memlaw/certified_share"] == pytest.approx(report.certified_share)
    assert metrics["memlaw/above_share"] == pytest.approx(report.token_certified_share)
    assert metrics["memlaw/target_loss"] == pytest.approx(report.final_loss, rel=1e-5)
    # rows of input_ids/labels (a tokenized dataset) measure the same
    rows = memory_metrics(run.model, memory_dataset(items), pad_token_id=tokenizer.pad_token_id)
    assert rows == pytest.approx(metrics)
    with pytest.raises(MemlawError):
        memory_metrics(run.model, [{"input_ids": [1, 2], "labels": [-100, -100]}])


def test_audit_callback_needs_its_trainer(tmp_path):
    items = phonebook(load_model("tiny")[1])
    rows = memory_dataset(items)
    plain = memory_trainer(tmp_path, rows, 2, 3, Trainer, callbacks=[MemoryAuditCallback(items)])
    with pytest.raises(MemlawError, match="attach"):
        plain.train()
    # a MemFT trainer binds the audit callbacks it is given; default cadence: the log steps
    trainer = memory_trainer(tmp_path, rows, 2, 3, callbacks=[MemoryAuditCallback(items)])
    trainer.train()
    assert [e["step"] for e in trainer.state.log_history if "memlaw/target_loss" in e] == [1, 2]
    with pytest.raises(MemlawError):
        MemoryAuditCallback(items, every=0)


# --- examples ---------------------------------------------------------------------------------


def test_examples_run_and_report():
    # both scripts in one interpreter: the imports (torch, transformers) cost more than the runs
    scripts = [str(EXAMPLES / "trainer_memft.py"), str(EXAMPLES / "trainer_audit.py")]
    code = (
        "import runpy, sys\n"
        "for path in sys.argv[1:]:\n"
        "    print('=== ' + path, flush=True)\n"
        "    runpy.run_path(path, run_name='__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *scripts], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    memft_out, audit_out = result.stdout.split("=== ")[1:]

    assert "certified: 3/3 items" in memft_out
    skipped = int(memft_out.split("steps without an update: ")[1].split()[0])
    assert skipped > 0

    lines = [line for line in audit_out.splitlines() if line.startswith("audit step")]
    assert [int(line.split()[2].rstrip(":")) for line in lines] == [4, 8, 12, 16, 20]
    shares = [float(line.split("above=")[1].split()[0]) for line in lines]
    assert shares[0] < shares[-1] == 1.0  # SFT keeps spending on tokens already memorized
