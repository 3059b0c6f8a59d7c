"""MemFT vs SFT, and the remedies for MemFT's hover at the boundary, side by side in one run.

For each benchmark case and seed, every variant trains the same adapter (rank 1 on the MLP of
layer 20 of the default model, lr 1e-2, full batch) until certified recall or the step cap.
From each run's per-step log we read exact match and certified share at an equal step budget,
and the steps and wall time to certified recall. With ``--token-dynamics`` the per-token
probabilities of every step are kept, to count how often a token that crossed p = 0.5 slides
back below it.

Run: .venv/bin/python bench/memft_vs_sft.py [--seeds 0,1,2] [--cap 250] [--budget 40]
Writes bench/results/memft_vs_sft.json and prints markdown tables.
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
BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"

# The published methods, then the remedies (each one change from MemFT-OT).
VARIANTS = {
    "sft": {"method": "sft"},
    "memft-ot": {"method": "memft-ot"},
    "memft-sw": {"method": "memft-sw"},  # window on one sequence, curriculum on many items
    "memft-ot margin 0.8": {"method": "memft-ot", "train_tau": 0.8},
    "memft-soft": {"method": "memft-soft"},
    "memft-soft margin 0.8": {"method": "memft-soft", "train_tau": 0.8},
    "sft→memft-ot (30 steps)": {"method": "memft-ot", "sft_warmup_steps": 30},
}


def phonebook_items(entries: int, tokenizer):
    path = BENCHMARKS / "phonebook" / "PB1000.jsonl"
    if path.is_file():
        return load_items(path)[:entries], f"{path.name}, first {entries} entries"
    return generate_phonebook(entries), f"generated phonebook, {entries} entries"


def long_context_items(length: int, tokenizer, density: int):
    path = BENCHMARKS / "long_context" / f"r{density}.jsonl"
    if path.is_file():
        return load_items(path)[:1], f"{path.name}, first {length} target tokens"
    return generate_random_tokens(tokenizer, length), f"generated random tokens, {length}"


def slide_backs(token_probabilities: list) -> dict:
    """How tokens move across p = 0.5 over the steps of one run (a token counts in a pair of
    consecutive steps when both trained its item, as under the curriculum)."""
    steps = [
        {(row, j): p for row, item in zip(rows, probs, strict=True) for j, p in enumerate(item)}
        for rows, probs in token_probabilities
    ]
    tokens = len(set().union(*steps)) if steps else 0
    if len(steps) < 2 or tokens == 0:
        return {"down_crossings_per_token": 0.0, "share_near_boundary": 0.0}
    down = sum(
        1
        for before, after in zip(steps, steps[1:], strict=False)
        for key, p in after.items()
        if key in before and before[key] > 0.5 >= p
    )
    near = sum(1 for step in steps for p in step.values() if 0.4 <= p <= 0.6)
    return {
        "down_crossings_per_token": down / tokens,
        "share_near_boundary": near / sum(len(step) for step in steps),
    }


def run_variant(model_name, items, length, variant, seed, cap, budget, dynamics) -> dict:
    model, tokenizer = load_model(model_name)
    encoded = encode_items(items, tokenizer, length=length)
    config = TrainConfig(
        steps=cap, seed=seed, record_token_probabilities=dynamics, **VARIANTS[variant]
    )
    run = train(model, tokenizer, encoded, LoraSpec(rank=1), config, final_probe=False)
    n = len(encoded)
    certified = run.stop_reason == "certified"
    # log[k] is measured on the forward after k updates; a run certified sooner keeps recall
    at_budget = run.log[budget] if len(run.log) > budget else None
    row = {
        "variant": variant,
        "seed": seed,
        "method": run.config["method"],
        "items": n,
        "length": run.config["length"],
        "stop_reason": run.stop_reason,
        "steps": run.steps,
        "train_seconds": run.train_seconds,
        "certified": certified,
        "steps_to_certified": run.steps if certified else None,
        "seconds_to_certified": run.train_seconds if certified else None,
        "exact_at_budget": at_budget.exact_items / n if at_budget else 1.0,
        "certified_at_budget": at_budget.certified_items / n if at_budget else 1.0,
        "final_exact": run.log[-1].exact_items / n,
        "final_certified": run.log[-1].certified_items / n,
        "final_loss": run.log[-1].loss,
        "skipped_steps": sum(e.skipped for e in run.log),
        # per step (measured before its update): items exactly recalled and certified
        "exact_items": [e.exact_items for e in run.log],
        "certified_items": [e.certified_items for e in run.log],
    }
    if dynamics:
        row |= slide_backs(run.token_probabilities)
    return row


def summarize(rows: list[dict]) -> list[dict]:
    def mean_sd(values):
        values = [v for v in values if v is not None]
        if not values:
            return None, None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    sft_steps = {
        r["seed"]: r["steps_to_certified"] for r in rows if r["variant"] == "sft" and r["certified"]
    }
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        runs = [r for r in rows if r["variant"] == variant]
        summary = {"variant": variant, "runs": len(runs)}
        summary["certified_runs"] = sum(r["certified"] for r in runs)
        for key in (
            "exact_at_budget",
            "certified_at_budget",
            "steps_to_certified",
            "seconds_to_certified",
            "final_loss",
            "down_crossings_per_token",
            "share_near_boundary",
        ):
            summary[key], summary[key + "_sd"] = mean_sd([r.get(key) for r in runs])
        ratios = [
            r["steps_to_certified"] / sft_steps[r["seed"]]
            for r in runs
            if r["certified"] and r["seed"] in sft_steps
        ]
        summary["steps_ratio_vs_sft"], summary["steps_ratio_vs_sft_sd"] = mean_sd(ratios)
        out.append(summary)
    return out


def fmt(value, sd=None, pattern="{:.2f}") -> str:
    if value is None:
        return "–"
    text = pattern.format(value)
    return text if sd is None else f"{text} ± {pattern.format(sd)}"


def print_table(case: dict) -> None:
    print(f"\n### {case['name']} — {case['source']}, ℓ = {case['length']}")
    print(f"budget {case['budget']} steps, cap {case['cap']}, seeds {case['seeds']}\n")
    print(
        "| variant | exact @budget | certified @budget | certified runs | steps to certified "
        "| × SFT steps | s to certified | slide-backs / token |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for s in case["summary"]:
        print(
            f"| {s['variant']} | {fmt(s['exact_at_budget'], s['exact_at_budget_sd'])} "
            f"| {fmt(s['certified_at_budget'], s['certified_at_budget_sd'])} "
            f"| {s['certified_runs']}/{s['runs']} "
            f"| {fmt(s['steps_to_certified'], s['steps_to_certified_sd'], '{:.0f}')} "
            f"| {fmt(s['steps_ratio_vs_sft'], s['steps_ratio_vs_sft_sd'])} "
            f"| {fmt(s['seconds_to_certified'], s['seconds_to_certified_sd'], '{:.0f}')} "
            f"| {fmt(s['down_crossings_per_token'], None)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--entries", type=int, default=16, help="PhoneBook entries")
    parser.add_argument("--length", type=int, default=128, help="Long-Context target tokens")
    parser.add_argument("--density", type=int, default=20, help="Long-Context random-token %%")
    parser.add_argument("--cap", type=int, default=250)
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--long-variants", default="sft,memft-ot,memft-sw,memft-ot margin 0.8")
    parser.add_argument("--out", type=Path, default=RESULTS / "memft_vs_sft.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    _, tokenizer = load_model(args.model)
    pb_items, pb_source = phonebook_items(args.entries, tokenizer)
    lc_items, lc_source = long_context_items(args.length, tokenizer, args.density)
    cases = [
        ("PhoneBook", pb_items, None, pb_source, args.variants.split(","), True),
        ("Long-Context", lc_items, args.length, lc_source, args.long_variants.split(","), False),
    ]
    started = time.perf_counter()
    results = []
    for name, items, length, source, variants, dynamics in cases:
        rows = []
        for seed in seeds:
            for variant in variants:
                row = run_variant(
                    args.model, items, length, variant, seed, args.cap, args.budget, dynamics
                )
                rows.append(row)
                print(
                    f"{name} seed {seed} {variant}: {row['stop_reason']} after {row['steps']} "
                    f"steps, exact@{args.budget} {row['exact_at_budget']:.2f}",
                    flush=True,
                )
        results.append(
            {
                "name": name,
                "source": source,
                "length": rows[0]["length"],
                "items": rows[0]["items"],
                "cap": args.cap,
                "budget": args.budget,
                "seeds": seeds,
                "runs": rows,
                "summary": summarize(rows),
            }
        )
    report = {
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
        "model": args.model,
        "lora": "rank 1, MLP of the layer at 2/3 depth",
        "settings": {k: str(v) for k, v in vars(args).items()},
        "wall_seconds": time.perf_counter() - started,
        "cases": results,
    }
    atomic_write_json(args.out, report)
    for case in results:
        print_table(case)
    print(f"\nwall time {report['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
