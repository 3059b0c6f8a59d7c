"""Sweeps: the grid lands in SQLite once per point, survives SIGKILL, and refuses foreign DBs."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from memlaw.errors import MemlawError
from memlaw.sweep import (
    LocalExecutor,
    SweepSpec,
    SweepStore,
    adapted_layers,
    run_sweep,
    usable_cpus,
)

GRID = {"ranks": (1, 2, 4), "lengths": (16, 32)}


def tiny_spec(**changes):
    settings = dict(model="tiny", data="random", max_steps=30, plateau_window=10, **GRID)
    return SweepSpec(**(settings | changes))


def test_sweep_fills_the_grid_once_and_resumes(tmp_path):
    spec = tiny_spec(layer_counts=(1, 2))
    store = SweepStore(tmp_path / "s.db", spec)
    first = run_sweep(spec, store, LocalExecutor(workers=2), progress=False)
    assert first["done"] == 12 and first["skipped"] == 0
    rows = store.rows(with_record=True)
    assert sorted(r["key"] for r in rows) == sorted(p.key for p in spec.points())
    for row in rows:
        assert row["n_eff"] == row["rank"] * row["layers"]
        assert row["delta_loss"] == pytest.approx(row["base_loss"] - row["final_loss"])
        assert row["stop_reason"] in ("plateau", "budget", "certified")
        assert row["hit_cap"] == (row["stop_reason"] == "budget")
        assert len(row["record"]["probabilities"]) == row["length"]
        assert row["steps"] == len(row["record"]["losses"])
        assert row["items"] == row["record"]["config"]["items"] > 0  # read inside SQLite
    assert all(r["items"] and r["record"] is None for r in SweepStore(tmp_path / "s.db").rows())
    again = run_sweep(
        spec, SweepStore(tmp_path / "s.db", spec), LocalExecutor(workers=1), progress=False
    )
    assert again == {"total": 12, "skipped": 12, "done": 0}


def test_a_closed_store_is_one_file_and_reading_it_leaves_nothing_beside_it(tmp_path):
    spec = tiny_spec(ranks=(1,), lengths=(8,), max_steps=2)
    store = SweepStore(tmp_path / "s.db", spec)
    run_sweep(spec, store, LocalExecutor(workers=1), progress=False)
    other = SweepStore(tmp_path / "s.db", spec)  # a second writer still has it open …
    store.close()
    assert (tmp_path / "s.db-wal").exists()  # … so the log stays until the last one closes
    other.close()
    reader = SweepStore(tmp_path / "s.db")
    assert len(reader.rows()) == 1
    reader.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]


def test_a_database_from_another_sweep_is_refused(tmp_path):
    spec = tiny_spec(ranks=(1,), lengths=(8,), max_steps=2)
    run_sweep(spec, SweepStore(tmp_path / "s.db", spec), LocalExecutor(workers=1), progress=False)
    with pytest.raises(MemlawError, match=r"other settings \(lr: default vs 0.02\)"):
        SweepStore(tmp_path / "s.db", tiny_spec(lr=0.02, max_steps=2))
    SweepStore(tmp_path / "s.db", spec)  # a larger grid, same settings: fine
    SweepStore(tmp_path / "s.db", tiny_spec(ranks=(8,), max_steps=2))


def test_a_store_with_no_finished_point_takes_corrected_settings(tmp_path):
    SweepStore(tmp_path / "s.db", tiny_spec())  # as a sweep whose first point failed leaves it
    store = SweepStore(tmp_path / "s.db", tiny_spec(lr=0.02))
    assert store.spec().lr == 0.02


def test_reading_never_writes_and_refuses_foreign_databases(tmp_path):
    foreign = tmp_path / "other.db"
    connection = sqlite3.connect(foreign)
    connection.execute("CREATE TABLE t (x)")
    connection.commit()
    connection.close()
    before = foreign.read_bytes()
    with pytest.raises(MemlawError, match="not a memlaw sweep"):
        SweepStore(foreign)
    with pytest.raises(MemlawError, match="not a memlaw sweep"):
        SweepStore(foreign, tiny_spec())
    assert foreign.read_bytes() == before
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(MemlawError, match="not a memlaw sweep"):
        SweepStore(empty)
    assert empty.read_bytes() == b""


def test_corrupt_database_is_refused(tmp_path):
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(MemlawError, match="is not a usable sweep database"):
        SweepStore(path, tiny_spec())


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"ranks": (0, 1)}, "ranks must be positive integers"),
        ({"lengths": (-5,)}, "lengths must be positive integers"),
        ({"lengths": ()}, "at least one value in lengths"),
        ({"data": "nonsense.jsonl"}, "neither a generator"),
    ],
)
def test_bad_grids(changes, message):
    with pytest.raises(MemlawError, match=message):
        tiny_spec(**changes)


def test_adapted_layers_start_at_two_thirds_and_stay_in_range():
    assert adapted_layers(1, 30) == (20,)
    assert adapted_layers(4, 30) == (20, 21, 22, 23)
    assert adapted_layers(3, 4) == (1, 2, 3)
    with pytest.raises(MemlawError):
        adapted_layers(5, 4)


def test_sigkill_mid_sweep_then_rerun_gives_each_point_once(tmp_path):
    db = tmp_path / "kill.db"
    command = [
        sys.executable,
        "-m",
        "memlaw.cli",
        "sweep",
        "-m",
        "tiny",
        "--ranks",
        "1,2,4",
        "--lengths",
        "16,32",
        "--max-steps",
        "400",
        "--plateau-window",
        "1000",
        "--db",
        str(db),
    ]
    process = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    count = 0
    while time.time() < deadline and process.poll() is None:
        if db.exists():
            try:
                count = sqlite3.connect(db).execute("SELECT COUNT(*) FROM points").fetchone()[0]
            except sqlite3.OperationalError:
                count = 0
            if count >= 1:
                break
        time.sleep(0.05)
    assert process.poll() is None, (
        "the sweep finished before it could be killed: make points longer"
    )
    os.killpg(process.pid, signal.SIGKILL)  # the driver and its workers, mid-run
    process.wait()
    assert 1 <= count < 6

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    keys = [k for (k,) in sqlite3.connect(db).execute("SELECT key FROM points")]
    expected = [
        p.key
        for p in SweepSpec(
            model="tiny", ranks=(1, 2, 4), lengths=(16, 32), max_steps=400, plateau_window=1000
        ).points()
    ]
    assert sorted(keys) == sorted(expected)


def test_reference_path_sweep_gives_the_fast_paths_losses_and_is_its_own_sweep(tmp_path):
    from memlaw.sweep import run_point

    point = tiny_spec().points()[0]
    fast = run_point(tiny_spec(max_steps=8), point)
    reference = run_point(tiny_spec(max_steps=8, fast_path=False), point)
    assert fast["record"]["config"]["forward"].startswith("fast path")
    assert reference["record"]["config"]["forward"] == "reference path requested"
    assert fast["record"]["losses"] == pytest.approx(reference["record"]["losses"], rel=1e-4)
    SweepStore(tmp_path / "s.db", tiny_spec(max_steps=8)).add(fast)
    with pytest.raises(MemlawError, match="fast_path: True vs False"):
        SweepStore(tmp_path / "s.db", tiny_spec(max_steps=8, fast_path=False))
    # fast_path at its default is left out of the settings, so older databases still match
    assert "fast_path" not in tiny_spec().shared_settings()


def test_a_point_continues_from_its_checkpoint_and_the_folder_goes_with_its_row(tmp_path):
    import json

    from memlaw.sweep import CHECKPOINT_EPOCHS, run_point

    spec = tiny_spec(ranks=(2,), lengths=(32,), max_epochs=25, plateau_window=1000,
                     stop_at_certified=False, batch_size=0)  # fmt: skip
    point = spec.points()[0]
    fresh = run_point(spec, point)
    folder = tmp_path / "checkpoints"
    first = run_point(spec, point, folder)  # saves every tenth epoch, and the cap's
    state = json.loads((folder / point.key / "state.json").read_text())
    assert state["log"][-1]["epoch"] == 25 and 25 % CHECKPOINT_EPOCHS
    assert first["final_state"] is not None  # a capped point keeps its last state in its row
    resumed = run_point(spec, point, folder)  # from the cap's state: nothing left to train
    assert resumed["record"]["losses"] == first["record"]["losses"] == fresh["record"]["losses"]
    assert resumed["delta_loss"] == fresh["delta_loss"]
    # its wall time counts the first run's training, not only the resume's few seconds
    assert resumed["wall_seconds"] >= state["seconds"]
    store = SweepStore(tmp_path / "s.db", spec)
    assert store.checkpoints == tmp_path / "s.db.checkpoints"
    run_sweep(spec, store, LocalExecutor(workers=1), progress=False)
    assert not store.checkpoints.exists()  # its folder went with its row, then the empty one


def test_every_point_keeps_its_adapter_and_exports_it_as_a_peft_folder(
    tmp_path, capsys, monkeypatch
):
    """A point's row keeps its final adapter; written out, it loads with PEFT and memlaw, and
    on the point's own memory set it gives the row's final loss: it is that run's adapter."""
    import json

    from peft import PeftModel

    from memlaw.adapters import load_adapter
    from memlaw.audit import trained_to_plateau
    from memlaw.models import load_model
    from memlaw.probe import mean_target_loss, teacher_forced
    from memlaw.sweep import memory_set_for
    from tests.test_cli import memlaw

    spec = tiny_spec(ranks=(2,), lengths=(32,), max_steps=12)
    store = SweepStore(tmp_path / "s.db", spec)
    run_sweep(spec, store, LocalExecutor(workers=1), progress=False)
    (row,) = store.rows()
    assert row["has_adapter"] and "adapter" not in row  # rows stay light; the blob stays put
    out = store.export_adapter(row["key"], tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "record.json",
    ]
    record = json.loads((out / "record.json").read_text())
    assert record["model"] == "tiny" and record["sweep"]["key"] == row["key"]
    assert record["certified_share"] == row["certified_share"]
    model, tokenizer = load_model("tiny")
    encoded = memory_set_for(spec, 32, tokenizer)
    # what memlaw audit reads to tell a plateaued (at-capacity) adapter: its stop and length
    assert (record["stop_reason"], record["length"]) == (row["stop_reason"], 32)
    assert trained_to_plateau(record | {"stop_reason": "plateau"}, encoded)
    adapted = load_adapter(model, out, model_name="tiny")
    loss = mean_target_loss(teacher_forced(adapted, encoded, tokenizer.pad_token_id))
    assert loss == pytest.approx(row["final_loss"], rel=1e-5)
    assert row["final_loss"] < row["base_loss"]  # trained, so the match says something
    plain = PeftModel.from_pretrained(load_model("tiny")[0], out)
    assert plain.peft_config["default"].r == 2

    # the same from the CLI, and its refusals: one line, exit 2, nothing written
    code, printed, _ = memlaw(capsys, monkeypatch, "export-adapter", "--db", tmp_path / "s.db",
                              "--point", row["key"], "--out", tmp_path / "cli")  # fmt: skip
    assert code == 0 and (tmp_path / "cli" / "adapter_model.safetensors").is_file()
    for point, target, message in [
        ("r9-l32-n1-sft-s0", tmp_path / "x", "has no finished point 'r9-l32-n1-sft-s0'"),
        (row["key"], tmp_path / "cli", "already exists"),
    ]:
        code, _, err = memlaw(capsys, monkeypatch, "export-adapter", "--db", tmp_path / "s.db",
                              "--point", point, "--out", target)  # fmt: skip
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_a_point_from_before_sweeps_kept_adapters_says_so(tmp_path):
    """A store written before the adapter column: it gains the column, and its old rows say
    plainly that they have no adapter."""
    spec = tiny_spec(ranks=(1,), lengths=(8,), max_steps=2)
    store = SweepStore(tmp_path / "s.db", spec)
    run_sweep(spec, store, LocalExecutor(workers=1), progress=False)
    store.connection.execute("UPDATE points SET adapter = NULL")
    store.connection.commit()
    (row,) = store.rows()
    assert not row["has_adapter"]
    with pytest.raises(MemlawError, match="no stored adapter"):
        store.export_adapter(row["key"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_longer_cap_carries_the_shorter_sweep_over_and_matches_a_fresh_one(tmp_path):
    """carry_over: a point that stopped before the shorter cap is copied, a capped one
    continues from its stored last state; the result is the longer sweep run from zero."""
    from memlaw.sweep import carry_over

    grid = dict(ranks=(1, 8), lengths=(8,), methods=("sft", "memft"), plateau_window=3,
                batch_size=4, lr=0.05, plateau_on="delta_loss")  # fmt: skip
    short, long = tiny_spec(max_epochs=8, **grid), tiny_spec(max_epochs=14, **grid)
    source = SweepStore(tmp_path / "short.db", short)
    run_sweep(short, source, LocalExecutor(workers=1), progress=False)
    stops = {r["key"]: (r["stop_reason"], r["has_final_state"]) for r in source.rows()}
    assert stops["r1-l8-n1-sft-s0"] == ("budget", True)  # capped: its last state is kept
    assert stops["r8-l8-n1-sft-s0"] == ("certified", False)
    target = SweepStore(tmp_path / "long.db", long)
    assert carry_over(source, target) == {"copied": 2, "continued": 2, "from_scratch": 0}
    assert carry_over(source, target)["continued"] == 2  # again: the seeded states are kept
    run_sweep(long, target, LocalExecutor(workers=1), progress=False)
    fresh = SweepStore(tmp_path / "fresh.db", long)
    run_sweep(long, fresh, LocalExecutor(workers=1), progress=False)
    carried = {r["key"]: r for r in target.rows(with_record=True)}
    for row in fresh.rows(with_record=True):
        mine = carried[row["key"]]
        assert mine["record"]["losses"] == row["record"]["losses"], row["key"]
        assert mine["final_loss"] == row["final_loss"] and mine["epochs"] == row["epochs"]
        assert ("carried_from" in mine["record"]) == (row["stop_reason"] != "budget")
    assert carried["r1-l8-n1-memft-s0"]["epochs"] == 14  # trained past the shorter cap

    with pytest.raises(MemlawError, match="longer epoch cap"):
        carry_over(target, SweepStore(tmp_path / "other.db", tiny_spec(max_epochs=20)))


@pytest.mark.parametrize("data, carried", [("random", "continued"), ("phonebook", "from_scratch")])
def test_memft_sw_carries_its_window_but_restarts_its_curriculum(tmp_path, data, carried):
    """memft-sw runs the window on one sequence (its steps do not depend on the cap) and the
    curriculum on several items (laid out over the cap): only the window is carried over."""
    from memlaw.sweep import carry_over

    grid = dict(data=data, ranks=(1,), lengths=(24,), methods=("memft-sw",), plateau_window=50)
    short, long = tiny_spec(max_epochs=2, **grid), tiny_spec(max_epochs=4, **grid)
    source = SweepStore(tmp_path / "short.db", short)
    run_sweep(short, source, LocalExecutor(workers=1), progress=False)
    assert [r["stop_reason"] for r in source.rows()] == ["budget"]
    counts = carry_over(source, SweepStore(tmp_path / "long.db", long))
    assert counts == {"copied": 0, "continued": 0, "from_scratch": 0} | {carried: 1}


def test_extending_a_checkpoint_refuses_what_is_not_the_same_run(tmp_path):
    from dataclasses import replace

    from memlaw.adapters import LoraSpec
    from memlaw.data import encode_items, generate_phonebook
    from memlaw.models import load_model
    from memlaw.train import TrainConfig, extend_checkpoint, train

    model, tokenizer = load_model("tiny")
    encoded = encode_items(generate_phonebook(3), tokenizer)
    lora, config = LoraSpec(rank=2), TrainConfig(epochs=3, batch_size=2)
    train(model, tokenizer, encoded, lora, config, checkpoint=tmp_path / "run", final_probe=False)
    for longer, message in [
        (replace(config, epochs=6, lr=0.1), r"\['lr'\] differ"),
        (replace(config, epochs=2), "not longer"),
        (replace(config, epochs=6, seed=1), "seed"),
    ]:
        with pytest.raises(MemlawError, match=message):
            extend_checkpoint(tmp_path / "run", config, longer, lora, encoded, model)
    curriculum = replace(config, method="memft-sw")
    with pytest.raises(MemlawError, match="curriculum"):
        extend_checkpoint(
            tmp_path / "run", curriculum, replace(curriculum, epochs=6), lora, encoded, model
        )
    other = replace(config, batch_size=3)  # a config the checkpoint was not saved under
    with pytest.raises(MemlawError, match="another run"):
        extend_checkpoint(tmp_path / "run", other, replace(other, epochs=6), lora, encoded, model)
    assert (
        extend_checkpoint(tmp_path / "run", config, replace(config, epochs=6), lora, encoded, model)
        == 3
    )


def test_memlaw_sweep_carry_from_a_shorter_cap(tmp_path, capsys, monkeypatch):
    from tests.test_cli import memlaw

    grid = ["--model", "tiny", "--ranks", "1", "--lengths", "8", "--workers", "1"]
    first = tmp_path / "e2.db"
    code, _, err = memlaw(capsys, monkeypatch, "sweep", *grid, "--max-epochs", "2", "--db", first)
    assert code == 0, err
    longer = tmp_path / "e4.db"
    code, out, err = memlaw(capsys, monkeypatch, "sweep", *grid, "--max-epochs", "4",
                            "--db", longer, "--carry-from", first)  # fmt: skip
    assert code == 0, err
    assert "1 continue from their last state" in " ".join(out.split())
    (row,) = SweepStore(longer).rows(with_record=True)
    (short,) = SweepStore(first).rows(with_record=True)
    assert row["record"]["losses"][: len(short["record"]["losses"])] == short["record"]["losses"]
    for extra, message in [
        (["--max-epochs", "4", "--db", first, "--carry-from", first], "is the --carry-from input"),
        (["--max-epochs", "4", "--lr", "0.1", "--db", tmp_path / "x.db", "--carry-from", first],
         "longer epoch cap"),
    ]:  # fmt: skip
        code, _, err = memlaw(capsys, monkeypatch, "sweep", *grid, *extra)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.db").exists()  # refused before anything was written


def test_a_pinned_sweep_counts_only_the_cores_it_may_use(monkeypatch):
    # taskset -c 1 on a 2-core machine: one worker of one thread, not two threads on one core.
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1}, raising=False)
    assert usable_cpus() == 1
    assert LocalExecutor().workers == 1
    monkeypatch.delattr(os, "sched_getaffinity")  # no affinity mask (macOS): every core
    assert usable_cpus() == 2


