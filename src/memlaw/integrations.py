"""MemFT and the memory audit inside a user's own ``transformers.Trainer`` or TRL ``SFTTrainer``
(docs/integrations.md): :func:`memft_loss_func` as a ``compute_loss_func``; :class:`MemFTTrainer`,
or :class:`MemFTMixin` / :func:`with_memft` for any ``Trainer`` subclass, for every method of
memlaw's loop with MemFT statistics in the logs; :class:`MemoryAuditCallback`, which measures
the memory set every N steps and logs it through the Trainer. The numbers match memlaw's own
loop (:func:`memlaw.train.train`) step for step on the same data, adapter and optimizer
settings; ``tests/test_integrations.py`` checks it.

>>> from memlaw.models import load_model
>>> from memlaw.data import generate_phonebook, encode_items
>>> model, tokenizer = load_model("tiny")
>>> items = encode_items(generate_phonebook(2), tokenizer)
>>> batch = MemoryCollator(tokenizer.pad_token_id)(memory_dataset(items))
>>> sorted(batch)
['attention_mask', 'input_ids', 'labels', 'memlaw_index']
>>> outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
>>> loss = memft_loss_func()(outputs, batch["labels"], num_items_in_batch=None)
>>> round(loss.item(), 3) > 0.693  # only tokens with p < 0.5 count, so their mean exceeds ln 2
True
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from memlaw.data import IGNORE_INDEX, EncodedItem, collate, ids_and_labels
from memlaw.errors import MemlawError
from memlaw.objectives import (
    DEFAULT_TAU,
    OBJECTIVES,
    Settings,
    SlidingWindowState,
    check_settings,
    curriculum_items,
    default_boundaries,
    loss_threshold,
    objective_step,
    resolve,
    sft_loss,
    token_nll,
)
from memlaw.probe import mean_target_loss, teacher_forced

# The batch column that carries each sequence's index into the memory set (MemFT-SW's state
# and curriculum).
INDEX_COLUMN = "memlaw_index"


# --- data ----------------------------------------------------------------------------------


def memory_dataset(encoded: Sequence[EncodedItem]) -> list[dict[str, Any]]:
    """Trainer rows from encoded items: ``input_ids``, answer-only ``labels`` and the item index.

    A plain list works as a ``train_dataset``; wrap it in ``datasets.Dataset.from_list`` if you
    prefer.

    >>> memory_dataset([EncodedItem((5, 6), (7,))])
    [{'input_ids': [5, 6, 7], 'labels': [-100, -100, 7], 'memlaw_index': 0}]
    """
    rows = []
    for index, item in enumerate(encoded):
        input_ids, labels = ids_and_labels(item)
        rows.append({"input_ids": input_ids, "labels": labels, INDEX_COLUMN: index})
    return rows


class MemoryCollator:
    """A Trainer's ``data_collator``: :func:`memlaw.data.collate` (right padding, ``labels``
    padded by ``IGNORE_INDEX``), with the item index column passed through when present.

    >>> batch = MemoryCollator(0)([{"input_ids": [5, 6, 7], "labels": [-100, -100, 7]},
    ...                            {"input_ids": [5, 8], "labels": [-100, 8]}])
    >>> batch["labels"].tolist(), batch["attention_mask"].tolist()
    ([[-100, -100, 7], [-100, 8, -100]], [[1, 1, 1], [1, 1, 0]])
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = collate(features, self.pad_token_id)
        if all(INDEX_COLUMN in f for f in features):
            batch[INDEX_COLUMN] = torch.tensor([int(f[INDEX_COLUMN]) for f in features])
        return batch


