"""Rank planning from the law, on synthetic sweep rows drawn from a known law (no training)."""

import math

import numpy as np
import pytest

from memlaw.errors import MemlawError
from memlaw.law import MemoryLaw
from memlaw.plan import (
    DEFAULT_RANKS,
    RECALL_LOSS,
    PlanResult,
    boundary_n_eff,
    describe_law,
    fit_sweep,
    format_plan_table,
    plan,
    plot_plan,
    recall_boundary,
)

TRUTH = {"C": 2.0, "alpha": 0.35, "beta": 0.45, "b": 0.05}
RANKS = (1, 2, 4, 8, 16, 32, 64)
LENGTHS = (64, 128, 256, 512, 1024)
SEEDS = (0, 1)


def true_delta(n_eff, length):
    return TRUTH["C"] * n_eff ** TRUTH["alpha"] * length ** -TRUTH["beta"] + TRUTH["b"]


def recalls(n_eff, length):
    """The synthetic recall rule: full recall once N_eff ≥ 0.05 · ℓ^0.8."""
    return n_eff >= 0.05 * length**0.8


def row(rank, length, *, seed=0, layers=1, method="sft", delta=None, hit_cap=False, em=None):
    n_eff = rank * layers
    delta = true_delta(n_eff, length) if delta is None else delta
    base = 10.0
    return {
        "key": f"r{rank}-l{length}-n{layers}-{method}-s{seed}",
        "rank": rank,
        "length": length,
        "layers": layers,
        "method": method,
        "seed": seed,
        "n_eff": n_eff,
        "trainable_params": 1536 * n_eff,
        "base_loss": base,
        "final_loss": base - delta,
        "delta_loss": delta,
        "exact_match": (1.0 if recalls(n_eff, length) else 0.5) if em is None else em,
        "certified_share": 1.0,
        "steps": 600 if hit_cap else 200,
        "stop_reason": "budget" if hit_cap else "plateau",
        "hit_cap": hit_cap,
        "train_seconds": 1.0,
        "wall_seconds": 1.0,
        "record": {"config": {}, "losses": [], "probabilities": []},
        "finished_at": 0.0,
    }


def sweep_rows():
    """Two seeds whose ΔL differ by ±0.01 around the law: their mean is the law exactly."""
    return [
        row(rank, length, seed=seed, delta=true_delta(rank, length) + (0.01 if seed else -0.01))
        for seed in SEEDS
        for length in LENGTHS
        for rank in RANKS
    ]


def truth_law(metadata=None):
    return MemoryLaw.from_dict(
        {"format": "memlaw.law/1", "form": "full", "params": TRUTH, "metadata": metadata or {}}
    )


@pytest.fixture(scope="module")
def fitted():
    return fit_sweep(sweep_rows(), metadata={"model": "tiny", "data": "random"}, n_bootstrap=8)


# --- fit_sweep --------------------------------------------------------------------------------


def test_fit_sweep_recovers_the_law(fitted):
    law = fitted["law"]
    for name, value in TRUTH.items():
        assert getattr(law, f"{name}_") == pytest.approx(value, rel=1e-3, abs=1e-4)
    assert law.n_points_ == len(RANKS) * len(LENGTHS)  # seeds averaged into one point
    assert law.r2_ > 0.999
    assert fitted["excluded_capped"] == 0
    assert sorted(law.intervals_) == ["C", "alpha", "b", "beta"]


def test_fit_sweep_runs_the_checks_and_stores_them(fitted):
    law = fitted["law"]
    assert {row["form"] for row in fitted["forms"]} >= {"full", "no-offset"}
    assert fitted["holdout"]["max_relative_error"] < 1e-3
    meta = law.metadata_
    assert meta["model"] == "tiny" and meta["data"] == "random"
    assert meta["method"] == "sft" and meta["seeds"] == [0, 1]
    assert meta["recall_boundary"] == fitted["boundary"]
    assert meta["holdout"]["n_held_out"] == fitted["holdout"]["n_held_out"]
    assert "law" not in meta["holdout"]
    assert meta["forms"] == fitted["forms"]


def test_fit_sweep_capacity_per_point(fitted):
    info = fitted["capacity"]
    assert len(info) == len(RANKS) * len(LENGTHS)
    point = next(p for p in info if p["n_eff"] == 8 and p["length"] == 256)
    nats = true_delta(8, 256) * 256
    assert point["nats"] == pytest.approx(nats)
    assert point["bits"] == pytest.approx(nats / math.log(2))
    assert point["bits_per_param"] == pytest.approx(nats / math.log(2) / (1536 * 8))


