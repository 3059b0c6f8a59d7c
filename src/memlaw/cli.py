"""The ``memlaw`` command line: a thin layer over the library.

Bad input ends with a one-line ``error: ...`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from memlaw.errors import MemlawError, check_integer, check_number
from memlaw.recipe import ANNEAL_PATIENCE

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Memorize data exactly with LoRA: MemFT, token-level recall certificates, memory laws.",
)
console = Console()
err_console = Console(stderr=True)

ModelOption = typer.Option(
    "smollm2-135m",
    "--model",
    "-m",
    help="Built-in name (smollm2-135m, tiny), local folder or Hugging Face id.",
)
DataOption = typer.Option(
    None,
    "--data",
    "-d",
    help="Memory set: .jsonl (prompt/target, query/target or question/matching) or a text file.",
)
GenerateOption = typer.Option(
    None,
    "--generate",
    "-g",
    help="Generated memory set: phonebook:N, random:LENGTH or noisy:LENGTH:FRACTION.",
)
LengthOption = typer.Option(
    None, "--length", "-l", help="Keep only the first LENGTH target tokens of the set."
)
DataSeedOption = typer.Option(0, "--data-seed", help="Seed of the generator.")
ChatOption = typer.Option(
    False, "--chat-template", help="Wrap each prompt in the tokenizer's chat template."
)
SeparatorOption = typer.Option(
    "",
    "--separator",
    help="Text ending every prompt (e.g. ' '). Prompt and target are joined as token ids with "
    "nothing between them: 'Name:' + '555' is learned as 'Name:555'. Probe with the same value.",
)
DtypeOption = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16.")
DeviceOption = typer.Option("cpu", "--device", help="cpu or cuda.")
RemoteCodeOption = typer.Option(
    False, "--trust-remote-code", help="Allow a Hub model's own code to run (off by default)."
)
DbOption = typer.Option(Path("sweep.db"), "--db", help="Sweep database (SQLite).")
TauOption = typer.Option(0.5, "--tau", help="Recall boundary: a token is certified when p > tau.")


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


def load(model: str, dtype: str, device: str, trust_remote_code: bool):
    from memlaw.models import load_model

    _quiet_transformers()
    with console.status(f"loading {model}…"):
        return load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)


def check_memory_set_options(data_path, generate, length, data_seed) -> None:
    """The memory set's options, before any model loads."""
    if (data_path is None) == (generate is None):
        raise MemlawError("give exactly one of --data FILE or --generate SPEC")
    if data_path is not None:
        _check_input_file(data_path, "--data")
    check_integer(length, "--length", optional=True)
    check_integer(data_seed, "--data-seed", low=0)


def memory_set(
    model, tokenizer, data_path, generate, length, data_seed, chat_template, separator=""
):
    from memlaw.data import encode_items, generate_items, load_items
    from memlaw.models import context_length

    check_memory_set_options(data_path, generate, length, data_seed)
    items = load_items(data_path) if data_path else generate_items(generate, tokenizer, data_seed)
    return encode_items(
        items,
        tokenizer,
        chat_template=chat_template,
        length=length,
        max_context=context_length(model),
        separator=separator,
    )


def _check_input_file(path: Path, option: str) -> None:
    if not path.exists():
        raise MemlawError(f"{option} file '{path}' does not exist")
    if not path.is_file():
        raise MemlawError(f"{option} '{path}' is not a file")


def _check_runtime(dtype: str, device: str) -> None:
    """--dtype and --device, before anything loads."""
    from memlaw.models import resolve_device, resolve_dtype

    resolve_dtype(dtype)
    resolve_device(device)


def _check_not_an_input(out: Path, option: str, inputs: dict[str, Path | None]) -> None:
    """An output must never land on one of the command's inputs."""
    for name, path in inputs.items():
        if path is not None and Path(path).exists() and out.resolve() == Path(path).resolve():
            raise MemlawError(f"{option} '{out}' is the {name} input: give another path")


