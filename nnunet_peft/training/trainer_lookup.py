"""How the module in ``nnUNet_extTrainer`` answers nnU-Net's search for a trainer class.

nnU-Net (``recursive_find_python_class``) imports every module of the folder and asks
``hasattr(module, name)``. ``hasattr`` swallows only AttributeError: anything else travels up
through ``nnUNetv2_train``/``nnUNetv2_predict`` to the interpreter. That is the one way our message
can reach the user, and a SystemExit is the one exception the interpreter reports as its message
alone, without a traceback in front of it.

A name that is ours but for its case (``nnUNetTrainerCpLoRA``) is answered the same way, naming the
right spelling: nnU-Net searches its own trainers before ours, so such a name can only shadow a
class of another folder listed after ours in ``nnUNet_extTrainer`` whose name differs from one of
ours in case alone.
"""
from __future__ import annotations

from nnunet_peft.architectures import BACKBONES
from nnunet_peft.name_grammar import METHOD_TOKENS, PREFIX, TrainerNameError, is_plugin_name, parse_trainer_name
from nnunet_peft.training.trainer import trainer_class


class TrainerLookupError(SystemExit, TrainerNameError):
    """A name nnU-Net asked for that is meant as one of ours but is not one.

    A TrainerNameError (a ValueError) for Python callers; a SystemExit (listed first, so that its
    ``code`` is the message) for the command line, which then prints the message and exits with 1.
    """


# the backbone tokens are the only ones of mixed case; every other token is lower-case
_TOKEN_SPELLING = {token.lower(): token for token in BACKBONES}


def correct_case(name: str) -> str | None:
    """``name`` spelt in the grammar's case when it is ``nnUNetTrainer<Method>[_<token>]...`` but for the case
    of its letters (``nnUNetTrainerCpLoRA_DEC`` -> ``nnUNetTrainerCPLoRA_dec``); None when it is not, or is
    already spelt so. The result need not parse: only the case is corrected."""
    lowered = name.lower()
    if not lowered.startswith(PREFIX.lower()):
        return None
    rest = lowered[len(PREFIX):]
    method = next((m for m in METHOD_TOKENS if rest == m.lower() or rest.startswith(m.lower() + "_")), None)
    if method is None:
        return None
    tokens = rest[len(method):].split("_")[1:]
    spelt = "_".join([PREFIX + method, *(_TOKEN_SPELLING.get(t, t) for t in tokens)])
    return spelt if spelt != name else None


def _parse_error(name: str) -> ValueError | None:
    try:
        parse_trainer_name(name)
        return None
    except ValueError as e:  # the grammar's error, or PeftConfig's own check of rank/alpha/placement
        return e


def find_trainer(name: str, module: str) -> type:
    """The class ``name`` asks for, created under ``module``.

    Raises AttributeError for names that are not ours, so nnU-Net goes on searching its other
    folders, and TrainerLookupError for names that claim one of our methods but do not parse, or
    are one of ours in another case (the message names the right spelling).
    """
    spelt = correct_case(name)
    if not is_plugin_name(name):
        if spelt is None:
            raise AttributeError(name)
        error = _parse_error(spelt)
        if error is None:
            raise TrainerLookupError(f"nnunet-peft: there is no trainer {name!r}; trainer names are case-sensitive: "
                                     f"did you mean {spelt}?")
        raise TrainerLookupError(f"nnunet-peft: there is no trainer {name!r}; trainer names are case-sensitive "
                                 f"({spelt} is its spelling), and spelt so it still fails: {error}")
    try:
        return trainer_class(name, module=module)
    except ValueError as e:
        hint = f"\nTrainer names are case-sensitive: did you mean {spelt}?" if spelt and not _parse_error(spelt) else ""
        raise TrainerLookupError(f"nnunet-peft: {e}{hint}") from None
