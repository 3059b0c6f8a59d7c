"""The training loop: memorize a memory set into a LoRA adapter with SFT or MemFT.

One readable loop: AdamW, gradient clipping, a fixed seed, a per-step log, early stop when
the run is certified (every target token p > τ, so greedy recall is guaranteed), and a guard
against non-finite losses that keeps the last good adapter.

>>> from memlaw.models import load_model
>>> from memlaw.data import generate_phonebook, encode_items
>>> from memlaw.adapters import LoraSpec
>>> model, tokenizer = load_model("tiny")
>>> items = encode_items(generate_phonebook(2), tokenizer)
>>> run = train(model, tokenizer, items, LoraSpec(rank=4), TrainConfig(method="sft", steps=3))
>>> len(run.log), run.stop_reason
(3, 'budget')
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from memlaw import objectives as O
from memlaw.adapters import LoraSpec, attach_lora, trainable_parameters
from memlaw.atomic import atomic_write_dir, atomic_write_json
from memlaw.data import EncodedItem, target_length
from memlaw.errors import MemlawError
from memlaw.forward import choose_forward
from memlaw.probe import ProbeReport, mean_target_loss, probe, teacher_forced

METHODS = (
    "sft",
    "memft",
    "memft-ot",
    "memft-soft",
    "memft-sw",
    "memft-sw-window",
    "memft-sw-curriculum",
)


# memlaw's recommended MemFT, ``method="memft"``: MemFT-OT with a training margin. In
# bench/memft_vs_sft.py (3 seeds, docs/benchmarks.md) it reached certified recall fastest on
# both shared benchmarks (0.97x and 0.95x SFT's steps; soft weights with the same margin tie
# with it on PhoneBook), where plain MemFT-OT took 1.74x and 1.15x. The published variants
# stay available under their own names.
RECOMMENDED_MEMFT = {"method": "memft-ot", "train_tau": 0.8}


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``steps`` counts optimizer steps (skipped MemFT updates included);
    ``epochs``, when given, sets ``steps = epochs × batches per epoch`` instead.
    ``batch_size`` 0 means the full memory set in every step."""

    method: str = "sft"
    lr: float = 1e-2
    steps: int = 200
    epochs: int | None = None
    batch_size: int = 0
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    tau: float = O.DEFAULT_TAU
    # MemFT trains a token while p < train_tau (default: tau) and certifies at tau; a margin
    # (e.g. 0.8) keeps pushing tokens that sit just above the boundary instead of letting
    # them slide back below it.
    train_tau: float | None = None
    stop_when_certified: bool = True
    fallback: str = "skip"  # MemFT-OT with no token below the boundary: skip | mean
    position_decay: float | None = None  # MemFT-OT position weighting λ (e.g. 2.0)
    curriculum_boundaries: tuple[int, ...] | None = None  # epochs; default: equal fifths
    # A schedule from SFT to MemFT: plain SFT for the first steps, then the MemFT objective.
    sft_warmup_steps: int = 0
    # Keep every step's per-token probabilities p (TrainResult.token_probabilities), to see
    # how tokens cross the boundary and whether they slide back.
    record_token_probabilities: bool = False
    fast_path: bool = True  # cache the frozen layers below the adapter (memlaw.forward)
    # Stop at a plateau, measured in epochs: over the last ``plateau_window`` epochs the
    # memorized loss (min(L0, H) − L1, see memlaw.information) grew by less than this relative
    # tolerance on the window before, and no more items were certified (None: train the budget).
    plateau_window: int | None = None
    plateau_tolerance: float = 0.01
    # H, the data's information baseline per token (None: L0, i.e. the plateau is on ΔL).
    information_baseline: float | None = None

    def validate(self) -> None:
        if self.method not in METHODS:
            raise MemlawError(f"unknown method '{self.method}': use one of {', '.join(METHODS)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise MemlawError(f"learning rate must be a positive number, got {self.lr}")
        if self.steps <= 0 and not self.epochs:
            raise MemlawError(f"steps must be positive, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise MemlawError(f"epochs must be positive, got {self.epochs}")
        if self.batch_size < 0:
            raise MemlawError(
                f"batch size must be 0 (full batch) or positive, got {self.batch_size}"
            )
        check_memft_settings(self.tau, self.train_tau, self.fallback)
        if self.plateau_window is not None and self.plateau_window <= 0:
            raise MemlawError(f"plateau window must be positive, got {self.plateau_window}")
        if self.sft_warmup_steps < 0:
            raise MemlawError(f"SFT warm-up steps must be 0 or more, got {self.sft_warmup_steps}")


def check_memft_settings(tau: float, train_tau: float | None, fallback: str) -> None:
    """The checks MemFT's settings share wherever it runs (memlaw's loop, the Trainer)."""
    if not 0.0 < tau < 1.0:
        raise MemlawError(f"tau must be within (0, 1), got {tau}")
    if train_tau is not None and not tau <= train_tau < 1.0:
        raise MemlawError(f"train tau must be within [tau, 1), got {train_tau}")
    if fallback not in ("skip", "mean"):
        raise MemlawError(f"fallback must be skip or mean, got '{fallback}'")


@dataclass
class StepLog:
    """One optimizer step, measured on the forward pass before the update."""

    step: int
    loss: float  # plain mean cross-entropy of the batch's target tokens (SFT's loss)
    objective: float  # the loss actually back-propagated
    active_tokens: (
        int  # supervised tokens MemFT trains: p < train_tau (the boundary tau by default)
    )
    above_share: float  # share of supervised tokens already above it: budget spent on them by SFT
    certified_items: int  # items of the batch whose every target token has p > tau
    exact_items: int  # items of the batch whose every target token is the argmax (greedy recall)
    skipped: bool  # no update: MemFT had nothing below the boundary
    grad_norm: float | None
    seconds: float
    epoch: int = 1
    tokens: int = 0  # supervised tokens in the batch


@dataclass
class TrainResult:
    """A finished run: its adapter-wrapped model, log, probe and record."""

    model: object
    log: list[StepLog]
    stop_reason: str  # budget | certified | plateau | non-finite loss
    steps: int
    base_loss: float
    train_seconds: float
    n_eff: int
    trainable_params: int
    report: ProbeReport | None = None
    config: dict = field(default_factory=dict)
    # With record_token_probabilities: per step, (rows trained, p of each supervised token of
    # each row in target order), measured on the forward pass before the update.
    token_probabilities: list[tuple[list[int], list[list[float]]]] = field(default_factory=list)

    def record(self) -> dict:
        """The JSON record of the run."""
        summary = self.report.summary() if self.report else {}
        return {
            "config": self.config,
            "length": summary.get("length"),
            "base_loss": self.base_loss,
            "final_loss": summary.get("final_loss"),
            "delta_loss": summary.get("delta_loss"),
            "steps": self.steps,
            "stop_reason": self.stop_reason,
            "train_seconds": self.train_seconds,
            "n_eff": self.n_eff,
            "trainable_params": self.trainable_params,
            "exact_match": summary.get("exact_match"),
            "certified_share": summary.get("certified_share"),
            "token_certified_share": summary.get("token_certified_share"),
            "stubborn_tokens": summary.get("stubborn_tokens"),
            "log": [asdict(entry) for entry in self.log],
        }


def resolve_recommended(config: TrainConfig) -> TrainConfig:
    """``memft`` is memlaw's recommended MemFT (:data:`RECOMMENDED_MEMFT`); an explicit
    ``train_tau`` still wins over the recommended one.

    >>> resolve_recommended(TrainConfig(method="memft")).train_tau
    0.8
    """
    if config.method != "memft":
        return config
    chosen = dict(RECOMMENDED_MEMFT)
    if config.train_tau is not None:
        chosen["train_tau"] = config.train_tau
    elif "train_tau" in chosen:  # the margin sits above the certification threshold
        chosen["train_tau"] = max(chosen["train_tau"], config.tau)
    resolved = replace(config, **chosen)
    resolved.validate()
    return resolved


def resolve_method(method: str, encoded: list[EncodedItem]) -> str:
    """``memft-sw`` means the sliding window on one sequence and the curriculum on many items."""
    if method == "memft-sw":
        return "memft-sw-window" if len(encoded) == 1 else "memft-sw-curriculum"
    return method


def train(
    model,
    tokenizer,
    encoded: list[EncodedItem],
    lora: LoraSpec,
    config: TrainConfig,
    *,
    on_step: Callable[[StepLog, int], None] | None = None,
    final_probe: bool = True,
) -> TrainResult:
    """Train a LoRA adapter on ``encoded`` and return the run (the model now carries it)."""
    config.validate()
    requested = config.method
    config = resolve_recommended(config)
    method = resolve_method(config.method, encoded)
    pad = tokenizer.pad_token_id
    threshold = O.loss_threshold(config.tau)
    train_tau = config.train_tau or config.tau
    train_threshold = O.loss_threshold(train_tau)
    full_batch = config.batch_size <= 0 or config.batch_size >= len(encoded)
    batch_size = len(encoded) if full_batch else config.batch_size
    batches_per_epoch = math.ceil(len(encoded) / batch_size)
    total_steps = config.epochs * batches_per_epoch if config.epochs else config.steps
    total_epochs = math.ceil(total_steps / batches_per_epoch)
    boundaries = config.curriculum_boundaries or tuple(
        round(total_epochs * k / 5) for k in range(1, 5)
    )

    base_loss = mean_target_loss(teacher_forced(model, encoded, pad))
    torch.manual_seed(config.seed)
    order_rng = random.Random(config.seed)
    layers = lora.resolved_layers(model)
    model = attach_lora(model, lora, seed=config.seed)
    started = time.perf_counter()  # the fast path's one-off caching counts as training time
    forward, forward_note = choose_forward(model, encoded, pad, min(layers), fast=config.fast_path)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    device = next(model.parameters()).device
    window_state = O.SlidingWindowState.initial(len(encoded), device)  # beside the losses
    curriculum_order = order_rng.sample(range(len(encoded)), len(encoded))
    certified_now = [False] * len(encoded)  # per item, from its latest forward pass
    last_good = _snapshot(params)
    log: list[StepLog] = []
    token_probabilities: list[tuple[list[int], list[list[float]]]] = []
    stop_reason = "budget"

    epoch_batches: list[list[int]] = []
    for step in range(total_steps):
        epoch = step // batches_per_epoch
        if step % batches_per_epoch == 0:
            pool = list(range(len(encoded)))
            if method == "memft-sw-curriculum":
                pool = O.curriculum_items(curriculum_order, epoch, boundaries)
            if not full_batch:
                order_rng.shuffle(pool)
            epoch_batches = [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
        if step % batches_per_epoch >= len(epoch_batches):
            continue  # a shorter curriculum epoch: nothing left in it
        rows = epoch_batches[step % batches_per_epoch]
        tick = time.perf_counter()

        losses = forward(rows)
        nll, mask = losses.nll, losses.mask
        plain = O.sft_loss(nll, mask)
        if not torch.isfinite(plain):
            _restore(params, last_good)
            stop_reason = "non-finite loss"
            break
        last_good = _snapshot(params)

        above = mask & (nll.detach() < threshold)
        item_certified = (above | ~mask).all(dim=1).tolist()
        item_exact = (~(losses.wrong & mask)).all(dim=1)
        for row, ok in zip(rows, item_certified, strict=False):
            certified_now[row] = ok
        if (
            config.stop_when_certified
            and all(certified_now)
            and _confirm_certified(
                model, encoded, pad, threshold, full_batch and len(rows) == len(encoded)
            )
        ):
            stop_reason = "certified"
            break

        if config.record_token_probabilities:
            p = torch.exp(-nll.detach())
            token_probabilities.append(
                (list(rows), [p[i][mask[i]].tolist() for i in range(len(rows))])
            )

        warming_up = step < config.sft_warmup_steps
        if method == "sft" or warming_up:
            objective = plain
        elif method == "memft-soft":
            objective = O.memft_soft_loss(nll, mask, tau=train_tau)
        elif method == "memft-ot" or method == "memft-sw-curriculum":
            objective = O.memft_ot_loss(
                nll,
                mask,
                tau=train_tau,
                fallback=config.fallback,
                position_decay=config.position_decay,
            )
        else:  # memft-sw-window
            row_index = torch.tensor(rows, device=device)
            objective, part = O.memft_sw_loss(
                nll, mask, losses.wrong, window_state.select(row_index), tau=train_tau
            )
            window_state = window_state.update(row_index, part)
        active = int((mask & (nll.detach() > train_threshold)).sum())
        skipped = (
            method in ("memft-ot", "memft-sw-curriculum")
            and not warming_up
            and active == 0
            and config.fallback == "skip"
        )

        grad_norm = None
        if not skipped:
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip))
            optimizer.step()
        entry = StepLog(
            step=step + 1,
            loss=float(plain.detach()),
            objective=float(objective.detach()),
            active_tokens=active,
            above_share=float(above.sum()) / max(int(mask.sum()), 1),
            certified_items=sum(item_certified),
            exact_items=int(item_exact.sum()),
            skipped=skipped,
            grad_norm=grad_norm,
            seconds=time.perf_counter() - tick,
            epoch=epoch + 1,
            tokens=int(mask.sum()),
        )
        log.append(entry)
        if on_step is not None:
            on_step(entry, total_steps)
        epoch_ends = (step + 1) % batches_per_epoch == 0
        ceiling = base_loss
        if config.information_baseline is not None:
            ceiling = min(base_loss, config.information_baseline)
        if (
            config.plateau_window
            and epoch_ends
            and _plateaued(log, ceiling, config.plateau_window, config.plateau_tolerance)
        ):
            stop_reason = "plateau"
            break

    train_seconds = time.perf_counter() - started
    model.eval()
    result = TrainResult(
        model=model,
        log=log,
        stop_reason=stop_reason,
        steps=len(log),
        base_loss=base_loss,
        train_seconds=train_seconds,
        n_eff=lora.n_eff(model.get_base_model()),
        trainable_params=trainable_parameters(model),
        config={
            **asdict(config),
            "method": method,
            "requested_method": requested,
            "lora": asdict(lora) | {"layers": list(layers)},
            "forward": forward_note,
            "length": target_length(encoded),
            "items": len(encoded),
        },
        token_probabilities=token_probabilities,
    )
    if final_probe:
        result.report = probe(model, tokenizer, encoded, tau=config.tau, base_loss=base_loss)
    return result


def epoch_summaries(log: list[StepLog]) -> list[tuple[float, int]]:
    """Per epoch: the token-weighted mean loss and the certified items, both from each batch's
    forward pass before its update."""
    sums: dict[int, list[float]] = {}
    for entry in log:
        total = sums.setdefault(entry.epoch, [0.0, 0, 0])
        weight = max(entry.tokens, 1)
        total[0] += entry.loss * weight
        total[1] += weight
        total[2] += entry.certified_items
    return [(loss / weight, int(certified)) for loss, weight, certified in sums.values()]


def _plateaued(log: list[StepLog], ceiling: float, window: int, tolerance: float) -> bool:
    """Over the last ``window`` epochs the memorized loss ``ceiling − L1`` grew by less than
    ``tolerance`` (relative) on the window before, and the best count of certified items did
    not rise. Relative to the memorized loss, not to the loss: a loss falling from 0.02 to 0.01
    halves, yet memory has converged, which is what a law sweep measures; the certified count
    keeps a run going while items still cross the recall boundary."""
    epochs = epoch_summaries(log)
    if len(epochs) < 2 * window:
        return False
    last, before = epochs[-window:], epochs[-2 * window : -window]
    last_loss = sum(loss for loss, _ in last) / window
    before_loss = sum(loss for loss, _ in before) / window
    more_certified = max(c for _, c in last) > max(c for _, c in before)
    grew = before_loss - last_loss >= tolerance * max(ceiling - last_loss, 1e-12)
    return not (grew or more_certified)


def _snapshot(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


@torch.no_grad()
def _restore(params: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    for p, s in zip(params, saved, strict=False):
        p.copy_(s)


def _confirm_certified(model, encoded, pad, threshold: float, seen_whole_set: bool) -> bool:
    """All items looked certified in their latest forward; confirm with the current weights
    unless that forward covered the whole set with these very weights."""
    if seen_whole_set:
        return True
    return all(all(x < threshold for x in s.nll) for s in teacher_forced(model, encoded, pad))


def save_run(
    result: TrainResult, out_dir: str | Path, *, overwrite: bool = False, extra: dict | None = None
) -> Path:
    """Write the PEFT adapter (safetensors) and ``record.json`` into ``out_dir`` atomically."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise MemlawError(
            f"output folder '{out_dir}' already exists: pick another or pass --overwrite"
        )
    record = result.record() | (extra or {})

    def fill(staging: Path) -> None:
        result.model.save_pretrained(staging, safe_serialization=True)
        atomic_write_json(staging / "record.json", record)
        if result.report is not None:
            atomic_write_json(staging / "probe.json", result.report.to_dict())

    atomic_write_dir(out_dir, fill, overwrite=overwrite)
    return out_dir