def adapted_model_and_data(
    model,
    adapter,
    data,
    generate,
    length,
    data_seed,
    chat_template,
    tau,
    dtype,
    device,
    trust_remote_code,
    separator="",
):
    """The model (with its adapter, if any), tokenizer and encoded memory set that probe and
    audit look at; bad options and a broken adapter fail before anything loads."""
    from memlaw.adapters import check_adapter_files, load_adapter

    check_number(tau, "--tau", low=0, high=1, low_open=True, high_open=True)
    check_memory_set_options(data, generate, length, data_seed)
    _check_runtime(dtype, device)
    if adapter is not None:
        check_adapter_files(adapter)
    base, tokenizer = load(model, dtype, device, trust_remote_code)
    encoded = memory_set(
        base, tokenizer, data, generate, length, data_seed, chat_template, separator
    )
    target = load_adapter(base, adapter, model_name=model) if adapter else base
    return target, tokenizer, encoded


def _check_lora_args(rank: int, layers: str | None) -> tuple[int, ...]:
    if rank <= 0:
        raise MemlawError(f"--rank must be a positive integer, got {rank}")
    return _int_list(layers, "--layers", minimum=None) if layers else ()


@app.command("audit")
def audit_command(
    model: str = ModelOption,
    adapter: Path = typer.Option(None, "--adapter", "-a", help="A PEFT adapter folder to audit."),
    data: Path = DataOption,
    generate: str = GenerateOption,
    length: int = LengthOption,
    data_seed: int = DataSeedOption,
    chat_template: bool = ChatOption,
    separator: str = SeparatorOption,
    tau: float = TauOption,
    as_json: bool = typer.Option(False, "--json", help="Print the audit as JSON."),
    law_path: Path = typer.Option(
        None,
        "--law",
        help="A fitted law JSON: the advice to raise the rank then quotes its predicted gain.",
    ),
    dtype: str = DtypeOption,
    device: str = DeviceOption,
    trust_remote_code: bool = RemoteCodeOption,
) -> None:
    """How much of a standard SFT step goes to tokens already memorized (p > tau).

    Example: memlaw audit --adapter run1 --data facts.jsonl
    """
    from memlaw.audit import audit

    law, n_eff = None, None
    if law_path is not None:
        from memlaw.law import MemoryLaw

        if adapter is None:
            raise MemlawError("--law needs --adapter: the law's gain is counted from its rank")
        from memlaw.adapters import adapter_n_eff

        law = MemoryLaw.load(law_path)
        law.check_applies(model=model)
        n_eff = adapter_n_eff(adapter)

    target, tokenizer, encoded = adapted_model_and_data(
        model,
        adapter,
        data,
        generate,
        length,
        data_seed,
        chat_template,
        tau,
        dtype,
        device,
        trust_remote_code,
        separator,
    )
    with console.status("auditing…"):
        report = audit(target, tokenizer, encoded, tau=tau, law=law, n_eff=n_eff)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    table = Table(title=f"budget audit (tau = {tau:g}, {report.tokens} target tokens)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("tokens already above the boundary", _pct(report.above_share))
    table.add_row("SFT loss mass on them", _pct(report.loss_mass_above))
    table.add_row("SFT gradient mass on them", _pct(report.gradient_mass_above))
    table.add_row("certified share (items)", _pct(report.certified_share))
    table.add_row("exact match (items)", _pct(report.exact_match))
    table.add_row("stubborn tokens", str(report.stubborn_tokens))
    console.print(table)
    console.print(f"recommendation: {report.recommendation}")


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


def run_training(model, tokenizer, encoded, lora, config, label: str):
    """Train with a progress bar; returns the TrainResult."""
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

        return train(model, tokenizer, encoded, lora, config, on_step=on_step)


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


@app.command("train")
def train_command(
    model: str = ModelOption,
    data: Path = DataOption,
    generate: str = GenerateOption,
    length: int = LengthOption,
    data_seed: int = DataSeedOption,
    chat_template: bool = ChatOption,
    separator: str = SeparatorOption,
    method: str = typer.Option(
        "memft",
        "--method",
        help="memft (memlaw's recommended MemFT: memft-ot with train tau 0.8), sft, memft-ot, memft-soft (sigmoid weights), memft-sw (window for one sequence, curriculum for many), memft-sw-window, memft-sw-curriculum, memft-ot-all (memft-ot over all supervised tokens), sft-cap (memft-ot-all with train tau 0.99).",
    ),
    rank: int = typer.Option(4, "--rank", "-r", help="LoRA rank."),
    alpha: float = typer.Option(None, "--alpha", help="LoRA alpha (default: the rank)."),
    dropout: float = typer.Option(0.0, "--lora-dropout", help="LoRA dropout."),
    layers: str = typer.Option(
        None,
        "--layers",
        help="Adapted layer indices, e.g. 20 or 18,20 (default: one at 2/3 of the depth).",
    ),
    modules: str = typer.Option(
        "mlp", "--modules", help="mlp, attn, all, or module names such as up_proj,down_proj."
    ),
    lr: float = typer.Option(1e-2, "--lr", help="AdamW learning rate."),
    steps: int = typer.Option(
        None, "--steps", help="Optimizer steps (the budget; default: the recipe's epoch cap)."
    ),
    epochs: int = typer.Option(
        None, "--epochs", help="Epoch budget (default: 400, ended early by recall or plateau)."
    ),
    batch_size: int = typer.Option(
        None,
        "--batch-size",
        help="Items per step (0: the whole set; default: about 6 steps per epoch, 4 to 16 items).",
    ),
    anneal_patience: int = typer.Option(
        ANNEAL_PATIENCE,
        "--anneal-patience",
        help="Halve the rate after this many epochs without a 1% better loss (down to lr/8); "
        "a plateau there ends the run (0: constant rate, no plateau stop).",
    ),
    grad_clip: float = typer.Option(1.0, "--grad-clip", help="Gradient norm clipping."),
    seed: int = typer.Option(0, "--seed", help="Seed: same seed, same losses."),
    tau: float = TauOption,
    train_tau: float = typer.Option(
        None,
        "--train-tau",
        help="MemFT margin: keep training a token while p < this (e.g. 0.8); certify at --tau.",
    ),
    sft_warmup_steps: int = typer.Option(
        0, "--sft-warmup-steps", help="Schedule: plain SFT for this many steps, then the method."
    ),
    early_stop: bool = typer.Option(
        True, "--early-stop/--no-early-stop", help="Stop when every target token has p > tau."
    ),
    fallback: str = typer.Option(
        "skip",
        "--fallback",
        help="MemFT-OT with nothing below tau: skip the update or use the plain mean.",
    ),
    position_decay: float = typer.Option(
        None, "--position-decay", help="MemFT-OT position weighting lambda (e.g. 2)."
    ),
    fast_path: bool = typer.Option(
        True,
        "--fast-path/--reference-path",
        help="Cache the frozen layers below the adapter (checked against the plain PEFT path, which is the fallback).",
    ),
    out: Path = typer.Option(
        Path("memlaw-run"), "--out", "-o", help="Output folder for the adapter and record.json."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    dtype: str = DtypeOption,
    device: str = DeviceOption,
    trust_remote_code: bool = RemoteCodeOption,
    as_json: bool = typer.Option(False, "--json", help="Print the run record as JSON."),
) -> None:
    """Memorize a memory set into a LoRA adapter (PEFT, safetensors) with SFT or MemFT.

    Prompt and target are tokenized apart and joined as token ids with nothing between them:
    'Name:' + '9100672710' is learned as 'Name:9100672710'. Give --separator ' ' (or a
    newline) when your prompts will put one there, and probe with the same value.

    Example: memlaw train --generate phonebook:16 --method memft-ot --rank 1 --out run1
    """
    from memlaw.adapters import LoraSpec, check_lora_fits
    from memlaw.atomic import check_writable, remove_stale_staging
    from memlaw.train import TrainConfig, save_run

    _check_train_numbers(
        rank=rank, alpha=alpha, dropout=dropout, lr=lr, steps=steps, epochs=epochs,
        batch_size=batch_size, grad_clip=grad_clip, seed=seed, tau=tau, train_tau=train_tau,
        sft_warmup_steps=sft_warmup_steps, position_decay=position_decay, fallback=fallback,
    )  # fmt: skip
    check_integer(anneal_patience, "--anneal-patience", low=0)
    layer_indices = _check_lora_args(rank, layers)
    config = TrainConfig(
        method=method,
        lr=lr,
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        grad_clip=grad_clip,
        seed=seed,
        tau=tau,
        stop_when_certified=early_stop,
        fallback=fallback,
        position_decay=position_decay,
        fast_path=fast_path,
        train_tau=train_tau,
        sft_warmup_steps=sft_warmup_steps,
        anneal_patience=anneal_patience or None,
    )
    config.validate()
    lora = LoraSpec(rank=rank, alpha=alpha, dropout=dropout, layers=layer_indices, modules=modules)
    lora.validate()
    check_memory_set_options(data, generate, length, data_seed)
    _check_runtime(dtype, device)
    check_writable(out, "--out", folder=True, overwrite=overwrite)
    _check_not_an_input(out, "--out", {"--data": data})
    remove_stale_staging(out)  # what a killed run on this output left behind
    base, tokenizer = load(model, dtype, device, trust_remote_code)
    encoded = memory_set(
        base, tokenizer, data, generate, length, data_seed, chat_template, separator
    )
    check_lora_fits(base, lora)  # layers, modules and memory, before any allocation
    result = run_training(base, tokenizer, encoded, lora, config, f"{config.method} r={rank}")
    save_run(
        result,
        out,
        overwrite=overwrite,
        extra={"model": model, "data": str(data or generate), "separator": separator},
    )
    record = result.record()
    if as_json:
        print(json.dumps({k: v for k, v in record.items() if k != "log"}, indent=2))
    else:
        console.print(_run_table([(config.method, record)]))
        console.print(Text.assemble("adapter and record saved to ", (str(out), "bold")))
    if result.stop_reason == "non-finite loss":
        raise MemlawError(
            f"training stopped at step {result.steps + 1}: the loss became non-finite; the last good "
            f"adapter was saved to {out} — lower --lr"
        )


def _check_train_numbers(
    *,
    rank: int,
    alpha: float | None,
    dropout: float,
    lr: float,
    steps: int | None,
    epochs: int | None,
    batch_size: int | None,
    grad_clip: float,
    seed: int,
    tau: float,
    train_tau: float | None,
    sft_warmup_steps: int,
    position_decay: float | None,
    fallback: str,
) -> None:
    """Every number of `memlaw train`, for range and finiteness, named as the user typed it."""
    check_integer(rank, "--rank")
    check_number(alpha, "--alpha", low=0, low_open=True, optional=True)
    check_number(dropout, "--lora-dropout", low=0, high=1, high_open=True)
    check_number(lr, "--lr", low=0, low_open=True)
    check_integer(steps, "--steps", optional=True)
    check_integer(epochs, "--epochs", optional=True)
    check_integer(batch_size, "--batch-size", low=0, optional=True)
    check_number(grad_clip, "--grad-clip", low=0, low_open=True)
    check_integer(seed, "--seed", low=0)
    check_number(tau, "--tau", low=0, high=1, low_open=True, high_open=True)
    if train_tau is not None:
        check_number(train_tau, "--train-tau", low=tau, high=1, high_open=True)
    check_integer(sft_warmup_steps, "--sft-warmup-steps", low=0)
    check_number(position_decay, "--position-decay", low=0, optional=True)
    if fallback not in ("skip", "mean"):
        raise MemlawError(f"--fallback must be skip or mean, got '{fallback}'")


RUN_ROWS = (
    ("ℓ (target tokens)", "length", str),
    ("N_eff", "n_eff", str),
    ("trainable params", "trainable_params", str),
    ("base loss L0", "base_loss", lambda v: _fmt(v)),
    ("final loss L1", "final_loss", lambda v: _fmt(v)),
    ("ΔL (nats/token)", "delta_loss", lambda v: _fmt(v)),
    ("exact match", "exact_match", lambda v: _pct(v)),
    ("certified share", "certified_share", lambda v: _pct(v)),
    ("stubborn tokens", "stubborn_tokens", str),
    ("steps", "steps", str),
    ("stopped by", "stop_reason", str),
    ("wall time (s)", "train_seconds", lambda v: _fmt(v, 1)),
)


def _run_table(runs: list[tuple[str, dict]]) -> Table:
    """Runs side by side: one column per run, one row per measure."""
    table = Table(title="memorization runs")
    table.add_column("measure")
    for label, _ in runs:
        table.add_column(label, justify="right")
    for title, key, show in RUN_ROWS:
        table.add_row(title, *(show(record[key]) for _, record in runs))
    return table


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


@app.command("probe")
def probe_command(
    model: str = ModelOption,
    adapter: Path = typer.Option(
        None, "--adapter", "-a", help="A PEFT adapter folder (e.g. from memlaw train)."
    ),
    data: Path = DataOption,
    generate: str = GenerateOption,
    length: int = LengthOption,
    data_seed: int = DataSeedOption,
    chat_template: bool = ChatOption,
    separator: str = SeparatorOption,
    tau: float = TauOption,
    greedy: bool = typer.Option(
        True, "--greedy/--no-greedy", help="Also decode each item greedily."
    ),
    tokens: bool = typer.Option(
        False, "--tokens", help="Show every target token of the first items."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    dtype: str = DtypeOption,
    device: str = DeviceOption,
    trust_remote_code: bool = RemoteCodeOption,
) -> None:
    """Show, token by token, what a model (+ adapter) has memorized.

    Example: memlaw probe --adapter run1 --generate phonebook:16
    """
    from memlaw.probe import probe

    target, tokenizer, encoded = adapted_model_and_data(
        model,
        adapter,
        data,
        generate,
        length,
        data_seed,
        chat_template,
        tau,
        dtype,
        device,
        trust_remote_code,
        separator,
    )
    with console.status("probing…"):
        report = probe(target, tokenizer, encoded, tau=tau, generate=greedy)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    summary = Table(title="probe")
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    for key, value in report.summary().items():
        shown = (
            _pct(value)
            if key in ("exact_match", "certified_share", "token_certified_share")
            else _fmt(value)
        )
        summary.add_row(key, shown)
    console.print(summary)
    phase = Table(
        title="phase transition: share of tokens reproduced (argmax given the correct prefix)"
    )
    for column in ("teacher-forced p", "tokens", "reproduced"):
        phase.add_column(column, justify="right")
    for row in report.phase_transition:
        phase.add_row(row["bin"], str(row["tokens"]), _pct(row["reproduced"]))
    console.print(phase)
    if report.stubborn:
        stubborn = Table(title="stubborn tokens (first greedy error of each failed item)")
        for column in ("item", "position", "expected", "generated", "p(expected)"):
            stubborn.add_column(column, justify="right")
        for s in report.stubborn[:20]:
            stubborn.add_row(
                str(s["item"]),
                str(s["position"]),
                repr(s["expected"]),
                repr(s["generated"]),
                f"{s['probability']:.3f}",
            )
        console.print(stubborn)
    if tokens:
        for item in report.items[:5]:
            line = Text(f"item {item.index}:")
            for t, p in zip(item.target_ids, item.probabilities, strict=False):
                # Text, not markup: a token such as "[b]" is shown as it is.
                line.append(f" {tokenizer.decode([t])!r}:{p:.2f}", "green" if p > tau else "red")
            console.print(line)


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
    out: Path = typer.Option(
        Path("memlaw-demo"), "--out", "-o", help="Folder for adapters, records and the plot."
    ),
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
    base, tokenizer = load(model, "float32", "cpu", False)
    from memlaw.data import encode_items, generate_phonebook

    encoded = encode_items(generate_phonebook(entries, seed=seed), tokenizer)
    rank = rank or _demo_rank(model, base, tokenizer, encoded)
    _demo_memorize(model, base, tokenizer, encoded, rank, seed, out, entries)
    console.print(f"total time: {time.perf_counter() - started:.0f} s", markup=False)


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


def _demo_memorize(model, base, tokenizer, encoded, rank, seed, out: Path, entries: int) -> None:
    from memlaw.adapters import LoraSpec, check_lora_fits
    from memlaw.train import TrainConfig, save_run

    lora = LoraSpec(rank=rank)
    check_lora_fits(base, lora)
    config = TrainConfig(method="memft", seed=seed, anneal_patience=ANNEAL_PATIENCE)
    result = run_training(base, tokenizer, encoded, lora, config, f"memft r={rank}")
    save_run(result, out, overwrite=True, extra={"model": model, "data": f"phonebook:{entries}"})
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
    from memlaw.adapters import LoraSpec, check_lora_fits
    from memlaw.data import encode_items, generate_phonebook
    from memlaw.figures import plot_runs
    from memlaw.train import TrainConfig, save_run

    runs = []
    for method in ("sft", "memft-ot", "memft"):
        base, tokenizer = load(model, "float32", "cpu", False)
        encoded = encode_items(generate_phonebook(entries, seed=seed), tokenizer)
        config = TrainConfig(method=method, steps=steps, seed=seed)
        check_lora_fits(base, LoraSpec(rank=rank))
        started = time.perf_counter()
        result = run_training(base, tokenizer, encoded, LoraSpec(rank=rank), config, method)
        save_run(
            result,
            out / method,
            overwrite=True,
            extra={"model": model, "data": f"phonebook:{entries}"},
        )
        runs.append((method, result))
        console.print(f"{method}: done in {time.perf_counter() - started:.0f} s")
    console.print(_run_table([(label, r.record()) for label, r in runs]))
    plot = plot_runs(runs, out / "demo.png")
    console.print(f"adapters, records and the plot are in {out} (plot: {plot})", markup=False)


@app.command("sweep")
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
    lr: float = typer.Option(1e-2, "--lr", help="AdamW learning rate."),
    max_steps: int = typer.Option(600, "--max-steps", help="Step cap of each point."),
    max_epochs: int = typer.Option(
        None, "--max-epochs", help="Epoch cap of each point (replaces --max-steps)."
    ),
    batch_size: int = typer.Option(
        None,
        "--batch-size",
        help="Items per step (0: the whole set; default: the default recipe's for each set size).",
    ),
    stop_at_certified: bool = typer.Option(
        True,
        "--stop-at-certified/--train-past-certified",
        help="End a point once every target token has p > 0.5.",
    ),
    anneal_patience: int = typer.Option(
        ANNEAL_PATIENCE,
        "--anneal-patience",
        help="As memlaw train: halve the rate after this many epochs without progress, down to "
        "lr/8, and end a point at a plateau there (0: constant rate and --plateau-window).",
    ),
    plateau_on: str = typer.Option(
        "information",
        "--plateau-on",
        help="information (min(L0, H) - L1, H the data's baseline) or delta_loss.",
    ),
    plateau_window: int = typer.Option(
        50, "--plateau-window", help="Epochs per window of the plateau test."
    ),
    plateau_tolerance: float = typer.Option(
        0.01,
        "--plateau-tolerance",
        help="Plateau: relative improvement between windows below this.",
    ),
    db: Path = typer.Option(
        Path("sweep.db"), "--db", help="SQLite file of results (re-running resumes)."
    ),
    workers: int = typer.Option(
        None,
        "--workers",
        help="Points run at once. local: worker processes (default 1; the cores are split between them); ray: default as many as the cluster fits.",
    ),
    executor: str = typer.Option(
        "local",
        "--executor",
        help="local (worker processes here) or ray (Ray tasks; needs pip install ray).",
    ),
    address: str = typer.Option(
        None,
        "--address",
        help="Ray cluster to run on (auto, HOST:PORT, ray://HOST:PORT); default: start a local Ray for this sweep.",
    ),
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
) -> None:
    """Train a grid of points (rank × ℓ × layers × method × seed) into a resumable SQLite store.

    Example: memlaw sweep --model tiny --ranks 1,2,4 --lengths 32,64 --db tiny.db

    On GPUs of a Ray cluster: memlaw sweep --device cuda --dtype bfloat16 --executor ray --address auto
    """
    from memlaw.atomic import check_writable
    from memlaw.sweep import LocalExecutor, SweepSpec, check_device, check_sweep_fits, sweep_into

    _check_sweep_numbers(
        lr=lr, max_steps=max_steps, max_epochs=max_epochs, batch_size=batch_size,
        plateau_window=plateau_window, plateau_tolerance=plateau_tolerance, workers=workers,
    )  # fmt: skip
    check_integer(anneal_patience, "--anneal-patience", low=0)
    if executor not in ("local", "ray"):
        raise MemlawError(f"unknown --executor '{executor}': use local or ray")
    if address is not None and executor != "ray":
        raise MemlawError("--address is for the ray executor: add --executor ray")
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
        lr=lr,
        max_steps=max_steps,
        max_epochs=max_epochs,
        batch_size=batch_size,
        stop_at_certified=stop_at_certified,
        anneal_patience=anneal_patience or None,
        plateau_on=plateau_on,
        plateau_window=plateau_window,
        plateau_tolerance=plateau_tolerance,
        device=device,
        dtype=dtype,
        fast_path=fast_path,
    )
    check_writable(db, "--db")
    _quiet_transformers()
    # Off a terminal the bar would print its last state (and a blank line) on stop.
    progress = err_console.is_terminal
    # Check where and whether the points can run before the store records this sweep.
    if executor == "local":
        check_device(spec.device)
        check_sweep_fits(spec, memory_on=spec.device)
        store, summary = sweep_into(db, spec, LocalExecutor(workers=workers or 1), progress)
    else:
        from memlaw.ray_executor import RayExecutor

        check_sweep_fits(spec, memory_on=None)  # the points run on the cluster's machines
        with RayExecutor(address=address, workers=workers) as runner:
            runner.check(spec)
            store, summary = sweep_into(db, spec, runner, progress)
    rows = store.rows()
    capped = sum(r["hit_cap"] for r in rows)
    console.print(
        f"sweep: {summary['done']} points run, {summary['skipped']} already done, "
        f"{len(rows)} in {db}" + (f"; {capped} hit the step cap (not converged)" if capped else "")
    )


def _check_sweep_numbers(
    *,
    lr: float,
    max_steps: int,
    max_epochs: int | None,
    batch_size: int | None,
    plateau_window: int,
    plateau_tolerance: float,
    workers: int | None,
) -> None:
    """Every number of `memlaw sweep`, for range and finiteness, named as the user typed it."""
    check_number(lr, "--lr", low=0, low_open=True)
    check_integer(max_steps, "--max-steps")
    check_integer(max_epochs, "--max-epochs", optional=True)
    check_integer(batch_size, "--batch-size", low=0, optional=True)
    check_integer(plateau_window, "--plateau-window")
    check_number(plateau_tolerance, "--plateau-tolerance", low=0)
    if workers is not None and workers <= 0:
        raise MemlawError(f"--workers must be positive, got {workers}")


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
    out: Path = typer.Option(
        Path("law.json"), "--out", "-o", help="Where to write the fitted law (JSON)."
    ),
    method: str = typer.Option(
        None, "--method", help="Fit this method's points (needed when the sweep has several)."
    ),
    include_capped: bool = typer.Option(
        False, "--include-capped", help="Also fit points that hit the cap."
    ),
    bootstrap: int = typer.Option(
        200, "--bootstrap", help="Bootstrap resamples for the 95% intervals."
    ),
) -> None:
    """Fit the law to a sweep (the paper's form and a saturating one; the better by AIC is
    saved), with its recall boundary, and save it as JSON.

    Example: memlaw fit --db sweep.db --out law.json
    """
    from memlaw.atomic import check_writable
    from memlaw.fit import fit_store

    check_integer(bootstrap, "--bootstrap", low=0)
    check_writable(out, "--out")
    _check_not_an_input(out, "--out", {"--db": db})
    fitted = fit_store(db, method=method, include_capped=include_capped, n_bootstrap=bootstrap)
    fitted.law.save(out)
    _print_fit(fitted)
    console.print(f"law saved to {out}", markup=False)


