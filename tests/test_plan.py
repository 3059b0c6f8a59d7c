"""Planning a rank from a law (memlaw.plan): the smallest certifying rank and what a rank holds,
on synthetic laws whose recall boundary is known; refusals; the train command; the figure."""

from __future__ import annotations

import doctest
import json
import math
import warnings

import numpy as np
import pytest

import memlaw.figures as figures_module
import memlaw.plan as plan_module
from memlaw.errors import MemlawError
from memlaw.figures import plot_plan
from memlaw.law import LawPoint, MemoryLaw
from memlaw.plan import (
    DEFAULT_RANKS,
    MemorySet,
    PlanResult,
    measure_memory_set,
    plan,
    train_command,
)

H = math.log(10)
L0 = 3.4
SATURATING = {"C": 900.0, "alpha": 0.6, "beta": 1.0, "b": 0.0}
LENGTHS = (250, 500, 1000, 2000)
FIT_RANKS = (1, 2, 4, 8, 16)
# The recall boundary N*(ℓ) = A · ℓ^k with A = 0.004, k = 1, as a fit stores it (A through its
# logarithm, so A · ℓ lands a hair off whole numbers): N*(1000) = 4. Its bootstrap draws: half
# at A = 0.002, half at A = 0.008, so N*(1000)'s 95% interval is [2, 8].
A, K, SLOPE = math.exp(math.log(0.004)), 1.0, 4.0
RECALL = {
    "boundary": {
        "a": -SLOPE * math.log(A),
        "b": SLOPE,
        "c": SLOPE * K,
        "k": K,
        "A": A,
        "draws": [[K, math.log(0.002)]] * 50 + [[K, math.log(0.008)]] * 50,
    },
}
# Items not counted (and none recorded in the law): the median boundary, N* = A·ℓ exactly.
FACTS = MemorySet(length=1000, base_loss=L0, info_baseline=H, kind="facts")
# 100 items: the whole set certifies where 1 − 1/200 of them are predicted to, a factor
# (2·100 − 1)^(1/b) = 199^(1/4) ≈ 3.76 above the median boundary: N*(1000) ≈ 15.0.
COUNTED = MemorySet(length=1000, base_loss=L0, info_baseline=H, kind="facts", items=100)
WHOLE_SET = 199 ** (1 / SLOPE)


def make_law(*, form: str = "saturating", params=None, recall=RECALL, **metadata) -> MemoryLaw:
    """A law as memlaw fit saves it: fitted on ranks 1–16 × ℓ 250–2000 of key→value facts."""
    meta = {"model": "tiny", "modules": "mlp", "data_kind": "facts", "method": "sft"}
    if recall is not None:
        meta["recall"] = recall
    points = [
        LawPoint(r, n, 1.0, rank=r, layers=1, trainable_params=1000 * r, base_loss=L0,
                 info_baseline=H).to_dict()
        for r in FIT_RANKS
        for n in LENGTHS
    ]  # fmt: skip
    return MemoryLaw.from_dict(
        {
            "format": "memlaw.law/1",
            "form": form,
            "params": params or SATURATING,
            "reference_set": {"base_loss": L0, "ceiling": H} if form == "saturating" else None,
            "metadata": meta | metadata,
            "points": points,
        }
    )


def everything_said(result: PlanResult) -> str:
    """Every word a plan can show: its record, its table and its notes."""
    return json.dumps(result.to_dict(), ensure_ascii=False) + json.dumps(
        result.table(), ensure_ascii=False
    )


# --- the smallest rank that certifies ---------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "layers", "rank"),
    [(250, 1, 1), (500, 1, 2), (1000, 1, 4), (1500, 1, 6), (2000, 1, 8), (1500, 2, 3), (700, 1, 3)],
)
def test_smallest_certifying_rank_on_a_known_boundary(length, layers, rank):
    memory = MemorySet(length=length, base_loss=L0, info_baseline=H, kind="facts")
    result = plan(make_law(), memory, layers=layers)
    assert result.certifying_n_eff == pytest.approx(0.004 * length)
    assert result.certifying_rank == rank
    ranks = [row["rank"] for row in result.rows]
    assert rank in ranks and ranks == sorted(set(ranks))  # the answer is in the table
    assert set(DEFAULT_RANKS) <= set(ranks)
    for row in result.rows:
        # The recall law's share crosses ½ exactly at the certifying rank, and no lower rank
        # certifies.
        assert row["certifies"] == (row["rank"] >= rank)
        if row["rank"] < rank:
            assert row["certified_share"] < 0.5
        else:
            assert row["certified_share"] >= 0.5 - 1e-9