# --- the loss ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemFTConfig:
    """MemFT inside a Trainer: the same methods and settings as
    :class:`memlaw.train.TrainConfig` (see :class:`memlaw.objectives.Settings`).

    ``method`` is any name of :data:`memlaw.objectives.METHODS`; ``sft`` gives the plain mean
    with the same per-step statistics, for A/B runs. ``memft-sw-window`` and
    ``memft-sw-curriculum`` need the item index column; the curriculum grows its prefix of one
    random item order (seeded by the Trainer's ``seed``) at the epochs
    ``curriculum_boundaries`` (default: equal fifths of the Trainer's epochs).
    """

    method: str = "memft-ot"
    tau: float = DEFAULT_TAU
    train_tau: float | None = None
    fallback: str = "skip"
    position_decay: float | None = None
    curriculum_boundaries: tuple[int, ...] | None = None

    def validate(self) -> None:
        check_settings(self.method, Settings.of(self))

    @property
    def training_tau(self) -> float:
        return Settings.of(self).training_tau


@dataclass
class BatchStats:
    """What one (micro-)batch's MemFT loss saw, measured on its forward pass."""

    sft_loss: float  # plain mean cross-entropy of the batch's target tokens
    tokens: int  # supervised target tokens
    active_tokens: int  # tokens MemFT trains: p < train_tau
    above_tokens: int  # tokens already above the boundary: p > tau
    skipped: bool  # no update: nothing left to train (or no item of the batch in the curriculum)


def memft_objective(
    config: MemFTConfig, nll: torch.Tensor, mask: torch.Tensor, **context: Any
) -> tuple[torch.Tensor, SlidingWindowState | None, BatchStats]:
    """The objective of one batch, as memlaw's loop computes it
    (:func:`memlaw.objectives.objective_step`), and what it saw.

    ``context``: ``wrong`` (argmax ≠ target) and ``state`` (of these rows), needed by
    ``memft-sw-window``, which returns the advanced state; ``active_total``, the count of
    trainable tokens that decides a skip (multi-process: the count of every rank).

    >>> nll = torch.tensor([[0.1, 2.0, 0.2]])
    >>> loss, _, stats = memft_objective(MemFTConfig(), nll, nll > 0)
    >>> loss.item(), stats.active_tokens, stats.above_tokens, stats.skipped
    (2.0, 1, 2, False)
    """
    objective, settings = resolve(config.method, Settings.of(config))
    step = objective_step(objective, settings, nll, mask, **context)
    stats = BatchStats(
        sft_loss=float(sft_loss(nll, mask).detach()),
        tokens=int(mask.sum()),
        active_tokens=step.active,
        above_tokens=int((mask & (nll.detach() < loss_threshold(settings.tau))).sum()),
        skipped=step.skipped,
    )
    return step.loss, step.state, stats


def no_update_loss(device: torch.device | str = "cpu") -> torch.Tensor:
    """A zero loss whose backward reaches no model parameter, so every gradient stays ``None``
    and ``torch.optim.AdamW`` skips the step entirely (a zero *gradient* would still move the
    weights through Adam's momentum). It is not a leaf, so the Trainer may scale it in place.

    >>> loss = no_update_loss()
    >>> loss.item(), loss.requires_grad, loss.is_leaf
    (0.0, True, False)
    """
    return torch.zeros((), device=device, requires_grad=True).clone()


def _token_share(mask: torch.Tensor, num_items_in_batch) -> torch.Tensor | float:
    """This micro-batch's share of the supervised tokens of the whole optimizer step.

    The Trainer sums the losses of its gradient-accumulation micro-batches; weighting each
    micro-batch's MemFT mean by its token share gives a token-weighted average. With one
    micro-batch the share is exactly 1, so the loss is memlaw's own.
    """
    if num_items_in_batch is None:
        return 1.0
    total = torch.as_tensor(num_items_in_batch, device=mask.device)
    if total.numel() != 1 or float(total) <= 0:
        return 1.0
    return mask.sum() / total.reshape(())


def _state_to(state: SlidingWindowState, device) -> SlidingWindowState:
    # The state lives on the CPU between steps; the window arithmetic runs beside the logits.
    return SlidingWindowState(
        state.anchor.to(device), state.stalled.to(device), state.expansion.to(device)
    )


def _logits(outputs) -> torch.Tensor:
    if hasattr(outputs, "logits"):
        return outputs.logits
    if isinstance(outputs, Mapping):
        return outputs["logits"]
    return outputs[0]


