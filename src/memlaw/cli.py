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

from memlaw.errors import MemlawError

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
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load(model: str, dtype: str, device: str, trust_remote_code: bool):
    from memlaw.models import load_model

    _quiet_transformers()
    with console.status(f"loading {model}…"):
        return load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)


def parse_generator(spec: str, tokenizer, seed: int):
    """``phonebook:N``, ``random:LENGTH`` or ``noisy:LENGTH:FRACTION`` → memory items."""
    from memlaw import data

    kind, _, rest = spec.partition(":")
    args = rest.split(":") if rest else []
    try:
        if kind == "phonebook" and len(args) == 1:
            return data.generate_phonebook(int(args[0]), seed=seed)
        if kind == "random" and len(args) == 1:
            return data.generate_random_tokens(tokenizer, int(args[0]), seed=seed)
        if kind == "noisy" and len(args) == 2:
            return data.generate_noisy_text(tokenizer, int(args[0]), float(args[1]), seed=seed)
    except ValueError:
        pass
    raise MemlawError(
        f"bad --generate '{spec}': use phonebook:N, random:LENGTH or noisy:LENGTH:FRACTION"
    )


def memory_set(model, tokenizer, data_path, generate, length, data_seed, chat_template):
    from memlaw.data import encode_items, load_items
    from memlaw.models import context_length

    if (data_path is None) == (generate is None):
        raise MemlawError("give exactly one of --data FILE or --generate SPEC")
    items = load_items(data_path) if data_path else parse_generator(generate, tokenizer, data_seed)
    return encode_items(
        items,
        tokenizer,
        chat_template=chat_template,
        length=length,
        max_context=context_length(model),
    )


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
):
    """The model (with its adapter, if any), tokenizer and encoded memory set that probe and
    audit look at; a bad --tau fails before anything loads."""
    from memlaw.adapters import load_adapter

    if not 0.0 < tau < 1.0:
        raise MemlawError(f"--tau must be within (0, 1), got {tau}")
    base, tokenizer = load(model, dtype, device, trust_remote_code)
    encoded = memory_set(base, tokenizer, data, generate, length, data_seed, chat_template)
    target = load_adapter(base, str(adapter)) if adapter else base
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
        law = MemoryLaw.load(law_path)
        law_model = (getattr(law, "metadata_", None) or {}).get("model")
        if law_model and law_model != model:
            raise MemlawError(
                f"the law in {law_path} was fitted for '{law_model}', not '{model}': "
                "pass a law of this model"
            )
        n_eff = _adapter_n_eff(adapter)

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


