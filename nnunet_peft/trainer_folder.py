"""Where nnU-Net finds the plugin's trainers: the folder ``nnUNet_extTrainer`` must list.

Below the command line, so that the code that runs ``nnUNetv2_train`` in a subprocess (the benchmark,
the demo, the speed harness) sets the variable without importing a command.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def trainer_dir() -> Path:
    """The installed location of ``trainers/`` (the repository folder for an editable install)."""
    spec = importlib.util.find_spec("nnunet_peft.trainers")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nnunet_peft.trainers is not installed; reinstall nnunet-peft")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def trainer_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the plugin's folder in nnUNet_extTrainer.

    A folder the user already listed there is kept, after ours.
    """
    env = dict(os.environ if base is None else base)
    ours = str(trainer_dir())
    existing = [p for p in env.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    env["nnUNet_extTrainer"] = os.pathsep.join([ours] + [p for p in existing if p != ours])
    return env
