"""MemFT at capacity: fidelity and parameter efficiency where the adapter cannot hold the set.

Issue 11. MemFT's argument is about capacity: when the adapter cannot hold the whole memory set,
SFT keeps spending its updates on tokens already above p = 0.5 while MemFT spends them on the
tokens still below. So at equal rank and at plateau MemFT should certify more, and it should
need a smaller rank to certify a given set. This benchmark measures both, on memlaw's own sweep
machinery (``memlaw.sweep``), so every run lands in SQLite and a rerun resumes.

Every run uses the PhoneBook law's recipe (``make phonebook-law``, memlaw train's default): the
default model, memlaw's phonebook generator truncated to ℓ answer tokens, LoRA on the MLP of
the layer at 2/3 depth, AdamW lr 1e-2, the recipe's batch (about 6 updates per epoch), the rate
halved after ``recipe.ANNEAL_PATIENCE`` epochs without a 1% better loss down to lr/8, and a stop
at certified recall (every target token p > 0.5) or at a plateau there, with the same epoch cap
for every method. The parts, each resumable:

- **At capacity** (``--regime RANK:LENGTH``, repeatable): every method × seed at each regime,
  with the ``--epochs`` cap (400) and again with ``--long-epochs`` (700; 0 skips it), the
  longer schedule the paper gives MemFT-SW, given here to every method. The long pass starts
  from the first (``memlaw.sweep.carry_over``): runs that stopped before the first cap are
  copied, capped runs continue from their last state.
- **The mechanism**: from every SFT seed of the first regime, out of the sweep's rows (the share
  of SFT's token-steps on tokens already above p = 0.5; at the end, the share of its loss and,
  bounded, of its gradient on them); and with ``--audit``, ``memlaw.audit.audit`` on one SFT
  adapter at the first regime (``--audit-seed``): the sweep row's own adapter when it kept one,
  else that very run trained again and saved.
- **Long-Context** (``--long-context``): MemFT-SW's sliding window (``memft-sw`` on one
  sequence) against SFT on ``../shared/benchmarks/long_context/r100.jsonl`` truncated to
  ``--long-context-length`` tokens, rank 1, at both caps (one sequence is one update per epoch:
  400 updates at the first cap, where PhoneBook gets about 2,400), with the rate halved after
  60 epochs without progress (``--long-context-patience``; default memlaw train's recipe for
  one sequence, ``memlaw.recipe.anneal_patience``: the updates a PhoneBook run waits).
- **Parameter efficiency** (``--efficiency`` lengths × ``--efficiency-ranks``): per method the
  smallest rank that certifies the set on every seed; these runs share the at-capacity
  database (same settings), so a regime that is also an efficiency cell runs once.

Measured per run at its end: certified share (items with every token p > 0.5), exact match
(greedy), the share of target tokens with p > 0.5, memorized bits (ℓ · (min(L0, H) − L1) / ln 2
with H the generator's exact entropy), final loss, epochs, token-steps (supervised tokens summed
over steps) and wall seconds. Per (regime, budget, method): seeds done, mean and min–max.

Verdict, per regime and budget, for each method against SFT on certified share (and, reported
alongside, on token share and exact match): with fewer than 3 seeds done for both, "pending";
"better"/"worse" when the min–max intervals over seeds are separated, or when every seed (paired
by seed) moves the same way; "tie" when every seed is equal; otherwise "no clear difference".
A regime's recommended method is the best by mean certified share of those that beat SFT, else
SFT. Long-Context is one sequence, whose certified share is 0 or 1: it is judged on its certified
prefix instead (the leading tokens with p > 0.5, which greedy decoding from the start is sure to
reproduce), with the share of tokens above 0.5 alongside.

Databases, under ``--out-dir`` (bench/results): ``memft_at_capacity-phonebook-e<epochs>.db``
(the regimes and the efficiency grid) and ``memft_at_capacity-longcontext-e<epochs>.db``; the
audit's adapter in ``memft_at_capacity-audit-<model>-r<rank>-l<length>-e<epochs>/``. ``--reuse
DB`` copies finished points from another sweep database with the same settings (the PhoneBook
law's, ``laws/smollm2-135m-phonebook.db``, holds SFT seed 0 at ranks 1–8, ℓ 250–4000).

Run (full scale, from the repository root; hours to days, see the estimate it prints first):
    .venv/bin/python bench/memft_at_capacity.py --reuse laws/smollm2-135m-phonebook.db
    .venv/bin/python bench/memft_at_capacity.py --report-only   # tabulate what is done
Writes bench/results/memft_at_capacity.json (after every part) and memft_at_capacity.png
(certified share vs rank per method, from the efficiency runs), and prints markdown tables. They
cover every method and part the databases hold, not only this invocation's, so a side job of a
few methods never shrinks the report.

Estimated wall time at the defaults on two cores (2 workers of 1 thread, ~6 ms per answer token
per epoch per worker for smollm2-135m; a point at capacity assumed to run 0.75 of its epoch cap,
as the law sweep's ℓ 2000–4000 points ran 250–400 of 400, a point below capacity 100 epochs,
a point of the long pass only the epochs past the first cap): from nothing, about 39 h (at most
76 h), of which 4.4 h for the 700-epoch pass (before the carry-over: about 18 h); what is left
is printed first (end of 2026-12-04: about 34 h, at most 65 h).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
LONG_CONTEXT_FILE = BENCHMARKS / "long_context" / "r100.jsonl"
# One sequence is one update per epoch, so a patience of 10 epochs would be 10 updates: under it
# MemFT-SW's window, whose loss falls about 0.1% per update, was stopped as plateaued at updates
# 91–226 with 14–39% of its tokens above p = 0.5 (its rows, kept in
# memft_at_capacity-longcontext-e400-patience10.db, --long-context-patience 10). Long-Context
# gets memlaw train's recipe for one sequence (memlaw.recipe.anneal_patience: 60 epochs, the
# updates a PhoneBook run waits), named in epochs as its stored databases ran it.
NAME = "memft_at_capacity"

# Where SFT stops short: rank 1 at l 2000 ended its 400 epochs with 36% of items certified
# (laws/README.md); rank 2 at l 4000 (add --regime 2:4000) doubles the cost.
DEFAULT_REGIMES = ("1:2000",)
DEFAULT_METHODS = "sft,memft-ot,memft-sw,memft,memft-soft,sft-cap,memft-ot-all"
MIN_SEEDS = 3  # no verdict with fewer seeds
MS_PER_TOKEN_EPOCH = 6.0  # smollm2-135m, one worker of one thread, on this machine
CAPACITY_EPOCH_SHARE = 0.75  # a point at capacity runs about this share of its epoch cap
BELOW_CAPACITY_EPOCHS = 100  # ... and one below capacity certifies in about this many epochs
CAPACITY_TOKENS_PER_RANK = 1000  # PhoneBook tokens per rank beyond which a point is at capacity

METRICS = (
    "certified_share",
    "exact_match",
    "token_certified_share",
    "memorized_bits",
    "final_loss",
    "epochs",
    "token_steps",
    "wall_seconds",
    "certified_prefix",
)
VERDICT_METRICS = ("certified_share", "token_certified_share", "exact_match")


# --- options ---------------------------------------------------------------------------------


def parse_regime(text: str) -> tuple[int, int]:
    rank, sep, length = text.partition(":")
    try:
        values = int(rank), int(length)
    except ValueError:
        values = (0, 0)
    if not sep or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"--regime wants RANK:LENGTH, e.g. 1:2000, got '{text}'")
    return values


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got '{text}'"
        ) from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got '{text}'")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--regime",
        type=parse_regime,
        action="append",
        help=f"RANK:LENGTH at capacity, repeatable (default {' and '.join(DEFAULT_REGIMES)})",
    )
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--seeds", type=int_list, default=(0, 1, 2))
    parser.add_argument("--epochs", type=int, default=400, help="epoch cap of every run")
    parser.add_argument(
        "--long-epochs", type=int, default=700, help="a second pass at this cap (0: skip)"
    )
    parser.add_argument(
        "--efficiency", type=int_list, default=(1000, 2000), help="lengths ('' : skip)"
    )
    parser.add_argument("--efficiency-ranks", type=int_list, default=(1, 2, 4))
    parser.add_argument("--long-context", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--long-context-file", type=Path, default=LONG_CONTEXT_FILE)
    parser.add_argument("--long-context-length", type=int, default=512)
    parser.add_argument("--long-context-methods", default="sft,memft-sw")
    parser.add_argument(
        "--long-context-patience",
        type=int,
        help="epochs without a 1%% better loss before the rate is halved, on the one sequence "
        "(default: memlaw train's recipe for one sequence, 60)",
    )
    parser.add_argument(
        "--audit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train and audit one SFT adapter at the first regime",
    )
    parser.add_argument("--audit-seed", type=int, default=0, help="the audited SFT run's seed")
    parser.add_argument(
        "--audit-resume-from",
        type=Path,
        default=None,
        help="a checkpoint of the same SFT point (the sweep's, kept before it finished) to resume",
    )
    parser.add_argument(
        "--extend-from",
        type=Path,
        default=None,
        help="kept checkpoints (<DIR>/<point key>/) of the first budget's capped points whose rows "
        "predate stored final states: the long budget continues them instead of starting again",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (own databases)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--reuse",
        type=Path,
        action="append",
        default=[],
        help="copy finished points from this sweep database when its settings are the same",
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true", help="tabulate, run nothing")
    args = parser.parse_args(argv)
    args.regime = args.regime or [parse_regime(r) for r in DEFAULT_REGIMES]
    args.methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    args.long_context_methods = tuple(
        m.strip() for m in args.long_context_methods.split(",") if m.strip()
    )
    if not args.seeds or not args.methods:
        parser.error("--seeds and --methods need at least one value")
    if "sft" not in args.methods:
        parser.error("--methods must include sft: every verdict is against it")
    if args.epochs <= 0 or args.long_epochs < 0 or args.workers <= 0:
        parser.error("--epochs and --workers must be positive, --long-epochs 0 or more")
    if args.long_epochs and args.long_epochs <= args.epochs:
        parser.error(f"--long-epochs must exceed --epochs ({args.epochs}), or be 0 to skip it")
    if args.efficiency and not args.efficiency_ranks:
        parser.error("--efficiency needs --efficiency-ranks")
    source = args.audit_resume_from
    if source is not None and not (source / "state.json").is_file():
        parser.error(f"--audit-resume-from {source}: no checkpoint there (no state.json)")
    return args


# --- the plan: which sweeps, into which databases ---------------------------------------------


def make_spec(
    args, *, ranks, lengths, methods, epochs: int, data: str = "phonebook", patience: int = 0
):
    """The PhoneBook law's settings (make phonebook-law) with this grid and epoch cap;
    ``patience`` (epochs) replaces the recipe's annealing patience when given."""
    from memlaw.recipe import ANNEAL_PATIENCE
    from memlaw.sweep import SweepSpec

    return SweepSpec(
        model=args.model,
        data=data,
        ranks=tuple(ranks),
        lengths=tuple(lengths),
        layer_counts=(1,),
        methods=tuple(methods),
        seeds=tuple(args.seeds),
        modules="mlp",
        lr=0.01,
        max_steps=600,  # memlaw sweep's default; max_epochs replaces it
        max_epochs=epochs,
        plateau_window=20,
        plateau_tolerance=0.01,
        batch_size=None,  # the recipe's
        stop_at_certified=True,
        plateau_on="information",
        anneal_patience=patience or ANNEAL_PATIENCE,
        device=args.device,
        dtype=args.dtype,
    )