def test_certifying_rank_interval_from_the_bootstrap_draws():
    result = plan(make_law(), FACTS)
    assert result.certifying_rank == 4
    assert result.certifying_rank_range == (2, 8)
    assert plan(make_law(), FACTS, layers=2).certifying_rank_range == (1, 4)
    # Without draws the interval collapses onto the point estimate.
    bare = {"boundary": {k: v for k, v in RECALL["boundary"].items() if k != "draws"}}
    assert plan(make_law(recall=bare), FACTS).certifying_rank_range == (4, 4)


def test_a_counted_set_is_planned_to_certify_every_item():
    """With its items counted, a set certifies where its last item is expected to: the
    certified share 1 − 1/(2n), not the median boundary's ½."""
    result = plan(make_law(), COUNTED, ranks=(4, 8, 15, 16, 32))
    assert result.certifying_n_eff == pytest.approx(4 * WHOLE_SET)
    assert result.certifying_rank == 16
    assert result.certifying_rank_range == (8, 31)  # the draws' A 0.002 and 0.008
    for row in result.rows:
        assert row["certifies"] == (row["rank"] >= 16)
        assert (row["certified_share"] >= 0.995 - 1e-9) == (row["rank"] >= 16)
    # how much a rank holds, the set growing by one item per 10 tokens
    holds = plan(make_law(), COUNTED, current_rank=16).holds
    per_item = 10.0
    level = (2 * holds["certified_length"] / per_item - 1) ** (1 / SLOPE)
    assert 0.004 * holds["certified_length"] * level == pytest.approx(16, rel=1e-6)
    assert holds["certified_length"] > 1000  # rank 16 holds this set with room
    # the law's grid's tokens per item stands in for a set whose items are not counted
    grid = dict(RECALL, tokens_per_item=per_item)
    counted = plan(make_law(recall=grid), FACTS)
    assert counted.certifying_n_eff == pytest.approx(4 * WHOLE_SET)
    assert not any("median item" in note for note in counted.notes)
    # with neither, the plan says it certifies the median item only
    assert any("median item" in note for note in plan(make_law(), FACTS).notes)


# --- how much a rank holds --------------------------------------------------------------------


def test_how_much_a_rank_holds():
    result = plan(make_law(), FACTS, current_rank=2)
    holds = result.holds
    assert holds["rank"] == 2 and holds["n_eff"] == 2
    assert holds["certified_length"] == pytest.approx(500)  # ℓ*(N) = N / A
    assert holds["certified_length_range"] == pytest.approx((250, 1000))
    row = next(r for r in result.rows if r["rank"] == 2)
    assert holds["on_this_set"] == row
    assert not row["certifies"] and row["memorized_bits"] > 0
    # Without a rank asked about, the answer is for the certifying rank.
    assert plan(make_law(), FACTS).holds["rank"] == 4
    assert plan(make_law(), FACTS, layers=2, current_rank=3).holds["certified_length"] == (
        pytest.approx(1500)
    )


def test_a_rank_off_the_grid_is_planned_too():
    result = plan(make_law(), FACTS, ranks=(1, 2), current_rank=3)
    assert [row["rank"] for row in result.rows] == [1, 2, 4]  # + the certifying rank
    assert result.holds["rank"] == 3 and result.holds["on_this_set"]["n_eff"] == 3


def test_a_rank_past_capacity_is_told_the_method_that_holds_most():
    """The plan names the method with the rank: the law's own where the rank certifies the set,
    SFT where the set is past the rank's capacity (no MemFT variant certified more on every seed)."""
    law = make_law(method="memft")
    assert plan(law, FACTS).method == "memft"  # the certifying rank, trained as the law was
    assert plan(law, FACTS, current_rank=8).method == "memft"
    past = plan(law, FACTS, current_rank=2)
    assert past.method == plan_module.AT_CAPACITY_METHOD == "sft"
    [note] = [n for n in past.notes if "past that rank's capacity" in n]
    assert "rank 2 cannot certify" in note and "--method sft" in note
    assert "to hold it all, train rank 4" in note
    # the trade-off the capacity benchmark measured: more items exact, none more certified
    assert "reproduced exactly by greedy decoding instead of the p > 0.5 certificate" in note
    assert "--method memft-sw --epochs 700 (" in note and "84% of items exact" in note
    assert past.to_dict()["method"] == "sft"
    # without recall data nothing tells whether the rank holds the set: no method is named
    assert plan(make_law(recall=None), FACTS, current_rank=2).method is None