def memft_loss_func(
    tau: float = DEFAULT_TAU,
    train_tau: float | None = None,
    fallback: str = "skip",
    position_decay: float | None = None,
    *,
    method: str = "memft-ot",
) -> Callable[..., torch.Tensor]:
    """MemFT as a ``compute_loss_func`` for ``transformers.Trainer`` (``outputs, labels,
    num_items_in_batch`` → loss): by default MemFT-OT, the mean float32 loss over target tokens
    with p < τ.

    ``labels`` follow the Hugging Face convention (unshifted, ``-100`` where unsupervised). When
    no token is below the boundary the returned loss reaches no parameter, so the step makes no
    update. ``method`` is any method that needs neither a per-sequence state nor the epoch (a
    ``compute_loss_func`` sees neither); for those, and for per-step MemFT statistics, use
    :class:`MemFTTrainer`. The skip decision is local to each process: under multi-process
    training use :class:`MemFTTrainer`, which takes it over all ranks.

    >>> import torch
    >>> logits = torch.tensor([[[0.0, 5.0], [5.0, 0.0], [0.0, 0.0]]])
    >>> labels = torch.tensor([[-100, 1, 1]])  # token 1: p ≈ 0.993 at position 1, 0.007 at 2
    >>> loss_func = memft_loss_func()
    >>> round(loss_func({"logits": logits}, labels, num_items_in_batch=2).item(), 4)
    5.0067
    """
    config = MemFTConfig(method, tau, train_tau, fallback, position_decay)
    config.validate()  # then refuse what a loss function cannot see
    entry = OBJECTIVES[method]
    if entry.runs_alone is not None:
        raise MemlawError(f"{method} needs the item index and the epoch: use MemFTTrainer")
    objective, _ = resolve(method, Settings.of(config))
    if objective.window or objective.curriculum:
        need = "a state per sequence" if objective.window else "the epoch"
        raise MemlawError(
            f"{method} needs {need}, which a compute_loss_func never sees: use MemFTTrainer"
        )

    def loss_func(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        if labels is None:
            raise MemlawError("MemFT needs labels: the batch has no 'labels' column")
        logits = _logits(outputs)
        nll, mask = token_nll(logits, labels)
        objective, _, stats = memft_objective(config, nll, mask)
        if stats.skipped:
            return no_update_loss(logits.device)
        return objective * _token_share(mask, num_items_in_batch)

    return loss_func


# --- the trainer ---------------------------------------------------------------------------


class MemFTMixin:
    """MemFT for any ``transformers.Trainer`` subclass: put it first in the bases.

    ``class MemFTSFTTrainer(MemFTMixin, SFTTrainer)`` (or ``with_memft(SFTTrainer)``) takes one
    extra keyword, ``memft=MemFTConfig(...)``, and trains with any method of memlaw's loop. The
    loss follows memlaw's loop: MemFT-OT skips the update when no token is below the boundary
    (every gradient stays ``None``, so AdamW does not move); ``memft-sw-window`` keeps its
    anchor/patience state per item and ``memft-sw-curriculum`` trains only the items of its
    prefix at the Trainer's epoch, both keyed by the batch column :data:`INDEX_COLUMN`
    (stripped before the forward pass). An alias is resolved when the trainer is built
    (``memft-sw`` by the size of the train dataset), so ``trainer.memft`` names what runs.

    Logs gain ``memft/sft_loss`` (plain mean), ``memft/active_tokens``, ``memft/above_share``
    and ``memft/skipped`` (skipped batches since the last log); ``loss`` is the objective
    itself, 0 on a skipped step. In evaluation the loss is the plain mean of the target tokens.
    Any :class:`MemoryAuditCallback` in the trainer's callbacks is bound to it automatically.
    """

    # The loss is normalized over the whole optimizer step here (see ``_token_share``).
    loss_is_scaled_for_ga = True

    def __init__(self, *args, memft: MemFTConfig | None = None, **kwargs):
        memft = memft or MemFTConfig()
        memft.validate()
        if kwargs.get("compute_loss_func") is not None:
            raise MemlawError("MemFTMixin computes the loss itself: drop compute_loss_func")
        self._memft_window = SlidingWindowState.initial(0)
        self._memft_pending: list[BatchStats] = []
        self._curriculum_order: list[int] | None = None
        super().__init__(*args, **kwargs)
        self.memft = self._resolve_memft(memft)
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, MemoryAuditCallback) and callback.trainer is None:
                callback.bind(self)

    def _resolve_memft(self, memft: MemFTConfig) -> MemFTConfig:
        sequences = None
        if OBJECTIVES[memft.method].runs_alone is not None:
            if not hasattr(self.train_dataset, "__len__"):
                raise MemlawError(
                    f"{memft.method} picks its variant by the number of items, and this train "
                    "dataset has no length: name memft-sw-window or memft-sw-curriculum"
                )
            sequences = len(self.train_dataset)
        objective, settings = resolve(memft.method, Settings.of(memft), sequences)
        return replace(memft, method=objective.name, train_tau=settings.train_tau)

    def add_callback(self, callback) -> None:
        super().add_callback(callback)
        if isinstance(callback, MemoryAuditCallback) and callback.trainer is None:
            callback.bind(self)

    def _set_signature_columns_if_needed(self) -> None:
        # Keep the item index through the Trainer's column filter; compute_loss strips it.
        super()._set_signature_columns_if_needed()
        if INDEX_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, INDEX_COLUMN]

    def compute_loss(
        self,
        model,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch=None,
    ):
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        index = inputs.pop(INDEX_COLUMN, None)
        if labels is None:
            raise MemlawError("MemFT needs labels: the batch has no 'labels' column")
        if "shift_labels" in inputs:
            raise MemlawError("MemFT expects unshifted 'labels'; this batch carries 'shift_labels'")
        outputs = model(**inputs)
        logits = _logits(outputs)
        nll, mask = token_nll(logits, labels)
        if not model.training:  # evaluation: the plain mean target loss (the law's L1)
            loss = sft_loss(nll, mask)
            return (loss, outputs) if return_outputs else loss

        objective, stats = self._memft_batch(logits, labels, nll, mask, index)
        self._memft_pending.append(stats)
        if stats.skipped:
            loss = no_update_loss(logits.device)
        else:
            share = (
                _token_share(mask, num_items_in_batch)
                if num_items_in_batch is not None
                else 1.0 / max(getattr(self, "current_gradient_accumulation_steps", 1), 1)
            )
            loss = objective * share
            if (
                num_items_in_batch is not None
                and self.args.average_tokens_across_devices
                and self.accelerator.num_processes > 1
            ):
                loss = loss * self.accelerator.num_processes  # the data-parallel mean divides by it
        return (loss, outputs) if return_outputs else loss

    def _memft_batch(self, logits, labels, nll, mask, index) -> tuple[torch.Tensor, BatchStats]:
        """The batch's objective and statistics, with the window's state or the curriculum's
        items (both keyed by the item index)."""
        entry = OBJECTIVES[self.memft.method]
        items = None
        if entry.window or entry.curriculum:
            if index is None:
                raise MemlawError(
                    f"{entry.name} keeps track of each item: the batch needs the item index "
                    f"column '{INDEX_COLUMN}' (memory_dataset adds it; set it in your own rows)"
                )
            items = index.detach().to("cpu", torch.long).reshape(-1)
        if entry.curriculum:
            mask = mask & self._in_curriculum(items).to(mask.device).unsqueeze(1)
        wrong, state = None, None
        if entry.window:
            self._grow_window(int(items.max()) + 1)
            wrong = (logits[:, :-1].argmax(-1) != labels[:, 1:]) & mask
            state = _state_to(self._memft_window.select(items), logits.device)
        active = (mask & (nll.detach() > loss_threshold(self.memft.training_tau))).sum()
        objective, state, stats = memft_objective(
            self.memft,
            nll,
            mask,
            wrong=wrong,
            state=state,
            active_total=self._over_processes(active) if entry.skips else None,
        )
        if entry.window:
            self._memft_window = self._memft_window.update(items, _state_to(state, "cpu"))
        if entry.curriculum and self._over_processes(mask.sum()) == 0:
            stats = replace(stats, skipped=True)  # no item of the batch is in training yet
        return objective, stats

    def _over_processes(self, count: torch.Tensor) -> int:
        """A count summed over every process, so that all ranks skip together or not at all."""
        if self.accelerator.num_processes <= 1:
            return int(count)
        return int(self.accelerator.reduce(count, reduction="sum"))

    def _in_curriculum(self, items: torch.Tensor) -> torch.Tensor:
        """Which items of the batch the curriculum trains at the Trainer's current epoch."""
        count = len(self.train_dataset)
        if int(items.max()) >= count:
            raise MemlawError(f"item index {int(items.max())} is beyond the {count} train items")
        if self._curriculum_order is None:
            self._curriculum_order = random.Random(self.args.seed).sample(range(count), count)
        boundaries = self.memft.curriculum_boundaries or default_boundaries(
            math.ceil(self.state.num_train_epochs)
        )
        epoch = int(self.state.epoch or 0)
        training = set(curriculum_items(self._curriculum_order, epoch, boundaries))
        return torch.tensor([int(i) in training for i in items])

    def _grow_window(self, size: int) -> None:
        current = len(self._memft_window.anchor)
        if size > current:
            extra = SlidingWindowState.initial(size - current)
            self._memft_window = SlidingWindowState(
                torch.cat([self._memft_window.anchor, extra.anchor]),
                torch.cat([self._memft_window.stalled, extra.stalled]),
                torch.cat([self._memft_window.expansion, extra.expansion]),
            )

    def memft_summary(self) -> dict[str, float]:
        """The MemFT statistics of the batches since the last log (empty when none)."""
        pending = self._memft_pending
        if not pending:
            return {}
        tokens = sum(s.tokens for s in pending)
        return {
            "memft/sft_loss": sum(s.sft_loss for s in pending) / len(pending),
            "memft/active_tokens": sum(s.active_tokens for s in pending) / len(pending),
            "memft/above_share": sum(s.above_tokens for s in pending) / max(tokens, 1),
            "memft/skipped": float(sum(s.skipped for s in pending)),
        }

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._memft_pending:  # a training log: add what MemFT saw
            logs.update(self.memft_summary())
            self._memft_pending = []
        super().log(logs, start_time)