def db_path(args, part: str, epochs: int) -> Path:
    device = "" if args.device == "cpu" else "-" + args.device.replace(":", "")
    return args.out_dir / f"{NAME}-{part}-e{epochs}{device}.db"


def long_context_data(args) -> str:
    """The data file as the sweep stores it: relative to the working directory (run from the
    repository root), so that the database's settings do not depend on where the clone is."""
    return os.path.relpath(args.long_context_file, Path.cwd())


def plan(args) -> list[dict]:
    """Every sweep to run, in the order they run: at capacity (the main budget), Long-Context
    (both budgets: it is short), efficiency, the long budget (the audit runs after the first).
    Each job: its phase, label, database, part, spec, and whether its points sit at capacity
    (for the estimate)."""
    jobs = []

    def add(phase, label, part, epochs, capacity, **grid):
        spec = make_spec(args, epochs=epochs, **grid)
        jobs.append(
            {
                "phase": phase,
                "label": label,
                "db": db_path(args, part, epochs),
                "part": part,
                "spec": spec,
                "capacity": capacity,
            }
        )

    def cell(phase: str, label: str, epochs: int, capacity: bool | None, rank: int, length: int):
        """One PhoneBook cell: every method and seed at this rank and length."""
        grid = {"ranks": (rank,), "lengths": (length,), "methods": args.methods}
        add(phase, label, "phonebook", epochs, capacity, **grid)

    for rank, length in args.regime:
        label = f"rank {rank}, ℓ {length}, {args.epochs} epochs"
        cell("capacity", label, args.epochs, True, rank, length)
    long_context = {
        "ranks": (1,),
        "lengths": (args.long_context_length,),
        "methods": args.long_context_methods,
        "data": long_context_data(args),
        "patience": (
            one_sequence_patience()
            if args.long_context_patience is None
            else args.long_context_patience
        ),
    }
    if args.long_context:
        label = f"Long-Context {args.long_context_file.name}, ℓ {args.long_context_length}"
        add("long-context", label, "longcontext", args.epochs, True, **long_context)
        if args.long_epochs:  # one sequence is one update per epoch: far from plateau at 400
            label += f", {args.long_epochs} epochs"
            add("long", label, "longcontext", args.long_epochs, True, **long_context)
    # The smallest certifying rank is searched upwards: a rank runs only for the methods that
    # did not certify the set on every seed at every smaller rank (search_methods).
    for length in args.efficiency:
        for rank in sorted(args.efficiency_ranks):
            label = f"parameter efficiency, ℓ {length}, rank {rank}"
            cell("efficiency", label, args.epochs, None, rank, length)
    if args.long_epochs:
        for rank, length in args.regime:
            label = f"rank {rank}, ℓ {length}, {args.long_epochs} epochs"
            cell("long", label, args.long_epochs, True, rank, length)
    return jobs