def test_capped_rows_are_excluded_and_counted():
    # Not-converged rows with a far lower ΔL would drag the fit down if they were used.
    capped = [row(r, 2048, delta=1e-3, hit_cap=True) for r in (1, 4, 16)]
    result = fit_sweep(sweep_rows() + capped, metadata={}, n_bootstrap=0)
    assert result["excluded_capped"] == 3
    assert result["law"].metadata_["excluded_capped"] == 3
    assert result["law"].alpha_ == pytest.approx(TRUTH["alpha"], rel=1e-3)
    assert max(p.length for p in result["law"].points_) == 1024

    included = fit_sweep(sweep_rows() + capped, metadata={}, include_capped=True, n_bootstrap=0)
    assert included["excluded_capped"] == 0
    assert included["law"].n_points_ == len(RANKS) * len(LENGTHS) + 3


def test_all_rows_capped_is_an_error():
    rows = [row(r, 64, hit_cap=True) for r in RANKS]
    with pytest.raises(MemlawError, match="include_capped"):
        fit_sweep(rows, metadata={}, n_bootstrap=0)


def test_fit_sweep_wants_one_method():
    rows = sweep_rows() + [row(4, 64, method="memft-ot")]
    with pytest.raises(MemlawError, match="one method"):
        fit_sweep(rows, metadata={}, n_bootstrap=0)
    with pytest.raises(MemlawError, match="one method"):
        recall_boundary(rows)
    with pytest.raises(MemlawError, match="metadata says method"):
        fit_sweep(sweep_rows(), metadata={"method": "memft-ot"}, n_bootstrap=0)


def test_fit_sweep_bad_rows():
    with pytest.raises(MemlawError, match="no sweep rows"):
        fit_sweep([], metadata={})
    with pytest.raises(MemlawError, match="lacks"):
        fit_sweep([{"rank": 1}], metadata={})
    with pytest.raises(MemlawError, match="not a single row"):
        fit_sweep(row(1, 64), metadata={})
    bad = sweep_rows()
    bad[3]["delta_loss"] = None
    with pytest.raises(MemlawError, match=r"r8-l64-n1-sft-s0 has delta_loss=None"):
        fit_sweep(bad, metadata={})
    with pytest.raises(MemlawError, match="metadata must be a dict"):
        fit_sweep(sweep_rows(), metadata=None)


def test_checks_that_cannot_run_are_recorded_not_fatal():
    # 3 ranks × 2 lengths: enough for the law, too few for a fit on the non-held-out corner.
    rows = [row(r, length) for r in (1, 4, 16) for length in (64, 512)]
    result = fit_sweep(rows, metadata={}, n_bootstrap=0)
    assert "error" in result["holdout"]
    assert "error" in result["law"].metadata_["holdout"]


# --- the recall boundary ----------------------------------------------------------------------


def test_recall_boundary_per_length():
    boundary = recall_boundary(sweep_rows())
    expected = {n: min(r for r in RANKS if recalls(r, n)) for n in LENGTHS}
    assert {p["length"]: p["n_eff"] for p in boundary["points"]} == expected
    assert all(p["exact_match"] == 1.0 for p in boundary["points"])
    assert boundary["threshold"] == 0.99


def test_recall_boundary_curve_is_a_loglog_line():
    boundary = recall_boundary(sweep_rows())
    curve = boundary["curve"]
    found = {n: min(r for r in RANKS if recalls(r, n)) for n in LENGTHS}
    slope, intercept = np.polyfit(np.log(list(found)), np.log(list(found.values())), 1)
    assert curve["k"] == pytest.approx(slope)
    assert curve["a"] == pytest.approx(math.exp(intercept))
    # Grid rounding aside, the curve follows the rule N* = 0.05 · ℓ^0.8.
    assert 0.6 < curve["k"] < 1.0
    assert curve["n_points"] == len(LENGTHS) and curve["lengths"] == [64, 1024]
    assert boundary_n_eff(boundary, 512) == pytest.approx(curve["a"] * 512 ** curve["k"])


def test_recall_boundary_none_and_no_curve():
    rows = [row(r, 64) for r in RANKS] + [row(r, 4096, em=0.5) for r in RANKS]
    boundary = recall_boundary(rows)
    by_length = {p["length"]: p for p in boundary["points"]}
    assert by_length[4096]["n_eff"] is None and by_length[4096]["max_n_eff"] == 64
    assert boundary["curve"] is None and "at least 2" in boundary["note"]
    assert boundary_n_eff(boundary, 100) is None


