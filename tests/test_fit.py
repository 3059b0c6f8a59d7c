"""The fit pipeline (memlaw.fit): sweep rows → one law with its forms compared, its hold-outs, its
recall law and each point's memorized information. Synthetic rows drawn from known laws; no
training."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

import memlaw.fit as fit_module
from memlaw.errors import MemlawError
from memlaw.fit import (
    certified_length,
    certifies,
    certifying_n_eff,
    fit_store,
    fit_sweep,
    held_certifying_n_eff,
    law_points,
    measured_boundary,
    predicted_certified_share,
    recall_law,
    sweep_metadata,
    whole_set_level,
)
from memlaw.law import LawPoint, saturating_delta
from memlaw.sweep import SweepSpec, SweepStore

RANKS = (1, 2, 4, 8, 16)
LENGTHS = (250, 500, 1000, 2000)
SEEDS = (0, 1)
# Phone numbers: L0 of the base model, H = ln 10 per digit.
L0, H = 3.4, math.log(10)
SATURATING = {"C": 900.0, "alpha": 0.6, "beta": 1.0}
POWER = {"C": 2.0, "alpha": 0.35, "beta": 0.45, "b": 0.05}
# The recall law behind the synthetic certified shares: N*(ℓ) = A · ℓ^k, slope S in ln N.
RECALL_A, RECALL_K, RECALL_S = 0.004, 1.0, 4.0


def saturating_truth(n_eff: float, length: float, base: float = L0) -> float:
    power = SATURATING["C"] * n_eff ** SATURATING["alpha"] * length ** -SATURATING["beta"]
    return float(saturating_delta(power, base, min(base, H)))


def power_truth(n_eff: float, length: float) -> float:
    return POWER["C"] * n_eff ** POWER["alpha"] * length ** -POWER["beta"] + POWER["b"]


def true_share(n_eff: float, length: float) -> float:
    """σ(S · ln(N / N*(ℓ))): ½ exactly on the boundary."""
    z = RECALL_S * (math.log(n_eff) - math.log(RECALL_A * length**RECALL_K))
    return 1.0 / (1.0 + math.exp(-z))


def row(
    rank: int,
    length: int,
    *,
    seed: int = 0,
    layers: int = 1,
    method: str = "sft",
    delta: float | None = None,
    base: float = L0,
    baseline: float | None = H,
    share: float | None = None,
    hit_cap: bool = False,
    kind: str = "facts",
) -> dict:
    """A sweep row (the columns SweepStore.rows() returns) on the saturating law by default."""
    n_eff = rank * layers
    delta = saturating_truth(n_eff, length, base) if delta is None else delta
    share = true_share(n_eff, length) if share is None else share
    return {
        "key": f"r{rank}-l{length}-n{layers}-{method}-s{seed}",
        "rank": rank,
        "length": length,
        "layers": layers,
        "method": method,
        "seed": seed,
        "n_eff": n_eff,
        "trainable_params": 1000 * n_eff,
        "base_loss": base,
        "final_loss": base - delta,
        "delta_loss": delta,
        "exact_match": share,
        "certified_share": share,
        "steps": 600 if hit_cap else 200,
        "stop_reason": "budget" if hit_cap else "plateau",
        "hit_cap": hit_cap,
        "train_seconds": 1.0,
        "wall_seconds": 1.0,
        "data_kind": kind,
        "info_baseline": baseline,
        "memorized_bits": None,
        "epochs": 10,
        "token_certified_share": share,
        "record": {"config": {}, "losses": [], "probabilities": []},
    }


def sweep_rows(**changes) -> list[dict]:
    """Two seeds whose ΔL differ by ±0.01 around the law: their mean is the law exactly."""
    return [
        row(r, n, seed=s, delta=saturating_truth(r, n) + (0.01 if s else -0.01), **changes)
        for s in SEEDS
        for n in LENGTHS
        for r in RANKS
    ]


def power_rows() -> list[dict]:
    """Rows on the paper's power law (with an offset) on random tokens, L0 just above H: the
    small ΔL are the adapter flattening the base model's over-confidence, not memory."""
    return [
        row(r, n, delta=power_truth(r, n), base=11.0, baseline=10.8, kind="random")
        for n in LENGTHS
        for r in RANKS
    ]


