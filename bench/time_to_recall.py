"""Time to certified recall: memlaw train against what users run today, side by side in one run.

What a user pays for is the wall time from starting a process to a certified adapter on disk
(every target token p > 0.5 under teacher forcing, so greedy decoding reproduces every item).
Each contender runs in its own fresh process and is stopped by the same certification check
(``memlaw.probe.teacher_forced``: every target token's loss < ln 2):

- ``trl-same``: TRL ``SFTTrainer`` + PEFT with the same LoRA (rank, MLP of layer 20, alpha =
  rank), lr, batch size and epoch cap as memlaw's default recipe, and its schedule (halve the
  rate after a 10-epoch plateau of the epoch loss, down to lr/8; ``--baseline-schedule
  constant`` for none); float32; prompt-completion rows (token ids with a completion mask, so
  it trains exactly memlaw's target tokens), answer-only loss, no packing. memlaw's
  ``MemoryAuditCallback`` checks every ``--check-every`` epochs and a small callback stops the
  Trainer at certified recall, or at ``--time-cap`` seconds ("not certified by T").
- ``trl-defaults``: the same rows and LoRA with ``SFTConfig``'s defaults (lr 2e-5, batch 8,
  linear decay, bf16 autocast, gradient checkpointing), as a user would start; its epoch budget
  is raised from TRL's 3 to the epoch cap and it stops at ``--trl-default-cap`` seconds.
- ``peft-loop``: a plain PEFT + torch loop (the whole model every step, HF's loss, no fast
  path), the same recipe and checks.
- ``memlaw-default``: ``memlaw train --rank R`` with its defaults, the CLI as a user runs it
  (``memlaw.cli.main`` in the child, with timing hooks around its phases).
- ``memlaw-fast``: ``memlaw train`` with the options of ``--fast-recipe`` (or of ``--search``).

Metrics per run: wall time from process start to exit with the adapter on disk and its phases
(startup and imports, model load, data, base-loss pass, setup, training, certification checks,
final probe, save, the rest), epochs, optimizer steps, peak RSS and CPU time (``wait4``),
certified or not. The order of the contenders rotates from seed to seed so that machine noise
spreads evenly.

``--search`` first searches memlaw's recipe in-process (``memlaw.train.train``, method memft):
batch size (1, 4, 16, full) × lr (3e-3, 1e-2, 3e-2) at the benchmark rank with memlaw's
schedule on the first seed, the default recipe first; then rank ×2 and ×4, a constant rate and
a bfloat16 base model (``--dtype bfloat16``: AMX CPUs multiply it several times faster,
``bench/bf16_cpu.py``) for the best batch/lr pairs; runs that can no longer be the fastest are cut at
``--search-prune`` × the fastest so far. The fastest configurations then run on the other
seeds; the fastest that certifies on every seed is the robust choice, used for
``memlaw-fast``. A linear lr warm-up (``memlaw train --warmup-steps``) over
``--search-warmups`` epochs is tried for the best pairs too. memlaw
checks certification at every step from the training forward pass, so the check interval is
studied where a check costs a pass of its own: a plain PEFT loop with the baselines' recipe,
checked every epoch and continued until every interval of ``--search-check-every`` has found
its stop. Checks change nothing in the trajectory, so one run per seed gives each interval's
exact stopping epoch and time. ``--check-interval-only`` runs that study alone, at the
baselines' recipe, without the search (it goes to the JSON's ``check_interval``).

Tasks: PB1000 (``../shared/benchmarks/phonebook/PB1000.jsonl``, 100 entries, ℓ ≈ 1000) and
Long-Context ``r20.jsonl`` (20% random tokens, as in ``bench/memft_vs_sft.py``) at ℓ = 512;
``--long-file`` picks another density (``r100``: all random). ``--generate-phonebook N`` uses a
generated phonebook instead (the smoke test, without ``../shared``).

Run (full scale): .venv/bin/python bench/time_to_recall.py --search
Writes bench/results/time_to_recall.json (after every run) and prints markdown tables.

The whole run outlasts a session, so every finished run (search run, check-interval seed,
contender run) is appended to a journal, ``bench/results/time_to_recall-runs.jsonl``, with the
machine kind (CPU model, AMX, cores, torch) and a hash of this script and the memlaw package. A
rerun with the same settings takes each finished run from it on the same machine kind and code
and runs only the rest (``--no-reuse``: all again); run it from a frozen copy of the code
(``git archive``) so that edits in between do not void the journal. Times of other machines stay
in the file, unused. The headline's per-seed ratio says when its two runs came from different
sessions.

Wall time at full scale on two unshared cores, estimated (not measured) from ~3.3 ms per
answer token per epoch on memlaw's fast path, ~2× that on the plain PEFT path, a check pass of
about 0.7 plain epoch, and the epochs the PhoneBook law's grid measured at the planned rank 1:
SFT certified PB1000's 1,000 tokens in 269 epochs (rank 2: 96, rank 4: 80). Per seed on PB1000
that is ~15 min for each memlaw contender and ~40 min for trl-same and for peft-loop (hence
their 1-hour cap), ~2 h in all, 6 h for three seeds; Long-Context at rank 8 ~1.9 h; the search
~3–4 h at rank 1 (fewer epochs at ranks ×2 and ×4) + 1.5 h. So 12–14 h in all. The search can
run on its own first (``--search --contenders ""``); a later run without ``--search`` takes the
recipe and the search tables from the JSON it replaces.
"""

from __future__ import annotations

import time

PROCESS_START = time.time()  # a child's clock starts here, before any heavy import

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
THREADS_ENV = "MEMLAW_BENCH_THREADS"
LN2 = math.log(2.0)  # p > 0.5 ⇔ token loss < ln 2

CONTENDERS = {
    "trl-same": "TRL SFTTrainer + PEFT, same recipe",
    "trl-defaults": "TRL SFTTrainer + PEFT, TRL defaults",
    "peft-loop": "plain PEFT + torch loop",
    "memlaw-default": "memlaw train (defaults)",
    "memlaw-fast": "memlaw train (fastest recipe)",
}
REFERENCE = "memlaw-default"
PHASES = (
    ("startup", "startup + imports"),
    ("model_load", "model load"),
    ("data", "data"),
    ("base_loss", "base-loss pass"),
    ("setup", "setup"),
    ("training", "training"),
    ("checks", "certification checks"),
    ("final_probe", "final probe"),
    ("save", "save"),
    ("other", "other (exit, untimed)"),
)


# --- the journal: a benchmark of many hours outlives one session ------------------------------


def machine_id() -> str:
    """The machine kind a time belongs to: CPU model, AMX (bfloat16 matmuls several times
    faster), core count and torch. Times are reused only on the same kind."""
    import torch

    cpu, flags = platform.processor() or platform.machine(), ""
    with contextlib.suppress(OSError):
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                    if ln.startswith("model name")), cpu)  # fmt: skip
        flags = " amx" if "amx_bf16" in info else ""
    return f"{cpu}{flags}, {os.cpu_count()} cpus, torch {torch.__version__}"


