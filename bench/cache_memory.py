"""Does a memory set of a million target tokens train within a bounded memory on the fast path?

Each case runs in its own fresh process: load the default model, build the fast path's
hidden-state cache for the whole set, then take a few training steps on batches of it, and
report the peak RSS. The cache (tokens × 576 float32) is 2.2 GiB for a million tokens; beyond
``MEMLAW_HIDDEN_CACHE_LIMIT`` (2 GiB by default) it lives in a memory-mapped file instead of
RAM. The adapter sits at layer 2 so that building the cache costs two layers per token rather
than twenty (the cache's size does not depend on the layer).

Run: .venv/bin/python bench/cache_memory.py [--tokens 1000000] [--steps 3] [--compare-in-ram]
Writes bench/results/cache_memory.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def rss_mib() -> float:
    """Peak resident memory so far (anonymous and file-backed pages together)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resident_now() -> dict:
    """Resident memory now, split: anonymous pages (RAM that cannot be given back without
    swap) and file-backed pages (a memory-mapped cache: the kernel drops them under pressure
    and reads them back from disk)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("RssAnon", "RssFile", "RssShmem"):
            fields[name] = int(value.split()[0]) / 1024
    return {
        "anonymous_mib": fields.get("RssAnon", 0.0),
        "file_backed_mib": fields.get("RssFile", 0.0) + fields.get("RssShmem", 0.0),
    }


def one_case(tokens: int, sequence: int, steps: int, batch: int, limit: int | None) -> dict:
    """Runs in a fresh process: cache the set, train a few steps, measure."""
    if limit is not None:
        os.environ["MEMLAW_HIDDEN_CACHE_LIMIT"] = str(limit)
    from memlaw.adapters import LoraSpec, attach_lora
    from memlaw.data import encode_items, generate_random_tokens
    from memlaw.forward import FastForward
    from memlaw.models import load_model
    from memlaw.objectives import sft_loss

    model, tokenizer = load_model("smollm2-135m")
    after_load = rss_mib()
    items = [
        item
        for seed in range(tokens // sequence)
        for item in generate_random_tokens(tokenizer, sequence, seed=seed)
    ]
    encoded = encode_items(items, tokenizer)
    target_tokens = sum(len(e.target_ids) for e in encoded)
    model = attach_lora(model, LoraSpec(rank=1, layers=(2,)))
    started = time.perf_counter()
    forward = FastForward(model, encoded, tokenizer.pad_token_id, first_layer=2)
    cache_seconds = time.perf_counter() - started
    after_cache = rss_mib()
    resident_after_cache = resident_now()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    started = time.perf_counter()
    for step in range(steps):
        rows = list(range(step * batch, (step + 1) * batch))
        out = forward(rows)
        loss = sft_loss(out.nll, out.mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    hidden = sum(state.numel() * state.element_size() for state in forward.cache)
    return {
        "target_tokens": target_tokens,
        "all_tokens": sum(len(e.input_ids) for e in encoded),
        "cache_limit_bytes": forward.memory_limit,
        "cache_bytes": hidden,
        "cache_on_disk": forward.on_disk,
        "cache_seconds": cache_seconds,
        "step_seconds": (time.perf_counter() - started) / steps,
        "losses": losses,
        "rss_after_model_mib": after_load,
        "rss_after_cache_mib": after_cache,
        "peak_rss_mib": rss_mib(),
        "resident_after_cache": resident_after_cache,
        "resident_after_steps": resident_now(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--sequence", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--compare-in-ram",
        action="store_true",
        help="also run with no limit (the cache in RAM) for comparison; doubles the time",
    )
    args = parser.parse_args()
    cases = []
    # the default bound (spills to disk), and optionally everything in RAM for comparison
    modes = [("default limit (2 GiB)", None)]
    if args.compare_in_ram:
        modes.append(("no limit (all in RAM)", 1 << 40))
    for label, limit in modes:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            result = pool.submit(
                one_case, args.tokens, args.sequence, args.steps, args.batch, limit
            ).result()
        cases.append({"case": label} | result)
        print(f"{label}: peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
    report = {
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
        "settings": vars(args),
        "cases": cases,
    }
    from memlaw.atomic import atomic_write_json

    atomic_write_json(RESULTS / "cache_memory.json", report)
    print(
        "\n| cache | target tokens | cache size | on disk | build s | s/step "
        "| anonymous RSS after cache | after steps | file-backed after steps | peak RSS (all) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in cases:
        cache, steps = c["resident_after_cache"], c["resident_after_steps"]
        print(
            f"| {c['case']} | {c['target_tokens']:,} | {c['cache_bytes'] / 2**30:.2f} GiB "
            f"| {'yes' if c['cache_on_disk'] else 'no'} | {c['cache_seconds']:.0f} "
            f"| {c['step_seconds']:.2f} | {cache['anonymous_mib']:.0f} MiB "
            f"| {steps['anonymous_mib']:.0f} MiB | {steps['file_backed_mib']:.0f} MiB "
            f"| {c['peak_rss_mib']:.0f} MiB |"
        )


if __name__ == "__main__":
    main()
