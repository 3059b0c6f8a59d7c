"""The sweep report: one self-contained HTML file plus its PNGs and the law it shows, from a
synthetic sweep database whose ΔL follows a known law (no training)."""

from __future__ import annotations

import html
import json
import math
import re

import numpy as np
import pytest

import memlaw.figures as figures_module
from memlaw.errors import MemlawError
from memlaw.fit import fit_store
from memlaw.law import MemoryLaw
from memlaw.report import law_path_for, write_sweep_report
from memlaw.sweep import SweepPoint, SweepSpec, SweepStore

RANKS = (1, 2, 4, 8)
LENGTHS = (16, 32, 64)
LAW = {"C": 2.0, "alpha": 0.4, "beta": 0.5, "b": 0.05}
CAPPED = {"r8-l64-n1-sft-s0", "r1-l16-n1-sft-s0"}  # stopped at the step cap
FIGURES = 8
# Random tokens: the base model is over-confident (L0 above the baseline H of uniform
# guessing), so the first 0.4 nats of ΔL are not memory. ΔL(1, 64) = 0.30 and ΔL(2, 64) = 0.38
# store nothing; the capped points reach half their ΔL and store nothing either.
BASE_LOSS = 11.2
H = 10.8
PARAMS_PER_RANK = 1000


def synthetic_row(rank: int, length: int, capped: bool, **changes) -> dict:
    """A finished point whose ΔL is the known law (capped points fall short of it)."""
    point = SweepPoint(rank, length, layers=1, method="sft", seed=0)
    delta = LAW["C"] * rank ** LAW["alpha"] * length ** -LAW["beta"] + LAW["b"]
    if capped:
        delta *= 0.5  # the optimizer ran out of steps before reaching capacity
    final = BASE_LOSS - delta
    steps = 40 if capped else 25
    # Probabilities rise with ΔL: a share of the tokens stays below 0.5 at small ranks.
    probabilities = [min(0.999, (i + 1) / length * delta * 2) for i in range(length)]
    row = {
        "key": point.key,
        "rank": rank,
        "length": length,
        "layers": 1,
        "method": "sft",
        "seed": 0,
        "n_eff": rank,
        "trainable_params": PARAMS_PER_RANK * rank,
        "base_loss": BASE_LOSS,
        "final_loss": final,
        "delta_loss": delta,
        "exact_match": min(1.0, delta),
        "certified_share": min(1.0, delta / 2),
        "steps": steps,
        "stop_reason": "budget" if capped else "plateau",
        "hit_cap": capped,
        "train_seconds": 1.5,
        "wall_seconds": 2.0,
        "data_kind": "random",
        "info_baseline": H,
        "memorized_bits": length * max(0.0, min(BASE_LOSS, H) - final) / math.log(2),
        "epochs": steps,
        "token_certified_share": min(1.0, delta / 2),
        "record": {
            "config": {"method": "sft"},
            "losses": [BASE_LOSS * math.exp(-0.1 * s) + final for s in range(steps)],
            "probabilities": probabilities,
        },
    }
    row.update(changes)
    return row


def expected_bits_per_param(row: dict) -> float:
    """Memorized information ℓ · max(0, min(L0, H) − L1) in bits, per trainable parameter."""
    nats = row["length"] * max(0.0, min(row["base_loss"], H) - row["final_loss"])
    return nats / math.log(2) / row["trainable_params"]


def all_rows() -> list[dict]:
    return [
        synthetic_row(rank, length, SweepPoint(rank, length, 1, "sft", 0).key in CAPPED)
        for length in LENGTHS
        for rank in RANKS
    ]


@pytest.fixture(scope="module")
def sweep_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "sweep.db"
    spec = SweepSpec(model="tiny", data="random", ranks=RANKS, lengths=LENGTHS, max_steps=40)
    store = SweepStore(path, spec)
    for row in all_rows():
        store.add(row)
    store.close()
    return path


@pytest.fixture(scope="module")
def report(sweep_db, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "report.html"
    return write_sweep_report(sweep_db, out)


def points_table(text: str) -> list[dict[str, str]]:
    """The report's table of points as column → cell text, one dict per row."""
    table = text.split("<h2>All points", 1)[1]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)
    cells = [[html.unescape(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r)] for r in rows]
    return [dict(zip(cells[0], row, strict=True)) for row in cells[1:]]


def test_report_is_one_self_contained_html_file(report):
    text = report.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", text, re.I)
    assert "<script" not in text and "<link" not in text
    assert text.count('src="data:image/png;base64,') == FIGURES


def test_every_figure_is_also_a_png_beside_the_report(report):
    folder = report.with_name("report_figures")
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == FIGURES
    for png in pngs:
        assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 1000
    text = report.read_text(encoding="utf-8")
    for png in pngs:
        assert png.name in text


