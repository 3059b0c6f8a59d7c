"""Hostile inputs against all eight commands, through the real CLI on `tiny`.

Every case must end with exit code 2, exactly one stderr line starting with ``error:`` (and
saying what the case is about), no traceback, and nothing written: the case's working folder
and every input file are the same before and after. Most cases run in-process through
``memlaw.cli.main`` (an escaping exception fails the test); those marked ``proc`` run the real
console entry point in a child process, where a traceback or another exit code would show.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memlaw.cli import main
from memlaw.sweep import LATER_COLUMNS, SweepSpec, SweepStore
from tests.test_sweep_report import synthetic_row

HUGE_RANK = "1000000000"  # about 10 TiB of adapter state on tiny: never fits


def run_in_process(args, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["memlaw", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_process(args, cwd: Path):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}  # main() sets it
    result = subprocess.run(
        [sys.executable, "-m", "memlaw.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=900,  # a loaded machine; a few seconds on an idle one
    )
    return result.returncode, result.stdout, result.stderr


def snapshot(*roots: Path) -> dict:
    """Every path under ``roots`` with its kind, and for files their size and content hash."""
    state = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            info = path.lstat()
            entry = (stat.S_IFMT(info.st_mode),)
            if path.is_file() and not path.is_symlink():
                entry += (info.st_size, hashlib.sha256(path.read_bytes()).hexdigest())
            state[str(path)] = entry
    return state


# --- the world the cases run against ----------------------------------------------------------


def _edit_json(path: Path, **changes) -> None:
    payload = json.loads(path.read_text())
    payload.update(changes)
    path.write_text(json.dumps(payload))


def _adapter_variants(world: Path) -> None:
    """Broken copies of a good adapter, one fault each."""
    import shutil

    from safetensors.torch import load_file, save_file

    good = world / "adapter"
    weights = "adapter_model.safetensors"
    data = (good / weights).read_bytes()
    for name in ("empty", "truncated", "pickle", "targets", "nan_alpha", "other_model"):
        shutil.copytree(good, world / f"adapter_{name}")
    for name in ("other_base", "badjson", "shape", "nan_weights", "no_weights"):
        shutil.copytree(good, world / f"adapter_{name}")
    (world / "adapter_empty" / weights).write_bytes(b"")
    (world / "adapter_truncated" / weights).write_bytes(data[: len(data) // 2])
    (world / "adapter_pickle" / weights).unlink()
    torch.save({"x": torch.zeros(1)}, world / "adapter_pickle" / "adapter_model.bin")
    (world / "adapter_no_weights" / weights).unlink()
    _edit_json(
        world / "adapter_targets" / "adapter_config.json",
        target_modules=["model.layers.0.self_attn.q_proj"],
    )
    (world / "adapter_nan_alpha" / "adapter_config.json").write_text(
        (good / "adapter_config.json").read_text().replace('"lora_alpha": 4', '"lora_alpha": NaN')
    )
    _edit_json(world / "adapter_other_model" / "record.json", model="smollm2-135m")
    (world / "adapter_other_base" / "record.json").unlink()
    _edit_json(
        world / "adapter_other_base" / "adapter_config.json",
        base_model_name_or_path="HuggingFaceTB/SmolLM2-135M",
    )
    (world / "adapter_badjson" / "adapter_config.json").write_text("{oops")
    tensors = load_file(good / weights)
    # up_proj's weights (out 128) relabelled as k_proj's (out 32): another model's shapes
    moved = {k.replace("mlp.up_proj", "self_attn.k_proj"): v for k, v in tensors.items()}
    moved = {k: v for k, v in moved.items() if "k_proj" in k}
    save_file(moved, world / "adapter_shape" / weights)
    _edit_json(
        world / "adapter_shape" / "adapter_config.json",
        target_modules=["model.layers.3.self_attn.k_proj"],
    )
    poisoned = {k: v.clone() for k, v in tensors.items()}
    next(iter(poisoned.values()))[0, 0] = float("nan")
    save_file(poisoned, world / "adapter_nan_weights" / weights)


def _databases(world: Path) -> None:
    spec = SweepSpec(
        model="tiny", data="random", ranks=(1, 2, 4, 8), lengths=(16, 32, 64), max_steps=40
    )
    store = SweepStore(world / "sweep.db", spec)
    for length in (16, 32, 64):
        for rank in (1, 2, 4, 8):
            later = {column.split()[0]: None for column in LATER_COLUMNS}
            store.add(later | synthetic_row(rank, length, capped=False))
    store.close()
    # Reading a WAL-mode database leaves SQLite's -wal/-shm beside it (a gap of SweepStore,
    # reported on the issue); in rollback mode a read leaves nothing, as it must.
    with sqlite3.connect(world / "sweep.db") as connection:
        connection.execute("PRAGMA journal_mode=DELETE")
    connection.close()
    with sqlite3.connect(world / "foreign.db") as foreign:
        foreign.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
        foreign.execute("INSERT INTO customers VALUES (1, 'Ada')")
    (world / "empty.db").write_bytes(b"")
    (world / "text.db").write_text("not a database\n")


def _files(world: Path) -> None:
    (world / "facts.jsonl").write_text('{"prompt": "Capital of Zorbia?", "target": "Quallport"}\n')
    (world / "bad.jsonl").write_text('{"prompt": "a", "target": "1"}\n{oops}\n')
    (world / "empty.jsonl").write_text("")
    (world / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (world / "afile").write_text("a plain file\n")
    (world / "adir").mkdir()
    (world / "adir" / "keep.txt").write_text("x\n")
    (world / "broken_law.json").write_text("{")
    nan_law = {
        "format": "memlaw.law/1",
        "form": "full",
        "params": {"C": float("nan"), "alpha": 0.3, "beta": 0.4, "b": 0.0},
    }
    (world / "nan_law.json").write_text(json.dumps(nan_law))
    law = {**nan_law, "params": {"C": 2.0, "alpha": 0.4, "beta": 0.5, "b": 0.05}}
    (world / "law.json").write_text(json.dumps(law | {"metadata": {"model": "tiny"}}))
    custom = world / "custom_model"
    custom.mkdir()
    (custom / "config.json").write_text(
        json.dumps({"model_type": "zorbia", "auto_map": {"AutoConfig": "zorbia.ZorbiaConfig"}})
    )
    (world / "no_config_model").mkdir()
    readonly = world / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs shared by every case (read-only for them): adapters, databases, laws, files."""
    root = tmp_path_factory.mktemp("world")
    # A module-scoped fixture cannot take capsys: the adapter is trained through the library.
    from memlaw.adapters import LoraSpec
    from memlaw.data import encode_items, generate_phonebook
    from memlaw.models import load_model
    from memlaw.train import TrainConfig, save_run, train

    model, tokenizer = load_model("tiny")
    encoded = encode_items(generate_phonebook(2), tokenizer)
    result = train(model, tokenizer, encoded, LoraSpec(rank=4), TrainConfig(steps=2))
    save_run(result, root / "adapter", extra={"model": "tiny", "data": "phonebook:2"})
    _adapter_variants(root)
    _databases(root)
    _files(root)
    yield root
    (root / "readonly").chmod(0o755)