# --- what the rows say ------------------------------------------------------------------------


def test_rows_follow_the_law_on_the_sets_own_ceiling():
    law = make_law()
    memory = MemorySet(length=800, base_loss=4.0, info_baseline=2.0, kind="facts")
    result = plan(law, memory, ranks=(1, 4, 16))
    for row in result.rows:
        delta = float(law.predict(row["n_eff"], 800, base_loss=4.0, info_baseline=2.0))
        assert row["predicted_delta"] == pytest.approx(delta)
        assert row["predicted_final"] == pytest.approx(4.0 - delta)
        bits = 800 * max(0.0, 2.0 - (4.0 - delta)) / math.log(2)
        assert row["memorized_bits"] == pytest.approx(bits)
        assert row["bits_per_param"] == pytest.approx(bits / (1000 * row["n_eff"]))
    deltas = [row["predicted_delta"] for row in result.rows]
    assert deltas == sorted(deltas) and deltas[0] > 2.0  # L0 − H = 2 is not memory


@pytest.mark.parametrize("form", ["full", "saturating"])
def test_no_predicted_delta_above_the_base_loss(form):
    # The paper's power law has no ceiling: C = 50 predicts ΔL in the hundreds at rank 1024.
    params = {"C": 50.0, "alpha": 0.8, "beta": 0.3, "b": 0.1} if form == "full" else SATURATING
    law = make_law(form=form, params=params)
    memory = MemorySet(length=100, base_loss=2.0, info_baseline=1.5, kind="facts")
    result = plan(law, memory, ranks=(1, 8, 64, 1024))
    for row in result.rows:
        assert row["predicted_delta"] <= 2.0
        assert row["predicted_final"] >= 0.0
        assert 0.0 <= row["memorized_bits"] <= 100 * 1.5 / math.log(2) + 1e-9
    top = result.rows[-1]
    assert top["predicted_delta"] == pytest.approx(2.0)  # saturated: L1 = 0 …
    assert top["memorized_bits"] == pytest.approx(100 * 1.5 / math.log(2))  # … ℓ · min(L0, H)
    if form == "full":
        assert float(law.predict(1024, 100)) > 100  # what the clip keeps out of the plan


def test_a_length_alone_plans_delta_but_no_bits():
    result = plan(make_law(), MemorySet(length=1000))
    assert result.certifying_rank == 4
    for row in result.rows:
        assert row["predicted_final"] is None and row["memorized_bits"] is None
        assert row["bits_per_param"] is None
        # The saturating form falls back to the set it was fitted on: ΔL ≤ its L0.
        assert row["predicted_delta"] <= L0
    assert next(r for r in result.table() if r["rank"] == "4")["memorized bits"] == "—"


def test_a_law_whose_every_point_certified_plans_from_what_was_measured():
    grid = [[n, ell, 1.0] for n in (1, 2, 4) for ell in (500, 1000, 2000)]
    measured = {"error": "no recall boundary on this grid", "points": grid}
    law = make_law(recall=measured)
    result = plan(law, FACTS)  # ℓ 1000: rank 1 certified 2000 tokens on the law's grid
    assert result.certifying_rank == 1 and result.certifying_rank_range == (1, 1)
    assert result.holds["certified_length_at_least"] == 2000
    assert "certified_length" not in result.holds  # no boundary: no fitted ℓ*
    assert any("measured, not fitted" in note for note in result.notes)
    assert all(row["certifies"] for row in result.rows)
    beyond = plan(law, MemorySet(length=4000, base_loss=L0, info_baseline=H, kind="facts"))
    assert beyond.certifying_rank is None
    assert any("no rank is planned" in note for note in beyond.notes)
    assert all(row["certifies"] is None for row in beyond.rows)  # nothing measured says
    # On two layers, N_eff 1 is below the smallest rank's N_eff: rank 1 certifies.
    assert plan(law, FACTS, layers=2).certifying_rank == 1
    # Measured from N_eff 4 up: ranks below were not measured, so the range starts at 1.
    wide = make_law(recall=dict(measured, points=[p for p in grid if p[0] == 4]))
    assert plan(wide, FACTS).certifying_rank_range == (1, 4)
    assert next(r for r in plan(wide, FACTS).rows if r["rank"] == 2)["certifies"] is None
    # A failure on the grid lifts the range's low end above it.
    failed = make_law(recall=dict(measured, points=[[1, 1000, 0.9], [2, 500, 1.0], [4, 2000, 1.0]]))
    assert plan(failed, FACTS).certifying_rank_range == (2, 4)


