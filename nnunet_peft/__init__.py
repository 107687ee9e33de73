"""Parameter-efficient fine-tuning of nnU-Net v2 networks.

    from nnunet_peft import PeftConfig, inject_adapters, merge_adapters
    inject_adapters(network, PeftConfig(method="cp_lora", rank=8, alpha=8))
    plain = merge_adapters(network)   # a stock network with W0 + dW

Several named adapters on one base (docs/serving_many_adapters.md):

    load_adapter(network, "siteA/fold_0", name="siteA"); load_adapter(network, "siteB/fold_0", name="siteB")
    set_adapter(network, "siteA")
    with disable_adapters(network): ...   # exactly the base
"""
from nnunet_peft.adapter_io import BaseFingerprintWarning, BaseMismatchError, base_fingerprint, load_adapter, save_adapter
from nnunet_peft.adapter_state import adapter_layers, adapter_state_dict
from nnunet_peft.config import METHODS, PLACEMENTS, PeftConfig
from nnunet_peft.injection import configure_finetuning, inject_adapters, merge_adapters
from nnunet_peft.named_adapters import PlansMismatchError, delete_adapter, disable_adapters, set_adapter
from nnunet_peft.summary import count_parameters, trainable_parameter_table

__all__ = [
    "METHODS", "PLACEMENTS", "BaseFingerprintWarning", "BaseMismatchError", "PeftConfig", "PlansMismatchError",
    "adapter_layers", "adapter_state_dict", "base_fingerprint", "configure_finetuning",
    "count_parameters", "delete_adapter", "disable_adapters", "inject_adapters", "load_adapter", "merge_adapters",
    "save_adapter", "set_adapter", "trainable_parameter_table",
]
