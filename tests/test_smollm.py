"""The embedded default model: GGUF conversion, the safetensors cache, a short run and a probe."""

import json
import time

import pytest
import torch
from peft import PeftModel

from memlaw import models
from memlaw.adapters import LoraSpec
from memlaw.data import encode_items, generate_phonebook
from memlaw.probe import probe
from memlaw.train import TrainConfig, save_run, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    """A cache folder of our own, so the first load really converts the GGUF file."""
    cache = tmp_path_factory.mktemp("memlaw-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("MEMLAW_CACHE", str(cache))
    yield cache
    patch.undo()


def test_gguf_converts_once_then_loads_from_the_cache(fresh_cache):
    model, tokenizer = models.load_model("smollm2-135m")
    [folder] = (fresh_cache / "models").iterdir()
    assert (folder / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576

    started = time.perf_counter()
    cached, cached_tokenizer = models.load_model("smollm2-135m")
    assert time.perf_counter() - started < 5.0
    for a, b in zip(model.state_dict().values(), cached.state_dict().values(), strict=False):
        assert torch.equal(a, b)

    prompt = cached_tokenizer("The capital of France is", return_tensors="pt")
    output = cached.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert "Paris" in cached_tokenizer.decode(output[0, prompt.input_ids.shape[1] :])


def test_short_run_and_probe_on_the_default_model(fresh_cache, tmp_path):
    model, tokenizer = models.load_model("smollm2-135m")
    encoded = encode_items(generate_phonebook(4, seed=0), tokenizer)
    assert sum(len(e.target_ids) for e in encoded) == 40  # one token per digit
    result = train(
        model, tokenizer, encoded, LoraSpec(rank=2), TrainConfig(method="memft-ot", steps=12)
    )
    assert result.config["lora"]["layers"] == [20]
    assert result.n_eff == 2
    assert result.trainable_params == 2 * (576 + 1536) * 3
    report = result.report
    assert report.delta_loss > 0.5
    assert result.log[-1].loss < result.log[0].loss

    save_run(result, tmp_path / "run")
    base, _ = models.load_model("smollm2-135m")
    again = probe(PeftModel.from_pretrained(base, tmp_path / "run"), tokenizer, encoded)
    assert again.final_loss == pytest.approx(report.final_loss, rel=1e-5)
    assert [i.exact_match for i in again.items] == [i.exact_match for i in report.items]


def test_the_shipped_law_plans_phonebooks_and_refuses_text(
    fresh_cache, tmp_path, capsys, monkeypatch
):
    """The default law (PhoneBook, MLP of layer 20): a certifying rank for a phonebook of 100
    entries (the shared PB1000 file, or memlaw's generator where it is absent), and a one-line
    refusal for text, naming the kind mismatch."""
    from tests.conftest import SHARED_BENCHMARKS
    from tests.test_cli import memlaw

    phonebook = SHARED_BENCHMARKS / "phonebook" / "PB1000.jsonl"
    if not phonebook.is_file():  # no shared folder beside this checkout
        phonebook = tmp_path / "pb.jsonl"
        entries = generate_phonebook(100)
        lines = [json.dumps({"prompt": e.prompt, "target": e.target}) for e in entries]
        phonebook.write_text("\n".join(lines) + "\n")
    code, out, err = memlaw(capsys, monkeypatch, "plan", "--data", phonebook, "--json",
                            "--png", tmp_path / "p.png")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["memory"]["kind"] == "facts" and result["certifying_rank"] >= 1
    text = tmp_path / "doc.jsonl"
    line = {"prompt": "Recite:", "target": "The river bends twice before it reaches the town."}
    text.write_text(json.dumps(line) + "\n")
    code, _, err = memlaw(capsys, monkeypatch, "plan", "--data", text, "--png", tmp_path / "t.png")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "measured on key→value facts, and this data is text" in err
