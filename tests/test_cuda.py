"""The GPU path: --device cuda --dtype bfloat16 for train, probe and sweep.

The CPU tests run the same bfloat16 code on every machine (bf16 base weights, float32 LoRA
weights and losses, the fast path's bf16 hidden-state cache), so CI covers it without a GPU;
the tests marked ``cuda`` repeat it on a GPU and are skipped where CUDA is not available.
``bench/gpu_check.py`` runs the same checks as a script, with timings.
"""

import hashlib
import json
import math
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch

from memlaw.adapters import LoraSpec, attach_lora
from memlaw.data import encode_items, generate_phonebook, generate_random_tokens
from memlaw.errors import MemlawError
from memlaw.forward import FastForward, ReferenceForward
from memlaw.models import load_model
from memlaw.probe import probe
from memlaw.sweep import COLUMNS, SweepSpec, SweepStore, fingerprint, run_point
from memlaw.train import TrainConfig, train
from tests.test_cli import memlaw

HAS_CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
# The MLP pilot sweep: a database written before device, dtype and fast_path were settings.
SHIPPED_DB = Path(__file__).resolve().parents[1] / "laws" / "smollm2-135m-mlp.db"


def finite(*values) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def one_line_error(capsys, monkeypatch, *args) -> str:
    code, _, err = memlaw(capsys, monkeypatch, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


# --- bfloat16 on the CPU ---------------------------------------------------------------------


def test_bf16_forwards_give_float32_losses_from_a_bf16_cache():
    model, tokenizer = load_model("tiny", dtype="bfloat16")
    encoded = encode_items(generate_phonebook(3, seed=1), tokenizer)
    peft_model = attach_lora(model, LoraSpec(rank=2, layers=(2,)))
    lora = [p for p in peft_model.parameters() if p.requires_grad]
    assert lora and all(p.dtype == torch.float32 for p in lora)  # small updates survive
    fast = FastForward(peft_model, encoded, tokenizer.pad_token_id, first_layer=2)
    assert fast.cache[0].dtype == torch.bfloat16  # the cache keeps the model's dtype
    reference = ReferenceForward(peft_model, encoded, tokenizer.pad_token_id)
    rows = [0, 1, 2]
    with torch.no_grad():
        got, want = fast(rows), reference(rows)
    for losses in (got, want):
        assert losses.nll.dtype == torch.float32 and bool(torch.isfinite(losses.nll).all())
    assert torch.equal(got.mask, want.mask)
    # bf16 kernels differ by batch shape: the tolerance choose_forward uses for bf16
    assert torch.allclose(got.nll, want.nll, rtol=2e-2, atol=2e-4)


def _noisy_reference(monkeypatch, noise: float, fast_offset: float) -> None:
    """The reference moves by ``noise`` nats when an item runs alone (as bf16 rounding does
    when the batch's shape changes); the fast path is off the batched reference by
    ``fast_offset``."""
    reference_call, fast_call = ReferenceForward.__call__, FastForward.__call__

    def reference(self, rows):
        losses = reference_call(self, rows)
        if len(rows) == 1:
            losses.nll = losses.nll + noise * losses.mask
        return losses

    def fast(self, rows):
        losses = fast_call(self, rows)
        losses.nll = losses.nll + fast_offset * losses.mask
        return losses

    monkeypatch.setattr(ReferenceForward, "__call__", reference)
    monkeypatch.setattr(FastForward, "__call__", fast)


@pytest.mark.parametrize(
    "dtype, noise, offset, fast",
    [
        ("bfloat16", 0.1, 0.15, True),  # within twice the reference's own noise: accepted
        ("bfloat16", 0.1, 0.5, False),  # far beyond it: the reference path
        ("bfloat16", 0.0, 0.15, False),  # no noise to hide in
        ("float32", 0.1, 0.15, False),  # float32 is held to 1e-4 whatever the noise
    ],
)
def test_low_precision_fast_path_is_held_to_the_references_own_noise(
    monkeypatch, dtype, noise, offset, fast
):
    from memlaw.forward import choose_forward

    model, tokenizer = load_model("tiny", dtype=dtype)
    encoded = encode_items(generate_phonebook(4, seed=1), tokenizer)
    _noisy_reference(monkeypatch, noise, offset)
    chosen, note = choose_forward(model, encoded, tokenizer.pad_token_id, 2)
    assert isinstance(chosen, FastForward) == fast, note
    assert ("low-precision noise" in note) == fast


@pytest.mark.slow
def test_bf16_fast_path_is_accepted_on_the_default_model():
    from memlaw.forward import choose_forward

    # The reference moves ~0.15 nats here between batch shapes (30 layers of bf16 rounding);
    # the cache runs the reference's own attention kernel, so the fast path stays with it.
    model, tokenizer = load_model("smollm2-135m", dtype="bfloat16")
    encoded = encode_items(generate_phonebook(8, seed=0), tokenizer)
    chosen, note = choose_forward(model, encoded, tokenizer.pad_token_id, 20)
    assert isinstance(chosen, FastForward), note


@pytest.mark.parametrize("method", ["sft", "memft-ot", "memft-sw"])
def test_bf16_training_on_cpu_lowers_the_loss(method):
    model, tokenizer = load_model("tiny", dtype="bfloat16")
    if method == "memft-sw":  # one sequence: the sliding window
        encoded = encode_items(generate_random_tokens(tokenizer, 32), tokenizer)
    else:
        encoded = encode_items(generate_phonebook(3, seed=1), tokenizer)
    run = train(model, tokenizer, encoded, LoraSpec(rank=4), TrainConfig(method=method, steps=15))
    record = run.record()
    assert run.stop_reason in ("budget", "certified")
    assert record["config"]["forward"].startswith("fast path")  # the bf16 cache was accepted
    assert finite(record["base_loss"], record["final_loss"], *(e.loss for e in run.log))
    assert record["final_loss"] < record["base_loss"]
    assert next(run.model.get_base_model().parameters()).dtype == torch.bfloat16


def test_bf16_train_then_probe_on_the_command_line(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    args = ("-m", "tiny", "-g", "phonebook:3", "--dtype", "bfloat16", "--device", "cpu")
    code, stdout, err = memlaw(
        capsys, monkeypatch, "train", *args, "--rank", 4, "--steps", 30, "-o", out, "--json"
    )
    assert code == 0, err
    record = json.loads(stdout)
    assert finite(record["base_loss"], record["final_loss"])
    assert record["final_loss"] < record["base_loss"]
    code, stdout, err = memlaw(capsys, monkeypatch, "probe", *args, "-a", out, "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["final_loss"] == pytest.approx(record["final_loss"], rel=1e-6)
    assert finite(report["base_loss"], report["delta_loss"])


def test_bf16_sweep_on_cpu_records_rows_and_its_dtype(tmp_path, capsys, monkeypatch):
    db = tmp_path / "bf16.db"
    args = ("sweep", "-m", "tiny", "--ranks", "1,2", "--lengths", "16", "--db", db)
    args += ("--max-steps", 10, "--plateau-window", 1000)
    code, out, err = memlaw(capsys, monkeypatch, *args, "--dtype", "bfloat16")
    assert code == 0, err
    store = SweepStore(db)
    assert store.spec().dtype == "bfloat16" and store.spec().device == "cpu"
    rows = store.rows(with_record=True)
    assert [r["key"] for r in rows] == ["r1-l16-n1-sft-s0", "r2-l16-n1-sft-s0"]
    for row in rows:
        assert finite(row["base_loss"], row["final_loss"], *row["record"]["losses"])
        assert row["final_loss"] < row["base_loss"] and row["steps"] == 10
        assert row["record"]["config"]["forward"].startswith("fast path")
    code, out, err = memlaw(capsys, monkeypatch, *args, "--dtype", "bfloat16")
    assert code == 0 and "0 points run, 2 already done" in out
    err = one_line_error(capsys, monkeypatch, *args)  # float32 now: another sweep
    assert "dtype: 'bfloat16' vs 'float32'" in err


def test_run_point_uses_the_specs_dtype():
    spec = SweepSpec(model="tiny", ranks=(1,), lengths=(16,), max_steps=3, dtype="bfloat16")
    (point,) = spec.points()
    row = run_point(spec, point)
    float32 = run_point(SweepSpec(model="tiny", ranks=(1,), lengths=(16,), max_steps=3), point)
    assert finite(row["base_loss"], row["final_loss"])
    assert row["base_loss"] != float32["base_loss"]  # the bf16 weights really were used
    assert row["base_loss"] == pytest.approx(float32["base_loss"], rel=0.05)


# --- device and dtype in sweep databases -----------------------------------------------------

LEGACY_SETTINGS = {  # what a database written before --device/--dtype existed holds
    "data": "random",
    "data_seed": 0,
    "lr": 0.01,
    "max_steps": 40,
    "model": "tiny",
    "modules": "mlp",
    "plateau_tolerance": 0.01,
    "plateau_window": 50,
}


# What sweeps ran under before these settings existed (sweep.LATER_SETTINGS).
# the defaults of a sweep before these settings (and before lr followed the batch: 1e-2)
AS_BEFORE = {"batch_size": 0, "stop_at_certified": False, "plateau_on": "delta_loss", "lr": 0.01}


def legacy_database(path: Path, settings: dict = LEGACY_SETTINGS) -> Path:
    spec = {**settings, "ranks": [1, 2], "lengths": [16], "layer_counts": [1]}
    spec |= {"methods": ["sft"], "seeds": [0]}
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        # as every sweep wrote it: a points table, here with one finished point
        connection.execute(f"CREATE TABLE points ({COLUMNS})")
        connection.execute("INSERT INTO points (key) VALUES ('r1-l16-n1-sft-s0')")
        connection.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [
                ("settings", json.dumps(settings, sort_keys=True)),
                ("schema", "1"),
                ("spec", json.dumps(spec, sort_keys=True)),
            ],
        )
    connection.close()
    return path


def test_a_database_from_before_device_and_dtype_is_accepted_with_the_defaults(tmp_path):
    path = legacy_database(tmp_path / "old.db")
    old = SweepStore(path).spec()
    assert (old.device, old.dtype) == ("cpu", "float32")
    spec = SweepSpec(model="tiny", ranks=(1, 2), lengths=(16,), max_steps=40, **AS_BEFORE)
    SweepStore(path, spec)  # cpu / float32: the same sweep
    SweepStore(path, SweepSpec(**{**vars(spec), "device": "cpu", "dtype": "float32"}))
    for changes, difference in [
        ({"dtype": "bfloat16"}, "dtype: 'float32' vs 'bfloat16'"),
        ({"device": "cuda"}, "device: 'cpu' vs 'cuda'"),
    ]:
        with pytest.raises(MemlawError, match=difference):
            SweepStore(path, SweepSpec(**{**vars(spec), **changes}))
    # the fingerprint of a default sweep is the one it had before these settings existed
    stored = json.dumps(LEGACY_SETTINGS, sort_keys=True)
    assert fingerprint(spec) == hashlib.sha256(stored.encode()).hexdigest()[:12]


def test_a_database_that_spells_out_the_defaults_is_accepted(tmp_path):
    explicit = LEGACY_SETTINGS | {"device": "cpu", "dtype": "float32"}
    path = legacy_database(tmp_path / "explicit.db", explicit)
    grid = {"model": "tiny", "ranks": (1,), "lengths": (16,), "max_steps": 40, **AS_BEFORE}
    SweepStore(path, SweepSpec(**grid))
    with pytest.raises(MemlawError, match="dtype: 'float32' vs 'float16'"):
        SweepStore(path, SweepSpec(**grid, dtype="float16"))


@pytest.mark.skipif(not SHIPPED_DB.is_file(), reason="laws/smollm2-135m-mlp.db is not here")
def test_the_shipped_smollm2_database_resumes_on_the_command_line(tmp_path, capsys, monkeypatch):
    db = shutil.copy(SHIPPED_DB, tmp_path / "smollm2.db")  # resuming writes to the file
    spec = SweepStore(db).spec()
    assert (spec.device, spec.dtype) == ("cpu", "float32")
    grid = (
        "--ranks",
        ",".join(map(str, spec.ranks)),
        "--lengths",
        ",".join(map(str, spec.lengths)),
    )
    settings = ("--max-steps", spec.max_steps, "--plateau-window", spec.plateau_window)
    # the settings it ran under, from before memlaw train's recipe became the sweep's default
    settings += ("--modules", spec.modules, "--batch-size", 0, "--train-past-certified")
    settings += ("--plateau-on", "delta_loss", "--anneal-patience", 0, "--lr", spec.lr)
    code, out, err = memlaw(capsys, monkeypatch, "sweep", "--db", db, *grid, *settings)
    assert code == 0, err
    assert f"0 points run, {len(spec.points())} already done" in out
    err = one_line_error(
        capsys, monkeypatch, "sweep", "--db", db, *grid, *settings, "--dtype", "bfloat16"
    )
    assert "dtype: 'float32' vs 'bfloat16'" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (("--device", "tpu"), "unknown device 'tpu': use cpu, cuda or cuda:N"),
        (("--dtype", "float8"), "unknown dtype 'float8'"),
    ],
)
def test_bad_device_or_dtype_for_a_sweep(tmp_path, capsys, monkeypatch, args, message):
    db = tmp_path / "s.db"
    assert message in one_line_error(capsys, monkeypatch, "sweep", "-m", "tiny", "--db", db, *args)
    assert not db.exists()


