"""The training forward pass, two ways: the reference (the whole PEFT model) and the fast path.

With LoRA on layers ≥ k only, the frozen layers below k give the same hidden states at every
step, and only supervised positions need the LM head. The fast path therefore computes the
hidden states entering layer k once per memory set, and each step runs layers k… and the LM
head at supervised positions only. Both return per-token losses in the layout of
:func:`memlaw.objectives.token_nll`, so the objectives cannot tell them apart.

>>> from memlaw.models import load_model
>>> from memlaw.data import generate_phonebook, encode_items
>>> from memlaw.adapters import LoraSpec, attach_lora
>>> model, tokenizer = load_model("tiny")
>>> encoded = encode_items(generate_phonebook(3), tokenizer)
>>> peft_model = attach_lora(model, LoraSpec(rank=2, layers=(2,)))
>>> fast = FastForward(peft_model, encoded, tokenizer.pad_token_id, first_layer=2)
>>> reference = ReferenceForward(peft_model, encoded, tokenizer.pad_token_id)
>>> a, b = fast([0, 1, 2]).nll, reference([0, 1, 2]).nll
>>> bool(((a - b).abs() <= 1e-5 * b.abs().clamp(min=1)).all())
True
"""

from __future__ import annotations

import os
import tempfile
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from memlaw.adapters import decoder_layers
from memlaw.data import EncodedItem, collate
from memlaw.objectives import token_nll


@dataclass
class BatchLosses:
    """Per-token losses of a batch: ``nll`` and ``mask`` as from ``token_nll``; ``wrong`` marks
    supervised positions whose argmax is not the target token."""

    nll: torch.Tensor
    mask: torch.Tensor
    wrong: torch.Tensor


def attention_kernels(model) -> AbstractContextManager:
    """The attention kernel a training forward runs under: on the CPU in bfloat16 or float16,
    PyTorch's plain (math) attention. The fused CPU kernel's backward is ~18× slower in
    bfloat16 than in float32 (28% of a step on the default model, against 1.4%); the math
    version runs on the same fast low-precision matmuls as the rest of the step."""
    param = next(model.parameters())
    if param.device.type == "cpu" and param.dtype in (torch.bfloat16, torch.float16):
        return sdpa_kernel(SDPBackend.MATH)
    return nullcontext()


class ReferenceForward:
    """The whole model on the padded batch: the plain PEFT path, valid for every model."""

    name = "reference"

    def __init__(self, model, encoded: list[EncodedItem], pad_token_id: int):
        self.model, self.encoded, self.pad = model, encoded, pad_token_id
        self.device = next(model.parameters()).device

    def __call__(self, rows: list[int]) -> BatchLosses:
        batch = {
            k: v.to(self.device)
            for k, v in collate([self.encoded[i] for i in rows], self.pad).items()
        }
        with attention_kernels(self.model):
            logits = self.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        nll, mask = token_nll(logits, batch["labels"])
        wrong = (logits[:, :-1].argmax(-1) != batch["labels"][:, 1:]) & mask
        return BatchLosses(nll, mask, wrong)


DEFAULT_MEMORY_LIMIT = 2 * 1024**3  # bytes of cached hidden states kept in memory


def default_memory_limit() -> int:
    """``$MEMLAW_HIDDEN_CACHE_LIMIT`` bytes, else 2 GiB."""
    return int(os.environ.get("MEMLAW_HIDDEN_CACHE_LIMIT", DEFAULT_MEMORY_LIMIT))


class _StopForward(Exception):
    """Raised by the caching hook: nothing above layer k is needed while caching."""


