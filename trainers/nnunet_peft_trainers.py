"""The trainers nnU-Net finds through ``nnUNet_extTrainer=$(nnunet-peft trainer-dir)``.

nnU-Net imports this file as a top-level module and asks ``hasattr(module, NAME)``; the module-level
``__getattr__`` answers every name of the grammar (nnunet_peft.training.names) with a class made
from the name, so no class needs writing. Imports here must be absolute: nnU-Net puts this folder
on sys.path and imports its files as top-level modules, where relative imports fail.
"""
from nnunet_peft.training.names import is_plugin_name
from nnunet_peft.training.trainer import nnUNetTrainerPeft, trainer_class

__all__ = ["nnUNetTrainerPeft"]


def __getattr__(name: str):
    # Names that are not ours raise AttributeError, so nnU-Net goes on looking in its other folders;
    # names that claim one of our methods but do not parse raise the grammar error instead.
    if is_plugin_name(name):
        return trainer_class(name, module=__name__)
    raise AttributeError(name)