@pytest.fixture(scope="module")
def fitted():
    return fit_sweep(sweep_rows(), metadata={"model": "tiny", "data": "phonebook"}, n_bootstrap=20)


@pytest.fixture(scope="module")
def power_fit():
    return fit_sweep(power_rows(), metadata={"model": "tiny"}, n_bootstrap=0)


# --- rows → points ----------------------------------------------------------------------------


def test_seeds_are_averaged_into_one_point():
    rows = sweep_rows()
    rows[0]["base_loss"] = L0 + 0.2  # seed 0 of (r1, ℓ 250) saw another L0 …
    rows[0]["final_loss"] += 0.2
    points = law_points(rows)
    assert len(points) == len(RANKS) * len(LENGTHS)
    by_key = {(p.rank, p.length): p for p in points}
    for rank in RANKS:
        for length in LENGTHS:
            point = by_key[(rank, length)]
            assert point.delta_loss == pytest.approx(saturating_truth(rank, length), abs=1e-12)
            assert point.certified_share == pytest.approx(true_share(rank, length))
            assert point.info_baseline == pytest.approx(H)
            assert (point.n_eff, point.layers, point.trainable_params) == (rank, 1, 1000 * rank)
    assert by_key[(1, 250)].base_loss == pytest.approx(L0 + 0.1)  # … so the point holds the mean
    assert by_key[(2, 250)].base_loss == pytest.approx(L0)


def test_a_missing_optional_column_in_one_seed_leaves_it_unknown():
    rows = sweep_rows()
    rows[0]["certified_share"] = None  # seed 0 of (r1, ℓ 250) did not record it
    points = {(p.rank, p.length): p for p in law_points(rows)}
    assert points[(1, 250)].certified_share is None
    assert points[(2, 250)].certified_share is not None


def test_layer_counts_stay_apart():
    rows = [row(r, 250, layers=n) for r in (1, 2) for n in (1, 2)]
    points = law_points(rows)
    assert [(p.rank, p.layers, p.n_eff) for p in points] == [
        (1, 1, 1),
        (1, 2, 2),
        (2, 1, 2),
        (2, 2, 4),
    ]


# --- the fit ----------------------------------------------------------------------------------


def test_fit_sweep_recovers_the_law_and_records_its_recipe(fitted):
    law = fitted.law
    assert law.form == "saturating"
    for name, value in SATURATING.items():
        assert getattr(law, f"{name}_") == pytest.approx(value, rel=1e-3)
    assert law.n_points_ == len(RANKS) * len(LENGTHS)  # seeds averaged
    assert law.r2_ > 0.999
    meta = law.metadata_
    assert meta["model"] == "tiny" and meta["data"] == "phonebook"
    assert meta["method"] == "sft" and meta["seeds"] == [0, 1] and meta["layer_counts"] == [1]
    assert meta["runs_in_fit"] == 40 and meta["excluded_capped"] == 0
    assert meta["capped_in_fit"] == 0 and meta["stops"] == {"plateau": 40}
    assert fitted.excluded_capped == 0


def test_forms_are_compared_and_the_aic_preferred_one_is_shipped(fitted, power_fit):
    for result, expected in ((fitted, "saturating"), (power_fit, "full")):
        forms = {f["form"]: f for f in result.forms}
        assert set(forms) == {"full", "saturating"}
        best = min(result.forms, key=lambda f: f["aic"])
        assert best["form"] == expected and best["preferred"]
        assert sum(f["preferred"] for f in result.forms) == 1
        assert result.law.form == expected
        assert result.law.metadata_["forms"] == result.forms
    # The power law with its offset b is not a saturating curve: the saturating form loses.
    assert power_fit.law.b_ == pytest.approx(POWER["b"], rel=1e-3)


