import pytest
from peft import PeftModel

from memlaw.adapters import (
    LoraSpec,
    attach_lora,
    default_layer,
    target_module_names,
    trainable_parameters,
)
from memlaw.errors import MemlawError


def test_default_layer_sits_at_two_thirds_of_the_depth():
    assert default_layer(30) == 20
    assert default_layer(4) == 3
    assert default_layer(1) == 0


def test_modules_and_layers_resolve_to_full_names(tiny):
    model, _ = tiny
    names = target_module_names(model, LoraSpec(rank=2, layers=(0, 2), modules="attn"))
    assert names == [
        f"model.layers.{i}.self_attn.{m}"
        for i in (0, 2)
        for m in ("q_proj", "k_proj", "v_proj", "o_proj")
    ]
    explicit = target_module_names(model, LoraSpec(rank=2, modules="up_proj, down_proj"))
    assert explicit == ["model.layers.3.mlp.up_proj", "model.layers.3.mlp.down_proj"]


def test_n_eff_and_exact_trainable_count(tiny):
    model, _ = tiny
    spec = LoraSpec(rank=3, layers=(1, 2), modules="mlp")
    peft_model = attach_lora(model, spec)
    assert isinstance(peft_model, PeftModel)
    assert spec.n_eff(model) == 6
    # per layer: gate/up (64->128) and down (128->64): r*(in+out) each
    assert trainable_parameters(peft_model) == 2 * 3 * ((64 + 128) * 3)


def test_lora_init_is_seeded(tiny):
    model, _ = tiny
    a = attach_lora(model, LoraSpec(rank=2), seed=5)
    first = [p.detach().clone() for p in a.parameters() if p.requires_grad]
    a.unload()
    b = attach_lora(model, LoraSpec(rank=2), seed=5)
    second = [p.detach().clone() for p in b.parameters() if p.requires_grad]
    assert all((x == y).all() for x, y in zip(first, second, strict=False))


@pytest.mark.parametrize(
    "spec, message",
    [
        (LoraSpec(rank=0), "rank must be a positive integer"),
        (LoraSpec(rank=-2), "rank must be a positive integer"),
        (
            LoraSpec(rank=1, layers=(4,)),
            r"layer index 4 is out of range: the model has layers 0..3",
        ),
        (LoraSpec(rank=1, layers=(-1,)), "out of range"),
        (
            LoraSpec(rank=1, modules="mlp_proj"),
            "unknown module name.*mlp_proj.*available: down_proj",
        ),
        (LoraSpec(rank=1, dropout=1.5), "dropout"),
    ],
)
def test_bad_specs_are_rejected(tiny, spec, message):
    model, _ = tiny
    with pytest.raises(MemlawError, match=message):
        target_module_names(model, spec)