def test_the_fitted_boundary_is_held_to_the_laws_own_measurements():
    # The fitted boundary says N*(2000) = 8, but rank 2 certified ℓ 2000 and rank 1 failed it,
    # and rank 1 certified ℓ 1000: the plan says what was measured.
    measured = [[1, 1000, 1.0], [1, 2000, 0.36], [2, 2000, 1.0], [4, 4000, 0.9]]
    law = make_law(recall=dict(RECALL, points=measured))
    result = plan(law, MemorySet(length=2000, base_loss=L0, info_baseline=H, kind="facts"))
    assert result.certifying_rank == 2 and result.certifying_rank_range == (2, 2)
    assert any("held to the law's own measurements" in note for note in result.notes)
    assert any(row["certifies"] for row in result.rows if row["rank"] == 2)
    one = plan(law, FACTS, current_rank=1).holds  # rank 1 holds at least 1000, less than 2000
    assert 1000 <= one["certified_length"] < 2000
    assert 1000 <= one["certified_length_range"][0] <= one["certified_length_range"][1] < 2000
    # ℓ 4000: rank 4 failed there, so the fitted N* = 16 stands (it is above 4).
    longer = plan(law, MemorySet(length=4000, base_loss=L0, info_baseline=H, kind="facts"))
    assert longer.certifying_rank == 16


def test_plan_flags_extrapolation():
    result = plan(make_law(), MemorySet(length=4000), ranks=(1, 64))
    assert any("outside the lengths" in note and "250–2000" in note for note in result.notes)
    assert all(row["extrapolated"] for row in result.rows)
    inside = plan(make_law(), FACTS, ranks=(1, 16, 64))
    assert [r["extrapolated"] for r in inside.rows] == [False, False, False, True]
    assert not any("outside" in note for note in inside.notes)


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("memory_kind", "kwargs", "message"),
    [
        ("random", {}, "measured on key→value facts, and this data is random tokens"),
        ("text", {}, "measured on key→value facts, and this data is text"),
        ("facts", {"modules": "v_proj"}, "fitted for LoRA on mlp, not v_proj"),
        ("facts", {"model": "smollm2-135m"}, "fitted for model tiny, not smollm2-135m"),
    ],
)
def test_plan_refuses_what_the_law_was_not_measured_on(memory_kind, kwargs, message):
    memory = MemorySet(length=1000, base_loss=L0, kind=memory_kind)
    with pytest.raises(MemlawError, match=message) as caught:
        plan(make_law(), memory, **kwargs)
    assert "\n" not in str(caught.value)
    forced = plan(make_law(), memory, force=True, **kwargs)
    assert any(message in note for note in forced.notes)
    assert forced.certifying_rank == 4  # planned anyway, with the warning


def test_plan_accepts_what_the_law_was_measured_on():
    law = make_law(recall=dict(RECALL, tokens_per_item=10.0))  # as memlaw fit records it
    result = plan(law, FACTS, model="tiny", modules="gate_proj,up_proj,down_proj")
    assert result.notes == []
    # A memory set of unknown kind (a bare length) is not refused.
    assert plan(law, MemorySet(length=1000), model="tiny").notes == []


def test_force_lists_every_mismatch():
    memory = MemorySet(length=1000, kind="text")
    notes = plan(make_law(), memory, model="llama", modules="v_proj", force=True).notes
    assert (
        sum("not llama" in n or "not v_proj" in n or "this data is text" in n for n in notes) == 3
    )


# --- a law without recall data ----------------------------------------------------------------