def test_recall_boundary_averages_seeds():
    # One seed recalls at rank 2, the other only at 4: the mean reaches 1.0 at rank 4.
    rows = [row(1, 64, seed=s, em=0.5) for s in SEEDS]
    rows += [row(2, 64, seed=0, em=1.0), row(2, 64, seed=1, em=0.9)]
    rows += [row(4, 64, seed=s, em=1.0) for s in SEEDS]
    assert recall_boundary(rows)["points"][0]["n_eff"] == 4
    assert recall_boundary(rows, threshold=0.95)["points"][0]["n_eff"] == 2


@pytest.mark.parametrize("threshold", [0, 1.5, -0.1, True, "0.9"])
def test_recall_boundary_bad_threshold(threshold):
    with pytest.raises(MemlawError, match="threshold"):
        recall_boundary(sweep_rows(), threshold=threshold)


def test_boundary_n_eff_bad_input():
    with pytest.raises(MemlawError, match="length"):
        boundary_n_eff({"curve": {"a": 1.0, "k": 1.0}}, 0)
    with pytest.raises(MemlawError, match="malformed"):
        boundary_n_eff({"curve": {"a": 1.0}}, 10)


# --- plan -------------------------------------------------------------------------------------


def expected_diminishing(length, min_gain, *, base_loss=None, layers=1, ranks=DEFAULT_RANKS):
    """The stated rule, from the formula: first r with (ΔL(2r) − ΔL(r)) / r < min_gain."""

    def reach(n):
        delta = true_delta(n, length)
        return delta if base_loss is None else min(delta, base_loss)

    for r in ranks:
        if (reach(2 * r * layers) - reach(r * layers)) / r < min_gain:
            return r
    return None


@pytest.mark.parametrize(
    ("length", "min_gain", "base_loss", "layers"),
    [(64, 0.05, None, 1), (64, 0.01, None, 1), (32, 0.02, 0.9, 1), (100, 0.01, None, 4)],
)
def test_diminishing_rank_follows_the_rule(length, min_gain, base_loss, layers):
    result = plan(truth_law(), length, min_gain=min_gain, base_loss=base_loss, layers=layers)
    expected = expected_diminishing(length, min_gain, base_loss=base_loss, layers=layers)
    assert expected is not None
    assert result.diminishing_rank == expected


def test_diminishing_rank_counts_only_reachable_gain():
    # With L0 = 0.9 the law saturates between rank 4 and 8: the doubling 8 → 16 gains nothing.
    capped = plan(truth_law(), 32, min_gain=0.02, base_loss=0.9)
    free = plan(truth_law(), 32, min_gain=0.02)
    assert (capped.diminishing_rank, free.diminishing_rank) == (8, 16)


def test_gain_per_doubling_grows_on_a_power_law():
    # Why the rule is per added rank: a whole doubling buys more nats the larger the rank.
    gains = [row["gain_nats"] for row in plan(truth_law(), 64).rows]
    assert gains == sorted(gains)


def test_plan_rows_match_the_law():
    result = plan(truth_law(), 500, base_loss=3.0, ranks=(4, 1, 2, 2))
    assert [row["rank"] for row in result.rows] == [1, 2, 4]  # sorted, deduplicated
    for row_ in result.rows:
        r = row_["rank"]
        delta, doubled = true_delta(r, 500), true_delta(2 * r, 500)
        assert row_["predicted_delta"] == pytest.approx(delta)
        assert row_["predicted_final"] == pytest.approx(3.0 - delta)
        assert row_["gain_nats"] == pytest.approx(doubled - delta)
        assert row_["gain_percent"] == pytest.approx(100 * (doubled - delta) / delta)
        assert not row_["saturated"]


def test_saturation_is_flagged_and_clipped():
    result = plan(truth_law(), 64, base_loss=0.5, ranks=(1, 8))
    low, high = result.rows
    assert not low["saturated"] and high["saturated"]
    assert high["predicted_final"] == 0.0 and high["gain_nats"] == 0.0
    assert any("past full memorization" in note for note in result.notes)


