"""The benchmark scripts run end to end (on `tiny`, a few steps), so `make bench` cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


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
        *("--workdir", str(tmp_path / "work"), "--out", str(out)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
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
    assert {(c["batch_size"], c["rank"]) for c in search["configs"]} >= {(1, 4), (0, 4)}
    assert [r["every"] for r in search["check_interval"]["rows"]] == [1, 2]
    assert runs["memlaw-fast"]["command"][-6:] == "--batch-size 0 --lr 0.05 --rank 8".split()
    assert runs["memlaw-fast"]["rank"] == 8 and runs["memlaw-fast"]["batch_size"] == 3
    for row in task["summary"]:
        assert row["wall_seconds"]["median"] > 0 and row["peak_rss_mib"]["median"] > 0
    assert "| TRL SFTTrainer + PEFT, same recipe |" in done.stdout
    assert "Recipe search, pb" in done.stdout
