"""bfloat16 against float32 on the CPU, side by side: memlaw's fast path on the default model.

CPUs with AMX (Intel Sapphire Rapids and later) multiply bfloat16 matrices several times faster
than float32 ones. memlaw keeps the LoRA weights and every loss in float32 and runs the frozen
base model in bfloat16 with ``--dtype bfloat16`` (attention through PyTorch's math kernel on the
CPU: the fused kernel's bfloat16 backward is slow there, ``memlaw.forward.attention_kernels``). This measures what that buys, in one process,
the two dtypes interleaved so that machine drift hits both:

- the raw matmul rate of each dtype (LM-head and MLP shapes of SmolLM2-135M);
- the median training step on PB1000 at memlaw's default batch (16 items), on the demo's
  25-entry phonebook (batch 5) and on one 512-token sequence of random tokens (a long
  document), and the loss after those steps (the trajectories must agree);
- time to certified recall on the demo's phonebook: ``train`` to a certificate, each dtype
  twice, with the steps it took.

Run: .venv/bin/python bench/bf16_cpu.py [--steps 40] [--threads N]
Writes bench/results/bf16_cpu.json and prints markdown tables (ratios are the result).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from memlaw.adapters import LoraSpec
from memlaw.atomic import atomic_write_json
from memlaw.data import encode_items, generate_phonebook, generate_random_tokens, load_items
from memlaw.models import load_model
from memlaw.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results"
PB1000 = (
    Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "phonebook" / "PB1000.jsonl"
)
DTYPES = ("float32", "bfloat16")


def matmul_rate(dtype: torch.dtype, rows: int, inner: int, outer: int, repeats: int = 10) -> float:
    """GFLOP/s of (rows × inner) @ (inner × outer) in ``dtype``."""
    a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, outer, dtype=dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * rows * inner * outer * repeats / (time.perf_counter() - started) / 1e9


def run(dtype: str, items, *, steps: int | None) -> dict:
    """One run on a fresh model: ``steps`` steps past certification, or (None) to a certificate.
    ``items``: memory items, or a function of the tokenizer that makes them."""
    model, tokenizer = load_model("smollm2-135m", dtype=dtype)
    encoded = encode_items(items(tokenizer) if callable(items) else items, tokenizer)
    config = TrainConfig(method="sft", steps=steps, stop_when_certified=steps is None)
    started = time.perf_counter()
    result = train(model, tokenizer, encoded, LoraSpec(rank=1), config, final_probe=steps is None)
    wall = time.perf_counter() - started
    out = {
        "dtype": dtype,
        "forward": result.config["forward"],
        "steps": result.steps,
        "stop": result.stop_reason,
        "median_step_s": statistics.median(e.seconds for e in result.log[2:]),
        "train_s": result.train_seconds,
        "wall_s": wall,
        "last_loss": result.log[-1].loss,
    }
    if result.report is not None:
        out |= {
            "certified_share": result.report.certified_share,
            "exact_match": result.report.exact_match,
        }
    return out


def side_by_side(label: str, items, *, steps: int | None, rounds: int) -> dict:
    runs = [run(dtype, items, steps=steps) for _ in range(rounds) for dtype in DTYPES]
    case: dict = {"case": label, "runs": runs}
    for dtype in DTYPES:
        mine = [r for r in runs if r["dtype"] == dtype]
        case[dtype] = {
            "median_step_s": min(r["median_step_s"] for r in mine),
            "train_s": statistics.median(r["train_s"] for r in mine),
            "steps": [r["steps"] for r in mine],
            "last_loss": mine[0]["last_loss"],
            "fast_path": all(r["forward"].startswith("fast path") for r in mine),
        }
    case["step_speedup"] = case["float32"]["median_step_s"] / case["bfloat16"]["median_step_s"]
    case["train_speedup"] = case["float32"]["train_s"] / case["bfloat16"]["train_s"]
    return case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40, help="steps per step-time run")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rates = {
        dtype: {
            "lm_head": matmul_rate(getattr(torch, dtype), 320, 576, 49152),
            "mlp": matmul_rate(getattr(torch, dtype), 320, 576, 1536, repeats=50),
        }
        for dtype in DTYPES
    }
    demo = generate_phonebook(25, seed=0)
    cases = [
        side_by_side("PB1000, batch 16, steps", load_items(PB1000), steps=args.steps, rounds=2),
        side_by_side("demo phonebook (25), batch 5, steps", demo, steps=args.steps, rounds=2),
        side_by_side(
            "random tokens, one sequence of 512, steps",
            lambda tokenizer: generate_random_tokens(tokenizer, 512),
            steps=args.steps // 2,
            rounds=2,
        ),
        side_by_side("demo phonebook (25), to certified recall", demo, steps=None, rounds=2),
    ]
    result = {
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
        "matmul_gflops": rates,
        "settings": vars(args),
        "cases": cases,
    }
    atomic_write_json(RESULTS / "bf16_cpu.json", result)
    print(f"threads: {torch.get_num_threads()}\n")
    print("| matmul | float32 GFLOP/s | bfloat16 GFLOP/s | ratio |\n|---|---|---|---|")
    for shape in ("lm_head", "mlp"):
        f32, b16 = rates["float32"][shape], rates["bfloat16"][shape]
        print(f"| {shape} | {f32:.0f} | {b16:.0f} | {b16 / f32:.2f}× |")
    print(
        "\n| case | float32 s/step | bfloat16 s/step | step speed-up | training s (f32 / bf16) "
        "| speed-up | steps (f32 / bf16) | last loss (f32 / bf16) |\n|---|---|---|---|---|---|---|---|"
    )
    for c in cases:
        f32, b16 = c["float32"], c["bfloat16"]
        print(
            f"| {c['case']} | {f32['median_step_s']:.3f} | {b16['median_step_s']:.3f} "
            f"| {c['step_speedup']:.2f}× | {f32['train_s']:.1f} / {b16['train_s']:.1f} "
            f"| {c['train_speedup']:.2f}× | {f32['steps']} / {b16['steps']} "
            f"| {f32['last_loss']:.4f} / {b16['last_loss']:.4f} |"
        )


if __name__ == "__main__":
    main()