class FastForward:
    """Cached frozen layers below ``first_layer``, LM head at supervised positions only.

    Valid for decoders whose body takes ``inputs_embeds`` and feeds them straight to the layer
    stack (Llama, Qwen, Mistral and most others); :func:`choose_forward` checks it on real data
    and falls back to the reference otherwise.
    """

    name = "fast"

    def __init__(
        self,
        model,
        encoded: list[EncodedItem],
        pad_token_id: int,
        first_layer: int,
        memory_limit: int | None = None,
    ):
        self.model, self.encoded, self.pad = model, encoded, pad_token_id
        self.first_layer = first_layer
        self.memory_limit = memory_limit if memory_limit is not None else default_memory_limit()
        self.on_disk = False
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.body = inner.get_decoder()
        self.lm_head = inner.get_output_embeddings()
        self.layers = decoder_layers(inner)
        self.device = next(model.parameters()).device
        self.cache = self._hidden_states_entering(first_layer)

    @torch.no_grad()
    def _hidden_states_entering(self, k: int, batch_size: int = 32) -> list[torch.Tensor]:
        """The input of layer ``k`` for every item (unpadded), computed once."""
        captured: list[torch.Tensor] = []

        def grab(module, args, kwargs):
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _StopForward

        handle = self.layers[k].register_forward_pre_hook(grab, with_kwargs=True)
        buffer = self._buffer(sum(len(item.input_ids) for item in self.encoded))
        states, offset = [], 0
        try:
            for start in range(0, len(self.encoded), batch_size):
                chunk = self.encoded[start : start + batch_size]
                batch = collate(chunk, self.pad)
                captured.clear()
                try:
                    with attention_kernels(self.model):  # the kernel the reference runs
                        self.body(
                            input_ids=batch["input_ids"].to(self.device),
                            attention_mask=batch["attention_mask"].to(self.device),
                            use_cache=False,
                        )
                except _StopForward:
                    pass
                for row, item in enumerate(chunk):
                    length = len(item.input_ids)
                    state = buffer[offset : offset + length]
                    state.copy_(captured[0][row, :length])
                    states.append(state)
                    offset += length
        finally:
            handle.remove()
        return states

    def _buffer(self, tokens: int) -> torch.Tensor:
        """One (tokens × hidden) buffer for the whole set: in memory up to ``memory_limit``
        bytes, beyond it in a memory-mapped file (pages in and out as steps need them), so a
        million target tokens still train on a 24 GiB machine."""
        config = self.body.config
        dtype = next(self.model.parameters()).dtype
        size = tokens * config.hidden_size
        if size * dtype.itemsize <= self.memory_limit:
            return torch.empty((tokens, config.hidden_size), dtype=dtype, device=self.device)
        from memlaw.models import cache_dir

        folder = cache_dir() / "hidden-states"
        folder.mkdir(parents=True, exist_ok=True)
        handle, path = tempfile.mkstemp(prefix="states-", suffix=".bin", dir=folder)
        os.close(handle)
        try:
            flat = torch.from_file(path, shared=True, size=size, dtype=dtype)
        finally:
            os.unlink(path)  # the mapping outlives the name: nothing is left behind on exit
        self.on_disk = True
        return flat.view(tokens, config.hidden_size)

    @contextmanager
    def _upper_layers(self):
        """Temporarily make the body's layer stack start at ``first_layer``."""
        full = self.body.layers
        self.body.layers = nn.ModuleList(list(full)[self.first_layer :])
        try:
            yield
        finally:
            self.body.layers = full

    def __call__(self, rows: list[int]) -> BatchLosses:
        items = [self.encoded[i] for i in rows]
        width = max(len(item.input_ids) for item in items)
        hidden = torch.zeros(
            (len(rows), width, self.cache[rows[0]].shape[-1]),
            dtype=self.cache[rows[0]].dtype,
            device=self.device,
        )
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long, device=self.device)
        row_index, column_index, targets = [], [], []
        for row, (i, item) in enumerate(zip(rows, items, strict=True)):
            length = len(item.input_ids)
            hidden[row, :length] = self.cache[i]
            attention_mask[row, :length] = 1
            start = len(item.prompt_ids)
            # logits at column t predict the token at t + 1 (token_nll's layout)
            row_index += [row] * (length - start)
            column_index += range(start - 1, length - 1)
            targets += item.target_ids
        with self._upper_layers(), attention_kernels(self.model):
            top = self.body(inputs_embeds=hidden, attention_mask=attention_mask, use_cache=False)
        rows_t = torch.tensor(row_index, device=self.device)
        cols_t = torch.tensor(column_index, device=self.device)
        targets_t = torch.tensor(targets, device=self.device)
        logits = self.lm_head(top.last_hidden_state[rows_t, cols_t]).float()
        flat = F.cross_entropy(logits, targets_t, reduction="none")
        shape = (len(rows), width - 1)
        nll = torch.zeros(shape, device=self.device, dtype=flat.dtype).index_put(
            (rows_t, cols_t), flat
        )
        mask = torch.zeros(shape, device=self.device, dtype=torch.bool)
        mask[rows_t, cols_t] = True
        wrong = torch.zeros_like(mask)
        wrong[rows_t, cols_t] = logits.detach().argmax(-1) != targets_t
        return BatchLosses(nll, mask, wrong)