def test_current_rank_and_its_doubling():
    result = plan(truth_law(), 256, base_loss=4.0, current_rank=8)
    current = result.current
    assert current["rank"] == 8 and current["doubled_rank"] == 16
    assert current["predicted_delta"] == pytest.approx(true_delta(8, 256))
    assert current["gain_nats"] == pytest.approx(true_delta(16, 256) - true_delta(8, 256))
    assert current["doubled_final"] == pytest.approx(4.0 - true_delta(16, 256))
    assert any("rank 8 → 16" in note for note in result.notes)
    # A current rank off the grid is still reported.
    assert plan(truth_law(), 256, current_rank=3).current["n_eff"] == 3


def test_recall_rank_from_the_boundary_curve():
    law = truth_law({"model": "tiny", "recall_boundary": {"curve": {"a": 0.05, "k": 0.8}}})
    n_star = 0.05 * 1000**0.8  # ≈ 12.6
    result = plan(law, 1000)
    assert result.recall_source == "boundary"
    assert result.recall_n_eff == pytest.approx(n_star)
    assert result.recall_rank == 16
    assert plan(law, 1000, layers=4).recall_rank == 4  # 12.6 / 4 ≈ 3.1 → rank 4
    assert plan(law, 1000, ranks=(1, 2, 4)).recall_rank is None  # beyond the grid


def test_recall_rank_fallback_needs_the_base_loss():
    law = truth_law()
    result = plan(law, 64, base_loss=1.0)
    expected = min(r for r in DEFAULT_RANKS if 1.0 - min(true_delta(r, 64), 1.0) < RECALL_LOSS)
    assert result.recall_source == "loss < ln2/4"
    assert result.recall_rank == expected
    bare = plan(law, 64)
    assert bare.recall_rank is None and bare.recall_source is None


def test_model_mismatch():
    law = truth_law({"model": "smollm2-135m"})
    with pytest.raises(MemlawError, match="fitted for model smollm2-135m, not llama"):
        plan(law, 100, model="llama")
    assert plan(law, 100, model="smollm2-135m").model == "smollm2-135m"
    assert plan(truth_law(), 100, model="llama").model is None  # the law names no model


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"length": 0}, "length"),
        ({"length": -5}, "length"),
        ({"length": float("nan")}, "length"),
        ({"length": 100, "ranks": (1, 0, 4)}, "rank"),
        ({"length": 100, "ranks": (1, 2.5)}, "whole number"),
        ({"length": 100, "ranks": ()}, "empty"),
        ({"length": 100, "current_rank": 0}, "current_rank"),
        ({"length": 100, "layers": 0}, "layers"),
        ({"length": 100, "min_gain": 0}, "min_gain"),
        ({"length": 100, "base_loss": -1.0}, "base_loss"),
    ],
)
def test_plan_bad_inputs(kwargs, match):
    with pytest.raises(MemlawError, match=match):
        plan(truth_law(), **kwargs)


def test_plan_needs_a_fitted_law():
    with pytest.raises(MemlawError, match="fitted MemoryLaw"):
        plan(MemoryLaw(), 100)


def test_plan_flags_extrapolation(fitted):
    result = plan(fitted["law"], 4096, ranks=(1, 64, 256))
    assert any("outside the lengths" in note for note in result.notes)
    assert all(row["extrapolated"] for row in result.rows)
    inside = plan(fitted["law"], 256, ranks=(1, 64, 256))
    assert [row["extrapolated"] for row in inside.rows] == [False, False, True]


def test_plan_result_to_dict_and_table():
    result = plan(truth_law(), 64, base_loss=1.0, current_rank=8, ranks=(1, 2, 4, 8, 16))
    assert isinstance(result, PlanResult)
    record = result.to_dict()
    assert record["length"] == 64 and len(record["rows"]) == 5
    table = format_plan_table(result)
    marks = {row["rank"]: row["mark"] for row in table}
    assert "current" in marks["8"]
    assert "diminishing returns" in marks[str(result.diminishing_rank)]
    assert "full recall" in marks[str(result.recall_rank)]


# --- persistence and the figure ---------------------------------------------------------------


def test_saved_law_keeps_the_boundary(fitted, tmp_path):
    law = fitted["law"]
    loaded = MemoryLaw.load(law.save(tmp_path / "law.json"))
    assert loaded.metadata_["recall_boundary"] == fitted["boundary"]
    assert loaded.metadata_["holdout"] == law.metadata_["holdout"]
    assert loaded.metadata_["forms"] == fitted["forms"]
    before, after = plan(law, 300), plan(loaded, 300)
    assert after.recall_source == "boundary"
    assert after.recall_rank == before.recall_rank
    assert after.recall_n_eff == pytest.approx(boundary_n_eff(fitted["boundary"], 300))


