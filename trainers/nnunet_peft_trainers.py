"""The trainers nnU-Net finds through ``nnUNet_extTrainer=$(nnunet-peft trainer-dir)``.

nnU-Net imports this file as a top-level module and asks ``hasattr(module, NAME)``; the module-level
``__getattr__`` answers every name of the grammar (nnunet_peft.name_grammar) with a class made
from the name, so no class needs writing. Imports here must be absolute: nnU-Net puts this folder
on sys.path and imports its files as top-level modules, where relative imports fail.
"""
from nnunet_peft.training.trainer import nnUNetTrainerPeft
from nnunet_peft.training.trainer_lookup import find_trainer

__all__ = ["nnUNetTrainerPeft"]


def __getattr__(name: str):
    # Names that are not ours raise AttributeError, so nnU-Net goes on looking in its other folders;
    # names that claim one of our methods but do not parse end the search with the grammar error
    # (trainer_lookup says why it is a SystemExit).
    return find_trainer(name, module=__name__)