def test_only_the_forms_asked_for_are_fitted():
    result = fit_sweep(sweep_rows(), metadata={}, forms=("no-offset", "full"), n_bootstrap=0)
    assert [f["form"] for f in result.forms] == ["no-offset", "full"]
    assert result.law.form in ("no-offset", "full")
    assert set(result.law.metadata_["holdouts"]) == {"no-offset", "full"}


def test_saturating_is_skipped_without_base_loss():
    rows = power_rows()
    for r in rows:
        r["base_loss"] = None
    result = fit_sweep(rows, metadata={}, n_bootstrap=0)
    assert [f["form"] for f in result.forms] == ["full"]
    with pytest.raises(MemlawError, match="needs the base loss L0 of every point"):
        fit_sweep(rows, metadata={}, forms=("saturating",), n_bootstrap=0)


def test_a_grid_too_small_for_a_form_fits_the_forms_it_can():
    # 4 points: "full" has 4 parameters and needs 5; the saturating form (3) still fits
    rows = [r for r in sweep_rows() if r["seed"] == 0]
    rows = [r for r in rows if r["rank"] in (1, 2) and r["length"] in (500, 1000)]
    assert len(rows) == 4
    result = fit_sweep(rows, metadata={}, n_bootstrap=0)
    assert result.law.form == "saturating"
    assert [f["form"] for f in result.forms] == ["saturating"]


def test_every_form_gets_a_holdout_with_its_median_error(fitted):
    holdouts = fitted.law.metadata_["holdouts"]
    assert set(holdouts) == {"full", "saturating"}
    for form, holdout in holdouts.items():
        assert holdout["form"] == form and "law" not in holdout
        errors = [p["relative_error"] for p in holdout["held_out"]]
        assert holdout["n_held_out"] == len(errors) == len(RANKS) + len(LENGTHS) - 1
        assert holdout["median_relative_error"] == pytest.approx(float(np.median(errors)))
        assert holdout["max_relative_error"] == pytest.approx(max(errors))
        assert all(p["n_eff"] == 16 or p["length"] == 2000 for p in holdout["held_out"])
    # The shipped form's hold-out is the law's own; the true form extrapolates best.
    assert fitted.holdout == holdouts["saturating"] == fitted.law.metadata_["holdout"]
    assert holdouts["saturating"]["median_relative_error"] < 1e-3
    assert (
        holdouts["full"]["median_relative_error"] > holdouts["saturating"]["median_relative_error"]
    )


def test_capped_rows_are_excluded_and_counted():
    # Not converged: their far lower ΔL would drag the fit down if they were used.
    capped = [row(r, 4000, delta=0.3, hit_cap=True) for r in (1, 4, 16)]
    result = fit_sweep(sweep_rows() + capped, metadata={}, n_bootstrap=0)
    assert result.excluded_capped == 3
    meta = result.law.metadata_
    assert meta["excluded_capped"] == 3 and meta["capped_in_fit"] == 0 and meta["runs_in_fit"] == 40
    assert result.law.alpha_ == pytest.approx(SATURATING["alpha"], rel=1e-3)
    assert max(p.length for p in result.law.points_) == 2000
    # ... but not from the recall law: they ran out of the recipe's epochs uncertified.
    assert result.recall["lengths"] == [250, 4000]
    assert {m["length"]: m["n_eff"] for m in result.recall["measured"]}[4000] is None

    kept = fit_sweep(sweep_rows() + capped, metadata={}, include_capped=True, n_bootstrap=0)
    assert kept.excluded_capped == 0
    assert kept.law.n_points_ == len(RANKS) * len(LENGTHS) + 3
    assert kept.law.metadata_["capped_in_fit"] == 3
    assert kept.law.metadata_["stops"] == {"plateau": 40, "budget": 3}


def test_all_rows_capped_is_an_error():
    rows = [row(r, 250, hit_cap=True) for r in RANKS]
    with pytest.raises(MemlawError, match="all 5 sweep rows hit the cap.*--include-capped"):
        fit_sweep(rows, metadata={}, n_bootstrap=0)