@pytest.mark.parametrize(
    "args, settings, patience",
    [
        ([], (10, 60), 60),  # memlaw train's recipe: one sequence waits 60 epochs (updates)
        (["--anneal-patience", "10"], (10, 0), 10),  # the given epochs, as the shipped law ran
        (["--anneal-patience", "0"], (None, 0), None),  # a constant rate
    ],
)
def test_memlaw_sweep_trains_with_memlaw_trains_patience(
    tmp_path, capsys, monkeypatch, args, settings, patience
):
    from tests.test_cli import memlaw

    db = tmp_path / "sweep.db"
    grid = ["--model", "tiny", "--ranks", "1", "--lengths", "8", "--max-epochs", "2"]
    code, _, err = memlaw(capsys, monkeypatch, "sweep", *grid, *args, "--db", db)
    assert code == 0, err
    store = SweepStore(db)
    spec = store.spec()
    assert (spec.anneal_patience, spec.anneal_min_updates) == settings
    (row,) = store.rows(with_record=True)
    assert row["record"]["config"]["anneal_patience"] == patience
    store.close()


def test_resuming_an_epochs_only_sweep_under_the_recipes_patience_says_how(
    tmp_path, capsys, monkeypatch
):
    from tests.test_cli import memlaw
    from tests.test_cli_law import one_line_error

    db = tmp_path / "sweep.db"
    grid = ["--model", "tiny", "--ranks", "1", "--lengths", "8", "--max-epochs", "2", "--db", db]
    code, _, err = memlaw(capsys, monkeypatch, "sweep", *grid, "--anneal-patience", "10")
    assert code == 0, err
    err = one_line_error(capsys, monkeypatch, "sweep", *grid)
    assert "anneal_min_updates: 0 vs 60" in err and "--anneal-patience N" in err
    code, out, err = memlaw(capsys, monkeypatch, "sweep", *grid, "--anneal-patience", "10")
    assert code == 0 and "0 points run, 1 already done" in " ".join(out.split()), err


