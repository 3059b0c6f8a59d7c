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

from memlaw import objectives
from memlaw.adapters import LoraSpec, attach_lora, trainable_parameters
from memlaw.atomic import atomic_write_dir, atomic_write_json
from memlaw.data import EncodedItem, target_length
from memlaw.errors import MemlawError
from memlaw.forward import choose_forward
from memlaw.objectives import METHODS as METHODS  # the one method list, re-exported
from memlaw.probe import ProbeReport, mean_target_loss, probe, teacher_forced
from memlaw.recipe import default_recipe


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``steps`` counts optimizer steps (skipped MemFT updates included);
    ``epochs``, when given, sets ``steps = epochs × batches per epoch`` instead.
    ``batch_size`` 0 means the full memory set in every step."""

    method: str = "sft"
    lr: float = 1e-2
    steps: int | None = None  # None (and no epochs): the default recipe's epoch cap
    epochs: int | None = None
    batch_size: int | None = None  # None: the default recipe's batch for the set's size
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    tau: float = objectives.DEFAULT_TAU
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
        objectives.check_settings(self.method, objectives.Settings.of(self))
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise MemlawError(f"learning rate must be a positive number, got {self.lr}")
        if self.steps is not None and self.steps <= 0 and not self.epochs:
            raise MemlawError(f"steps must be positive, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise MemlawError(f"epochs must be positive, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 0:
            raise MemlawError(
                f"batch size must be 0 (full batch) or positive, got {self.batch_size}"
            )
        if self.plateau_window is not None and self.plateau_window <= 0:
            raise MemlawError(f"plateau window must be positive, got {self.plateau_window}")
        if self.sft_warmup_steps < 0:
            raise MemlawError(f"SFT warm-up steps must be 0 or more, got {self.sft_warmup_steps}")


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
    # With record_token_probabilities: per step, (items trained, p of each supervised token of
    # each item in target order), measured on the forward pass before the update.
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
    requested = objectives.OBJECTIVES[config.method]
    objective, settings = objectives.resolve(
        config.method, objectives.Settings.of(config), sequences=len(encoded)
    )
    config = replace(config, method=objective.name, train_tau=settings.train_tau)
    pad = tokenizer.pad_token_id
    threshold = objectives.loss_threshold(config.tau)
    recipe = default_recipe(len(encoded))
    wanted = recipe.batch_size if config.batch_size is None else config.batch_size
    full_batch = wanted <= 0 or wanted >= len(encoded)
    batch_size = len(encoded) if full_batch else wanted
    batches_per_epoch = math.ceil(len(encoded) / batch_size)
    epochs = config.epochs or (None if config.steps else recipe.max_epochs)
    total_steps = epochs * batches_per_epoch if epochs else config.steps
    total_epochs = math.ceil(total_steps / batches_per_epoch)
    boundaries = config.curriculum_boundaries or objectives.default_boundaries(total_epochs)

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
    window_state = objectives.SlidingWindowState.initial(len(encoded), device)  # beside the losses
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
            if objective.curriculum:
                pool = objectives.curriculum_items(curriculum_order, epoch, boundaries)
            if not full_batch:
                order_rng.shuffle(pool)
            epoch_batches = [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
        if step % batches_per_epoch >= len(epoch_batches):
            continue  # a shorter curriculum epoch: nothing left in it
        batch_items = epoch_batches[step % batches_per_epoch]
        tick = time.perf_counter()

        losses = forward(batch_items)
        nll, mask = losses.nll, losses.mask
        plain = objectives.sft_loss(nll, mask)
        if not torch.isfinite(plain):
            _restore(params, last_good)
            stop_reason = "non-finite loss"
            break
        last_good = _snapshot(params)

        above = mask & (nll.detach() < threshold)
        item_certified = (above | ~mask).all(dim=1).tolist()
        item_exact = (~(losses.wrong & mask)).all(dim=1)
        for item, ok in zip(batch_items, item_certified, strict=False):
            certified_now[item] = ok
        if (
            config.stop_when_certified
            and all(certified_now)
            and _confirm_certified(
                model, encoded, pad, threshold, full_batch and len(batch_items) == len(encoded)
            )
        ):
            stop_reason = "certified"
            break

        if config.record_token_probabilities:
            p = torch.exp(-nll.detach())
            token_probabilities.append(
                (list(batch_items), [p[i][mask[i]].tolist() for i in range(len(batch_items))])
            )

        current = objectives.OBJECTIVES["sft"] if step < config.sft_warmup_steps else objective
        window = None
        if current.window:
            item_index = torch.tensor(batch_items, device=device)
            window = window_state.select(item_index)
        taken = objectives.objective_step(
            current, settings, nll, mask, wrong=losses.wrong, state=window
        )
        if current.window:
            window_state = window_state.update(item_index, taken.state)
        skipped = taken.skipped

        grad_norm = None
        if not skipped:
            optimizer.zero_grad(set_to_none=True)
            taken.loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip))
            optimizer.step()
        entry = StepLog(
            step=step + 1,
            loss=float(plain.detach()),
            objective=float(taken.loss.detach()),
            active_tokens=taken.active,
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
            "batch_size": batch_size,  # as resolved from the recipe when not given
            "total_steps": total_steps,
            "requested_method": requested.name,
            "objective": requested.description,
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
