"""Sweeps: a grid of memorization runs, their SQLite store, and the executors that run them.

Each point (rank × length ℓ × adapted-layer count × method × seed) trains until its loss has
plateaued or hits the step cap, and lands as one row in a SQLite database (WAL mode) in one
transaction when it finishes. Re-running a sweep skips finished points, so a sweep killed at
any moment loses nothing but the points in flight and duplicates nothing.

>>> import tempfile, pathlib
>>> spec = SweepSpec(model="tiny", data="random", ranks=(1, 2), lengths=(16,), max_steps=5)
>>> store = SweepStore(pathlib.Path(tempfile.mkdtemp()) / "sweep.db", spec)
>>> summary = run_sweep(spec, store, LocalExecutor(workers=1), progress=False)
>>> summary["done"], len(store.rows())
(2, 2)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from memlaw.errors import MemlawError

SCHEMA_VERSION = 1
DATA_KINDS = ("random", "phonebook", "noisy")
# Settings added after the first databases were written, with the value those databases ran
# under: a stored sweep that lacks one of them ran with that value.
# How often a point saves its run (memlaw.checkpoint): a killed sweep loses at most this many
# epochs of each point in flight.
CHECKPOINT_EPOCHS = 10
LATER_SETTINGS = {
    "device": "cpu",
    "dtype": "float32",
    "fast_path": True,
    "batch_size": 0,
    "max_epochs": None,
    "stop_at_certified": False,
    "plateau_on": "delta_loss",
    "anneal_patience": None,
    "anneal_min_updates": 0,
}


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: the grid and the settings every point shares.

    ``data`` is a generator (``random``: one random-token sequence; ``phonebook``; ``noisy:F``:
    the built-in text with a fraction F of random tokens) or a data file truncated to each ℓ.
    Points train ``batch_size`` items per step (0: the whole set; None: the default recipe's
    batch for the set's size, :func:`memlaw.recipe.default_batch_size`) and stop at a plateau: over the
    last ``plateau_window`` epochs the memorized loss (``plateau_on="information"``:
    min(L0, H) − L1 with H the data's information baseline; ``"delta_loss"``: ΔL) grew by less
    than ``plateau_tolerance`` (relative) on the window before and no more items were certified.
    Otherwise they stop at certified recall (``stop_at_certified``), or at the cap:
    ``max_epochs`` when given, else ``max_steps``. ``device``
    (``cpu``, ``cuda``, ``cuda:N``) and ``dtype`` (``float32``, ``bfloat16``, ``float16``: the
    base model's weights; LoRA weights and losses stay float32) say where each point trains.

    >>> SweepSpec(model="tiny", device="cuda", dtype="bfloat16").dtype
    'bfloat16'
    """

    model: str = "smollm2-135m"
    data: str = "random"
    ranks: tuple[int, ...] = (1, 2, 4, 8, 16)
    lengths: tuple[int, ...] = (64, 128, 256, 512)
    layer_counts: tuple[int, ...] = (1,)
    methods: tuple[str, ...] = ("sft",)
    seeds: tuple[int, ...] = (0,)
    modules: str = "mlp"
    lr: float | None = None  # None: memlaw train's rate for each point's batch (memlaw.recipe)
    max_steps: int = 600
    plateau_window: int = 50
    plateau_tolerance: float = 0.01
    data_seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    fast_path: bool = True  # False: the plain PEFT forward (the reference; same losses, slower)
    batch_size: int | None = None  # None: the default recipe's batch for the set's size
    max_epochs: int | None = None
    stop_at_certified: bool = True
    plateau_on: str = "information"
    # Anneal on plateau after this many epochs without progress, and at least
    # anneal_min_updates updates (memlaw train's recipe: 10 and 60, memlaw.recipe); None: a
    # constant rate and the windowed plateau test.
    anneal_patience: int | None = None
    anneal_min_updates: int = 0

    def __post_init__(self) -> None:
        for name in ("ranks", "lengths", "layer_counts", "seeds", "methods"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("ranks", "lengths", "layer_counts"):
            values = getattr(self, name)
            if not values:
                raise MemlawError(f"the sweep needs at least one value in {name}")
            if any(int(v) != v or v <= 0 for v in values):
                raise MemlawError(f"{name} must be positive integers, got {list(values)}")
        if self.max_steps <= 0 or self.plateau_window <= 0:
            raise MemlawError("max_steps and plateau_window must be positive")
        if self.max_epochs is not None and self.max_epochs <= 0:
            raise MemlawError(f"max_epochs must be positive, got {self.max_epochs}")
        if self.anneal_min_updates < 0:
            raise MemlawError(
                f"anneal_min_updates must be 0 or more, got {self.anneal_min_updates}"
            )
        if self.batch_size is not None and self.batch_size < 0:
            raise MemlawError(
                f"batch_size must be 0 (whole set) or positive, got {self.batch_size}"
            )
        if self.plateau_on not in ("information", "delta_loss"):
            raise MemlawError(
                f"plateau_on must be information or delta_loss, got '{self.plateau_on}'"
            )
        from memlaw.train import METHODS

        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise MemlawError(f"unknown method(s) {', '.join(unknown)}: use {', '.join(METHODS)}")
        kind = self.data.split(":")[0]
        if kind not in DATA_KINDS and not Path(self.data).is_file():
            raise MemlawError(
                f"sweep data '{self.data}' is neither a generator ({', '.join(DATA_KINDS)}) nor a file"
            )
        from memlaw.models import DTYPES

        if self.dtype not in DTYPES:
            raise MemlawError(f"unknown dtype '{self.dtype}': use one of {', '.join(DTYPES)}")
        # Only the spelling here: whether CUDA is there is up to the machine that runs the points.
        if not _is_device_name(self.device):
            raise MemlawError(f"unknown device '{self.device}': use cpu, cuda or cuda:N")

    def shared_settings(self) -> dict:
        """Everything but the grid: two sweeps may share a database only if these agree.

        Settings added later (:data:`LATER_SETTINGS`) appear only when they differ from the
        value older databases imply, so those databases and their fingerprints stay valid.
        """
        grid = {"ranks", "lengths", "layer_counts", "methods", "seeds"}
        return _without_implied(
            {f.name: getattr(self, f.name) for f in fields(self) if f.name not in grid}
        )

    def points(self) -> list[SweepPoint]:
        return [
            SweepPoint(rank, length, layers, method, seed)
            for layers in self.layer_counts
            for method in self.methods
            for seed in self.seeds
            for length in self.lengths
            for rank in self.ranks
        ]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def batch_for(self, items: int) -> int:
        """The batch a point of ``items`` items trains in (None: the recipe's for its size)."""
        from memlaw.recipe import default_batch_size

        return default_batch_size(items) if self.batch_size is None else self.batch_size

    def patience_for(self, items: int) -> int | None:
        """A point's annealing patience in epochs for a set of ``items`` items (None: a
        constant rate): ``anneal_patience`` epochs and at least ``anneal_min_updates`` updates.

        >>> recipe = SweepSpec(anneal_patience=10, anneal_min_updates=60)
        >>> [recipe.patience_for(n) for n in (1, 25, 100)]  # memlaw train's, per set
        [60, 12, 10]
        >>> SweepSpec(anneal_patience=10).patience_for(1)  # epochs only
        10
        """
        from memlaw.recipe import anneal_patience

        if not self.anneal_patience:
            return None
        return anneal_patience(  # resolves a None batch to the recipe's, as batch_for does
            items,
            self.batch_size,
            epochs=self.anneal_patience,
            min_updates=self.anneal_min_updates,
        )


@dataclass(frozen=True)
class SweepPoint:
    """One run of the grid."""

    rank: int
    length: int
    layers: int
    method: str
    seed: int

    @property
    def key(self) -> str:
        return f"r{self.rank}-l{self.length}-n{self.layers}-{self.method}-s{self.seed}"


def _is_device_name(device: str) -> bool:
    kind, _, index = device.partition(":")
    return (device == "cpu") or (kind == "cuda" and (index == "" or index.isdigit()))


def _without_implied(settings: dict) -> dict:
    """``settings`` less the later-added ones at the value older databases imply."""
    return {k: v for k, v in settings.items() if LATER_SETTINGS.get(k, object()) != v}


def adapted_layers(count: int, total: int) -> tuple[int, ...]:
    """``count`` consecutive layers starting at the default layer (2/3 of the depth), moved
    down where they would run past the top."""
    from memlaw.adapters import default_layer

    if count > total:
        raise MemlawError(f"cannot adapt {count} layers of a {total}-layer model")
    start = min(default_layer(total), total - count)
    return tuple(range(start, start + count))


def memory_set_for(spec: SweepSpec, length: int, tokenizer) -> list:
    """The encoded memory set of exactly ``length`` target tokens for this sweep."""
    from memlaw import data

    kind, _, argument = spec.data.partition(":")
    generator = {  # the sweep's generators, sized to ℓ, as memlaw train's --generate specs
        "random": f"random:{length}",
        "phonebook": f"phonebook:{math.ceil(length / 10) + 1}",
        "noisy": f"noisy:{length}:{argument or 0}",
    }.get(kind)
    if generator is not None:
        items = data.generate_items(generator, tokenizer, spec.data_seed)
    else:
        items = data.load_items(spec.data)
    return data.encode_items(items, tokenizer, length=length)


def baseline_for(spec: SweepSpec, encoded: list, tokenizer):
    """The information baseline H of this sweep's memory set (memlaw.information)."""
    from memlaw.information import information_baseline

    kind = spec.data.partition(":")[0]
    generator = kind if kind in DATA_KINDS else None
    return information_baseline(
        [e.target_ids for e in encoded], generator=generator, tokenizer=tokenizer
    )


def point_run(spec: SweepSpec, point: SweepPoint, model: Any, items: int, baseline: Any) -> tuple:
    """The training config and adapter spec of one sweep point, for ``model`` and a memory set
    of ``items`` items whose information baseline is ``baseline``: the one place that says how a
    point trains, so anything that reruns a point (a bench's audit) trains the same run, down to
    its checkpoint's fingerprint."""
    from memlaw.adapters import LoraSpec
    from memlaw.train import TrainConfig

    layers = adapted_layers(point.layers, model.config.num_hidden_layers)
    lora = LoraSpec(rank=point.rank, layers=layers, modules=spec.modules)
    config = TrainConfig(
        method=point.method,
        lr=spec.lr,
        steps=spec.max_steps,
        epochs=spec.max_epochs,
        batch_size=spec.batch_for(items),
        seed=point.seed,
        stop_when_certified=spec.stop_at_certified,
        fast_path=spec.fast_path,
        plateau_window=spec.plateau_window,
        plateau_tolerance=spec.plateau_tolerance,
        information_baseline=baseline.nats_per_token if spec.plateau_on == "information" else None,
        anneal_patience=spec.patience_for(items),
    )
    return config, lora


def run_point(spec: SweepSpec, point: SweepPoint, checkpoints: str | Path | None = None) -> dict:
    """Train one point and return its row (runs in a worker process).

    ``checkpoints``: a folder where the point keeps its run's checkpoint
    (``<checkpoints>/<key>``, every :data:`CHECKPOINT_EPOCHS` epochs), so a killed sweep
    continues the point where it was instead of starting it again."""
    from memlaw.adapters import adapter_blob
    from memlaw.checkpoint import state_blob
    from memlaw.information import memorized_bits
    from memlaw.models import load_model
    from memlaw.train import epoch_summaries, train

    model, tokenizer = load_model(spec.model, dtype=spec.dtype, device=spec.device)
    encoded = memory_set_for(spec, point.length, tokenizer)
    baseline = baseline_for(spec, encoded, tokenizer)
    config, lora = point_run(spec, point, model, len(encoded), baseline)
    started = time.perf_counter()
    folder = None if checkpoints is None else Path(checkpoints) / point.key
    result = train(
        model,
        tokenizer,
        encoded,
        lora,
        config,
        checkpoint=folder,
        checkpoint_every=CHECKPOINT_EPOCHS,
    )
    record = result.record()
    bits = memorized_bits(
        record["length"], record["base_loss"], record["final_loss"], baseline.nats_per_token
    )
    return {
        "key": point.key,
        **asdict(point),
        "n_eff": result.n_eff,
        "trainable_params": result.trainable_params,
        "base_loss": record["base_loss"],
        "final_loss": record["final_loss"],
        "delta_loss": record["delta_loss"],
        "exact_match": record["exact_match"],
        "certified_share": record["certified_share"],
        "steps": record["steps"],
        "stop_reason": record["stop_reason"],
        "hit_cap": record["stop_reason"] == "budget",
        "train_seconds": record["train_seconds"],
        # a resumed point adds the training seconds of its segments before the resume
        "wall_seconds": time.perf_counter() - started + result.resumed_seconds,
        "data_kind": baseline.kind,
        "info_baseline": baseline.nats_per_token,
        "memorized_bits": bits,
        "epochs": result.log[-1].epoch if result.log else 0,
        "token_certified_share": record["token_certified_share"],
        "adapter": adapter_blob(result.model),
        # a capped point's last checkpoint (at most CHECKPOINT_EPOCHS short of the cap)
        "final_state": (
            state_blob(folder)
            if result.stop_reason == "budget" and folder and (folder / "state.json").is_file()
            else None
        ),
        "record": {
            "config": record["config"],
            "losses": [entry["loss"] for entry in record["log"]],
            "epochs": [list(e) for e in epoch_summaries(result.log)],
            "baseline": baseline.to_dict(),
            "probabilities": [p for item in result.report.items for p in item.probabilities],
            # Σ over steps of the batch's supervised tokens (the work), and of those below the
            # training boundary (p < train_tau) in steps that updated (SFT trains the rest too)
            "token_steps": sum(entry.tokens for entry in result.log),
            "active_token_steps": sum(
                entry.active_tokens for entry in result.log if not entry.skipped
            ),
        },
    }


def point_seconds(row: Mapping) -> float:
    """A stored point's wall seconds, all its segments together.

    Rows written before 2026-12-06 counted only the last segment of a point resumed from its
    checkpoint; their training seconds (which always counted every segment) bound it from below.

    >>> point_seconds({"wall_seconds": 33.5, "train_seconds": 680.7})
    680.7
    >>> point_seconds({"wall_seconds": 700.0, "train_seconds": 680.7})
    700.0
    """
    return max(row.get("wall_seconds") or 0.0, row.get("train_seconds") or 0.0)


def check_sweep_fits(spec: SweepSpec, memory_on: str | None) -> None:
    """Refuse, before any point runs, a sweep whose points cannot run: too many layers, unknown
    modules, a memory set longer than the model's context, or (``memory_on``: the device the
    points train on) an adapter at the largest rank that does not fit in memory."""
    from memlaw.adapters import LoraSpec, check_lora_fits, target_module_names
    from memlaw.models import context_length, model_skeleton

    skeleton, tokenizer = model_skeleton(spec.model)
    total = skeleton.config.num_hidden_layers
    layers = adapted_layers(max(spec.layer_counts), total)
    largest = LoraSpec(rank=max(spec.ranks), layers=layers, modules=spec.modules)
    target_module_names(skeleton, largest)
    longest = max(spec.lengths)
    sequence = max(len(item.input_ids) for item in memory_set_for(spec, longest, tokenizer))
    context = context_length(skeleton)
    if sequence > context:
        raise MemlawError(
            f"--lengths {longest}: the memory set would hold a sequence of {sequence} tokens, "
            f"more than the context of {spec.model} ({context}): use shorter lengths"
        )
    if memory_on is not None:
        check_lora_fits(skeleton, largest, device=memory_on)


def sweep_into(db: str | Path, spec: SweepSpec, runner: Executor, progress: bool = True):
    """Run the sweep into the database ``db`` and return ``(store, summary)``; a store this
    run created is removed again if the sweep fails before any point finished, so a corrected
    command starts clean."""
    db = Path(db)
    created = not db.exists()
    store = None
    try:
        store = SweepStore(db, spec)
        return store, run_sweep(spec, store, runner, progress=progress)
    except BaseException:
        if created and (store is None or not store.finished_keys()):
            if store is not None:
                store.close()
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
        raise


# --- the store -------------------------------------------------------------------------------

COLUMNS = (
    "key TEXT PRIMARY KEY, rank INTEGER, length INTEGER, layers INTEGER, method TEXT, "
    "seed INTEGER, n_eff INTEGER, trainable_params INTEGER, base_loss REAL, final_loss REAL, "
    "delta_loss REAL, exact_match REAL, certified_share REAL, steps INTEGER, stop_reason TEXT, "
    "hit_cap INTEGER, train_seconds REAL, wall_seconds REAL, record TEXT, finished_at REAL"
)
# Columns added after the first databases were written (NULL in their rows).
LATER_COLUMNS = (
    "data_kind TEXT",
    "info_baseline REAL",
    "memorized_bits REAL",
    "epochs INTEGER",
    "token_certified_share REAL",
    # the point's final adapter (memlaw.adapters.adapter_blob): SweepStore.export_adapter
    "adapter BLOB",
    # a capped point's last checkpoint (memlaw.checkpoint.state_blob): a longer cap continues it
    "final_state BLOB",
)
# Columns that rows() leaves in the store (has_<name> says whether a row has one).
BLOB_COLUMNS = ("adapter", "final_state")


def checkpoints_folder(db: str | Path) -> Path:
    """``<db>.checkpoints/``: where the points in flight of the sweep in ``db`` keep their
    checkpoints (a point's folder goes once its row is in).

    >>> checkpoints_folder("runs/law.db").as_posix()
    'runs/law.db.checkpoints'
    """
    path = Path(db)
    return path.with_name(f"{path.name}.checkpoints")


def points_in_flight(db: str | Path, spec: SweepSpec) -> dict[str, int]:
    """The points of ``spec`` that a rerun into ``db`` continues from a checkpoint, with the
    epochs each checkpoint holds (:func:`memlaw.checkpoint.saved_epochs`).

    >>> points_in_flight("no-such.db", SweepSpec(ranks=(1,), lengths=(8,)))
    {}
    """
    from memlaw.checkpoint import saved_epochs

    folder = checkpoints_folder(db)
    return {
        point.key: saved_epochs(folder / point.key)
        for point in spec.points()
        if (folder / point.key / "state.json").is_file()
    }


class SweepStore:
    """One SQLite file: a ``meta`` table with the sweep's shared settings, a ``points`` table
    with one row per finished point."""

    @property
    def checkpoints(self) -> Path:
        """Where the points in flight keep their checkpoints (:func:`checkpoints_folder`)."""
        return checkpoints_folder(self.path)

    def __init__(self, path: str | Path, spec: SweepSpec | None = None):
        """With ``spec``: open (or create) the store to run that sweep into. Without: open an
        existing store read-only; a file that is not a memlaw sweep is refused untouched."""
        self.path = Path(path)
        self.writable = spec is not None
        if spec is None:
            self.connection = self._open_read_only()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.connection = sqlite3.connect(self.path, timeout=30)
            if not self._is_sweep() and self._has_tables():
                raise MemlawError(
                    f"'{self.path}' is a database but not a memlaw sweep: use another --db"
                )
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA synchronous=FULL")
            with self.connection:
                self.connection.execute(
                    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)"
                )
                self.connection.execute(f"CREATE TABLE IF NOT EXISTS points ({COLUMNS})")
                present = {r[1] for r in self.connection.execute("PRAGMA table_info(points)")}
                for column in LATER_COLUMNS:
                    if column.split()[0] not in present:
                        self.connection.execute(f"ALTER TABLE points ADD COLUMN {column}")
            stored = dict(self.connection.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise MemlawError(f"'{self.path}' is not a usable sweep database ({exc})") from None
        settings = json.dumps(spec.shared_settings(), sort_keys=True)
        empty = not self.finished_keys()
        if "settings" in stored and not _same_settings(stored["settings"], settings) and not empty:
            hint = "use another --db or the same settings"
            if spec.anneal_min_updates and not json.loads(stored["settings"]).get(
                "anneal_min_updates"
            ):  # stored before memlaw sweep's default patience counted updates
                hint += " (for a sweep whose patience counted epochs only: --anneal-patience N)"
            raise MemlawError(
                f"'{self.path}' holds a sweep with other settings "
                f"({_difference(stored['settings'], settings)}): {hint}"
            )
        # A store with no finished point may take corrected settings (a first point that failed).
        with self.connection:
            verb = "REPLACE" if empty else "IGNORE"
            self.connection.execute(
                f"INSERT OR {verb} INTO meta VALUES ('settings', ?), ('schema', ?)",
                (settings, str(SCHEMA_VERSION)),
            )
            self.connection.execute(
                "INSERT OR REPLACE INTO meta VALUES ('spec', ?)", (spec.to_json(),)
            )

    def _open_read_only(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise MemlawError(f"sweep database '{self.path}' does not exist")
        try:
            self.connection = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
            if not self._is_sweep():
                raise MemlawError(
                    f"'{self.path}' is not a memlaw sweep database (no sweep settings in it): "
                    "give the --db that memlaw sweep wrote"
                )
        except sqlite3.DatabaseError as exc:
            raise MemlawError(f"'{self.path}' is not a usable sweep database ({exc})") from None
        return self.connection

    def _has_tables(self) -> bool:
        return bool(self.connection.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall())

    def _is_sweep(self) -> bool:
        tables = {
            name
            for (name,) in self.connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )
        }
        if not {"meta", "points"} <= tables:
            return False
        return bool(self.connection.execute("SELECT 1 FROM meta WHERE key = 'settings'").fetchall())

    def spec(self) -> SweepSpec:
        """The sweep's settings; a setting its database predates takes the value it ran under."""
        (value,) = self.connection.execute("SELECT value FROM meta WHERE key = 'spec'").fetchone()
        return SweepSpec(**(LATER_SETTINGS | json.loads(value)))

    def finished_keys(self) -> set[str]:
        return {key for (key,) in self.connection.execute("SELECT key FROM points")}

    def add(self, row: dict) -> None:
        """Write one finished point in one transaction (a repeat of a key is ignored)."""
        values = {**row, "record": json.dumps(row["record"]), "finished_at": time.time()}
        names = [c.split()[0] for c in (*COLUMNS.split(", "), *LATER_COLUMNS)]
        later = {c.split()[0] for c in LATER_COLUMNS}  # a row from an older store lacks them
        with self.connection:
            self.connection.execute(
                f"INSERT OR IGNORE INTO points ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                [values.get(name) if name in later else values[name] for name in names],
            )

    def rows(self, with_record: bool = False, key: str | None = None) -> list[dict]:
        """Every finished point, its record parsed only ``with_record``. ``items``: the number
        of items the run trained on, read from the record inside SQLite (None where the record
        does not say), so a fit counts items without parsing every run's record. The adapter
        itself and a capped point's last state stay in the store (``has_adapter`` and
        ``has_final_state`` say whether there is one; see :meth:`export_adapter` and
        :func:`carry_over`). ``key``: only that point."""
        present = [r[1] for r in self.connection.execute("PRAGMA table_info(points)")]
        columns = ", ".join(name for name in present if name not in BLOB_COLUMNS)
        has = ", ".join(
            f"{f'{name} IS NOT NULL' if name in present else '0'} AS has_{name}"
            for name in BLOB_COLUMNS
        )
        cursor = self.connection.execute(
            f"SELECT {columns}, {has}, CASE WHEN json_valid(record) THEN"
            " json_extract(record, '$.config.items') END AS items"
            f" FROM points {'WHERE key = ?' if key else ''} ORDER BY layers, method, seed, length,"
            " rank",
            (key,) if key else (),
        )
        names = [d[0] for d in cursor.description]
        rows = []
        for values in cursor.fetchall():
            later = (c.split()[0] for c in LATER_COLUMNS)
            row = {name: None for name in later if name not in BLOB_COLUMNS} | dict(
                zip(names, values, strict=True)
            )
            for name in BLOB_COLUMNS:
                row[f"has_{name}"] = bool(row[f"has_{name}"])
            row["hit_cap"] = bool(row["hit_cap"])
            if not (isinstance(row["items"], int) and row["items"] > 0):
                row["items"] = None
            row["record"] = json.loads(row["record"]) if with_record else None
            rows.append(row)
        return rows

    def blob(self, key: str, column: str) -> bytes | None:
        """Point ``key``'s value of a :data:`BLOB_COLUMNS` column (None: no such point, or a
        point from before the store kept it)."""
        if column not in BLOB_COLUMNS:
            raise ValueError(f"{column} is not one of {BLOB_COLUMNS}")
        present = {r[1] for r in self.connection.execute("PRAGMA table_info(points)")}
        if column not in present:
            return None
        found = self.connection.execute(
            f"SELECT {column} FROM points WHERE key = ?", (key,)
        ).fetchone()
        return None if found is None else found[0]

    def export_adapter(self, key: str, out_dir: str | Path, *, overwrite: bool = False) -> Path:
        """Write point ``key``'s final adapter as a PEFT folder (``adapter_config.json``,
        ``adapter_model.safetensors`` and memlaw's ``record.json`` naming the base model and the
        point's results), atomically; loadable with ``memlaw.adapters.load_adapter`` or
        ``PeftModel.from_pretrained``. Points run before sweeps kept adapters have none."""
        from memlaw.adapters import write_adapter_blob
        from memlaw.atomic import atomic_write_dir, atomic_write_json

        found = self.blob(key, "adapter")
        if found is None and key not in self.finished_keys():
            raise MemlawError(
                f"'{self.path}' has no finished point '{key}': its keys look like "
                f"{next(iter(sorted(self.finished_keys())), 'r1-l64-n1-sft-s0')}"
            )
        if found is None:
            raise MemlawError(
                f"point '{key}' in '{self.path}' has no stored adapter (it ran before sweeps kept "
                "their adapters): rerun it into a new --db to get one"
            )
        out = Path(out_dir)
        if out.exists() and not overwrite:
            raise MemlawError(f"'{out}' already exists: pick another folder or pass --overwrite")
        (row,) = self.rows(with_record=True, key=key)
        record = {
            "model": self.spec().model,
            "sweep": {"db": str(self.path), "key": key},
            **{
                k: v
                for k, v in row.items()
                if k not in ("record", "items") and not k.startswith("has_")
            },
            **{
                name: row["record"].get(name)
                for name in ("config", "token_steps", "active_token_steps")
            },
        }

        def fill(staging: Path) -> None:
            write_adapter_blob(found, staging)
            atomic_write_json(staging / "record.json", record)

        atomic_write_dir(out, fill, overwrite=overwrite)
        return out

    def close(self) -> None:
        """Close; the last writer out folds the write-ahead log back into the file, so the
        database is one file again and a later read-only open leaves nothing beside it."""
        if self.writable:
            try:  # fails at once, harmlessly, while another process still has it open
                self.connection.execute("PRAGMA busy_timeout=0")
                self.connection.execute("PRAGMA journal_mode=DELETE")
            except sqlite3.OperationalError:
                pass
        self.connection.close()


def _same_settings(stored: str, wanted: str) -> bool:
    """Equal once later-added settings at their implied value are left out on both sides (a
    database from before ``device``/``dtype`` existed ran on cpu in float32)."""
    return _without_implied(json.loads(stored)) == _without_implied(json.loads(wanted))


def _difference(stored: str, wanted: str) -> str:
    a, b = json.loads(stored), json.loads(wanted)
    a = LATER_SETTINGS | a  # name the implied value of a setting the database predates
    b = LATER_SETTINGS | b

    def shown(value: Any) -> str:
        return "default" if value is None else repr(value)  # None: the recipe's (e.g. lr)

    changed = [
        f"{k}: {shown(a.get(k))} vs {shown(b.get(k))}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]
    return "; ".join(changed[:3])


# --- executors -------------------------------------------------------------------------------


class Executor(Protocol):
    """Runs points and yields ``(point, row)`` as each finishes (:class:`LocalExecutor`,
    :class:`memlaw.ray_executor.RayExecutor`). An executor with an ``on_start`` attribute gets
    it set to a callback that takes each point as it starts (the progress bar's)."""

    def run(
        self, spec: SweepSpec, points: list[SweepPoint]
    ) -> Iterator[tuple[SweepPoint, dict]]: ...


def check_device(device: str) -> None:
    """Fail with one line unless this machine can run points on ``device``.

    >>> check_device("cpu")
    """
    import torch

    from memlaw.models import resolve_device

    resolve_device(device)  # cuda without CUDA: says so
    _, _, index = device.partition(":")
    count = torch.cuda.device_count() if index else 0
    if index and int(index) >= count:
        raise MemlawError(
            f"device '{device}' requested but this machine has {count} CUDA device(s): "
            f"use cuda:0 to cuda:{count - 1}"
        )


def _init_worker(threads: int, parent: int | None = None) -> None:
    """Each worker gets its share of the cores, and keeps library noise off the terminal.
    With ``parent`` (the driver's pid) it also dies with the driver."""
    import warnings

    if parent is not None:
        _die_with_parent(parent)
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _die_with_parent(parent: int) -> None:
    """A SIGKILLed driver cannot stop its workers, so each worker watches for itself: on
    Linux the kernel sends it SIGKILL when the driver goes (PR_SET_PDEATHSIG); everywhere a
    thread checks twice a second that the driver is still its parent."""
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # the thread below still watches
    if os.getppid() != parent:  # the driver died before this worker started
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="memlaw-parent-watch", daemon=True).start()


def usable_cpus() -> int:
    """The cores this process may run on: its CPU affinity where the OS keeps one (``taskset``,
    a container's cpuset), else every core. ``os.cpu_count()`` counts the machine's cores even
    when the process is pinned to fewer, which would oversubscribe them.

    >>> 1 <= usable_cpus() <= (os.cpu_count() or 1)
    True
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows keep no affinity mask here
        return max(1, os.cpu_count() or 1)


@dataclass
class LocalExecutor:
    """Worker processes on this machine (one per usable core by default, the cores split
    evenly; ``taskset -c 1 memlaw sweep …`` runs on core 1 alone, with one thread).
    Workers die with the driver, even when it is killed with SIGKILL; when the run stops early
    (a failed point, an interrupt), the points still running are stopped, not waited for."""

    workers: int = field(default_factory=usable_cpus)
    on_start: Callable[[SweepPoint], None] | None = None
    # Where points keep their checkpoints (run_sweep sets the store's folder; None: none).
    checkpoints: Path | None = None

    def run(self, spec: SweepSpec, points: list[SweepPoint]) -> Iterator[tuple[SweepPoint, dict]]:
        check_device(spec.device)  # before spawning workers that would each fail on it
        workers = max(1, min(self.workers, len(points)))
        threads = max(1, usable_cpus() // workers)
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(threads, os.getpid())
        )
        finished = False
        try:
            yield from self._drive(pool, workers, spec, points)
            finished = True
        finally:
            if not finished:
                _stop_workers(pool)
            pool.shutdown(wait=finished, cancel_futures=True)

    def _drive(self, pool, workers: int, spec: SweepSpec, points: list[SweepPoint]):
        from concurrent.futures.process import BrokenProcessPool

        queue = list(points)
        running = {}
        while queue or running:
            while queue and len(running) < workers:
                point = queue.pop(0)
                running[pool.submit(run_point, spec, point, self.checkpoints)] = point
                if self.on_start:
                    self.on_start(point)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                point = running.pop(future)
                try:
                    row = future.result()
                except BrokenProcessPool:
                    raise MemlawError(
                        f"a worker process died while running point {point.key} (out of memory, "
                        "or killed): finished points are saved, rerun the same command to resume"
                    ) from None
                yield point, row


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's worker processes (shutdown alone waits for running points)."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()


def run_sweep(
    spec: SweepSpec, store: SweepStore, executor: Executor, *, progress: bool = True
) -> dict:
    """Run every point not yet in ``store``; returns counts of points done and skipped."""
    points = spec.points()
    finished = store.finished_keys()
    todo = [p for p in points if p.key not in finished]
    summary = {"total": len(points), "skipped": len(points) - len(todo), "done": 0}
    if not todo:
        return summary
    started = time.perf_counter()
    bar = _SweepProgress(len(points), summary["skipped"]) if progress else None
    if bar and hasattr(executor, "on_start"):
        executor.on_start = bar.started
    if hasattr(executor, "checkpoints") and executor.checkpoints is None:
        executor.checkpoints = store.checkpoints
    try:
        for point, row in executor.run(spec, todo):
            store.add(row)
            summary["done"] += 1
            if getattr(executor, "checkpoints", None) is not None:
                shutil.rmtree(Path(executor.checkpoints) / point.key, ignore_errors=True)
            if bar:
                bar.finished(point, row)
    finally:
        if bar:
            bar.close()
        folder = getattr(executor, "checkpoints", None)
        if folder is not None and Path(folder).is_dir() and not any(Path(folder).iterdir()):
            with contextlib.suppress(OSError):  # another sweep of the store may just start one
                Path(folder).rmdir()  # no point in flight: leave nothing beside the database
    summary["seconds"] = time.perf_counter() - started
    return summary


def check_longer_cap(shorter: SweepSpec, longer: SweepSpec, source: str | Path) -> None:
    """Refuse, before anything is written, to carry ``source``'s sweep (``shorter``) over into
    ``longer`` unless that is the same sweep under a larger ``max_epochs``."""
    same = [
        json.dumps(dict(s.shared_settings(), max_epochs=None), sort_keys=True)
        for s in (shorter, longer)
    ]
    if same[0] != same[1] or not (shorter.max_epochs or 0) < (longer.max_epochs or 0):
        raise MemlawError(
            f"this sweep is not '{source}''s under a longer epoch cap "
            f"({_difference(same[0], same[1]) or 'max_epochs is not larger'}): carry over only "
            "the same settings with a larger --max-epochs"
        )


def carry_over(source: SweepStore, target: SweepStore, kept: str | Path | None = None) -> dict:
    """Start a sweep under a longer epoch cap from the same sweep under a shorter one, instead
    of from zero: ``target`` holds ``source``'s settings but a larger ``max_epochs``.

    For each point of ``target`` still to run that ``source`` finished:

    - stopped before the cap (plateau, certified recall, a non-finite loss): under the longer
      cap the same run stops at the same epoch, so its row is copied (``record["carried_from"]``
      says from where);
    - stopped by the cap: its last checkpoint (the row's ``final_state``, else ``kept/<key>``, a
      copy kept of the shorter sweep's checkpoint in flight) seeds the point's checkpoint in
      ``target``, checked to be that very run (:func:`memlaw.train.extend_checkpoint`), so
      the point trains only the epochs past it.

    A method with a curriculum starts afresh (its schedule is laid out over the cap). Returns
    how many points were copied, continued, and left to run from the start.
    """
    from memlaw.atomic import atomic_copy_dir
    from memlaw.checkpoint import write_state_blob
    from memlaw.models import load_model
    from memlaw.train import extend_checkpoint

    shorter, longer = source.spec(), target.spec()
    check_longer_cap(shorter, longer, source.path)
    counts = {"copied": 0, "continued": 0, "from_scratch": 0}
    finished = target.finished_keys()
    rows = {row["key"]: row for row in source.rows(with_record=True)}
    capped = []
    for point in (p for p in longer.points() if p.key not in finished):
        row = rows.get(point.key)
        if row is None or ran_curriculum(row):
            counts["from_scratch"] += 1
        elif row["hit_cap"]:
            capped.append(point)
        else:
            note = {"db": str(source.path), "max_epochs": shorter.max_epochs}
            note["why"] = f"stopped ({row['stop_reason']}) at epoch {row['epochs']}, before the cap"
            row["record"] = {**row["record"], "carried_from": note}
            target.add(row | {name: source.blob(point.key, name) for name in BLOB_COLUMNS})
            counts["copied"] += 1
    if not capped:
        return counts
    model, tokenizer = load_model(longer.model, dtype=longer.dtype)
    for point in capped:
        folder = target.checkpoints / point.key
        if (folder / "state.json").is_file():  # already continuing: leave it be
            counts["continued"] += 1
            continue
        blob = source.blob(point.key, "final_state")
        copy = None if kept is None else Path(kept) / point.key
        if blob is not None:
            write_state_blob(blob, folder)
        elif copy is not None and (copy / "state.json").is_file():
            atomic_copy_dir(copy, folder)
        else:
            counts["from_scratch"] += 1
            continue
        encoded = memory_set_for(longer, point.length, tokenizer)
        baseline = baseline_for(longer, encoded, tokenizer)
        short_config, lora = point_run(shorter, point, model, len(encoded), baseline)
        long_config, _ = point_run(longer, point, model, len(encoded), baseline)
        try:
            extend_checkpoint(folder, short_config, long_config, lora, encoded, model)
        except MemlawError:
            shutil.rmtree(folder, ignore_errors=True)
            if blob is not None:  # the store's own state must be its run's: a real fault
                raise
            counts["from_scratch"] += 1  # a kept copy of some other run: not this point's
            continue
        counts["continued"] += 1
    return counts


def ran_curriculum(row: dict) -> bool:
    """Whether a stored run trained a curriculum: the objective it ran, not the one named
    (``memft-sw`` runs its curriculum on several items, its window on one sequence)."""
    from memlaw.objectives import OBJECTIVES

    ran = (row.get("record") or {}).get("config", {}).get("method", row["method"])
    return OBJECTIVES[ran].curriculum


def carry_into(
    db: str | Path, spec: SweepSpec, source_db: str | Path, kept: str | Path | None = None
) -> dict:
    """:func:`carry_over` from the database ``source_db`` into ``db`` (created for ``spec`` if
    need be), refused before ``db`` is touched unless ``spec`` is ``source_db``'s sweep under a
    longer epoch cap."""
    source = SweepStore(source_db)
    try:
        check_longer_cap(source.spec(), spec, source_db)
        target = SweepStore(db, spec)
        try:
            return carry_over(source, target, kept=kept)
        finally:
            target.close()
    finally:
        source.close()


class _SweepProgress:
    """Points done, running and left, with an estimate of the time left."""

    def __init__(self, total: int, already: int):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.running: set[str] = set()
        self.progress = Progress(
            TextColumn("[bold]sweep"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "running {task.fields[running]} · left {task.fields[left]} · last {task.fields[last]}"
            ),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "sweep", total=total, completed=already, running=0, left=total - already, last="-"
        )
        self.left = total - already

    def started(self, point: SweepPoint) -> None:
        self.running.add(point.key)
        self.progress.update(self.task, running=len(self.running))

    def finished(self, point: SweepPoint, row: dict) -> None:
        self.running.discard(point.key)
        self.left -= 1
        last = (
            f"{point.key} ΔL={row['delta_loss']:.3f} {row['memorized_bits']:.0f} bits "
            f"{row['stop_reason']}"
        )
        self.progress.update(
            self.task, advance=1, running=len(self.running), left=self.left, last=last
        )

    def close(self) -> None:
        self.progress.stop()


def fingerprint(spec: SweepSpec) -> str:
    """A short hash of the shared settings (names a sweep in reports)."""
    return hashlib.sha256(json.dumps(spec.shared_settings(), sort_keys=True).encode()).hexdigest()[
        :12
    ]