def test_header_law_and_capped_points_are_reported(report):
    text = report.read_text(encoding="utf-8")
    assert "tiny" in text and "12 finished" in text
    assert "ranks 1, 2, 4, 8 × ℓ 16, 32, 64" in text
    assert "24 s" in text  # total wall time: 12 points × 2 s
    assert "2 of 12 points hit the step cap" in text and "left out of the fit" in text
    for key in CAPPED:
        assert f"<code>{key}</code>" in text
    assert text.count('<tr class="capped">') == len(CAPPED)
    # The fit used the 10 converged points and recovers the law that made them.
    assert "N<sub>eff</sub><sup>0.4000</sup> · ℓ<sup>−0.5000</sup>" in text
    assert "95% interval" in text
    assert "Form comparison" in text and "full (preferred)" in text
    assert "Hold-out check, form “full”" in text and "Hold-out check, form “saturating”" in text
    assert "Recall law and boundary" in text


def test_the_report_saves_the_law_memlaw_fit_fits(report, sweep_db, tmp_path):
    saved = law_path_for(report)
    assert saved == report.with_name("report_law.json") and saved.is_file()
    law = MemoryLaw.load(saved)
    assert law.form == "full" and law.alpha_ == pytest.approx(LAW["alpha"], rel=1e-3)
    assert law.metadata_["excluded_capped"] == 2 and law.n_points_ == 10
    # Byte for byte the law `memlaw fit` writes: one fit recipe for both.
    fitted = fit_store(sweep_db).law.save(tmp_path / "fit.json")
    assert fitted.read_bytes() == saved.read_bytes()


def test_bits_per_param_column_counts_memorized_information(report):
    rows = {row["key"]: row for row in all_rows()}
    table = points_table(report.read_text(encoding="utf-8"))
    assert len(table) == len(rows)
    zero = 0
    for cells in table:
        row = rows[cells["key"]]
        expected = expected_bits_per_param(row)
        assert cells["bits/param"] == f"{expected:.3g}", cells["key"]
        if expected == 0.0:
            zero += 1
            delta_l_bits = row["delta_loss"] * row["length"] / math.log(2) / row["trainable_params"]
            assert f"{delta_l_bits:.3g}" != "0"  # what ΔL · ℓ would have shown
    assert zero == 4  # (r1, ℓ 64), (r2, ℓ 64) and both capped points: L1 above H


def test_the_saved_law_counts_memorized_information(report):
    capacity = MemoryLaw.load(law_path_for(report)).metadata_["capacity"]
    assert len(capacity) == 10
    for point in capacity:
        final = BASE_LOSS - point["delta_loss"]
        bits = point["length"] * max(0.0, H - final) / math.log(2)
        assert point["bits"] == pytest.approx(bits, abs=1e-9)
        assert point["bits"] <= point["length"] * min(BASE_LOSS, H) / math.log(2)
    nothing = {(p["n_eff"], p["length"]) for p in capacity if p["bits"] == 0.0}
    assert nothing == {(1, 64), (2, 64)}


def test_capacity_figure_draws_memorized_bits(report, sweep_db, tmp_path, monkeypatch):
    drawn = []
    render = figures_module.png_bytes
    monkeypatch.setattr(figures_module, "png_bytes", lambda f: drawn.append(f) or render(f))
    law = MemoryLaw.load(law_path_for(report))  # no refit: the figures are what is tested
    out = write_sweep_report(sweep_db, tmp_path / "again.html", law=law)
    (figure,) = [
        f for f in drawn if f.axes[0].get_ylabel() == "memorized bits per trainable parameter"
    ]
    axes = figure.axes[0]
    # Measured markers: every point that memorized something, at its memorized bits/param.
    shown = sorted(float(y) for c in axes.collections for _, y in c.get_offsets())
    expected = sorted(b for b in map(expected_bits_per_param, all_rows()) if b > 0)
    assert shown == pytest.approx(expected)
    # The law's dashed curves, one per ℓ in its colour: ℓ · max(0, min(L0, H) − L1) / params.
    colors = {
        line.get_color(): line.get_label() for line in axes.lines if "ℓ =" in line.get_label()
    }
    dashed = [line for line in axes.lines if line.get_linestyle() == "--"]
    assert len(dashed) == len(LENGTHS)
    for line in dashed:
        length = int(colors[line.get_color()].removeprefix("ℓ = "))
        ranks, per_param = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        delta = np.minimum(law.predict(ranks, length), BASE_LOSS)
        memorized = length * np.maximum(0.0, H - (BASE_LOSS - delta)) / math.log(2)
        np.testing.assert_allclose(per_param, memorized / (PARAMS_PER_RANK * ranks), atol=1e-12)
        assert np.all(per_param * PARAMS_PER_RANK * ranks <= length * H / math.log(2) + 1e-9)
        if length == 64:
            assert per_param[0] == 0.0  # rank 1 at ℓ 64: L1 above H, whatever ΔL says
    caption = out.read_text(encoding="utf-8").split("Capacity: memorized bits", 1)[1]
    caption = caption.split("</figcaption>", 1)[0]
    assert "4 points with no memorized information cannot be shown" in caption
    assert "ΔL ≤ 0" not in caption


