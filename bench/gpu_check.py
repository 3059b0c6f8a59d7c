"""GPU check: train, probe and a small sweep on CUDA in bfloat16, with timings and losses.

Run on a machine with an NVIDIA GPU:

    .venv/bin/python bench/gpu_check.py                  # tiny, cuda, bfloat16
    .venv/bin/python bench/gpu_check.py --model smollm2-135m --steps 50 --ray
    .venv/bin/python bench/gpu_check.py --device cpu     # the same checks without a GPU

Each check prints one line (time, losses, what it verified). The exit status is 0 when every
check passed, 1 when one failed (its error is printed), and 2 when CUDA is not available.
The same checks run as tests in tests/test_cuda.py (skipped without a GPU).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from memlaw.adapters import LoraSpec
from memlaw.data import encode_items, generate_phonebook, generate_random_tokens
from memlaw.forward import FastForward
from memlaw.models import load_model
from memlaw.probe import probe
from memlaw.sweep import LocalExecutor, SweepSpec, SweepStore, run_sweep
from memlaw.train import TrainConfig, train

METHODS = ("sft", "memft-ot", "memft-sw")


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # GPU work is asynchronous: time it when it is done


def finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


class Checks:
    """Runs named checks, prints one line each, remembers the failures."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def run(self, name: str, body: Callable[[], str]) -> None:
        synchronize()
        started = time.perf_counter()
        try:
            detail = body()
            synchronize()
            status = "ok  "
        except Exception as exc:  # report every failure, keep checking the rest
            detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            status = "FAIL"
            self.failed.append(name)
            traceback.print_exc(file=sys.stderr)
        print(f"{status} {name:<28} {time.perf_counter() - started:7.2f} s  {detail}", flush=True)


def memory_set(tokenizer, method: str):
    if method == "memft-sw":  # one long sequence: the sliding window
        return encode_items(generate_random_tokens(tokenizer, 64), tokenizer)
    return encode_items(generate_phonebook(8, seed=1), tokenizer)


def train_and_probe(args, method: str) -> str:
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    encoded = memory_set(tokenizer, method)
    config = TrainConfig(method=method, steps=args.steps, stop_when_certified=False)
    run = train(model, tokenizer, encoded, LoraSpec(rank=4), config)
    record = run.record()
    losses = [entry.loss for entry in run.log]
    assert finite(record["base_loss"], record["final_loss"], *losses), "a loss is not finite"
    assert record["final_loss"] < record["base_loss"], "training did not lower the loss"
    device = torch.device(args.device).type
    assert all(p.device.type == device for p in run.model.parameters()), "a weight moved"
    lora = [p for p in run.model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in lora), "LoRA weights are not float32"

    report = probe(run.model, tokenizer, encoded)
    assert abs(report.final_loss - record["final_loss"]) <= 1e-4 * record["final_loss"] + 1e-6

    layer = run.config["lora"]["layers"][0]
    fast = FastForward(run.model, encoded, tokenizer.pad_token_id, first_layer=layer)
    with torch.no_grad():
        nll = fast(list(range(len(encoded)))).nll
    assert nll.dtype == torch.float32, f"losses are {nll.dtype}, not float32"
    step = sorted(entry.seconds for entry in run.log)[len(run.log) // 2]
    return (
        f"L0 {record['base_loss']:.3f} → L1 {record['final_loss']:.3f} "
        f"(exact match {report.exact_match:.0%}), {run.steps} steps, "
        f"median step {1000 * step:.1f} ms, {record['config']['forward']}"
    )


def sweep(args, folder: Path, executor, name: str) -> str:
    spec = SweepSpec(
        model=args.model,
        ranks=(1, 2),
        lengths=(32,),
        max_steps=args.steps,
        plateau_window=10 * args.steps,  # every point trains all its steps
        device=args.device,
        dtype=args.dtype,
    )
    store = SweepStore(folder / f"{name}.db", spec)
    summary = run_sweep(spec, store, executor, progress=False)
    rows = store.rows()
    assert summary["done"] == 2 and len(rows) == 2, f"{len(rows)} rows recorded, not 2"
    assert all(finite(r["base_loss"], r["final_loss"]) for r in rows), "a loss is not finite"
    return ", ".join(
        f"{r['key']} ΔL {r['delta_loss']:.3f} in {r['wall_seconds']:.1f} s" for r in rows
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="model to check (default: tiny)")
    parser.add_argument("--dtype", default="bfloat16", help="base weights' dtype")
    parser.add_argument("--steps", type=int, default=30, help="steps of each run")
    parser.add_argument("--ray", action="store_true", help="also run the sweep on a local Ray")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        print("CUDA is not available on this machine: nothing to check", file=sys.stderr)
        return 2
    where = torch.cuda.get_device_name(args.device) if on_gpu else "CPU"
    print(
        f"{where} · torch {torch.__version__} · {args.model} in {args.dtype} · {args.steps} steps",
        flush=True,
    )
    checks = Checks()
    for method in METHODS:
        checks.run(f"train + probe {method}", lambda m=method: train_and_probe(args, m))
    with tempfile.TemporaryDirectory() as folder:
        checks.run("sweep (local)", lambda: sweep(args, Path(folder), LocalExecutor(1), "local"))
        if args.ray:
            from memlaw.ray_executor import RayExecutor

            checks.run("sweep (ray)", lambda: sweep(args, Path(folder), RayExecutor(), "ray"))
    if on_gpu:
        peak = torch.cuda.max_memory_allocated(args.device) / 2**20
        print(f"peak GPU memory of this process: {peak:.0f} MiB")
    if checks.failed:
        print(f"{len(checks.failed)} check(s) failed: {', '.join(checks.failed)}", file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