def test_fit_sweep_wants_one_method():
    with pytest.raises(MemlawError, match="mix methods memft-ot, sft; fit one method"):
        fit_sweep(sweep_rows() + [row(4, 250, method="memft-ot")], metadata={}, n_bootstrap=0)
    with pytest.raises(MemlawError, match="metadata says method 'memft-ot'"):
        fit_sweep(sweep_rows(), metadata={"method": "memft-ot"}, n_bootstrap=0)
    # A capped row of another method is left out before the method check.
    other = row(4, 250, method="memft-ot", hit_cap=True)
    assert (
        fit_sweep(sweep_rows() + [other], metadata={}, n_bootstrap=0).law.metadata_["method"]
        == "sft"
    )


def test_fit_sweep_bad_rows():
    with pytest.raises(MemlawError, match="no sweep rows"):
        fit_sweep([], metadata={})
    with pytest.raises(MemlawError, match="lacks length, layers"):
        fit_sweep([{"rank": 1}], metadata={})
    with pytest.raises(MemlawError, match="not a single row"):
        fit_sweep(row(1, 250), metadata={})
    with pytest.raises(MemlawError, match="sweep row 1 is a str"):
        fit_sweep([row(1, 250), "r2"], metadata={})
    bad = sweep_rows()
    bad[3]["delta_loss"] = None
    with pytest.raises(MemlawError, match=r"r8-l250-n1-sft-s0 has delta_loss=None"):
        fit_sweep(bad, metadata={})
    bad = sweep_rows()
    bad[5]["length"] = float("nan")
    with pytest.raises(MemlawError, match=r"has length=nan; it must be a finite number"):
        fit_sweep(bad, metadata={})
    with pytest.raises(MemlawError, match="metadata must be a dict"):
        fit_sweep(sweep_rows(), metadata=None)


def test_checks_that_cannot_run_are_recorded_not_fatal():
    # 3 ranks × 2 lengths: enough for the law, too few for a fit of the non-held-out corner;
    # no certified shares: no recall law.
    rows = [row(r, n) for r in (1, 4, 16) for n in (250, 2000)]
    for r in rows:
        r["certified_share"] = None
    result = fit_sweep(rows, metadata={}, n_bootstrap=0)
    assert result.law.n_points_ == 6
    for form in ("full", "saturating"):
        assert "holdout check" in result.law.metadata_["holdouts"][form]["error"]
    assert "error" in result.holdout
    assert "at least 4 points, got 0" in result.recall["error"]
    assert result.law.metadata_["recall"] == result.recall


# --- memorized information --------------------------------------------------------------------


@pytest.mark.parametrize("which", ["fitted", "power_fit"])
def test_memorized_bits_per_point_never_exceed_the_ceiling(request, which):
    result = request.getfixturevalue(which)
    assert len(result.capacity) == len(RANKS) * len(LENGTHS)
    assert result.law.metadata_["capacity"] == result.capacity
    zero = 0
    for point in result.capacity:
        base = next(p.base_loss for p in result.law.points_ if p.n_eff == point["n_eff"]
                    and p.length == point["length"])  # fmt: skip
        ceiling = min(base, H if which == "fitted" else 10.8)
        final = base - point["delta_loss"]
        expected = point["length"] * max(0.0, ceiling - final) / math.log(2)
        assert point["bits"] == pytest.approx(expected, abs=1e-9)
        assert 0.0 <= point["bits"] <= point["length"] * ceiling / math.log(2) + 1e-9
        assert point["bits_per_param"] == pytest.approx(point["bits"] / (1000 * point["n_eff"]))
        assert point["delta_l_bits"] == pytest.approx(
            point["delta_loss"] * point["length"] / math.log(2)
        )
        zero += point["bits"] == 0.0
    if which == "power_fit":
        # L1 above H at the small ranks and long sets: ΔL > 0, yet nothing memorized.
        assert 0 < zero < len(result.capacity)


def test_bits_are_unknown_without_base_loss():
    rows = power_rows()
    for r in rows:
        r["base_loss"] = None
    result = fit_sweep(rows, metadata={}, n_bootstrap=0)
    assert all(p["bits"] is None and p["bits_per_param"] is None for p in result.capacity)


