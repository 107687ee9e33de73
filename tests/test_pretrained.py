"""The -pretrained_weights rules: compatibility errors that say what to do (heads: test_transfer.py)."""
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_peft import PeftConfig, inject_adapters
from nnunet_peft.training.pretrained import check_pretrained_compatible, pretrained_weights_argument


def unet(features=(4, 8, 16), classes=2, seed=0):
    torch.manual_seed(seed)
    return PlainConvUNet(1, len(features), features, nn.Conv3d, 3, (1, 2, 2), 2, classes, 2, True, nn.InstanceNorm3d,
                         {"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, deep_supervision=True)


def save(network, path):
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer"}, path)
    return path


def test_argument_is_read_from_the_command_line():
    assert pretrained_weights_argument(["nnUNetv2_train", "1", "3d_fullres", "0", "-pretrained_weights", "a.pth"]) == "a.pth"
    assert pretrained_weights_argument(["x", "-pretrained_weights=b.pth"]) == "b.pth"
    assert pretrained_weights_argument(["nnUNetv2_train", "1", "3d_fullres", "0", "--c"]) is None


def test_compatible_checkpoint_passes(tmp_path):
    check_pretrained_compatible(unet(), save(unet(seed=1), tmp_path / "src.pth"))
    # a different label count only changes the heads, which are never required to match
    check_pretrained_compatible(unet(classes=3), save(unet(), tmp_path / "src2.pth"))


def test_other_architecture_lists_tensors_and_names_the_fix(tmp_path):
    ckpt = save(unet(features=(4, 8, 32)), tmp_path / "src.pth")
    with pytest.raises(ValueError) as err:
        check_pretrained_compatible(unet(), ckpt, "Dataset002_SAH")
    text = str(err.value)
    assert "encoder.stages.2.0.convs.0.conv.weight: checkpoint (32, 8, 3, 3, 3) vs network (16, 8, 3, 3, 3)" in text
    assert f"nnunet-peft plan-from-checkpoint -d Dataset002_SAH --checkpoint {ckpt}" in text
    assert "nnUNetv2_move_plans_between_datasets" in text


def test_adapter_checkpoint_is_refused_with_the_merge_command(tmp_path):
    adapted = inject_adapters(unet(), PeftConfig("lora_c", rank=2))
    with pytest.raises(ValueError, match="nnunet-peft merge"):
        check_pretrained_compatible(unet(), save(adapted, tmp_path / "adapted.pth"))


def test_not_a_checkpoint(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="not an nnU-Net checkpoint"):
        check_pretrained_compatible(unet(), tmp_path / "x.pth")
    with pytest.raises(FileNotFoundError, match="no such file"):
        check_pretrained_compatible(unet(), tmp_path / "missing.pth")