class MemFTTrainer(MemFTMixin, Trainer):
    """``transformers.Trainer`` trained with MemFT (see :class:`MemFTMixin`).

    >>> import tempfile
    >>> from transformers import PrinterCallback, TrainingArguments
    >>> from memlaw.models import load_model
    >>> from memlaw.data import generate_phonebook, encode_items
    >>> from memlaw.adapters import LoraSpec, attach_lora
    >>> model, tokenizer = load_model("tiny")
    >>> items = encode_items(generate_phonebook(2), tokenizer)
    >>> args = TrainingArguments(tempfile.mkdtemp(), max_steps=2, per_device_train_batch_size=2,
    ...     learning_rate=1e-2, logging_steps=1, report_to="none", save_strategy="no",
    ...     use_cpu=True, disable_tqdm=True)
    >>> trainer = MemFTTrainer(model=attach_lora(model, LoraSpec(rank=4)), args=args,
    ...     train_dataset=memory_dataset(items),
    ...     data_collator=MemoryCollator(tokenizer.pad_token_id),
    ...     memft=MemFTConfig(method="memft"), callbacks=[MemoryAuditCallback(items, every=1)])
    >>> trainer.memft.method, trainer.memft.train_tau  # memlaw's recommended MemFT, resolved
    ('memft-ot', 0.8)
    >>> trainer.remove_callback(PrinterCallback)  # keep the doctest quiet
    >>> _ = trainer.train()
    >>> steps = [e for e in trainer.state.log_history if "loss" in e]
    >>> sorted(k for k in steps[0] if k.startswith("memft/"))
    ['memft/above_share', 'memft/active_tokens', 'memft/sft_loss', 'memft/skipped']
    >>> [e["step"] for e in trainer.state.log_history if "memlaw/certified_share" in e]
    [1, 2]
    """


