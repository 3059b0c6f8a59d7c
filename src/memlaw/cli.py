"""The ``memlaw`` command line: a thin layer over the library.

Bad input ends with a one-line ``error: ...`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import shutil
import sys
import time
import typing
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from typer.models import OptionInfo

from memlaw.errors import MemlawError, check_integer, check_number, expected_failure
from memlaw.recipe import (
    ANNEAL_MIN_UPDATES,
    ANNEAL_PATIENCE,
    LARGE_BATCH,
    LARGE_BATCH_LEARNING_RATE,
    LARGE_BATCH_MAX_UPDATES,
    LEARNING_RATE,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Memorize data exactly with LoRA: MemFT, token-level recall certificates, memory laws.",
)
console = Console()
err_console = Console(stderr=True)

# --- options shared by several commands --------------------------------------------------------

ModelOption = typer.Option(
    "smollm2-135m",
    "--model",
    "-m",
    help="Built-in name (smollm2-135m, tiny), local folder or Hugging Face id.",
)
DbOption = typer.Option(Path("sweep.db"), "--db", help="Sweep database (SQLite).")
TauOption = typer.Option(0.5, "--tau", help="Recall boundary: a token is certified when p > tau.")
DtypeOption = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16.")
LrOption = typer.Option(
    None,
    "--lr",
    help=f"AdamW learning rate (default: the recipe's, {LARGE_BATCH_LEARNING_RATE:g} for batches "
    f"of {LARGE_BATCH} items with at most {LARGE_BATCH_MAX_UPDATES} updates per epoch, else "
    f"{LEARNING_RATE:g}).",
)
BatchSizeOption = typer.Option(
    None,
    "--batch-size",
    help="Items per step (0: the whole set; default: the recipe's, about 6 steps per epoch, "
    "4 to 16 items).",
)
AnnealOption = typer.Option(
    None,
    "--anneal-patience",
    help="Halve the rate after this many epochs without a 1% better loss (down to lr/8); a "
    "plateau there (no better loss and no more items certified) ends the run (default: the "
    f"recipe's, {ANNEAL_PATIENCE} epochs and at least {ANNEAL_MIN_UPDATES} updates, so one "
    f"long document waits {ANNEAL_MIN_UPDATES} epochs; 0: a constant rate, and a sweep stops "
    "on --plateau-window).",
)


def anneal_settings(patience: int | None) -> tuple[int | None, int]:
    """``--anneal-patience`` as (epochs, at least this many updates): the recipe's when not
    given, exactly N epochs when given, (None, 0) for 0 (a constant rate).

    >>> [anneal_settings(p) for p in (None, 3, 0)]
    [(10, 60), (3, 0), (None, 0)]
    """
    check_integer(patience, "--anneal-patience", low=0, optional=True)
    if patience is None:
        return ANNEAL_PATIENCE, ANNEAL_MIN_UPDATES
    return patience or None, 0


def out_option(default: str, help: str) -> Any:
    """--out/-o: the path a command writes."""
    return typer.Option(Path(default), "--out", "-o", help=help)


def law_option(help: str) -> Any:
    """--law: a fitted law JSON a command reads."""
    return typer.Option(None, "--law", help=help)


def option(default: Any, *names: str, help: str | None = None) -> Any:
    """A field of an option group (see :func:`with_option_groups`): its default, and the typer
    option that sets it, made from ``default``, ``names`` and ``help`` (or given whole, as
    ``option(TauOption)``)."""
    info = default if isinstance(default, OptionInfo) else typer.Option(default, *names, help=help)
    return dataclasses.field(default=info.default, metadata={"option": info})


@dataclass(frozen=True)
class MemorySetOptions:
    """The memory set of audit, probe and train: a data file or a generator, and its encoding."""

    data: Path | None = option(
        None,
        "--data",
        "-d",
        help="Memory set: .jsonl (prompt/target, query/target or question/matching) or a text file.",
    )
    generate: str | None = option(
        None,
        "--generate",
        "-g",
        help="Generated memory set: phonebook:N, random:LENGTH or noisy:LENGTH:FRACTION.",
    )
    length: int | None = option(
        None, "--length", "-l", help="Keep only the first LENGTH target tokens of the set."
    )
    data_seed: int = option(0, "--data-seed", help="Seed of the generator.")
    chat_template: bool = option(
        False, "--chat-template", help="Wrap each prompt in the tokenizer's chat template."
    )
    separator: str = option(
        "",
        "--separator",
        help="Text ending every prompt (e.g. ' '). Prompt and target are joined as token ids "
        "with nothing between them: 'Name:' + '555' is learned as 'Name:555'. Probe with the "
        "same value.",
    )

    def check(self) -> None:
        """The options, before any model loads."""
        if (self.data is None) == (self.generate is None):
            raise MemlawError("give exactly one of --data FILE or --generate SPEC")
        if self.data is not None:
            _check_input_file(self.data, "--data")
        check_integer(self.length, "--length", optional=True)
        check_integer(self.data_seed, "--data-seed", low=0)


@dataclass(frozen=True)
class RuntimeOptions:
    """Where and how the model runs: the keywords of :func:`memlaw.models.load_model`."""

    dtype: str = option(DtypeOption)
    device: str = option("cpu", "--device", help="cpu or cuda.")
    trust_remote_code: bool = option(
        False, "--trust-remote-code", help="Allow a Hub model's own code to run (off by default)."
    )

    def check(self) -> None:
        """--dtype and --device, before anything loads."""
        from memlaw.models import resolve_device, resolve_dtype

        resolve_dtype(self.dtype)
        resolve_device(self.device)


def with_option_groups(command: Callable) -> Callable:
    """Let ``command`` take a group of options (a dataclass of :func:`option` fields,
    such as :class:`MemorySetOptions`) as one parameter: typer sees the group's options in
    that parameter's place, and the command receives them as one dataclass."""
    signature = inspect.signature(command, eval_str=True)
    groups = {
        name: parameter.annotation
        for name, parameter in signature.parameters.items()
        if dataclasses.is_dataclass(parameter.annotation)
    }
    parameters = []
    for name, parameter in signature.parameters.items():
        if name not in groups:
            parameters.append(parameter)
            continue
        hints = typing.get_type_hints(groups[name])
        parameters += [
            parameter.replace(name=f.name, annotation=hints[f.name], default=f.metadata["option"])
            for f in dataclasses.fields(groups[name])
        ]

    @functools.wraps(command)
    def run(**options: Any) -> Any:
        for name, group in groups.items():
            fields = dataclasses.fields(group)
            options[name] = group(**{field.name: options.pop(field.name) for field in fields})
        return command(**options)

    run.__signature__ = signature.replace(parameters=parameters)
    return run