def _print_fit(fitted) -> None:
    law = fitted.law
    table = Table(title=f"{law.describe()}")
    for column in ("parameter", "value", "95% interval"):
        table.add_column(column, justify="right")
    names = ("C", "alpha", "beta") + (("b",) if law.offset else ())
    for name in names:
        low, high = law.intervals_.get(name, (None, None))
        interval = "-" if low is None else f"[{low:.4g}, {high:.4g}]"
        table.add_row(name, f"{getattr(law, name + '_'):.4g}", interval)
    console.print(table)
    if law.n_bootstrap:
        trusted = getattr(law, "intervals_trusted_", True)
        console.print(
            f"intervals: {law.n_bootstrap_ok_} of {law.n_bootstrap} bootstrap refits succeeded"
            + ("" if trusted else " — too few: do not trust the intervals (raise --bootstrap)")
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
            f"recall boundary: N*(ℓ) = {b['A']:.3g} · ℓ^{b['k']:.3f}"
            + (f" (k 95% interval [{ci['k'][0]:.3f}, {ci['k'][1]:.3f}])" if "k" in ci else ""),
            markup=False,
        )
    else:
        console.print(f"recall boundary: none ({recall.get('error')})", markup=False)
    if fitted.excluded_capped:
        console.print(
            f"{fitted.excluded_capped} points hit the cap and were left out "
            "(--include-capped to keep them)"
        )


