"""The fixed costs of one ``memlaw train`` run, each timed on its own, and the base-loss pass
done two ways side by side in one process: as a full pass of its own (memlaw before
commit f99388c) and read through the fast path's cache (``memlaw.forward.base_target_loss``,
now).

The fast path runs the frozen layers below the adapter once per set to fill its cache. Reading
the base loss through that cache (adapter off) costs only the layers above, so the two share
one pass of the lower layers. Per repeat, on a fresh model: model load, the fast path's setup
(``choose_forward``: the cache and its 8-row check against the whole model), the base loss
through the cache, the base loss as a pass of its own (the two in alternating order from
repeat to repeat), one certification confirm pass (what ``memlaw train`` runs 1–3 times when
the training pass says every item is certified) and the final probe (teacher forcing and
greedy generation). Medians over repeats; the result is the ratio of the old base-loss cost to
the new one, and of the fixed costs that changed (setup + base loss) before and after.

Run: .venv/bin/python bench/fixed_costs.py [--data FILE.jsonl] [--rank 1] [--repeats 5]
Writes bench/results/fixed_costs.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
PHASES = (
    ("model_load", "model load"),
    ("fast_path_setup", "fast path setup (cache + check)"),
    ("base_loss_through_cache", "base loss through the cache (now)"),
    ("base_loss_own_pass", "base loss, a pass of its own (before)"),
    ("confirm_pass", "one confirm pass"),
    ("final_probe", "final probe (with greedy generation)"),
)


def one_repeat(model_name: str, items, rank: int, own_pass_first: bool) -> dict:
    """Seconds of each fixed cost on a freshly loaded model, and the two base losses."""
    from memlaw.adapters import LoraSpec, attach_lora
    from memlaw.data import encode_items
    from memlaw.forward import base_target_loss, choose_forward
    from memlaw.models import load_model
    from memlaw.probe import mean_target_loss, probe, teacher_forced

    seconds: dict[str, float] = {}
    tick = time.perf_counter()
    model, tokenizer = load_model(model_name)
    seconds["model_load"] = time.perf_counter() - tick
    encoded, pad = encode_items(items, tokenizer), tokenizer.pad_token_id
    spec = LoraSpec(rank=rank)
    layers = spec.resolved_layers(model)
    model = attach_lora(model, spec, seed=0)

    def own_pass() -> float:
        tick = time.perf_counter()
        with model.disable_adapter():
            loss = mean_target_loss(teacher_forced(model, encoded, pad))
        seconds["base_loss_own_pass"] = time.perf_counter() - tick
        return loss

    old = own_pass() if own_pass_first else None
    tick = time.perf_counter()
    forward, note = choose_forward(model, encoded, pad, min(layers))
    seconds["fast_path_setup"] = time.perf_counter() - tick
    tick = time.perf_counter()
    new = base_target_loss(model, forward)
    seconds["base_loss_through_cache"] = time.perf_counter() - tick
    old = own_pass() if old is None else old
    tick = time.perf_counter()
    teacher_forced(model, encoded, pad)
    seconds["confirm_pass"] = time.perf_counter() - tick
    tick = time.perf_counter()
    probe(model, tokenizer, encoded, base_loss=new)
    seconds["final_probe"] = time.perf_counter() - tick
    return {"seconds": seconds, "forward": note, "base_loss": {"own_pass": old, "cache": new}}


def summarize(repeats: list[dict]) -> dict:
    """Median seconds per phase, and the before/after ratios.

    >>> rows = [{"seconds": {"fast_path_setup": 2.0, "base_loss_through_cache": 1.0,
    ...          "base_loss_own_pass": 3.0}}] * 3
    >>> s = summarize(rows)
    >>> s["base_loss_ratio"], s["changed_before"], s["changed_after"]
    (3.0, 5.0, 3.0)
    """
    names = {name for r in repeats for name in r["seconds"]}
    median = {n: statistics.median(r["seconds"][n] for r in repeats) for n in sorted(names)}
    own, cache = median["base_loss_own_pass"], median["base_loss_through_cache"]
    setup = median["fast_path_setup"]
    return {
        "median_seconds": median,
        "base_loss_ratio": own / cache,
        "changed_before": setup + own,
        "changed_after": setup + cache,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default=str(BENCHMARKS / "phonebook" / "PB1000.jsonl"))
    parser.add_argument("--generate-phonebook", type=int, metavar="N", help="instead of --data")
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "fixed_costs.json")
    args = parser.parse_args(argv)
    from memlaw.atomic import atomic_write_json
    from memlaw.data import generate_phonebook, load_items

    if args.generate_phonebook:
        items, source = generate_phonebook(args.generate_phonebook), "generated phonebook"
    else:
        items, source = load_items(args.data), Path(args.data).name
    repeats = [
        one_repeat(args.model, items, args.rank, own_pass_first=i % 2 == 0)
        for i in range(args.repeats)
    ]
    summary = summarize(repeats)
    disagreement = max(
        abs(r["base_loss"]["cache"] - r["base_loss"]["own_pass"]) / r["base_loss"]["own_pass"]
        for r in repeats
    )
    result = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "settings": {
            "model": args.model,
            "data": source,
            "items": len(items),
            "rank": args.rank,
            "repeats": args.repeats,
        },
        "forward": repeats[0]["forward"],
        "base_loss_max_relative_difference": disagreement,
        **summary,
        "repeats": repeats,
    }
    atomic_write_json(args.out, result)
    print(f"{source}, {len(items)} items, rank {args.rank}, {args.repeats} repeats, "
          f"{result['forward']}")  # fmt: skip
    print("| fixed cost | median s |")
    print("|---|---|")
    for name, label in PHASES:
        print(f"| {label} | {summary['median_seconds'][name]:.2f} |")
    print(
        f"base loss, own pass ÷ through the cache: {summary['base_loss_ratio']:.2f}×; setup + "
        f"base loss {summary['changed_before']:.2f} s → {summary['changed_after']:.2f} s; the "
        f"two base losses differ by at most {disagreement:.1e} (relative)"
    )
    return result


if __name__ == "__main__":
    main()