def code_id() -> str:
    """A hash of this script and of the memlaw package it imports: times of other code are
    not reused."""
    import hashlib

    import memlaw.train

    digest = hashlib.sha256(Path(__file__).read_bytes())
    for path in sorted(Path(memlaw.train.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class Journal:
    """Finished runs, one JSON line each, appended as each run ends. The whole benchmark takes
    longer than a session, so a rerun on the same machine kind and code takes a finished run
    from here instead of running it again; runs of other machines or code stay in the file,
    unused. A torn last line (a run killed mid-write) is skipped.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "runs.jsonl"
    >>> Journal(path, "cpu", "c1", session="s1").put("search", {"seed": 0}, {"seconds": 1.5})
    {'seconds': 1.5, 'session': 's1'}
    >>> Journal(path, "cpu", "c1", session="s2").get("search", {"seed": 0})["session"]
    's1'
    >>> Journal(path, "other cpu", "c1", session="s2").get("search", {"seed": 0}) is None
    True
    """

    def __init__(
        self, path: Path | None, machine: str, code: str, session: str, reuse: bool = True
    ) -> None:
        self.path, self.machine, self.code, self.session = path, machine, code, session
        self.reused = 0
        self._rows: dict[str, dict] = {}
        if reuse and path is not None and path.is_file():
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if entry.get("machine") == machine and entry.get("code") == code:
                        self._rows[entry["key"]] = entry["row"]

    @staticmethod
    def _key(kind: str, key: dict) -> str:
        return json.dumps({"kind": kind, **key}, sort_keys=True, default=str)

    def get(self, kind: str, key: dict, usable=lambda row: True) -> dict | None:
        """The finished run of this kind and key, if there is one and ``usable(row)``."""
        row = self._rows.get(self._key(kind, key))
        if row is None or not usable(row):
            return None
        self.reused += 1
        return row

    def put(self, kind: str, key: dict, row: dict) -> dict:
        """Journal a finished run; returns it stamped with this session."""
        row = dict(row, session=row.get("session", self.session))
        entry = {"key": self._key(kind, key), "machine": self.machine, "code": self.code,
                 "row": row}  # fmt: skip
        self._rows[entry["key"]] = row
        if self.path is None:
            return row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = self.path.is_file() and not self.path.read_bytes().endswith(b"\n")
        with open(self.path, "a") as f:  # one line per run: an append is all or a torn tail
            f.write(("\n" if torn else "") + json.dumps(entry, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return row


# --- shared by the parent and the children ----------------------------------------------------


def set_threads() -> None:
    if os.environ.get(THREADS_ENV):
        import torch

        torch.set_num_threads(int(os.environ[THREADS_ENV]))


def encoded_set(data: str, length: int | None, tokenizer, model):
    """The memory set exactly as ``memlaw train --data DATA [--length L]`` encodes it."""
    from memlaw.data import encode_items, load_items
    from memlaw.models import context_length

    return encode_items(
        load_items(data), tokenizer, length=length, max_context=context_length(model)
    )


def lora_config(model, rank: int):
    """PEFT's LoraConfig of memlaw's adapter: rank, alpha = rank, no dropout, the MLP of the
    layer at 2/3 of the depth (layer 20 of SmolLM2's 30)."""
    from peft import LoraConfig

    from memlaw.adapters import LoraSpec, target_module_names

    return LoraConfig(
        r=rank,
        lora_alpha=rank,
        lora_dropout=0.0,
        target_modules=target_module_names(model, LoraSpec(rank=rank)),
        bias="none",
        task_type="CAUSAL_LM",
    )


def effective_batch(batch_size: int, items: int) -> int:
    return items if batch_size <= 0 or batch_size >= items else batch_size


def certified_now(model, encoded, pad: int) -> tuple[bool, float]:
    """The one certification check: every target token's teacher-forced loss < ln 2."""
    from memlaw.probe import mean_target_loss, teacher_forced

    scores = teacher_forced(model, encoded, pad)
    return all(x < LN2 for s in scores for x in s.nll), mean_target_loss(scores)


def peft_loop(
    model,
    tokenizer,
    encoded,
    *,
    rank: int,
    lr: float,
    batch_size: int,
    seed: int,
    max_epochs: int,
    intervals: tuple[int, ...] = (1,),
    deadline: float | None = None,
    anneal: tuple[int, float] | None = None,
) -> dict:
    """A plain PEFT + torch training loop: the whole model every step, HF's mean loss over the
    target tokens, AdamW, clipping at 1, a new shuffle each epoch. Certification is checked at
    the end of every epoch that is a multiple of an interval still without a stop; the loop
    ends when every interval has one (a certified check), at ``max_epochs`` or at ``deadline``
    (``time.time()``). Checks run in eval mode without gradients and use no random numbers,
    so they do not change the trajectory: one run gives each interval's exact stop.
    ``anneal`` = (patience, floor): memlaw train's schedule (:func:`plateau_schedule`) on the
    epoch's token-weighted loss; None: a constant rate."""
    import torch
    from peft import get_peft_model

    from memlaw.data import collate

    pad = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = get_peft_model(model, lora_config(model, rank))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order_rng = random.Random(seed)
    n = len(encoded)
    batch = effective_batch(batch_size, n)
    scheduler = plateau_schedule(optimizer, lr, *anneal, n, batch) if anneal else None
    stops: dict[int, int | None] = {k: None for k in intervals}
    epoch_seconds: list[float] = []
    checks: list[dict] = []
    steps, stop, epoch = 0, "epoch cap", 0
    for epoch in range(1, max_epochs + 1):
        tick = time.perf_counter()
        model.train()
        order = list(range(n))
        if batch < n:
            order_rng.shuffle(order)
        loss_sum, tokens = 0.0, 0
        for start in range(0, n, batch):
            rows = collate([encoded[i] for i in order[start : start + batch]], pad)
            loss = model(
                input_ids=rows["input_ids"],
                attention_mask=rows["attention_mask"],
                labels=rows["labels"],
            ).loss
            count = int((rows["labels"][:, 1:] != -100).sum())
            loss_sum, tokens = loss_sum + float(loss.detach()) * count, tokens + count
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            steps += 1
        if scheduler is not None:
            scheduler.step(loss_sum / max(tokens, 1))
        epoch_seconds.append(time.perf_counter() - tick)
        due = [k for k, found in stops.items() if found is None and epoch % k == 0]
        if due:
            tick = time.perf_counter()
            ok, target_loss = certified_now(model, encoded, pad)
            checks.append(
                {
                    "epoch": epoch,
                    "seconds": time.perf_counter() - tick,
                    "certified": ok,
                    "target_loss": target_loss,
                }
            )
            for k in due:
                if ok:
                    stops[k] = epoch
        if all(found is not None for found in stops.values()):
            stop = "certified"
            break
        if deadline is not None and time.time() >= deadline:
            stop = "time cap"
            break
    return {
        "model": model,
        "stop": stop,
        "epochs": epoch,
        "steps": steps,
        "batch_size": batch,
        "epoch_seconds": epoch_seconds,
        "checks": checks,
        "stops": stops,
        "trainable_params": sum(p.numel() for p in params),
        "final_lr": optimizer.param_groups[0]["lr"],
    }


def plateau_schedule(
    optimizer, lr: float, patience: int, floor: float, n_items: int, batch_size: int
):
    """memlaw train's schedule (``memlaw.train._Stopper``): halve the rate after ``patience``
    epochs without a 1% (relative) better epoch loss, down to ``lr × floor``; step it with
    each epoch's loss. The recipe's patience (``recipe_schedule``) stands for what memlaw
    train's default waits on this set, where the memlaw under test sizes it per set (at least
    ``recipe.ANNEAL_MIN_UPDATES`` updates)."""
    import torch

    import memlaw.recipe as recipe

    if patience == recipe_schedule()[0] and hasattr(recipe, "anneal_patience"):
        patience = recipe.anneal_patience(n_items, batch_size)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="min",
        factor=0.5,
        patience=patience,
        threshold=0.01,
        threshold_mode="rel",
        min_lr=lr * floor,
    )


def recipe_schedule() -> tuple[int, float]:
    """The anneal patience and floor of memlaw train's default recipe."""
    import memlaw.recipe as recipe

    patience = getattr(recipe, "ANNEAL_PATIENCE", None) or recipe.default_recipe(1).anneal_patience
    return patience, getattr(recipe, "ANNEAL_FLOOR", 1 / 8)


# --- the children: one contender each ---------------------------------------------------------


class Phases:
    """Seconds and counts per named phase of a child."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, seconds: float, count: int = 1) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.counts[name] = self.counts.get(name, 0) + count

    @contextlib.contextmanager
    def phase(self, name: str):
        tick = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - tick)


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="time_to_recall.py _contender")
    parser.add_argument("contender", choices=list(CONTENDERS))
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--length", type=int)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", required=True, help="adapter folder")
    parser.add_argument("--result", required=True, help="result JSON")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-epochs", type=int)
    parser.add_argument("--check-every", type=int, default=1)
    parser.add_argument("--time-cap", type=float)
    parser.add_argument("--anneal-patience", type=int, help="none: a constant rate")
    parser.add_argument("--anneal-floor", type=float, default=1 / 8)
    parser.add_argument("--extra", default="")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    phases = Phases()
    runner = {
        "trl-same": child_trl,
        "trl-defaults": child_trl,
        "peft-loop": child_peft,
        "memlaw-default": child_memlaw,
        "memlaw-fast": child_memlaw,
    }[args.contender]
    result = runner(args, phases)
    result |= {
        "contender": args.contender,
        "t0": PROCESS_START,
        "phases": phases.seconds,
        "phase_counts": phases.counts,
        "t_end": time.time(),
    }
    from memlaw.atomic import atomic_write_text

    atomic_write_text(args.result, json.dumps(result, indent=2, default=str) + "\n")


def child_trl(args, phases: Phases) -> dict:
    import datasets
    import torch
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from memlaw.integrations import MemoryAuditCallback
    from memlaw.models import load_model

    set_threads()
    phases.add("startup", time.time() - PROCESS_START)
    defaults = args.contender == "trl-defaults"
    with phases.phase("model_load"):
        model, tokenizer = load_model(args.model)
    with phases.phase("data"):
        encoded = encoded_set(args.data, args.length, tokenizer, model)
        # prompt-completion rows, tokenized as memlaw tokenizes them: SFTTrainer builds the
        # labels from the completion mask (completion-only loss), so it trains memlaw's tokens
        rows = [
            {
                "input_ids": list(item.input_ids),
                "completion_mask": [0] * len(item.prompt_ids) + [1] * len(item.target_ids),
            }
            for item in encoded
        ]
        dataset = datasets.Dataset.from_list(rows)
    common = dict(
        output_dir=str(Path(args.out).parent / (Path(args.out).name + "-trainer")),
        num_train_epochs=args.max_epochs,
        report_to="none",
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),  # SFTConfig refuses bf16 on a CPU otherwise
        completion_only_loss=True,  # TRL's default for prompt-completion data
        packing=False,
    )
    if defaults:
        settings = common
    else:
        settings = common | dict(
            learning_rate=args.lr,
            per_device_train_batch_size=args.batch_size,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            optim="adamw_torch",
            bf16=False,  # memlaw trains in float32
            activation_checkpointing=False,
            max_length=None,
            save_strategy="no",
            logging_strategy="epoch",
            disable_tqdm=True,
        )
    state = {"stop": None, "tick": None}
    audits: list[dict] = []

    class Before(TrainerCallback):  # runs before the audit callback: start the check's clock
        def on_step_end(self, a, s, control, **kwargs):
            state["tick"] = time.perf_counter()

        on_train_end = on_step_end

    class After(TrainerCallback):  # runs after it: time the check, stop when certified
        def _after(self, s):
            if len(audit.history) > len(audits):
                audits.append(audit.history[-1])
                phases.add("checks", time.perf_counter() - state["tick"])

        def on_step_end(self, a, s, control, **kwargs):
            self._after(s)
            if audits and audits[-1]["step"] == s.global_step:
                if audits[-1]["memlaw/certified_share"] >= 1.0:
                    state["stop"] = "certified"
                    control.should_training_stop = True
            if args.time_cap and time.time() - PROCESS_START >= args.time_cap:
                state["stop"] = state["stop"] or "time cap"
                control.should_training_stop = True
            return control

        def on_train_end(self, a, s, control, **kwargs):
            self._after(s)

    class Anneal(TrainerCallback):  # memlaw train's schedule on the epoch's logged loss
        def __init__(self):
            self.dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
            self.plateau = plateau_schedule(
                self.dummy,
                1.0,
                args.anneal_patience,
                args.anneal_floor,
                len(dataset),
                config.train_batch_size,
            )

        def factor(self, *_) -> float:
            return self.dummy.param_groups[0]["lr"]

        def on_train_begin(self, a, s, control, **kwargs):
            # the Trainer's constant schedule (a LambdaLR) now scales the rate by our factor
            trainer.lr_scheduler.lr_lambdas = [self.factor] * len(trainer.lr_scheduler.lr_lambdas)

        def on_log(self, a, s, control, logs=None, **kwargs):
            if logs and "loss" in logs:  # a training log, once per epoch
                self.plateau.step(float(logs["loss"]))
                for group, base in zip(
                    trainer.optimizer.param_groups, trainer.lr_scheduler.base_lrs, strict=True
                ):
                    group["lr"] = base * self.factor()

    with phases.phase("setup"):
        config = SFTConfig(**settings)
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config(model, args.rank),
        )
        steps_per_epoch = math.ceil(len(dataset) / config.train_batch_size)
        trainer.add_callback(Before())
        audit = MemoryAuditCallback(
            encoded, every=steps_per_epoch * args.check_every, pad_token_id=tokenizer.pad_token_id
        ).attach(trainer)
        trainer.add_callback(After())
        if not defaults and args.anneal_patience:
            trainer.add_callback(Anneal())
    tick = time.perf_counter()
    trainer.train()
    phases.add("training", time.perf_counter() - tick - phases.seconds.get("checks", 0.0))
    with phases.phase("save"):
        trainer.model.save_pretrained(args.out, safe_serialization=True)
    certified = bool(audits) and audits[-1]["memlaw/certified_share"] >= 1.0
    return {
        "certified": certified,
        "stop": "certified" if certified else (state["stop"] or "epoch cap"),
        "epochs": trainer.state.epoch,
        "optimizer_steps": trainer.state.global_step,
        "steps_per_epoch": steps_per_epoch,
        "checks": len(audits),
        "lr": config.learning_rate,
        "final_lr": trainer.optimizer.param_groups[0]["lr"] if trainer.optimizer else None,
        "schedule": "TRL default"
        if defaults
        else (f"anneal (patience {args.anneal_patience})" if args.anneal_patience else "constant"),
        "batch_size": config.train_batch_size,
        "lr_scheduler": getattr(config.lr_scheduler_type, "value", config.lr_scheduler_type),
        "bf16": bool(config.bf16),
        "gradient_checkpointing": bool(
            getattr(config, "activation_checkpointing", None)
            or getattr(config, "gradient_checkpointing", False)
        ),
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "history": [
            {
                "step": e["step"],
                "epoch": e["step"] / steps_per_epoch,
                "certified_share": e["memlaw/certified_share"],
                "target_loss": e["memlaw/target_loss"],
            }
            for e in audits
        ],
    }


def child_peft(args, phases: Phases) -> dict:
    import peft  # noqa: F401  (the imports belong to the startup phase)
    import torch  # noqa: F401

    from memlaw.models import load_model

    set_threads()
    phases.add("startup", time.time() - PROCESS_START)
    with phases.phase("model_load"):
        model, tokenizer = load_model(args.model)
    with phases.phase("data"):
        encoded = encoded_set(args.data, args.length, tokenizer, model)
    run = peft_loop(
        model,
        tokenizer,
        encoded,
        rank=args.rank,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        max_epochs=args.max_epochs,
        intervals=(args.check_every,),
        deadline=PROCESS_START + args.time_cap if args.time_cap else None,
        anneal=(args.anneal_patience, args.anneal_floor) if args.anneal_patience else None,
    )
    phases.add("training", sum(run["epoch_seconds"]), count=run["epochs"])
    phases.add("checks", sum(c["seconds"] for c in run["checks"]), count=len(run["checks"]))
    with phases.phase("save"):
        run["model"].save_pretrained(args.out, safe_serialization=True)
    certified = run["stop"] == "certified"
    return {
        "certified": certified,
        "stop": run["stop"],
        "epochs": run["epochs"],
        "optimizer_steps": run["steps"],
        "checks": len(run["checks"]),
        "lr": args.lr,
        "final_lr": run["final_lr"],
        "schedule": f"anneal (patience {args.anneal_patience})"
        if args.anneal_patience
        else "constant",
        "batch_size": run["batch_size"],
        "trainable_params": run["trainable_params"],
        "history": [
            {"epoch": c["epoch"], "certified": c["certified"], "target_loss": c["target_loss"]}
            for c in run["checks"]
        ],
    }


@contextlib.contextmanager
def timed(module, name: str, phases: Phases, first: str, rest: str | None = None):
    """Time every call of ``module.name`` into phase ``first`` (later calls into ``rest``,
    when given); a name the module lacks is left alone."""
    original = getattr(module, name, None)
    if original is None:
        yield
        return
    calls = []

    def wrapper(*a, **k):
        tick = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            phases.add(first if (rest is None or not calls) else rest, time.perf_counter() - tick)
            calls.append(1)

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


def child_memlaw(args, phases: Phases) -> dict:
    """``memlaw train`` exactly as the CLI runs it (``memlaw.cli.main``), with timing hooks
    around its phases."""
    import memlaw.cli as cli
    import memlaw.train as memlaw_train

    set_threads()
    phases.add("startup", time.time() - PROCESS_START)
    command = ["memlaw", "train", "--model", args.model, "--data", args.data]
    command += ["--rank", str(args.rank), "--seed", str(args.seed), "--out", args.out]
    if args.length:
        command += ["--length", str(args.length)]
    command += shlex.split(args.extra)
    hooks = [
        (cli, "load", "model_load", None),
        (cli, "memory_set", "data", None),
        (memlaw_train, "train", "train_call", None),
        (memlaw_train, "base_target_loss", "base_loss", None),
        # train()'s teacher-forced passes confirm that every item is certified
        (memlaw_train, "teacher_forced", "checks", None),
        (memlaw_train, "choose_forward", "setup", None),
        (memlaw_train, "probe", "final_probe", None),
        (memlaw_train, "save_run", "save", None),
    ]
    code = 0
    with contextlib.ExitStack() as stack:
        for module, name, first, rest in hooks:
            stack.enter_context(timed(module, name, phases, first, rest))
        sys.argv = command
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    seconds = phases.seconds
    inside = sum(seconds.get(k, 0.0) for k in ("base_loss", "setup", "checks", "final_probe"))
    phases.add("training", seconds.pop("train_call", 0.0) - inside)
    phases.counts.pop("train_call", None)
    record_path = Path(args.out) / "record.json"
    if code != 0 or not record_path.is_file():
        return {"certified": False, "stop": f"failed (exit {code})", "command": command}
    record = json.loads(record_path.read_text())
    log = record.get("log", [])
    config = record.get("config", {})
    return {
        "certified": record.get("stop_reason") == "certified",
        "stop": record.get("stop_reason"),
        "epochs": max((e.get("epoch", 1) for e in log), default=0),
        "optimizer_steps": sum(not e.get("skipped") for e in log),
        "steps": record.get("steps"),
        "checks": phases.counts.get("checks", 0),
        "lr": config.get("lr"),
        "batch_size": config.get("batch_size"),
        "method": config.get("method"),
        "forward": config.get("forward"),
        "trainable_params": record.get("trainable_params"),
        "certified_share": record.get("certified_share"),
        "exact_match": record.get("exact_match"),
        "train_seconds": record.get("train_seconds"),
        "command": command,
    }


# --- the parent: data, runs, summaries ---------------------------------------------------------


def run_child(argv: list[str], log_path: Path, timeout: float) -> dict:
    """Run one child to its end; wall time from just before its start to its reaping, its
    peak RSS from ``wait4`` (that process alone)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    reaped: dict = {}
    with open(log_path, "w") as log:
        started_at = time.time()
        tick = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

        def reap() -> None:
            _, status, usage = os.wait4(proc.pid, 0)
            reaped.update(end=time.perf_counter(), status=status, usage=usage)

        waiter = threading.Thread(target=reap, daemon=True)
        waiter.start()
        waiter.join(timeout)
        killed = waiter.is_alive()
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
            waiter.join()
    proc.returncode = os.waitstatus_to_exitcode(reaped["status"])  # reaped here, not by Popen
    return {
        "started_at": started_at,
        "wall_seconds": reaped["end"] - tick,
        "returncode": proc.returncode,
        "killed_at_timeout": killed,
        "peak_rss_mib": reaped["usage"].ru_maxrss / 1024,
        # CPU time of the process: on a shared machine, the wall time's floor
        "cpu_seconds": reaped["usage"].ru_utime + reaped["usage"].ru_stime,
    }


def run_contender(name: str, task: dict, seed: int, args, workdir: Path, journal: Journal) -> dict:
    key = {
        "task": task["key"], "data": task["data"], "length": task["length"], "contender": name,
        "seed": seed, "rank": task["rank"], "lr": task["lr"], "batch": task["batch_size"],
        "anneal": task["anneal"], "max_epochs": task["max_epochs"],
        "check_every": args.check_every, "time_cap": args.time_cap,
        "trl_default_cap": args.trl_default_cap, "timeout": args.timeout,
        "recipe": task["fast_recipe"] if name == "memlaw-fast" else None,
    }  # fmt: skip
    row = journal.get("contender", key)
    if row is None:
        row = journal.put("contender", key, _run_contender(name, task, seed, args, workdir))
    return row


def _run_contender(name: str, task: dict, seed: int, args, workdir: Path) -> dict:
    tag = f"{task['key']}-{name}-seed{seed}"
    out, result = workdir / tag, workdir / f"{tag}.json"
    argv = [sys.executable, str(Path(__file__).resolve()), "_contender", name]
    argv += ["--model", args.model, "--data", str(task["data"]), "--seed", str(seed)]
    argv += ["--rank", str(task["rank"]), "--out", str(out), "--result", str(result)]
    if task["length"]:
        argv += ["--length", str(task["length"])]
    timeout = args.timeout  # a hard limit; the time caps stop a run gracefully in the child
    if name in ("trl-same", "peft-loop", "trl-defaults"):
        argv += ["--max-epochs", str(task["max_epochs"]), "--check-every", str(args.check_every)]
    if name in ("trl-same", "peft-loop"):
        batch = effective_batch(task["batch_size"], task["items"])  # TRL has no "0 = full"
        argv += ["--lr", str(task["lr"]), "--batch-size", str(batch)]
        if args.time_cap:
            argv += ["--time-cap", str(args.time_cap)]
        if task["anneal"]:
            patience, floor = task["anneal"]
            argv += ["--anneal-patience", str(patience), "--anneal-floor", str(floor)]
    if name == "trl-defaults":
        argv += ["--time-cap", str(args.trl_default_cap)]
    if name == "memlaw-fast":
        argv += [f"--extra={task['fast_recipe']}"]
    outcome = run_child(argv, workdir / f"{tag}.log", timeout)
    row = {"task": task["key"], "contender": name, "seed": seed, **outcome}
    if result.is_file():
        child = json.loads(result.read_text())
        phases = dict(child.pop("phases"))
        # startup: from the process's start (the parent's clock) to the end of the imports
        phases["startup"] = child["t0"] - outcome["started_at"] + phases.get("startup", 0.0)
        phases["other"] = outcome["wall_seconds"] - sum(phases.values())
        row |= child | {"phases": phases}
    else:
        row |= {"certified": False, "stop": "failed", "phases": {}}
    if outcome["killed_at_timeout"]:
        row |= {"certified": False, "stop": f"killed at {timeout:.0f} s"}
    elif outcome["returncode"] != 0:
        row |= {"certified": False, "stop": f"failed (exit {outcome['returncode']})"}
    if not row["certified"] or outcome["returncode"] != 0:
        log_text = (workdir / f"{tag}.log").read_text(errors="replace")
        row["log_tail"] = log_text[-3000:]
    row["rank"] = task["fast_rank"] if name == "memlaw-fast" else task["rank"]
    row["adapter_on_disk"] = (out / "adapter_model.safetensors").is_file()
    return row


def spread(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs: list[dict], contenders: list[str]) -> list[dict]:
    reference = {r["seed"]: r for r in runs if r["contender"] == REFERENCE}
    out = []
    for name in contenders:
        rows = [r for r in runs if r["contender"] == name]
        if not rows:
            continue
        ratios = []
        for r in rows:
            ref = reference.get(r["seed"])
            if ref and ref.get("certified"):
                ratios.append(r["wall_seconds"] / ref["wall_seconds"])
        phase_names = {k for r in rows for k in r.get("phases", {})}
        out.append(
            {
                "contender": name,
                "label": CONTENDERS[name],
                "runs": len(rows),
                "certified_runs": sum(bool(r.get("certified")) for r in rows),
                "stops": sorted({str(r.get("stop")) for r in rows}),
                "rank": rows[0].get("rank"),
                "lr": rows[0].get("lr"),
                "batch_size": rows[0].get("batch_size"),
                "trainable_params": rows[0].get("trainable_params"),
                "wall_seconds": spread([r["wall_seconds"] for r in rows]),
                # a run that did not certify gives a lower bound of its time to recall
                "ratio_to_reference": spread(ratios),
                "ratio_is_lower_bound": not all(r.get("certified") for r in rows),
                "epochs": spread([r.get("epochs") for r in rows]),
                "optimizer_steps": spread([r.get("optimizer_steps") for r in rows]),
                "checks": spread([r.get("checks") for r in rows]),
                "peak_rss_mib": spread([r.get("peak_rss_mib") for r in rows]),
                "cpu_seconds": spread([r.get("cpu_seconds") for r in rows]),
                "phases": {
                    k: spread([r["phases"].get(k) for r in rows if "phases" in r])
                    for k in phase_names
                },
            }
        )
    return out


def headline(runs: list[dict], numerator: str = "trl-same") -> dict | None:
    """Per seed: the contender's wall time over memlaw's default's (the issue's ratio)."""
    per_seed = []
    for seed in sorted({r["seed"] for r in runs}):
        num = next((r for r in runs if r["seed"] == seed and r["contender"] == numerator), None)
        ref = next((r for r in runs if r["seed"] == seed and r["contender"] == REFERENCE), None)
        if num and ref and ref.get("certified"):
            per_seed.append(
                {
                    "seed": seed,
                    "ratio": num["wall_seconds"] / ref["wall_seconds"],
                    "lower_bound": not num.get("certified"),
                    # both in one session (a rerun reuses finished runs of earlier ones)
                    "side_by_side": num.get("session") == ref.get("session"),
                }
            )
    if not per_seed:
        return None
    return {
        "numerator": numerator,
        "per_seed": per_seed,
        "median": statistics.median(p["ratio"] for p in per_seed),
    }


# --- the recipe search (in-process) -------------------------------------------------------------


class _TimeCap(Exception):
    def __init__(self, entry):
        super().__init__("time cap")
        self.entry = entry


def search_run(
    base,
    tokenizer,
    encoded,
    *,
    rank,
    batch,
    lr,
    seed,
    cap,
    anneal,
    max_epochs,
    dtype="float32",
    warmup_epochs=0,
) -> dict:
    """One memlaw.train.train run as ``memlaw train`` makes it (method memft; ``anneal``: the
    anneal patience, 0 for a constant rate; ``warmup_epochs``: a linear lr warm-up over that
    many epochs' steps), no final probe; seconds from the call (base-loss pass, LoRA, fast
    path's cache and check, training, confirm passes) to the certified stop."""
    import copy
    import gc

    import memlaw.train as memlaw_train
    from memlaw.adapters import LoraSpec

    model = copy.deepcopy(base)
    config = memlaw_train.TrainConfig(
        method="memft",
        lr=lr,
        batch_size=batch,
        seed=seed,
        epochs=max_epochs,
        anneal_patience=anneal or None,
        lr_warmup_steps=warmup_steps(warmup_epochs, batch, len(encoded)),
    )
    phases = Phases()
    tick = time.perf_counter()

    def on_step(entry, total):
        if cap and time.perf_counter() - tick > cap:
            raise _TimeCap(entry)

    row = {"batch_size": batch, "lr": lr, "rank": rank, "anneal": anneal, "dtype": dtype}
    row |= {"warmup_epochs": warmup_epochs, "warmup_steps": config.lr_warmup_steps}
    row["seed"] = seed
    row["cap_seconds"] = cap if cap and math.isfinite(cap) else None
    with (
        timed(memlaw_train, "base_target_loss", phases, "base_loss"),
        timed(memlaw_train, "teacher_forced", phases, "checks"),
    ):
        try:
            run = memlaw_train.train(
                model, tokenizer, encoded, LoraSpec(rank=rank), config, on_step=on_step,
                final_probe=False,
            )  # fmt: skip
            log, stop = run.log, run.stop_reason
        except _TimeCap as capped:
            log, stop = None, "time cap"
            row |= {"steps": capped.entry.step, "epochs": capped.entry.epoch}
    row["seconds"] = time.perf_counter() - tick
    if log is not None:
        row |= {
            "steps": len(log),
            "epochs": max((e.epoch for e in log), default=0),
            "optimizer_steps": sum(not e.skipped for e in log),
        }
    row |= {
        "stop": stop,
        "certified": stop == "certified",
        "confirm_passes": phases.counts.get("checks", 0),
        "confirm_seconds": phases.seconds.get("checks", 0.0),
    }
    del model
    gc.collect()
    return row


def reusable(row: dict, cap: float | None) -> bool:
    """Whether a journalled search run stands for a run under ``cap``: one that ended on its
    own (certified, epoch cap) within it, or one cut at this cap or a larger one (it would be
    cut again).

    >>> reusable({"stop": "certified", "seconds": 50.0}, 100.0)
    True
    >>> reusable({"stop": "certified", "seconds": 150.0}, 100.0)
    False
    >>> reusable({"stop": "time cap", "cap_seconds": 900.0}, 100.0)
    True
    >>> reusable({"stop": "time cap", "cap_seconds": 90.0}, 100.0)
    False
    """
    cap = cap or math.inf
    if row["stop"] != "time cap":
        return row["seconds"] <= cap
    return (row.get("cap_seconds") or math.inf) >= cap - 1e-6


def warmup_steps(epochs: int, batch: int, items: int) -> int:
    """The optimizer steps of ``epochs`` epochs at ``batch`` items per step (0: the whole set).

    >>> warmup_steps(3, 16, 100), warmup_steps(3, 0, 100), warmup_steps(0, 4, 100)
    (21, 3, 0)
    """
    return epochs * (math.ceil(items / batch) if batch else 1)


def recipe_args(config: dict, default_patience: int) -> str:
    """``memlaw train`` options for a searched configuration.

    >>> config = {"batch_size": 16, "lr": 0.03, "rank": 2, "anneal": 10, "warmup_steps": 21}
    >>> recipe_args(config, 10)
    '--batch-size 16 --lr 0.03 --rank 2 --warmup-steps 21'
    """
    args = f"--batch-size {config['batch_size']} --lr {config['lr']:g} --rank {config['rank']}"
    if config.get("warmup_steps"):
        args += f" --warmup-steps {config['warmup_steps']}"
    if config["anneal"] != default_patience:
        args += f" --anneal-patience {config['anneal']}"
    if config.get("dtype", "float32") != "float32":
        args += f" --dtype {config['dtype']}"
    return args


def search_task(task: dict, args, journal: Journal) -> dict:
    from memlaw.models import load_model
    from memlaw.recipe import default_recipe

    base, tokenizer = load_model(args.model)
    bases = {"float32": base}  # another dtype's base model is loaded when first searched
    encoded = encoded_set(str(task["data"]), task["length"], tokenizer, base)
    n = len(encoded)
    seeds = args.seed_list
    dtypes = [x.strip() for x in args.search_dtypes.split(",") if x.strip()]
    default = default_recipe(n)
    patience = recipe_schedule()[0]
    # batch sizes that differ for this set (1, 4, 16 and full collapse on a small set)
    batches: dict[int, int] = {}
    for b in _ints(args.search_batches):
        batches.setdefault(effective_batch(b, n), 0 if effective_batch(b, n) == n else b)
    lrs = _floats(args.search_lrs)
    multipliers = _ints(args.search_rank_multipliers)
    schedules = {"anneal": patience, "constant": 0}
    wanted = [schedules[x.strip()] for x in args.search_schedules.split(",") if x.strip()]
    warmups = [0, *(w for w in _ints(args.search_warmups) if w)]  # epochs; stage 1: none
    rows: list[dict] = []
    best: list[float] = []

    def key(row: dict) -> tuple:
        key = row["batch_size"], row["lr"], row["rank"], row["anneal"], row["dtype"]
        return (*key, row.get("warmup_epochs", 0))

    def run(batch, lr, rank, anneal, dtype, seed, prune=True, warmup=0) -> dict:
        cap = args.search_cap
        if prune and best and args.search_prune:
            cap = min(cap or math.inf, args.search_prune * min(best))  # cannot be the fastest
        spec = {"task": task["key"], "data": task["data"], "length": task["length"], "batch": batch,
                "lr": lr, "rank": rank, "anneal": anneal, "dtype": dtype, "seed": seed,
                "max_epochs": args.search_max_epochs}  # fmt: skip
        if warmup:  # (runs journalled before warm-up was searched had none)
            spec["warmup_epochs"] = warmup
        row = journal.get("search", spec, usable=lambda r: reusable(r, cap))
        reused = row is not None
        if row is None:
            if dtype not in bases:
                bases[dtype] = load_model(args.model, dtype=dtype)[0]
            row = search_run(
                bases[dtype], tokenizer, encoded, rank=rank, batch=batch, lr=lr, seed=seed,
                cap=cap, anneal=anneal, max_epochs=args.search_max_epochs, dtype=dtype,
                warmup_epochs=warmup,
            )  # fmt: skip
            row = journal.put("search", spec, row)
        rows.append(row)
        if row["certified"]:
            best.append(row["seconds"])
        print(
            f"search {task['key']} batch {batch or 'full'} lr {lr:g} rank {rank} anneal "
            f"{anneal or 'off'} {dtype}"
            + (f" warm-up {warmup}" if warmup else "")
            + f" seed {seed}: {row['stop']} after {row.get('epochs')} epochs, "
            f"{row['seconds']:.1f} s" + (" (journal)" if reused else ""),
            flush=True,
        )
        return row

    def fastest(count: int) -> list[dict]:
        done = sorted((r for r in rows if r["certified"]), key=lambda r: r["seconds"])
        return done[:count]

    first = seeds[0]
    # stage 1: batch × lr at the benchmark rank and the first schedule, the default recipe
    # first (its time sets the pruning cap)
    default_batch = 0 if effective_batch(default.batch_size, n) == n else default.batch_size
    pairs = [(b, lr) for b in batches.values() for lr in lrs]
    pairs.sort(key=lambda p: (p[0] != default_batch, abs(math.log(p[1] / default.lr))))
    for batch, lr in pairs:
        run(batch, lr, task["rank"], wanted[0], dtypes[0], first)
    # stage 2: larger ranks, the other schedules and dtypes, for the best batch/lr pairs
    for top in fastest(args.search_top):
        for m in multipliers:
            if m != 1:
                run(top["batch_size"], top["lr"], task["rank"] * m, wanted[0], dtypes[0], first)
        for anneal in wanted[1:]:
            run(top["batch_size"], top["lr"], task["rank"], anneal, dtypes[0], first)
        for dtype in dtypes[1:]:
            run(top["batch_size"], top["lr"], task["rank"], wanted[0], dtype, first)
        for warmup in warmups[1:]:
            run(top["batch_size"], top["lr"], task["rank"], wanted[0], dtypes[0], first,
                warmup=warmup)  # fmt: skip
    # stage 3: the fastest configurations on the other seeds, unpruned (robustness)
    for config in fastest(args.search_finalists):
        *setting, warmup = key(config)
        for seed in seeds[1:]:
            run(*setting, seed, prune=False, warmup=warmup)
    configs = []
    for k in dict.fromkeys(key(r) for r in rows):
        runs = [r for r in rows if key(r) == k]
        configs.append(
            {
                "batch_size": k[0],
                "lr": k[1],
                "rank": k[2],
                "anneal": k[3],
                "dtype": k[4],
                "warmup_epochs": k[5],
                "warmup_steps": runs[0].get("warmup_steps", 0),
                "seeds_run": len(runs),
                "seeds_certified": sum(r["certified"] for r in runs),
                "robust": len(runs) == len(seeds) and all(r["certified"] for r in runs),
                "seconds": spread([r["seconds"] for r in runs]),
                "epochs": spread([r.get("epochs") for r in runs]),
                "optimizer_steps": spread([r.get("optimizer_steps") for r in runs]),
                "confirm_passes": spread([r["confirm_passes"] for r in runs]),
                "stops": sorted({r["stop"] for r in runs}),
            }
        )
    robust = [c for c in configs if c["robust"]]
    winner = min(robust, key=lambda c: (c["seconds"]["median"], c["rank"]), default=None)
    result = {
        "items": n,
        "length": sum(len(e.target_ids) for e in encoded),
        "method": "memft",
        "default_anneal_patience": patience,
        "runs": rows,
        "configs": configs,
        "winner": winner,
        "recipe": recipe_args(winner, patience) if winner else None,
        "note": "schedules: memlaw train's anneal on plateau or a constant rate; a linear lr "
        "warm-up (memlaw train --warmup-steps) over --search-warmups epochs is tried for the "
        "best batch/lr pairs",
    }
    intervals = tuple(_ints(args.search_check_every))
    if intervals:
        result["check_interval"] = check_interval_study(
            base, tokenizer, encoded, task, intervals, args, journal
        )
    return result


def study_task(task: dict, args, journal: Journal) -> dict:
    """The check-interval study alone (``--check-interval-only``), at the task's recipe, with
    no recipe search before it."""
    from memlaw.models import load_model

    base, tokenizer = load_model(args.model)
    encoded = encoded_set(str(task["data"]), task["length"], tokenizer, base)
    intervals = tuple(_ints(args.search_check_every))
    return check_interval_study(base, tokenizer, encoded, task, intervals, args, journal)


def check_interval_study(base, tokenizer, encoded, task, intervals, args, journal) -> dict:
    """For a loop whose certification check is a pass of its own (a Trainer callback, a plain
    loop), what checking every k epochs costs: from one plain PEFT run per seed, checked every
    epoch until each interval found its stop, the exact stop epoch per interval and its time
    (training epochs up to it + its checks at the median check time)."""
    import copy
    import gc

    per_seed = []
    for seed in args.seed_list:
        spec = {"task": task["key"], "data": task["data"], "length": task["length"],
                "rank": task["rank"], "lr": task["lr"], "batch": task["batch_size"], "seed": seed,
                "anneal": task["anneal"], "intervals": list(intervals), "time_cap": args.time_cap,
                "max_epochs": args.search_max_epochs or task["max_epochs"]}  # fmt: skip
        done = journal.get("check_interval", spec)
        if done is not None:
            per_seed.extend(done["rows"])
            continue
        seed_rows = []
        run = peft_loop(
            copy.deepcopy(base),
            tokenizer,
            encoded,
            rank=task["rank"],
            lr=task["lr"],
            batch_size=task["batch_size"],
            seed=seed,
            max_epochs=args.search_max_epochs or task["max_epochs"],
            intervals=intervals,
            deadline=time.time() + args.time_cap if args.time_cap else None,  # the baselines'
            anneal=task["anneal"],
        )
        check_s = statistics.median(c["seconds"] for c in run["checks"]) if run["checks"] else 0
        for k in intervals:
            stop = run["stops"][k]
            seed_rows.append(
                {
                    "seed": seed,
                    "every": k,
                    "certified": stop is not None,
                    "epochs": stop,
                    "checks": stop // k if stop else None,
                    "seconds": sum(run["epoch_seconds"][:stop]) + (stop // k) * check_s
                    if stop
                    else None,
                    "check_seconds": check_s,
                }
            )
        print(f"check-interval study {task['key']} seed {seed}: stops {run['stops']}", flush=True)
        journal.put("check_interval", spec, {"rows": seed_rows})
        per_seed.extend(seed_rows)
        del run
        gc.collect()
    rows = []
    for k in intervals:
        mine = [r for r in per_seed if r["every"] == k]
        rows.append(
            {
                "every": k,
                "certified_runs": sum(r["certified"] for r in mine),
                "runs": len(mine),
                "epochs": spread([r["epochs"] for r in mine]),
                "checks": spread([r["checks"] for r in mine]),
                "seconds": spread([r["seconds"] for r in mine]),
                "check_seconds": spread([r["check_seconds"] for r in mine]),
            }
        )
    return {
        "loop": "plain PEFT + torch, SFT",
        "schedule": f"anneal (patience {task['anneal'][0]})" if task["anneal"] else "constant",
        "lr": task["lr"],
        "batch_size": task["batch_size"],
        "rank": task["rank"],
        "per_seed": per_seed,
        "rows": rows,
    }


# --- tables -------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def fmt(s: dict | None, digits: int = 1, lower_bound: bool = False) -> str:
    if not s:
        return "–"
    prefix = "≥ " if lower_bound else ""
    text = f"{prefix}{s['median']:.{digits}f}"
    if s["max"] - s["min"] > 10 ** -(digits + 1):
        text += f" ({s['min']:.{digits}f}–{s['max']:.{digits}f})"
    return text


def print_task(task: dict) -> None:
    print(
        f"\n### {task['name']} — {task['source']}, {task['items']} items, ℓ = {task['length_tokens']}"
    )
    schedule = f"halved on a {task['anneal'][0]}-epoch plateau" if task["anneal"] else "constant"
    print(
        f"LoRA rank {task['rank']} (from {task.get('rank_from', '--rank')}) on the MLP of layer "
        f"20 (memlaw-fast: rank {task['fast_rank']}); "
        f"trl-same and peft-loop: lr {task['lr']:g} {schedule}, batch "
        f"{task['batch_size'] or 'full'}, ≤ {task['max_epochs']} epochs or {task['time_cap']:g} s, "
        f"checked every {task['check_every']} epoch(s); trl-defaults stopped at "
        f"{task['trl_default_cap']:g} s; memlaw-fast: `{task['fast_recipe'] or '–'}`; seeds "
        f"{task['seeds']}\n"
    )
    print(
        "| contender | rank | certified | wall s, median (min–max) | × memlaw default | epochs "
        "| optimizer steps | checks | peak RSS MiB | stopped by |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in task["summary"]:
        print(
            f"| {s['label']} | {s['rank']} | {s['certified_runs']}/{s['runs']} "
            f"| {fmt(s['wall_seconds'], 1, s['certified_runs'] < s['runs'])} "
            f"| {fmt(s['ratio_to_reference'], 2, s['ratio_is_lower_bound'])} "
            f"| {fmt(s['epochs'], 1)} | {fmt(s['optimizer_steps'], 0)} | {fmt(s['checks'], 0)} "
            f"| {fmt(s['peak_rss_mib'], 0)} | {', '.join(s['stops'])} |"
        )
    print("\nFixed costs and training, seconds (median over seeds):\n")
    print("| contender | " + " | ".join(label for _, label in PHASES) + " |")
    print("|---|" + "---|" * len(PHASES))
    for s in task["summary"]:
        cells = [fmt(s["phases"].get(key), 1).split(" (")[0] for key, _ in PHASES]
        print(f"| {s['label']} | " + " | ".join(cells) + " |")
    if task.get("headline"):
        h = task["headline"]
        seeds = ", ".join(
            f"{'≥ ' if p['lower_bound'] else ''}{p['ratio']:.2f}"
            + ("" if p.get("side_by_side", True) else " (two sessions)")
            for p in h["per_seed"]
        )
        print(
            f"\nTRL SFTTrainer (same recipe) ÷ memlaw train (defaults), wall time: "
            f"{h['median']:.2f}× median (per seed: {seeds}); the issue's target is ≥ 3×."
        )
    trl_default = [r for r in task["runs"] if r["contender"] == "trl-defaults" and r.get("history")]
    for r in trl_default:
        at3 = [h for h in r["history"] if abs(h["epoch"] - 3) < 1e-9]  # TRL's default budget
        if at3:
            print(
                f"TRL defaults, seed {r['seed']}, after TRL's default 3 epochs: certified share "
                f"{at3[-1]['certified_share']:.2f}, target loss {at3[-1]['target_loss']:.3f}."
            )


def print_search(key: str, search: dict) -> None:
    print(f"\n### Recipe search, {key} ({search['items']} items, ℓ = {search['length']})")
    print(f"(from {search['from']})\n" if search.get("from") else "")
    print(
        "| batch | lr | schedule | rank | dtype | certified seeds "
        "| s to certified, median (min–max) | epochs | optimizer steps | confirm passes "
        "| stopped by |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    winner = search.get("winner")
    for c in sorted(search["configs"], key=lambda c: (not c["robust"], _median(c["seconds"]))):
        mark = " **(chosen)**" if c == winner else ""
        schedule = f"anneal ({c['anneal']})" if c["anneal"] else "constant"
        if c.get("warmup_epochs"):
            schedule += f", warm-up {c['warmup_epochs']} ep"
        print(
            f"| {c['batch_size'] or 'full'} | {c['lr']:g} | {schedule} | {c['rank']}{mark} "
            f"| {c.get('dtype', 'float32')} | {c['seeds_certified']}/{c['seeds_run']} "
            f"| {fmt(c['seconds'], 1)} "
            f"| {fmt(c['epochs'], 0)} | {fmt(c['optimizer_steps'], 0)} "
            f"| {fmt(c['confirm_passes'], 0)} | {', '.join(c['stops'])} |"
        )
    print(f"\nfastest robust recipe: `{search['recipe'] or 'none certified on every seed'}`")
    print(f"({search['note']})")
    if search.get("check_interval"):
        print_check_interval(search["check_interval"])


def print_check_interval(study: dict) -> None:
    print(
        f"\nCertification check interval, {study['loop']} (lr {study['lr']:g} "
        f"{study['schedule']}, batch {study['batch_size'] or 'full'}, rank {study['rank']}):\n"
    )
    print("| check every (epochs) | certified | epochs | checks | s to certified | s per check |")
    print("|---|---|---|---|---|---|")
    for r in study["rows"]:
        print(
            f"| {r['every']} | {r['certified_runs']}/{r['runs']} | {fmt(r['epochs'], 0)} "
            f"| {fmt(r['checks'], 0)} | {fmt(r['seconds'], 1)} | {fmt(r['check_seconds'], 2)} |"
        )


def _median(s: dict | None) -> float:
    return s["median"] if s else math.inf


# --- main -----------------------------------------------------------------------------------------


def build_tasks(args, workdir: Path) -> list[dict]:
    tasks = []
    for key in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        if key == "pb":
            if args.generate_phonebook:
                from memlaw.data import generate_phonebook, save_items

                data = workdir / f"phonebook-{args.generate_phonebook}.jsonl"
                save_items(generate_phonebook(args.generate_phonebook, seed=0), data)
                source = f"generated phonebook, {args.generate_phonebook} entries"
            else:
                data = Path(args.phonebook_file)
                source = data.name
            name, length, rank = "PhoneBook", None, args.rank
            rank_from = "--rank"
        elif key == "lc":
            data = Path(args.long_file)
            name, length, rank = "Long-Context", args.long_length, args.long_rank
            rank_from = "--long-rank (no law plans text)"
            source = f"{data.name}, first {length} target tokens"
        else:
            raise SystemExit(f"unknown task '{key}': use pb and/or lc")
        if not data.is_file():
            raise SystemExit(f"{name}: data file '{data}' not found (see --help)")
        tasks.append(
            {"key": key, "name": name, "data": str(data), "source": source, "length": length,
             "rank": rank, "rank_from": rank_from}
        )  # fmt: skip
    return tasks


def resolve_recipe(task: dict, tokenizer, args) -> None:
    """Items and ℓ as memlaw encodes them, and the baselines' recipe: memlaw's default recipe
    for the set's size (lr, batch, epoch cap) unless given on the command line."""
    from memlaw.data import encode_items, load_items
    from memlaw.recipe import default_recipe

    encoded = encode_items(load_items(task["data"]), tokenizer, length=task["length"])
    n = len(encoded)
    recipe = default_recipe(n)
    batch = args.batch_size if args.batch_size is not None else recipe.batch_size
    task |= {
        "items": n,
        "length_tokens": sum(len(e.target_ids) for e in encoded),
        "lr": args.lr if args.lr is not None else recipe.lr,
        "batch_size": 0 if effective_batch(batch, n) == n else batch,  # 0: the whole set
        "max_epochs": args.max_epochs or recipe.max_epochs,
        "anneal": recipe_schedule() if args.baseline_schedule == "anneal" else None,
    }


def planned_rank(task: dict, model, tokenizer, model_name: str) -> tuple[int, str]:
    """The smallest rank that certifies the task's set by ``memlaw plan`` with the model's
    shipped law (the issue's "same rank for every contender"), and where it came from."""
    from memlaw.errors import MemlawError
    from memlaw.law import MemoryLaw, reference_law_path
    from memlaw.plan import measure_memory_set, plan

    try:
        law = MemoryLaw.load(reference_law_path(model_name))
        memory = measure_memory_set(
            model, tokenizer, encoded_set(task["data"], task["length"], tokenizer, model)
        )
        result = plan(law, memory, model=model_name, modules="mlp")
    except MemlawError as error:
        raise SystemExit(f"{task['name']}: no rank planned ({error}); give --rank") from None
    if result.certifying_rank is None:
        raise SystemExit(f"{task['name']}: the law plans no certifying rank; give --rank")
    return result.certifying_rank, f"memlaw plan ({law.describe()})"


def previous_search(path: Path) -> dict:
    """The recipe search of an earlier run's JSON (a search can run on its own first:
    ``--search --contenders ""``)."""
    try:
        search = json.loads(path.read_text()).get("search") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return search if isinstance(search, dict) else {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", default="pb,lc", help="pb (PhoneBook) and/or lc (Long-Context)")
    parser.add_argument("--phonebook-file", default=str(BENCHMARKS / "phonebook" / "PB1000.jsonl"))
    parser.add_argument(
        "--generate-phonebook",
        type=int,
        metavar="N",
        help="a generated phonebook of N entries instead of --phonebook-file",
    )
    parser.add_argument(
        "--long-file",
        default=str(BENCHMARKS / "long_context" / "r20.jsonl"),
        help="Long-Context file (default r20, as in bench/memft_vs_sft.py; r100 is all random)",
    )
    parser.add_argument("--long-length", type=int, default=512, help="Long-Context ℓ")
    parser.add_argument(
        "--rank",
        type=int,
        help="LoRA rank, PhoneBook (default: the smallest certifying rank memlaw plan gives "
        "from the model's shipped law, rank 1 for PB1000)",
    )
    parser.add_argument(
        "--long-rank",
        type=int,
        default=8,
        help="LoRA rank, Long-Context (no law plans text: a guess until a pilot finds the "
        "smallest certifying rank)",
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--contenders", default=",".join(CONTENDERS), help="comma-separated; empty: search only"
    )
    parser.add_argument("--lr", type=float, help="baselines' lr (default: memlaw's recipe)")
    parser.add_argument(
        "--batch-size", type=int, help="baselines' batch, 0 = full (default: memlaw's recipe)"
    )
    parser.add_argument(
        "--max-epochs", type=int, help="baselines' epoch budget (default: memlaw's cap, 400)"
    )
    parser.add_argument("--check-every", type=int, default=1, help="baselines' check, epochs")
    parser.add_argument(
        "--baseline-schedule",
        choices=("anneal", "constant"),
        default="anneal",
        help="trl-same and peft-loop: memlaw's default schedule (halve lr on a plateau) or none",
    )
    parser.add_argument(
        "--time-cap",
        type=float,
        default=3600.0,
        help="trl-same and peft-loop stop here, seconds from their start (0: none)",
    )
    parser.add_argument(
        "--trl-default-cap", type=float, default=600.0, help="seconds for trl-defaults"
    )
    parser.add_argument("--timeout", type=float, default=5400.0, help="hard limit per run, seconds")
    parser.add_argument("--fast-recipe", help="memlaw train options for memlaw-fast, PhoneBook")
    parser.add_argument("--long-fast-recipe", help="the same for Long-Context")
    parser.add_argument("--search", action="store_true", help="search the recipe first")
    parser.add_argument("--search-batches", default="1,4,16,0", help="0 = full batch")
    parser.add_argument("--search-lrs", default="0.003,0.01,0.03")
    parser.add_argument("--search-rank-multipliers", default="1,2,4")
    parser.add_argument(
        "--search-top", type=int, default=2, help="batch/lr pairs given ranks ×2, ×4"
    )
    parser.add_argument("--search-finalists", type=int, default=3, help="configs run on every seed")
    parser.add_argument(
        "--search-cap", type=float, default=900.0, help="seconds per search run (0: none)"
    )
    parser.add_argument(
        "--search-prune",
        type=float,
        default=2.0,
        help="cap a first-seed run at this many times the fastest certified one (0: never)",
    )
    parser.add_argument(
        "--search-max-epochs", type=int, help="epoch cap per search run (default: memlaw's, 400)"
    )
    parser.add_argument(
        "--search-schedules",
        default="anneal,constant",
        help="memlaw train's anneal on plateau and/or a constant rate (the first: stage 1)",
    )
    parser.add_argument(
        "--search-warmups",
        default="3",
        help="lr warm-up lengths (epochs) tried for the best batch/lr pairs; empty: none",
    )
    parser.add_argument(
        "--search-dtypes",
        default="float32,bfloat16",
        help="base model dtypes (the first: stage 1; bfloat16 is fast on CPUs with AMX)",
    )
    parser.add_argument(
        "--search-check-every",
        default="1,2,4",
        help="check intervals (epochs) studied on the plain PEFT loop; empty: skip",
    )
    parser.add_argument(
        "--check-interval-only",
        action="store_true",
        help="only the check-interval study (--search-check-every), no search, no contenders",
    )
    parser.add_argument("--threads", type=int, help="torch threads per run (default: torch's)")
    parser.add_argument("--workdir", type=Path, help="adapters and logs (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS / "time_to_recall.json")
    parser.add_argument(
        "--journal",
        type=Path,
        help="finished runs, reused by a rerun on the same machine kind and code "
        "(default: next to --out, <name>-runs.jsonl)",
    )
    parser.add_argument(
        "--no-reuse", action="store_true", help="run everything again (still journalled)"
    )
    args = parser.parse_args(argv)
    if args.check_interval_only and not _ints(args.search_check_every):
        parser.error("--check-interval-only needs intervals: give --search-check-every, e.g. 1,2,4")
    args.journal = args.journal or args.out.with_name(f"{args.out.stem}-runs.jsonl")
    args.seed_list = _ints(args.seeds)
    if args.threads:
        os.environ[THREADS_ENV] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    set_threads()
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    if args.check_interval_only:
        contenders = []
    for name in contenders:
        if name not in CONTENDERS:
            raise SystemExit(f"unknown contender '{name}': use {', '.join(CONTENDERS)}")
    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="time_to_recall-"))
    workdir.mkdir(parents=True, exist_ok=True)
    previous_out = args.out if args.out.is_file() else None

    import torch

    started = time.perf_counter()
    from memlaw.models import load_model

    tasks = build_tasks(args, workdir)
    journal = Journal(
        args.journal, machine_id(), code_id(), session=time.strftime("%Y-%m-%dT%H:%M:%S"),
        reuse=not args.no_reuse,
    )  # fmt: skip
    model, tokenizer = load_model(args.model)
    for task in tasks:
        resolve_recipe(task, tokenizer, args)
        if task["rank"] is None:
            task["rank"], task["rank_from"] = planned_rank(task, model, tokenizer, args.model)
        task |= {
            "seeds": args.seed_list,
            "time_cap": args.time_cap,
            "check_every": args.check_every,
            "trl_default_cap": args.trl_default_cap,
        }
    del model  # each contender loads its own, in its own process
    report = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": int(os.environ.get(THREADS_ENV) or torch.get_num_threads()),
            "torch": torch.__version__,
            "kind": journal.machine,
        },
        "code": journal.code,
        "session": journal.session,
        "model": args.model,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "contenders": {k: CONTENDERS[k] for k in contenders},
        "search": {},
        "check_interval": {},
        "tasks": [],
    }

    from memlaw.atomic import atomic_write_text

    def write() -> None:
        report["wall_seconds"] = time.perf_counter() - started
        report["journal"] = {"path": str(args.journal), "runs_reused": journal.reused}
        atomic_write_text(args.out, json.dumps(report, indent=2, default=str) + "\n")

    if args.check_interval_only:
        for task in tasks:
            report["check_interval"][task["key"]] = study_task(task, args, journal)
            write()
    elif args.search:
        for task in tasks:
            report["search"][task["key"]] = search_task(task, args, journal)
            write()
    elif previous_out:
        for key, search in previous_search(previous_out).items():
            if key in {t["key"] for t in tasks}:
                report["search"][key] = search | {"from": f"an earlier run ({previous_out})"}
    for task in tasks:
        explicit = args.fast_recipe if task["key"] == "pb" else args.long_fast_recipe
        search = report["search"].get(task["key"], {})
        task["fast_recipe"] = explicit if explicit is not None else search.get("recipe")
        task["fast_recipe_from"] = (
            "--fast-recipe" if explicit is not None else search.get("from", "this run's search")
        )
        fast_rank = task["rank"]
        if task["fast_recipe"]:
            tokens = shlex.split(task["fast_recipe"])
            for flag in ("--rank", "-r"):
                if flag in tokens and tokens.index(flag) + 1 < len(tokens):
                    fast_rank = int(tokens[tokens.index(flag) + 1])
        task["fast_rank"] = fast_rank
    for task in tasks:
        names = [c for c in contenders if c != "memlaw-fast" or task["fast_recipe"] is not None]
        if len(names) < len(contenders):
            print(
                f"{task['name']}: no fast recipe (give --fast-recipe or --search): memlaw-fast skipped"
            )
        entry = dict(task, runs=[])
        report["tasks"].append(entry)
        for index, seed in enumerate(args.seed_list):
            shift = index % max(len(names), 1)  # rotate the order from seed to seed
            for name in names[shift:] + names[:shift]:
                row = run_contender(name, task, seed, args, workdir, journal)
                entry["runs"].append(row)
                print(
                    f"{task['name']} seed {seed} {name}: {row['stop']}, {row['wall_seconds']:.1f} s, "
                    f"{row.get('epochs')} epochs, peak RSS {row['peak_rss_mib']:.0f} MiB",
                    flush=True,
                )
                entry["summary"] = summarize(entry["runs"], names)
                entry["headline"] = headline(entry["runs"])
                write()
    write()
    for key, search in report["search"].items():
        print_search(key, search)
    for key, study in report["check_interval"].items():
        print(f"\n### {key}")
        print_check_interval(study)
    for task in report["tasks"]:
        if task.get("summary"):
            print_task(task)
    print(
        f"\nwall time {report['wall_seconds']:.0f} s; JSON: {args.out}; "
        f"{journal.reused} runs reused from {args.journal}"
    )
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_contender":
        child_main(sys.argv[2:])
    else:
        main()
