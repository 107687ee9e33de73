"""nnU-Net's own U-Nets (dynamic_network_architectures' PlainConvUNet, ResidualEncoderUNet), as the plans name them.

Recognised by structure (``encoder.stages``, ``decoder.stages``, ``decoder.transpconvs``,
``decoder.seg_layers``), so subclasses and other classes that keep that structure work too, in 2-D
and 3-D. nnU-Net builds them from the plans (``get_network_from_plans``); this is also the family a
trainer name without a backbone token builds through, whatever class the plans name.
"""
from __future__ import annotations

from torch import nn

from nnunet_peft.architectures.family import Family, Stage, from_nnunet_plans

_PARTS = ("encoder.stages", "decoder.stages", "decoder.transpconvs", "decoder.seg_layers")


def missing_parts(network: nn.Module) -> list[str]:
    """The parts of a dynamic_network_architectures U-Net that ``network`` lacks."""
    missing = []
    for part in _PARTS:
        owner, attribute = part.split(".")
        child = getattr(network, owner, None)
        if child is None or not hasattr(child, attribute):
            missing.append(part)
    return missing


def not_a_unet(network: nn.Module) -> str:
    return (f"{type(network).__name__} is not a dynamic_network_architectures U-Net (missing "
            f"{', '.join(missing_parts(network))}); expected a PlainConvUNet or ResidualEncoderUNet as built by "
            "nnU-Net's get_network_from_plans")


def unet_stages(network: nn.Module) -> list[Stage]:
    """The stages of a U-Net in forward order."""
    if missing_parts(network):
        raise ValueError(not_a_unet(network))
    encoder, decoder = network.encoder, network.decoder
    enc = list(encoder.stages)
    stages: list[Stage] = []
    stem = getattr(encoder, "stem", None)
    for i, stage in enumerate(enc[:-1]):
        # the stem of a residual encoder runs before stage 0 at the same resolution
        modules = (stem, stage) if i == 0 and stem is not None else (stage,)
        stages.append(Stage(f"encoder.{i}", "encoder", modules))
    stages.append(Stage("bottleneck", "bottleneck", (enc[-1],)))
    for i, (up, stage) in enumerate(zip(decoder.transpconvs, decoder.stages)):
        stages.append(Stage(f"decoder.{i}", "decoder", (up, stage)))
    stages.append(Stage("seg_layers", "seg_layers", (decoder.seg_layers,)))
    return stages


FAMILY = Family(
    name="unet",
    description="U-Net (dynamic_network_architectures)",
    stages=unet_stages,
    classes=("dynamic_network_architectures.architectures.unet.PlainConvUNet",
             "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"),
    matches=lambda network: not missing_parts(network),
    deep_supervision=True,
    nnunet_skips_heads=True,
    adapts_input_channels=True,
    from_plans=from_nnunet_plans,
)