def test_sweeps_stored_before_the_update_count_keep_their_fingerprint():
    stored = tiny_spec(anneal_patience=10)  # epochs only: every sweep stored before
    assert "anneal_min_updates" not in stored.shared_settings()
    recipe = tiny_spec(anneal_patience=10, anneal_min_updates=60)
    assert recipe.shared_settings() == stored.shared_settings() | {"anneal_min_updates": 60}
    with pytest.raises(MemlawError, match="anneal_min_updates"):
        tiny_spec(anneal_min_updates=-1)


def test_memlaw_sweep_names_the_points_it_continues_from_a_checkpoint(
    tmp_path, capsys, monkeypatch
):
    from memlaw.sweep import points_in_flight, run_point
    from tests.test_cli import memlaw

    spec = tiny_spec(ranks=(2,), lengths=(32,), max_epochs=25, plateau_window=1000,
                     stop_at_certified=False, batch_size=0)  # fmt: skip
    db = tmp_path / "s.db"
    (point,) = spec.points()
    run_point(spec, point, tmp_path / "s.db.checkpoints")  # as a killed sweep leaves it
    assert points_in_flight(db, spec) == {point.key: 25}
    flags = ["--model", "tiny", "--ranks", "2", "--lengths", "32", "--max-epochs", "25",
             "--max-steps", "30", "--plateau-window", "1000", "--train-past-certified",
             "--batch-size", "0", "--anneal-patience", "0", "--db", db]  # fmt: skip
    code, out, err = memlaw(capsys, monkeypatch, "sweep", *flags)
    assert code == 0, err
    said = " ".join(out.split())
    assert f"continued here: {point.key} (epoch 25)" in said and "1 points run" in said
    assert points_in_flight(db, spec) == {}  # its folder went with its row