def with_memft(trainer_class: type) -> type:
    """A subclass of ``trainer_class`` (e.g. TRL's ``SFTTrainer``) that trains with MemFT.

    >>> with_memft(Trainer).__mro__[1] is MemFTMixin
    True
    """
    if not (isinstance(trainer_class, type) and issubclass(trainer_class, Trainer)):
        raise MemlawError(f"with_memft needs a transformers.Trainer subclass, got {trainer_class}")
    return type(f"MemFT{trainer_class.__name__}", (MemFTMixin, trainer_class), {})


# --- the audit -----------------------------------------------------------------------------


def _memory_rows(memory) -> list[EncodedItem | Mapping[str, Any]]:
    """The memory set as a list, each item checked: an ``EncodedItem`` or a row with
    ``input_ids`` and ``labels`` of one length and at least one supervised target token."""
    rows = list(memory)
    for number, item in enumerate(rows, start=1):
        is_row = isinstance(item, Mapping) and "input_ids" in item and "labels" in item
        if not (isinstance(item, EncodedItem) or is_row):
            raise MemlawError(
                f"memory item {number}: expected an EncodedItem or a row with input_ids and labels"
            )
        try:
            _, labels = ids_and_labels(item)
        except MemlawError as exc:
            raise MemlawError(f"memory item {number}: {exc}") from None
        if all(label == IGNORE_INDEX for label in labels[1:]):
            raise MemlawError(f"memory item {number}: no supervised target token")
    if not rows:
        raise MemlawError("the memory set is empty: give at least one item")
    return rows