def finished_keys(db: Path) -> set[str]:
    from memlaw.sweep import SweepStore

    if not db.is_file():
        return set()
    store = SweepStore(db)
    try:
        return store.finished_keys()
    finally:
        store.close()


def one_sequence_patience() -> int:
    """memlaw train's patience for one sequence (one update per epoch), in epochs."""
    from memlaw.recipe import anneal_patience

    return anneal_patience(1)


def checkpointed_epochs(db: Path, key: str) -> int:
    """The epochs a point in flight has behind it: its checkpoint's
    (``<db>.checkpoints/<key>/``, every ``memlaw.sweep.CHECKPOINT_EPOCHS`` epochs), else 0."""
    from memlaw.checkpoint import saved_epochs
    from memlaw.sweep import checkpoints_folder

    return saved_epochs(checkpoints_folder(db) / key)


def likely_epochs(point, cap: int, capacity: bool | None) -> float:
    """A rough guess of a point's epochs, for the estimate: at capacity, most of the cap (the
    law sweep's ℓ 2000–4000 points ran 250–400 of 400 epochs); below it, ~100 epochs."""
    if capacity is None:  # an efficiency cell: at capacity when ℓ per rank is large
        capacity = point.length / point.rank >= CAPACITY_TOKENS_PER_RANK
    return cap * CAPACITY_EPOCH_SHARE if capacity else min(cap, BELOW_CAPACITY_EPOCHS)


def carried_epochs(args, point, first: dict[str, dict], part: str) -> int | None:
    """What the long budget takes over from the first one for ``point`` (carry_long_budget):
    None when its row is copied (it stopped before the first cap), the first cap's epochs when
    it continues from a last state (a point still to run in the first budget will keep one),
    else 0: a curriculum starts afresh (``memft-sw`` runs one on PhoneBook's many items, its
    window on Long-Context's one sequence). At most: as if every point ran on to the longer
    cap."""
    from memlaw.objectives import Settings, resolve

    sequences = 1 if part == "longcontext" else 2  # PhoneBook: many items
    if resolve(point.method, Settings(), sequences=sequences)[0].curriculum:
        return 0
    row = first.get(point.key)
    if row is None:
        return args.epochs
    if not row["hit_cap"]:
        return None
    kept = args.extend_from is not None and (args.extend_from / point.key / "state.json").is_file()
    return row["epochs"] if row["has_final_state"] or kept else 0


def estimate(args, jobs: list[dict]) -> dict:
    """Wall time of what is left: ~6 ms per answer token per epoch per worker, the points
    spread over the workers, a point in flight less the epochs its checkpoint holds, an
    efficiency cell without the methods already certified at a smaller rank; the audit's one
    run on its own."""
    likely, at_most, points = {}, {}, 0
    in_flight: dict[str, int] = {}
    planned: dict[Path, set[str]] = {}
    first = {
        part: {r["key"]: r for r in load_rows(db_path(args, part, args.epochs))}
        for part in ("phonebook", "longcontext")
    }
    for job in jobs:
        done = planned.setdefault(job["db"], finished_keys(job["db"]))
        for source in same_settings_sources(job["spec"], args.reuse, job["db"]):
            done |= finished_keys(source)  # copied, not run
        cap = job["spec"].max_epochs
        # an efficiency cell runs only the methods its search has not decided (search_methods)
        methods = search_methods(args, job) if job["phase"] == "efficiency" else None
        for point in job["spec"].points():
            if point.key in done or (methods is not None and point.method not in methods):
                continue
            done.add(point.key)  # a cell shared by two jobs runs once
            head_start = (
                carried_epochs(args, point, first[job["part"]], job["part"])
                if job["phase"] == "long"
                else 0
            )
            if head_start is None:  # copied from the first budget: nothing to run
                continue
            # a point in flight continues from its checkpoint
            saved = checkpointed_epochs(job["db"], point.key)
            if saved:
                in_flight[f"{job['db'].stem}/{point.key}"] = saved
            head_start = max(head_start, saved)
            points += 1
            seconds = MS_PER_TOKEN_EPOCH / 1000 * point.length / args.workers
            epochs = max(likely_epochs(point, cap, job["capacity"]), head_start) - head_start
            likely[job["label"]] = likely.get(job["label"], 0.0) + seconds * epochs
            at_most[job["label"]] = at_most.get(job["label"], 0.0) + seconds * (cap - head_start)
    if args.audit and not (audit_dir(args) / "audit.json").is_file():
        rank, length = args.regime[0]
        seconds = MS_PER_TOKEN_EPOCH / 1000 * length
        likely["audit (one SFT run)"] = seconds * args.epochs * CAPACITY_EPOCH_SHARE
        at_most["audit (one SFT run)"] = seconds * args.epochs
    return {
        "points_to_run": points,
        "in_flight_epochs": in_flight,
        "ms_per_token_epoch_per_worker": MS_PER_TOKEN_EPOCH,
        "workers": args.workers,
        "likely_hours": {k: round(v / 3600, 2) for k, v in likely.items()},
        "at_most_hours": {k: round(v / 3600, 2) for k, v in at_most.items()},
        "likely_total_hours": round(sum(likely.values()) / 3600, 1),
        "at_most_total_hours": round(sum(at_most.values()) / 3600, 1),
        "assumes": (
            f"{MS_PER_TOKEN_EPOCH:g} ms per answer token per epoch per worker (smollm2-135m, one "
            f"thread); a point at capacity runs {CAPACITY_EPOCH_SHARE:g} of its epoch cap, one "
            f"below capacity (ℓ / rank < {CAPACITY_TOKENS_PER_RANK}) {BELOW_CAPACITY_EPOCHS} "
            "epochs; at most: every point to its cap"
        ),
    }


def print_estimate(est: dict) -> None:
    print(
        f"estimated wall time: about {est['likely_total_hours']:g} h "
        f"(at most {est['at_most_total_hours']:g} h) for {est['points_to_run']} points still "
        f"to run on {est['workers']} worker(s)",
        flush=True,
    )
    for label, hours in est["likely_hours"].items():
        print(f"  {label}: ~{hours:g} h (at most {est['at_most_hours'][label]:g} h)", flush=True)
    for point, epochs in est.get("in_flight_epochs", {}).items():
        print(f"  in flight: {point} at epoch {epochs}", flush=True)


# --- running --------------------------------------------------------------------------------


def same_settings_sources(spec, sources: list[Path], db: Path | None = None) -> list[Path]:
    """The sweep databases among ``sources`` run with ``spec``'s settings (not ``db`` itself)."""
    from memlaw.sweep import SweepStore

    settings = json.dumps(spec.shared_settings(), sort_keys=True)
    matching = []
    for source in sources:
        if not source.is_file() or (db is not None and db.exists() and source.samefile(db)):
            continue
        other = SweepStore(source)
        try:
            if json.dumps(other.spec().shared_settings(), sort_keys=True) == settings:
                matching.append(source)
        finally:
            other.close()
    return matching


