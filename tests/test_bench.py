"""The benchmark scripts run end to end (on `tiny`, a few steps), so `make bench` cannot rot."""

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench(command: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a bench script to its end; it must succeed."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def load_bench(name: str):
    """A bench script as a module (bench/ is not a package)."""
    import importlib.util

    loaded = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


def test_memft_vs_sft_bench_runs_and_summarizes(tmp_path):
    out = tmp_path / "memft.json"
    command = [
        sys.executable,
        str(BENCH / "memft_vs_sft.py"),
        *("--model", "tiny", "--seeds", "0,1", "--cap", "6", "--budget", "2"),
        *("--entries", "2", "--length", "16", "--variants", "sft,memft-ot margin 0.8"),
        *("--long-variants", "sft,memft-sw", "--out", str(out)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    phonebook, long_context = report["cases"]
    assert [s["variant"] for s in phonebook["summary"]] == ["sft", "memft-ot margin 0.8"]
    assert len(phonebook["runs"]) == 4 and len(long_context["runs"]) == 4
    assert long_context["length"] == 16 and long_context["items"] == 1
    for run in phonebook["runs"]:
        assert 0 <= run["exact_at_budget"] <= 1 and run["steps"] <= 6
        assert run["down_crossings_per_token"] >= 0  # token dynamics were recorded
    assert {r["method"] for r in long_context["runs"]} == {"sft", "memft-sw-window"}
    assert "| sft |" in done.stdout


def test_time_to_recall_bench_runs_every_contender(tmp_path):
    """Every contender in its own process on `tiny` (a generated phonebook, so no ../shared),
    one seed, tiny caps, with a tiny recipe search; the JSON has each one's metrics."""
    out = tmp_path / "ttr.json"
    command = [
        sys.executable,
        str(BENCH / "time_to_recall.py"),
        *("--model", "tiny", "--tasks", "pb", "--generate-phonebook", "3", "--seeds", "0"),
        *("--rank", "4", "--max-epochs", "3", "--trl-default-cap", "1", "--timeout", "900"),
        "--fast-recipe=--batch-size 0 --lr 0.05 --rank 8",
        *("--search", "--search-batches", "1,0", "--search-lrs", "0.05"),
        *("--search-rank-multipliers", "1,2", "--search-max-epochs", "4"),
        *("--search-check-every", "1,2", "--search-cap", "30"),
        *("--search-dtypes", "bfloat16,float32"),  # stage 1 in bfloat16: its path is exercised
        *("--search-warmups", "1"),
        *("--workdir", str(tmp_path / "work"), "--out", str(out)),
    ]
    done = run_bench(command, timeout=3600)
    report = json.loads(out.read_text())
    (task,) = report["tasks"]
    assert task["items"] == 3 and task["length_tokens"] == 30
    contenders = ["trl-same", "trl-defaults", "peft-loop", "memlaw-default", "memlaw-fast"]
    assert [s["contender"] for s in task["summary"]] == contenders
    runs = {r["contender"]: r for r in task["runs"]}
    assert sorted(runs) == sorted(contenders)
    for name, run in runs.items():
        assert run["returncode"] == 0, (name, run.get("log_tail"))
        assert run["adapter_on_disk"], name
        assert run["wall_seconds"] > 0 and run["peak_rss_mib"] > 0 and run["cpu_seconds"] > 0
        assert run["epochs"] >= 1 and run["optimizer_steps"] >= 1, name
        assert isinstance(run["certified"], bool)
        for phase in ("startup", "model_load", "data", "training", "save", "other"):
            assert phase in run["phases"], (name, phase)
        assert abs(sum(run["phases"].values()) - run["wall_seconds"]) < 1e-6
    # one adapter for every contender: the same rank and modules, so the same parameters
    same = {runs[c]["trainable_params"] for c in contenders if c != "memlaw-fast"}
    assert len(same) == 1
    assert "base_loss" in runs["memlaw-default"]["phases"]
    assert "final_probe" in runs["memlaw-default"]["phases"]
    assert runs["trl-defaults"]["lr"] == 2e-5 and runs["trl-same"]["lr"] == 0.01
    assert runs["trl-defaults"]["stop"] in ("time cap", "certified", "epoch cap")
    assert runs["peft-loop"]["epochs"] <= 3 and runs["trl-same"]["epochs"] <= 3
    # the search (its configurations, the check-interval study); memlaw-fast ran the recipe
    # given on the command line, which wins over the search's
    search = report["search"]["pb"]
    assert {(c["batch_size"], c["rank"], c["dtype"]) for c in search["configs"]} >= {
        (1, 4, "bfloat16"),
        (0, 4, "bfloat16"),
    }
    if search["winner"] is not None:  # a searched recipe names its dtype unless float32
        named = "--dtype bfloat16" in search["recipe"]
        assert named == (search["winner"]["dtype"] == "bfloat16")
    assert [r["every"] for r in search["check_interval"]["rows"]] == [1, 2]
    for config in search["configs"]:  # warm-up only for the best pairs, after stage 1
        assert config["warmup_epochs"] in (0, 1)
        assert config["warmup_steps"] == config["warmup_epochs"] * (
            3 if config["batch_size"] == 1 else 1
        )
    assert runs["memlaw-fast"]["command"][-6:] == "--batch-size 0 --lr 0.05 --rank 8".split()
    assert runs["memlaw-fast"]["rank"] == 8 and runs["memlaw-fast"]["batch_size"] == 3
    for row in task["summary"]:
        assert row["wall_seconds"]["median"] > 0 and row["peak_rss_mib"]["median"] > 0
    assert "| TRL SFTTrainer + PEFT, same recipe |" in done.stdout
    assert "Recipe search, pb" in done.stdout
    assert report["journal"]["runs_reused"] == 0
    # a rerun (a new session) takes every finished run from the journal and runs none again
    again = run_bench(command)
    rerun = json.loads(out.read_text())
    searched = len(search["runs"]) + 1  # + the check-interval study's one seed
    assert rerun["journal"]["runs_reused"] == searched + len(contenders)
    assert [r["wall_seconds"] for r in rerun["tasks"][0]["runs"]] == [
        r["wall_seconds"] for r in task["runs"]
    ]
    assert rerun["search"]["pb"]["runs"] == search["runs"]
    assert rerun["tasks"][0]["headline"] == task["headline"]  # one session: side by side
    searches = [ln for ln in again.stdout.splitlines() if ln.startswith("search pb batch")]
    assert len(searches) == len(search["runs"])
    assert all(ln.endswith("(journal)") for ln in searches)  # nothing searched again


def test_time_to_recall_check_interval_study_runs_alone(tmp_path):
    """--check-interval-only: the plain-loop study without a search or contenders; each
    interval's stop is a multiple of it, and a rerun takes the seed from the journal."""
    out = tmp_path / "study.json"
    command = [
        sys.executable,
        str(BENCH / "time_to_recall.py"),
        *("--model", "tiny", "--tasks", "pb", "--generate-phonebook", "3", "--seeds", "0"),
        *("--rank", "4", "--lr", "0.05", "--batch-size", "0", "--max-epochs", "80"),
        *("--check-interval-only", "--search-check-every", "1,2,4"),
        *("--workdir", str(tmp_path / "work"), "--out", str(out)),
    ]
    done = run_bench(command)
    report = json.loads(out.read_text())
    study = report["check_interval"]["pb"]
    assert report["search"] == {} and report["contenders"] == {}
    assert report["tasks"][0]["runs"] == []
    assert [r["every"] for r in study["rows"]] == [1, 2, 4]
    assert study["lr"] == 0.05 and study["loop"].startswith("plain PEFT")
    stops = {row["every"]: row for row in study["per_seed"]}
    for every, row in stops.items():  # tiny certifies in ~13 epochs, far below the cap
        assert row["certified"] and row["epochs"] % every == 0
        assert row["checks"] == row["epochs"] // every
        assert row["epochs"] >= stops[1]["epochs"]  # a sparser check never stops sooner
    assert "Certification check interval" in done.stdout
    run_bench(command)
    assert json.loads(out.read_text())["journal"]["runs_reused"] == 1
    empty = subprocess.run(
        [*command, "--search-check-every", ""], capture_output=True, text=True, timeout=120
    )
    assert empty.returncode == 2 and "--check-interval-only needs intervals" in empty.stderr


def test_memft_at_capacity_bench_runs_reports_and_resumes(tmp_path):
    """Every part on `tiny` (a tiny regime, two methods, two seeds, two epoch caps, a small
    Long-Context file, a two-rank efficiency grid, the audit); a second run resumes: it runs no
    point again and leaves every database as it was."""
    import sqlite3

    from memlaw.sweep import SweepStore

    long_text = tmp_path / "lc.jsonl"
    matching = "memory is what the adapter keeps, token after token, " * 3
    long_text.write_text(json.dumps({"question": "Repeat:", "matching": matching}) + "\n")
    out = tmp_path / "results"
    command = [
        sys.executable,
        str(BENCH / "memft_at_capacity.py"),
        *("--model", "tiny", "--regime", "1:16", "--methods", "sft,memft", "--seeds", "0,1"),
        *("--epochs", "2", "--long-epochs", "3", "--efficiency", "16"),
        *("--efficiency-ranks", "1,2", "--long-context-file", str(long_text)),
        *("--long-context-length", "16", "--workers", "1", "--out-dir", str(out)),
    ]
    done = run_bench(command)
    assert "estimated wall time" in done.stdout
    report = json.loads((out / "memft_at_capacity.json").read_text())
    assert [(r["regime"], r["epoch_cap"]) for r in report["regimes"]] == [("1:16", 2), ("1:16", 3)]
    for regime in report["regimes"]:
        assert list(regime["methods"]) == ["sft", "memft"]
        for summary in regime["methods"].values():
            assert summary["seeds_done"] == 2 and summary["seeds"] == [0, 1]
            assert 0 <= summary["certified_share"]["min"] <= summary["certified_share"]["max"] <= 1
            for metric in ("exact_match", "token_certified_share", "memorized_bits"):
                assert summary[metric] is not None, metric
            assert summary["token_steps"]["min"] > 0 and not summary["token_steps_estimated"]
            assert summary["epochs"]["max"] <= regime["epoch_cap"]
        # two seeds: never a verdict
        assert regime["verdicts"]["memft"]["certified_share"]["verdict"] == "pending"
        assert regime["recommended"]["method"] is None
    # Long-Context at both budgets (one update per epoch: the longer one matters most there)
    assert [lc["epoch_cap"] for lc in report["long_context"]] == [2, 3]
    for long_context in report["long_context"]:
        assert list(long_context["methods"]) == ["sft", "memft-sw"]
        assert long_context["methods"]["memft-sw"]["seeds_done"] == 2
    efficiency = report["efficiency"]
    assert efficiency["ranks"] == [1, 2] and len(efficiency["cells"]) == 4
    for found in efficiency["smallest_certifying_rank"]["16"].values():
        assert found["status"] in ("measured", "none of the ranks")
        assert found["rank"] in (1, 2, None)
    audit = report["audit"]  # on the sweep's own stored adapter of SFT seed 0: nothing trained
    assert audit["rank"] == 1 and audit["length"] == 16 and not audit["trained_now"]
    assert audit["resumed_from"].endswith("memft_at_capacity-phonebook-e2.db#r1-l16-n1-sft-s0")
    assert 0 <= audit["audit"]["gradient_mass_above"] <= 1
    assert 0 <= audit["training"]["above_share_over_training"] <= 1
    (sft_seed0,) = SweepStore(out / "memft_at_capacity-phonebook-e2.db").rows(
        key="r1-l16-n1-sft-s0"
    )
    assert audit["training"]["certified_share"] == sft_seed0["certified_share"]
    mechanism = report["mechanism"]  # every SFT seed of the regime, from the sweep alone
    assert [s["seed"] for s in mechanism["seeds"]] == [0, 1]
    for seed in mechanism["seeds"]:
        assert 0 <= seed["token_steps_above_over_training"] <= 1
        low, high = seed["end_gradient_mass_above_low"], seed["end_gradient_mass_above_high"]
        assert 0 <= low <= high <= 1
    assert "The mechanism in the sweep's SFT runs" in done.stdout
    assert (out / "memft_at_capacity.png").is_file()
    assert "| sft | 2 |" in done.stdout and "Parameter efficiency" in done.stdout
    # the 3-epoch budget carried the 2-epoch one over: each capped run went on from its last
    # state (the same run: its first two epochs are the shorter run's), the others were copied
    assert "from the 2-epoch budget:" in done.stdout
    # Long-Context waits the updates a PhoneBook run waits (one update per epoch there)
    for db in ("longcontext-e2", "longcontext-e3", "phonebook-e2"):
        with sqlite3.connect(out / f"memft_at_capacity-{db}.db") as connection:
            (settings,) = connection.execute("SELECT value FROM meta WHERE key = 'settings'")
        assert json.loads(settings[0])["anneal_patience"] == (10 if "phonebook" in db else 60)
    # (Long-Context too, but for the sliding window: a curriculum lays its schedule over the cap)
    for part in ("phonebook", "longcontext"):
        short = {
            r["key"]: r for r in SweepStore(out / f"memft_at_capacity-{part}-e2.db").rows(True)
        }
        for row in SweepStore(out / f"memft_at_capacity-{part}-e3.db").rows(with_record=True):
            if row["method"] == "memft-sw":
                continue
            first = short[row["key"]]
            losses = row["record"]["losses"]
            assert losses[: len(first["record"]["losses"])] == first["record"]["losses"]
            assert ("carried_from" in row["record"]) == (not first["hit_cap"])

    def snapshot():
        tables = {}
        for db in sorted(out.glob("*.db")):
            with sqlite3.connect(db) as connection:
                rows = connection.execute("SELECT key, finished_at FROM points ORDER BY key")
                tables[db.name] = rows.fetchall()
        return tables

    before = snapshot()
    # regime × 2 budgets, Long-Context × 2 budgets, efficiency (rank 1 is the regime: shared)
    assert sum(len(rows) for rows in before.values()) == 4 + 4 + 4 + 4 + 4
    again = run_bench(command)
    assert snapshot() == before
    assert "0 points run" in again.stdout and "for 0 points still to run" in again.stdout
    second = json.loads((out / "memft_at_capacity.json").read_text())
    assert second["regimes"] == report["regimes"] and second["audit"] == report["audit"]
    assert len(second["history"]) == 2
    # a side job of one method and one part rewrites the report without dropping the others
    narrow = [*command, "--methods", "sft", "--efficiency", "", "--long-epochs", "0"]
    run_bench([*narrow, "--no-long-context", "--no-audit", "--report-only"])
    third = json.loads((out / "memft_at_capacity.json").read_text())
    assert third["regimes"] == report["regimes"]
    assert third["long_context"] == report["long_context"]
    assert third["efficiency"] == report["efficiency"]
    assert third["settings"]["methods"] == "('sft',)"  # the invocation, as it was given


def test_memft_at_capacity_verdict_rule_and_smallest_rank():
    """The verdict needs 3 seeds and separated intervals or one direction on every seed; the
    smallest certifying rank needs every seed certified, and says when a rank is pending."""
    import argparse

    bench = load_bench("memft_at_capacity")

    def rows(*shares, method="m", rank=1, length=100):
        return [
            {"seed": seed, "certified_share": share, "method": method, "rank": rank}
            | {"length": length, "layers": 1}
            for seed, share in enumerate(shares)
        ]

    def rule(mine, sft):
        return bench.verdict(rows(*mine), rows(*sft), "certified_share")["verdict"]

    assert rule((0.9, 0.9), (0.1, 0.1)) == "pending"
    assert rule((0.8, 0.9, 0.85), (0.5, 0.6, 0.55)) == "better (intervals separated)"
    assert rule((0.6, 0.7, 0.9), (0.55, 0.65, 0.8)) == "better (all 3 seeds)"
    assert rule((0.5, 0.6, 0.7), (0.55, 0.65, 0.8)) == "worse (all 3 seeds)"
    assert rule((0.6, 0.5, 0.9), (0.55, 0.65, 0.8)) == "no clear difference"
    assert rule((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)) == "tie"
    assert rule((0.1, 0.2, 0.3), (0.5, 0.6, 0.7)) == "worse (intervals separated)"

    args = argparse.Namespace(
        efficiency=(100,), efficiency_ranks=(1, 2, 4), seeds=(0, 1, 2), methods=("sft", "memft")
    )
    grid = (
        rows(0.9, 1.0, 1.0, method="sft", rank=1)
        + rows(1.0, 1.0, 1.0, method="sft", rank=2)
        + rows(1.0, 1.0, method="memft", rank=1)  # one seed still to run
        + rows(1.0, 1.0, 1.0, method="memft", rank=2)
    )
    smallest = bench.efficiency_summary(grid, args)["smallest_certifying_rank"]["100"]
    assert smallest["sft"] == {"rank": 2, "status": "measured"}
    assert smallest["memft"] == {"rank": 2, "status": "at most (a smaller rank is pending)"}
    summary = bench.regime_summary(
        rows(0.5, 0.6, 0.55, method="sft") + rows(0.8, 0.9, 0.85, method="memft"),
        rank=1, length=100, methods=("sft", "memft"), seeds={0, 1, 2}, epochs=400, db="x.db",
        label="test",
    )  # fmt: skip
    assert summary["recommended"]["method"] == "memft"
    assert summary["methods"]["memft"]["certified_share"]["min"] == 0.8
    # One sequence (Long-Context): certified share is 0 or 1, so the verdict and the
    # recommendation go by the certified prefix (the leading tokens above p = 0.5).
    one_sequence = [
        row | {"token_certified_share": share, "certified_prefix": prefix}
        for row, share, prefix in zip(
            rows(0, 0, 0, method="sft") + rows(0, 0, 0, method="memft-sw"),
            (0.85, 0.70, 0.76, 0.52, 0.58, 0.55),
            (7, 0, 0, 87, 48, 145),
            strict=True,
        )
    ]
    summary = bench.regime_summary(
        one_sequence, rank=1, length=100, methods=("sft", "memft-sw"), seeds={0, 1, 2},
        epochs=400, db="x.db", label="test", primary="certified_prefix",
        metrics=(*bench.VERDICT_METRICS, "certified_prefix"),
    )  # fmt: skip
    verdicts = summary["verdicts"]["memft-sw"]
    assert verdicts["certified_share"]["verdict"] == "tie"
    assert verdicts["token_certified_share"]["verdict"] == "worse (intervals separated)"
    assert verdicts["certified_prefix"]["verdict"] == "better (intervals separated)"
    assert summary["recommended"] == {
        "method": "memft-sw",
        "why": "beats SFT on certified prefix",
    }
    table = bench.regime_table(summary)
    assert "| memft-sw | 3 |" in table and "vs SFT (certified prefix) |" in table
    assert "| 93 (48–145) | better (intervals separated) |" in table
    assert "ahead of SFT on another metric" not in table  # only the primary metric is ahead

    # Ahead on exact match but not on the primary metric: listed as a trade-off, and SFT
    # stays recommended.
    trade_off = [
        row | {"exact_match": exact}
        for row, exact in zip(
            rows(0.4, 0.3, 0.2, method="sft") + rows(0.2, 0.1, 0.1, method="memft-sw"),
            (0.70, 0.60, 0.55, 0.78, 0.65, 0.60),
            strict=True,
        )
    ]
    summary = bench.regime_summary(
        trade_off, rank=1, length=100, methods=("sft", "memft-sw"), seeds={0, 1, 2},
        epochs=700, db="x.db", label="test",
    )  # fmt: skip
    assert summary["recommended"]["method"] == "sft"
    assert summary["ahead_of_sft_elsewhere"] == [
        {"method": "memft-sw", "metric": "exact_match", "verdict": "better (all 3 seeds)"}
    ]
    assert "ahead of SFT on another metric: memft-sw on exact match (better (all 3 seeds))" in (
        bench.regime_table(summary)
    )

    # The search runs a rank only for the methods not yet certified on every seed below it.
    from pathlib import Path as _Path

    bench.load_rows = lambda db: grid
    job = {"db": _Path(__file__)}  # an existing file: its rows come from load_rows

    def search(rank):
        job["spec"] = argparse.Namespace(ranks=(rank,), lengths=(100,), methods=("sft", "memft"))
        return bench.search_methods(args, job)

    assert search(1) == ("sft", "memft")  # nothing below rank 1
    assert search(2) == ("sft", "memft")  # sft missed on seed 0, memft lacks a seed at rank 1
    assert search(4) == ()  # both certified every seed at rank 2
    grid = rows(1.0, 1.0, 1.0, method="sft") + rows(0.5, 1.0, 1.0, method="memft")
    assert search(2) == ("memft",)


def test_memft_at_capacity_audit_resumes_the_sweeps_own_run(tmp_path):
    """--audit-resume-from: the audit continues the sweep point's checkpoint (the same run, its
    fingerprint checked) instead of training SFT again, and ends where the sweep point ended."""
    import argparse
    import sqlite3

    from memlaw.models import load_model
    from memlaw.sweep import SweepPoint, baseline_for, memory_set_for, point_run
    from memlaw.train import train

    bench = load_bench("memft_at_capacity")
    args = argparse.Namespace(model="tiny", seeds=(1,), device="cpu", dtype="float32")
    spec = bench.make_spec(args, ranks=(1,), lengths=(64,), methods=("sft",), epochs=12)
    model, tokenizer = load_model("tiny")
    encoded = memory_set_for(spec, 64, tokenizer)
    point = SweepPoint(rank=1, length=64, layers=1, method="sft", seed=1)
    config, lora = point_run(
        spec, point, model, len(encoded), baseline_for(spec, encoded, tokenizer)
    )
    kept = tmp_path / "kept"  # as a sweep leaves it in flight: saved at epoch 10 of 12
    first = train(model, tokenizer, encoded, lora, config, checkpoint=kept, final_probe=False)
    assert first.log[-1].epoch == 12 and (kept / "state.json").is_file()

    out = tmp_path / "results"
    command = [
        sys.executable,
        str(BENCH / "memft_at_capacity.py"),
        *("--model", "tiny", "--regime", "1:64", "--methods", "sft", "--seeds", "1"),
        *("--epochs", "12", "--long-epochs", "0", "--efficiency", "", "--no-long-context"),
        *("--audit-seed", "1", "--audit-resume-from", str(kept), "--workers", "1"),
        *("--out-dir", str(out)),
    ]
    run_bench(command)
    audit = json.loads((out / "memft_at_capacity.json").read_text())["audit"]
    assert audit["seed"] == 1 and audit["resumed_from"] == str(kept) and audit["trained_now"]
    assert audit["adapter"].endswith("-s1")
    record = json.loads((Path(audit["adapter"]) / "record.json").read_text())
    with sqlite3.connect(out / "memft_at_capacity-phonebook-e12.db") as connection:
        (swept,) = connection.execute("SELECT final_loss FROM points").fetchone()
    # the same run: the sweep's point and the resumed audit end at the same loss
    assert abs(record["final_loss"] - swept) <= 1e-4 * abs(swept)
    assert not Path(audit["adapter"] + ".checkpoint").exists()  # cleaned up once saved
    missing = subprocess.run(
        [*command[:-2], "--audit-resume-from", str(tmp_path / "none"), "--out-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert missing.returncode == 2 and "no checkpoint there" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_recipe_rule_bench_runs_each_rate_and_resumes(tmp_path):
    """Each rate on a set at the recipe's batch for its size; a rerun takes every finished run
    from the journal instead of training again."""
    out = tmp_path / "rule.json"
    command = [
        sys.executable,
        str(BENCH / "recipe_rule.py"),
        *("--model", "tiny", "--sets", "phonebook:3@1", "--lrs", "0.01,0.03", "--seeds", "0"),
        *("--cap", "5", "--out", str(out)),
    ]
    first = run_bench(command, timeout=300)
    report = json.loads(out.read_text())
    assert [(c["set"], c["batch"], c["lr"], c["seeds"]) for c in report["cells"]] == [
        ("phonebook:3", 3, 0.01, 1),
        ("phonebook:3", 3, 0.03, 1),
    ]
    assert all(r["seconds"] > 0 and r["stop"] for r in report["runs"])
    assert "| phonebook:3 | 3 | 1 | 3 | 0.01 |" in first.stdout
    journal = tmp_path / "rule-runs.jsonl"
    lines = journal.read_text().splitlines()
    run_bench(command, timeout=300)
    assert journal.read_text().splitlines() == lines  # nothing ran again
    assert json.loads(out.read_text())["runs"] == report["runs"]


def test_fixed_costs_bench_times_each_cost_and_both_base_loss_passes(tmp_path):
    """Every fixed cost is timed, and the base loss read through the fast path's cache is the
    base loss of a full pass of its own."""
    out = tmp_path / "fixed.json"
    command = [
        sys.executable,
        str(BENCH / "fixed_costs.py"),
        *("--model", "tiny", "--generate-phonebook", "40", "--repeats", "2", "--out", str(out)),
    ]
    printed = run_bench(command, timeout=300).stdout
    report = json.loads(out.read_text())
    assert report["forward"].startswith("fast path from layer")
    assert report["base_loss_max_relative_difference"] < 1e-5
    assert len(report["repeats"]) == 2
    assert all(s > 0 for r in report["repeats"] for s in r["seconds"].values())
    assert "| base loss through the cache (now) |" in printed


def test_bench_doctests():
    """The bench scripts' docstring examples hold (pytest collects only tests/ and src/)."""
    import doctest

    for name in ("time_to_recall", "memft_at_capacity", "recipe_rule", "fixed_costs"):
        result = doctest.testmod(load_bench(name))
        assert result.failed == 0 and (result.attempted > 0 or name != "time_to_recall"), name


def test_memft_at_capacity_figure_keeps_one_colour_per_method(tmp_path, monkeypatch):
    """A panel holds only the methods that ran at its length; a method keeps its colour (and
    every panel its legend), so the ℓ 1000 panel cannot show memft in memft-sw's colour."""
    from matplotlib.colors import to_hex

    import memlaw.figures

    bench = load_bench("memft_at_capacity")
    figures = []
    monkeypatch.setattr(memlaw.figures, "save_png", lambda figure, path: figures.append(figure))

    def cell(length, method, share):  # share None: nothing ran there yet
        stats = None if share is None else {"mean": share, "min": share, "max": share}
        return {"length": length, "rank": 1, "method": method, "certified_share": stats}

    cells = [cell(1000, "sft", 1.0), cell(1000, "memft-sw", None), cell(1000, "memft", 0.9)]
    cells += [cell(2000, "sft", 0.3), cell(2000, "memft-sw", 0.02), cell(2000, "memft", 0.25)]
    efficiency = {"ranks": [1, 2], "cells": cells}
    bench.plot_efficiency(efficiency, tmp_path / "f.png")
    (figure,) = figures
    colours = []
    for axes in figure.axes:
        legend = axes.get_legend()
        assert legend is not None
        names = [text.get_text() for text in legend.get_texts()]
        handles = legend.legend_handles
        colours.append({n: to_hex(h.get_color()) for n, h in zip(names, handles, strict=True)})
    short, full = colours
    assert set(short) == {"sft", "memft"} and set(full) == {"sft", "memft-sw", "memft"}
    assert all(short[m] == full[m] for m in short)


def test_stop_rule_check_replays_drops_and_continues(tmp_path):
    """The replay picks exactly the plateau rows whose certified count still rose within the
    patience; --drop deletes them and keeps their old results; a continuation starts from the
    row's stored adapter (its first epoch's loss is the row's final loss, not the base loss)."""
    import sqlite3

    from memlaw.sweep import LocalExecutor, SweepSpec, SweepStore, run_sweep

    check = load_bench("stop_rule_check")
    spec = SweepSpec(
        model="tiny", data="phonebook", ranks=(1,), lengths=(16,), seeds=(0, 1),
        methods=("memft",), max_epochs=30, anneal_patience=2,
    )  # fmt: skip
    db = tmp_path / "s.db"
    run_sweep(spec, SweepStore(db, spec), LocalExecutor(workers=1), progress=False)
    connection = sqlite3.connect(db)
    # seed 0: a new best certified count in its last 3 epochs; seed 1: its best long before
    for seed, counts in ((0, [1, 2, 2, 3]), (1, [3, 2, 2, 2])):
        key = f"r1-l16-n1-memft-s{seed}"
        (text,) = connection.execute("SELECT record FROM points WHERE key = ?", (key,)).fetchone()
        record = json.loads(text) | {"epochs": [[0.5, c] for c in counts]}
        connection.execute(
            "UPDATE points SET stop_reason = 'plateau', record = ? WHERE key = ?",
            (json.dumps(record), key),
        )
    connection.commit()
    connection.close()
    changed = check.changed_rows(db)
    assert [row["key"] for row in changed] == ["r1-l16-n1-memft-s0"]
    # Each row is judged over the patience it ran: seed 1 under a longer one (the recipe's
    # update count on a small set) had its best count within the wait.
    longer = tmp_path / "longer.db"
    connection = sqlite3.connect(longer)
    with contextlib.closing(sqlite3.connect(db)) as source:
        source.backup(connection)  # the rows still in the write-ahead log too
    (text,) = connection.execute("SELECT record FROM points WHERE key LIKE '%s1'").fetchone()
    record = json.loads(text)
    record["config"]["anneal_patience"] = 3
    connection.execute("UPDATE points SET record = ? WHERE key LIKE '%s1'", (json.dumps(record),))
    connection.commit()
    connection.close()
    assert len(check.changed_rows(longer)) == 2
    out = tmp_path / "check.json"
    check.drop_rows(db, changed, out)
    assert SweepStore(db).finished_keys() == {"r1-l16-n1-memft-s1"}
    superseded = json.loads(out.read_text())["superseded"]
    assert superseded["s.db:r1-l16-n1-memft-s0"]["stop_reason"] == "plateau"
    (kept,) = SweepStore(db).rows(with_record=True)
    entry = check.continue_point(db, kept["key"], epochs=2)
    assert entry["continued_at_lr"] == pytest.approx(kept["record"]["config"]["lr"] / 8)
    assert 1 <= entry["epochs_run"] <= 2 and entry["stop_reason"] in ("budget", "certified")
    first = entry["loss_per_epoch"][0]
    assert abs(first - kept["final_loss"]) < abs(first - kept["base_loss"]) / 10


def test_memft_at_capacity_estimate_counts_a_point_in_flight_from_its_checkpoint(tmp_path):
    from tests.test_checkpoint import Killed, run

    bench = load_bench("memft_at_capacity")
    db = tmp_path / "e400.db"
    key = "r1-l2000-n1-sft-s0"
    assert bench.checkpointed_epochs(db, key) == 0  # none yet
    folder = tmp_path / "e400.db.checkpoints" / key
    with pytest.raises(Killed):  # 3 steps per epoch, saved every 2 epochs: killed in epoch 6
        run("sft", folder=folder, kill_at=16)
    assert bench.checkpointed_epochs(db, key) == 4


def test_memft_at_capacity_estimate_knows_memft_sw_restarts_only_its_curriculum():
    """The long budget's estimate: memft-sw's curriculum (PhoneBook) starts afresh, its window
    (Long-Context, one sequence) continues from the first budget's last state, as sft does."""
    from argparse import Namespace

    from memlaw.sweep import SweepPoint

    bench = load_bench("memft_at_capacity")
    args = Namespace(epochs=400, extend_from=None)
    rows = {}
    for method in ("sft", "memft-sw"):
        point = SweepPoint(rank=1, length=512, layers=1, method=method, seed=0)
        rows[point.key] = {"hit_cap": True, "has_final_state": True, "epochs": 400}
    for part, sw in [("phonebook", 0), ("longcontext", 400)]:
        for method, carried in [("sft", 400), ("memft-sw", sw)]:
            point = SweepPoint(rank=1, length=512, layers=1, method=method, seed=0)
            assert bench.carried_epochs(args, point, rows, part) == carried, (part, method)


def test_memft_at_capacity_estimate_leaves_out_methods_the_search_decided(tmp_path, monkeypatch):
    """A method certified on every seed at a smaller rank runs no more efficiency points, so the
    estimate does not count them (it once counted a whole decided length)."""
    bench = load_bench("memft_at_capacity")
    argv = [
        *("--regime", "1:100", "--methods", "sft,memft", "--seeds", "0,1"),
        *("--long-epochs", "0", "--efficiency", "100", "--efficiency-ranks", "1,2"),
        *("--no-long-context", "--no-audit", "--workers", "1", "--out-dir", str(tmp_path)),
    ]
    args = bench.parse_args(argv)
    jobs = bench.plan(args)
    (db,) = {job["db"] for job in jobs}
    db.touch()  # the rows come from load_rows
    label = "parameter efficiency, ℓ 100, rank 2"

    def rank_two_hours(rank_one_shares: dict[str, float]) -> float:
        rows = [
            {"key": f"r1-l100-n1-{method}-s{seed}", "rank": 1, "length": 100}
            | {"method": method, "seed": seed, "certified_share": share}
            for method, share in rank_one_shares.items()
            for seed in (0, 1)
        ]
        monkeypatch.setattr(bench, "load_rows", lambda path: rows)
        monkeypatch.setattr(bench, "finished_keys", lambda path: set())
        return bench.estimate(args, jobs)["at_most_hours"].get(label, 0.0)

    both = rank_two_hours({"sft": 0.9, "memft": 0.9})
    assert both > 0
    assert rank_two_hours({"sft": 1.0, "memft": 0.9}) == pytest.approx(both / 2, abs=0.01)
    assert rank_two_hours({"sft": 1.0, "memft": 1.0}) == 0.0


def test_memft_at_capacity_worker_seconds_count_each_run_once():
    """The longer cap's rows hold the shorter cap's runs too: copied ones whole, continued ones
    in their clock (the report once printed 73.4 h where the runs took 54.5 h)."""
    bench = load_bench("memft_at_capacity")
    ran = {"config": {"method": "memft-sw-curriculum"}}  # the objective memft-sw ran on items
    short = [
        {"key": "copied", "method": "sft", "wall_seconds": 300.0},
        {"key": "continued", "method": "sft", "wall_seconds": 400.0},
        {"key": "afresh", "method": "memft", "wall_seconds": 900.0},
        {"key": "curriculum", "method": "memft-sw", "wall_seconds": 500.0, "record": ran},
    ]
    long = [
        {
            "key": "copied",
            "method": "sft",
            "wall_seconds": 300.0,
            "record": {"carried_from": {"max_epochs": 400}},
        },
        {"key": "continued", "method": "sft", "wall_seconds": 650.0},  # 250 s past 400 epochs
        {"key": "afresh", "method": "memft", "wall_seconds": 800.0},  # no state kept: from 0
        # a curriculum lays itself over the cap, so under a longer one it starts afresh
        {"key": "curriculum", "method": "memft-sw", "wall_seconds": 850.0, "record": ran},
    ]
    assert bench.worker_seconds([short]) == 2100.0
    assert bench.worker_seconds([short, long]) == 2100.0 + 250.0 + 800.0 + 850.0
