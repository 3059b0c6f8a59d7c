"""Step time of the reference PEFT path vs the fast path on the default model, side by side.

Run: .venv/bin/python bench/step_time.py [--entries 24] [--length 1024] [--steps 12]
Writes bench/results/step_time.json and prints a markdown table. Ratios, not absolute seconds,
are the result: both paths run in the same process, interleaved, on the same data.
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import torch

from memlaw.adapters import LoraSpec
from memlaw.atomic import atomic_write_json
from memlaw.data import encode_items, generate_phonebook, generate_random_tokens
from memlaw.models import load_model
from memlaw.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results"


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    """The machine's float32 matmul rate: the practical ceiling for this work."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def step_flops(config, tokens: int, supervised: int, first_layer: int, fast: bool) -> float:
    """Matmul FLOPs of one training step (2 per multiply-add; attention scores left out).

    Forward: the layers that run (all of them on the reference path, those from the adapter
    up on the fast path) and the LM head (at every position, or at supervised ones only).
    Backward: activation gradients from the loss down to the adapter, on both paths (frozen
    weights get no gradient), which costs about one more forward of the same part.
    """
    d, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    kv = d * config.num_key_value_heads // config.num_attention_heads
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * i
    upper = config.num_hidden_layers - first_layer
    head_positions = supervised if fast else tokens
    forward = (
        tokens * per_layer * (upper if fast else config.num_hidden_layers) + head_positions * d * v
    )
    backward = tokens * per_layer * upper + supervised * d * v
    return 2.0 * (forward + backward)


def time_case(label: str, make_items, steps: int, rank: int) -> dict:
    per_path = {}
    for fast in (False, True, False, True):  # interleaved, so drift hits both paths
        model, tokenizer = load_model("smollm2-135m")
        encoded = encode_items(make_items(tokenizer), tokenizer)
        config = TrainConfig(steps=steps, stop_when_certified=False, fast_path=fast, method="sft")
        started = time.perf_counter()
        run = train(model, tokenizer, encoded, LoraSpec(rank=rank), config, final_probe=False)
        total = time.perf_counter() - started
        step_times = [entry.seconds for entry in run.log[2:]]  # skip warm-up steps
        per_path.setdefault("fast" if fast else "reference", []).append(
            {"median_step_s": statistics.median(step_times), "run_s": total, "steps": steps}
        )
        tokens = sum(len(e.input_ids) for e in encoded)
        supervised = sum(len(e.target_ids) for e in encoded)
    summary = {"case": label, "tokens_per_step": tokens, "supervised_per_step": supervised}
    for path, trials in per_path.items():
        summary[f"{path}_step_s"] = min(t["median_step_s"] for t in trials)
        summary[f"{path}_run_s"] = min(t["run_s"] for t in trials)  # includes setup and caching
    summary["speedup"] = summary["reference_step_s"] / summary["fast_step_s"]
    first_layer = run.config["lora"]["layers"][0]
    for path, fast in (("reference", False), ("fast", True)):
        flops = step_flops(model.config, tokens, supervised, first_layer, fast)
        summary[f"{path}_gflop_per_step"] = flops / 1e9
        summary[f"{path}_gflops"] = flops / 1e9 / summary[f"{path}_step_s"]
    summary["flop_ratio"] = summary["reference_gflop_per_step"] / summary["fast_gflop_per_step"]
    return summary


def peak_rss_of_run(fast: bool, make_items, steps: int, rank: int) -> float:
    """Peak RSS (MiB) of a process that loads the model and trains ``steps`` steps on one path."""
    model, tokenizer = load_model("smollm2-135m")
    encoded = encode_items(make_items(tokenizer), tokenizer)
    config = TrainConfig(steps=steps, stop_when_certified=False, fast_path=fast, method="sft")
    train(model, tokenizer, encoded, LoraSpec(rank=rank), config, final_probe=False)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phonebook_items(entries: int, tokenizer):
    return generate_phonebook(entries)


def random_items(length: int, tokenizer):
    return generate_random_tokens(tokenizer, length)


def peak_rss(make_items, steps: int, rank: int) -> dict:
    """Each path in its own fresh process, so one path's memory cannot hide the other's."""
    out = {}
    for path, fast in (("reference", False), ("fast", True)):
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            out[f"{path}_peak_rss_mib"] = pool.submit(
                peak_rss_of_run, fast, make_items, steps, rank
            ).result()
    return out


def profile_fast_step(make_items, steps: int, rank: int, top: int = 8) -> list[dict]:
    """Where a fast-path SFT step's time goes: the operators with the most self CPU time over
    ``steps`` steps (forward, backward, AdamW), after one warm-up step."""
    from torch.profiler import ProfilerActivity, profile

    from memlaw.adapters import attach_lora
    from memlaw.forward import FastForward
    from memlaw.objectives import sft_loss

    model, tokenizer = load_model("smollm2-135m")
    encoded = encode_items(make_items(tokenizer), tokenizer)
    spec = LoraSpec(rank=rank)
    layer = spec.resolved_layers(model)[0]
    model = attach_lora(model, spec)
    forward = FastForward(model, encoded, tokenizer.pad_token_id, first_layer=layer)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    rows = list(range(len(encoded)))

    def step() -> None:
        out = forward(rows)
        optimizer.zero_grad(set_to_none=True)
        sft_loss(out.nll, out.mask).backward()
        optimizer.step()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count} for e in ranked]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=24)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rank", type=int, default=1)
    args = parser.parse_args()
    inputs = [
        (f"phonebook {args.entries} entries", partial(phonebook_items, args.entries)),
        (f"random tokens, one sequence of {args.length}", partial(random_items, args.length)),
    ]
    cases = []
    for label, make_items in inputs:
        case = time_case(label, make_items, args.steps, args.rank)
        case |= peak_rss(make_items, 4, args.rank)
        case["fast_profile"] = profile_fast_step(make_items, 4, args.rank)
        cases.append(case)
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": torch.get_num_threads(),
        },
        "matmul_gflops": matmul_gflops(),
        "timing_process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "settings": vars(args),
        "cases": cases,
    }
    atomic_write_json(RESULTS / "step_time.json", result)
    print(
        f"float32 matmul: {result['matmul_gflops']:.1f} GFLOP/s, {result['machine']['threads']} threads"
    )
    print(
        "| case | tokens/step | reference s/step | fast s/step | speed-up | FLOP ratio "
        "| reference GFLOP/s | fast GFLOP/s | reference peak RSS | fast peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in cases:
        print(
            f"| {c['case']} | {c['tokens_per_step']} | {c['reference_step_s']:.3f} | {c['fast_step_s']:.3f} "
            f"| {c['speedup']:.2f}x | {c['flop_ratio']:.2f}x | {c['reference_gflops']:.0f} | {c['fast_gflops']:.0f} "
            f"| {c['reference_peak_rss_mib']:.0f} MiB | {c['fast_peak_rss_mib']:.0f} MiB |"
        )

    for c in cases:
        ops = ", ".join(f"{p['op']} {p['share']:.0%}" for p in c["fast_profile"])
        print(f"fast path, {c['case']}: {ops}")


if __name__ == "__main__":
    main()
