"""The Parametric Memory Law estimator on synthetic grids drawn from a known law."""

import doctest
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

import memlaw.law as law_module
from memlaw.errors import MemlawError
from memlaw.law import LawPoint, MemoryLaw, capacity, compare_forms, holdout_check

RANKS = (1, 2, 4, 8, 16, 32, 64)
LENGTHS = (50, 100, 200, 400, 800, 1600, 3200)
TRUTH = {"C": 2.0, "alpha": 0.35, "beta": 0.45, "b": 0.05}


def synthetic(*, b=TRUTH["b"], noise=0.05, seed=1, layers=1):
    """ΔL = C·N^α·ℓ^−β + b on ranks × lengths, times log-normal noise of ``noise`` (σ of log)."""
    rng = np.random.default_rng(seed)
    points = []
    for rank in RANKS:
        for length in LENGTHS:
            n_eff = rank * layers
            clean = TRUTH["C"] * n_eff ** TRUTH["alpha"] * length ** -TRUTH["beta"] + b
            points.append(
                LawPoint(
                    n_eff=n_eff,
                    length=length,
                    delta_loss=clean * float(np.exp(rng.normal(0.0, noise))),
                    rank=rank,
                    layers=layers,
                )
            )
    return points


@pytest.fixture(scope="module")
def fitted():
    return MemoryLaw(n_bootstrap=100, seed=0).fit(synthetic(), metadata={"model": "synthetic"})


def test_recovers_the_known_law_inside_its_intervals(fitted):
    estimates = {"C": fitted.C_, "alpha": fitted.alpha_, "beta": fitted.beta_, "b": fitted.b_}
    for name, true in TRUTH.items():
        low, high = fitted.intervals_[name]
        assert low <= estimates[name] <= high, name
        assert low <= true <= high, f"{name}: {true} not in [{low}, {high}]"
    assert fitted.r2_ > 0.98
    assert fitted.r2_log_ > 0.98
    assert fitted.n_points_ == len(RANKS) * len(LENGTHS)
    assert fitted.dropped_ == 0
    assert fitted.n_bootstrap_ok_ == 100


def test_clean_data_is_recovered_exactly():
    law = MemoryLaw(n_bootstrap=0).fit(synthetic(noise=0.0))
    assert law.C_ == pytest.approx(TRUTH["C"], rel=1e-5)
    assert law.alpha_ == pytest.approx(TRUTH["alpha"], rel=1e-5)
    assert law.beta_ == pytest.approx(TRUTH["beta"], rel=1e-5)
    assert law.b_ == pytest.approx(TRUTH["b"], rel=1e-5)
    assert law.intervals_ == {}


def test_predict_and_score_agree(fitted):
    points = synthetic()
    single = fitted.predict(8, 400)
    assert isinstance(single, np.ndarray | np.floating)
    expected = fitted.C_ * 8**fitted.alpha_ * 400**-fitted.beta_ + fitted.b_
    assert float(single) == pytest.approx(expected)
    grid = fitted.predict(np.array([[1], [64]]), np.array([50, 3200]))
    assert grid.shape == (2, 2)
    assert grid[1, 0] > grid[0, 0] > grid[0, 1]  # more capacity helps, more length hurts
    assert fitted.score(points) == pytest.approx(fitted.r2_)
    predicted = fitted.predict([p.n_eff for p in points], [p.length for p in points])
    observed = np.array([p.delta_loss for p in points])
    r2 = 1 - np.sum((observed - predicted) ** 2) / np.sum((observed - observed.mean()) ** 2)
    assert fitted.score(points) == pytest.approx(r2)


def test_no_offset_form_keeps_b_at_zero():
    law = MemoryLaw("no-offset", n_bootstrap=10).fit(synthetic(b=0.0))
    assert law.b_ == 0.0
    assert law.n_params == 3
    assert law.intervals_["b"] == (0.0, 0.0)
    assert law.alpha_ == pytest.approx(TRUTH["alpha"], abs=0.03)


def test_rank_form_uses_the_rank():
    points = synthetic(layers=4)
    full = MemoryLaw(n_bootstrap=0).fit(points)
    by_rank = MemoryLaw("rank", n_bootstrap=0).fit(points)
    # With one layer count N_eff = 4·rank, so only C moves: C_rank = C · 4^α.
    assert by_rank.alpha_ == pytest.approx(full.alpha_, rel=1e-4)
    assert by_rank.C_ == pytest.approx(full.C_ * 4**full.alpha_, rel=1e-4)
    assert float(by_rank.predict(8, 400)) == pytest.approx(float(full.predict(32, 400)))