# --- the recall law ---------------------------------------------------------------------------


def test_recall_law_recovers_a_known_boundary(fitted):
    recall = fitted.recall
    boundary = recall["boundary"]
    assert boundary["k"] == pytest.approx(RECALL_K, rel=0.03)
    for length in (250, 700, 2000):
        n_star = certifying_n_eff(recall, length)
        assert n_star == pytest.approx(RECALL_A * length**RECALL_K, rel=0.05)
        assert certified_length(recall, n_star) == pytest.approx(length, rel=1e-9)
        assert predicted_certified_share(recall, n_star, length) == pytest.approx(0.5, abs=1e-9)
    assert recall["mean_abs_error"] < 0.02  # the slopes' small ridge, nothing else
    assert recall["lengths"] == [250, 2000] and recall["n_effs"] == [1, 16]


def test_recall_law_bootstrap_draws_and_intervals(fitted):
    recall = fitted.recall
    draws = recall["boundary"]["draws"]
    assert recall["bootstrap_ok"] == len(draws) > 0
    for name in ("k", "A"):
        low, high = recall["intervals"][name]
        assert low <= high
    low_k, high_k = recall["intervals"]["k"]
    assert low_k <= RECALL_K * 1.03 and high_k >= RECALL_K * 0.97
    # Quantiles of N* over the draws bracket the point estimate.
    low = certifying_n_eff(recall, 1000, quantile=0.025)
    high = certifying_n_eff(recall, 1000, quantile=0.975)
    assert low <= certifying_n_eff(recall, 1000) <= high
    values = [math.exp(log_a) * 1000**k for k, log_a, _ in draws]  # (k, ln A, b): one item
    assert high == pytest.approx(float(np.percentile(values, 97.5)))


def test_a_whole_set_certifies_where_its_last_item_is_expected_to(fitted):
    """N*(ℓ) for a set of n items is where the predicted certified share reaches 1 − 1/(2n),
    above the median boundary, and ℓ*(N) inverts it with the set growing with ℓ."""
    recall = fitted.recall
    for length, per_item in ((250, 10.0), (700, 10.0), (2000, 5.0)):
        items = length / per_item
        n_star = certifying_n_eff(recall, length, tokens_per_item=per_item)
        share = predicted_certified_share(recall, n_star, length)
        assert share == pytest.approx(whole_set_level(items), abs=1e-9)
        assert n_star > certifying_n_eff(recall, length)  # the median boundary: half the items
        assert certified_length(recall, n_star, per_item) == pytest.approx(length, rel=1e-6)
        # the law's own tokens per item stands in when the caller gives none
        grid = dict(recall, tokens_per_item=per_item)
        assert certifying_n_eff(grid, length) == pytest.approx(n_star, rel=1e-12)
    low = certifying_n_eff(recall, 1000, quantile=0.025, tokens_per_item=10.0)
    high = certifying_n_eff(recall, 1000, quantile=0.975, tokens_per_item=10.0)
    assert low <= certifying_n_eff(recall, 1000, tokens_per_item=10.0) <= high


def test_recall_law_needs_certified_shares():
    points = [LawPoint(n, 100, 1.0, certified_share=0.5) for n in (1, 2, 4)]
    with pytest.raises(MemlawError, match="at least 4 points, got 3"):
        recall_law(points + [LawPoint(8, 100, 1.0)])


def test_a_grid_where_every_point_certified_keeps_what_was_measured():
    points = [
        LawPoint(n, length, 1.0, certified_share=1.0) for n in (1, 2, 4) for length in LENGTHS
    ]
    recall = recall_law(points)
    assert "boundary" not in recall
    assert "every point certified its set (N_eff 1 certified ℓ = 2000)" in recall["error"]
    assert [m["n_eff"] for m in recall["measured"]] == [1, 1, 1, 1]
    assert held_certifying_n_eff(recall, 2000) == 1  # measured: N* is at most 1
    assert held_certifying_n_eff(recall, 2001) is None  # beyond what was measured
    assert certifies(recall, 1, 2000) is True and certifies(recall, 1, 4000) is None
    # Shares of ½ or more everywhere but not all certified at the smallest N_eff: the points
    # still say that N_eff 1 failed ℓ 100 and N_eff 2 certified it.
    partly = [LawPoint(n, 100, 1.0, certified_share=0.6 if n == 1 else 1.0) for n in (1, 2, 4, 8)]
    recall = recall_law(partly)
    assert held_certifying_n_eff(recall, 100) == 2
    assert certifies(recall, 1, 100) is False and certifies(recall, 2, 100) is True


