"""The sweep report: one self-contained HTML file plus its PNGs, from a synthetic sweep database
whose ΔL follows a known law (no training)."""

import math
import re

import pytest

from memlaw.errors import MemlawError
from memlaw.law import MemoryLaw
from memlaw.report import write_sweep_report
from memlaw.sweep import SweepPoint, SweepSpec, SweepStore

RANKS = (1, 2, 4, 8)
LENGTHS = (16, 32, 64)
LAW = {"C": 2.0, "alpha": 0.4, "beta": 0.5, "b": 0.05}
CAPPED = {"r8-l64-n1-sft-s0", "r1-l16-n1-sft-s0"}  # stopped at the step cap
FIGURES = 8
BASE_LOSS = 10.8


def synthetic_row(rank: int, length: int, capped: bool) -> dict:
    """A finished point whose ΔL is the known law (capped points fall short of it)."""
    point = SweepPoint(rank, length, layers=1, method="sft", seed=0)
    delta = LAW["C"] * rank ** LAW["alpha"] * length ** -LAW["beta"] + LAW["b"]
    if capped:
        delta *= 0.5  # the optimizer ran out of steps before reaching capacity
    final = BASE_LOSS - delta
    steps = 40 if capped else 25
    # Probabilities rise with ΔL: a share of the tokens stays below 0.5 at small ranks.
    probabilities = [min(0.999, (i + 1) / length * delta * 2) for i in range(length)]
    return {
        "key": point.key,
        "rank": rank,
        "length": length,
        "layers": 1,
        "method": "sft",
        "seed": 0,
        "n_eff": rank,
        "trainable_params": 1000 * rank,
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
        "record": {
            "config": {"method": "sft"},
            "losses": [BASE_LOSS * math.exp(-0.1 * s) + final for s in range(steps)],
            "probabilities": probabilities,
        },
    }


@pytest.fixture(scope="module")
def sweep_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "sweep.db"
    spec = SweepSpec(model="tiny", data="random", ranks=RANKS, lengths=LENGTHS, max_steps=40)
    store = SweepStore(path, spec)
    for length in LENGTHS:
        for rank in RANKS:
            store.add(
                synthetic_row(rank, length, SweepPoint(rank, length, 1, "sft", 0).key in CAPPED)
            )
    store.close()
    return path


@pytest.fixture(scope="module")
def report(sweep_db, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "report.html"
    return write_sweep_report(sweep_db, out)


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
    assert "2 of 12 points hit the step cap" in text
    for key in CAPPED:
        assert f"<code>{key}</code>" in text
    assert text.count('<tr class="capped">') == len(CAPPED)
    # The fit used the 10 converged points and recovers the law that made them.
    assert "0.4000" in text and "0.5000" in text  # α and β
    assert "95% interval" in text
    assert "Form comparison" in text and "Hold-out check" in text


def test_given_law_and_extras_are_shown_as_given(sweep_db, tmp_path):
    law = MemoryLaw.from_dict({"format": "memlaw.law/1", "form": "full", "params": LAW})
    extras = {
        "forms": [{"form": "full", "n_params": 4, "n_points": 10, "r2": 0.99, "preferred": True}],
        "holdout": {
            "form": "full",
            "n_fit": 6,
            "n_held_out": 4,
            "mean_relative_error": 0.0123,
            "max_relative_error": 0.0456,
            "held_out": [],
        },
        "boundary": [{"length": 64, "min_rank": 8}],
        "excluded_capped": 2,
    }
    out = write_sweep_report(
        sweep_db, tmp_path / "given.html", law=law, extras=extras, point="r2-l32-n1-sft-s0"
    )
    text = out.read_text(encoding="utf-8")
    assert "1.2%" in text and "4.6%" in text  # the hold-out errors passed in
    assert "Recall boundary" in text and "min_rank" in text
    assert "Token probabilities of r2-l32-n1-sft-s0" in text
    assert "intervals" in text and "none (fitted without bootstrap)" in text


def test_bad_point_key_fails_and_leaves_the_old_report(report, sweep_db):
    before = report.read_bytes()
    with pytest.raises(MemlawError, match="no point 'r3-l9'"):
        write_sweep_report(sweep_db, report, point="r3-l9")
    assert report.read_bytes() == before


def test_missing_database_is_an_error(tmp_path):
    with pytest.raises(MemlawError, match="does not exist"):
        write_sweep_report(tmp_path / "nothing.db", tmp_path / "r.html")
    assert list(tmp_path.iterdir()) == []


def test_unfitted_law_is_refused(sweep_db, tmp_path):
    with pytest.raises(MemlawError, match="fitted MemoryLaw"):
        write_sweep_report(sweep_db, tmp_path / "r.html", law=MemoryLaw())


def test_rewriting_is_atomic_and_leaves_no_temporary_files(report, sweep_db):
    again = write_sweep_report(sweep_db, report, point="r8-l64-n1-sft-s0")
    assert again == report
    assert sorted(p.name for p in report.parent.iterdir()) == ["report.html", "report_figures"]
    assert len(list(report.with_name("report_figures").iterdir())) == FIGURES
    assert "Loss curve of r8-l64-n1-sft-s0" in report.read_text(encoding="utf-8")


def test_a_sweep_where_every_point_hit_the_cap_still_gets_a_report(tmp_path):
    store = SweepStore(tmp_path / "capped.db", SweepSpec(model="tiny", ranks=(1, 2), lengths=(16,)))
    for rank in (1, 2):
        store.add(synthetic_row(rank, 16, capped=True))
    store.close()
    text = write_sweep_report(tmp_path / "capped.db", tmp_path / "r.html").read_text("utf-8")
    assert "All 2 points hit the step cap" in text and "no law is fitted" in text
    assert text.count("data:image/png;base64,") == FIGURES - 1  # no predicted-vs-measured