def test_save_load_round_trip(fitted, tmp_path):
    path = fitted.save(tmp_path / "laws" / "law.json")
    record = json.loads(path.read_text())
    assert record["metadata"] == {"model": "synthetic"}
    assert record["form"] == "full"
    assert set(record["params"]) == {"C", "alpha", "beta", "b"}
    loaded = MemoryLaw.load(path)
    n_eff, length = np.meshgrid([1, 3, 100], [20, 500, 10_000])
    np.testing.assert_allclose(loaded.predict(n_eff, length), fitted.predict(n_eff, length))
    assert loaded.intervals_ == fitted.intervals_
    assert loaded.r2_ == fitted.r2_
    assert loaded.n_bootstrap_ok_ == record["bootstrap_ok"] == 100
    assert loaded.points_ == fitted.points_
    assert loaded.to_dict() == fitted.to_dict()


def test_compare_forms_prefers_the_offset_only_when_it_is_real():
    with_offset = {row["form"]: row for row in compare_forms(synthetic(b=0.2))}
    assert set(with_offset) == {"full", "no-offset", "rank"}
    assert with_offset["full"]["preferred"]
    assert with_offset["no-offset"]["delta_aic"] > 10
    assert with_offset["full"]["n_params"] == 4
    assert with_offset["no-offset"]["n_params"] == 3

    without = {row["form"]: row for row in compare_forms(synthetic(b=0.0))}
    assert without["no-offset"]["aic"] <= without["full"]["aic"]
    assert without["no-offset"]["r2"] == pytest.approx(without["full"]["r2"], abs=0.005)
    assert sum(row["preferred"] for row in without.values()) == 1


def test_compare_forms_leaves_out_rank_without_ranks():
    points = [LawPoint(p.n_eff, p.length, p.delta_loss) for p in synthetic()]
    assert [row["form"] for row in compare_forms(points)] == ["full", "no-offset"]
    with pytest.raises(MemlawError, match="form 'rank' needs the rank of every point"):
        compare_forms(points, forms=["rank"])


def test_holdout_extrapolates_on_clean_data():
    report = holdout_check(synthetic(noise=0.0))
    assert report["n_fit"] == (len(RANKS) - 1) * (len(LENGTHS) - 1)
    assert report["n_held_out"] == len(RANKS) + len(LENGTHS) - 1
    assert all(r["n_eff"] == 64 or r["length"] == 3200 for r in report["held_out"])
    assert report["max_relative_error"] < 1e-6
    noisy = holdout_check(synthetic())
    assert noisy["mean_relative_error"] < 0.1
    assert noisy["max_relative_error"] < 0.2


def test_capacity_counts_memorized_information_not_delta_l():
    # text (H = L0): all of ΔL is memory
    point = LawPoint(n_eff=16, length=2000, delta_loss=0.5, trainable_params=1000, base_loss=2.0)
    info = capacity(point)
    assert info["nats"] == pytest.approx(1000.0)
    assert info["bits"] == pytest.approx(1000.0 / math.log(2))
    assert info["bits_per_param"] == pytest.approx(1.0 / math.log(2))
    assert capacity(point, 2000)["bits_per_param"] == pytest.approx(0.5 / math.log(2))
    assert capacity(LawPoint(16, 2000, 0.5, base_loss=2.0))["bits_per_param"] is None
    with pytest.raises(MemlawError, match="trainable_params must be a positive count"):
        capacity(point, 0)
    with pytest.raises(MemlawError, match="needs the base loss"):
        capacity(LawPoint(16, 2000, 0.5))


def test_a_run_worse_than_the_information_baseline_stores_nothing():
    # random tokens: L0 = 13.1 over-confident, H = ln 49152 ≈ 10.80; L1 = 11.08 > H
    h = math.log(49152)
    point = LawPoint(n_eff=1, length=384, delta_loss=13.1 - 11.08, base_loss=13.1, info_baseline=h)
    info = capacity(point, 768)
    assert info["bits"] == 0.0 and info["bits_per_param"] == 0.0
    assert info["delta_l_bits"] > 1000  # what ΔL · ℓ would have claimed


