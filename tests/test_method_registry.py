"""nnunet_peft.config.METHODS is the one registry of methods: every other table of methods is read from it."""
from __future__ import annotations

import pytest

from nnunet_peft.config import FORWARD_MODES, METHODS, MethodSpec, PeftConfig
from nnunet_peft.injection import LAYER_CLASSES
from nnunet_peft.layers.base import AdapterLayer
from nnunet_peft.layers.hyps import HyPSAdapter
from nnunet_peft.layers.lowrank import ConvLoRAAdapter, CPLoRAAdapter, LoRACAdapter
from nnunet_peft.layers.tensor import LoRAPTGroup, TCURGroup, TensorGroup
from nnunet_peft.name_grammar import ADAPTER_METHODS, GRAMMAR, parse_trainer_name

# written out here, not read from the registry: what each method was before the tables became one
EXPECTED = {
    "lora_c": ("LoRAC", LoRACAdapter, False),
    "conv_lora": ("ConvLoRA", ConvLoRAAdapter, False),
    "cp_lora": ("CPLoRA", CPLoRAAdapter, False),
    "dora_c": ("DoRAC", LoRACAdapter, True),
    "conv_dora": ("ConvDoRA", ConvLoRAAdapter, True),
    "cp_dora": ("CPDoRA", CPLoRAAdapter, True),
    "lora_pt": ("LoRAPT", LoRAPTGroup, False),
    "tcur_lora": ("TCURLoRA", TCURGroup, False),
    "hyps": ("HyPS", HyPSAdapter, False),
}


def test_the_registry_holds_each_method_once_in_the_docs_order():
    assert list(METHODS) == list(EXPECTED)
    assert len({s.token for s in METHODS.values()}) == len({s.display for s in METHODS.values()}) == len(METHODS)


@pytest.mark.parametrize("method", list(EXPECTED))
def test_each_method_resolves_to_its_layer_class_token_and_dora_flag(method):
    token, cls, dora = EXPECTED[method]
    spec = METHODS[method]
    assert spec.layer_class is cls and spec.token == token
    assert spec.dora is dora and PeftConfig(method).uses_dora is dora
    assert issubclass(cls, TensorGroup if spec.family == "tensor" else AdapterLayer)
    assert ADAPTER_METHODS[token] == method and parse_trainer_name(f"nnUNetTrainer{token}").peft_method == method


def test_the_derived_tables_follow_the_registry():
    assert ADAPTER_METHODS == {spec.token: method for method, spec in METHODS.items()}
    assert list(ADAPTER_METHODS) == [EXPECTED[m][0] for m in EXPECTED]  # the grammar lists them in this order
    assert f"Method: {' '.join(ADAPTER_METHODS)}" in GRAMMAR
    assert LAYER_CLASSES == {m: EXPECTED[m][1] for m in EXPECTED if METHODS[m].family != "tensor"}
    assert {m for m in METHODS if METHODS[m].family == "tensor"} == {"lora_pt", "tcur_lora"}


@pytest.mark.parametrize("change, message", [
    (dict(family="sparse"), "family must be one of"),
    (dict(forward_modes=()), "forward_modes must be a non-empty subset"),
    (dict(forward_modes=("reconstruct", "fast")), "forward_modes must be a non-empty subset"),
    (dict(untuned_mode="chain", forward_modes=("reconstruct",)), "untuned_mode must be one of forward_modes"),
    (dict(layer="LoRACAdapter"), "layer must read"),
])
def test_a_malformed_method_is_refused_when_it_is_declared(change, message):
    fields = dict(token="New", display="New", family="lowrank", layer="lowrank.LoRACAdapter",
                  forward_modes=FORWARD_MODES, untuned_mode="reconstruct")
    with pytest.raises(ValueError, match=message):
        MethodSpec(**{**fields, **change})