def _adapter_n_eff(adapter: Path) -> int:
    """N_eff = rank × adapted layers, from a PEFT adapter's config (memlaw names each adapted
    module in full, e.g. ``model.layers.20.mlp.up_proj``)."""
    import re

    try:
        config = json.loads((adapter / "adapter_config.json").read_text())
        rank, modules = int(config["r"]), config.get("target_modules") or []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MemlawError(f"cannot read the rank of adapter {adapter} ({exc})") from None
    layers = {m.group(1) for name in modules if (m := re.search(r"layers\.(\d+)\.", name))}
    if not layers:
        raise MemlawError(
            f"cannot tell which layers adapter {adapter} adapts; --law needs one made by memlaw train"
        )
    return rank * len(layers)


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
    method: str = typer.Option(
        "memft",
        "--method",
        help="memft (memlaw's recommended MemFT), sft, memft-ot, memft-soft (sigmoid weights), memft-sw (window for one sequence, curriculum for many), memft-sw-window, memft-sw-curriculum.",
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
    steps: int = typer.Option(200, "--steps", help="Optimizer steps (the budget)."),
    epochs: int = typer.Option(None, "--epochs", help="Train this many epochs instead of --steps."),
    batch_size: int = typer.Option(0, "--batch-size", help="Items per step (0: the whole set)."),
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

    Example: memlaw train --generate phonebook:16 --method memft-ot --rank 1 --out run1
    """
    from memlaw.adapters import LoraSpec
    from memlaw.train import TrainConfig, save_run

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
    )
    config.validate()
    if out.exists() and not overwrite:
        raise MemlawError(f"output folder '{out}' already exists: pick another or pass --overwrite")
    lora = LoraSpec(rank=rank, alpha=alpha, dropout=dropout, layers=layer_indices, modules=modules)
    base, tokenizer = load(model, dtype, device, trust_remote_code)
    encoded = memory_set(base, tokenizer, data, generate, length, data_seed, chat_template)
    lora.resolved_layers(base)  # reject a bad layer index before training starts
    result = run_training(base, tokenizer, encoded, lora, config, f"{config.method} r={rank}")
    save_run(
        result, out, overwrite=overwrite, extra={"model": model, "data": str(data or generate)}
    )
    record = result.record()
    if as_json:
        print(json.dumps({k: v for k, v in record.items() if k != "log"}, indent=2))
    else:
        console.print(_run_table([(config.method, record)]))
        console.print(f"adapter and record saved to [bold]{out}[/bold]")
    if result.stop_reason == "non-finite loss":
        raise MemlawError(
            f"training stopped at step {result.steps + 1}: the loss became non-finite; the last good "
            f"adapter was saved to {out} — lower --lr"
        )


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
            cells = [
                f"[{'green' if p > tau else 'red'}]{tokenizer.decode([t])!r}:{p:.2f}[/]"
                for t, p in zip(item.target_ids, item.probabilities, strict=False)
            ]
            console.print(f"item {item.index}: " + " ".join(cells))


@app.command("demo")
def demo_command(
    model: str = ModelOption,
    entries: int = typer.Option(40, "--entries", help="Phonebook entries to memorize."),
    rank: int = typer.Option(1, "--rank", help="LoRA rank."),
    steps: int = typer.Option(100, "--steps", help="Step budget of each method."),
    lr: float = typer.Option(1e-2, "--lr", help="AdamW learning rate."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data and of training."),
    out: Path = typer.Option(
        Path("memlaw-demo"), "--out", "-o", help="Folder for adapters, records and the plot."
    ),
) -> None:
    """Memorize a generated phonebook with SFT, the published MemFT-OT and memlaw's recommended
    MemFT (same data, rank, budget, seed) and compare them side by side.

    Example: memlaw demo --entries 40 --steps 100
    """
    from memlaw.adapters import LoraSpec
    from memlaw.data import encode_items, generate_phonebook
    from memlaw.report import plot_runs
    from memlaw.train import TrainConfig, save_run

    _check_lora_args(rank, None)
    runs = []
    for method in ("sft", "memft-ot", "memft"):
        base, tokenizer = load(model, "float32", "cpu", False)
        encoded = encode_items(generate_phonebook(entries, seed=seed), tokenizer)
        config = TrainConfig(method=method, lr=lr, steps=steps, seed=seed)
        started = time.perf_counter()
        result = run_training(base, tokenizer, encoded, LoraSpec(rank=rank), config, method)
        save_run(
            result,
            out / method,
            overwrite=True,
            extra={"model": model, "data": f"phonebook:{entries}"},
        )
        runs.append((method, result))
        err_console.print(f"{method}: done in {time.perf_counter() - started:.0f} s")
    console.print(_run_table([(label, r.record()) for label, r in runs]))
    plot = plot_runs(runs, out / "demo.png")
    console.print(f"adapters, records and the plot are in [bold]{out}[/bold] (plot: {plot})")


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
    batch_size: int = typer.Option(0, "--batch-size", help="Items per step (0: the whole set)."),
    stop_at_certified: bool = typer.Option(
        True,
        "--stop-at-certified/--train-past-certified",
        help="End a point once every target token has p > 0.5.",
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
    from memlaw.sweep import LocalExecutor, SweepSpec, SweepStore, check_device, run_sweep

    method_list = tuple(m.strip() for m in methods.split(",") if m.strip())
    if workers is not None and workers <= 0:
        raise MemlawError(f"--workers must be positive, got {workers}")
    if executor not in ("local", "ray"):
        raise MemlawError(f"unknown --executor '{executor}': use local or ray")
    if address is not None and executor != "ray":
        raise MemlawError("--address is for the ray executor: add --executor ray")
    spec = SweepSpec(
        model=model,
        data=data,
        ranks=_int_list(ranks, "--ranks"),
        lengths=_int_list(lengths, "--lengths"),
        layer_counts=_int_list(layer_counts, "--layer-counts"),
        methods=method_list,
        seeds=_int_list(seeds, "--seeds", minimum=0),
        modules=modules,
        lr=lr,
        max_steps=max_steps,
        max_epochs=max_epochs,
        batch_size=batch_size,
        stop_at_certified=stop_at_certified,
        plateau_on=plateau_on,
        plateau_window=plateau_window,
        plateau_tolerance=plateau_tolerance,
        device=device,
        dtype=dtype,
        fast_path=fast_path,
    )
    _quiet_transformers()
    # Check where the points will run before the store records this sweep's settings.
    if executor == "local":
        check_device(spec.device)
        store = SweepStore(db, spec)
        summary = run_sweep(spec, store, LocalExecutor(workers=workers or 1))
    else:
        from memlaw.ray_executor import RayExecutor

        with RayExecutor(address=address, workers=workers) as runner:
            runner.check(spec)
            store = SweepStore(db, spec)
            summary = run_sweep(spec, store, runner)
    rows = store.rows()
    capped = sum(r["hit_cap"] for r in rows)
    console.print(
        f"sweep: {summary['done']} points run, {summary['skipped']} already done, "
        f"{len(rows)} in {db}" + (f"; {capped} hit the step cap (not converged)" if capped else "")
    )


REFERENCE_LAWS = {"smollm2-135m": "smollm2-135m.json"}


def reference_law_path(model: str) -> Path:
    """The law shipped with memlaw for a built-in model (see laws/README.md)."""
    if model not in REFERENCE_LAWS:
        raise MemlawError(
            f"memlaw ships no law for '{model}': pass --law (fit one with memlaw sweep + memlaw fit)"
        )
    return Path(__file__).parent / "laws" / REFERENCE_LAWS[model]


def _sweep_metadata(store) -> dict:
    spec = store.spec()
    return {
        "model": spec.model,
        "modules": spec.modules,
        "data": spec.data,
        "lr": spec.lr,
        "layer_counts": list(spec.layer_counts),
        "grid": {"ranks": list(spec.ranks), "lengths": list(spec.lengths)},
        "max_steps": spec.max_steps,
    }


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
        False, "--include-capped", help="Also fit points that hit the step cap."
    ),
    bootstrap: int = typer.Option(
        200, "--bootstrap", help="Bootstrap resamples for the 95% intervals."
    ),
    saturation_loss: float = typer.Option(
        None,
        "--saturation-loss",
        help="Leave out points whose final loss fell below this (memorized outright: ΔL ≈ L0 is bounded by the data, not capacity).",
    ),
) -> None:
    """Fit ΔL = C · N_eff^α · ℓ^(−β) + b to a sweep and save the law as JSON.

    Example: memlaw fit --db sweep.db --out law.json
    """
    from memlaw.atomic import atomic_write_json
    from memlaw.plan import fit_sweep
    from memlaw.sweep import SweepStore

    store = SweepStore(db)
    rows = store.rows()
    if method:
        rows = [r for r in rows if r["method"] == method]
        if not rows:
            raise MemlawError(f"the sweep in {db} has no points for method '{method}'")
    fitted = fit_sweep(
        rows,
        metadata=_sweep_metadata(store),
        include_capped=include_capped,
        saturation_loss=saturation_loss,
        n_bootstrap=bootstrap,
    )
    law = fitted["law"]
    law.save(out)
    atomic_write_json(out.with_suffix(".fit.json"), {k: v for k, v in fitted.items() if k != "law"})
    table = Table(
        title=f"ΔL = C · N_eff^α · ℓ^(−β) + b   (R² = {law.r2_:.4f}, {law.n_points_} points)"
    )
    for column in ("parameter", "value", "95% interval"):
        table.add_column(column, justify="right")
    for name in ("C", "alpha", "beta", "b"):
        low, high = law.intervals_.get(name, (None, None))
        interval = "-" if low is None else f"[{low:.4g}, {high:.4g}]"
        table.add_row(name, f"{getattr(law, name + '_'):.4g}", interval)
    console.print(table)
    if law.n_bootstrap:
        console.print(
            f"intervals: {law.n_bootstrap_ok_} of {law.n_bootstrap} bootstrap refits succeeded"
        )
    holdout = fitted["holdout"]
    if isinstance(holdout, dict) and "mean_relative_error" in holdout:
        console.print(
            f"hold-out (largest N_eff and ℓ predicted from the rest): mean relative error "
            f"{holdout['mean_relative_error']:.1%}, max {holdout['max_relative_error']:.1%}"
        )
    if fitted["excluded_saturated"]:
        console.print(
            f"{fitted['excluded_saturated']} points were memorized outright (final loss < {saturation_loss}) "
            "and left out of the law"
        )
    if fitted["excluded_capped"]:
        console.print(
            f"{fitted['excluded_capped']} points hit the step cap and were left out (--include-capped to keep them)"
        )
    console.print(f"law saved to [bold]{out}[/bold]")


@app.command("plan")
def plan_command(
    length: int = typer.Option(None, "--length", "-l", help="ℓ: target tokens to memorize."),
    data: Path = typer.Option(
        None, "--data", "-d", help="Count ℓ (and the base loss) from this data file."
    ),
    model: str = ModelOption,
    law_path: Path = typer.Option(
        None, "--law", help="A fitted law JSON (default: memlaw's law for the model)."
    ),
    rank: int = typer.Option(
        None, "--rank", "-r", help="Your current rank, to see what doubling it gains."
    ),
    layers: int = typer.Option(1, "--layers", help="Number of adapted layers."),
    modules: str = typer.Option(
        None,
        "--modules",
        help="The modules you adapt (mlp, v_proj, …): checked against the law's.",
    ),
    base_loss: float = typer.Option(
        None,
        "--base-loss",
        help="Base loss L0 of your data (nats/token), for final-loss predictions.",
    ),
    min_gain: float = typer.Option(
        0.05,
        "--min-gain",
        help="Diminishing returns: a doubling gains less than this per added rank (nats/token).",
    ),
    png: Path = typer.Option(Path("plan.png"), "--png", help="Where to draw the plan."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Plan the LoRA rank from the law before spending compute.

    Example: memlaw plan --length 2000 --rank 8
    """
    from memlaw.law import MemoryLaw
    from memlaw.plan import check_law_applies, describe_law, format_plan_table, plan, plot_plan

    if (length is None) == (data is None):
        raise MemlawError("give exactly one of --length N or --data FILE")
    if rank is not None and rank <= 0:
        raise MemlawError(f"--rank must be a positive integer, got {rank}")
    law = MemoryLaw.load(law_path or reference_law_path(model))
    check_law_applies(law, model=model, modules=modules)  # before the base-loss pass
    if data is not None:
        from memlaw.data import encode_items, load_items, target_length
        from memlaw.probe import mean_target_loss, teacher_forced

        base, tokenizer = load(model, "float32", "cpu", False)
        encoded = encode_items(load_items(data), tokenizer)
        length = target_length(encoded)
        if base_loss is None:
            with console.status("measuring the base loss of your data…"):
                base_loss = mean_target_loss(teacher_forced(base, encoded, tokenizer.pad_token_id))
    result = plan(
        law,
        length,
        base_loss=base_loss,
        current_rank=rank,
        layers=layers,
        min_gain=min_gain,
        model=model,
        modules=modules,
    )
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        rows = format_plan_table(result)
        table = Table(
            title=f"plan for ℓ = {length} target tokens"
            + (f", L0 = {base_loss:.3f}" if base_loss else "")
        )
        for column in rows[0]:
            table.add_column(column, justify="right")
        for row in rows:
            table.add_row(*row.values())
        console.print(table)
        console.print(f"law: {describe_law(law)}", soft_wrap=True)
        diminishing = (
            f"diminishing returns from rank {result.diminishing_rank}"
            if result.diminishing_rank is not None
            else "no diminishing-returns rank in this grid"
        )
        recall = (
            f"full recall predicted at rank {result.recall_rank} ({result.recall_source})"
            if result.recall_rank is not None
            else "no full-recall rank predicted (see the notes)"
        )
        console.print(f"{diminishing}; {recall}")
        for note in result.notes:
            console.print(f"note: {note}")
    plot_plan(result, law, png)
    if not as_json:
        console.print(f"plot: {png}")


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
    from memlaw.law import MemoryLaw
    from memlaw.report import write_sweep_report

    law = MemoryLaw.load(law_path) if law_path else None
    with console.status("writing the report…"):
        path = write_sweep_report(db, out, law=law, point=point)
    console.print(f"report: [bold]{path}[/bold]")


def main() -> None:
    """Entry point: run the app, turning MemlawError into a one-line error and exit code 2."""
    try:
        app(standalone_mode=False)
    except MemlawError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # click's usage errors carry their own exit code
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