def test_a_certified_run_stores_about_the_whole_set():
    h = math.log(10)
    point = LawPoint(n_eff=4, length=1000, delta_loss=3.4 - 0.01, base_loss=3.4, info_baseline=h)
    assert capacity(point)["nats"] == pytest.approx(1000 * (h - 0.01))
    assert capacity(point)["nats"] <= 1000 * min(3.4, h)


def test_points_with_no_loss_reduction_are_dropped():
    points = synthetic()
    points[0] = LawPoint(1, 3200, -0.01)
    points[1] = LawPoint(1, 1600, 0.0)
    law = MemoryLaw(n_bootstrap=0).fit(points)
    assert law.dropped_ == 2
    assert law.n_points_ == len(points) - 2
    assert law.alpha_ == pytest.approx(TRUTH["alpha"], abs=0.05)


def test_doctests():
    assert doctest.testmod(law_module).failed == 0


# --- bad input ------------------------------------------------------------------------------


def few(count, delta=0.3):
    return [LawPoint(2**i, 100 * 2 ** (i % 2), delta / (i + 1)) for i in range(count)]


def test_too_few_points():
    with pytest.raises(MemlawError, match=r"form 'full' has 4 parameters and needs at least 5"):
        MemoryLaw(n_bootstrap=0).fit(few(4))
    with pytest.raises(MemlawError, match=r"'no-offset' has 3 parameters and needs at least 4"):
        MemoryLaw("no-offset", n_bootstrap=0).fit(few(3))
    MemoryLaw("no-offset", n_bootstrap=0).fit(few(4))
    with pytest.raises(MemlawError, match="no law points given"):
        MemoryLaw().fit([])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_eff", 0, r"point 2 has n_eff=0; n_eff \(rank × adapted layers\) must be a positive"),
        ("n_eff", -4, r"point 2 has n_eff=-4;"),
        ("length", 0, r"point 2 has length=0; length \(the number of target tokens\)"),
        ("length", float("nan"), r"point 2 has length=nan"),
        ("delta_loss", float("inf"), r"point 2 has delta_loss=inf; ΔL must be a finite number"),
        ("delta_loss", "high", r"point 2 has delta_loss='high'; delta_loss must be a number"),
        ("length", None, r"point 2 has length=None; length must be a number"),
    ],
)
def test_bad_point_values(field, value, message):
    points = few(6)
    points[2] = LawPoint(**{**points[2].to_dict(), field: value})
    with pytest.raises(MemlawError, match=message):
        MemoryLaw(n_bootstrap=0).fit(points)


def test_no_positive_loss_reduction():
    with pytest.raises(MemlawError, match=r"every point has ΔL ≤ 0 \(6 points\)"):
        MemoryLaw().fit(few(6, delta=-0.1))
    points = few(6)
    points[:2] = [LawPoint(1, 100, 0.0), LawPoint(2, 200, -0.2)]
    with pytest.raises(
        MemlawError, match=r"needs at least 5 points with ΔL > 0, got 4 \(2 dropped"
    ):
        MemoryLaw(n_bootstrap=0).fit(points)


def test_degenerate_grids():
    one_rank = [LawPoint(8, 100 * (i + 1), 0.5 / (i + 1)) for i in range(6)]
    with pytest.raises(
        MemlawError, match="all points share one N_eff .*measure at least two ranks"
    ):
        MemoryLaw().fit(one_rank)
    one_length = [LawPoint(2**i, 500, 0.1 * (i + 1)) for i in range(6)]
    with pytest.raises(MemlawError, match="all points share one length"):
        MemoryLaw().fit(one_length)


@pytest.mark.parametrize(
    "outcome",
    [
        SimpleNamespace(status=0, x=np.zeros(4), cost=1.0),  # stopped at the evaluation limit
        SimpleNamespace(status=1, x=np.array([np.nan, 0.3, 0.3, 0.0]), cost=1.0),
    ],
)
def test_fit_that_does_not_converge(monkeypatch, outcome):
    monkeypatch.setattr(law_module, "least_squares", lambda *args, **kwargs: outcome)
    with pytest.raises(
        MemlawError,
        match=r"did not converge from any of 18 starting points \(α ∈ \{0\.1, 0\.5, 1\.5\}",
    ):
        MemoryLaw(n_bootstrap=0).fit(few(6))