# --- loading -----------------------------------------------------------------------------------


def _quiet_transformers() -> None:
    """Keep the terminal for memlaw's own output: no library progress bars or deprecation noise."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Could not find a config file")
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hub_logging.set_verbosity_error()


def load(model: str, runtime: RuntimeOptions = RuntimeOptions()):
    from memlaw.models import load_model

    _quiet_transformers()
    with console.status(f"loading {model}…"):
        return load_model(model, **dataclasses.asdict(runtime))


def memory_set(model, tokenizer, memory: MemorySetOptions):
    """The memory set the options name, encoded for ``model`` (checked by ``memory.check()``)."""
    from memlaw.data import encode_items, generate_items, load_items
    from memlaw.models import context_length

    if memory.data is not None:
        items = load_items(memory.data)
    else:
        items = generate_items(memory.generate, tokenizer, memory.data_seed)
    return encode_items(
        items,
        tokenizer,
        chat_template=memory.chat_template,
        length=memory.length,
        max_context=context_length(model),
        separator=memory.separator,
    )


def adapted_model_and_data(
    model: str,
    adapter: Path | None,
    memory: MemorySetOptions,
    tau: float,
    runtime: RuntimeOptions,
):
    """The model (with its adapter, if any), tokenizer and encoded memory set that probe and
    audit look at; bad options and a broken adapter fail before anything loads."""
    from memlaw.adapters import check_adapter_files, load_adapter

    check_number(tau, "--tau", low=0, high=1, low_open=True, high_open=True)
    memory.check()
    runtime.check()
    if adapter is not None:
        check_adapter_files(adapter)
    base, tokenizer = load(model, runtime)
    encoded = memory_set(base, tokenizer, memory)
    target = load_adapter(base, adapter, model_name=model) if adapter else base
    return target, tokenizer, encoded


def _check_input_file(path: Path, option: str) -> None:
    if not path.exists():
        raise MemlawError(f"{option} file '{path}' does not exist")
    if not path.is_file():
        raise MemlawError(f"{option} '{path}' is not a file")


def _check_not_an_input(out: Path, option: str, inputs: dict[str, Path | None]) -> None:
    """An output must never land on one of the command's inputs."""
    for name, path in inputs.items():
        if path is not None and Path(path).exists() and out.resolve() == Path(path).resolve():
            raise MemlawError(f"{option} '{out}' is the {name} input: give another path")


def _int_list(text: str, option: str, minimum: int | None = 1) -> tuple[int, ...]:
    """Comma-separated integers from an option, each at least ``minimum`` (None: any)."""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise MemlawError(f"{option} must be comma-separated integers, got '{text}'") from None
    if not values:
        raise MemlawError(f"{option} needs at least one integer, got '{text}'")
    if minimum is not None and any(v < minimum for v in values):
        wanted = "positive integers" if minimum == 1 else f"integers ≥ {minimum}"
        raise MemlawError(f"{option} must be {wanted}, got '{text}'")
    return values


# --- output ------------------------------------------------------------------------------------


def _print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2))