# --- the cases ----------------------------------------------------------------------------------
# (id, command line with {w} = the world folder, text the error must contain, options)
# options: proc (run as a child process), root_skip (meaningless as root: permissions).

USAGE = [
    ("rank-not-int", "train --rank abc", "Invalid value for '--rank'", {"proc": True}),
    (
        "lr-no-value",
        "train -m tiny -g phonebook:2 --lr",
        "'--lr' requires an argument",
        {"proc": True},
    ),
    ("unknown-option", "train --bogus 1", "No such option: --bogus", {"proc": True}),
    ("unknown-command", "bogus", "No such command 'bogus'", {"proc": True}),
    ("probe-tau-text", "probe --tau abc", "Invalid value for '--tau'", {"proc": True}),
    ("audit-extra-arg", "audit extra", "unexpected extra argument", {"proc": True}),
    ("demo-entries-float", "demo --entries 1.5", "Invalid value for '--entries'", {"proc": True}),
    ("sweep-workers-text", "sweep --workers many", "Invalid value for '--workers'", {}),
    ("fit-bootstrap-float", "fit --bootstrap 1.5", "Invalid value for '--bootstrap'", {}),
    ("plan-length-no-value", "plan --length", "'--length' requires an argument", {}),
    ("report-db-no-value", "report --db", "'--db' requires an argument", {}),
    ("train-bool-value", "train --json=yes", "does not take a value", {}),
]