@pytest.mark.parametrize("recall", [None, {"error": "the recall law needs the certified share"}])
def test_a_law_without_recall_data_plans_no_certifying_rank(recall):
    result = plan(make_law(recall=recall), FACTS, current_rank=4)
    assert result.certifying_rank is None and result.certifying_n_eff is None
    assert result.certifying_rank_range is None
    assert any("holds no recall data" in note for note in result.notes)
    for row in result.rows:
        assert row["certifies"] is None and row["certified_share"] is None
    assert "certified_length" not in result.holds  # it can say what rank 4 stores, not recalls
    assert result.holds["on_this_set"]["memorized_bits"] > 0
    text = everything_said(result)
    assert "full recall" not in text and "smallest certifying" not in text
    assert all(row["certified"] == "—" for row in result.table())
    assert plan(make_law(recall=recall), FACTS).holds is None


# --- the result -------------------------------------------------------------------------------


def test_plan_result_record_and_table():
    result = plan(make_law(), FACTS, current_rank=2, ranks=(1, 2, 8))
    assert isinstance(result, PlanResult)
    record = json.loads(json.dumps(result.to_dict()))
    assert record["memory"]["length"] == 1000 and record["certifying_rank"] == 4
    assert record["certifying_rank_range"] == [2, 8] and len(record["rows"]) == 4
    assert record["law"] == make_law().describe()
    table = result.table()
    assert list(table[0]) == [
        "rank", "N_eff", "ΔL", "L1", "memorized bits", "bits/param", "certified", "mark"
    ]  # fmt: skip
    marks = {row["rank"]: row["mark"] for row in table}
    assert marks == {"1": "", "2": "asked", "4": "smallest certifying", "8": ""}
    certified = {row["rank"]: row["certified"] for row in table}
    assert certified["4"] == "50%" and certified["8"] == "94%"  # σ(4 ln 2)


@pytest.mark.parametrize(
    ("memory", "kwargs", "match"),
    [
        (MemorySet(length=0), {}, "length must be a positive number"),
        (MemorySet(length=-5), {}, "length must be a positive number"),
        (MemorySet(length=float("nan")), {}, "length must be a positive number"),
        (MemorySet(length=float("inf")), {}, "length must be finite"),
        (FACTS, {"ranks": (1, 0, 4)}, "every rank must be a positive"),
        (FACTS, {"ranks": (1, 2.5)}, "every rank must be a whole number"),
        (FACTS, {"layers": 0}, "layers must be a positive"),
        (FACTS, {"layers": 1.5}, "layers must be a whole number"),
        (FACTS, {"current_rank": 0}, "the current rank must be a positive"),
        (FACTS, {"current_rank": True}, "the current rank must be a positive"),
    ],
)
def test_plan_bad_inputs(memory, kwargs, match):
    with pytest.raises(MemlawError, match=match):
        plan(make_law(), memory, **kwargs)


def test_plan_needs_a_fitted_law():
    with pytest.raises(MemlawError, match="fitted MemoryLaw"):
        plan(MemoryLaw(), FACTS)
    with pytest.raises(MemlawError, match="fitted MemoryLaw"):
        plan(make_law().to_dict(), FACTS)


# --- the train command ------------------------------------------------------------------------


def parses_as_memlaw_train(command: str) -> dict:
    """The options the real `memlaw train` parses from ``command`` (without running it)."""
    import shlex

    import typer

    from memlaw.cli import app

    words = shlex.split(command)
    assert words[:2] == ["memlaw", "train"]
    group = typer.main.get_command(app)
    train = group.get_command(None, "train")
    return train.make_context("train", words[2:]).params


def test_train_command_realizes_the_plan_with_the_laws_recipe():
    law = make_law(model="smollm2-135m", lr=0.01, batch_size=4, max_epochs=400)
    result = plan(law, FACTS)
    command = train_command(result, law, "PB1000.jsonl", result.certifying_rank_range[1])
    assert command == (
        "memlaw train --data PB1000.jsonl --model smollm2-135m --method sft --rank 8 "
        "--modules mlp --lr 0.01 --batch-size 4 --epochs 400"
    )
    params = parses_as_memlaw_train(command)
    assert (params["rank"], params["modules"], params["method"]) == (8, "mlp", "sft")
    assert (params["lr"], params["batch_size"], params["epochs"]) == (0.01, 4, 400)