def test_a_given_law_is_shown_and_saved_as_given(sweep_db, tmp_path):
    checks = {
        "forms": [{"form": "full", "n_params": 4, "n_points": 10, "r2": 0.99, "preferred": True}],
        "holdouts": {
            "full": {
                "form": "full",
                "n_fit": 6,
                "n_held_out": 4,
                "mean_relative_error": 0.0123,
                "max_relative_error": 0.0456,
                "held_out": [],
            }
        },
        "recall": {"error": "the recall law needs the certified share of at least 4 points"},
    }
    law = MemoryLaw.from_dict(
        {"format": "memlaw.law/1", "form": "full", "params": LAW, "metadata": checks}
    )
    out = write_sweep_report(sweep_db, tmp_path / "given.html", law=law, point="r2-l32-n1-sft-s0")
    text = out.read_text(encoding="utf-8")
    assert "1.2%" in text and "4.6%" in text  # the hold-out errors it carries
    assert "needs the certified share of at least 4 points" in text
    assert "Token probabilities of r2-l32-n1-sft-s0" in text
    assert "none (fitted without bootstrap)" in text
    assert json.loads((tmp_path / "given_law.json").read_text()) == law.to_dict()
    # A law read back with too few bootstrap refits says its intervals are not to be trusted.
    record = law.to_dict() | {"settings": {"n_bootstrap": 200}, "bootstrap_ok": 3}
    record["intervals"] = {name: [value * 0.9, value * 1.1] for name, value in LAW.items()}
    few = write_sweep_report(sweep_db, tmp_path / "few.html", law=MemoryLaw.from_dict(record))
    assert "not to be trusted: only 3 of 200 bootstrap refits succeeded" in few.read_text()


def test_bad_point_key_fails_and_leaves_the_old_report(report, sweep_db):
    before = report.read_bytes()
    law_before = law_path_for(report).read_bytes()
    with pytest.raises(MemlawError, match="no point 'r3-l9'"):
        write_sweep_report(sweep_db, report, point="r3-l9")
    assert report.read_bytes() == before
    assert law_path_for(report).read_bytes() == law_before


def test_missing_database_is_an_error(tmp_path):
    with pytest.raises(MemlawError, match="does not exist"):
        write_sweep_report(tmp_path / "nothing.db", tmp_path / "r.html")
    assert list(tmp_path.iterdir()) == []


def test_unfitted_law_is_refused(sweep_db, tmp_path):
    with pytest.raises(MemlawError, match="fitted MemoryLaw"):
        write_sweep_report(sweep_db, tmp_path / "r.html", law=MemoryLaw())


def test_rewriting_is_atomic_and_leaves_no_temporary_files(report, sweep_db):
    law = MemoryLaw.load(law_path_for(report))
    again = write_sweep_report(sweep_db, report, law=law, point="r8-l64-n1-sft-s0")
    assert again == report
    assert sorted(p.name for p in report.parent.iterdir()) == [
        "report.html",
        "report_figures",
        "report_law.json",
    ]
    assert len(list(report.with_name("report_figures").iterdir())) == FIGURES
    assert "Loss curve of r8-l64-n1-sft-s0" in report.read_text(encoding="utf-8")


def test_a_sweep_where_every_point_hit_the_cap_still_gets_a_report(tmp_path):
    store = SweepStore(tmp_path / "capped.db", SweepSpec(model="tiny", ranks=(1, 2), lengths=(16,)))
    for rank in (1, 2):
        store.add(synthetic_row(rank, 16, capped=True))
    store.close()
    stale = tmp_path / "r_law.json"
    stale.write_text("{}")  # left by an earlier report at this path
    text = write_sweep_report(tmp_path / "capped.db", tmp_path / "r.html").read_text("utf-8")
    assert "2 of 2 points hit the step cap" in text
    assert "fitting the law: all 2 sweep rows hit the cap" in text
    assert text.count("data:image/png;base64,") == FIGURES - 1  # no predicted-vs-measured
    assert not stale.exists()  # no law shown, none saved beside it