def reuse_points(spec, db: Path, sources: list[Path]) -> int:
    """Copy finished points of ``spec`` from other sweep databases run with the same settings
    (e.g. the PhoneBook law's); returns how many were copied."""
    from memlaw.sweep import SweepStore

    matching = same_settings_sources(spec, sources, db)
    if not matching:
        return 0
    copied = 0
    target = SweepStore(db, spec)
    try:
        for source in matching:
            missing = {p.key for p in spec.points()} - target.finished_keys()
            other = SweepStore(source)
            try:
                for row in other.rows(with_record=True):
                    if row["key"] in missing:
                        row["record"] = {**row["record"], "reused_from": str(source)}
                        target.add(row)
                        copied += 1
            finally:
                other.close()
    finally:
        target.close()
    return copied


def carry_long_budget(args, spec, db: Path, part: str) -> int:
    """The long budget starts from the first one (``memlaw.sweep.carry_over``): a run that
    stopped before the first cap is the same run under the longer one (copied), and a capped
    run continues from its last state (the row's, else ``--extend-from``'s kept copy) instead of
    training its first epochs again. Returns how many points were copied."""
    from memlaw.sweep import carry_into

    first = db_path(args, part, args.epochs)
    if not first.is_file():
        return 0
    counts = carry_into(db, spec, first, kept=args.extend_from)
    print(
        f"from the {args.epochs}-epoch budget: {counts['copied']} points copied (stopped before "
        f"its cap), {counts['continued']} continued from their last state, "
        f"{counts['from_scratch']} from the start",
        flush=True,
    )
    return counts["copied"]


def search_methods(args, job: dict) -> tuple[str, ...]:
    """The methods an efficiency job still has to run: those that have not certified its
    length on every seed at a smaller rank (the rows in its database say)."""
    spec, db = job["spec"], job["db"]
    (rank,), (length,) = spec.ranks, spec.lengths
    rows = load_rows(db) if db.is_file() else []
    seeds = set(args.seeds)

    def certified_below(method: str) -> bool:
        for smaller in (r for r in args.efficiency_ranks if r < rank):
            cell = [
                row
                for row in rows
                if (row["rank"], row["length"], row["method"]) == (smaller, length, method)
                and row["seed"] in seeds
            ]
            if {row["seed"] for row in cell} == seeds and all(
                row["certified_share"] == 1.0 for row in cell
            ):
                return True
        return False

    return tuple(m for m in spec.methods if not certified_below(m))


def run_job(args, job: dict) -> dict:
    from dataclasses import replace

    from memlaw.sweep import LocalExecutor, check_device, check_sweep_fits, sweep_into

    spec, db = job["spec"], job["db"]
    if job["phase"] == "efficiency":
        methods = search_methods(args, job)
        if not methods:
            print(f"\n## {job['label']}: every method certified at a smaller rank, skipped")
            return {"total": 0, "skipped": 0, "done": 0}
        spec = replace(spec, methods=methods)
    copied = reuse_points(spec, db, args.reuse) if args.reuse else 0
    if job["phase"] == "long":
        copied += carry_long_budget(args, spec, db, job["part"])
    if {p.key for p in spec.points()} - finished_keys(db):  # something left to run
        check_device(spec.device)
        check_sweep_fits(spec, memory_on=spec.device)
    print(f"\n## {job['label']} → {db}" + (f" ({copied} points reused)" if copied else ""))
    store, summary = sweep_into(
        db, spec, LocalExecutor(workers=args.workers), progress=sys.stderr.isatty()
    )
    store.close()
    print(
        f"{summary['done']} points run, {summary['skipped']} already done "
        f"({summary.get('seconds', 0):.0f} s)",
        flush=True,
    )
    return summary


def audit_dir(args) -> Path:
    rank, length = args.regime[0]
    model = "".join(c if c.isalnum() or c in "-." else "_" for c in args.model)
    device = "" if args.device == "cpu" else "-" + args.device.replace(":", "")
    seed = f"-s{args.audit_seed}" if args.audit_seed else ""
    return args.out_dir / f"{NAME}-audit-{model}-r{rank}-l{length}-e{args.epochs}{seed}{device}"


def run_audit(args) -> dict:
    """SFT at the first regime (seed ``--audit-seed``, the sweep point's exact run), its adapter
    saved, and memlaw's budget audit on it; skipped when its audit.json exists (an adapter
    without one is audited). The run checkpoints beside the adapter, so a killed audit resumes;
    ``--audit-resume-from`` seeds that checkpoint with the at-capacity sweep's own checkpoint of
    the same point (the same run: its fingerprint is checked), so the audit need not train SFT
    at capacity a second time. Cheaper still: when the at-capacity database kept that point's
    adapter (sweeps keep every point's final adapter), the audit takes it and trains nothing."""
    import shutil

    from memlaw.adapters import load_adapter
    from memlaw.atomic import atomic_copy_dir, atomic_write_json, remove_stale_staging
    from memlaw.audit import audit, trained_to_plateau
    from memlaw.models import load_model
    from memlaw.sweep import SweepPoint, SweepStore, baseline_for, memory_set_for, point_run
    from memlaw.train import save_run, train

    folder = audit_dir(args)
    if (folder / "audit.json").is_file():
        return json.loads((folder / "audit.json").read_text())
    rank, length = args.regime[0]
    seed = args.audit_seed
    spec = make_spec(args, ranks=(rank,), lengths=(length,), methods=("sft",), epochs=args.epochs)
    print(f"\n## audit: SFT at rank {rank}, ℓ {length}, seed {seed} → {folder}", flush=True)
    started = time.perf_counter()
    model, tokenizer = load_model(spec.model, dtype=spec.dtype, device=spec.device)
    encoded = memory_set_for(spec, length, tokenizer)
    remove_stale_staging(folder)
    resumed_from = None
    point = SweepPoint(rank=rank, length=length, layers=1, method="sft", seed=seed)
    db = db_path(args, "phonebook", args.epochs)
    explicit = args.audit_resume_from is not None  # an explicit checkpoint to continue wins
    if not (folder / "adapter_config.json").is_file() and db.is_file() and not explicit:
        store = SweepStore(db)
        try:
            if any(r["has_adapter"] for r in store.rows(key=point.key)):
                store.export_adapter(point.key, folder, overwrite=True)
                resumed_from = f"{db}#{point.key}"  # the sweep's own adapter: nothing trained
        finally:
            store.close()
    if (folder / "adapter_config.json").is_file():
        target = load_adapter(model, folder, model_name=spec.model)
        trained_now = False
    else:
        baseline = baseline_for(spec, encoded, tokenizer)
        config, lora = point_run(spec, point, model, len(encoded), baseline)
        checkpoint = folder.with_name(folder.name + ".checkpoint")
        source = args.audit_resume_from
        if source is not None:  # (a killed audit continues its own copy of it)
            if not (checkpoint / "state.json").is_file():  # whole or not at all
                atomic_copy_dir(source, checkpoint)
            resumed_from = str(source)
        result = train(model, tokenizer, encoded, lora, config, checkpoint=checkpoint)
        extra = {"model": spec.model, "data": f"{spec.data} generator, ℓ {length}"}
        save_run(result, folder, overwrite=True, extra=extra)
        shutil.rmtree(checkpoint, ignore_errors=True)
        target, trained_now = result.model, True
    record = json.loads((folder / "record.json").read_text())  # written above: it must be there
    report = audit(target, tokenizer, encoded, plateaued=trained_to_plateau(record, encoded))
    payload = {
        "rank": rank,
        "length": length,
        "method": "sft",
        "seed": seed,
        "epoch_cap": args.epochs,
        "adapter": str(folder),
        "audit": report.to_dict(),
        "training": training_budget(record),
        "seconds": time.perf_counter() - started,
        "trained_now": trained_now,
        "resumed_from": resumed_from,
    }
    atomic_write_json(folder / "audit.json", payload)
    return payload