def test_measured_boundary_per_length():
    # Certified outright once N_eff ≥ 0.004 ℓ; partly below it.
    points = [
        LawPoint(n, length, 1.0, certified_share=1.0 if n >= 0.004 * length else 0.5 * n / (0.004 * length))
        for n in RANKS
        for length in (*LENGTHS, 8000)
    ]  # fmt: skip
    measured = {m["length"]: m for m in measured_boundary(points)}
    assert {n: m["n_eff"] for n, m in measured.items()} == {
        250: 1, 500: 2, 1000: 4, 2000: 8, 8000: None
    }  # fmt: skip
    assert measured[8000]["max_n_eff"] == 16
    assert measured[8000]["best_certified_share"] == pytest.approx(0.5 * 16 / 32)
    assert measured[250]["best_certified_share"] == 1.0
    # The logistic law through those step shares puts its boundary between the measured ranks.
    recall = recall_law(points, n_bootstrap=0)
    assert [m["n_eff"] for m in recall["measured"]] == [1, 2, 4, 8, None]
    for length, found in ((500, 2), (1000, 4), (2000, 8)):
        assert found / 2 < certifying_n_eff(recall, length) <= found * 1.05
    assert recall["bootstrap_ok"] == 0 and recall["intervals"] == {}
    assert "draws" not in recall["boundary"]


def test_recall_law_in_the_saved_law(fitted, tmp_path):
    from memlaw.law import MemoryLaw

    loaded = MemoryLaw.load(fitted.law.save(tmp_path / "law.json"))
    assert loaded.metadata_["recall"] == fitted.recall
    assert loaded.metadata_["holdouts"] == fitted.law.metadata_["holdouts"]
    assert certifying_n_eff(loaded.metadata_["recall"], 1000, quantile=0.975) == pytest.approx(
        certifying_n_eff(fitted.recall, 1000, quantile=0.975)
    )


# --- from a sweep database --------------------------------------------------------------------


def make_store(path, rows, **spec_changes) -> SweepSpec:
    settings = dict(model="tiny", data="phonebook", ranks=RANKS, lengths=LENGTHS, seeds=SEEDS)
    spec = SweepSpec(**(settings | spec_changes))
    store = SweepStore(path, spec)
    for r in rows:
        store.add(r)
    store.close()
    return spec


def test_fit_store_fits_what_the_database_holds(tmp_path):
    db = tmp_path / "sweep.db"
    spec = make_store(db, sweep_rows(), max_epochs=400, lr=0.01, modules="mlp")
    before = db.read_bytes()
    result = fit_store(db, n_bootstrap=0)
    assert db.read_bytes() == before  # read-only
    store = SweepStore(db)
    rows = store.rows()
    store.close()
    expected = fit_sweep(rows, metadata=sweep_metadata(spec, rows), n_bootstrap=0)
    assert result.law.to_dict() == expected.law.to_dict()
    meta = result.law.metadata_
    assert (meta["model"], meta["modules"], meta["data"]) == ("tiny", "mlp", "phonebook")
    assert meta["data_kind"] == "facts"
    assert meta["max_epochs"] == 400 and meta["max_steps"] is None
    assert meta["recipe"].startswith("AdamW lr 0.01, batch = ⌈items / ")
    assert meta["recipe"].endswith("≤ 400 epochs, stop at certified recall or plateau")
    assert meta["grid"] == {"ranks": list(RANKS), "lengths": list(LENGTHS)}
    assert meta["plateau"]["on"] == "information"
    with pytest.raises(MemlawError, match="no points for method 'memft-ot'"):
        fit_store(db, method="memft-ot")