@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_says_so(tmp_path, capsys, monkeypatch):
    db = tmp_path / "s.db"
    for command in (
        ("sweep", "-m", "tiny", "--db", db, "--device", "cuda"),
        ("sweep", "-m", "tiny", "--db", db, "--device", "cuda:1", "--dtype", "bfloat16"),
        ("train", "-m", "tiny", "-g", "phonebook:2", "-o", tmp_path / "r", "--device", "cuda"),
        ("probe", "-m", "tiny", "-g", "phonebook:2", "--device", "cuda"),
    ):
        err = one_line_error(capsys, monkeypatch, *command)
        assert "CUDA is not available: use --device cpu" in err, err
    assert not db.exists() and not (tmp_path / "r").exists()


# --- on a GPU --------------------------------------------------------------------------------


@cuda
@pytest.mark.parametrize("method", ["sft", "memft-ot", "memft-sw"])
def test_cuda_bf16_train_and_probe(method):
    model, tokenizer = load_model("tiny", dtype="bfloat16", device="cuda")
    if method == "memft-sw":
        encoded = encode_items(generate_random_tokens(tokenizer, 32), tokenizer)
    else:
        encoded = encode_items(generate_phonebook(3, seed=1), tokenizer)
    run = train(model, tokenizer, encoded, LoraSpec(rank=4), TrainConfig(method=method, steps=20))
    record = run.record()
    assert finite(record["base_loss"], record["final_loss"], *(e.loss for e in run.log))
    assert record["final_loss"] < record["base_loss"]
    assert all(p.device.type == "cuda" for p in run.model.parameters())
    report = probe(run.model, tokenizer, encoded)
    assert report.final_loss == pytest.approx(record["final_loss"], rel=1e-5)
    fast = FastForward(run.model, encoded, tokenizer.pad_token_id, first_layer=2)
    with torch.no_grad():
        losses = fast(list(range(len(encoded))))
    assert losses.nll.dtype == torch.float32 and losses.nll.device.type == "cuda"
    assert fast.cache[0].dtype == torch.bfloat16 and fast.cache[0].device.type == "cuda"


