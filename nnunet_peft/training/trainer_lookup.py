"""How the module in ``nnUNet_extTrainer`` answers nnU-Net's search for a trainer class.

nnU-Net (``recursive_find_python_class``) imports every module of the folder and asks
``hasattr(module, name)``. ``hasattr`` swallows only AttributeError: anything else travels up
through ``nnUNetv2_train``/``nnUNetv2_predict`` to the interpreter. That is the one way our message
can reach the user, and a SystemExit is the one exception the interpreter reports as its message
alone, without a traceback in front of it.
"""
from __future__ import annotations

from nnunet_peft.training.names import TrainerNameError, is_plugin_name
from nnunet_peft.training.trainer import trainer_class


class TrainerLookupError(SystemExit, TrainerNameError):
    """A name nnU-Net asked for that is meant as one of ours but is not one.

    A TrainerNameError (a ValueError) for Python callers; a SystemExit (listed first, so that its
    ``code`` is the message) for the command line, which then prints the message and exits with 1.
    """


def find_trainer(name: str, module: str) -> type:
    """The class ``name`` asks for, created under ``module``.

    Raises AttributeError for names that are not ours, so nnU-Net goes on searching its other
    folders, and TrainerLookupError for names that claim one of our methods but do not parse.
    """
    if not is_plugin_name(name):
        raise AttributeError(name)
    try:
        return trainer_class(name, module=module)
    except ValueError as e:  # the grammar's error, or PeftConfig's own check of rank/alpha/placement
        raise TrainerLookupError(f"nnunet-peft: {e}") from None