TRAIN = "train -m tiny -g phonebook:2 --steps 2"
NUMBERS = [
    ("train-lr-nan", f"{TRAIN} --lr nan", "--lr must be a finite number > 0, got nan", {}),
    ("train-lr-inf", f"{TRAIN} --lr inf", "--lr must be a finite number", {}),
    ("train-lr-negative", f"{TRAIN} --lr -1", "--lr must be a number > 0", {}),
    ("train-alpha-nan", f"{TRAIN} --alpha nan", "--alpha must be a finite number", {}),
    ("train-alpha-zero", f"{TRAIN} --alpha 0", "--alpha must be a number > 0", {}),
    ("train-dropout-high", f"{TRAIN} --lora-dropout 1.5", "--lora-dropout must be", {}),
    ("train-dropout-nan", f"{TRAIN} --lora-dropout nan", "--lora-dropout must be a finite", {}),
    ("train-tau-nan", f"{TRAIN} --tau nan", "--tau must be a finite number", {}),
    ("train-tau-one", f"{TRAIN} --tau 1", "--tau must be a number within (0, 1)", {}),
    ("train-train-tau-nan", f"{TRAIN} --train-tau nan", "--train-tau must be a finite", {}),
    (
        "train-train-tau-low",
        f"{TRAIN} --train-tau 0.3",
        "--train-tau must be a number within [0.5, 1)",
        {},
    ),
    ("train-grad-clip-nan", f"{TRAIN} --grad-clip nan", "--grad-clip must be a finite", {}),
    ("train-grad-clip-zero", f"{TRAIN} --grad-clip 0", "--grad-clip must be a number > 0", {}),
    ("train-decay-nan", f"{TRAIN} --position-decay nan", "--position-decay must be a finite", {}),
    ("train-decay-negative", f"{TRAIN} --position-decay -1", "--position-decay must be", {}),
    ("train-steps-zero", f"{TRAIN} --steps 0", "--steps must be a positive integer", {}),
    ("train-epochs-zero", f"{TRAIN} --epochs 0", "--epochs must be a positive integer", {}),
    ("train-batch-negative", f"{TRAIN} --batch-size -1", "--batch-size must be an integer ≥ 0", {}),
    ("train-warmup-negative", f"{TRAIN} --sft-warmup-steps -1", "--sft-warmup-steps must be", {}),
    ("train-lr-warmup-negative", f"{TRAIN} --warmup-steps -1", "--warmup-steps must be", {}),
    ("train-length-zero", f"{TRAIN} --length 0", "--length must be a positive integer", {}),
    ("train-seed-negative", f"{TRAIN} --seed -1", "--seed must be an integer ≥ 0", {}),
    ("train-data-seed-negative", f"{TRAIN} --data-seed -1", "--data-seed must be", {}),
    ("train-rank-zero", f"{TRAIN} --rank 0", "--rank must be a positive integer", {}),
    ("train-fallback", f"{TRAIN} --fallback maybe", "--fallback must be skip or mean", {}),
    ("probe-tau-nan", "probe -m tiny -g phonebook:2 --tau nan", "--tau must be a finite", {}),
    ("probe-tau-zero", "probe -m tiny -g phonebook:2 --tau 0", "--tau must be a number", {}),
    ("probe-length-negative", "probe -m tiny -g phonebook:2 --length -3", "--length must be", {}),
    ("audit-tau-inf", "audit -m tiny -g phonebook:2 --tau inf", "--tau must be a finite", {}),
    ("demo-entries-zero", "demo -m tiny --entries 0", "--entries must be a positive integer", {}),
    ("demo-rank-zero", "demo -m tiny --rank 0", "--rank must be a positive integer", {}),
    ("demo-steps-zero", "demo -m tiny --steps 0", "--steps must be a positive integer", {}),
    ("sweep-lr-nan", "sweep -m tiny --lr nan", "--lr must be a finite number", {}),
    (
        "sweep-tolerance-nan",
        "sweep -m tiny --plateau-tolerance nan",
        "--plateau-tolerance must",
        {},
    ),
    ("sweep-tolerance-negative", "sweep -m tiny --plateau-tolerance -1", "--plateau-tolerance", {}),
    ("sweep-max-steps-zero", "sweep -m tiny --max-steps 0", "--max-steps must be", {}),
    ("sweep-window-zero", "sweep -m tiny --plateau-window 0", "--plateau-window must be", {}),
    ("sweep-workers-zero", "sweep -m tiny --workers 0", "--workers must be positive, got 0", {}),
    ("sweep-noisy-text", "sweep -m tiny --data noisy:abc", "noisy needs a fraction", {}),
    ("sweep-noisy-two", "sweep -m tiny --data noisy:2", "--data noisy:FRACTION must be", {}),
    ("sweep-ranks-zero", "sweep -m tiny --ranks 0,1", "--ranks must be positive integers", {}),
    ("sweep-methods-empty", "sweep -m tiny --methods ,", "--methods needs at least one", {}),
    ("fit-bootstrap-negative", "fit --db {w}/sweep.db --bootstrap -1", "--bootstrap must be", {}),
    ("fit-out-under-file", "fit --db {w}/sweep.db -o {w}/afile/law.json", "is not a folder", {}),
    (
        "plan-base-loss-negative",
        "plan -m tiny --law {w}/law.json --length 64 --base-loss -1",
        "--base-loss must be a number > 0",
        {},
    ),
    ("plan-rank-zero", "plan -m tiny --length 64 --rank 0", "--rank must be a positive", {}),
    (
        "plan-base-loss-nan",
        "plan -m tiny --law {w}/law.json --length 64 --base-loss nan",
        "--base-loss must be a finite",
        {},
    ),
    (
        "plan-length-zero",
        "plan -m tiny --law {w}/law.json --length 0",
        "--length must be a positive",
        {},
    ),
    (
        "plan-layers-zero",
        "plan -m tiny --law {w}/law.json --length 64 --layers 0",
        "--layers must be",
        {},
    ),
]