def above_share_from_counters(record: dict) -> float | None:
    """SFT's share of token-steps on tokens already above p = 0.5 over a whole run, from a
    sweep record's counters: SFT trains every supervised token, and counts those below the
    boundary as active (None where the record predates the counters)."""
    total, active = record.get("token_steps"), record.get("active_token_steps")
    return 1 - active / total if total else None


BUDGET_FIELDS = (
    "stop_reason",
    "steps",
    "final_loss",
    "certified_share",
    "exact_match",
    "token_certified_share",
    "train_seconds",
)


def training_budget(record: dict) -> dict:
    """From an SFT run's log: the share of supervised token-steps already above p = 0.5 while
    it trained (SFT's budget spent on memorized tokens), overall, per epoch and at the end."""
    log = record.get("log") or []
    if not log and record.get("token_steps"):  # a sweep's adapter: its run's counters only
        return {
            **{name: record.get(name) for name in BUDGET_FIELDS},
            "epochs": record.get("epochs"),
            "token_steps": int(record["token_steps"]),
            "above_share_over_training": above_share_from_counters(record),
            "above_share_last_epoch": None,
            "above_share_per_epoch": [],
        }
    per_epoch: dict[int, list[float]] = {}
    for entry in log:
        weight = max(entry.get("tokens", 0), 1)
        total = per_epoch.setdefault(entry["epoch"], [0.0, 0.0])
        total[0] += entry["above_share"] * weight
        total[1] += weight
    curve = [round(a / w, 4) for a, w in per_epoch.values()]
    tokens = sum(w for _, w in per_epoch.values())
    return {
        **{name: record.get(name) for name in BUDGET_FIELDS},
        "epochs": len(per_epoch),
        "token_steps": int(tokens),
        "above_share_over_training": (
            sum(a for a, _ in per_epoch.values()) / tokens if tokens else None
        ),
        "above_share_last_epoch": curve[-1] if curve else None,
        "above_share_per_epoch": curve,
    }


def sweep_mechanism(rows: list[dict], *, rank: int, length: int, epochs: int) -> dict | None:
    """The mechanism from the at-capacity sweep's own SFT runs, every seed, no model needed:
    the share of SFT's token-steps that went to tokens already above p = 0.5 over the whole
    run (from the run's counters: SFT trains every token, and counts those below the boundary),
    and at its end the share of tokens above, of SFT's loss on them (exact) and of its gradient
    (bounds), from the stored per-token probabilities (``memlaw.audit.budget_from_probabilities``)."""
    from memlaw.audit import budget_from_probabilities

    seeds = []
    for row in rows:
        record = row.get("record") or {}
        if (row["method"], row["rank"], row["length"], row["layers"]) != ("sft", rank, length, 1):
            continue
        if not record.get("probabilities"):
            continue
        end = budget_from_probabilities(record["probabilities"])
        seeds.append(
            {
                "seed": row["seed"],
                "epochs": row["epochs"],
                "stop_reason": row["stop_reason"],
                "token_steps_above_over_training": above_share_from_counters(record),
                **{f"end_{name}": value for name, value in end._asdict().items()},
            }
        )
    if not seeds:
        return None
    names = [k for k in seeds[0] if k not in ("seed", "epochs", "stop_reason", "end_tokens")]
    return {
        "rank": rank,
        "length": length,
        "epoch_cap": epochs,
        "seeds": sorted(seeds, key=lambda s: s["seed"]),
        **{name: spread([s[name] for s in seeds]) for name in names},
    }


# --- reading the databases --------------------------------------------------------------------


def load_rows(db: Path) -> list[dict]:
    from memlaw.sweep import SweepStore

    if not db.is_file():
        return []
    store = SweepStore(db)
    try:
        return store.rows(with_record=True)
    finally:
        store.close()


def worker_seconds(by_cap: list[list[dict]]) -> float:
    """Worker seconds of one part's databases (``by_cap``: their rows, shortest cap first), each
    run counted once. A row the longer cap copied (``carried_from``) is the shorter row's run;
    a row continued from the shorter row's checkpoint (no curriculum) carried that run's clock
    on, so it counts what it added, unless its clock is below the shorter row's (it ran
    afresh: no state was kept).

    >>> short = [{"key": "a", "wall_seconds": 400.0}, {"key": "b", "wall_seconds": 300.0}]
    >>> long = [
    ...     {"key": "a", "wall_seconds": 700.0, "method": "sft"},
    ...     {"key": "b", "wall_seconds": 300.0, "method": "sft",
    ...      "record": {"carried_from": {"max_epochs": 400}}},
    ... ]
    >>> worker_seconds([short, long])
    1000.0
    """
    from memlaw.sweep import point_seconds, ran_curriculum

    total, shorter_clock = 0.0, {}
    for rows in by_cap:
        clock = {row["key"]: point_seconds(row) for row in rows}
        for row in rows:
            if "carried_from" in (row.get("record") or {}):
                continue
            seconds, shorter = clock[row["key"]], shorter_clock.get(row["key"])
            if shorter is not None and not ran_curriculum(row) and seconds >= shorter:
                seconds -= shorter
            total += seconds
        shorter_clock = clock
    return total


def token_steps(row: dict) -> tuple[float | None, bool]:
    """The row's token-steps, and whether it is estimated: points run before the sweep recorded
    them (or reused from an older database) get epochs × ℓ, exact within one epoch for every
    method but the curriculum (which trains a growing share of the items: left None)."""
    from memlaw.objectives import OBJECTIVES

    record = row.get("record") or {}
    if record.get("token_steps") is not None:
        return float(record["token_steps"]), False
    method = (record.get("config") or {}).get("method", row.get("method"))
    objective = OBJECTIVES.get(method)
    if objective is None or objective.curriculum or row.get("epochs") is None:
        return None, False
    return float(row["epochs"] * row["length"]), True  # every item once per epoch


def certified_prefix(probabilities: list[float]) -> int:
    """How many leading target tokens of one sequence have p > 0.5: greedy decoding from the
    start reproduces at least these (Long-Context's recall, where exact match is all or none).

    >>> certified_prefix([0.9, 0.6, 0.4, 0.99])
    2
    """
    return next((i for i, p in enumerate(probabilities) if p <= 0.5), len(probabilities))


def value(row: dict, metric: str):
    if metric == "token_steps":
        return token_steps(row)[0]
    if metric == "wall_seconds":  # every segment of a resumed point
        from memlaw.sweep import point_seconds

        return point_seconds(row)
    return row.get(metric)


def spread(values: list) -> dict | None:
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def summarize(rows: list[dict]) -> dict:
    return {
        "seeds_done": len(rows),
        "seeds": sorted(r["seed"] for r in rows),
        **{metric: spread([value(r, metric) for r in rows]) for metric in METRICS},
        "token_steps_estimated": any(token_steps(r)[1] for r in rows),
        "stop_reasons": dict(Counter(r.get("stop_reason") for r in rows)),
        "hit_cap": sum(bool(r.get("hit_cap")) for r in rows),
        "trainable_params": rows[0].get("trainable_params") if rows else None,
    }