def _table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[str]], *, label: bool
) -> Table:
    """A rich table, numbers right-aligned; ``label``: the first column names each row."""
    table = Table(title=title)
    for index, column in enumerate(header):
        table.add_column(column, justify="left" if label and index == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


# --- audit -------------------------------------------------------------------------------------


@app.command("audit")
@with_option_groups
def audit_command(
    model: str = ModelOption,
    adapter: Path = typer.Option(None, "--adapter", "-a", help="A PEFT adapter folder to audit."),
    memory: MemorySetOptions = MemorySetOptions(),
    tau: float = TauOption,
    as_json: bool = typer.Option(False, "--json", help="Print the audit as JSON."),
    law_path: Path = law_option(
        "A fitted law JSON: the advice to raise the rank then quotes its predicted gain."
    ),
    runtime: RuntimeOptions = RuntimeOptions(),
) -> None:
    """How much of a standard SFT step goes to tokens already memorized (p > tau).

    Example: memlaw audit --adapter run1 --data facts.jsonl
    """
    from memlaw.adapters import adapter_record
    from memlaw.audit import audit, trained_to_plateau

    law, n_eff = None, None
    if law_path is not None:
        from memlaw.adapters import adapter_n_eff
        from memlaw.law import MemoryLaw

        if adapter is None:
            raise MemlawError("--law needs --adapter: the law's gain is counted from its rank")
        law = MemoryLaw.load(law_path)
        law.check_applies(model=model)
        n_eff = adapter_n_eff(adapter)

    target, tokenizer, encoded = adapted_model_and_data(model, adapter, memory, tau, runtime)
    plateaued = adapter is not None and trained_to_plateau(adapter_record(adapter), encoded)
    with console.status("auditing…"):
        report = audit(
            target, tokenizer, encoded, tau=tau, law=law, n_eff=n_eff, plateaued=plateaued
        )
    if as_json:
        _print_json(report.to_dict())
        return
    rows = [
        ("tokens already above the boundary", _pct(report.above_share)),
        ("SFT loss mass on them", _pct(report.loss_mass_above)),
        ("SFT gradient mass on them", _pct(report.gradient_mass_above)),
        ("certified share (items)", _pct(report.certified_share)),
        ("exact match (items)", _pct(report.exact_match)),
        ("stubborn tokens", str(report.stubborn_tokens)),
    ]
    title = f"budget audit (tau = {tau:g}, {report.tokens} target tokens)"
    console.print(_table(title, ("measure", "value"), rows, label=True))
    console.print(f"recommendation: {report.recommendation}")


# --- train -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraOptions:
    """The adapter `memlaw train` trains (memlaw.adapters.LoraSpec)."""

    rank: int = option(4, "--rank", "-r", help="LoRA rank.")
    alpha: float | None = option(None, "--alpha", help="LoRA alpha (default: the rank).")
    dropout: float = option(0.0, "--lora-dropout", help="LoRA dropout.")
    layers: str | None = option(
        None,
        "--layers",
        help="Adapted layer indices, e.g. 20 or 18,20 (default: one at 2/3 of the depth).",
    )
    modules: str = option(
        "mlp", "--modules", help="mlp, attn, all, or module names such as up_proj,down_proj."
    )

    def spec(self):
        """The checked :class:`memlaw.adapters.LoraSpec`, its numbers named as the user typed them."""
        from memlaw.adapters import LoraSpec

        check_integer(self.rank, "--rank")
        check_number(self.alpha, "--alpha", low=0, low_open=True, optional=True)
        check_number(self.dropout, "--lora-dropout", low=0, high=1, high_open=True)
        layers = _int_list(self.layers, "--layers", minimum=None) if self.layers else ()
        spec = LoraSpec(
            rank=self.rank,
            alpha=self.alpha,
            dropout=self.dropout,
            layers=layers,
            modules=self.modules,
        )
        spec.validate()
        return spec


@dataclass(frozen=True)
class TrainingOptions:
    """How `memlaw train` trains (memlaw.train.TrainConfig)."""

    lr: float | None = option(LrOption)
    steps: int | None = option(
        None, "--steps", help="Optimizer steps (the budget; default: the recipe's epoch cap)."
    )
    epochs: int | None = option(
        None, "--epochs", help="Epoch budget (default: 400, ended early by recall or plateau)."
    )
    batch_size: int | None = option(BatchSizeOption)
    anneal_patience: int | None = option(AnnealOption)
    lr_warmup_steps: int = option(
        0, "--warmup-steps", help="Raise the rate linearly from lr/N to lr over the first N steps."
    )
    grad_clip: float = option(1.0, "--grad-clip", help="Gradient norm clipping.")
    seed: int = option(0, "--seed", help="Seed: same seed, same losses.")
    tau: float = option(TauOption)
    train_tau: float | None = option(
        None,
        "--train-tau",
        help="MemFT margin: keep training a token while p < this (e.g. 0.8); certify at --tau.",
    )
    sft_warmup_steps: int = option(
        0, "--sft-warmup-steps", help="Schedule: plain SFT for this many steps, then the method."
    )
    stop_when_certified: bool = option(
        True, "--early-stop/--no-early-stop", help="Stop when every target token has p > tau."
    )
    fallback: str = option(
        "skip",
        "--fallback",
        help="MemFT-OT with nothing below tau: skip the update or use the plain mean.",
    )
    position_decay: float | None = option(
        None, "--position-decay", help="MemFT-OT position weighting lambda (e.g. 2)."
    )
    fast_path: bool = option(
        True,
        "--fast-path/--reference-path",
        help="Cache the frozen layers below the adapter (checked against the plain PEFT path, which is the fallback).",
    )

    def config(self, method: str, items: int | None = None):
        """The checked :class:`memlaw.train.TrainConfig`; every number is checked for range
        and finiteness first, named as the user typed it. The recipe's patience depends on the
        set's size: ``items`` (before the data is read, a placeholder of the usual value)."""
        from memlaw.recipe import anneal_patience
        from memlaw.train import TrainConfig

        check_number(self.lr, "--lr", low=0, low_open=True, optional=True)
        check_integer(self.steps, "--steps", optional=True)
        check_integer(self.epochs, "--epochs", optional=True)
        check_integer(self.batch_size, "--batch-size", low=0, optional=True)
        check_number(self.grad_clip, "--grad-clip", low=0, low_open=True)
        check_integer(self.seed, "--seed", low=0)
        check_number(self.tau, "--tau", low=0, high=1, low_open=True, high_open=True)
        if self.train_tau is not None:
            check_number(self.train_tau, "--train-tau", low=self.tau, high=1, high_open=True)
        check_integer(self.sft_warmup_steps, "--sft-warmup-steps", low=0)
        check_integer(self.lr_warmup_steps, "--warmup-steps", low=0)
        check_number(self.position_decay, "--position-decay", low=0, optional=True)
        if self.fallback not in ("skip", "mean"):
            raise MemlawError(f"--fallback must be skip or mean, got '{self.fallback}'")
        patience, min_updates = anneal_settings(self.anneal_patience)
        if patience and items is not None:
            patience = anneal_patience(
                items, self.batch_size, epochs=patience, min_updates=min_updates
            )
        fields = dataclasses.asdict(self) | {"anneal_patience": patience}
        config = TrainConfig(method=method, **fields)
        config.validate()
        return config


@app.command("train")
@with_option_groups
def train_command(
    model: str = ModelOption,
    memory: MemorySetOptions = MemorySetOptions(),
    method: str = typer.Option(
        "memft",
        "--method",
        help="memft (memlaw's recommended MemFT: memft-ot with train tau 0.8), sft, memft-ot, memft-soft (sigmoid weights), memft-sw (window for one sequence, curriculum for many), memft-sw-window, memft-sw-curriculum, memft-ot-all (memft-ot over all supervised tokens), sft-cap (memft-ot-all with train tau 0.99).",
    ),
    lora_options: LoraOptions = LoraOptions(),
    training: TrainingOptions = TrainingOptions(),
    out: Path = out_option("memlaw-run", "Output folder for the adapter and record.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    runtime: RuntimeOptions = RuntimeOptions(),
    as_json: bool = typer.Option(False, "--json", help="Print the run record as JSON."),
    checkpoint: Path = typer.Option(
        None,
        "--checkpoint",
        help="A folder for the run's state every 10 epochs: the same command, run again after "
        "a kill, continues from it (removed once the adapter is saved).",
    ),
) -> None:
    """Memorize a memory set into a LoRA adapter (PEFT, safetensors) with SFT or MemFT.

    Prompt and target are tokenized apart and joined as token ids with nothing between them:
    'Name:' + '9100672710' is learned as 'Name:9100672710'. Give --separator ' ' (or a
    newline) when your prompts will put one there, and probe with the same value.

    Example: memlaw train --generate phonebook:16 --method memft-ot --rank 1 --out run1
    """
    from memlaw.adapters import check_lora_fits
    from memlaw.atomic import check_writable, remove_stale_staging
    from memlaw.train import save_run

    lora = lora_options.spec()
    config = training.config(method)
    memory.check()
    runtime.check()
    check_writable(out, "--out", folder=True, overwrite=overwrite)
    _check_not_an_input(out, "--out", {"--data": memory.data})
    remove_stale_staging(out)  # what a killed run on this output left behind
    base, tokenizer = load(model, runtime)
    encoded = memory_set(base, tokenizer, memory)
    config = training.config(method, items=len(encoded))
    check_lora_fits(base, lora)  # layers, modules and memory, before any allocation
    if checkpoint is not None:
        check_writable(checkpoint, "--checkpoint", folder=True, overwrite=True)
        _check_not_an_input(checkpoint, "--checkpoint", {"--data": memory.data, "--out": out})
    label = f"{config.method} r={lora.rank}"
    result = run_training(base, tokenizer, encoded, lora, config, label, checkpoint=checkpoint)
    source = str(memory.data or memory.generate)
    extra = {"model": model, "data": source, "separator": memory.separator}
    save_run(result, out, overwrite=overwrite, extra=extra)
    if checkpoint is not None:
        shutil.rmtree(checkpoint, ignore_errors=True)  # the adapter is saved: nothing to resume
    record = result.record()
    if as_json:
        _print_json({k: v for k, v in record.items() if k != "log"})
    else:
        console.print(_run_table([(config.method, record)]))
        console.print(Text.assemble("adapter and record saved to ", (str(out), "bold")))
    if result.stop_reason == "non-finite loss":
        raise MemlawError(
            f"training stopped at step {result.steps + 1}: the loss became non-finite; the last good "
            f"adapter was saved to {out} — lower --lr"
        )


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "loss {task.fields[loss]:.4f} · below τ {task.fields[active]} · certified {task.fields[certified]}"
        ),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )


def run_training(model, tokenizer, encoded, lora, config, label: str, checkpoint=None):
    """Train with a progress bar (``checkpoint``: memlaw.train's); returns the TrainResult."""
    from memlaw.train import train

    with _progress() as progress:
        task = progress.add_task(
            label, total=config.steps, loss=float("nan"), active="-", certified="-"
        )

        def on_step(entry, total):
            progress.update(
                task,
                total=total,
                completed=entry.step,
                loss=entry.loss,
                active=entry.active_tokens,
                certified=entry.certified_items,
            )

        return train(
            model, tokenizer, encoded, lora, config, on_step=on_step, checkpoint=checkpoint
        )


RUN_ROWS = (
    ("ℓ (target tokens)", "length", str),
    ("N_eff", "n_eff", str),
    ("trainable params", "trainable_params", str),
    ("base loss L0", "base_loss", _fmt),
    ("final loss L1", "final_loss", _fmt),
    ("ΔL (nats/token)", "delta_loss", _fmt),
    ("exact match", "exact_match", _pct),
    ("certified share", "certified_share", _pct),
    ("stubborn tokens", "stubborn_tokens", str),
    ("steps", "steps", str),
    ("stopped by", "stop_reason", str),
    ("wall time (s)", "train_seconds", lambda v: _fmt(v, 1)),
)


def _run_table(runs: list[tuple[str, dict]]) -> Table:
    """Runs side by side: one column per run, one row per measure."""
    rows = [(title, *(show(record[key]) for _, record in runs)) for title, key, show in RUN_ROWS]
    header = ("measure", *(label for label, _ in runs))
    return _table("memorization runs", header, rows, label=True)


# --- probe -------------------------------------------------------------------------------------


