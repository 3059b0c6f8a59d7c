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
from memlaw.checkpoint import RunState, load_state, restamp, run_fingerprint, save_state
from memlaw.data import EncodedItem, target_length
from memlaw.errors import MemlawError
from memlaw.forward import base_target_loss, choose_forward
from memlaw.information import ceiling
from memlaw.objectives import METHODS as METHODS  # the one method list, re-exported
from memlaw.probe import ProbeReport, probe, teacher_forced
from memlaw.recipe import default_lr, default_recipe


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``steps`` counts optimizer steps (skipped MemFT updates included);
    ``epochs``, when given, sets ``steps = epochs × batches per epoch`` instead.
    ``batch_size`` 0 means the full memory set in every step."""

    method: str = "sft"
    lr: float | None = None  # None: the default recipe's rate for the batch in use
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
    # Anneal on plateau (memlaw train's recipe): halve the rate after this many epochs without
    # a 1% better loss, down to lr × anneal_floor; a plateau there ends the run (_Stopper).
    anneal_patience: int | None = None
    anneal_floor: float = 1 / 8
    # Linear learning-rate warm-up over the first optimizer steps (lr × k / lr_warmup_steps at
    # step k); the anneal acts on the rate from then on. 0: none (the default recipe).
    lr_warmup_steps: int = 0

    def validate(self) -> None:
        objectives.check_settings(self.method, objectives.Settings.of(self))
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise MemlawError(f"learning rate must be a positive number, got {self.lr}")
        if not (self.grad_clip > 0 and math.isfinite(self.grad_clip)):
            raise MemlawError(f"gradient clip must be a positive number, got {self.grad_clip}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise MemlawError(f"weight decay must be 0 or more, got {self.weight_decay}")
        if self.seed < 0:
            raise MemlawError(f"seed must be 0 or more, got {self.seed}")
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
        if self.anneal_patience is not None and self.anneal_patience <= 0:
            raise MemlawError(f"anneal patience must be positive, got {self.anneal_patience}")
        if not 0 < self.anneal_floor <= 1:
            raise MemlawError(f"anneal floor must be within (0, 1], got {self.anneal_floor}")
        if self.sft_warmup_steps < 0:
            raise MemlawError(f"SFT warm-up steps must be 0 or more, got {self.sft_warmup_steps}")
        if self.lr_warmup_steps < 0:
            raise MemlawError(f"lr warm-up steps must be 0 or more, got {self.lr_warmup_steps}")


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
    resumed_seconds: float = 0.0  # of train_seconds, those trained before a checkpoint's resume
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
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 10,
) -> TrainResult:
    """Train a LoRA adapter on ``encoded`` and return the run (the model now carries it).

    ``checkpoint``: a folder for the run's state every ``checkpoint_every`` epochs; started
    again with it, the same run continues with the very losses it would have had. It stays.
    """
    config.validate()
    requested = objectives.OBJECTIVES[config.method]
    objective, settings, config = _resolved(config, len(encoded))
    pad = tokenizer.pad_token_id
    budget = _Budget.of(config, len(encoded))
    torch.manual_seed(config.seed)
    started = time.perf_counter()  # the fast path's one-off caching counts as training time
    model, forward, params, optimizer, notes = _prepare(model, encoded, pad, lora, config)
    tick = time.perf_counter()
    base_loss = base_target_loss(model, forward)  # on the fast path: through its cache
    started += time.perf_counter() - tick  # the base loss is not training time
    notes |= {"budget": budget, "requested": requested, "encoded": encoded}
    stopper = _Stopper(config, optimizer, base_loss)
    step_state = _StepState(objective, settings, len(encoded), next(model.parameters()).device)
    certificates = _Certificates(model, encoded, pad, config, budget.full_batch)
    parts = _Parts(params, optimizer, stopper, step_state, certificates)
    saver = _Checkpointer(checkpoint, checkpoint_every, config, lora, encoded, model)
    log, token_probabilities, last_good, elapsed = saver.restore(parts)
    started -= elapsed
    stop_reason = "budget"
    batches = budget.batches(config.seed, objective.curriculum, config)
    for step, epoch, batch_items, epoch_ends, whole_set in batches:
        if log and step < log[-1].step:  # trained before the checkpoint
            continue
        tick = time.perf_counter()
        losses = forward(batch_items)
        nll, mask = losses.nll, losses.mask
        plain = objectives.sft_loss(nll, mask)
        if not torch.isfinite(plain):
            _restore(params, last_good)
            stop_reason = "non-finite loss"
            break
        last_good = _snapshot(params)
        above, item_certified = certificates.update(batch_items, nll, mask)
        if config.stop_when_certified and certificates.all_certified(batch_items):
            stop_reason = "certified"
            break
        if config.record_token_probabilities:
            token_probabilities.append(_probabilities(batch_items, nll, mask))
        sft_now = step < config.sft_warmup_steps
        taken = step_state.objective_step(batch_items, nll, mask, losses.wrong, sft_now)
        if step < config.lr_warmup_steps:  # set from the step alone, so a resumed run agrees
            for group in optimizer.param_groups:
                group["lr"] = config.lr * (step + 1) / config.lr_warmup_steps
        grad_norm = None if taken.skipped else _update(optimizer, params, taken.loss, config)
        entry = _step_entry(step, epoch, plain, taken, losses, above, item_certified, grad_norm)
        entry.seconds = time.perf_counter() - tick
        log.append(entry)
        if on_step is not None:
            on_step(entry, budget.total_steps)
        # A plateau is judged on epochs of the whole set only: a curriculum's epochs see a
        # growing share of it, so its plateau is judged once it trains on every item.
        if epoch_ends and whole_set and stopper.plateaued(log):
            stop_reason = "plateau"
            break
        if epoch_ends:  # a curriculum's short epochs too: a killed run loses at most `every`
            seconds = time.perf_counter() - started
            # the cap's epoch is saved too: the same run under a longer cap continues from it
            last = step + 1 == budget.total_steps
            saver.epoch_done(epoch + 1, parts, last_good, log, token_probabilities, seconds, last)

    seconds = time.perf_counter() - started
    model.eval()
    n_eff, count = lora.n_eff(model.get_base_model()), trainable_parameters(model)
    result = TrainResult(model, log, stop_reason, len(log), base_loss, seconds, n_eff, count)
    result.config = _run_config(config, **notes)
    result.token_probabilities = token_probabilities
    result.resumed_seconds = elapsed
    if final_probe:
        result.report = probe(model, tokenizer, encoded, tau=config.tau, base_loss=base_loss)
    return result


def _step_entry(step, epoch, plain, taken, losses, above, item_certified, grad_norm) -> StepLog:
    """The log entry of one step (its time filled in by the loop)."""
    mask = losses.mask
    return StepLog(
        step=step + 1,
        loss=float(plain.detach()),
        objective=float(taken.loss.detach()),
        active_tokens=taken.active,
        above_share=float(above.sum()) / max(int(mask.sum()), 1),
        certified_items=sum(item_certified),
        exact_items=int((~(losses.wrong & mask)).all(dim=1).sum()),
        skipped=taken.skipped,
        grad_norm=grad_norm,
        seconds=0.0,
        epoch=epoch + 1,
        tokens=int(mask.sum()),
    )


@dataclass
class _Parts:
    """What a checkpoint saves and restores besides the log: the weights, the optimizer, the
    annealing schedule (in the stopper), the sliding window and the certificates."""

    params: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    stopper: _Stopper
    step_state: _StepState
    certificates: _Certificates


class _Checkpointer:
    """Saves the run into ``folder`` every ``every`` epochs and puts it back on a restart
    (memlaw.checkpoint); without a folder, it does nothing."""

    def __init__(self, folder: str | Path | None, every: int, config, lora, encoded, model):
        if every <= 0:
            raise MemlawError(f"checkpoint_every must be a positive epoch count, got {every}")
        self.folder, self.every = folder, every
        # the run's identity (config, adapter, data, base model), hashed only when checkpointing
        self.fingerprint = None
        if folder is not None:
            self.fingerprint = run_fingerprint(config, lora, encoded, model.get_base_model())

    def restore(self, parts: _Parts):
        """(log, token probabilities, last good weights, seconds trained) of the checkpoint,
        its state put back into ``parts``; a fresh start without one."""
        state = None
        if self.folder is not None:
            state = load_state(self.folder, self.fingerprint, parts.params[0].device)
        if state is None:
            return [], [], _snapshot(parts.params), 0.0
        with torch.no_grad():
            for param, saved in zip(parts.params, state.params, strict=True):
                param.copy_(saved)
        parts.optimizer.load_state_dict(state.optimizer)
        if state.scheduler is not None:
            parts.stopper.scheduler.load_state_dict(state.scheduler)
        parts.certificates.now = list(state.certified)
        device = parts.params[0].device
        parts.step_state.window_state = objectives.SlidingWindowState(
            **{name: tensor.to(device) for name, tensor in state.window.items()}
        )
        log = [StepLog(**entry) for entry in state.log]
        probabilities = [tuple(entry) for entry in state.token_probabilities]
        return log, probabilities, state.last_good, state.seconds

    def epoch_done(
        self, epoch: int, parts: _Parts, last_good, log, probabilities, seconds, last=False
    ):
        if self.folder is None or (epoch % self.every and not last):
            return
        scheduler = parts.stopper.scheduler
        state = RunState(
            params=parts.params,
            last_good=last_good,
            optimizer=parts.optimizer.state_dict(),
            scheduler=None if scheduler is None else scheduler.state_dict(),
            log=[asdict(entry) for entry in log],
            certified=list(parts.certificates.now),
            window=asdict(parts.step_state.window_state),
            token_probabilities=probabilities,
            seconds=seconds,
        )
        save_state(self.folder, self.fingerprint, state)


def _prepare(model, encoded, pad: int, lora: LoraSpec, config: TrainConfig):
    """Attach the adapter, choose the forward (fast path or PEFT's) and build the optimizer."""
    layers = lora.resolved_layers(model)
    model = attach_lora(model, lora, seed=config.seed)
    forward, note = choose_forward(model, encoded, pad, min(layers), fast=config.fast_path)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    notes = {"optimizer": optimizer, "lora": lora, "layers": layers, "forward": note}
    return model, forward, params, optimizer, notes


def _run_config(
    config: TrainConfig, *, budget, optimizer, requested, lora, layers, forward, encoded
) -> dict:
    """What the record says of how the run was trained, as resolved (recipe, objective)."""
    return {
        **asdict(config),
        "batch_size": budget.batch_size,  # as resolved from the recipe when not given
        "total_steps": budget.total_steps,
        "final_lr": optimizer.param_groups[0]["lr"],
        "requested_method": requested.name,
        "objective": requested.description,
        "lora": asdict(lora) | {"layers": list(layers)},
        "forward": forward,
        "length": target_length(encoded),
        "items": len(encoded),
    }


def _probabilities(batch_items: list[int], nll, mask) -> tuple[list[int], list[list[float]]]:
    """p of each supervised token of each item of the batch, in target order."""
    p = torch.exp(-nll.detach())
    return list(batch_items), [p[i][mask[i]].tolist() for i in range(len(batch_items))]


@dataclass(frozen=True)
class _Budget:
    """Batches per step and per epoch, and the step budget, from the config and the recipe."""

    n_items: int
    batch_size: int
    full_batch: bool
    batches_per_epoch: int
    total_steps: int
    total_epochs: int

    @classmethod
    def of(cls, config: TrainConfig, n_items: int) -> _Budget:
        recipe = default_recipe(n_items)
        wanted = recipe.batch_size if config.batch_size is None else config.batch_size
        full_batch = wanted <= 0 or wanted >= n_items
        batch_size = n_items if full_batch else wanted
        per_epoch = math.ceil(n_items / batch_size)
        epochs = config.epochs or (None if config.steps else recipe.max_epochs)
        total = epochs * per_epoch if epochs else config.steps
        return cls(n_items, batch_size, full_batch, per_epoch, total, math.ceil(total / per_epoch))

    def batches(self, seed: int, curriculum: bool, config: TrainConfig):
        """(step, epoch, items, last of its epoch, the epoch trains every item) for every
        step: items shuffled per epoch (one seeded order), the curriculum's growing prefix of a
        fixed random order when it is on (fewer batches, numbered as a whole epoch's first)."""
        order_rng = random.Random(seed)
        boundaries = config.curriculum_boundaries or objectives.default_boundaries(
            self.total_epochs
        )
        everything = list(range(self.n_items))
        curriculum_order = order_rng.sample(everything, len(everything))
        epoch_batches: list[list[int]] = []
        for step in range(self.total_steps):
            epoch = step // self.batches_per_epoch
            if step % self.batches_per_epoch == 0:
                pool = list(everything)
                if curriculum:
                    pool = objectives.curriculum_items(curriculum_order, epoch, boundaries)
                if not self.full_batch:
                    order_rng.shuffle(pool)
                size = self.batch_size
                epoch_batches = [pool[i : i + size] for i in range(0, len(pool), size)]
            index = step % self.batches_per_epoch
            if index < len(epoch_batches):  # a short curriculum epoch has fewer
                last = index == len(epoch_batches) - 1
                yield step, epoch, epoch_batches[index], last, len(pool) == self.n_items


class _StepState:
    """The objective of each step, with the sliding window's per-item state beside it."""

    def __init__(self, objective, settings, n_items: int, device) -> None:
        self.objective, self.settings = objective, settings
        self.window_state = objectives.SlidingWindowState.initial(n_items, device)

    def objective_step(self, batch_items, nll, mask, wrong, sft_now: bool):
        current = objectives.OBJECTIVES["sft"] if sft_now else self.objective
        window, item_index = None, None
        if current.window:
            item_index = torch.tensor(batch_items, device=nll.device)
            window = self.window_state.select(item_index)
        taken = objectives.objective_step(
            current, self.settings, nll, mask, wrong=wrong, state=window
        )
        if current.window:
            self.window_state = self.window_state.update(item_index, taken.state)
        return taken


def _update(optimizer, params: list[torch.Tensor], loss: torch.Tensor, config) -> float:
    """One AdamW step with gradient clipping; returns the gradient norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip))
    optimizer.step()
    return grad_norm


class _Stopper:
    """When a run has plateaued, asked at each epoch's end.

    With ``anneal_patience`` (memlaw train's default), the learning rate is halved whenever
    the epoch's loss has not improved by 1% (relative) for that many epochs
    (``torch.optim.lr_scheduler.ReduceLROnPlateau``), down to ``lr × anneal_floor``; the run
    has plateaued when it fails to improve for that long at the floor and no epoch of that
    stretch certified more items than any before (:func:`certified_still_rising`: MemFT's plain
    loss stays flat while its last items cross; PB1000 rank 1, memft seeds 1 and 2 were stopped
    at 99 and 97 of 100 items and certified all 100 within 7 and 99 more epochs at the floor
    rate, ``bench/stop_rule_check.py``; seed 1 now certifies, seed 2's count rises too slowly
    for this wait and it still stops at 97). A constant rate keeps
    knocking memorized tokens back below p = 0.5 near the end (a rank-8 run on PB1000 reached
    98 of 100 items certified, then fell back to 69); annealing lets them settle. Otherwise,
    with ``plateau_window``, the windowed test of :func:`_plateaued`.
    """

    def __init__(self, config: TrainConfig, optimizer, base_loss: float) -> None:
        self.config = config
        self.ceiling = ceiling(base_loss, config.information_baseline)
        self.scheduler = None
        if config.anneal_patience:
            self.floor = config.lr * config.anneal_floor
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="min",
                factor=0.5,
                patience=config.anneal_patience,
                threshold=0.01,
                threshold_mode="rel",
                min_lr=self.floor,
            )

    def plateaued(self, log: list[StepLog]) -> bool:
        if self.scheduler is None:
            window = self.config.plateau_window
            return bool(window) and _plateaued(
                log, self.ceiling, window, self.config.plateau_tolerance
            )
        loss = _last_epoch_loss(log)
        at_floor = self.scheduler.get_last_lr()[0] <= self.floor * (1 + 1e-9)
        best = self.scheduler.best
        self.scheduler.step(loss)
        improved = self.scheduler.best != best  # it moves only on a 1% better loss
        # At the floor, a reduction it cannot make resets the count: no progress for too long.
        stalled = at_floor and not improved and self.scheduler.num_bad_epochs == 0
        if not stalled:
            return False
        # read from the log, so a resumed run decides as the uninterrupted one would
        counts = [certified for _, certified in epoch_summaries(log)]
        return not certified_still_rising(counts, self.config.anneal_patience + 1)


def certified_still_rising(counts: list[int], epochs: int) -> bool:
    """Whether one of the last ``epochs`` entries of ``counts`` (certified items per epoch)
    beats every entry before it: items still crossing p = 0.5 are progress even when the plain
    loss is flat, as under MemFT, which stops pushing tokens past its margin. The recipe's stop
    asks it over its patience (so a sweep's stored epochs tell which runs it would change).

    >>> certified_still_rising([5, 7, 6], epochs=2)
    True
    >>> certified_still_rising([7, 7, 6], epochs=2)
    False
    """
    recent, before = counts[-epochs:], counts[:-epochs]
    return max(recent, default=0) > max(before, default=-1)


def _last_epoch_loss(log: list[StepLog]) -> float:
    """The token-weighted mean loss of the latest epoch (its entry of :func:`epoch_summaries`),
    read from the end of the log so that asking every epoch stays linear in the run."""
    epoch = log[-1].epoch
    total, weight = 0.0, 0
    for entry in reversed(log):
        if entry.epoch != epoch:
            break
        total += entry.loss * max(entry.tokens, 1)
        weight += max(entry.tokens, 1)
    return total / weight


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
    more_certified = certified_still_rising([c for _, c in epochs[-2 * window :]], window)
    grew = before_loss - last_loss >= tolerance * max(ceiling - last_loss, 1e-12)
    return not (grew or more_certified)


def _snapshot(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


@torch.no_grad()
def _restore(params: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    for p, s in zip(params, saved, strict=False):
        p.copy_(s)


class _Certificates:
    """Which items are certified (every target token p > τ), each from its latest forward."""

    def __init__(self, model, encoded, pad: int, config: TrainConfig, full_batch: bool) -> None:
        self.model, self.encoded, self.pad, self.full_batch = model, encoded, pad, full_batch
        self.threshold = objectives.loss_threshold(config.tau)
        self.now = [False] * len(encoded)

    def update(self, batch_items: list[int], nll, mask):
        """The batch's tokens above the boundary, and its items' certificates."""
        above = mask & (nll.detach() < self.threshold)
        item_certified = (above | ~mask).all(dim=1).tolist()
        for item, ok in zip(batch_items, item_certified, strict=False):
            self.now[item] = ok
        return above, item_certified

    def all_certified(self, batch_items: list[int]) -> bool:
        """Every item looked certified in its latest forward; confirmed with the current
        weights unless that forward covered the whole set with these very weights."""
        if not all(self.now):
            return False
        if self.full_batch and len(batch_items) == len(self.encoded):
            return True
        scores = teacher_forced(self.model, self.encoded, self.pad)
        # what the pass found replaces the stale per-batch view, so a failed confirmation is
        # not repeated at every following step
        self.now = [all(x < self.threshold for x in score.nll) for score in scores]
        return all(self.now)


def _resolved(config: TrainConfig, sequences: int):
    """The objective, its settings, and the config as the run uses it (aliases resolved, the
    recipe's rate for the batch in use where no rate is given)."""
    objective, settings = objectives.resolve(
        config.method, objectives.Settings.of(config), sequences=sequences
    )
    batch = _Budget.of(config, sequences).batch_size
    lr = config.lr if config.lr is not None else default_lr(batch, sequences)
    return (
        objective,
        settings,
        replace(config, method=objective.name, train_tau=settings.train_tau, lr=lr),
    )


# Settings that only cap a run's length. Under a longer cap the same run goes through the very
# same states up to the shorter cap (the order of the batches, the annealing and the stops are
# decided epoch by epoch), unless its schedule is laid out over the cap: a curriculum.
CAP_FIELDS = ("epochs", "steps")


def extend_checkpoint(
    folder: str | Path,
    shorter: TrainConfig,
    longer: TrainConfig,
    lora: LoraSpec,
    encoded: list[EncodedItem],
    model,
) -> int:
    """Let the same run under a longer cap continue the checkpoint in ``folder``, saved by the
    run under ``shorter``: ``longer`` differs from it only in a larger cap (:data:`CAP_FIELDS`),
    so the checkpoint is also a state of the run under ``longer``, which then trains only the
    epochs past it. ``model``: the base model. Returns the checkpoint's epoch. Refused: configs
    that differ in more than their cap, a "longer" cap that is not longer, a curriculum (its
    schedule is laid out over the cap), a checkpoint of another run."""
    shared = [
        {k: v for k, v in asdict(c).items() if k not in CAP_FIELDS} for c in (shorter, longer)
    ]
    if shared[0] != shared[1]:
        changed = sorted(k for k in shared[0] if shared[0][k] != shared[1][k])
        raise MemlawError(f"a longer cap continues only the same run, but {changed} differ")
    short_cap = shorter.epochs if shorter.epochs is not None else shorter.steps
    long_cap = longer.epochs if shorter.epochs is not None else longer.steps
    if long_cap is None or short_cap is None or long_cap < short_cap:
        raise MemlawError(f"the new cap ({long_cap}) is not longer than the run's ({short_cap})")
    objective, _, short_resolved = _resolved(shorter, len(encoded))
    if objective.curriculum:
        raise MemlawError(
            f"{shorter.method} lays its curriculum over the whole cap: under a longer cap it is "
            "another run, which starts afresh"
        )
    long_resolved = _resolved(longer, len(encoded))[2]
    old, new = (run_fingerprint(c, lora, encoded, model) for c in (short_resolved, long_resolved))
    return restamp(folder, old, new)


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
