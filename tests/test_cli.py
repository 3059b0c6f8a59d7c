"""The command line: real runs on `tiny`, and a one-line error with exit code 2 for bad input."""

import json
import subprocess
import sys

import pytest

from memlaw.cli import main


def memlaw(capsys, monkeypatch, *args):
    """Run the CLI in-process through its real entry point; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["memlaw", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "args, patience",
    [
        (["-g", "random:32"], 60),  # one sequence: one update per epoch, 60 epochs of them
        (["-g", "phonebook:30"], 10),  # 30 items in batches of 5: 6 updates per epoch
        (["-g", "phonebook:30", "--batch-size", "0"], 60),  # the whole set in one update
        (["-g", "random:32", "--anneal-patience", "3"], 3),  # the user's patience, as given
        (["-g", "random:32", "--anneal-patience", "0"], None),  # a constant rate
    ],
)
def test_train_waits_the_recipes_updates_or_the_given_epochs(
    tmp_path, capsys, monkeypatch, args, patience
):
    out = tmp_path / "run"
    code, stdout, err = memlaw(capsys, monkeypatch, "train", "-m", "tiny", *args,
                               "--steps", 1, "-o", out, "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["config"]["anneal_patience"] == patience


def test_train_then_probe_round_trip(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    code, stdout, _ = memlaw(
        capsys,
        monkeypatch,
        "train",
        "-m",
        "tiny",
        "-g",
        "phonebook:3",
        "--rank",
        8,
        "--steps",
        80,
        "--method",
        "memft-ot",
        "-o",
        out,
        "--json",
    )
    assert code == 0
    record = json.loads(stdout)
    assert record["stop_reason"] == "certified" and record["certified_share"] == 1.0
    assert json.loads((out / "record.json").read_text())["steps"] == record["steps"]

    code, stdout, _ = memlaw(
        capsys, monkeypatch, "probe", "-m", "tiny", "-a", out, "-g", "phonebook:3", "--json"
    )
    assert code == 0
    report = json.loads(stdout)
    assert report["exact_match"] == 1.0 and report["final_loss"] == pytest.approx(
        record["final_loss"]
    )

    code, stdout, _ = memlaw(
        capsys, monkeypatch, "probe", "-m", "tiny", "-a", out, "-g", "phonebook:3", "--tokens"
    )
    assert code == 0 and "phase transition" in stdout and "item 0:" in stdout


def test_train_reads_a_data_file(tmp_path, capsys, monkeypatch):
    data = tmp_path / "facts.jsonl"
    data.write_text('{"prompt": "Capital of Zorbia?", "target": "Quallport"}\n')
    code, stdout, _ = memlaw(
        capsys,
        monkeypatch,
        "train",
        "-m",
        "tiny",
        "-d",
        data,
        "--steps",
        3,
        "--method",
        "sft",
        "-o",
        tmp_path / "r",
        "--layers",
        "0,1",
        "--modules",
        "attn",
    )
    assert code == 0 and "memorization runs" in stdout
    record = json.loads((tmp_path / "r" / "record.json").read_text())
    assert record["n_eff"] == 8 and record["length"] == len("Quallport")
    assert record["config"]["forward"] == "fast path from layer 0"

    code, _, _ = memlaw(
        capsys,
        monkeypatch,
        "train",
        "-m",
        "tiny",
        "-d",
        data,
        "--steps",
        3,
        "--method",
        "sft",
        "-o",
        tmp_path / "ref",
        "--layers",
        "0,1",
        "--modules",
        "attn",
        "--reference-path",
    )
    reference = json.loads((tmp_path / "ref" / "record.json").read_text())
    assert code == 0 and reference["config"]["forward"] == "reference path requested"
    assert [e["loss"] for e in reference["log"]] == pytest.approx(
        [e["loss"] for e in record["log"]], rel=1e-4
    )


def bad(tmp_path):
    malformed = tmp_path / "bad.jsonl"
    malformed.write_text('{"prompt": "a", "target": "1"}\n{oops}\n')
    missing = tmp_path / "fields.jsonl"
    missing.write_text('{"prompt": "a", "value": "1"}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    huge = tmp_path / "huge.jsonl"
    huge.write_text(json.dumps({"prompt": "p", "target": "9" * 1500}) + "\n")
    return {
        "missing file": (["-d", tmp_path / "nope.jsonl"], "does not exist"),
        "malformed": (["-d", malformed], "bad.jsonl:2: malformed JSON"),
        "fields": (["-d", missing], "fields.jsonl:1: missing fields"),
        "empty": (["-d", empty], "holds no memory items"),
        "context": (["-d", huge], "more than the model's context of 1024"),
        "rank": (["-g", "phonebook:2", "--rank", 0], "--rank must be a positive integer"),
        "layer": (["-g", "phonebook:2", "--layers", 7], "layer index 7 is out of range"),
        "module": (["-g", "phonebook:2", "--modules", "wq"], "unknown module name(s) wq"),
        "generator": (["-g", "phonebook:many"], "bad --generate"),
        "no data": ([], "exactly one of --data FILE or --generate SPEC"),
        "method": (["-g", "phonebook:2", "--method", "dpo"], "unknown method 'dpo'"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "malformed",
        "fields",
        "empty",
        "context",
        "rank",
        "layer",
        "module",
        "generator",
        "no data",
        "method",
    ],
)
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys, monkeypatch):
    args, message = bad(tmp_path)[case]
    out = tmp_path / "out"
    code, _, stderr = memlaw(capsys, monkeypatch, "train", "-m", "tiny", *args, "-o", out)
    assert code == 2
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_unknown_model_name(tmp_path, capsys, monkeypatch):
    code, _, stderr = memlaw(
        capsys, monkeypatch, "probe", "-m", "no-such-model-xyz", "-g", "phonebook:2"
    )
    assert code == 2 and "unknown model 'no-such-model-xyz'" in stderr


def test_existing_output_is_not_overwritten(tmp_path, capsys, monkeypatch):
    (tmp_path / "out").mkdir()
    code, _, stderr = memlaw(
        capsys, monkeypatch, "train", "-m", "tiny", "-g", "phonebook:2", "-o", tmp_path / "out"
    )
    assert code == 2 and "already exists" in stderr


def test_non_finite_loss_saves_last_good_adapter_and_exits_2(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    code, _, stderr = memlaw(
        capsys,
        monkeypatch,
        "train",
        "-m",
        "tiny",
        "-g",
        "phonebook:2",
        "--lr",
        "1e30",
        "--grad-clip",
        "1e30",
        "--steps",
        20,
        "--method",
        "sft",
        "-o",
        out,
    )
    assert code == 2
    assert "loss became non-finite" in stderr and "last good adapter was saved" in stderr
    record = json.loads((out / "record.json").read_text())
    assert record["stop_reason"] == "non-finite loss"
    assert (out / "adapter_model.safetensors").is_file()


def test_real_process_prints_no_traceback(tmp_path):
    """Through the installed console script: the exit code and stderr a user sees."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "memlaw.cli",
            "train",
            "-m",
            "tiny",
            "-d",
            str(tmp_path / "x.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and "Traceback" not in result.stderr


def test_demo_memorizes_to_certified_recall_and_probes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    code, stdout, err = memlaw(
        capsys, monkeypatch, "demo", "-m", "tiny", "--entries", 2, "--rank", 8, "-o", out
    )
    assert code == 0, err
    record = json.loads((out / "record.json").read_text())
    probe = json.loads((out / "probe.json").read_text())
    assert record["stop_reason"] == "certified"
    assert record["config"]["requested_method"] == "memft"  # memlaw train's default method
    assert probe["certified_share"] == probe["exact_match"] == probe["token_certified_share"] == 1.0
    assert "100.0% of target tokens above p = 0.5" in stdout
    assert "100.0% recalled exactly by greedy decoding" in stdout
    assert "total time:" in stdout
    # 2 items, one batch: lr 1e-2, and the wait of 60 updates is 60 epochs
    assert "recipe: memft, AdamW lr 0.01 halved after 60 epochs" in stdout
    assert record["config"]["lr"] == 0.01 and record["config"]["anneal_patience"] == 60
    # no law for tiny: the demo says so and trains the rank it was given
    code, stdout, err = memlaw(capsys, monkeypatch, "demo", "-m", "tiny", "--entries", 2, "-o", out)
    assert code == 0, err
    assert "plan: memlaw ships no law for 'tiny'" in stdout


def test_demo_compares_sft_published_and_recommended_memft(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    args = ("demo", "-m", "tiny", "--entries", 3, "--steps", 4, "--rank", 4, "--compare", "-o", out)
    code, stdout, err = memlaw(capsys, monkeypatch, *args)
    assert code == 0, err
    for method in ("sft", "memft-ot", "memft"):
        record = json.loads((out / method / "record.json").read_text())
        assert record["config"]["requested_method"] == method
        assert (out / method / "adapter_model.safetensors").is_file()
    recommended = json.loads((out / "memft" / "record.json").read_text())["config"]
    assert recommended["method"] != "memft" and recommended["train_tau"] is not None
    assert (out / "demo.png").stat().st_size > 0