def memory_metrics(
    model,
    memory: Iterable[EncodedItem] | Iterable[Mapping[str, Any]],
    *,
    tau: float = DEFAULT_TAU,
    pad_token_id: int | None = None,
    batch_size: int = 32,
    prefix: str = "memlaw/",
) -> dict[str, float]:
    """What the model holds of a memory set now, teacher-forced in eval mode (mode restored),
    from :func:`memlaw.probe.teacher_forced`:

    - ``above_share``: share of supervised tokens already above the boundary (p > τ): under SFT,
      the share of the budget spent on tokens greedy decoding already reproduces;
    - ``certified_share``: share of items whose every target token has p > τ;
    - ``stubborn_tokens``: items with a first wrong token: the first target position whose
      argmax is not the target, which is where greedy decoding first goes wrong (the same count
      as ``len(memlaw.probe.probe(...).stubborn)``, without generating);
    - ``target_loss``: mean cross-entropy over every target token (nats).

    >>> from memlaw.models import load_model
    >>> from memlaw.data import generate_phonebook, encode_items
    >>> model, tokenizer = load_model("tiny")
    >>> metrics = memory_metrics(model, encode_items(generate_phonebook(2), tokenizer))
    >>> metrics["memlaw/certified_share"], metrics["memlaw/stubborn_tokens"]
    (0.0, 2.0)
    """
    rows = _memory_rows(memory)
    threshold = loss_threshold(tau)
    if pad_token_id is None:
        pad_token_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
    scores = teacher_forced(model, rows, pad_token_id, batch_size)
    losses = [x for s in scores for x in s.nll]
    return {
        f"{prefix}above_share": sum(x < threshold for x in losses) / len(losses),
        f"{prefix}certified_share": sum(all(x < threshold for x in s.nll) for s in scores)
        / len(scores),
        f"{prefix}stubborn_tokens": float(sum(not all(s.argmax_ok) for s in scores)),
        f"{prefix}target_loss": mean_target_loss(scores),
    }


