"""Unit tests for memlaw.objectives against hand-computed values (DESIGN.md, "MemFT")."""

from __future__ import annotations

import math

import pytest
import torch

from memlaw.data import IGNORE_INDEX
from memlaw.errors import MemlawError
from memlaw.objectives import (
    METHODS,
    OBJECTIVES,
    SFT_CAP,
    ObjectiveStep,
    Settings,
    SlidingWindowState,
    advance_window,
    check_settings,
    curriculum_items,
    curriculum_share,
    loss_threshold,
    memft_ot_all_loss,
    memft_ot_loss,
    memft_ot_weights,
    memft_soft_loss,
    memft_sw_loss,
    memft_sw_weights,
    objective_step,
    resolve,
    sft_cap_loss,
    sft_loss,
    token_nll,
)

LN2 = math.log(2.0)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def log_softmax_at(row: list[float], index: int) -> float:
    return row[index] - math.log(sum(math.exp(v) for v in row))


def close(actual: torch.Tensor, expected, *, atol: float = 1e-6) -> None:
    expected_tensor = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected_tensor, atol=atol, rtol=1e-6)


def row_weights(values: list[float], weights: list[float]) -> float:
    return sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)


# --------------------------------------------------------------------------------------------
# token_nll


LOGITS_ROWS = [
    [1.0, 2.0, 3.0, 4.0],
    [0.5, -1.0, 2.0, 0.0],
    [9.0, 9.0, 9.0, 9.0],
]


def test_token_nll_shift_convention_and_values():
    logits = torch.tensor([LOGITS_ROWS])
    labels = torch.tensor([[IGNORE_INDEX, 3, 1]])
    nll, mask = token_nll(logits, labels)
    assert nll.shape == (1, 2)
    assert mask.tolist() == [[True, True]]
    # labels[1] = 3 is predicted from logits[0]; labels[2] = 1 from logits[1].
    expected = [
        -log_softmax_at(LOGITS_ROWS[0], 3),
        -log_softmax_at(LOGITS_ROWS[1], 1),
    ]
    close(nll, [expected], atol=1e-5)
    # A wrong (unshifted) convention would give different numbers.
    assert not math.isclose(expected[0], -log_softmax_at(LOGITS_ROWS[1], 3), abs_tol=1e-3)


def test_token_nll_ignore_index_masking():
    logits = torch.tensor([LOGITS_ROWS])
    labels = torch.tensor([[0, IGNORE_INDEX, 2]])
    nll, mask = token_nll(logits, labels)
    assert mask.tolist() == [[False, True]]
    assert nll[0, 0].item() == 0.0
    assert nll[0, 1].item() == pytest.approx(-log_softmax_at(LOGITS_ROWS[1], 2), abs=1e-5)


def test_token_nll_is_float32_for_half_precision_logits():
    logits = torch.tensor([LOGITS_ROWS], dtype=torch.bfloat16)
    labels = torch.tensor([[IGNORE_INDEX, 3, 1]])
    nll, mask = token_nll(logits, labels)
    assert nll.dtype == torch.float32
    assert mask.dtype == torch.bool
    # bfloat16 represents these logits exactly, so the float32 result matches the formula.
    assert nll[0, 0].item() == pytest.approx(-log_softmax_at(LOGITS_ROWS[0], 3), abs=1e-5)


# --------------------------------------------------------------------------------------------
# loss_threshold and sft_loss


def test_loss_threshold_values():
    assert loss_threshold(0.5) == pytest.approx(LN2)
    assert loss_threshold() == pytest.approx(LN2)
    assert loss_threshold(0.25) == pytest.approx(math.log(4.0))


@pytest.mark.parametrize("tau", [0.0, 1.0, -0.1, 1.5])
def test_loss_threshold_rejects_tau_outside_open_interval(tau):
    with pytest.raises(ValueError):
        loss_threshold(tau)