def test_settings_and_unfitted_use():
    with pytest.raises(MemlawError, match="unknown law form 'cubic'"):
        MemoryLaw("cubic")
    with pytest.raises(MemlawError, match="n_bootstrap must be a whole number"):
        MemoryLaw(n_bootstrap=-1)
    with pytest.raises(MemlawError, match=r"confidence must be within \(0, 1\)"):
        MemoryLaw(confidence=95)
    with pytest.raises(MemlawError, match="not fitted yet"):
        MemoryLaw().predict(8, 100)
    with pytest.raises(MemlawError, match="metadata must be JSON-serializable"):
        MemoryLaw().fit(few(6), metadata={"model": object()})
    with pytest.raises(MemlawError, match="form 'rank' needs the rank of every point"):
        MemoryLaw("rank").fit(few(6))


def test_predict_rejects_non_positive_inputs(fitted):
    with pytest.raises(MemlawError, match="predict needs positive length values"):
        fitted.predict(8, [100, 0])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"malformed law JSON in .*: not JSON"),
        ("[1, 2]", "malformed law JSON: expected an object, got list"),
        ('{"format": "other"}', "format is 'other', expected 'memlaw.law/1'"),
        ('{"format": "memlaw.law/1", "form": "full"}', "params must be an object"),
        (
            '{"format": "memlaw.law/1", "form": "full", "params": {"C": 1, "alpha": 0.3}}',
            "params lack beta, b",
        ),
        (
            '{"format": "memlaw.law/1", "form": "full",'
            ' "params": {"C": 1, "alpha": -0.3, "beta": 0.4, "b": 0}}',
            "params need C, alpha, beta > 0 and b ≥ 0",
        ),
        (
            '{"format": "memlaw.law/1", "form": "full",'
            ' "params": {"C": "1", "alpha": 0.3, "beta": 0.4, "b": 0}}',
            "params.C must be a number",
        ),
        (
            '{"format": "memlaw.law/1", "form": "full",'
            ' "params": {"C": 1, "alpha": 0.3, "beta": 0.4, "b": 0}, "intervals": {"C": [1]}}',
            r"intervals\.C must be \[low, high\]",
        ),
    ],
)
def test_malformed_law_files(tmp_path, content, message):
    path = tmp_path / "law.json"
    path.write_text(content)
    with pytest.raises(MemlawError, match=message):
        MemoryLaw.load(path)


def test_missing_law_file(tmp_path):
    with pytest.raises(MemlawError, match="no law file at"):
        MemoryLaw.load(tmp_path / "absent.json")


# --- the saturating form --------------------------------------------------------------------

SATURATING = {"C": 900.0, "alpha": 0.6, "beta": 1.0}
SAT_LENGTHS = (250, 500, 1000, 2000)


def saturating_points(*, base_losses=(3.4, 3.6), baseline=2.3, with_base=True) -> list[LawPoint]:
    """ΔL from the saturating form, exactly, on ranks × lengths; L0 alternates between the
    values of ``base_losses`` so that each point's own ceiling matters."""
    points = []
    for i, (rank, length) in enumerate((r, n) for r in (1, 2, 4, 8, 16) for n in SAT_LENGTHS):
        base = base_losses[i % len(base_losses)]
        power = SATURATING["C"] * rank ** SATURATING["alpha"] * length ** -SATURATING["beta"]
        delta = float(law_module.saturating_delta(power, base, min(base, baseline)))
        points.append(
            LawPoint(
                rank, length, delta, rank=rank, layers=1, trainable_params=1000 * rank,
                base_loss=base if with_base else None, info_baseline=baseline,
            )
        )  # fmt: skip
    return points


@pytest.fixture(scope="module")
def saturating_law():
    return MemoryLaw("saturating", n_bootstrap=0).fit(
        saturating_points(), metadata={"data_kind": "facts"}
    )


def test_saturating_form_recovers_known_parameters(saturating_law):
    law = saturating_law
    assert law.C_ == pytest.approx(SATURATING["C"], rel=1e-4)
    assert law.alpha_ == pytest.approx(SATURATING["alpha"], rel=1e-4)
    assert law.beta_ == pytest.approx(SATURATING["beta"], rel=1e-4)
    assert law.b_ == 0.0 and law.n_params == 3 and not law.offset
    assert law.r2_ == pytest.approx(1.0, abs=1e-8)
    # The memory set a prediction assumes unless told its own: the medians of the fit.
    assert law.base_loss_ == pytest.approx(3.5) and law.ceiling_ == pytest.approx(2.3)


