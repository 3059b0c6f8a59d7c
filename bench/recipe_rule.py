"""Does the recipe search's learning rate carry over to other set sizes? The rule behind
``memlaw.recipe.default_recipe``'s learning rate, measured.

The recipe search (``bench/time_to_recall.py --search``) ran on one set, PB1000 (100 items,
batch 16). Its fastest robust rate there, 3e-2, did not certify within the search's cap at
batch 4 on the same set. This benchmark runs ``memlaw train``'s loop (method ``memft``, the
default batch for the set's size, anneal on plateau) at each rate on sets of other sizes, so
the rate the recipe picks for a size is one measured at that batch:

- ``phonebook:25`` is ``memlaw demo``'s set (25 generated entries, batch 5, rank 1);
- ``phonebook:50`` a generated set of 50 (batch 9);
- ``PB2000`` the 200-entry PhoneBook file (batch 16, twice PB1000's tokens, rank 4).

Each run's time is from the call (base-loss pass, LoRA, the fast path's cache, training,
confirm passes) to the certified stop, without the final probe: ``time_to_recall.search_run``,
the recipe search's own measurement. Runs are journalled (``--journal``, stamped with the
machine kind and a hash of the code, as in ``time_to_recall.py``), so an interrupted run is
resumed by the same command.

    .venv/bin/python bench/recipe_rule.py          # ~3 h on two cores (PB2000: ~20 min a run)
    .venv/bin/python bench/recipe_rule.py --sets phonebook:25@1 --seeds 0   # ~3 min
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import time_to_recall as ttr  # noqa: E402  (the search's run, journal and machine stamp)

RESULTS = Path(__file__).resolve().parent / "results"
PHONEBOOK = ttr.BENCHMARKS / "phonebook"
# set → LoRA rank: the demo's plan gives rank 1 for 25 entries; on PB2000 rank 4, which
# certified 2000 PhoneBook tokens in 109 epochs in the law's grid (rank 2 needed 201), so that
# the rate, not the rank's capacity, decides the time
DEFAULT_SETS = "phonebook:25@1,phonebook:50@1,PB2000@4"


def parse_sets(text: str) -> list[tuple[str, int]]:
    """``name@rank`` entries, comma separated.

    >>> parse_sets("phonebook:25@1,PB2000@2")
    [('phonebook:25', 1), ('PB2000', 2)]
    """
    sets = []
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, _, rank = entry.partition("@")
        if not rank.isdigit() or int(rank) < 1:
            raise SystemExit(f"--sets: '{entry}' needs a rank, e.g. PB2000@2")
        sets.append((name, int(rank)))
    return sets


def load_set(name: str, tokenizer, phonebook_dir: Path):
    """``phonebook:N`` (memlaw demo's generator, seed 0) or a PhoneBook file's stem."""
    from memlaw.data import encode_items, generate_phonebook, load_items

    if name.startswith("phonebook:"):
        return encode_items(generate_phonebook(int(name.split(":", 1)[1]), seed=0), tokenizer)
    path = phonebook_dir / f"{name}.jsonl"
    if not path.is_file():
        raise SystemExit(f"--sets: '{path}' not found (see --phonebook-dir)")
    return encode_items(load_items(str(path)), tokenizer)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sets", default=DEFAULT_SETS, help="name@rank, comma separated")
    parser.add_argument("--lrs", default="0.01,0.03")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cap", type=float, default=1800.0, help="seconds per run (0: none)")
    parser.add_argument("--phonebook-dir", type=Path, default=PHONEBOOK)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS / "recipe_rule.json")
    parser.add_argument("--journal", type=Path, help="default: <out>-runs.jsonl")
    args = parser.parse_args(argv)
    args.journal = args.journal or args.out.with_name(f"{args.out.stem}-runs.jsonl")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from memlaw.models import load_model
    from memlaw.recipe import ANNEAL_PATIENCE, default_recipe

    if args.threads:
        torch.set_num_threads(args.threads)
    sets = parse_sets(args.sets)
    lrs = [float(x) for x in args.lrs.split(",") if x]
    seeds = [int(x) for x in args.seeds.split(",") if x]
    code = hashlib.sha256((ttr.code_id() + Path(__file__).read_text()).encode()).hexdigest()[:16]
    journal = ttr.Journal(args.journal, ttr.machine_id(), code, session=time.strftime("%F %T"))
    base, tokenizer = load_model(args.model)
    base.eval()
    encoded_sets = {name: load_set(name, tokenizer, args.phonebook_dir) for name, _ in sets}
    rows = []
    # seeds outermost: every (set, lr) gets seed 0 before any gets seed 1
    for seed in seeds:
        for name, rank in sets:
            encoded = encoded_sets[name]
            batch = default_recipe(len(encoded)).batch_size
            for lr in lrs:
                key = {"set": name, "rank": rank, "batch": batch, "lr": lr, "seed": seed,
                       "cap": args.cap}  # fmt: skip
                row = journal.get("rule", key)
                if row is None:
                    row = ttr.search_run(
                        base, tokenizer, encoded, rank=rank, batch=batch, lr=lr, seed=seed,
                        cap=args.cap or None, anneal=ANNEAL_PATIENCE, max_epochs=None,
                    )  # fmt: skip
                    row = journal.put("rule", key, row | {"set": name, "items": len(encoded)})
                rows.append(row)
                print(
                    f"{name} rank {rank} batch {batch} lr {lr:g} seed {seed}: {row['stop']} "
                    f"after {row.get('epochs')} epochs, {row['seconds']:.0f} s",
                    flush=True,
                )
    result = {"machine": ttr.machine_id(), "code": code, "cap_seconds": args.cap,
              "runs": rows, "cells": cells(rows)}  # fmt: skip
    from memlaw.atomic import atomic_write_json

    atomic_write_json(args.out, result)
    print(table(result["cells"]))
    return result


def cells(rows: list[dict]) -> list[dict]:
    """Per set and rate: seeds certified, seconds and epochs (median, min–max)."""
    out = []
    for key in dict.fromkeys((r["set"], r["rank"], r["batch_size"], r["lr"]) for r in rows):
        runs = [r for r in rows if (r["set"], r["rank"], r["batch_size"], r["lr"]) == key]
        certified = [r for r in runs if r["certified"]]
        out.append(
            {
                "set": key[0], "items": runs[0]["items"], "rank": key[1], "batch": key[2],
                "lr": key[3], "seeds": len(runs), "certified": len(certified),
                "stops": sorted({r["stop"] for r in runs}),
                "seconds": ttr.spread([r["seconds"] for r in certified]),
                "epochs": ttr.spread([r.get("epochs") for r in certified]),
            }
        )  # fmt: skip
    return out


def table(rows: list[dict]) -> str:
    """The docs' markdown table.

    >>> print(table([{"set": "phonebook:25", "items": 25, "rank": 1, "batch": 5, "lr": 0.03,
    ...     "seeds": 3, "certified": 2, "stops": ["certified", "plateau"],
    ...     "seconds": {"median": 40.0, "min": 35.0, "max": 45.0},
    ...     "epochs": {"median": 60, "min": 55, "max": 70}}]))
    | set | items | rank | batch | lr | certified | s to certified, median (min–max) | epochs | other stops |
    |---|---|---|---|---|---|---|---|---|
    | phonebook:25 | 25 | 1 | 5 | 0.03 | 2/3 | 40 (35–45) | 60 (55–70) | plateau |
    """
    lines = [
        "| set | items | rank | batch | lr | certified | s to certified, median (min–max) "
        "| epochs | other stops |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in rows:
        s, e = c["seconds"], c["epochs"]
        secs = f"{s['median']:.0f} ({s['min']:.0f}–{s['max']:.0f})" if s else "–"
        eps = f"{e['median']:.0f} ({e['min']:.0f}–{e['max']:.0f})" if e else "–"
        others = ", ".join(x for x in c["stops"] if x != "certified") or "–"
        lines.append(
            f"| {c['set']} | {c['items']} | {c['rank']} | {c['batch']} | {c['lr']:g} "
            f"| {c['certified']}/{c['seeds']} | {secs} | {eps} | {others} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