def test_sft_loss_mean_over_supervised_tokens_only():
    nll = torch.tensor([[0.1, 1.0, 50.0], [2.0, 99.0, 0.4]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    assert sft_loss(nll, mask).item() == pytest.approx((0.1 + 1.0 + 2.0 + 0.4) / 4)


# --------------------------------------------------------------------------------------------
# MemFT-OT


def test_memft_ot_only_hard_tokens_count():
    nll = torch.tensor([[0.1, 1.0, 2.0, 0.5]])
    mask = torch.ones_like(nll, dtype=torch.bool)
    # ln 2 ≈ 0.693: only 1.0 and 2.0 have p < 0.5.
    close(memft_ot_weights(nll, mask), [[0.0, 1.0, 1.0, 0.0]])
    assert memft_ot_loss(nll, mask).item() == pytest.approx(1.5)


def test_memft_ot_tau_changes_threshold():
    nll = torch.tensor([[0.1, 1.0, 2.0, 0.5]])
    mask = torch.ones_like(nll, dtype=torch.bool)
    # tau = 0.25 → θ = ln 4 ≈ 1.386: only 2.0 counts.
    close(memft_ot_weights(nll, mask, tau=0.25), [[0.0, 0.0, 1.0, 0.0]])
    assert memft_ot_loss(nll, mask, tau=0.25).item() == pytest.approx(2.0)


def test_memft_ot_masked_positions_never_count():
    nll = torch.tensor([[0.1, 1.0, 9.0, 0.5], [7.0, 3.0, 0.2, 8.0]])
    mask = torch.tensor([[True, True, False, True], [False, True, True, False]])
    close(memft_ot_weights(nll, mask), [[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    assert memft_ot_loss(nll, mask).item() == pytest.approx((1.0 + 3.0) / 2)


def test_memft_ot_gradient_only_on_hard_tokens():
    nll = torch.tensor([[0.1, 1.0, 2.0, 0.5]], requires_grad=True)
    mask = torch.ones_like(nll, dtype=torch.bool)
    memft_ot_loss(nll, mask).backward()
    close(nll.grad, [[0.0, 0.5, 0.5, 0.0]])


def test_memft_ot_skip_fallback_is_zero_with_zero_gradient():
    nll = torch.tensor([[0.1, 0.2, 0.3]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    loss = memft_ot_loss(nll, mask, fallback="skip")
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    close(nll.grad, [[0.0, 0.0, 0.0]])


def test_memft_ot_mean_fallback_equals_sft():
    nll = torch.tensor([[0.1, 0.2, 0.3]])
    mask = torch.tensor([[True, True, False]])
    loss = memft_ot_loss(nll, mask, fallback="mean")
    assert loss.item() == pytest.approx((0.1 + 0.2) / 2)
    assert loss.item() == pytest.approx(sft_loss(nll, mask).item())


def test_memft_ot_mean_fallback_unused_when_some_token_is_hard():
    nll = torch.tensor([[0.1, 2.0, 0.3]])
    mask = torch.ones_like(nll, dtype=torch.bool)
    assert memft_ot_loss(nll, mask, fallback="mean").item() == pytest.approx(2.0)


def test_memft_ot_rejects_unknown_fallback():
    nll = torch.tensor([[0.1, 2.0]])
    mask = torch.ones_like(nll, dtype=torch.bool)
    with pytest.raises(ValueError):
        memft_ot_loss(nll, mask, fallback="bogus")


def test_memft_ot_position_decay_per_sequence():
    lam = 2.0
    nll = torch.tensor(
        [
            [2.0, 0.1, 2.0, 2.0],  # K = 3: k = 0, 1, 2 → exp(-λ·k/2)
            [0.1, 3.0, 0.1, 0.1],  # K = 1: single hard token → weight 1
            [2.0, 2.0, 0.1, 0.1],  # K = 2: k = 0, 1 → exp(-λ·k/1)
            [2.0, 5.0, 2.0, 0.1],  # second hard token masked out → K = 2 over columns 0, 2
        ],
        dtype=torch.float64,
    )
    mask = torch.tensor(
        [
            [True, True, True, True],
            [True, True, True, True],
            [True, True, True, True],
            [True, False, True, True],
        ]
    )
    expected = [
        [1.0, 0.0, math.exp(-lam * 1 / 2), math.exp(-lam * 2 / 2)],
        [0.0, 1.0, 0.0, 0.0],
        [1.0, math.exp(-lam), 0.0, 0.0],
        [1.0, 0.0, math.exp(-lam), 0.0],
    ]
    weights = memft_ot_weights(nll, mask, position_decay=lam)
    close(weights, expected)

    flat_nll = [v for row in nll.tolist() for v in row]
    flat_w = [w for row in expected for w in row]
    loss = memft_ot_loss(nll, mask, position_decay=lam)
    assert loss.item() == pytest.approx(row_weights(flat_nll, flat_w))


def test_memft_ot_position_decay_k1_row_alone():
    nll = torch.tensor([[0.1, 0.2, 4.0]])
    mask = torch.ones_like(nll, dtype=torch.bool)
    close(memft_ot_weights(nll, mask, position_decay=2.0), [[0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------------------------
# Sliding-window state


def test_advance_window_anchor_counts_supervised_positions_only():
    wrong = torch.tensor(
        [
            [True, True, False, False, True, False],  # prompt columns 0, 1 are wrong but masked
            [False, False, False, False, False, False],  # nothing wrong
            [False, False, False, True, True, True],  # only padding is "wrong"
            [False, True, False, True, False, False],  # first wrong supervised → index 0
        ]
    )
    mask = torch.tensor(
        [
            [False, False, True, True, True, True],
            [True, True, True, True, True, True],
            [True, True, True, False, False, False],
            [False, True, True, True, False, False],
        ]
    )
    state = advance_window(wrong, mask, SlidingWindowState.initial(4))
    # Row 0: supervised columns 2, 3, 4, 5 → indices 0, 1, 2, 3; first wrong is column 4 → 2.
    assert state.anchor.tolist() == [2, -1, -1, 0]
    assert state.stalled.tolist() == [0, 0, 0, 0]
    assert state.expansion.tolist() == [1.0, 1.0, 1.0, 1.0]


def _wrong_at(index: int, width: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    wrong = torch.zeros(1, width, dtype=torch.bool)
    if index >= 0:
        wrong[0, index] = True
    return wrong, torch.ones(1, width, dtype=torch.bool)


def test_advance_window_patience_growth_and_cap():
    state = SlidingWindowState.initial(1)
    wrong, mask = _wrong_at(2)
    # Step 1 sets the anchor; steps 2, 3, 4 leave it unchanged → grows at step 4, and
    # thereafter every 3 further unchanged steps, up to the cap of 4.
    expected_expansion = {
        1: 1.0,
        2: 1.0,
        3: 1.0,
        4: 1.5,
        5: 1.5,
        6: 1.5,
        7: 2.0,
        10: 2.5,
        13: 3.0,
        16: 3.5,
        19: 4.0,
        22: 4.0,
        25: 4.0,
    }
    expected_stalled = {1: 0, 2: 1, 3: 2, 4: 0, 5: 1, 6: 2, 7: 0, 22: 0}
    for step in range(1, 26):
        state = advance_window(wrong, mask, state)
        assert state.anchor.tolist() == [2]
        if step in expected_expansion:
            assert state.expansion.item() == pytest.approx(expected_expansion[step]), step
        if step in expected_stalled:
            assert state.stalled.item() == expected_stalled[step], step
    assert state.expansion.item() == pytest.approx(4.0)

    # The anchor moves → expansion back to 1, stall count restarts.
    wrong, mask = _wrong_at(5)
    state = advance_window(wrong, mask, state)
    assert state.anchor.tolist() == [5]
    assert state.expansion.item() == 1.0
    assert state.stalled.item() == 0


def test_advance_window_no_wrong_resets_and_does_not_stall():
    state = SlidingWindowState(
        anchor=torch.tensor([3]), stalled=torch.tensor([2]), expansion=torch.tensor([2.5])
    )
    wrong, mask = _wrong_at(-1)
    for _ in range(5):
        state = advance_window(wrong, mask, state)
        assert state.anchor.tolist() == [-1]
        assert state.stalled.item() == 0
        assert state.expansion.item() == 1.0


def test_advance_window_custom_patience_options():
    state = SlidingWindowState.initial(1)
    wrong, mask = _wrong_at(1)
    state = advance_window(wrong, mask, state, patience=1, growth=2.0, max_expansion=3.0)
    assert state.expansion.item() == 1.0  # anchor just appeared: it moved
    state = advance_window(wrong, mask, state, patience=1, growth=2.0, max_expansion=3.0)
    assert state.expansion.item() == pytest.approx(3.0)
    state = advance_window(wrong, mask, state, patience=1, growth=2.0, max_expansion=3.0)
    assert state.expansion.item() == pytest.approx(3.0)


def test_advance_window_rows_independent():
    state = SlidingWindowState(
        anchor=torch.tensor([1, 1]),
        stalled=torch.tensor([2, 2]),
        expansion=torch.tensor([1.0, 1.0]),
    )
    wrong = torch.tensor([[False, True, False], [True, False, False]])
    mask = torch.ones_like(wrong)
    state = advance_window(wrong, mask, state)
    assert state.anchor.tolist() == [1, 0]
    assert state.stalled.tolist() == [0, 0]
    assert state.expansion.tolist() == [1.5, 1.0]


def test_sliding_window_state_select_update_round_trip():
    state = SlidingWindowState(
        anchor=torch.tensor([4, -1, 7]),
        stalled=torch.tensor([1, 0, 2]),
        expansion=torch.tensor([1.0, 1.0, 2.5]),
    )
    rows = torch.tensor([2, 0])
    part = state.select(rows)
    assert part.anchor.tolist() == [7, 4]
    assert part.stalled.tolist() == [2, 1]
    assert part.expansion.tolist() == [2.5, 1.0]

    assert state.update(rows, part).anchor.tolist() == [4, -1, 7]

    changed = SlidingWindowState(
        anchor=torch.tensor([9, 8]),
        stalled=torch.tensor([0, 3]),
        expansion=torch.tensor([3.0, 1.5]),
    )
    updated = state.update(rows, changed)
    assert updated.anchor.tolist() == [8, -1, 9]
    assert updated.stalled.tolist() == [3, 0, 0]
    assert updated.expansion.tolist() == [1.5, 1.0, 3.0]
    # The original state is not mutated.
    assert state.anchor.tolist() == [4, -1, 7]
    assert state.stalled.tolist() == [1, 0, 2]
    assert state.expansion.tolist() == [1.0, 1.0, 2.5]


def test_sliding_window_state_initial():
    state = SlidingWindowState.initial(3)
    assert state.anchor.tolist() == [-1, -1, -1]
    assert state.stalled.tolist() == [0, 0, 0]
    assert state.expansion.tolist() == [1.0, 1.0, 1.0]


# --------------------------------------------------------------------------------------------
# MemFT-SW weights and loss

PROMPT = 3
SUPERVISED = 100
WIDTH = PROMPT + SUPERVISED


def _sw_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Row 0: 3 prompt columns then 100 supervised; row 1: 100 supervised then 3 padding."""
    nll = torch.zeros(2, WIDTH, dtype=torch.float64)
    mask = torch.zeros(2, WIDTH, dtype=torch.bool)
    for t in range(SUPERVISED):
        nll[0, PROMPT + t] = 0.3 + 0.01 * t
        nll[1, t] = 1.2 - 0.01 * t
    nll[0, :PROMPT] = 5.0  # large loss on masked prompt columns must not matter
    nll[1, SUPERVISED:] = 5.0
    mask[0, PROMPT:] = True
    mask[1, :SUPERVISED] = True
    return nll, mask


def _soft(value: float) -> float:
    return sigmoid(10.0 * (value - LN2))


def _expected_sw_row(values: list[float], anchor: int, expansion: float) -> list[float]:
    """Weights by supervised index for one row, by the DESIGN.md formula."""
    out = []
    for t, value in enumerate(values):
        if anchor < 0:
            multiplier = 1.0
        elif t < anchor + 50 * expansion:
            multiplier = math.exp(-max(t - anchor, 0) / 20.0)
        else:
            multiplier = 0.01
        out.append(_soft(value) * multiplier)
    return out


def test_memft_sw_weights_window_and_floor():
    nll, mask = _sw_batch()
    anchor = 5
    state = SlidingWindowState(
        anchor=torch.tensor([anchor, -1]),
        stalled=torch.tensor([0, 0]),
        expansion=torch.tensor([1.0, 1.0]),
    )
    weights = memft_sw_weights(nll, mask, state)
    assert weights.shape == (2, WIDTH)

    row0 = weights[0]
    values0 = [0.3 + 0.01 * t for t in range(SUPERVISED)]
    # Masked prompt columns weigh nothing.
    assert row0[:PROMPT].tolist() == [0.0] * PROMPT
    # Before the anchor: plain soft weight.
    assert row0[PROMPT + 2].item() == pytest.approx(_soft(values0[2]))
    # At the anchor: multiplier exp(0) = 1.
    assert row0[PROMPT + anchor].item() == pytest.approx(_soft(values0[anchor]))
    # Inside: t = 30 → exp(-25/20).
    assert row0[PROMPT + 30].item() == pytest.approx(_soft(values0[30]) * math.exp(-25 / 20))
    # Last inside position: t = 54 < 5 + 50.
    assert row0[PROMPT + 54].item() == pytest.approx(_soft(values0[54]) * math.exp(-49 / 20))
    # First position beyond the window: t = 55 → floor 0.01.
    assert row0[PROMPT + 55].item() == pytest.approx(_soft(values0[55]) * 0.01)
    assert row0[PROMPT + 99].item() == pytest.approx(_soft(values0[99]) * 0.01)
    close(row0[PROMPT:], _expected_sw_row(values0, anchor, 1.0), atol=1e-9)

    # Row 1 has no wrong position: plain soft weights, zero on padding.
    values1 = [1.2 - 0.01 * t for t in range(SUPERVISED)]
    close(weights[1, :SUPERVISED], [_soft(v) for v in values1], atol=1e-9)
    assert weights[1, SUPERVISED:].tolist() == [0.0] * PROMPT


def test_memft_sw_weights_expansion_moves_boundary():
    nll, mask = _sw_batch()
    anchor = 5
    state = SlidingWindowState(
        anchor=torch.tensor([anchor, 10]),
        stalled=torch.tensor([0, 0]),
        expansion=torch.tensor([1.5, 1.0]),
    )
    weights = memft_sw_weights(nll, mask, state)
    values0 = [0.3 + 0.01 * t for t in range(SUPERVISED)]
    row0 = weights[0, PROMPT:]
    # Boundary now at 5 + 75 = 80: t = 55 and t = 79 inside, t = 80 on the floor.
    assert row0[55].item() == pytest.approx(_soft(values0[55]) * math.exp(-50 / 20))
    assert row0[79].item() == pytest.approx(_soft(values0[79]) * math.exp(-74 / 20))
    assert row0[80].item() == pytest.approx(_soft(values0[80]) * 0.01)
    close(row0, _expected_sw_row(values0, anchor, 1.5), atol=1e-9)

    # Row 1 (own anchor 10, e = 1) is independent of row 0: boundary at 60.
    values1 = [1.2 - 0.01 * t for t in range(SUPERVISED)]
    row1 = weights[1, :SUPERVISED]
    assert row1[59].item() == pytest.approx(_soft(values1[59]) * math.exp(-49 / 20))
    assert row1[60].item() == pytest.approx(_soft(values1[60]) * 0.01)
    close(row1, _expected_sw_row(values1, 10, 1.0), atol=1e-9)


def test_memft_sw_weights_custom_options():
    nll = torch.tensor([[1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    mask = torch.ones_like(nll, dtype=torch.bool)
    state = SlidingWindowState(
        anchor=torch.tensor([1]), stalled=torch.tensor([0]), expansion=torch.tensor([1.0])
    )
    weights = memft_sw_weights(
        nll, mask, state, tau=0.25, sharpness=2.0, window=2, decay=4.0, floor=0.5
    )
    soft = sigmoid(2.0 * (1.0 - math.log(4.0)))
    # Window: t < 1 + 2 = 3.
    expected = [soft, soft, soft * math.exp(-1 / 4.0), soft * 0.5]
    close(weights, [expected], atol=1e-9)


def test_memft_sw_loss_weighted_mean_and_advanced_state():
    nll, mask = _sw_batch()
    wrong = torch.zeros(2, WIDTH, dtype=torch.bool)
    wrong[0, 1] = True  # prompt column: ignored
    wrong[0, PROMPT + 5] = True  # supervised index 5: anchor of row 0
    wrong[0, PROMPT + 40] = True
    # Row 1: nothing wrong among supervised tokens (padding only).
    wrong[1, SUPERVISED + 1] = True
    state = SlidingWindowState.initial(2)

    loss, new_state = memft_sw_loss(nll, mask, wrong, state)
    assert new_state.anchor.tolist() == [5, -1]
    assert new_state.stalled.tolist() == [0, 0]
    assert new_state.expansion.tolist() == [1.0, 1.0]

    values0 = [0.3 + 0.01 * t for t in range(SUPERVISED)]
    values1 = [1.2 - 0.01 * t for t in range(SUPERVISED)]
    w0 = _expected_sw_row(values0, 5, 1.0)
    w1 = _expected_sw_row(values1, -1, 1.0)
    expected = row_weights(values0 + values1, w0 + w1)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    # The input state is not mutated.
    assert state.anchor.tolist() == [-1, -1]


def test_memft_sw_loss_uses_state_after_advancing():
    nll, mask = _sw_batch()
    wrong = torch.zeros(2, WIDTH, dtype=torch.bool)
    wrong[0, PROMPT + 5] = True
    wrong[1, 10] = True
    # Row 0 has already kept anchor 5 for 2 steps: this third unchanged step grows e to 1.5.
    state = SlidingWindowState(
        anchor=torch.tensor([5, 10]),
        stalled=torch.tensor([2, 0]),
        expansion=torch.tensor([1.0, 1.0]),
    )
    loss, new_state = memft_sw_loss(nll, mask, wrong, state)
    assert new_state.anchor.tolist() == [5, 10]
    assert new_state.stalled.tolist() == [0, 1]
    assert new_state.expansion.tolist() == [1.5, 1.0]

    values0 = [0.3 + 0.01 * t for t in range(SUPERVISED)]
    values1 = [1.2 - 0.01 * t for t in range(SUPERVISED)]
    w0 = _expected_sw_row(values0, 5, 1.5)
    w1 = _expected_sw_row(values1, 10, 1.0)
    assert loss.item() == pytest.approx(row_weights(values0 + values1, w0 + w1), rel=1e-9)


def test_memft_sw_loss_passes_window_and_patience_options():
    nll = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    mask = torch.ones_like(nll, dtype=torch.bool)
    wrong = torch.tensor([[False, True, False, False]])
    state = SlidingWindowState(
        anchor=torch.tensor([1]), stalled=torch.tensor([0]), expansion=torch.tensor([1.0])
    )
    loss, new_state = memft_sw_loss(
        nll, mask, wrong, state, patience=1, growth=1.0, window=1, decay=2.0, floor=0.25
    )
    # patience 1: the unchanged anchor grows e to 2 at once → window t < 1 + 1·2 = 3.
    assert new_state.expansion.item() == pytest.approx(2.0)
    soft = [_soft(v) for v in (1.0, 2.0, 3.0, 4.0)]
    w = [soft[0], soft[1], soft[2] * math.exp(-1 / 2.0), soft[3] * 0.25]
    assert loss.item() == pytest.approx(row_weights([1.0, 2.0, 3.0, 4.0], w), rel=1e-9)


# --------------------------------------------------------------------------------------------
# Curriculum


@pytest.mark.parametrize(
    ("epoch", "share"),
    [
        (0, 0.2),
        (1, 0.2),
        (2, 0.4),
        (3, 0.4),
        (4, 0.6),
        (5, 0.6),
        (6, 0.8),
        (7, 0.8),
        (8, 1.0),
        (50, 1.0),
    ],
)
def test_curriculum_share(epoch, share):
    assert curriculum_share(epoch, (2, 4, 6, 8)) == pytest.approx(share)


def test_curriculum_share_uneven_boundaries():
    boundaries = (1, 10, 11, 30)
    assert [curriculum_share(e, boundaries) for e in (0, 1, 9, 10, 11, 29, 30)] == pytest.approx(
        [0.2, 0.4, 0.4, 0.6, 0.8, 0.8, 1.0]
    )


def test_curriculum_items_prefix_of_fixed_order():
    order = [7, 3, 9, 1, 0, 5, 2, 8, 6, 4]
    boundaries = (2, 4, 6, 8)
    assert curriculum_items(order, 0, boundaries) == [7, 3]
    assert curriculum_items(order, 2, boundaries) == [7, 3, 9, 1]
    assert curriculum_items(order, 4, boundaries) == [7, 3, 9, 1, 0, 5]
    assert curriculum_items(order, 6, boundaries) == [7, 3, 9, 1, 0, 5, 2, 8]
    assert curriculum_items(order, 9, boundaries) == order
    # Growing prefixes: each epoch's items extend the previous epoch's.
    previous: list[int] = []
    for epoch in range(10):
        items = curriculum_items(order, epoch, boundaries)
        assert items[: len(previous)] == previous
        assert items == order[: len(items)]
        previous = items


def test_curriculum_items_at_least_one_and_rounding():
    boundaries = (2, 4, 6, 8)
    assert curriculum_items([42], 0, boundaries) == [42]
    assert curriculum_items([5, 6, 7], 0, boundaries) == [5]  # 20% of 3 = 0.6 → 1
    assert curriculum_items([5, 6, 7], 2, boundaries) == [5, 6]  # 40% of 3 = 1.2 → 2
    assert len(curriculum_items(list(range(7)), 2, boundaries)) == 3  # 40% of 7 = 2.8 → 3
    # Exact multiples are not rounded up by floating error: 60% of 5 = 3.
    assert curriculum_items([0, 1, 2, 3, 4], 4, boundaries) == [0, 1, 2]


def test_soft_weights_keep_gradient_just_above_the_boundary_where_ot_has_none():
    from memlaw.objectives import memft_soft_weights

    nll = torch.tensor([[0.6, 2.0]], requires_grad=True)  # p = 0.55 (above) and p = 0.14
    mask = torch.ones_like(nll, dtype=torch.bool)
    weights = memft_soft_weights(nll, mask)
    assert 0.2 < weights[0, 0] < 0.5 and weights[0, 1] > 0.99
    memft_soft_loss(nll, mask).backward()
    soft_grad = nll.grad.clone()
    nll.grad = None
    memft_ot_loss(nll, mask).backward()
    assert soft_grad[0, 0] > 0 and nll.grad[0, 0] == 0
    expected = (weights * nll.detach()).sum() / weights.sum()
    assert memft_soft_loss(nll, mask).item() == pytest.approx(expected.item())


# --------------------------------------------------------------------------------------------
# the registry


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    nll = torch.rand(3, 7, generator=generator) * 2.0
    mask = torch.rand(3, 7, generator=generator) > 0.2
    wrong = torch.rand(3, 7, generator=generator) > 0.5
    return nll, mask, wrong


def run_entry(method: str, nll, mask, settings=None, **kwargs) -> ObjectiveStep:
    objective, settings = resolve(method, settings or Settings(), sequences=3)
    return objective_step(objective, settings, nll, mask, **kwargs)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("settings", [Settings(), Settings(train_tau=0.8, position_decay=2.0)])
def test_each_registry_entry_is_its_pure_function_bit_for_bit(seed, settings):
    nll, mask, wrong = batch(seed)
    tau, decay = settings.training_tau, settings.position_decay
    state = SlidingWindowState.initial(3)
    expected = {
        "sft": sft_loss(nll, mask),
        "memft-ot": memft_ot_loss(nll, mask, tau=tau, position_decay=decay),
        "memft-soft": memft_soft_loss(nll, mask, tau=tau),
        "memft-sw-window": memft_sw_loss(nll, mask, wrong, state, tau=tau)[0],
        "memft-sw-curriculum": memft_ot_loss(nll, mask, tau=tau, position_decay=decay),
        "memft-ot-all": memft_ot_all_loss(nll, mask, tau=tau, position_decay=decay),
    }
    for method, loss in expected.items():
        step = run_entry(method, nll, mask, settings, wrong=wrong, state=state)
        assert torch.equal(step.loss, loss), method
        assert step.active == int((mask & (nll > loss_threshold(tau))).sum())
    # the aliases run their target with their margin
    margin = Settings(train_tau=0.8)
    assert torch.equal(
        run_entry("memft", nll, mask).loss, run_entry("memft-ot", nll, mask, margin).loss
    )
    assert torch.equal(run_entry("sft-cap", nll, mask).loss, sft_cap_loss(nll, mask))


def test_registry_names_every_method_once_and_describes_it():
    assert METHODS == tuple(OBJECTIVES)
    assert {"sft", "memft", "memft-ot", "memft-soft", "memft-sw", "memft-sw-window"} < set(METHODS)
    assert {"memft-sw-curriculum", "memft-ot-all", "sft-cap"} < set(METHODS)
    for name, entry in OBJECTIVES.items():
        assert entry.name == name and entry.description
        assert (entry.weights is None) == (entry.runs is not None)
        if entry.runs:
            assert OBJECTIVES[entry.runs].weights is not None


def test_the_cli_names_every_method():
    import inspect

    from memlaw.cli import train_command

    help_text = inspect.signature(train_command).parameters["method"].default.help
    for name in METHODS:
        assert name in help_text
    assert "memft-ot with train tau 0.8" in help_text


def test_resolve_aliases_margins_and_errors():
    assert resolve("memft", Settings())[1].train_tau == 0.8
    assert resolve("memft", Settings(train_tau=0.95))[1].train_tau == 0.95  # explicit wins
    assert resolve("memft", Settings(tau=0.9))[1].train_tau == 0.9  # never below tau
    objective, settings = resolve("sft-cap", Settings())
    assert (objective.name, settings.train_tau) == ("memft-ot-all", SFT_CAP)
    assert resolve("memft-sw", Settings(), sequences=1)[0].name == "memft-sw-window"
    assert resolve("memft-sw", Settings(), sequences=2)[0].name == "memft-sw-curriculum"
    assert resolve("sft", Settings()) == (OBJECTIVES["sft"], Settings())
    with pytest.raises(MemlawError, match="number of sequences"):
        resolve("memft-sw", Settings())
    with pytest.raises(MemlawError, match="alias"):
        objective_step(OBJECTIVES["memft"], Settings(), *batch()[:2])
    with pytest.raises(MemlawError, match="per-sequence state"):
        objective_step(OBJECTIVES["memft-sw-window"], Settings(), *batch()[:2])


@pytest.mark.parametrize(
    "method, settings, message",
    [
        ("adam", Settings(), "unknown method 'adam': use one of sft, memft,"),
        ("sft", Settings(tau=1.0), "tau must be within"),
        ("memft-ot", Settings(train_tau=0.3), "train tau"),
        ("memft-ot", Settings(fallback="zero"), "fallback"),
    ],
)
def test_check_settings(method, settings, message):
    with pytest.raises(MemlawError, match=message):
        check_settings(method, settings)


def test_skips_and_fallback_where_no_token_is_left_to_train():
    nll = torch.tensor([[0.001, 0.002]], requires_grad=True)  # every p > 0.99
    mask = torch.ones_like(nll, dtype=torch.bool)
    for method in ("memft-ot", "memft-sw-curriculum", "memft-ot-all", "sft-cap", "memft"):
        step = run_entry(method, nll, mask)
        assert step.skipped and step.active == 0 and step.loss.item() == 0.0
        mean = run_entry(method, nll, mask, Settings(fallback="mean"))
        assert not mean.skipped and mean.loss.item() == pytest.approx(0.0015)
    for method in ("sft", "memft-soft"):
        assert not run_entry(method, nll, mask).skipped
    # another process still has tokens to train: nobody skips
    assert not run_entry("memft-ot", nll, mask, active_total=3).skipped