def test_saturating_prediction_uses_the_sets_own_ceiling(saturating_law):
    power = SATURATING["C"] * 4 ** SATURATING["alpha"] / 700
    own = float(saturating_law.predict(4, 700, base_loss=5.0, info_baseline=1.0))
    assert own == pytest.approx(4.0 + 1.0 * (1 - math.exp(-power)), rel=1e-4)
    text = float(saturating_law.predict(4, 700, base_loss=2.0))  # H = L0: all of ΔL is memory
    assert text == pytest.approx(2.0 * (1 - math.exp(-power)), rel=1e-4)
    default = float(saturating_law.predict(4, 700))
    assert default == pytest.approx(1.2 + 2.3 * (1 - math.exp(-power)), rel=1e-4)


@pytest.mark.parametrize(("base_loss", "baseline"), [(None, None), (3.4, 2.3), (0.5, None)])
def test_saturating_form_never_predicts_above_the_base_loss(saturating_law, base_loss, baseline):
    ceiling_l0 = saturating_law.base_loss_ if base_loss is None else base_loss
    n_eff = np.geomspace(1, 1e9, 60)
    delta = saturating_law.predict(n_eff, 10, base_loss=base_loss, info_baseline=baseline)
    assert np.all(delta <= ceiling_l0 + 1e-12)
    assert np.all(np.diff(delta) >= 0)  # more capacity never hurts
    assert delta[-1] == pytest.approx(ceiling_l0)  # and saturates at L0: L1 = 0
    # The power-law forms have no such ceiling: the same grid runs far past it.
    full = MemoryLaw(n_bootstrap=0).fit(synthetic(noise=0.0))
    assert float(full.predict(1e9, 10)) > 10 * ceiling_l0


def test_saturating_round_trip_keeps_the_reference_set(saturating_law, tmp_path):
    record = saturating_law.to_dict()
    assert record["form"] == "saturating"
    assert record["reference_set"] == {
        "base_loss": saturating_law.base_loss_,
        "ceiling": saturating_law.ceiling_,
    }
    loaded = MemoryLaw.load(saturating_law.save(tmp_path / "sat.json"))
    assert loaded.to_dict() == record
    n_eff, length = np.meshgrid([1, 3, 100], [20, 500, 10_000])
    np.testing.assert_allclose(loaded.predict(n_eff, length), saturating_law.predict(n_eff, length))
    np.testing.assert_allclose(
        loaded.predict(n_eff, length, base_loss=4.0, info_baseline=3.0),
        saturating_law.predict(n_eff, length, base_loss=4.0, info_baseline=3.0),
    )
    # A power-law form records no reference set.
    assert MemoryLaw(n_bootstrap=0).fit(synthetic(noise=0.0)).to_dict()["reference_set"] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"reference_set": None}, "needs reference_set with base_loss, ceiling"),
        ({"reference_set": {"base_loss": 3.0}}, r"reference_set\.ceiling must be a number"),
        ({"params": {"C": 1.0, "alpha": 0.3, "beta": 0.4, "b": 0.1}}, "needs b = 0"),
    ],
)
def test_saturating_law_files_need_their_reference_set(saturating_law, change, message):
    record = saturating_law.to_dict() | change
    with pytest.raises(MemlawError, match=message):
        MemoryLaw.from_dict(record)


def test_saturating_form_needs_the_base_loss():
    with pytest.raises(MemlawError, match="form 'saturating' needs the base loss L0"):
        MemoryLaw("saturating", n_bootstrap=0).fit(saturating_points(with_base=False))


def test_saturating_bootstrap_intervals_hold_the_truth():
    rng = np.random.default_rng(3)
    noisy = [
        LawPoint(**{**p.to_dict(), "delta_loss": p.delta_loss * float(np.exp(rng.normal(0, 0.02)))})
        for p in saturating_points()
    ]
    law = MemoryLaw("saturating", n_bootstrap=30, seed=0).fit(noisy)
    assert law.n_bootstrap_ok_ >= 20
    for name in ("C", "alpha", "beta"):
        low, high = law.intervals_[name]
        assert low <= SATURATING[name] <= high, name
    assert law.intervals_["b"] == (0.0, 0.0)


