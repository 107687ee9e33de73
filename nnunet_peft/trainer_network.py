"""The network a trainer name describes, built from nnU-Net's plans.

What ``nnUNetTrainer<Method>...`` trains and what prediction rebuilds from the name alone: its backbone
token's network (or the plans' own), with empty adapters for an adapter method. Below the trainers
(``nnunet_peft.training``), which build it for nnU-Net, because a model folder or a checkpoint is read
into the same network without them (``nnunet_peft.model_folder``).
"""
from __future__ import annotations

from torch import nn

from nnunet_peft.architectures import build_network
from nnunet_peft.injection import inject_adapters
from nnunet_peft.name_grammar import TrainerSpec


def build_stock_network(spec: TrainerSpec, plans_manager, configuration_manager, num_input_channels: int,
                        num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
    """The network of ``spec`` without adapters: its backbone token's, or the plans' (nnU-Net's builder)."""
    return build_network(spec.backbone, plans_manager, configuration_manager, num_input_channels,
                         num_output_channels, enable_deep_supervision)


def build_adapted_network(spec: TrainerSpec, plans_manager, configuration_manager, num_input_channels: int,
                          num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
    """The network of ``spec`` with empty adapters, ready for a state dict (what prediction needs)."""
    network = build_stock_network(spec, plans_manager, configuration_manager, num_input_channels,
                                  num_output_channels, enable_deep_supervision)
    if spec.peft_method is not None:
        inject_adapters(network, spec.peft_config(), init_weights=False)
    return network