class MemoryAuditCallback(TrainerCallback):
    """Measure the memory set during training and log it like the Trainer's own metrics.

    ``memory`` is a list of :class:`~memlaw.data.EncodedItem` or rows with ``input_ids`` and
    ``labels`` (e.g. a tokenized dataset). It is audited every ``every`` optimizer steps
    (default: whenever the Trainer logs) and after the last step, with the current weights
    (:func:`memory_metrics`: eval mode and no gradients, the training mode restored).

    The metrics go through the Trainer's logging: a ``log_history`` entry and an ``on_log`` event
    that every callback receives, TensorBoard, W&B and the other reporters included, whatever
    their place in the list. That needs the trainer: ``MemoryAuditCallback(items).attach(trainer)``
    (a :class:`MemFTMixin` trainer binds the ones passed in ``callbacks=`` itself, as in
    :class:`MemFTTrainer`'s example). With a plain ``Trainer``::

        trainer = Trainer(model=model, args=args, train_dataset=memory_dataset(items),
                          data_collator=MemoryCollator(tokenizer.pad_token_id))
        MemoryAuditCallback(items, every=1).attach(trainer)
        trainer.train()  # each audit: an entry with memlaw/above_share, memlaw/certified_share…
    """

    def __init__(
        self,
        memory: Iterable[EncodedItem] | Iterable[Mapping[str, Any]],
        *,
        every: int | None = None,
        tau: float = DEFAULT_TAU,
        pad_token_id: int | None = None,
        batch_size: int = 32,
        prefix: str = "memlaw/",
    ):
        if every is not None and every <= 0:
            raise MemlawError(f"audit interval must be a positive number of steps, got {every}")
        loss_threshold(tau)  # validates tau
        self.memory = list(memory)
        _memory_rows(self.memory)  # fail at construction, not mid-training
        self.every, self.tau, self.pad_token_id = every, tau, pad_token_id
        self.batch_size, self.prefix = batch_size, prefix
        self.trainer: Trainer | None = None
        self.history: list[dict[str, float]] = []
        self._last_step = -1

    def bind(self, trainer: Trainer) -> MemoryAuditCallback:
        """Log through ``trainer`` (without adding the callback to it)."""
        self.trainer = trainer
        return self

    def attach(self, trainer: Trainer) -> MemoryAuditCallback:
        """Bind to ``trainer`` and add the callback to it; returns the callback."""
        self.bind(trainer)
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer is None:
            raise MemlawError(
                "MemoryAuditCallback logs through its trainer: add it with "
                "MemoryAuditCallback(memory).attach(trainer) instead of callbacks=[...]"
            )

    def on_step_end(self, args, state, control, model=None, **kwargs):
        due = (state.global_step % self.every == 0) if self.every else control.should_log
        last = control.should_training_stop or state.global_step >= state.max_steps
        if due or last:
            self._audit(args, state, control, model)
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        # Normally done at the last step; this catches a stop decided after our on_step_end.
        if self._last_step != state.global_step:
            self._audit(args, state, control, model)
        return control

    def _audit(self, args, state, control, model) -> None:
        model = model if model is not None else self.trainer.model
        metrics = memory_metrics(
            model,
            self.memory,
            tau=self.tau,
            pad_token_id=self.pad_token_id,
            batch_size=self.batch_size,
            prefix=self.prefix,
        )
        self._last_step = state.global_step
        self.history.append({**metrics, "step": state.global_step})
        # Trainer.log itself (not a subclass's override, which may flush its own per-step
        # metrics into this entry); its on_log clears should_log, which would cancel the
        # Trainer's own log due at this very step, so keep the flag.
        should_log = control.should_log
        Trainer.log(self.trainer, dict(metrics))
        control.should_log = should_log
        self.trainer.control.should_log = should_log


__all__ = [
    "INDEX_COLUMN",
    "BatchStats",
    "MemFTConfig",
    "MemFTMixin",
    "MemFTTrainer",
    "MemoryAuditCallback",
    "MemoryCollator",
    "memft_loss_func",
    "memft_objective",
    "memory_dataset",
    "memory_metrics",
    "no_update_loss",
    "with_memft",
]