OUTPUTS = [
    (
        "train-out-proc",
        f"{TRAIN} -o /proc/memlaw-run",
        "--out '/proc/memlaw-run' cannot be written",
        {},
    ),
    ("train-out-under-file", f"{TRAIN} -o {{w}}/afile/run", "is not a folder", {}),
    ("train-out-is-file", f"{TRAIN} -o {{w}}/afile --overwrite", "is a file, not a folder", {}),
    ("train-out-exists", f"{TRAIN} -o {{w}}/adir", "already exists", {}),
    (
        "train-out-readonly",
        f"{TRAIN} -o {{w}}/readonly/run",
        "Permission denied",
        {"root_skip": True},
    ),
    (
        "demo-out-proc",
        "demo -m tiny --entries 2 --steps 1 -o /proc/memlaw-demo",
        "cannot be written",
        {},
    ),
    (
        "demo-out-is-file",
        "demo -m tiny --entries 2 --steps 1 -o {w}/afile",
        "is a file, not a folder",
        {},
    ),
    (
        "sweep-db-proc",
        "sweep -m tiny --db /proc/memlaw.db",
        "--db '/proc/memlaw.db' cannot be written",
        {},
    ),
    ("sweep-db-folder", "sweep -m tiny --db {w}/adir", "is a folder: give a file name", {}),
    ("fit-out-folder", "fit --db {w}/sweep.db -o {w}/adir", "--out '{w}/adir' is a folder", {}),
    ("fit-out-proc", "fit --db {w}/sweep.db -o /proc/law.json", "cannot be written", {}),
    ("fit-out-is-db", "fit --db {w}/sweep.db -o {w}/sweep.db", "is the --db input", {}),
    (
        "fit-out-readonly",
        "fit --db {w}/sweep.db -o {w}/readonly/law.json",
        "Permission denied",
        {"root_skip": True},
    ),
    (
        "plan-png-folder",
        "plan -m tiny --law {w}/law.json --length 64 --png {w}/adir",
        "--png '{w}/adir' is a folder",
        {},
    ),
    (
        "plan-png-proc",
        "plan -m tiny --law {w}/law.json --length 64 --png /proc/plan.png",
        "cannot be written",
        {},
    ),
    (
        "plan-png-is-law",
        "plan -m tiny --law {w}/law.json --length 64 --png {w}/law.json",
        "is the --law input",
        {},
    ),
    ("report-out-folder", "report --db {w}/sweep.db -o {w}/adir", "is a folder", {}),
    ("report-out-proc", "report --db {w}/sweep.db -o /proc/report.html", "cannot be written", {}),
    ("report-out-is-db", "report --db {w}/sweep.db -o {w}/sweep.db", "is the --db input", {}),
]

