"""memlaw sweep / fit / plan / report on the command line, with synthetic sweep databases of the
tiny model (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memlaw.fit import certifies
from memlaw.law import MemoryLaw, reference_law_path
from memlaw.sweep import SweepSpec, SweepStore
from tests.test_cli import memlaw
from tests.test_sweep_report import synthetic_row

LAW = {"alpha": 0.4, "beta": 0.5}


def make_db(path: Path, rows) -> Path:
    spec = SweepSpec(
        model="tiny", data="random", ranks=(1, 2, 4, 8), lengths=(16, 32, 64), max_steps=40
    )
    store = SweepStore(path, spec)
    for row in rows:
        store.add(row)
    store.close()
    return path


def law_rows(**changes) -> list[dict]:
    return [
        synthetic_row(r, n, capped=False, **changes) for n in (16, 32, 64) for r in (1, 2, 4, 8)
    ]


def flat(text: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(text.split())


def one_line_error(capsys, monkeypatch, *args) -> str:
    code, _, err = memlaw(capsys, monkeypatch, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error:")
    return err


@pytest.fixture(scope="module")
def sweep_db(tmp_path_factory) -> Path:
    return make_db(tmp_path_factory.mktemp("sweep") / "s.db", law_rows())


def fit_law(capsys, monkeypatch, db: Path, out: Path, *extra) -> Path:
    code, _, err = memlaw(
        capsys, monkeypatch, "fit", "--db", db, "-o", out, "--bootstrap", 0, *extra
    )
    assert code == 0, err
    return out


# --- fit and report ---------------------------------------------------------------------------


def test_fit_prints_and_saves_the_law(sweep_db, tmp_path, capsys, monkeypatch):
    code, out, err = memlaw(
        capsys, monkeypatch, "fit", "--db", sweep_db, "-o", tmp_path / "law.json", "--bootstrap", 20
    )
    assert code == 0, err
    out = flat(out)
    assert "alpha" in out and "forms by AIC: full" in out and "→ full" in out
    assert "hold-out (full" in out and "median relative ΔL error" in out
    assert "recall boundary: N*(ℓ) =" in out
    assert "bootstrap refits succeeded" in out
    law = MemoryLaw.load(tmp_path / "law.json")
    assert law.alpha_ == pytest.approx(LAW["alpha"], abs=1e-3)
    assert law.beta_ == pytest.approx(LAW["beta"], abs=1e-3)
    meta = law.metadata_
    assert meta["model"] == "tiny" and meta["data_kind"] == "random" and meta["modules"] == "mlp"
    assert "boundary" in meta["recall"] and set(meta["holdouts"]) == {"full", "saturating"}


def test_fit_and_report_write_the_same_law_byte_for_byte(sweep_db, tmp_path, capsys, monkeypatch):
    code, _, err = memlaw(
        capsys, monkeypatch, "fit", "--db", sweep_db, "--out", tmp_path / "a.json"
    )
    assert code == 0, err
    code, out, err = memlaw(
        capsys, monkeypatch, "report", "--db", sweep_db, "--out", tmp_path / "r.html"
    )
    assert code == 0, err
    assert f"itslaw:{tmp_path / 'r_law.json'}" in "".join(out.split())
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "r_law.json").read_bytes()
    assert "data:image/png;base64" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_report_with_a_given_law(sweep_db, tmp_path, capsys, monkeypatch):
    law = fit_law(capsys, monkeypatch, sweep_db, tmp_path / "law.json")
    code, out, err = memlaw(
        capsys, monkeypatch, "report", "--db", sweep_db, "--law", law, "-o", tmp_path / "g.html"
    )
    assert code == 0, err
    assert (tmp_path / "g_law.json").read_bytes() == law.read_bytes()


def test_fit_validates_on_off_grid_points_and_the_report_shows_them(
    sweep_db, tmp_path, capsys, monkeypatch
):
    off = make_db(tmp_path / "off.db", [synthetic_row(3, 24, capped=False)])
    law_path = fit_law(capsys, monkeypatch, sweep_db, tmp_path / "law.json", "--validate", off)
    check = MemoryLaw.load(law_path).metadata_["validation"]
    assert check["db"] == "off.db" and [p["rank"] for p in check["points"]] == [3]
    assert check["median_relative_error"] < 0.01  # the synthetic rows lie on one law
    code, out, err = memlaw(
        capsys,
        monkeypatch,
        "report",
        "--db",
        sweep_db,
        "--law",
        law_path,
        "-o",
        tmp_path / "v.html",
    )
    assert code == 0, err
    page = (tmp_path / "v.html").read_text(encoding="utf-8")
    assert "Off-grid points" in page and "off.db" in page
    err = one_line_error(
        capsys, monkeypatch, "fit", "--db", sweep_db, "-o", tmp_path / "x.json",
        "--validate", tmp_path / "missing.db",
    )  # fmt: skip
    assert "--validate" in err


def test_fit_one_method_of_several(tmp_path, capsys, monkeypatch):
    rows = law_rows() + [
        synthetic_row(r, 32, capped=False, method="memft-ot", key=f"r{r}-l32-n1-memft-ot-s0")
        for r in (1, 2)
    ]
    db = make_db(tmp_path / "s.db", rows)
    err = one_line_error(capsys, monkeypatch, "fit", "--db", db, "-o", tmp_path / "l.json")
    assert "mix methods memft-ot, sft" in err
    law = fit_law(capsys, monkeypatch, db, tmp_path / "l.json", "--method", "sft")
    assert MemoryLaw.load(law).n_points_ == 12
    err = one_line_error(
        capsys, monkeypatch, "fit", "--db", db, "-o", tmp_path / "x.json", "--method", "memft-sw"
    )
    assert "no points for method 'memft-sw'" in err


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
    db = make_db(tmp_path / "s.db", law_rows()[:1])
    err = one_line_error(
        capsys, monkeypatch, "sweep", "-m", "tiny", "--db", db, "--lr", "0.5", "--max-steps", 40,
        "--ranks", "1,2,4,8", "--lengths", "16,32,64",
    )  # fmt: skip
    assert "other settings" in err
    for option, value, message in (
        ("--ranks", "0,2", "--ranks must be positive integers"),
        ("--lengths", "-4", "--lengths must be positive integers"),
        ("--seeds", "a", "--seeds must be comma-separated integers"),
    ):
        err = one_line_error(
            capsys, monkeypatch, "sweep", "-m", "tiny", "--db", tmp_path / "n.db", option, value
        )
        assert message in err


def test_a_finished_sweep_leaves_one_database_file(tmp_path, capsys, monkeypatch):
    grid = ("--ranks", "1", "--lengths", "8", "--max-steps", 2, "--db", tmp_path / "s.db")
    code, _, err = memlaw(capsys, monkeypatch, "sweep", "-m", "tiny", *grid)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]  # no -wal / -shm beside it


# --- plan ----------------------------------------------------------------------------------


def test_plan_from_a_fitted_law(sweep_db, tmp_path, capsys, monkeypatch):
    law_path = fit_law(capsys, monkeypatch, sweep_db, tmp_path / "law.json")
    law = MemoryLaw.load(law_path)
    code, out, err = memlaw(
        capsys, monkeypatch, "plan", "--law", law_path, "-m", "tiny", "--length", 48,
        "--base-loss", 11.2, "--rank", 2, "--png", tmp_path / "plan.png", "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["memory"]["length"] == 48 and result["holds"]["rank"] == 2
    rows = {row["rank"]: row for row in result["rows"]}
    expected = float(law.predict(4, 48, base_loss=11.2))
    assert rows[4]["predicted_delta"] == pytest.approx(min(expected, 11.2))
    assert all(row["predicted_delta"] <= 11.2 for row in result["rows"])
    assert result["certifying_rank"] is not None  # the law has a recall boundary
    assert (tmp_path / "plan.png").read_bytes().startswith(b"\x89PNG")

    code, out, err = memlaw(
        capsys, monkeypatch, "plan", "--law", law_path, "-m", "tiny", "--length", 48,
        "--png", tmp_path / "plan.png",
    )  # fmt: skip
    assert code == 0, err
    out = flat(out)
    assert f"smallest rank that certifies this set: {result['certifying_rank']}" in out
    assert "train it: memlaw train --data FILE --model tiny --method sft" in out
    assert "full recall" not in out


def test_plan_from_a_grid_where_every_point_certified(tmp_path, capsys, monkeypatch):
    db = make_db(tmp_path / "s.db", law_rows(certified_share=1.0))
    law_path = fit_law(capsys, monkeypatch, db, tmp_path / "law.json")
    assert "boundary" not in MemoryLaw.load(law_path).metadata_["recall"]
    args = ("plan", "--law", law_path, "-m", "tiny", "--png", tmp_path / "p.png")
    code, out, err = memlaw(capsys, monkeypatch, *args, "--length", 48)
    assert code == 0, err
    out = flat(out)
    # Rank 1 certified ℓ 64 on the grid: measured, not fitted.
    assert "smallest rank that certifies this set: 1 (95% interval: rank 1–1" in out
    assert "rank 1 certified at least 64 target tokens on the law's grid (measured" in out
    assert "measured, not fitted" in out
    code, out, err = memlaw(capsys, monkeypatch, *args, "--length", 100)
    assert code == 0, err
    assert "smallest rank" not in out and "no rank is planned" in flat(out)


def facts_file(path: Path, count: int = 20) -> Path:
    """A file of ``count`` short key→value facts (phone numbers)."""
    lines = [
        json.dumps({"prompt": f"person {i}:", "target": f"{5550100 + 37 * i}"})
        for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_plan_refuses_data_of_another_kind_and_force_plans_anyway(
    sweep_db, tmp_path, capsys, monkeypatch
):
    law = fit_law(capsys, monkeypatch, sweep_db, tmp_path / "law.json")  # random tokens
    data = facts_file(tmp_path / "facts.jsonl")
    args = ("plan", "--law", law, "-m", "tiny", "--data", data, "--png", tmp_path / "p.png")
    err = one_line_error(capsys, monkeypatch, *args)
    assert "the law was measured on random tokens, and this data is key→value facts" in err
    assert "--force" in err
    assert not (tmp_path / "p.png").exists()

    code, out, err = memlaw(capsys, monkeypatch, *args, "--force", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert any("measured on random tokens" in note for note in result["notes"])
    memory = result["memory"]
    assert memory["length"] == 20 * 7 and memory["items"] == 20 and memory["kind"] == "facts"
    assert memory["base_loss"] > 0 and memory["info_baseline"] is not None
    assert (tmp_path / "p.png").is_file()


def test_plan_measures_a_data_file_of_the_laws_kind(tmp_path, capsys, monkeypatch):
    db = make_db(tmp_path / "s.db", law_rows(data_kind="facts"))
    law = fit_law(capsys, monkeypatch, db, tmp_path / "law.json")
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a:", "target": "12345"}\n{"prompt": "b:", "target": "678"}\n')
    code, out, err = memlaw(
        capsys, monkeypatch, "plan", "--law", law, "-m", "tiny", "--data", data,
        "--png", tmp_path / "p.png", "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["memory"]["length"] == 8 and result["memory"]["base_loss"] > 0
    assert result["memory"]["kind"] == "facts" and result["notes"][-1].startswith(
        "ℓ = 8 is outside"
    )


def test_law_for_another_model(sweep_db, tmp_path, capsys, monkeypatch):
    law = fit_law(capsys, monkeypatch, sweep_db, tmp_path / "law.json")
    err = one_line_error(
        capsys, monkeypatch, "plan", "--law", law, "-m", "smollm2-135m", "--length", 100,
        "--png", tmp_path / "p.png",
    )  # fmt: skip
    assert "fitted for model tiny, not smollm2-135m" in err
    assert "ships no law" in one_line_error(
        capsys, monkeypatch, "plan", "-m", "tiny", "--length", 100
    )


# --- the shipped law: structure, not numbers (it is replaced as the sweeps land) -------------


@pytest.fixture(scope="module")
def shipped() -> MemoryLaw:
    return MemoryLaw.load(reference_law_path("smollm2-135m"))


def has_recall(law: MemoryLaw) -> bool:
    return "boundary" in (law.metadata_.get("recall") or {})


def test_the_shipped_law_plans_for_the_default_model(shipped, tmp_path, capsys, monkeypatch):
    assert shipped.metadata_["model"] == "smollm2-135m" and shipped.alpha_ > 0
    code, out, err = memlaw(
        capsys, monkeypatch, "plan", "--length", 1000, "--rank", 4, "--png", tmp_path / "plan.png",
        "--modules", shipped.metadata_["modules"], "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["holds"]["rank"] == 4 and (tmp_path / "plan.png").is_file()
    assert result["law"] == shipped.describe()
    if has_recall(shipped):
        assert result["certifying_rank"] >= 1
        low, high = result["certifying_rank_range"]
        assert low <= result["certifying_rank"] <= high
        assert "certified_length" in result["holds"]
    else:
        assert result["certifying_rank"] is None and result["certifying_rank_range"] is None
        assert any("no recall data" in note for note in result["notes"])
        assert "certified_length" not in result["holds"]


def test_the_shipped_law_names_the_method_past_a_ranks_capacity(tmp_path, capsys, monkeypatch):
    """Rank 1 on 2,000 PhoneBook tokens is where the capacity benchmark measured every method:
    the plan says to train it with SFT and which rank holds the whole set."""
    code, out, err = memlaw(
        capsys, monkeypatch, "plan", "--length", 2000, "--rank", 1, "--png", tmp_path / "p.png",
    )  # fmt: skip
    assert code == 0, err
    said = " ".join(out.split())  # the console wraps long lines
    assert "rank 1 cannot certify this set" in said and "train it with --method sft" in said
    assert "to hold it all, train rank" in said


def test_the_shipped_law_agrees_with_every_point_it_measured(shipped):
    """Where the law's own grid certified a set (every item) the recall law says the N_eff
    certifies it, and where it did not, that it does not: the plan is held to its points."""
    recall = shipped.metadata_.get("recall") or {}
    assert has_recall(shipped)  # the default law plans with a recall boundary
    assert recall["tokens_per_item"] > 0  # whole sets are counted in items
    for n_eff, length, share in recall["points"]:
        assert certifies(recall, n_eff, length) == (share >= 1.0), (n_eff, length, share)


def test_the_shipped_law_says_what_it_can_answer(shipped, tmp_path, capsys, monkeypatch):
    fitted_on = shipped.metadata_["modules"]
    code, out, err = memlaw(
        capsys, monkeypatch, "plan", "--length", 1000, "--modules", fitted_on,
        "--png", tmp_path / "plan.png",
    )  # fmt: skip
    assert code == 0, err
    assert err == ""  # no warning (e.g. matplotlib's about an empty legend) after the plan
    out = flat(out)
    assert f"LoRA on {fitted_on}" in out and "smollm2-135m" in out
    assert "rank None" not in out and "(None)" not in out and "full recall" not in out
    if has_recall(shipped):
        assert "smallest rank that certifies this set:" in out and "train it: memlaw train" in out
    else:
        assert "holds no recall data" in out
        assert "certifies" not in out and "train it:" not in out
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


def test_plan_checks_the_law_before_reading_the_data(shipped, tmp_path, capsys, monkeypatch):
    fitted_on = shipped.metadata_["modules"]
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