@pytest.mark.parametrize("length", [256, 300])  # on the grid, and nearest-ℓ overlay
def test_plot_plan_writes_a_png(fitted, tmp_path, length):
    rows = sweep_rows() + [row(2, 256, hit_cap=True, delta=0.1)]
    result = plan(fitted["law"], length, base_loss=2.0, current_rank=4)
    path = plot_plan(result, fitted["law"], tmp_path / "plots" / "plan.png", measured_rows=rows)
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 5000
    assert [p.name for p in path.parent.iterdir()] == ["plan.png"]  # no staging file left


def test_plot_plan_without_measured_rows(tmp_path):
    result = plan(truth_law(), 64, ranks=(1, 2, 4))
    path = plot_plan(result, truth_law(), tmp_path / "plan.png")
    assert path.stat().st_size > 0


def test_saturated_rows_are_left_out_of_the_law_but_not_the_boundary():
    rows = [
        {
            "rank": r,
            "layers": 1,
            "n_eff": r,
            "length": n,
            "method": "sft",
            "seed": 0,
            "delta_loss": 2.0 * r**0.35 * n**-0.45 + 0.05,
            "final_loss": 1.0,
            "hit_cap": False,
            "exact_match": 1.0 if r >= 4 else 0.0,
            "trainable_params": 100 * r,
        }
        for r in (1, 2, 4, 8, 16)
        for n in (100, 200, 400, 800)
    ]
    for row in rows:
        if row["length"] == 100:  # memorized outright: ΔL pinned at the base loss
            row["final_loss"], row["delta_loss"] = 0.001, 9.0
    fitted = fit_sweep(rows, metadata={"model": "tiny"}, saturation_loss=0.05, n_bootstrap=0)
    assert fitted["excluded_saturated"] == 5 and fitted["law"].n_points_ == 15
    assert fitted["law"].alpha_ == pytest.approx(0.35, abs=1e-3)
    found = {p["length"]: p["n_eff"] for p in fitted["boundary"]["points"]}
    assert found[100] == 4
    unfiltered = fit_sweep(rows, metadata={"model": "tiny"}, n_bootstrap=0)
    assert unfiltered["excluded_saturated"] == 0 and unfiltered["law"].n_points_ == 20


def test_plan_says_when_the_law_was_fitted_on_capped_points():
    rows = [
        row(r, n, hit_cap=(r == 1))  # the rank-1 points stopped at the cap
        for r in (1, 2, 4, 8, 16)
        for n in (64, 128, 256, 512)
    ]
    fitted = fit_sweep(
        rows, metadata={"model": "tiny", "max_steps": 600}, include_capped=True, n_bootstrap=0
    )
    assert fitted["law"].metadata_["capped_in_fit"] == 4
    assert fitted["law"].metadata_["runs_in_fit"] == 20
    notes = plan(fitted["law"], 256).notes
    assert any("4 of the 20 runs" in n and "600-step cap" in n for n in notes)
    # Without capped rows in the fit, no such note.
    clean = fit_sweep(rows, metadata={"model": "tiny"}, n_bootstrap=0)
    assert clean["law"].metadata_["capped_in_fit"] == 0
    assert not any("lower bound on capacity" in n for n in plan(clean["law"], 256).notes)


def test_describe_law_names_what_the_law_was_measured_on():
    rows = [row(r, n) for r in (1, 2, 4, 8) for n in (64, 128, 256)]
    metadata = {"model": "tiny", "modules": "v_proj", "data": "random", "lr": 0.02}
    law = fit_sweep(rows, metadata=metadata, n_bootstrap=0)["law"]
    line = describe_law(law)
    assert line.startswith("tiny · LoRA on v_proj · sft · random data · lr 0.02")
    assert line.endswith(f"12 points · R² {law.r2_:.3f}")


def test_plan_refuses_a_law_fitted_on_other_modules():
    rows = [row(r, n) for r in (1, 2, 4, 8) for n in (64, 128, 256)]
    law = fit_sweep(rows, metadata={"model": "tiny", "modules": "mlp"}, n_bootstrap=0)["law"]
    with pytest.raises(MemlawError, match="fitted for LoRA on mlp, not v_proj"):
        plan(law, 256, modules="v_proj")
    # The same modules, named by group or one by one and in any order, plan as before.
    for same in ("mlp", "down_proj, gate_proj,up_proj"):
        assert plan(law, 256, modules=same).rows == plan(law, 256).rows
