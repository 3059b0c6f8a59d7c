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