@app.command("probe")
@with_option_groups
def probe_command(
    model: str = ModelOption,
    adapter: Path = typer.Option(
        None, "--adapter", "-a", help="A PEFT adapter folder (e.g. from memlaw train)."
    ),
    memory: MemorySetOptions = MemorySetOptions(),
    tau: float = TauOption,
    greedy: bool = typer.Option(
        True, "--greedy/--no-greedy", help="Also decode each item greedily."
    ),
    tokens: bool = typer.Option(
        False, "--tokens", help="Show every target token of the first items."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    runtime: RuntimeOptions = RuntimeOptions(),
) -> None:
    """Show, token by token, what a model (+ adapter) has memorized.

    Example: memlaw probe --adapter run1 --generate phonebook:16
    """
    from memlaw.probe import probe

    target, tokenizer, encoded = adapted_model_and_data(model, adapter, memory, tau, runtime)
    with console.status("probing…"):
        report = probe(target, tokenizer, encoded, tau=tau, generate=greedy)
    if as_json:
        _print_json(report.to_dict())
        return
    shares = ("exact_match", "certified_share", "token_certified_share")
    summary = [(k, _pct(v) if k in shares else _fmt(v)) for k, v in report.summary().items()]
    console.print(_table("probe", ("measure", "value"), summary, label=True))
    phase = [
        (row["bin"], str(row["tokens"]), _pct(row["reproduced"])) for row in report.phase_transition
    ]
    header = ("teacher-forced p", "tokens", "reproduced")
    title = "phase transition: share of tokens reproduced (argmax given the correct prefix)"
    console.print(_table(title, header, phase, label=False))
    if report.stubborn:
        stubborn = [
            (
                str(s["item"]),
                str(s["position"]),
                repr(s["expected"]),
                repr(s["generated"]),
                f"{s['probability']:.3f}",
            )
            for s in report.stubborn[:20]
        ]
        header = ("item", "position", "expected", "generated", "p(expected)")
        title = "stubborn tokens (first greedy error of each failed item)"
        console.print(_table(title, header, stubborn, label=False))
    if tokens:
        for item in report.items[:5]:
            line = Text(f"item {item.index}:")
            for t, p in zip(item.target_ids, item.probabilities, strict=False):
                # Text, not markup: a token such as "[b]" is shown as it is.
                line.append(f" {tokenizer.decode([t])!r}:{p:.2f}", "green" if p > tau else "red")
            console.print(line)


# --- demo --------------------------------------------------------------------------------------


@app.command("demo")
def demo_command(
    model: str = ModelOption,
    entries: int = typer.Option(25, "--entries", help="Phonebook entries to memorize."),
    rank: int = typer.Option(
        None, "--rank", help="LoRA rank (default: the plan's certifying rank, else 1)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the data and of training."),
    compare: bool = typer.Option(
        False,
        "--compare",
        help="Instead: SFT, the published MemFT-OT and memlaw's MemFT side by side.",
    ),
    steps: int = typer.Option(100, "--steps", help="With --compare: step budget of each method."),
    out: Path = out_option("memlaw-demo", "Folder for adapters, records and the plot."),
) -> None:
    """Plan the rank for a generated phonebook, memorize it to certified recall with memlaw's
    default recipe, and probe it: every target token above p = 0.5, every item recalled.

    Example: memlaw demo --entries 25
    """
    from memlaw.atomic import check_writable

    check_integer(entries, "--entries")
    check_integer(rank, "--rank", optional=True)
    check_integer(steps, "--steps")
    check_integer(seed, "--seed", low=0)
    check_writable(out, "--out", folder=True)
    if compare:
        _demo_compare(model, entries, rank or 1, steps, seed, out)
        return
    started = time.perf_counter()
    base, tokenizer, encoded = _demo_phonebook(model, entries, seed)
    rank = rank or _demo_rank(model, base, tokenizer, encoded)
    _demo_memorize(model, base, tokenizer, encoded, rank, seed, out, entries)
    console.print(f"total time: {time.perf_counter() - started:.0f} s", markup=False)


def _demo_phonebook(model: str, entries: int, seed: int):
    """A fresh base model, its tokenizer and the demo's phonebook, encoded."""
    from memlaw.data import encode_items, generate_phonebook

    base, tokenizer = load(model)
    return base, tokenizer, encode_items(generate_phonebook(entries, seed=seed), tokenizer)


def _demo_rank(model: str, base, tokenizer, encoded) -> int:
    """The plan's rank to be safe, from the law memlaw ships for the model (1 without one)."""
    from memlaw.law import MemoryLaw, reference_law_path
    from memlaw.plan import measure_memory_set, plan

    try:
        law = MemoryLaw.load(reference_law_path(model))
        memory = measure_memory_set(base, tokenizer, encoded, generator="phonebook")
        result = plan(law, memory, model=model, modules="mlp")
    except MemlawError as error:
        console.print(f"plan: {error}; training rank 1", markup=False)
        return 1
    if result.certifying_rank_range is None:
        console.print("plan: the shipped law holds no recall data; training rank 1", markup=False)
        return 1
    low, high = result.certifying_rank_range
    console.print(
        f"plan: ℓ = {memory.length:g} target tokens; the smallest certifying rank is "
        f"{result.certifying_rank} (95% interval {low}–{high}); training rank {high}",
        markup=False,
    )
    return high


def _demo_train(model: str, base, tokenizer, encoded, rank: int, config, out: Path, entries: int):
    """One demo run: train ``config`` at ``rank`` and save it to ``out``."""
    from memlaw.adapters import LoraSpec, check_lora_fits
    from memlaw.train import save_run

    lora = LoraSpec(rank=rank)
    check_lora_fits(base, lora)
    result = run_training(base, tokenizer, encoded, lora, config, f"{config.method} r={rank}")
    save_run(result, out, overwrite=True, extra={"model": model, "data": f"phonebook:{entries}"})
    return result


def _demo_memorize(model, base, tokenizer, encoded, rank, seed, out: Path, entries: int) -> None:
    from memlaw.recipe import default_recipe
    from memlaw.train import TrainConfig

    recipe = default_recipe(len(encoded))
    config = TrainConfig(method="memft", seed=seed, anneal_patience=recipe.anneal_patience)
    console.print(f"recipe: memft, {recipe.describe()}", markup=False)
    result = _demo_train(model, base, tokenizer, encoded, rank, config, out, entries)
    report = result.report
    summary = report.summary()
    lowest = min(p for item in report.items for p in item.probabilities)
    console.print(_run_table([("memft", result.record())]))
    console.print(
        f"{result.stop_reason} after {result.steps} steps ({result.train_seconds:.0f} s): "
        f"{summary['token_certified_share']:.1%} of target tokens above p = 0.5 (lowest "
        f"p = {lowest:.3f}), {summary['certified_share']:.1%} of items certified, "
        f"{summary['exact_match']:.1%} recalled exactly by greedy decoding",
        markup=False,
    )
    item = report.items[0]
    if item.generated_ids is not None:
        console.print(
            f"e.g. {tokenizer.decode(list(encoded[0].prompt_ids))!r} → "
            f"{tokenizer.decode(list(item.generated_ids))!r}",
            markup=False,
        )
    console.print(f"adapter, record and probe saved to {out}", markup=False)


def _demo_compare(model: str, entries: int, rank: int, steps: int, seed: int, out: Path) -> None:
    """SFT, the published MemFT-OT and memlaw's MemFT on the same data, rank, budget, seed."""
    from memlaw.figures import plot_runs
    from memlaw.train import TrainConfig

    runs = []
    for method in ("sft", "memft-ot", "memft"):
        base, tokenizer, encoded = _demo_phonebook(model, entries, seed)
        config = TrainConfig(method=method, steps=steps, seed=seed)
        started = time.perf_counter()
        result = _demo_train(model, base, tokenizer, encoded, rank, config, out / method, entries)
        runs.append((method, result))
        console.print(f"{method}: done in {time.perf_counter() - started:.0f} s")
    console.print(_run_table([(label, r.record()) for label, r in runs]))
    plot = plot_runs(runs, out / "demo.png")
    console.print(f"adapters, records and the plot are in {out} (plot: {plot})", markup=False)


# --- sweep, fit, plan, report ------------------------------------------------------------------


@dataclass(frozen=True)
class PointOptions:
    """How `memlaw sweep` trains each point (memlaw.sweep.SweepSpec's training fields)."""

    lr: float | None = option(LrOption)
    max_steps: int = option(600, "--max-steps", help="Step cap of each point.")
    max_epochs: int | None = option(
        None, "--max-epochs", help="Epoch cap of each point (replaces --max-steps)."
    )
    batch_size: int | None = option(BatchSizeOption)
    stop_at_certified: bool = option(
        True,
        "--stop-at-certified/--train-past-certified",
        help="End a point once every target token has p > 0.5.",
    )
    anneal_patience: int | None = option(AnnealOption)
    plateau_on: str = option(
        "information",
        "--plateau-on",
        help="information (min(L0, H) - L1, H the data's baseline) or delta_loss.",
    )
    plateau_window: int = option(
        50, "--plateau-window", help="Epochs per window of the plateau test."
    )
    plateau_tolerance: float = option(
        0.01,
        "--plateau-tolerance",
        help="Plateau: relative improvement between windows below this.",
    )

    def spec_fields(self) -> dict[str, Any]:
        """The settings as SweepSpec's fields, every number checked and named as the user
        typed it."""
        check_number(self.lr, "--lr", low=0, low_open=True, optional=True)
        check_integer(self.max_steps, "--max-steps")
        check_integer(self.max_epochs, "--max-epochs", optional=True)
        check_integer(self.batch_size, "--batch-size", low=0, optional=True)
        check_integer(self.plateau_window, "--plateau-window")
        check_number(self.plateau_tolerance, "--plateau-tolerance", low=0)
        patience, min_updates = anneal_settings(self.anneal_patience)
        return dataclasses.asdict(self) | {
            "anneal_patience": patience,
            "anneal_min_updates": min_updates,
        }


@dataclass(frozen=True)
class ExecutorOptions:
    """Where `memlaw sweep` runs its points."""

    workers: int | None = option(
        None,
        "--workers",
        help="Points run at once. local: worker processes (default 1; the cores are split between them); ray: default as many as the cluster fits.",
    )
    executor: str = option(
        "local",
        "--executor",
        help="local (worker processes here) or ray (Ray tasks; needs pip install ray).",
    )
    address: str | None = option(
        None,
        "--address",
        help="Ray cluster to run on (auto, HOST:PORT, ray://HOST:PORT); default: start a local Ray for this sweep.",
    )

    def check(self) -> None:
        if self.workers is not None and self.workers <= 0:
            raise MemlawError(f"--workers must be positive, got {self.workers}")
        if self.executor not in ("local", "ray"):
            raise MemlawError(f"unknown --executor '{self.executor}': use local or ray")
        if self.address is not None and self.executor != "ray":
            raise MemlawError("--address is for the ray executor: add --executor ray")

    def run(self, db: Path, spec):
        """Run the sweep's points; where and whether they can run is checked before the store
        records the sweep."""
        from memlaw.sweep import LocalExecutor, check_device, check_sweep_fits, sweep_into

        # Off a terminal the bar would print its last state (and a blank line) on stop.
        progress = err_console.is_terminal
        if self.executor == "local":
            check_device(spec.device)
            check_sweep_fits(spec, memory_on=spec.device)
            return sweep_into(db, spec, LocalExecutor(workers=self.workers or 1), progress)
        from memlaw.ray_executor import RayExecutor

        check_sweep_fits(spec, memory_on=None)  # the points run on the cluster's machines
        with RayExecutor(address=self.address, workers=self.workers) as executor:
            executor.check(spec)
            return sweep_into(db, spec, executor, progress)


@app.command("sweep")
@with_option_groups
def sweep_command(
    model: str = ModelOption,
    data: str = typer.Option(
        "random",
        "--data",
        help="random, phonebook, noisy:FRACTION, or a data file truncated to each length.",
    ),
    ranks: str = typer.Option("1,2,4,8,16", "--ranks", help="Comma-separated LoRA ranks."),
    lengths: str = typer.Option(
        "64,128,256,512", "--lengths", help="Comma-separated lengths ℓ (target tokens)."
    ),
    layer_counts: str = typer.Option(
        "1", "--layer-counts", help="Comma-separated numbers of adapted layers."
    ),
    methods: str = typer.Option(
        "sft", "--methods", help="Comma-separated methods (sft, memft-ot, memft-sw)."
    ),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated seeds."),
    modules: str = typer.Option("mlp", "--modules", help="mlp, attn, all, or module names."),
    points: PointOptions = PointOptions(),
    db: Path = typer.Option(
        Path("sweep.db"), "--db", help="SQLite file of results (re-running resumes)."
    ),
    runner: ExecutorOptions = ExecutorOptions(),
    dtype: str = DtypeOption,
    device: str = typer.Option(
        "cpu",
        "--device",
        help="cpu, cuda or cuda:N (with --executor ray: cuda, one GPU per point).",
    ),
    fast_path: bool = typer.Option(
        True,
        "--fast-path/--reference-path",
        help="Cache the frozen layers below the adapter, or train every point on the plain PEFT forward.",
    ),
    carry_from: Path = typer.Option(
        None,
        "--carry-from",
        help="The same sweep under a smaller --max-epochs: copy its points that stopped before "
        "that cap and continue its capped points from their last state.",
    ),
) -> None:
    """Train a grid of points (rank × ℓ × layers × method × seed) into a resumable SQLite store.

    Example: memlaw sweep --model tiny --ranks 1,2,4 --lengths 32,64 --db tiny.db

    A longer cap from a finished sweep: memlaw sweep ... --max-epochs 700 --db e700.db --carry-from e400.db

    On GPUs of a Ray cluster: memlaw sweep --device cuda --dtype bfloat16 --executor ray --address auto
    """
    from memlaw.atomic import check_writable
    from memlaw.sweep import SweepSpec, points_in_flight

    training = points.spec_fields()
    runner.check()
    _check_sweep_data(data)
    spec = SweepSpec(
        model=model,
        data=data,
        ranks=_int_list(ranks, "--ranks"),
        lengths=_int_list(lengths, "--lengths"),
        layer_counts=_int_list(layer_counts, "--layer-counts"),
        methods=_names(methods, "--methods"),
        seeds=_int_list(seeds, "--seeds", minimum=0),
        modules=modules,
        device=device,
        dtype=dtype,
        fast_path=fast_path,
        **training,
    )
    check_writable(db, "--db")
    _quiet_transformers()
    if carry_from is not None:
        _carry_over(carry_from, db, spec)
    in_flight = points_in_flight(db, spec)
    if in_flight:  # said before the settings are checked: what a matching rerun picks up
        where = ", ".join(f"{key} (epoch {epochs})" for key, epochs in in_flight.items())
        console.print(f"checkpoints of points in flight, continued here: {where}", markup=False)
    store, summary = runner.run(db, spec)
    rows = store.rows()
    store.close()
    capped = sum(r["hit_cap"] for r in rows)
    console.print(
        f"sweep: {summary['done']} points run, {summary['skipped']} already done, "
        f"{len(rows)} in {db}" + (f"; {capped} hit the step cap (not converged)" if capped else "")
    )


def _carry_over(source_db: Path, db: Path, spec) -> None:
    from memlaw.sweep import carry_into

    _check_not_an_input(db, "--db", {"--carry-from": source_db})
    counts = carry_into(db, spec, source_db)
    console.print(
        f"from {source_db}: {counts['copied']} points copied (stopped before its cap), "
        f"{counts['continued']} continue from their last state, {counts['from_scratch']} start "
        "afresh",
        markup=False,
    )


def _names(text: str, option: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise MemlawError(f"{option} needs at least one name, got '{text}'")
    return names


def _check_sweep_data(data: str) -> None:
    kind, _, argument = data.partition(":")
    if kind != "noisy":
        return
    try:
        fraction = float(argument)
    except ValueError:
        raise MemlawError(f"--data '{data}': noisy needs a fraction, e.g. noisy:0.1") from None
    check_number(fraction, "--data noisy:FRACTION", low=0, high=1)


@app.command("fit")
def fit_command(
    db: Path = DbOption,
    out: Path = out_option("law.json", "Where to write the fitted law (JSON)."),
    method: str = typer.Option(
        None, "--method", help="Fit this method's points (needed when the sweep has several)."
    ),
    include_capped: bool = typer.Option(
        False, "--include-capped", help="Also fit points that hit the cap."
    ),
    bootstrap: int = typer.Option(
        200, "--bootstrap", help="Bootstrap resamples for the 95% intervals."
    ),
    validate: Path = typer.Option(
        None,
        "--validate",
        help="A sweep database of off-grid points (same settings): predicted vs measured, "
        "saved in the law.",
    ),
) -> None:
    """Fit the law to a sweep (the paper's form and a saturating one; the better by AIC is
    saved), with its recall boundary, and save it as JSON.

    Example: memlaw fit --db sweep.db --out law.json --validate off-grid.db
    """
    from memlaw.atomic import check_writable
    from memlaw.fit import fit_store

    check_integer(bootstrap, "--bootstrap", low=0)
    if validate is not None:
        _check_input_file(validate, "--validate")
    check_writable(out, "--out")
    _check_not_an_input(out, "--out", {"--db": db, "--validate": validate})
    fitted = fit_store(
        db, method=method, include_capped=include_capped, n_bootstrap=bootstrap, validate=validate
    )
    fitted.law.save(out)
    _print_fit(fitted)
    console.print(f"law saved to {out}", markup=False)


def _print_fit(fitted) -> None:
    law = fitted.law
    rows = []
    for name in ("C", "alpha", "beta") + (("b",) if law.offset else ()):
        low, high = law.intervals_.get(name, (None, None))
        interval = "-" if low is None else f"[{low:.4g}, {high:.4g}]"
        rows.append((name, f"{getattr(law, name + '_'):.4g}", interval))
    header = ("parameter", "value", "95% interval")
    console.print(_table(law.describe(), header, rows, label=False))
    if law.n_bootstrap:
        console.print(
            f"intervals: {law.n_bootstrap_ok_} of {law.n_bootstrap} bootstrap refits succeeded"
            + (
                ""
                if law.intervals_trusted_
                else " — too few: do not trust the intervals (raise --bootstrap)"
            )
        )
    if isinstance(fitted.forms, list):
        console.print(
            "forms by AIC: "
            + ", ".join(f"{f['form']} {f['aic']:.1f}" for f in fitted.forms)
            + f" → {law.form}",
            markup=False,
        )
    for form, holdout in law.metadata_["holdouts"].items():
        if "median_relative_error" in holdout:
            console.print(
                f"hold-out ({form}; largest N_eff and ℓ predicted from the rest): median "
                f"relative ΔL error {holdout['median_relative_error']:.1%}, max "
                f"{holdout['max_relative_error']:.1%}",
                markup=False,
            )
    recall = fitted.recall
    if "boundary" in recall:
        b, ci = recall["boundary"], recall.get("intervals", {})
        console.print(
            f"recall boundary: N*(ℓ) = {b['A']:.3g} · ℓ^{b['k']:.3f} · (2n − 1)^(1/{b['b']:.3g})"
            " for a set of n items (half of them: without the last factor)"
            + (f"; k 95% interval [{ci['k'][0]:.3f}, {ci['k'][1]:.3f}]" if "k" in ci else ""),
            markup=False,
        )
    else:
        console.print(f"recall boundary: none ({recall.get('error')})", markup=False)
    if fitted.excluded_capped:
        console.print(
            f"{fitted.excluded_capped} points hit the cap and were left out "
            "(--include-capped to keep them)"
        )
    validation = law.metadata_.get("validation")
    if validation:
        header = ("rank", "ℓ", "ΔL", "predicted", "error", "bits", "predicted", "certified", "law")
        rows = [_validation_row(point) for point in validation["points"]]
        title = f"off-grid points ({validation['db']}): median ΔL error "
        title += f"{validation['median_relative_error']:.1%}"
        console.print(_table(title, header, rows, label=False))


def _validation_row(point: dict) -> tuple[str, ...]:
    def yes_no(value) -> str:
        return "—" if value is None else ("yes" if value else "no")

    bits = point.get("bits")
    return (
        str(point["rank"]),
        f"{point['length']:g}",
        f"{point['delta_loss']:.4f}",
        f"{point['predicted_delta']:.4f}",
        f"{point['relative_error']:.1%}",
        "—" if bits is None else f"{bits:,.0f}",
        "—" if bits is None else f"{point['predicted_bits']:,.0f}",
        yes_no(point["certified"]),
        yes_no(point.get("predicted_certified")),
    )


@app.command("plan")
def plan_command(
    length: int = typer.Option(None, "--length", "-l", help="ℓ: target tokens to memorize."),
    data: Path = typer.Option(
        None, "--data", "-d", help="Measure ℓ, L0, H and the data kind on this data file."
    ),
    model: str = ModelOption,
    law_path: Path = law_option("A fitted law JSON (default: memlaw's law for the model)."),
    rank: int = typer.Option(None, "--rank", "-r", help="A rank to ask about: how much it holds."),
    layers: int = typer.Option(1, "--layers", help="Number of adapted layers."),
    modules: str = typer.Option(
        "mlp",
        "--modules",
        help="The modules you adapt (default: memlaw train's, mlp): checked against the law's.",
    ),
    base_loss: float = typer.Option(
        None, "--base-loss", help="Base loss L0 of your data (nats/token), with --length."
    ),
    force: bool = typer.Option(
        False, "--force", help="Plan even for data or modules the law was not measured on."
    ),
    png: Path = typer.Option(Path("plan.png"), "--png", help="Where to draw the plan."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Plan the LoRA rank from the law before spending compute: the smallest rank that
    certifies the set, and how much a rank holds.

    Example: memlaw plan --data facts.jsonl --rank 2
    """
    from memlaw.atomic import check_writable
    from memlaw.figures import plot_plan
    from memlaw.law import MemoryLaw, reference_law_path
    from memlaw.plan import MemorySet, measure_memory_set, plan

    if (length is None) == (data is None):
        raise MemlawError("give exactly one of --length N or --data FILE")
    check_integer(rank, "--rank", optional=True)
    check_integer(length, "--length", optional=True)
    if data is not None:
        _check_input_file(data, "--data")
    check_integer(layers, "--layers")
    check_number(base_loss, "--base-loss", low=0, low_open=True, optional=True)
    check_writable(png, "--png")
    _check_not_an_input(png, "--png", {"--data": data, "--law": law_path})
    law = MemoryLaw.load(law_path or reference_law_path(model))
    law.check_applies(model=model, modules=modules, force=force)  # before the L0 pass
    if data is not None:
        from memlaw.data import encode_items, load_items

        base, tokenizer = load(model)
        encoded = encode_items(load_items(data), tokenizer)
        with console.status("measuring the base loss of your data…"):
            memory = measure_memory_set(base, tokenizer, encoded)
    else:
        memory = MemorySet(length=length, base_loss=base_loss)
    result = plan(
        law, memory, layers=layers, current_rank=rank, model=model, modules=modules, force=force
    )
    plot_plan(result, law, png)
    if as_json:
        _print_json(result.to_dict())
        return
    _print_plan(result, law, data, model)
    console.print(f"plot: {png}", markup=False)


def _length_span(span, longest: float | None) -> str:
    """An interval of lengths; an end far past the law's longest set is said as such (an
    ill-determined bootstrap draw can put it at astronomical lengths)."""
    if longest is None or span[1] <= 10 * longest:
        return f"{span[0]:,.0f}–{span[1]:,.0f}"
    return f"{span[0]:,.0f} to more than {10 * longest:,.0f}, 10× the longest set measured"


def _print_plan(result, law, data: Path | None, model: str) -> None:
    from memlaw.plan import train_command

    memory = result.memory
    rows = result.table()
    title = f"plan for ℓ = {memory.length:g} target tokens"
    if memory.base_loss is not None:
        title += f", L0 = {memory.base_loss:.3f}"
    if memory.info_baseline is not None:
        title += f", H = {memory.info_baseline:.3f}"
    console.print(_table(title, list(rows[0]), [list(row.values()) for row in rows], label=False))
    console.print(f"law: {law.describe()}", soft_wrap=True, markup=False)
    if result.certifying_rank is not None:
        low, high = result.certifying_rank_range
        console.print(
            f"smallest rank that certifies this set: {result.certifying_rank} "
            f"(95% interval: rank {low}–{high}; train rank {high} to be safe)",
            markup=False,
        )
    holds = result.holds
    if holds is not None and "certified_length" in holds:
        span = holds.get("certified_length_range")
        console.print(
            f"rank {holds['rank']} certifies up to about {holds['certified_length']:,.0f} target "
            "tokens"
            + (f" (95% interval {_length_span(span, holds.get('measured_up_to'))})" if span else "")
            + (
                f" and is predicted to store {holds['on_this_set']['memorized_bits']:,.0f} bits "
                "of this set"
                if holds["on_this_set"]["memorized_bits"] is not None
                else ""
            ),
            markup=False,
        )
    if holds is not None and "certified_length_at_least" in holds:
        console.print(
            f"rank {holds['rank']} certified at least {holds['certified_length_at_least']:,.0f} "
            "target tokens on the law's grid (measured; no recall boundary fitted)",
            markup=False,
        )
    for note in result.notes:
        console.print(f"note: {note}", markup=False)
    if result.certifying_rank is not None:
        safe = result.certifying_rank_range[1]
        layer_indices = None
        if result.layers > 1:
            from memlaw.models import model_skeleton
            from memlaw.sweep import adapted_layers

            total = model_skeleton(model)[0].config.num_hidden_layers
            layer_indices = adapted_layers(result.layers, total)
        command = train_command(result, law, data, safe, layer_indices)
        console.print(f"train it: {command}", markup=False)


@app.command("report")
def report_command(
    db: Path = DbOption,
    out: Path = out_option("report.html", "The HTML file to write (figures go beside it)."),
    law_path: Path = law_option("A fitted law JSON (default: fit the sweep)."),
    point: str = typer.Option(
        None, "--point", help="Key of the point whose token probabilities to show."
    ),
) -> None:
    """Write one self-contained HTML report of a sweep: figures, the fitted law, every point.

    Example: memlaw report --db sweep.db --out report.html
    """
    from memlaw.atomic import check_writable
    from memlaw.law import MemoryLaw
    from memlaw.report import law_path_for, write_sweep_report

    check_writable(out, "--out")
    check_writable(out.with_name(f"{out.stem}_figures"), "--out's figure folder", folder=True)
    _check_not_an_input(out, "--out", {"--db": db, "--law": law_path})
    law = MemoryLaw.load(law_path) if law_path else None
    with console.status("writing the report…"):
        path = write_sweep_report(db, out, law=law, point=point)
    console.print(f"report: {path}", markup=False)
    if law_path_for(path).exists():
        console.print(f"its law: {law_path_for(path)}", markup=False)


@app.command("export-adapter")
def export_adapter_command(
    db: Path = DbOption,
    point: str = typer.Option(
        ..., "--point", help="Key of the sweep point, e.g. r1-l2000-n1-sft-s0."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The adapter folder to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """Write one sweep point's final adapter as a PEFT folder (safetensors), to probe or audit.

    Example: memlaw export-adapter --db sweep.db --point r1-l64-n1-sft-s0 --out r1-adapter
    """
    from memlaw.atomic import check_writable
    from memlaw.sweep import SweepStore

    check_writable(out, "--out", folder=True, overwrite=overwrite)
    store = SweepStore(db)
    try:
        path = store.export_adapter(point, out, overwrite=overwrite)
    finally:
        store.close()
    console.print(f"adapter: {path}", markup=False)


def main() -> None:
    """Entry point: every expected failure ends as one line ``error: ...`` on stderr and exit
    code 2; an unexpected one is a bug and keeps its traceback."""
    # memlaw never downloads: a Hub id that is not in the local cache fails at once instead
    # of after a dozen lines of retries.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(_run_app())


def _run_app() -> int:
    """Run the app; return the exit code. Library warnings are held back and shown after a
    success, so that a failure prints its one line and nothing else."""
    with warnings.catch_warnings(record=True) as caught:
        try:
            result = app(standalone_mode=False)
        except KeyboardInterrupt:
            err_console.print("interrupted", highlight=False)
            return 130
        except Exception as exc:  # noqa: BLE001 (this is the boundary)
            return _handle_failure(exc)
    for warning in caught:
        _print_line("warning:", "yellow", str(warning.message))
    return result if isinstance(result, int) else 0


def _click_classes(name: str) -> tuple[type, ...]:
    """Class ``name`` from click and from the click that typer ≥ 0.24 bundles (typer raises
    its own; older typers raise click's)."""
    import importlib

    found = []
    for module in ("typer._click.exceptions", "typer.exceptions", "click.exceptions"):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _handle_failure(exc: Exception) -> int:
    if isinstance(exc, _click_classes("NoArgsIsHelpError")):
        # A bare `memlaw`: typer's rich formatter printed the help while raising this.
        if exc.format_message().strip():
            print(exc.format_message())
        return 0
    if isinstance(exc, _click_classes("UsageError")):
        return _fail(_usage_message(exc))
    if isinstance(exc, _click_classes("ClickException")):
        return _fail(exc.format_message())
    if isinstance(exc, _click_classes("Abort")):
        return _fail("aborted")
    if isinstance(exc, BrokenPipeError):  # `memlaw probe --json | head`: the reader left
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (no flush error at exit)
        return 1
    message = expected_failure(exc)
    if message is None:
        return _report_bug(exc)
    return _fail(message)


def _usage_message(exc) -> str:
    message = exc.format_message()
    if exc.ctx is not None:
        message += f" (see '{exc.ctx.command_path} --help')"
    return message


def _print_line(label: str, style: str, message: str) -> None:
    """One line on stderr with the user's text exactly as given (never read as markup)."""
    line = " ".join(part.strip() for part in message.strip().splitlines() if part.strip())
    err_console.print(
        Text.assemble((label, style), " ", line), soft_wrap=True, highlight=False, emoji=False
    )


def _fail(message: str) -> int:
    _print_line("error:", "red", message)
    return 2


def _report_bug(exc: Exception) -> int:
    import traceback

    err_console.print(
        "memlaw: internal error (this is a bug: please report it with the traceback below)",
        markup=False,
        highlight=False,
    )
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    return 1


if __name__ == "__main__":
    main()