def verdict(method_rows: list[dict], sft_rows: list[dict], metric: str) -> dict:
    """The rule: ≥ MIN_SEEDS seeds each; intervals (min–max over seeds) separated, or every
    seed (paired) in the same direction."""
    mine = {r["seed"]: r[metric] for r in method_rows if r.get(metric) is not None}
    sft = {r["seed"]: r[metric] for r in sft_rows if r.get(metric) is not None}
    paired = sorted(set(mine) & set(sft))
    result = {"metric": metric, "seeds": len(paired)}
    if len(paired) < MIN_SEEDS or len(mine) < MIN_SEEDS or len(sft) < MIN_SEEDS:
        return result | {"verdict": "pending", "beats_sft": None}
    differences = [mine[s] - sft[s] for s in paired]
    result["mean_difference"] = statistics.fmean(differences)
    if min(mine.values()) > max(sft.values()):
        text = "better (intervals separated)"
    elif max(mine.values()) < min(sft.values()):
        text = "worse (intervals separated)"
    elif all(d == 0 for d in differences):
        text = "tie"
    elif all(d > 0 for d in differences):
        text = f"better (all {len(paired)} seeds)"
    elif all(d < 0 for d in differences):
        text = f"worse (all {len(paired)} seeds)"
    else:
        text = "no clear difference"
    return result | {"verdict": text, "beats_sft": text.startswith("better")}


METRIC_NAMES = {
    "certified_share": "certified share",
    "token_certified_share": "tokens p > 0.5",
    "exact_match": "exact match",
    "certified_prefix": "certified prefix",
}


def regime_summary(
    rows,
    *,
    rank,
    length,
    methods,
    seeds,
    epochs,
    db,
    label,
    primary: str = "certified_share",
    metrics: tuple[str, ...] = VERDICT_METRICS,
) -> dict:
    """One regime's table: per method the seeds' summary and the verdicts against SFT, and the
    recommended method by the ``primary`` metric (on one sequence, certified share is 0 or 1:
    Long-Context judges on its certified prefix, the part greedy recall is sure to give)."""
    cells = {
        method: [
            r
            for r in rows
            if r["rank"] == rank
            and r["length"] == length
            and r["method"] == method
            and r["layers"] == 1
            and r["seed"] in seeds
        ]
        for method in methods
    }
    verdicts = {
        method: {m: verdict(cells[method], cells.get("sft", []), m) for m in metrics}
        for method in methods
        if method != "sft"
    }
    on = {m: v[primary] for m, v in verdicts.items()}
    winners = [m for m, v in on.items() if v["beats_sft"]]
    summaries = {method: summarize(cells[method]) for method in methods}
    name = METRIC_NAMES[primary]
    if winners:
        best = max(winners, key=lambda m: summaries[m][primary]["mean"])
        recommended = {"method": best, "why": f"beats SFT on {name}"}
    elif on and all(v["verdict"] != "pending" for v in on.values()):
        recommended = {"method": "sft", "why": f"no MemFT variant beats SFT on {name}"}
    else:
        recommended = {"method": None, "why": f"pending: fewer than {MIN_SEEDS} seeds"}
    # a method ahead of SFT on another metric is a trade-off the reader must see, not a
    # recommendation: e.g. more items exactly right under greedy decoding, fewer certified
    ahead_elsewhere = [
        {"method": method, "metric": metric, "verdict": v["verdict"]}
        for method, by_metric in verdicts.items()
        for metric, v in by_metric.items()
        if metric != primary and v["beats_sft"]
    ]
    return {
        "label": label,
        "regime": f"{rank}:{length}",
        "rank": rank,
        "length": length,
        "epoch_cap": epochs,
        "db": str(db),
        "methods": summaries,
        "verdicts": verdicts,
        "primary": primary,
        "recommended": recommended,
        "ahead_of_sft_elsewhere": ahead_elsewhere,
    }


def efficiency_summary(rows, args) -> dict:
    """Per length and method: the smallest rank whose every seed certified the whole set."""
    seeds = set(args.seeds)
    cells, smallest = [], {}
    for length in args.efficiency:
        smallest[str(length)] = {}
        for method in args.methods:
            found, pending = None, False
            for rank in sorted(args.efficiency_ranks):
                cell = [
                    r
                    for r in rows
                    if (r["rank"], r["length"], r["method"], r["layers"])
                    == (rank, length, method, 1)
                    and r["seed"] in seeds
                ]
                cells.append({"length": length, "rank": rank, "method": method} | summarize(cell))
                if found is not None:
                    continue
                if {r["seed"] for r in cell} != seeds:
                    pending = True
                elif all(r["certified_share"] == 1.0 for r in cell):
                    found = rank
            if found is not None:
                status = "measured" if not pending else "at most (a smaller rank is pending)"
            else:
                status = "pending" if pending else "none of the ranks"
            smallest[str(length)][method] = {"rank": found, "status": status}
    return {
        "lengths": list(args.efficiency),
        "ranks": list(args.efficiency_ranks),
        "seeds": list(args.seeds),
        "smallest_certifying_rank": smallest,
        "cells": cells,
    }


def report_scope(args, rows_of) -> argparse.Namespace:
    """What the report tabulates: this invocation's methods and parts, widened to what the
    databases already hold, so that a run of a few methods (a side job beside the main one)
    rewrites the JSON and the figure without dropping the other methods' rows.

    In the PhoneBook database a (rank, ℓ) cell that is not a ``--regime`` is an efficiency cell;
    a long-budget database left by an earlier run is tabulated even under ``--long-epochs 0``,
    and the Long-Context database even under ``--no-long-context``."""

    def ordered(*groups) -> tuple[str, ...]:
        seen = dict.fromkeys(m for group in groups for m in group)  # first mention first
        return tuple(seen)

    first = [r for r in rows_of(db_path(args, "phonebook", args.epochs)) if r["layers"] == 1]
    longer = []
    for part in ("phonebook", "longcontext"):
        head, tail = db_path(args, part, 0).name.split("-e0")
        longer += [
            int(budget)
            for path in args.out_dir.glob(f"{head}-e*{tail}")
            if (budget := path.name[len(head) + 2 : len(path.name) - len(tail)]).isdigit()
            and int(budget) > args.epochs
        ]
    long_epochs = args.long_epochs or max(longer, default=0)
    rows = first + (
        [r for r in rows_of(db_path(args, "phonebook", long_epochs)) if r["layers"] == 1]
        if long_epochs
        else []
    )
    stored = {r["method"] for r in rows}
    regimes = set(args.regime)
    efficiency = set(args.efficiency) | {
        r["length"] for r in first if (r["rank"], r["length"]) not in regimes
    }
    long_context_dbs = [db_path(args, "longcontext", e) for e in (args.epochs, long_epochs) if e]
    long_context = args.long_context or any(db.is_file() for db in long_context_dbs)
    long_context_rows = [
        r for db in long_context_dbs for r in rows_of(db) if r["length"] == args.long_context_length
    ]
    return argparse.Namespace(
        **vars(args)
        | {
            "methods": ordered(
                args.methods,
                [m for m in DEFAULT_METHODS.split(",") if m in stored],
                sorted(stored),
            ),
            "long_epochs": long_epochs,
            "efficiency": tuple(sorted(efficiency)),
            "long_context": long_context,
            "long_context_methods": ordered(
                args.long_context_methods, [r["method"] for r in long_context_rows]
            ),
        }
    )