@pytest.mark.parametrize(
    "schedule, flag",
    [
        ({"anneal_patience": 10, "anneal_min_updates": 60}, None),  # memlaw train's default
        ({"anneal_patience": 10, "anneal_min_updates": 0}, 10),  # 10 epochs, as swept
        ({"anneal_patience": 10}, 10),  # a law from before the update count: epochs only
        ({"anneal_patience": None, "anneal_min_updates": 0}, 0),  # a constant rate
    ],
)
def test_train_command_keeps_the_laws_annealing(schedule, flag):
    law = make_law(model="smollm2-135m", **schedule)
    result = plan(law, FACTS)
    command = train_command(result, law, "PB1000.jsonl", 8)
    assert parses_as_memlaw_train(command)["anneal_patience"] == flag


def test_train_command_without_recipe_or_data():
    law = MemoryLaw.from_dict({"format": "memlaw.law/1", "form": "full", "params": SATURATING})
    result = plan(law, MemorySet(length=100))
    command = train_command(result, law, None, 3)
    assert command == "memlaw train --data FILE --method sft --rank 3"
    assert parses_as_memlaw_train(command)["rank"] == 3


# --- the figure -------------------------------------------------------------------------------


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures plot_plan saves, kept for inspection."""
    kept = []
    save = figures_module.save_png

    def keep(figure, path):
        kept.append(figure)
        return save(figure, path)

    monkeypatch.setattr(figures_module, "save_png", keep)
    return kept


def test_plot_plan_writes_a_png(tmp_path, drawn):
    law = make_law()
    result = plan(law, FACTS, current_rank=2)
    path = plot_plan(result, law, tmp_path / "plots" / "plan.png")
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 5000
    assert [p.name for p in path.parent.iterdir()] == ["plan.png"]  # no staging file left
    left, right = drawn[0].axes
    certifying = [line for line in left.lines if "certifies: rank 4" in line.get_label()]
    assert certifying and certifying[0].get_xdata()[0] == 4


def test_plot_plan_never_draws_above_the_ceiling(tmp_path, drawn):
    law = make_law(form="full", params={"C": 50.0, "alpha": 0.8, "beta": 0.3, "b": 0.1})
    memory = MemorySet(length=100, base_loss=2.0, info_baseline=1.5, kind="facts")
    plot_plan(plan(law, memory, ranks=(1, 1024)), law, tmp_path / "plan.png")
    left, right = drawn[0].axes
    (delta,) = [line for line in left.lines if line.get_label().startswith("law")]
    (bits,) = [line for line in right.lines if line.get_label() == "predicted memorized bits"]
    assert np.max(delta.get_ydata()) == pytest.approx(2.0)  # reaches L0, never passes it
    assert np.max(bits.get_ydata()) <= 100 * 1.5 / math.log(2) + 1e-9


def test_plot_plan_without_base_loss_or_recall(tmp_path):
    law = make_law(recall=None)
    result = plan(law, MemorySet(length=500), ranks=(1, 2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CLI would print any warning after the plan
        path = plot_plan(result, law, tmp_path / "p.png")
    assert path.read_bytes().startswith(b"\x89PNG")


# --- measuring the user's data ----------------------------------------------------------------


def test_measure_memory_set(tiny, phonebook_items):
    from memlaw.data import target_length

    model, tokenizer = tiny
    measured = measure_memory_set(model, tokenizer, phonebook_items, generator="phonebook")
    assert measured.length == target_length(phonebook_items) == 40  # 4 numbers of 10 digits
    assert measured.items == 4 and measured.kind == "facts"
    assert measured.base_loss > 0
    # The exact entropy of the format: the first digit from 8, then from 10, per token.
    assert measured.info_baseline == pytest.approx((math.log(8) + 9 * math.log(10)) / 10)
    # A file of 4 items is too few to estimate H from: H = L0.
    as_file = measure_memory_set(model, tokenizer, phonebook_items)
    assert as_file.info_baseline is None and as_file.kind == "facts"
    assert as_file.base_loss == pytest.approx(measured.base_loss)
    assert as_file.ceiling == as_file.base_loss


def test_doctests():
    assert doctest.testmod(plan_module).failed == 0