def test_compare_forms_includes_saturating_when_points_have_base_loss():
    rows = {row["form"]: row for row in compare_forms(saturating_points())}
    assert set(rows) == {"full", "no-offset", "rank", "saturating"}
    assert rows["saturating"]["preferred"] and rows["saturating"]["n_params"] == 3
    assert all(rows[f]["delta_aic"] > 10 for f in ("full", "no-offset", "rank"))
    # Without L0 the saturating form is not a candidate (2 ranks × 4 lengths: quick fits).
    few = saturating_points()[:8]
    bare = [LawPoint(p.n_eff, p.length, p.delta_loss, rank=p.rank) for p in few]
    assert "saturating" not in {row["form"] for row in compare_forms(bare)}
    # One point without L0 is enough to leave it out.
    mixed = list(few)
    mixed[0] = LawPoint(**{**mixed[0].to_dict(), "base_loss": None})
    assert "saturating" not in {row["form"] for row in compare_forms(mixed)}


def test_holdout_check_with_the_saturating_form():
    points = saturating_points()
    report = holdout_check(points, form="saturating")
    assert report["form"] == "saturating" and report["law"]["form"] == "saturating"
    assert report["n_fit"] == 4 * 3 and report["n_held_out"] == 5 + 4 - 1
    assert all(r["n_eff"] == 16 or r["length"] == 2000 for r in report["held_out"])
    # Each held-out point is predicted on its own L0 (alternating here), not the median's.
    assert report["max_relative_error"] < 1e-4
    for record in report["held_out"]:
        assert record["predicted"] <= record["base_loss"]
    with pytest.raises(MemlawError, match="needs the base loss"):
        holdout_check(saturating_points(with_base=False), form="saturating")


# --- what the law was measured on -----------------------------------------------------------


def measured_law(**metadata) -> MemoryLaw:
    return MemoryLaw.from_dict(
        {
            "format": "memlaw.law/1",
            "form": "full",
            "params": TRUTH,
            "metadata": {"model": "tiny", "modules": "mlp", "data_kind": "facts"} | metadata,
        }
    )


def test_check_applies_accepts_what_the_law_was_measured_on():
    law = measured_law()
    assert law.check_applies() == []
    assert law.check_applies(model="tiny", modules="mlp", data_kind="facts") == []
    # Modules compare as sets of names: a group and its members, in any order, are the same.
    assert law.check_applies(modules="up_proj, gate_proj,down_proj") == []
    # A law that does not say what it was measured on cannot refuse anything.
    bare = MemoryLaw.from_dict({"format": "memlaw.law/1", "form": "full", "params": TRUTH})
    assert bare.check_applies(model="llama", modules="v_proj", data_kind="text") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "smollm2-135m"}, "fitted for model tiny, not smollm2-135m"),
        ({"modules": "v_proj"}, "fitted for LoRA on mlp, not v_proj"),
        ({"data_kind": "random"}, "measured on key→value facts, and this data is random tokens"),
        ({"data_kind": "text"}, "measured on key→value facts, and this data is text"),
    ],
)
def test_check_applies_refuses_in_one_line(kwargs, message):
    with pytest.raises(MemlawError, match=message) as caught:
        measured_law().check_applies(**kwargs)
    assert "\n" not in str(caught.value)
    assert "memlaw fit" in str(caught.value)  # says how to get a law that applies


def test_check_applies_with_force_returns_every_problem():
    problems = measured_law().check_applies(
        model="llama", modules="v_proj", data_kind="text", force=True
    )
    assert len(problems) == 3
    assert "not llama" in problems[0] and "not v_proj" in problems[1]
    assert "this data is text" in problems[2]


def test_describe_and_capacity_of():
    law = measured_law(method="sft", recipe="AdamW lr 0.01, batch 4", layer_counts=[1])
    assert law.describe() == (
        "tiny · LoRA on mlp · sft · key→value facts · AdamW lr 0.01, batch 4 · form full"
    )
    assert "of 2/4 layers" in measured_law(layer_counts=[2, 4]).describe()
    assert law.capacity_of(4, 3) == 12
    assert MemoryLaw("rank").capacity_of(4, 3) == 4
    np.testing.assert_array_equal(law.capacity_of(np.array([1, 2]), 2), [2, 4])


def test_reference_law_path():
    path = law_module.reference_law_path("smollm2-135m")
    assert path.is_file() and path.parent.name == "laws"
    assert MemoryLaw.load(path).metadata_["model"] == "smollm2-135m"
    with pytest.raises(MemlawError, match="ships no law for 'tiny'"):
        law_module.reference_law_path("tiny")
