"""The README's recipe ("Fine-tuning a received model on your own data"), run as printed.

The two fenced blocks after ``<!-- recipe:settings`` and ``<!-- recipe:run -->`` are read from
README.md. The settings block names what a user fills in; this test gives every one of those names a
value pointing at tiny synthetic data (a received model pretrained here by a stock nnU-Net trainer,
a paired images/masks folder, new cases to segment), a short schedule and the CPU, and then runs
the run block verbatim with bash. A step that no longer matches the code fails here.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nnunet_tiny import make_dataset, nnunet_env, run, stock_trainer_folder, training_env

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
STOCK = "nnUNetTrainerTinyStockRecipe"


def recipe_blocks(text: str) -> tuple[str, str]:
    def block(marker: str) -> str:
        match = re.search(re.escape(marker) + r"[^\n]*\n```bash\n(.*?)\n```", text, re.S)
        assert match, f"README.md has no ```bash block after {marker!r}"
        return match.group(1)

    return block("<!-- recipe:settings"), block("<!-- recipe:run -->")


def assigned_names(settings: str) -> set[str]:
    """Every NAME=... of the settings block (``export`` lines and several per line included)."""
    names = set()
    for line in settings.splitlines():
        code = line.split("#", 1)[0]
        names |= set(re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", code))
    return names


def test_recipe_blocks_are_found_and_name_what_a_user_sets():
    settings, commands = recipe_blocks(README.read_text(encoding="utf-8"))
    assert {"CKPT", "TR", "CONF", "ID", "DATA"} <= assigned_names(settings)
    assert "plan-from-checkpoint" in commands and "nnUNetv2_find_best_configuration" in commands


def test_readme_recipe_runs_as_printed(tmp_path):
    settings, commands = recipe_blocks(README.read_text(encoding="utf-8"))
    root = tmp_path
    stock_dir = stock_trainer_folder(root, STOCK, epochs=1, iterations=3)
    env = nnunet_env(root)
    env["nnUNet_extTrainer"] = str(stock_dir)  # the recipe exports the plugin's folder itself (step 4)

    # the received model: a stock nnU-Net trained on a source dataset whose class is named as the user's
    make_dataset(root / "raw", 41, "Source", 6, channel="CT", label_names=["blood"], seed=0)
    run(["nnUNetv2_plan_and_preprocess", "-d", "41", "-c", "3d_fullres", "-np", "1"], env)
    run(["nnUNetv2_train", "41", "3d_fullres", "0", "-tr", STOCK, "-device", "cpu"], training_env(env))
    ckpt = root / "results" / "Dataset041_Source" / f"{STOCK}__nnUNetPlans__3d_fullres" / "fold_0" / "checkpoint_final.pth"
    assert ckpt.is_file()

    # the user's cases as a paired images/masks folder, and new cases to segment
    made = make_dataset(root / "scratch", 42, "Mine", 6, channel="CT", label_names=["blood"], seed=1)
    data = root / "my_cases"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for image in sorted((made / "imagesTr").glob("*_0000.nii.gz")):
        case = image.name[: -len("_0000.nii.gz")]
        shutil.copy(image, data / "images" / f"{case}.nii.gz")
        shutil.copy(made / "labelsTr" / f"{case}.nii.gz", data / "masks" / f"{case}.nii.gz")
    new = make_dataset(root / "scratch", 43, "New", 2, channel="CT", label_names=["blood"], seed=2)

    values = {"nnUNet_raw": env["nnUNet_raw"], "nnUNet_preprocessed": env["nnUNet_preprocessed"],
              "nnUNet_results": env["nnUNet_results"], "DATA": str(data), "ID": "501", "NAME": "MyCT",
              "LABELS": "blood", "CHANNEL": "CT", "CKPT": str(ckpt), "CONF": "3d_fullres",
              "TR": "nnUNetTrainerCPLoRA_r4_1ep_2it", "DEVICE": "cpu", "TEST_IMAGES": str(new / "imagesTr")}
    assert assigned_names(settings) == set(values), "the README's settings changed: give the test a value for each"
    work = root / "work"
    work.mkdir()
    script = "set -euo pipefail\n" + commands + "\n"
    proc = subprocess.run(["bash", "-c", script], cwd=work, env=training_env(env) | values,
                          capture_output=True, encoding="utf-8", errors="replace")
    assert proc.returncode == 0, f"recipe failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"

    model = root / "results" / "Dataset501_MyCT" / f"{values['TR']}__nnUNetPlans_pretrained__3d_fullres"
    assert all((model / f"fold_{k}" / "checkpoint_final.pth").is_file() for k in range(5))
    assert (model / "crossval_results_folds_0_1_2_3_4" / "postprocessing.pkl").is_file()
    cases = ["case000.nii.gz", "case001.nii.gz"]
    for out in ("pred_raw", "pred", "pred_merged"):
        assert sorted(p.name for p in (work / out).glob("*.nii.gz")) == cases, out
    assert all((work / "rebuilt" / f"fold_{k}" / "checkpoint_final.pth").is_file() for k in range(5))
    assert "DEPRECATED" not in proc.stderr
