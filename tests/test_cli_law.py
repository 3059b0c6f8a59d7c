"""memlaw sweep / fit / plan / report on the command line, with synthetic sweep databases."""

import json
from pathlib import Path

import pytest

from memlaw.law import MemoryLaw
from memlaw.sweep import SweepSpec, SweepStore
from tests.test_cli import memlaw
from tests.test_sweep_report import synthetic_row


def make_db(path: Path, rows) -> Path:
    spec = SweepSpec(
        model="tiny", data="random", ranks=(1, 2, 4, 8), lengths=(16, 32, 64), max_steps=40
    )
    store = SweepStore(path, spec)
    for row in rows:
        store.add(row)
    store.close()
    return path


def law_rows():
    return [synthetic_row(r, n, capped=False) for n in (16, 32, 64) for r in (1, 2, 4, 8)]


def test_fit_plan_report(tmp_path, capsys, monkeypatch):
    db = make_db(tmp_path / "s.db", law_rows())
    code, out, err = memlaw(
        capsys, monkeypatch, "fit", "--db", db, "-o", tmp_path / "law.json", "--bootstrap", 20
    )
    assert code == 0, err
    assert "alpha" in out and "hold-out" in out
    law = MemoryLaw.load(tmp_path / "law.json")
    assert law.alpha_ == pytest.approx(0.4, abs=1e-3) and law.beta_ == pytest.approx(0.5, abs=1e-3)
    assert law.metadata_["model"] == "tiny"

    code, out, err = memlaw(
        capsys,
        monkeypatch,
        "plan",
        "--law",
        tmp_path / "law.json",
        "-m",
        "tiny",
        "--length",
        48,
        "--rank",
        2,
        "--png",
        tmp_path / "plan.png",
        "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["length"] == 48 and result["current"]["rank"] == 2
    delta = {row["rank"]: row["predicted_delta"] for row in result["rows"]}
    assert delta[4] == pytest.approx(2.0 * 4**0.4 * 48**-0.5 + 0.05, rel=1e-3)
    assert (tmp_path / "plan.png").stat().st_size > 0

    code, out, err = memlaw(capsys, monkeypatch, "report", "--db", db, "-o", tmp_path / "r.html")
    assert code == 0, err
    assert "data:image/png;base64" in (tmp_path / "r.html").read_text()


def test_plan_counts_length_from_a_data_file(tmp_path, capsys, monkeypatch):
    db = make_db(tmp_path / "s.db", law_rows())
    memlaw(capsys, monkeypatch, "fit", "--db", db, "-o", tmp_path / "law.json", "--bootstrap", 0)
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a:", "target": "12345"}\n{"prompt": "b:", "target": "678"}\n')
    code, out, err = memlaw(
        capsys,
        monkeypatch,
        "plan",
        "--law",
        tmp_path / "law.json",
        "-m",
        "tiny",
        "--data",
        data,
        "--png",
        tmp_path / "p.png",
        "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["length"] == 8 and result["base_loss"] > 0


def one_line_error(capsys, monkeypatch, *args) -> str:
    code, _, err = memlaw(capsys, monkeypatch, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_too_few_points(tmp_path, capsys, monkeypatch):
    db = make_db(tmp_path / "s.db", law_rows()[:3])
    err = one_line_error(capsys, monkeypatch, "fit", "--db", db, "-o", tmp_path / "l.json")
    assert "points" in err
    assert not (tmp_path / "l.json").exists()


def test_no_positive_delta(tmp_path, capsys, monkeypatch):
    rows = law_rows()
    for row in rows:
        row["delta_loss"] = -0.1
    db = make_db(tmp_path / "s.db", rows)
    err = one_line_error(capsys, monkeypatch, "fit", "--db", db, "-o", tmp_path / "l.json")
    assert "ΔL" in err


def test_corrupt_and_missing_database(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"garbage" * 200)
    assert "not a usable sweep database" in one_line_error(capsys, monkeypatch, "fit", "--db", bad)
    assert "does not exist" in one_line_error(
        capsys, monkeypatch, "report", "--db", tmp_path / "none.db"
    )


def test_sweep_refuses_another_configuration_and_bad_grids(tmp_path, capsys, monkeypatch):
    db = make_db(tmp_path / "s.db", [])
    err = one_line_error(
        capsys,
        monkeypatch,
        "sweep",
        "-m",
        "tiny",
        "--db",
        db,
        "--lr",
        "0.5",
        "--max-steps",
        40,
        "--ranks",
        "1,2,4,8",
        "--lengths",
        "16,32,64",
    )
    assert "other settings" in err
    err = one_line_error(
        capsys, monkeypatch, "sweep", "-m", "tiny", "--db", tmp_path / "n.db", "--ranks", "0,2"
    )
    assert "--ranks must be positive integers" in err
    err = one_line_error(
        capsys, monkeypatch, "sweep", "-m", "tiny", "--db", tmp_path / "n.db", "--lengths", "-4"
    )
    assert "--lengths must be positive integers" in err
    err = one_line_error(
        capsys, monkeypatch, "sweep", "-m", "tiny", "--db", tmp_path / "n.db", "--seeds", "a"
    )
    assert "--seeds must be comma-separated integers" in err


def test_law_for_another_model(tmp_path, capsys, monkeypatch):
    db = make_db(tmp_path / "s.db", law_rows())
    memlaw(capsys, monkeypatch, "fit", "--db", db, "-o", tmp_path / "law.json", "--bootstrap", 0)
    err = one_line_error(
        capsys,
        monkeypatch,
        "plan",
        "--law",
        tmp_path / "law.json",
        "-m",
        "smollm2-135m",
        "--length",
        100,
        "--png",
        tmp_path / "p.png",
    )
    assert "fitted for model tiny, not smollm2-135m" in err
    assert "ships no law" in one_line_error(
        capsys, monkeypatch, "plan", "-m", "tiny", "--length", 100
    )


def test_the_shipped_reference_law_plans_for_the_default_model(tmp_path, capsys, monkeypatch):
    from memlaw.cli import reference_law_path

    shipped = reference_law_path("smollm2-135m")
    copy = Path(__file__).resolve().parents[1] / "laws" / "smollm2-135m.json"
    assert shipped.read_text() == copy.read_text()  # laws/ holds the same law as the package
    law = MemoryLaw.load(shipped)
    assert law.metadata_["model"] == "smollm2-135m" and law.alpha_ > 0 and law.beta_ > 0
    code, out, err = memlaw(
        capsys,
        monkeypatch,
        "plan",
        "--length",
        1000,
        "--rank",
        4,
        "--png",
        tmp_path / "plan.png",
        "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["current"]["rank"] == 4 and (tmp_path / "plan.png").is_file()


def test_plan_names_the_law_and_refuses_other_modules(tmp_path, capsys, monkeypatch):
    from memlaw.cli import reference_law_path

    law = MemoryLaw.load(reference_law_path("smollm2-135m"))
    fitted_on = law.metadata_["modules"]
    code, out, err = memlaw(
        capsys, monkeypatch, "plan", "--length", 1000, "--png", tmp_path / "plan.png"
    )
    assert code == 0, err
    assert f"LoRA on {fitted_on}" in out and "smollm2-135m" in out
    assert "rank None" not in out and "(None)" not in out
    other = "q_proj" if fitted_on != "q_proj" else "mlp"
    err = one_line_error(
        capsys,
        monkeypatch,
        "plan",
        "--length",
        1000,
        "--modules",
        other,
        "--png",
        tmp_path / "p2.png",
    )
    assert f"fitted for LoRA on {fitted_on}, not {other}" in err
    assert not (tmp_path / "p2.png").exists()


def test_plan_checks_the_law_before_reading_the_data(tmp_path, capsys, monkeypatch):
    from memlaw.cli import reference_law_path

    fitted_on = MemoryLaw.load(reference_law_path("smollm2-135m")).metadata_["modules"]
    other = "q_proj" if fitted_on != "q_proj" else "mlp"
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    # The modules mismatch is reported, not the broken file: no model load, no base-loss pass.
    err = one_line_error(
        capsys,
        monkeypatch,
        "plan",
        "--data",
        broken,
        "--modules",
        other,
        "--png",
        tmp_path / "p.png",
    )
    assert f"not {other}" in err
