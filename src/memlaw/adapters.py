"""LoRA adapters on PEFT: rank, adapted layers, modules, and the effective parameters N_eff.

>>> from memlaw.models import load_model
>>> model, _ = load_model("tiny")
>>> spec = LoraSpec(rank=4, layers=(2,), modules="mlp")
>>> peft_model = attach_lora(model, spec)
>>> spec.n_eff(model), trainable_parameters(peft_model)
(4, 2304)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from memlaw.errors import MemlawError, check_number, first_line

# A trained LoRA parameter costs its float32 weight, its gradient and AdamW's two moments.
BYTES_PER_TRAINED_PARAM = 16

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

    def validate(self) -> None:
        """The spec's own numbers, before any model is needed."""
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise MemlawError(f"rank must be a positive integer, got {self.rank}")
        check_number(self.alpha, "LoRA alpha", low=0, low_open=True, optional=True)
        check_number(self.dropout, "LoRA dropout", low=0, high=1, high_open=True)

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
    spec.validate()
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
    check_lora_fits(model, spec)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return get_peft_model(model, config)
    finally:
        torch.random.set_rng_state(state)


def trainable_parameters(model: nn.Module) -> int:
    """The exact number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_parameter_count(model: nn.Module, spec: LoraSpec) -> int:
    """The adapter's trainable parameters, counted from the module shapes (no allocation; a
    model on the meta device will do).

    >>> from memlaw.models import load_model
    >>> lora_parameter_count(load_model("tiny")[0], LoraSpec(rank=4, layers=(2,)))
    2304
    """
    total = 0
    for name in target_module_names(model, spec):
        module = model.get_submodule(name)
        total += spec.rank * (module.in_features + module.out_features)
    return total


def check_lora_fits(model: nn.Module, spec: LoraSpec, device: str | torch.device | None = None):
    """Fail before allocating an adapter whose weights, gradients and optimizer state need more
    memory than ``device`` (default: the model's) has free."""
    from memlaw.models import available_memory, format_bytes

    if device is None:
        device = next(model.parameters()).device
    needed = lora_parameter_count(model, spec) * BYTES_PER_TRAINED_PARAM
    free = available_memory(device)
    if free is not None and needed > free:
        raise MemlawError(
            f"a rank-{spec.rank} adapter on {spec.modules} needs about {format_bytes(needed)} "
            f"(weights, gradients, AdamW state) but {device} has {format_bytes(free)} free: "
            "lower the rank or adapt fewer layers or modules"
        )


ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# The safetensors metadata key that carries adapter_config.json inside an adapter blob.
_CONFIG_METADATA = "peft_adapter_config"


def adapter_blob(model: nn.Module) -> bytes:
    """A PEFT model's adapter as one safetensors blob, its ``adapter_config.json`` carried in the
    file's metadata: one value to keep in a database row (a sweep point keeps its adapter so).

    >>> from memlaw.models import load_model
    >>> model, _ = load_model("tiny")
    >>> blob = adapter_blob(attach_lora(model, LoraSpec(rank=2, layers=(1,), modules="mlp")))
    >>> blob[8:9], len(blob) < 20_000
    (b'{', True)
    """
    import tempfile

    from safetensors.torch import load_file, save

    with tempfile.TemporaryDirectory() as staging:
        model.save_pretrained(staging, safe_serialization=True)
        config = (Path(staging) / ADAPTER_CONFIG).read_text(encoding="utf-8")
        weights = load_file(str(Path(staging) / ADAPTER_WEIGHTS))
    return save(weights, metadata={"format": "pt", _CONFIG_METADATA: config})


def write_adapter_blob(blob: bytes, folder: str | Path) -> None:
    """Write an :func:`adapter_blob` into ``folder`` as a PEFT adapter's two files, loadable
    with ``PeftModel.from_pretrained`` (the caller makes ``folder`` atomic)."""
    from safetensors import SafetensorError, safe_open

    weights = Path(folder) / ADAPTER_WEIGHTS
    weights.write_bytes(blob)
    try:
        with safe_open(str(weights), framework="pt") as opened:
            config = (opened.metadata() or {}).get(_CONFIG_METADATA)
    except SafetensorError as exc:
        raise MemlawError(
            f"a stored adapter is not a safetensors blob ({first_line(exc)})"
        ) from None
    if config is None:
        raise MemlawError(
            "a stored adapter carries no adapter_config.json: it is not a memlaw blob"
        )
    (Path(folder) / ADAPTER_CONFIG).write_text(config, encoding="utf-8")


def load_adapter(
    model: nn.Module,
    adapter_dir: str | Path,
    *,
    trainable: bool = False,
    model_name: str | None = None,
):
    """Load a saved PEFT adapter onto a base model after checking that it belongs to it.

    Refused with a MemlawError: a folder without ``adapter_config.json`` or with a malformed
    one; weights missing, empty, truncated, non-finite or in pickle format; an adapter made for
    another base model (``record.json``'s model against ``model_name``, else the config's
    ``base_model_name_or_path``, and every weight's shape against the module it adapts); a
    config that targets modules its weights do not cover.
    """
    import warnings

    from peft import PeftModel
    from safetensors import SafetensorError

    folder = Path(adapter_dir)
    config, shapes = check_adapter_files(folder)
    _check_base_model(folder, config, model, model_name)
    _check_weight_shapes(folder, shapes, model)
    try:
        with warnings.catch_warnings():
            # Checked below, with a message that says what it means.
            warnings.filterwarnings("ignore", message="Found missing adapter keys")
            adapted = PeftModel.from_pretrained(model, folder, is_trainable=trainable)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        raise MemlawError(f"cannot load adapter '{folder}': {first_line(exc)}") from None
    uncovered = sorted(set(_lora_module_names(adapted)) - set(shapes))
    if uncovered:
        adapted.unload()  # leave the caller's model as it was
        raise MemlawError(
            f"adapter '{folder}' targets {len(uncovered)} module(s) that {ADAPTER_WEIGHTS} has "
            f"no weights for (e.g. {uncovered[0]}): its config and weights do not belong together"
        )
    return adapted


def check_adapter_files(adapter_dir: str | Path) -> tuple[dict, dict]:
    """The adapter folder's config and weight shapes, checked without any model: a missing or
    malformed config, and weights that are missing, pickled, empty, truncated or not finite,
    fail here."""
    folder = Path(adapter_dir)
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is a file, not an adapter folder"
        raise MemlawError(f"adapter '{folder}' {what}")
    return _adapter_config(folder), _adapter_weight_shapes(folder)


def _adapter_config(folder: Path) -> dict:
    """adapter_config.json, parsed, with a LoRA rank and a finite alpha."""
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise MemlawError(f"'{folder}' is not a PEFT adapter folder (no adapter_config.json)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MemlawError(f"cannot read {path}: {first_line(exc)}") from None
    if not isinstance(config, dict):
        raise MemlawError(f"{path} is not a JSON object")
    rank, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise MemlawError(f"{path}: r must be a positive integer, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise MemlawError(f"{path}: lora_alpha must be a finite number, got {alpha!r}")
    return config


def _adapter_weight_shapes(folder: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """Module name (as in the PEFT model) → {"lora_A": shape, "lora_B": shape}, read from the
    safetensors file; every tensor is checked to be finite."""
    from safetensors import SafetensorError, safe_open

    path = folder / ADAPTER_WEIGHTS
    if not path.is_file():
        pickled = [p.name for p in folder.glob("adapter_model.*") if p.suffix in (".bin", ".pt")]
        if pickled:
            raise MemlawError(
                f"adapter '{folder}' has only pickle weights ({pickled[0]}), which memlaw never "
                f"loads (they can run code): save it as {ADAPTER_WEIGHTS}"
            )
        raise MemlawError(f"adapter '{folder}' has no {ADAPTER_WEIGHTS}")
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    try:
        with safe_open(str(path), framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensor = weights.get_tensor(key)
                if not torch.isfinite(tensor).all():
                    raise MemlawError(f"{path}: tensor {key} holds NaN or infinite values")
                module, _, part = key.partition(".lora_")
                shapes.setdefault(module, {})["lora_" + part.split(".")[0]] = tuple(tensor.shape)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise MemlawError(
            f"{path} is not a readable safetensors file (empty, truncated or corrupt: "
            f"{first_line(exc)})"
        ) from None
    if not shapes:
        raise MemlawError(f"{path} holds no LoRA weights")
    return shapes


def _same_model(a: str, b: str) -> bool:
    def norm(name: str) -> str:
        path = Path(name).expanduser()
        return str(path.resolve()) if path.exists() else name.rstrip("/")

    return norm(a) == norm(b)


def adapter_record(folder: Path) -> dict:
    """memlaw's ``record.json`` beside an adapter (how it was trained: model, stop reason,
    length, ...), or ``{}`` for an adapter without one or with a broken one, which says nothing.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> adapter_record(folder)
    {}
    >>> _ = (folder / "record.json").write_text('{"stop_reason": "plateau"}')
    >>> adapter_record(folder)["stop_reason"]
    'plateau'
    """
    try:
        record = json.loads((Path(folder) / "record.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _check_base_model(folder: Path, config: dict, model: nn.Module, model_name: str | None):
    """memlaw's record.json names the model an adapter was trained on; other adapters carry
    PEFT's base_model_name_or_path."""
    trained_on = adapter_record(folder).get("model")
    ours = model_name or getattr(model, "name_or_path", None)
    if not isinstance(trained_on, str) or not trained_on:
        trained_on = config.get("base_model_name_or_path")
        ours = getattr(model, "name_or_path", None) or model_name
    if isinstance(trained_on, str) and trained_on and ours and not _same_model(trained_on, ours):
        raise MemlawError(
            f"adapter '{folder}' was trained on model '{trained_on}', not '{ours}': "
            "load it on the model it was trained on (--model)"
        )


def _check_weight_shapes(folder: Path, shapes: dict, model: nn.Module) -> None:
    """Each weight pair must fit the Linear module it adapts: lora_A is (r, in), lora_B (out, r)."""
    for name, pair in shapes.items():
        module_name = re.sub(r"^base_model\.model\.", "", name)
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise MemlawError(
                f"adapter '{folder}' has weights for {module_name}, which this model does not "
                "have: it was trained on another base model"
            ) from None
        a, b = pair.get("lora_A"), pair.get("lora_B")
        fits = (
            a is not None
            and b is not None
            and len(a) == 2
            and len(b) == 2
            and a[1] == getattr(module, "in_features", None)
            and b[0] == getattr(module, "out_features", None)
        )
        if not fits:
            raise MemlawError(
                f"adapter '{folder}': the weights for {module_name} (A {a}, B {b}) do not fit "
                "the model's module: it was trained on another base model"
            )


def _lora_module_names(adapted: nn.Module) -> list[str]:
    """Names, as in the saved weights, of the modules PEFT adapted from the config."""
    return [name for name, module in adapted.named_modules() if hasattr(module, "lora_A")]


def adapter_n_eff(adapter_dir: str | Path) -> int:
    """N_eff = rank × adapted layers of a saved PEFT adapter, read with
    ``peft.PeftConfig.from_pretrained`` (memlaw names each adapted module in full, e.g.
    ``model.layers.20.mlp.up_proj``, so the layers can be counted)."""
    from peft import PeftConfig

    try:
        config = PeftConfig.from_pretrained(str(adapter_dir))
    except (OSError, ValueError, TypeError) as exc:
        raise MemlawError(f"cannot read the adapter config in {adapter_dir} ({exc})") from None
    modules = config.target_modules or []
    if isinstance(modules, str):
        modules = [modules]
    layers = {m.group(1) for name in modules if (m := re.search(r"layers\.(\d+)\.", name))}
    if not layers or not getattr(config, "r", None):
        raise MemlawError(
            f"cannot tell which layers adapter {adapter_dir} adapts; --law needs one made by "
            "memlaw train"
        )
    return int(config.r) * len(layers)
