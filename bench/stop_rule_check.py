"""Does the recipe's stop end runs that would still certify more items? (issue 11)

memlaw train's recipe stops a run when its *plain* loss has not improved by 1% for
``recipe.ANNEAL_PATIENCE`` epochs at the floor rate (lr/8). MemFT leaves the plain loss flat
once tokens pass its margin, so the stop may come while items still wait to cross p = 0.5
(PB1000 rank 1: memft seed 1 sat at 99/100 certified for its last 9 epochs, seed 2 at 97 for 6).

This check continues stopped sweep points from their stored adapters at the floor rate for
``--epochs`` more epochs with no plateau stop (only "certified" or the budget), logging the
certified count after every epoch. If items keep crossing, the stop is too early for that method
and the recipe's stop should also count a new best certified count as progress; if not, the
method had truly plateaued.

It is a continuation, not a replay: the optimizer's moments are not stored with a row, so AdamW
starts afresh (its first steps at the floor rate move each weight by about lr/8).

Run (from the repository root; ~4 s per epoch per point at ℓ 1000 on one thread):
    .venv/bin/python bench/stop_rule_check.py r1-l1000-n1-memft-s1 r1-l1000-n1-memft-s2
Writes bench/results/stop_rule_check.json (one entry per point, merged, written atomically).

The recipe's stop now also waits while the certified count still rises
(``memlaw.train.certified_still_rising``). It changes only the stop, never the rate, so a run
trains exactly as before up to its old stop; the rows it changes are those stopped at a
plateau while one of their last patience + 1 epochs set a new best certified count, which the
rows' stored epochs tell. ``--replay DB`` lists them; ``--drop`` also deletes them (keeping
their old results in the JSON under ``superseded``) so that the sweep that made them reruns
them under the new stop:
    .venv/bin/python bench/stop_rule_check.py --replay laws/smollm2-135m-phonebook.db
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
DEFAULT_DB = RESULTS / "memft_at_capacity-phonebook-e400.db"


def continue_point(db: Path, key: str, epochs: int) -> dict:
    """Train point ``key`` of ``db`` on from its stored adapter at the floor rate."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load

    import memlaw.train as train_module
    from memlaw.models import load_model
    from memlaw.sweep import SweepPoint, SweepStore, baseline_for, memory_set_for, point_run

    store = SweepStore(db)
    spec = store.spec()
    (row,) = store.rows(with_record=True, key=key)
    blob = store.blob(key, "adapter")
    store.close()
    if blob is None:
        raise SystemExit(f"point {key} of {db} kept no adapter: it cannot be continued")
    point = SweepPoint(row["rank"], row["length"], row["layers"], row["method"], row["seed"])
    model, tokenizer = load_model(spec.model, dtype=spec.dtype, device=spec.device)
    encoded = memory_set_for(spec, point.length, tokenizer)
    baseline = baseline_for(spec, encoded, tokenizer)
    config, lora = point_run(spec, point, model, len(encoded), baseline)
    floor = row["record"]["config"]["lr"] * config.anneal_floor  # the rate as the run resolved it
    config = replace(
        config, lr=floor, epochs=epochs, steps=None, anneal_patience=None, plateau_window=None
    )

    # train() attaches a fresh adapter; load the row's weights into it right after.
    attach = train_module.attach_lora

    def attach_stored(model, spec, seed=0):
        adapted = attach(model, spec, seed=seed)
        result = set_peft_model_state_dict(adapted, load(blob))
        if result.unexpected_keys:
            raise SystemExit(f"stored adapter of {key} does not fit: {result.unexpected_keys[:3]}")
        return adapted

    train_module.attach_lora = attach_stored
    try:
        started = time.perf_counter()
        result = train_module.train(model, tokenizer, encoded, lora, config)
    finally:
        train_module.attach_lora = attach
    record = result.record()
    per_epoch = train_module.epoch_summaries(result.log)
    items = len(encoded)
    return {
        "key": key,
        "row": {
            "certified": round(row["certified_share"] * items),
            "stop": row["stop_reason"],
            "epochs": row["epochs"],
            "final_loss": row["final_loss"],
        },
        "continued_at_lr": floor,
        "epochs_run": len(per_epoch),
        "stop_reason": record["stop_reason"],
        "certified_per_epoch": [c for _, c in per_epoch],
        "loss_per_epoch": [round(loss, 5) for loss, _ in per_epoch],
        "final_certified": round(record["certified_share"] * items),
        "items": items,
        "final_loss": record["final_loss"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def changed_rows(db: Path) -> list[dict]:
    """The plateau-stopped rows of ``db`` whose stop the certified-count rule changes."""
    from memlaw.sweep import SweepStore
    from memlaw.train import certified_still_rising

    store = SweepStore(db)
    spec_patience = store.spec().anneal_patience
    changed = []
    for row in store.rows(with_record=True):
        record = row["record"] or {}
        # the patience the point ran (per set under the recipe's update count)
        patience = record.get("config", {}).get("anneal_patience", spec_patience)
        counts = [certified for _, certified in record.get("epochs", [])]
        if patience and row["stop_reason"] == "plateau" and counts:
            if certified_still_rising(counts, patience + 1):
                changed.append(row)
    store.close()
    return changed


def drop_rows(db: Path, rows: list[dict], out: Path) -> None:
    """Record ``rows``' old results in ``out``, then delete them from ``db`` in one transaction."""
    import sqlite3

    from memlaw.atomic import atomic_write_json

    keep = ("certified_share", "exact_match", "memorized_bits", "stop_reason", "epochs")
    with _locked(out) as done:
        superseded = done.setdefault("superseded", {})
        for row in rows:
            superseded[f"{db.name}:{row['key']}"] = {name: row[name] for name in keep}
        atomic_write_json(out, done)
    connection = sqlite3.connect(db)
    with connection:
        connection.executemany("DELETE FROM points WHERE key = ?", [(r["key"],) for r in rows])
    connection.close()


@contextlib.contextmanager
def _locked(out: Path):
    """``out``'s entries under a lock, so that checks run side by side keep each other's."""
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield json.loads(out.read_text()) if out.is_file() else {}


def main() -> None:
    from memlaw.atomic import atomic_write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keys", nargs="*", help="sweep point keys, e.g. r1-l1000-n1-memft-s1")
    parser.add_argument("--replay", type=Path, help="list the rows the new stop changes")
    parser.add_argument("--drop", action="store_true", help="with --replay: delete them too")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "stop_rule_check.json")
    args = parser.parse_args()
    if args.replay:
        rows = changed_rows(args.replay)
        for row in rows:
            print(f"{row['key']}: stopped at epoch {row['epochs']} while still certifying more")
        print(f"{len(rows)} row(s) of {args.replay} change under the new stop")
        if args.drop and rows:
            drop_rows(args.replay, rows, args.out)
            print(f"deleted them; their old results are in {args.out} under 'superseded'")
        return
    torch.set_num_threads(args.threads)
    for key in args.keys:
        entry = continue_point(args.db, key, args.epochs)
        with _locked(args.out) as done:
            done[key] = entry
            atomic_write_json(args.out, done)
        print(
            f"{key}: row {entry['row']['certified']}/{entry['items']} ({entry['row']['stop']}),"
            f" continued {entry['epochs_run']} epochs at lr {entry['continued_at_lr']:.2e}:"
            f" {entry['final_certified']}/{entry['items']} ({entry['stop_reason']}),"
            f" best {max(entry['certified_per_epoch'])}"
        )


if __name__ == "__main__":
    main()