@torch.no_grad()
def base_target_loss(model, forward: ReferenceForward | FastForward, batch_size: int = 32) -> float:
    """Mean per-token cross-entropy of every target token under the base model (the adapter
    switched off, eval mode), read through the training ``forward``. On the fast path the
    frozen layers below the adapter already ran once to fill its cache, so the base-loss pass
    shares that work and costs only the layers above (a third of a pass at layer 20 of 30).

    >>> from memlaw.models import load_model
    >>> from memlaw.data import generate_phonebook, encode_items
    >>> from memlaw.adapters import LoraSpec, attach_lora
    >>> from memlaw.probe import mean_target_loss, teacher_forced
    >>> model, tokenizer = load_model("tiny")
    >>> encoded = encode_items(generate_phonebook(3), tokenizer)
    >>> plain = mean_target_loss(teacher_forced(model, encoded, tokenizer.pad_token_id))
    >>> peft_model = attach_lora(model, LoraSpec(rank=2, layers=(2,)))
    >>> fast = FastForward(peft_model, encoded, tokenizer.pad_token_id, first_layer=2)
    >>> abs(base_target_loss(peft_model, fast) - plain) < 1e-5 * plain
    True
    """
    rows = len(forward.encoded)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter():
            for start in range(0, rows, batch_size):
                losses = forward(list(range(start, min(start + batch_size, rows))))
                total += float(losses.nll[losses.mask].double().sum())
                count += int(losses.mask.sum())
    finally:
        model.train(was_training)
    return total / count


def choose_forward(
    model, encoded: list[EncodedItem], pad_token_id: int, first_layer: int, *, fast: bool = True
) -> tuple[ReferenceForward | FastForward, str]:
    """The fast path where it gives the reference's losses on this data, else the reference.

    Returns the forward and a one-line reason for the choice (kept in the run record).
    """
    reference = ReferenceForward(model, encoded, pad_token_id)
    if not fast:
        return reference, "reference path requested"
    try:
        candidate = FastForward(model, encoded, pad_token_id, first_layer)
        probe_rows = list(range(min(len(encoded), 8)))
        with torch.no_grad():
            expected = reference(probe_rows)
            want, got = expected.nll, candidate(probe_rows).nll
    except Exception as exc:  # any model whose body does not fit the fast path's assumptions
        return reference, f"fast path unavailable ({type(exc).__name__}: {str(exc)[:80]})"
    exact = want.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32
    tolerance = 1e-4 if exact else 2e-2
    if torch.allclose(got, want, rtol=tolerance, atol=tolerance * 1e-2):
        return candidate, f"fast path from layer {first_layer}"
    worst = float(((got - want).abs() / want.abs().clamp(min=1e-6)).max())
    if not exact:
        # In bfloat16 the reference itself moves by up to ~0.15 nats when only the batch's
        # shape changes (rounding through every layer): the fast path only has to stay within
        # that noise, measured here on the same items run one at a time.
        deviation, noise = _low_precision_deviations(reference, probe_rows, expected, got)
        if deviation <= 2 * noise:
            return candidate, (
                f"fast path from layer {first_layer} (within the reference's own "
                f"low-precision noise: {deviation:.3f} nats against {noise:.3f})"
            )
    return reference, f"fast path disagrees with the reference (max relative error {worst:.2e})"


@torch.no_grad()
def _low_precision_deviations(
    reference: ReferenceForward, rows: list[int], expected: BatchLosses, got: torch.Tensor
) -> tuple[float, float]:
    """The fast path's largest deviation from the reference (nats per token) and the
    reference's own, between the batch and each item alone."""
    deviation = float((got - expected.nll)[expected.mask].abs().max())
    noise = 0.0
    for row, item in enumerate(rows):
        alone = reference([item])
        width = alone.nll.shape[1]
        differences = (alone.nll[0] - expected.nll[row, :width])[alone.mask[0]].abs()
        noise = max(noise, float(differences.max()))
    return deviation, noise
