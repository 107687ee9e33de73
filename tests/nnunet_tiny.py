"""Tiny synthetic nnU-Net datasets and an environment for running nnU-Net's command line in tests."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def make_dataset(raw: Path, dataset_id: int, name: str, n_cases: int, n_labels: int = 1,
                 shape=(16, 20, 20), seed: int = 0, channel: str = "MRI", label_names: list[str] | None = None) -> Path:
    """Noise volumes with 1..n_labels bright boxes, written as an nnU-Net raw dataset.

    Label i is a box 2 + i brighter than the noise; ``label_names`` names labels 1..n (default l1..ln).
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    rng = np.random.default_rng(seed)
    folder = raw / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for c in range(n_cases):
        img = rng.normal(0, 1, shape).astype(np.float32)
        seg = np.zeros(shape, np.uint8)
        for label in range(1, n_labels + 1):
            z, y, x = (rng.integers(2, s - 8) for s in shape)
            seg[z:z + 5, y:y + 6, x:x + 6] = label
            img[z:z + 5, y:y + 6, x:x + 6] += 2.0 + label
        for array, path in [(img, folder / "imagesTr" / f"case{c:03d}_0000.nii.gz"),
                            (seg, folder / "labelsTr" / f"case{c:03d}.nii.gz")]:
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((1.0, 1.0, 1.5))
            sitk.WriteImage(image, str(path))
    names = label_names or [f"l{i}" for i in range(1, n_labels + 1)]
    generate_dataset_json(str(folder), {0: channel}, {"background": 0, **{n: i for i, n in enumerate(names, 1)}},
                          n_cases, ".nii.gz", dataset_name=folder.name)
    return folder


def nnunet_env(root: Path) -> dict[str, str]:
    from nnunet_peft.trainer_folder import trainer_dir

    env = dict(os.environ)
    for key, sub in [("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")]:
        (root / sub).mkdir(parents=True, exist_ok=True)
        env[key] = str(root / sub)
    env.update(nnUNet_extTrainer=str(trainer_dir()), nnUNet_def_n_proc="1", nnUNet_compile="false",
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def training_env(env: dict[str, str]) -> dict[str, str]:
    # 0 augmentation workers: nnU-Net then augments in-process (the planner rejects 0, so only here)
    return env | {"nnUNet_n_proc_DA": "0"}


def run(cmd: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    """Run a command; on failure, the error shows the command and the tail of its output."""
    proc = subprocess.run(cmd, env=env, capture_output=True, encoding="utf-8", errors="replace")
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


_STOCK_TRAINER = '''
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class {name}(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = {epochs}, {iterations}, 1
'''


def stock_trainer_folder(root: Path, name: str, epochs: int, iterations: int) -> Path:
    """A folder for nnUNet_extTrainer holding one stock nnUNetTrainer with a tiny schedule: the end-to-end
    tests pretrain their 'received' checkpoints with nnU-Net's own trainer, as a user's would be."""
    folder = root / "stock_trainers"
    folder.mkdir()
    (folder / f"{name.lower()}.py").write_text(_STOCK_TRAINER.format(name=name, epochs=epochs, iterations=iterations))
    return folder
