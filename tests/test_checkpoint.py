"""Checkpoints inside a run: a killed run, started again, continues with the very losses the
uninterrupted run had."""

import doctest
import json

import pytest

import memlaw.checkpoint as checkpoint_module
from memlaw.adapters import LoraSpec
from memlaw.data import encode_items, generate_phonebook, generate_random_tokens
from memlaw.errors import MemlawError
from memlaw.models import load_model
from memlaw.train import TrainConfig, train


class Killed(Exception):
    pass


def items(tokenizer, method: str):
    if method == "memft-sw":  # one sequence: the sliding window and its per-item state
        return encode_items(generate_random_tokens(tokenizer, 24, seed=2), tokenizer)
    return encode_items(generate_phonebook(6, seed=1), tokenizer)


def run(method: str, folder=None, kill_at: int | None = None, **changes):
    model, tokenizer = load_model("tiny")
    settings = dict(method=method, epochs=9, batch_size=2, lr=0.05, anneal_patience=1)
    config = TrainConfig(**(settings | changes), stop_when_certified=False)

    def on_step(entry, total):
        if kill_at is not None and entry.step == kill_at:
            raise Killed

    kwargs = {} if folder is None else {"checkpoint": folder, "checkpoint_every": 2}
    return train(
        model, tokenizer, items(tokenizer, method), LoraSpec(rank=4), config, on_step=on_step,
        **kwargs,
    )  # fmt: skip


# (method, epochs, the epoch killed in, the last checkpoint before it). The curriculum trains
# a growing share of the items (equal fifths of 15 epochs): it saves at the ends of its short
# epochs too (killed in epoch 6, of the 40% share), and judges a plateau on whole ones only.
CASES = [
    ("sft", 9, 6, 4),
    ("memft-ot", 9, 6, 4),
    ("memft-sw", 9, 6, 4),
    ("memft-sw-curriculum", 15, 6, 4),
    ("memft-sw-curriculum", 15, 15, 14),
]


@pytest.mark.parametrize(("method", "epochs", "killed", "saved"), CASES)
def test_a_killed_run_resumes_with_the_same_losses(method, epochs, killed, saved, tmp_path):
    reference = run(method, epochs=epochs)
    folder = tmp_path / "run"
    steps_per_epoch = 1 if method == "memft-sw" else 3
    with pytest.raises(Killed):
        run(method, folder, kill_at=(killed - 1) * steps_per_epoch + 1, epochs=epochs)
    state = json.loads((folder / "state.json").read_text())
    assert state["log"][-1]["epoch"] == saved
    resumed = run(method, folder, epochs=epochs)
    assert [e.loss for e in resumed.log] == [e.loss for e in reference.log]
    assert [e.step for e in resumed.log] == [e.step for e in reference.log]
    assert resumed.stop_reason == reference.stop_reason
    assert resumed.config["final_lr"] == reference.config["final_lr"]
    assert resumed.report.summary()["final_loss"] == reference.report.summary()["final_loss"]


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    folder = tmp_path / "run"
    run("sft", folder, epochs=2)
    with pytest.raises(MemlawError, match="belongs to another run"):
        run("sft", folder, epochs=2, lr=0.01)


def test_a_checkpoint_of_another_base_model_is_refused(tmp_path):
    folder = tmp_path / "run"
    run("sft", folder, epochs=2)
    model, tokenizer = load_model("tiny")
    model.config.rope_theta = 1234.0  # same shapes, another model: its weights must not mix
    with pytest.raises(MemlawError, match="belongs to another run"):
        train(model, tokenizer, items(tokenizer, "sft"), LoraSpec(rank=4),
              TrainConfig(method="sft", epochs=2, batch_size=2, lr=0.05, anneal_patience=1,
                          stop_when_certified=False),
              checkpoint=folder, checkpoint_every=2)  # fmt: skip


def test_an_unreadable_checkpoint_is_refused(tmp_path):
    folder = tmp_path / "run"
    run("sft", folder, epochs=2)
    (folder / "tensors.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(MemlawError, match="cannot be read.*remove the folder"):
        run("sft", folder, epochs=2)


def test_checkpoint_every_must_be_positive(tmp_path):
    model, tokenizer = load_model("tiny")
    encoded = items(tokenizer, "sft")
    with pytest.raises(MemlawError, match="checkpoint_every"):
        train(model, tokenizer, encoded, LoraSpec(rank=4), TrainConfig(steps=1),
              checkpoint=tmp_path / "run", checkpoint_every=0)  # fmt: skip


def test_doctests():
    assert doctest.testmod(checkpoint_module).failed == 0


def test_memlaw_train_checkpoint_on_the_command_line(tmp_path, capsys, monkeypatch):
    from tests.test_cli import memlaw

    args = ["train", "-m", "tiny", "--generate", "phonebook:4", "--epochs", "12", "--method", "sft"]
    folder = tmp_path / "ck"
    code, _, err = memlaw(capsys, monkeypatch, *args, "--out", tmp_path / "run",
                          "--checkpoint", folder)  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "run" / "adapter_model.safetensors").exists()
    assert not folder.exists()  # the adapter is saved: the checkpoint has nothing left to do
    (tmp_path / "file").write_text("x")
    code, _, err = memlaw(capsys, monkeypatch, *args, "--out", tmp_path / "run2",
                          "--checkpoint", tmp_path / "file")  # fmt: skip
    assert code == 2 and err.startswith("error: --checkpoint") and len(err.splitlines()) == 1


def test_a_run_killed_during_its_lr_warm_up_resumes_with_the_same_losses(tmp_path):
    reference = run("sft", lr_warmup_steps=20)
    assert reference.log[0].loss == run("sft").log[0].loss  # the first loss precedes any update
    assert [e.loss for e in reference.log] != [e.loss for e in run("sft").log]
    folder = tmp_path / "run"
    with pytest.raises(Killed):  # killed in epoch 6 (steps 16-18), saved at epoch 4 (step 12)
        run("sft", folder, kill_at=16, lr_warmup_steps=20)
    resumed = run("sft", folder, lr_warmup_steps=20)
    assert [e.loss for e in resumed.log] == [e.loss for e in reference.log]


def test_settings_added_later_keep_older_checkpoints_valid():
    """A checkpoint's fingerprint, pinned: a new TrainConfig field must leave it unchanged at
    the value that trains as before (checkpoint.LATER_DEFAULTS), or every run in flight (a
    sweep's, a bench's) would be refused and start again."""
    from types import SimpleNamespace

    items = [SimpleNamespace(input_ids=[1, 2, 3], target_ids=[3])]
    fingerprint = checkpoint_module.run_fingerprint
    pinned = "8e5a7bcfb4a959563429bbb59a68c9ff167ff9d965f4bbc5168ae0979799b924"
    # lr as train() resolves it before fingerprinting (TrainConfig.lr None: the recipe's rate)
    assert fingerprint(TrainConfig(lr=0.01), LoraSpec(rank=2), items) == pinned
    assert fingerprint(TrainConfig(lr=0.01, lr_warmup_steps=3), LoraSpec(rank=2), items) != pinned