@cuda
def test_cuda_bf16_train_probe_and_sweep_on_the_command_line(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    args = ("-m", "tiny", "-g", "phonebook:3", "--dtype", "bfloat16", "--device", "cuda")
    code, stdout, err = memlaw(
        capsys, monkeypatch, "train", *args, "--steps", 30, "-o", out, "--json"
    )
    assert code == 0, err
    assert finite(json.loads(stdout)["final_loss"])
    code, stdout, err = memlaw(capsys, monkeypatch, "probe", *args, "-a", out, "--json")
    assert code == 0, err
    assert finite(json.loads(stdout)["final_loss"])

    db = tmp_path / "gpu.db"
    code, out, err = memlaw(
        capsys,
        monkeypatch,
        "sweep",
        "-m",
        "tiny",
        "--ranks",
        "1,2",
        "--lengths",
        "16",
        "--max-steps",
        20,
        "--device",
        "cuda",
        "--dtype",
        "bfloat16",
        "--db",
        db,
    )
    assert code == 0, err
    rows = SweepStore(db).rows()
    assert len(rows) == 2 and all(finite(r["base_loss"], r["final_loss"]) for r in rows)


@cuda
def test_cuda_sweep_on_ray_gets_one_gpu_per_point(tmp_path):
    pytest.importorskip("ray")
    from memlaw.ray_executor import RayExecutor
    from memlaw.sweep import run_sweep

    spec = SweepSpec(
        model="tiny", ranks=(1, 2), lengths=(16,), max_steps=20, device="cuda", dtype="bfloat16"
    )
    summary = run_sweep(spec, SweepStore(tmp_path / "ray.db", spec), RayExecutor(), progress=False)
    assert summary["done"] == 2