def build_report(args, started: float, estimate_now: dict, runs: list[dict]) -> dict:
    from functools import cache

    from memlaw.sweep import fingerprint

    rows_of = cache(load_rows)  # each database read once, however many tables use it
    invocation = vars(args)
    args = report_scope(args, rows_of)

    budgets = [args.epochs] + ([args.long_epochs] if args.long_epochs else [])
    regimes = []
    for epochs in budgets:
        db = db_path(args, "phonebook", epochs)
        rows = rows_of(db)
        for rank, length in args.regime:
            regimes.append(
                regime_summary(
                    rows,
                    rank=rank,
                    length=length,
                    methods=args.methods,
                    seeds=set(args.seeds),
                    epochs=epochs,
                    db=db,
                    label=f"PhoneBook, rank {rank}, ℓ {length}, cap {epochs} epochs",
                )
            )
    long_context = []  # one table per budget, as the regimes
    for epochs in budgets if args.long_context else []:
        db = db_path(args, "longcontext", epochs)
        one_sequence = [  # its stored per-token probabilities are the sequence's
            r | {"certified_prefix": certified_prefix(probabilities)}
            if (probabilities := (r.get("record") or {}).get("probabilities"))
            else r
            for r in rows_of(db)
        ]
        long_context.append(
            regime_summary(
                one_sequence,
                rank=1,
                length=args.long_context_length,
                methods=args.long_context_methods,
                seeds=set(args.seeds),
                epochs=epochs,
                db=db,
                label=(
                    f"Long-Context {args.long_context_file.name}, rank 1, "
                    f"ℓ {args.long_context_length}, cap {epochs} epochs"
                ),
                primary="certified_prefix",
                metrics=(*VERDICT_METRICS, "certified_prefix"),
            )
            | {"data": long_context_data(args)}
        )
    efficiency = None
    if args.efficiency:
        efficiency = efficiency_summary(rows_of(db_path(args, "phonebook", args.epochs)), args)
    audit_file = audit_dir(args) / "audit.json"
    audit = json.loads(audit_file.read_text()) if audit_file.is_file() else None
    rank, length = args.regime[0]
    mechanism = sweep_mechanism(
        rows_of(db_path(args, "phonebook", args.epochs)),
        rank=rank,
        length=length,
        epochs=args.epochs,
    )
    previous = read_previous(args.out_dir / f"{NAME}.json")
    history = [h for h in previous.get("history", []) if h.get("started") != args.started_at]
    history += [
        {
            "started": args.started_at,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "wall_seconds": time.perf_counter() - started,
            "points_run": sum(r.get("done", 0) for r in runs),
            "report_only": args.report_only,
        }
    ]
    spec = make_spec(args, ranks=(1,), lengths=(1,), methods=args.methods, epochs=args.epochs)
    return {
        "benchmark": NAME,
        "issue": 11,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "model": args.model,
        "recipe": {
            "sweep_settings": spec.shared_settings(),
            "fingerprint": fingerprint(spec),
            "described": (
                f"memlaw train's default, as the PhoneBook law's sweep: AdamW lr {spec.lr:g}, the "
                "recipe's batch (about 6 updates per epoch, 4 to 16 items), the rate halved after "
                f"{spec.anneal_patience} epochs without a 1% better loss down to lr/8, stop at "
                f"certified recall or at a plateau there; epoch cap {args.epochs}"
                + (f" (and a second pass at {args.long_epochs})" if args.long_epochs else "")
            ),
        },
        "settings": {k: str(v) for k, v in invocation.items()},
        "verdict_rule": (
            f"per regime and budget, each method against SFT with ≥ {MIN_SEEDS} seeds each: "
            "better/worse when the min–max intervals over seeds are separated or every seed "
            "(paired) moves the same way; tie when every seed is equal; else no clear "
            "difference; fewer seeds: pending"
        ),
        "estimate_at_start": estimate_now,
        "point_seconds_recorded": sum(
            worker_seconds([rows_of(db_path(args, part, epochs)) for epochs in budgets])
            for part in ("phonebook", "longcontext")
        ),
        "history": history,
        "regimes": regimes,
        "long_context": long_context,
        "efficiency": efficiency,
        "audit": audit,
        "mechanism": mechanism,
        "figure": None,
    }


