"""Wall time of a small calibration sweep on the default model: reference path vs fast path.

The same grid (ranks × lengths of random tokens, a fixed number of steps per point, no plateau
stop so that both paths do the same steps) runs twice through ``memlaw.sweep`` with the local
executor, once per path, each into its own SQLite store; the two must agree on every point's
loss (the fast path is exact), and the ratio of wall times is the result.

Run: .venv/bin/python bench/sweep_throughput.py [--ranks 1,4] [--lengths 64,256] [--steps 20]
Writes bench/results/sweep_throughput.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from memlaw.atomic import atomic_write_json
from memlaw.sweep import LocalExecutor, SweepSpec, SweepStore, run_sweep

RESULTS = Path(__file__).parent / "results"


def timed_sweep(spec: SweepSpec, db: Path, workers: int) -> tuple[float, list[dict]]:
    store = SweepStore(db, spec)
    started = time.perf_counter()
    run_sweep(spec, store, LocalExecutor(workers=workers), progress=False)
    seconds = time.perf_counter() - started
    rows = store.rows()
    store.close()
    return seconds, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ranks", default="1,4")
    parser.add_argument("--lengths", default="64,256")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "sweep_throughput.json")
    args = parser.parse_args()
    grid = {
        "model": args.model,
        "ranks": tuple(int(r) for r in args.ranks.split(",")),
        "lengths": tuple(int(n) for n in args.lengths.split(",")),
        "max_steps": args.steps,
        "plateau_window": 10**6,  # never: both paths train every step of the cap
    }
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for path, fast in (("reference", False), ("fast", True)):
            spec = SweepSpec(**grid, fast_path=fast)
            seconds, rows = timed_sweep(spec, Path(folder) / f"{path}.db", args.workers)
            results[path] = {"wall_seconds": seconds, "rows": rows}
            print(f"{path}: {seconds:.1f} s for {len(rows)} points", flush=True)
    reference = {r["key"]: r for r in results["reference"]["rows"]}
    worst = max(
        abs(r["final_loss"] - reference[r["key"]]["final_loss"])
        / max(abs(reference[r["key"]]["final_loss"]), 1e-6)
        for r in results["fast"]["rows"]
    )
    train_seconds = {
        path: sum(r["train_seconds"] for r in results[path]["rows"]) for path in results
    }
    report = {
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
        "settings": {k: str(v) for k, v in vars(args).items()},
        "points": len(reference),
        "reference_wall_seconds": results["reference"]["wall_seconds"],
        "fast_wall_seconds": results["fast"]["wall_seconds"],
        "wall_speedup": results["reference"]["wall_seconds"] / results["fast"]["wall_seconds"],
        "reference_train_seconds": train_seconds["reference"],
        "fast_train_seconds": train_seconds["fast"],
        "train_speedup": train_seconds["reference"] / train_seconds["fast"],
        "max_relative_final_loss_difference": worst,
        "rows": {path: results[path]["rows"] for path in results},
    }
    atomic_write_json(args.out, report)
    print(
        "\n| points | steps each | reference wall s | fast wall s | wall speed-up "
        "| train-time speed-up | max final-loss difference |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {report['points']} | {args.steps} | {report['reference_wall_seconds']:.0f} "
        f"| {report['fast_wall_seconds']:.0f} | {report['wall_speedup']:.2f}× "
        f"| {report['train_speedup']:.2f}× | {worst:.1e} |"
    )


if __name__ == "__main__":
    main()
