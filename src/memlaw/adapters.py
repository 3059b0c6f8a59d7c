"""LoRA adapters on PEFT: rank, adapted layers, modules, and the effective parameters N_eff.

>>> from memlaw.models import load_model
>>> model, _ = load_model("tiny")
>>> spec = LoraSpec(rank=4, layers=(2,), modules="mlp")
>>> peft_model = attach_lora(model, spec)
>>> spec.n_eff(model), trainable_parameters(peft_model)
(4, 2304)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from memlaw.errors import MemlawError

MODULE_GROUPS = {
    "mlp": ("gate_proj", "up_proj", "down_proj"),
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
}
MODULE_GROUPS["all"] = MODULE_GROUPS["attn"] + MODULE_GROUPS["mlp"]


@dataclass(frozen=True)
class LoraSpec:
    """Where and how big the LoRA adapter is.

    ``layers`` are decoder-layer indices (empty: one layer at about two thirds of the depth);
    ``modules`` is ``mlp``, ``attn``, ``all`` or comma-separated module names within a layer
    (e.g. ``"up_proj,down_proj"``). ``alpha`` defaults to the rank (scaling 1).
    """

    rank: int = 1
    alpha: float | None = None
    dropout: float = 0.0
    layers: tuple[int, ...] = field(default_factory=tuple)
    modules: str = "mlp"

    def resolved_layers(self, model: nn.Module) -> tuple[int, ...]:
        count = len(decoder_layers(model))
        if not self.layers:
            return (default_layer(count),)
        for index in self.layers:
            if not 0 <= index < count:
                raise MemlawError(
                    f"layer index {index} is out of range: the model has layers 0..{count - 1}"
                )
        return tuple(sorted(set(self.layers)))

    def n_eff(self, model: nn.Module) -> int:
        """N_eff = rank × number of adapted layers."""
        return self.rank * len(self.resolved_layers(model))


def default_layer(count: int) -> int:
    """One layer at about two thirds of the depth (layer 20 of 30)."""
    return min(round(2 * count / 3), count - 1)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder layers (the ModuleList as long as ``num_hidden_layers``)."""
    count = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise MemlawError("cannot find the decoder layers of this model: pass explicit module names")


def module_names(modules: str) -> tuple[str, ...]:
    """The Linear names within a layer that ``modules`` means: a group (``mlp``, ``attn``,
    ``all``) or comma-separated names.

    >>> module_names("mlp"), module_names(" v_proj, o_proj ")
    (('gate_proj', 'up_proj', 'down_proj'), ('v_proj', 'o_proj'))
    """
    return MODULE_GROUPS.get(modules) or tuple(
        name.strip() for name in modules.split(",") if name.strip()
    )


def target_module_names(model: nn.Module, spec: LoraSpec) -> list[str]:
    """Full names of the Linear modules to adapt, checked against the model."""
    if spec.rank <= 0:
        raise MemlawError(f"rank must be a positive integer, got {spec.rank}")
    if not 0.0 <= spec.dropout < 1.0:
        raise MemlawError(f"LoRA dropout must be within [0, 1), got {spec.dropout}")
    wanted = module_names(spec.modules)
    if not wanted:
        raise MemlawError("no modules given: use mlp, attn, all or module names")
    layers = decoder_layers(model)
    prefix = next(name for name, module in model.named_modules() if module is layers)
    names = []
    for index in spec.resolved_layers(model):
        linear = {
            name.rsplit(".", 1)[-1]: name
            for name, module in layers[index].named_modules()
            if isinstance(module, nn.Linear)
        }
        unknown = [name for name in wanted if name not in linear]
        if unknown:
            raise MemlawError(
                f"unknown module name(s) {', '.join(unknown)} in layer {index}: "
                f"available: {', '.join(sorted(linear))}"
            )
        names += [f"{prefix}.{index}.{linear[name]}" for name in wanted]
    return names


def attach_lora(model: nn.Module, spec: LoraSpec, seed: int = 0):
    """Wrap ``model`` in a PEFT LoRA model; only the LoRA weights are trainable.

    LoRA's A matrices are initialized from ``seed`` so that runs are reproducible.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha if spec.alpha is not None else spec.rank,
        lora_dropout=spec.dropout,
        target_modules=target_module_names(model, spec),
        bias="none",
        task_type="CAUSAL_LM",
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return get_peft_model(model, config)
    finally:
        torch.random.set_rng_state(state)


def trainable_parameters(model: nn.Module) -> int:
    """The exact number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_adapter(model: nn.Module, adapter_dir: str, *, trainable: bool = False):
    """Load a saved PEFT adapter onto a base model (plain ``PeftModel.from_pretrained``)."""
    from pathlib import Path

    from peft import PeftModel

    folder = Path(adapter_dir)
    if not (folder / "adapter_config.json").is_file():
        raise MemlawError(f"'{adapter_dir}' is not a PEFT adapter folder (no adapter_config.json)")
    try:
        return PeftModel.from_pretrained(model, folder, is_trainable=trainable)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise MemlawError(
            f"cannot load adapter '{adapter_dir}': {str(exc).splitlines()[0]}"
        ) from None