def read_previous(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# --- tables and the figure ----------------------------------------------------------------------


def cell(stats: dict | None, pattern: str = "{:.2f}") -> str:
    if not stats:
        return "–"
    mean = pattern.format(stats["mean"])
    if stats["min"] == stats["max"]:
        return mean
    return f"{mean} ({pattern.format(stats['min'])}–{pattern.format(stats['max'])})"


def regime_table(regime: dict) -> str:
    # judged on the certified prefix (one sequence): the prefix and its verdict in two more
    # columns, the share of tokens above 0.5 in place of the certified share (0 or 1) before them
    prefix = regime.get("primary") == "certified_prefix"
    primary = "token_certified_share" if prefix else regime.get("primary", "certified_share")
    lines = [
        f"\n### {regime['label']}\n",
        "| method | seeds | certified share | exact match | tokens p > 0.5 | memorized bits "
        f"| final loss | epochs | token-steps | wall s | vs SFT ({METRIC_NAMES[primary]}) |"
        + (" certified prefix | vs SFT (certified prefix) |" if prefix else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if prefix else ""),
    ]

    def said(method: str, metric: str) -> str:
        verdict = regime["verdicts"].get(method, {}).get(metric)
        return verdict["verdict"] if verdict else "baseline"

    for method, s in regime["methods"].items():
        lines.append(
            f"| {method} | {s['seeds_done']} | {cell(s['certified_share'])} "
            f"| {cell(s['exact_match'])} | {cell(s['token_certified_share'], '{:.3f}')} "
            f"| {cell(s['memorized_bits'], '{:.0f}')} | {cell(s['final_loss'], '{:.3f}')} "
            f"| {cell(s['epochs'], '{:.0f}')} | {cell(s['token_steps'], '{:.3g}')} "
            f"| {cell(s['wall_seconds'], '{:.0f}')} | {said(method, primary)} |"
            + (
                f" {cell(s.get('certified_prefix'), '{:.0f}')} | {said(method, 'certified_prefix')} |"
                if prefix
                else ""
            )
        )
    rec = regime["recommended"]
    lines.append(f"\nrecommended: {rec['method'] or '–'} ({rec['why']})")
    ahead = [
        f"{a['method']} on {METRIC_NAMES[a['metric']]} ({a['verdict']})"
        for a in regime.get("ahead_of_sft_elsewhere", [])
    ]
    if ahead:
        lines.append(f"ahead of SFT on another metric: {'; '.join(ahead)}")
    return "\n".join(lines)


def efficiency_table(efficiency: dict) -> str:
    lengths = efficiency["lengths"]
    lines = [
        f"\n### Parameter efficiency: smallest rank certifying every seed "
        f"(ranks {', '.join(map(str, efficiency['ranks']))})\n",
        "| method | " + " | ".join(f"ℓ {n}" for n in lengths) + " |",
        "|---|" + "---|" * len(lengths),
    ]
    table = efficiency["smallest_certifying_rank"]
    for method in next(iter(table.values()), {}):
        texts = []
        for n in lengths:
            found = table[str(n)][method]
            if found["status"] == "measured":
                texts.append(str(found["rank"]))
            elif found["rank"] is not None:
                texts.append(f"≤ {found['rank']} (smaller pending)")
            elif found["status"] == "pending":
                texts.append("pending")
            else:
                texts.append(f"> {max(efficiency['ranks'])}")
        lines.append(f"| {method} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def audit_table(payload: dict) -> str:
    a, t = payload["audit"], payload["training"]
    pct = "{:.1%}".format
    above = t["above_share_over_training"]
    return "\n".join(
        [
            f"\n### The mechanism: SFT's budget at rank {payload['rank']}, ℓ {payload['length']} "
            f"(seed {payload['seed']}, {t['epochs']} epochs, {t['stop_reason']})\n",
            "| measure | value |",
            "|---|---|",
            f"| tokens already above p = 0.5 (end) | {pct(a['above_share'])} |",
            f"| SFT loss mass on them (end) | {pct(a['loss_mass_above'])} |",
            f"| SFT gradient mass on them (end) | {pct(a['gradient_mass_above'])} |",
            f"| token-steps above p = 0.5 over training | {pct(above) if above is not None else '–'} |",
            f"| certified share / exact match | {a['certified_share']:.2f} / "
            f"{(a['exact_match'] or 0):.2f} |",
            f"| stubborn tokens | {a['stubborn_tokens']} |",
        ]
    )


def mechanism_table(mechanism: dict) -> str:
    pct = "{:.1%}".format

    def cells(name: str) -> str:
        return " | ".join(pct(s[name]) if s[name] is not None else "–" for s in mechanism["seeds"])

    seeds = mechanism["seeds"]
    header = " | ".join(f"seed {s['seed']} ({s['epochs']} ep, {s['stop_reason']})" for s in seeds)
    return "\n".join(
        [
            f"\n### The mechanism in the sweep's SFT runs: rank {mechanism['rank']}, "
            f"ℓ {mechanism['length']}, cap {mechanism['epoch_cap']} epochs\n",
            f"| measure | {header} |",
            "|---|" + "---|" * len(seeds),
            f"| token-steps on tokens above p = 0.5, whole run | "
            f"{cells('token_steps_above_over_training')} |",
            f"| tokens above p = 0.5 (end) | {cells('end_above_share')} |",
            f"| SFT loss on them (end) | {cells('end_loss_mass_above')} |",
            "| SFT gradient on them (end, bounds) | "
            + " | ".join(
                f"{pct(s['end_gradient_mass_above_low'])}–{pct(s['end_gradient_mass_above_high'])}"
                for s in seeds
            )
            + " |",
        ]
    )


def plot_efficiency(efficiency: dict, path: Path) -> Path | None:
    """Certified share against rank, one line per method (mean, min–max bars), a panel per ℓ."""
    from matplotlib.figure import Figure

    from memlaw.figures import save_png

    by_length: dict[int, dict[str, list]] = {}
    for c in efficiency["cells"]:
        if c["certified_share"]:
            by_length.setdefault(c["length"], {}).setdefault(c["method"], []).append(c)
    if not by_length:
        return None
    # One colour per method in every panel (a panel holds only the methods that ran there).
    order = dict.fromkeys(c["method"] for c in efficiency["cells"])
    colour = {method: f"C{i % 10}" for i, method in enumerate(order)}
    figure = Figure(figsize=(5.2 * len(by_length), 4.2), layout="constrained")
    axes_list = figure.subplots(1, len(by_length), squeeze=False).ravel()
    for axes, (length, methods) in zip(axes_list, sorted(by_length.items()), strict=True):
        for method, cells in methods.items():
            cells.sort(key=lambda c: c["rank"])
            ranks = [c["rank"] for c in cells]
            mean = [c["certified_share"]["mean"] for c in cells]
            low = [m - c["certified_share"]["min"] for m, c in zip(mean, cells, strict=True)]
            high = [c["certified_share"]["max"] - m for m, c in zip(mean, cells, strict=True)]
            axes.errorbar(
                ranks,
                mean,
                yerr=[low, high],
                marker="o",
                capsize=3,
                label=method,
                color=colour[method],
            )
        axes.set_xscale("log", base=2)
        axes.set_xticks(efficiency["ranks"], [str(r) for r in efficiency["ranks"]])
        axes.set_ylim(-0.03, 1.03)
        axes.set_xlabel("LoRA rank (MLP of one layer)")
        axes.set_ylabel("certified share (items)")
        axes.set_title(f"PhoneBook ℓ {length}")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="lower right")
    return save_png(figure, path)


def print_tables(report: dict) -> None:
    for regime in report["regimes"]:
        print(regime_table(regime))
    for long_context in report["long_context"]:
        print(regime_table(long_context))
    if report["efficiency"]:
        print(efficiency_table(report["efficiency"]))
    if report["audit"]:
        print(audit_table(report["audit"]))
    if report["mechanism"]:
        print(mechanism_table(report["mechanism"]))
    recorded = report["point_seconds_recorded"]
    print(
        f"\nworker time in the databases, each run counted once: {recorded / 3600:.2f} h "
        f"({recorded:.0f} s)"
    )


def write_report(args, started, est, runs) -> dict:
    from memlaw.atomic import atomic_write_json

    report = build_report(args, started, est, runs)
    if report["efficiency"]:
        figure = plot_efficiency(report["efficiency"], args.out_dir / f"{NAME}.png")
        report["figure"] = str(figure) if figure else None
    atomic_write_json(args.out_dir / f"{NAME}.json", report)
    return report


# --- main -------------------------------------------------------------------------------------


def last_of(jobs: list[dict], phase: str) -> dict | None:
    return next((j for j in reversed(jobs) if j["phase"] == phase), None)


def main(argv: list[str] | None = None) -> dict:
    started = time.perf_counter()
    args = parse_args(argv)
    args.started_at = time.strftime("%Y-%m-%dT%H:%M:%S")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.long_context and not args.report_only and not args.long_context_file.is_file():
        raise SystemExit(
            f"--long-context: '{args.long_context_file}' is missing (../shared holds it): "
            "give --long-context-file or --no-long-context"
        )
    jobs = plan(args)
    est = estimate(args, jobs)
    print_estimate(est)
    runs: list[dict] = []
    if not args.report_only:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        for job in jobs:
            runs.append(run_job(args, job))
            write_report(args, started, est, runs)
            if args.audit and job is last_of(jobs, "capacity"):
                run_audit(args)  # the mechanism, right after the at-capacity budget
                write_report(args, started, est, runs)
    report = write_report(args, started, est, runs)
    print_tables(report)
    print(
        f"\nwrote {args.out_dir / (NAME + '.json')}"
        + (f" and {report['figure']}" if report["figure"] else "")
    )
    print(f"wall time of this invocation: {time.perf_counter() - started:.0f} s")
    return report


if __name__ == "__main__":
    main()