INPUTS = [
    (
        "train-data-missing",
        "train -m tiny -d {w}/nope.jsonl",
        "--data file '{w}/nope.jsonl' does not exist",
        {},
    ),
    ("train-data-folder", "train -m tiny -d {w}/adir", "is not a file", {}),
    ("train-data-malformed", "train -m tiny -d {w}/bad.jsonl", "malformed JSON", {}),
    ("train-data-empty", "train -m tiny -d {w}/empty.jsonl", "holds no memory items", {}),
    ("train-data-not-utf8", "train -m tiny -d {w}/latin1.txt", "latin1.txt", {}),
    (
        "train-data-markup-path",
        "train -m tiny -d {w}/odd[red]name[/red].jsonl",
        "odd[red]name[/red].jsonl' does not exist",
        {},
    ),
    ("train-generator", "train -m tiny -g phonebook:many", "bad --generate 'phonebook:many'", {}),
    (
        "train-both-sources",
        "train -m tiny -g phonebook:2 -d {w}/facts.jsonl",
        "exactly one of --data",
        {},
    ),
    ("probe-no-source", "probe -m tiny", "exactly one of --data", {}),
    ("audit-generator", "audit -m tiny -g zipf:3", "bad --generate", {}),
    (
        "plan-data-missing",
        "plan -m tiny --law {w}/law.json --data {w}/nope.jsonl",
        "does not exist",
        {},
    ),
    ("plan-law-missing", "plan -m tiny --law {w}/nope.json --length 64", "no law file", {}),
    (
        "plan-law-broken",
        "plan -m tiny --law {w}/broken_law.json --length 64",
        "malformed law JSON",
        {},
    ),
    ("plan-law-nan", "plan -m tiny --law {w}/nan_law.json --length 64", "must be finite", {}),
    (
        "report-law-broken",
        "report --db {w}/sweep.db --law {w}/broken_law.json",
        "malformed law JSON",
        {},
    ),
    ("report-point-unknown", "report --db {w}/sweep.db --point r99-nope", "r99-nope", {}),
]

PROBE = "probe -m tiny -g phonebook:2 -a"
ARTIFACTS = [
    ("probe-adapter-missing", f"{PROBE} {{w}}/nope", "adapter '{w}/nope' does not exist", {}),
    ("probe-adapter-file", f"{PROBE} {{w}}/afile", "is a file, not an adapter folder", {}),
    ("probe-adapter-no-config", f"{PROBE} {{w}}/adir", "no adapter_config.json", {}),
    ("probe-adapter-bad-json", f"{PROBE} {{w}}/adapter_badjson", "cannot read", {}),
    (
        "probe-weights-empty",
        f"{PROBE} {{w}}/adapter_empty",
        "not a readable safetensors file",
        {"proc": True},
    ),
    (
        "probe-weights-truncated",
        f"{PROBE} {{w}}/adapter_truncated",
        "not a readable safetensors file",
        {},
    ),
    ("probe-weights-pickle", f"{PROBE} {{w}}/adapter_pickle", "only pickle weights", {}),
    (
        "probe-weights-missing",
        f"{PROBE} {{w}}/adapter_no_weights",
        "has no adapter_model.safetensors",
        {},
    ),
    ("probe-weights-nan", f"{PROBE} {{w}}/adapter_nan_weights", "NaN or infinite", {}),
    (
        "probe-config-nan-alpha",
        f"{PROBE} {{w}}/adapter_nan_alpha",
        "lora_alpha must be a finite",
        {},
    ),
    ("probe-config-targets", f"{PROBE} {{w}}/adapter_targets", "has no weights for", {}),
    (
        "probe-other-model",
        f"{PROBE} {{w}}/adapter_other_model",
        "trained on model 'smollm2-135m', not 'tiny'",
        {},
    ),
    (
        "probe-other-base",
        f"{PROBE} {{w}}/adapter_other_base",
        "trained on model 'HuggingFaceTB/SmolLM2-135M'",
        {},
    ),
    ("probe-other-shapes", f"{PROBE} {{w}}/adapter_shape", "do not fit the model's module", {}),
    (
        "audit-weights-truncated",
        "audit -m tiny -g phonebook:2 -a {w}/adapter_truncated",
        "not a readable safetensors",
        {},
    ),
    (
        "audit-other-model",
        "audit -m tiny -g phonebook:2 -a {w}/adapter_other_model",
        "not 'tiny'",
        {},
    ),
    (
        "audit-law-broken",
        "audit -m tiny -g phonebook:2 -a {w}/adapter --law {w}/broken_law.json",
        "malformed law JSON",
        {},
    ),
    ("fit-db-missing", "fit --db {w}/nope.db", "does not exist", {}),
    ("fit-db-foreign", "fit --db {w}/foreign.db", "not a memlaw sweep database", {}),
    ("fit-db-empty", "fit --db {w}/empty.db", "not a memlaw sweep database", {}),
    ("fit-db-text", "fit --db {w}/text.db", "not a usable sweep database", {}),
    ("fit-db-folder", "fit --db {w}/adir", "sweep database", {}),
    ("report-db-foreign", "report --db {w}/foreign.db", "not a memlaw sweep database", {}),
    ("report-db-text", "report --db {w}/text.db", "not a usable sweep database", {}),
    (
        "sweep-db-foreign",
        "sweep -m tiny --ranks 1 --lengths 8 --db {w}/foreign.db",
        "not a memlaw sweep",
        {},
    ),
]