def test_sweep_metadata_kind_and_recipe():
    spec = SweepSpec(model="tiny", data="random", batch_size=4, max_steps=150,
                     stop_at_certified=False)  # fmt: skip
    meta = sweep_metadata(spec, [row(1, 250, kind="random")])
    assert meta["data_kind"] == "random"
    assert meta["recipe"] == "AdamW lr 0.01, batch 4, ≤ 150 steps, stop at plateau"
    assert meta["max_steps"] == 150 and meta["batch_size"] == 4
    whole = sweep_metadata(SweepSpec(model="tiny", batch_size=0), [row(1, 250)])
    assert "whole set" in whole["recipe"]
    # Rows of more than one kind (or none recorded) give no kind: nothing to refuse on.
    mixed = [row(1, 250, kind="random"), row(2, 250, kind="facts")]
    assert sweep_metadata(spec, mixed)["data_kind"] is None
    assert sweep_metadata(spec, [row(1, 250, kind=None)])["data_kind"] is None


def test_the_recipe_names_its_annealing():
    spec = SweepSpec(model="tiny", data="phonebook", max_epochs=400, anneal_patience=10)
    meta = sweep_metadata(spec, [row(1, 250)])
    assert (meta["anneal_patience"], meta["anneal_min_updates"]) == (10, 0)
    assert meta["recipe"].startswith(
        "AdamW lr 0.03 at batches of 16 items or more and at most 7 updates per epoch (else 0.01) "
        "halved after 10 epochs without progress"
    )
    recipe = SweepSpec(model="tiny", data="phonebook", anneal_patience=10, anneal_min_updates=60)
    meta = sweep_metadata(recipe, [row(1, 250)])
    assert meta["anneal_min_updates"] == 60
    assert "halved after 10 epochs (at least 60 updates) without progress" in meta["recipe"]
    assert meta["lr"] is None  # the rule: plan's command leaves --lr to memlaw train


def test_fit_store_validates_the_law_on_off_grid_points(tmp_path):
    make_store(tmp_path / "grid.db", sweep_rows(), max_epochs=400)
    # Off-grid: rank 3 at ℓ 1500 on the same law, and rank 6 at ℓ 700 measured 20% lower.
    off = [row(3, 1500), row(6, 700, delta=0.8 * saturating_truth(6, 700))]
    make_store(tmp_path / "off.db", off, ranks=(3, 6), lengths=(700, 1500), max_epochs=400)
    law = fit_store(tmp_path / "grid.db", n_bootstrap=0, validate=tmp_path / "off.db").law
    check = law.metadata_["validation"]
    assert check["db"] == "off.db"
    by_rank = {p["rank"]: p for p in check["points"]}
    assert by_rank[3]["relative_error"] < 0.02
    assert by_rank[6]["relative_error"] == pytest.approx(0.25, rel=0.05)
    assert check["max_relative_error"] == by_rank[6]["relative_error"]
    for point in check["points"]:
        assert point["predicted_bits"] >= 0 and point["bits"] >= 0
        assert point["predicted_certified"] == (point["n_eff"] >= point["certifying_n_eff"])
        assert point["certified"] == (point["certified_share"] >= 1.0)
    # Points of another recipe do not validate this law.
    make_store(tmp_path / "other.db", off, ranks=(3, 6), lengths=(700, 1500), max_epochs=50)
    with pytest.raises(MemlawError, match="other settings .*max_epochs"):
        fit_store(tmp_path / "grid.db", n_bootstrap=0, validate=tmp_path / "other.db")
    make_store(tmp_path / "none.db", [], max_epochs=400)
    with pytest.raises(MemlawError, match="no finished points"):
        fit_store(tmp_path / "grid.db", n_bootstrap=0, validate=tmp_path / "none.db")


def test_fit_store_on_an_empty_database(tmp_path):
    make_store(tmp_path / "empty.db", [])
    with pytest.raises(MemlawError, match="no finished points yet"):
        fit_store(tmp_path / "empty.db")


def test_doctests():
    assert doctest.testmod(fit_module).failed == 0