@app.command("plan")
def plan_command(
    length: int = typer.Option(None, "--length", "-l", help="ℓ: target tokens to memorize."),
    data: Path = typer.Option(
        None, "--data", "-d", help="Measure ℓ, L0, H and the data kind on this data file."
    ),
    model: str = ModelOption,
    law_path: Path = typer.Option(
        None, "--law", help="A fitted law JSON (default: memlaw's law for the model)."
    ),
    rank: int = typer.Option(None, "--rank", "-r", help="A rank to ask about: how much it holds."),
    layers: int = typer.Option(1, "--layers", help="Number of adapted layers."),
    modules: str = typer.Option(
        "mlp",
        "--modules",
        help="The modules you adapt (default: memlaw train's, mlp): checked against the law's.",
    ),
    base_loss: float = typer.Option(
        None,
        "--base-loss",
        help="Base loss L0 of your data (nats/token), with --length.",
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
    _check_plan_options(length, data, layers, base_loss)
    check_writable(png, "--png")
    _check_not_an_input(png, "--png", {"--data": data, "--law": law_path})
    law = MemoryLaw.load(law_path or reference_law_path(model))
    law.check_applies(model=model, modules=modules, force=force)  # before the L0 pass
    if data is not None:
        from memlaw.data import encode_items, load_items

        base, tokenizer = load(model, "float32", "cpu", False)
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
        print(json.dumps(result.to_dict(), indent=2))
        return
    _print_plan(result, law, data, model)
    console.print(f"plot: {png}", markup=False)


def _print_plan(result, law, data: Path | None, model: str) -> None:
    from memlaw.plan import train_command

    memory = result.memory
    rows = result.table()
    title = f"plan for ℓ = {memory.length:g} target tokens"
    if memory.base_loss is not None:
        title += f", L0 = {memory.base_loss:.3f}"
    if memory.info_baseline is not None:
        title += f", H = {memory.info_baseline:.3f}"
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
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
            + (f" (95% interval {span[0]:,.0f}–{span[1]:,.0f})" if span else "")
            + (
                f" and is predicted to store {holds['on_this_set']['memorized_bits']:,.0f} bits "
                "of this set"
                if holds["on_this_set"]["memorized_bits"] is not None
                else ""
            ),
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


def _check_plan_options(length, data, layers, base_loss) -> None:
    check_integer(length, "--length", optional=True)
    if data is not None:
        _check_input_file(data, "--data")
    check_integer(layers, "--layers")
    check_number(base_loss, "--base-loss", low=0, low_open=True, optional=True)


@app.command("report")
def report_command(
    db: Path = DbOption,
    out: Path = typer.Option(
        Path("report.html"), "--out", "-o", help="The HTML file to write (figures go beside it)."
    ),
    law_path: Path = typer.Option(
        None, "--law", help="A fitted law JSON (default: fit the sweep)."
    ),
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


def expected_failure(exc: BaseException) -> str | None:
    """The one-line message for a failure that is the input's or the environment's fault, or
    None for one that is memlaw's (a bug)."""
    import pickle
    import sqlite3

    if isinstance(exc, MemlawError):
        return str(exc)
    if _is_out_of_memory(exc):
        return (
            f"out of memory ({_first_line(exc)}): lower --rank, --batch-size or the data size, "
            "or free memory"
        )
    if isinstance(exc, OSError):
        return _os_error_message(exc)
    if type(exc) in (sqlite3.OperationalError, sqlite3.DatabaseError):
        return f"database error: {_first_line(exc)}"
    if isinstance(exc, pickle.UnpicklingError):
        return f"refused to load pickle data, which can run code: {_first_line(exc)}"
    if type(exc).__name__ == "SafetensorError":
        return f"cannot read a safetensors file (empty, truncated or corrupt): {_first_line(exc)}"
    if isinstance(exc, UnicodeDecodeError):
        return f"an input file is not UTF-8 text ({_first_line(exc)})"
    return None


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()
    )


def _os_error_message(exc: OSError) -> str:
    reason = exc.strerror or _first_line(exc)
    if exc.filename is None:
        return reason
    where = f"'{exc.filename}'"
    if exc.filename2 is not None:
        where += f" -> '{exc.filename2}'"
    return f"{reason}: {where}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _print_line(label: str, style: str, message: str) -> None:
    """One line on stderr with the user's text exactly as given (never read as markup)."""
    from rich.text import Text

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