MODELS = [
    (
        "hub-id-not-cached",
        "probe -m memlaw-test/no-such-model -g phonebook:2",
        "does not download models",
        {"proc": True},
    ),
    ("model-custom-code", "probe -m {w}/custom_model -g phonebook:2", "needs its own code", {}),
    (
        "model-folder-no-config",
        "train -m {w}/no_config_model -g phonebook:2",
        "holds no usable model config",
        {},
    ),
    ("model-path-missing", "audit -m {w}/no-such-folder -g phonebook:2", "does not exist", {}),
    ("model-dtype", f"{TRAIN} --dtype float8", "unknown dtype 'float8'", {}),
    ("model-device", f"{TRAIN} --device tpu", "unknown device 'tpu'", {}),
    (
        "sweep-model-unknown",
        "sweep -m no-such-model-xyz --ranks 1 --lengths 8",
        "unknown model",
        {},
    ),
]

RESOURCES = [
    ("train-rank-huge", f"{TRAIN} --rank {HUGE_RANK}", "lower the rank", {"proc": True}),
    (
        "demo-rank-huge",
        f"demo -m tiny --entries 2 --steps 1 --rank {HUGE_RANK}",
        "lower the rank",
        {},
    ),
    ("sweep-rank-huge", f"sweep -m tiny --ranks {HUGE_RANK} --lengths 8", "lower the rank", {}),
    (
        "sweep-length-past-context",
        "sweep -m tiny --ranks 1 --lengths 8,5000",
        "context of tiny (1024)",
        {},
    ),
    (
        "sweep-too-many-layers",
        "sweep -m tiny --ranks 1 --lengths 8 --layer-counts 9",
        "cannot adapt 9 layers",
        {},
    ),
    (
        "sweep-unknown-module",
        "sweep -m tiny --ranks 1 --lengths 8 --modules wq",
        "unknown module name(s) wq",
        {},
    ),
    ("train-layer-out-of-range", f"{TRAIN} --layers 7", "layer index 7 is out of range", {}),
    (
        "train-data-past-context",
        "train -m tiny -g random:2000",
        "more than the model's context",
        {},
    ),
]

CLASSES = {
    "usage": USAGE,
    "numbers": NUMBERS,
    "outputs": OUTPUTS,
    "inputs": INPUTS,
    "artifacts": ARTIFACTS,
    "models": MODELS,
    "resources": RESOURCES,
}
ALL = [
    pytest.param(group, *case, id=f"{group}:{case[0]}")
    for group, cases in CLASSES.items()
    for case in cases
]


def test_the_suite_covers_every_command():
    commands = {"train", "probe", "audit", "demo", "sweep", "fit", "plan", "report"}
    used = {case[1].split()[0] for cases in CLASSES.values() for case in cases}
    assert commands <= used
    assert len(ALL) >= 60


@pytest.mark.parametrize("group, name, command, expected, options", ALL)
def test_hostile_input(
    group, name, command, expected, options, world, tmp_path, capsys, monkeypatch
):
    if options.get("root_skip") and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    args = command.replace("{w}", str(world)).split()
    expected = expected.replace("{w}", str(world))
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path, world)
    if options.get("proc"):
        code, out, err = run_process(args, tmp_path)
    else:
        code, out, err = run_in_process(args, capsys, monkeypatch)
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0]
    assert "Traceback" not in err + out
    assert snapshot(tmp_path, world) == before
