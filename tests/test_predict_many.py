"""`nnunet-peft predict` (issue 25): each sub-folder is what apply-adapter + nnU-Net's predictor write; the
base's own task is the base; --combine; refusals. Tiny model folders built directly (nothing trains) and
tiny images: seconds to a minute on a CPU."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from adapter_helpers import perturb_
from networks import pretrained_network
from nnunet_peft.cli import main
from nnunet_peft.adapter_sharing import apply_adapter, export_adapter
from nnunet_peft.trainer_folder import trainer_dir
from nnunet_peft.injection import inject_adapters
from nnunet_peft.model_folder import CHECKPOINT, checkpoint_dict
from nnunet_peft.name_grammar import parse_trainer_name
from test_adapter_sharing import CONFIGURATION, DATASET_JSON, SPEC, tiny_plans

AXES = (0, 1, 2)
TWO_CLASSES = {"background": 0, "tumour": 1}
FOUR_CLASSES = {"background": 0, "liver": 1, "spleen": 2, "kidney": 3}


def plans(name: str = "Dataset077_Tiny") -> dict:
    """tiny_plans with per-image z-scoring (CT normalisation needs the source's statistics)."""
    p = tiny_plans()
    p["dataset_name"] = name
    p["configurations"][CONFIGURATION]["normalization_schemes"] = ["ZScoreNormalization"] * SPEC.in_channels
    stats = {"mean": 0.0, "median": 0.0, "std": 1.0, "min": -5.0, "max": 5.0, "percentile_00_5": -3.0,
             "percentile_99_5": 3.0}  # read by nnU-Net's preprocessor, unused by z-scoring
    p["foreground_intensity_properties_per_channel"] = {str(c): stats for c in range(SPEC.in_channels)}
    return p


def dataset_json(labels: dict) -> dict:
    return {**DATASET_JSON, "labels": labels}


def write_folder(folder: Path, labels: dict, name: str, the_plans: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(the_plans or plans(name)), encoding="utf-8")
    (folder / "dataset.json").write_text(json.dumps(dataset_json(labels)), encoding="utf-8")
    return folder


def base_checkpoint(root: Path, seed: int = 0) -> Path:
    """The base as nnU-Net leaves it, in a model folder of its own (the reference predicts from that)."""
    folder = write_folder(root / f"base_model_{seed}", DATASET_JSON["labels"], "Dataset077_Tiny")
    ckpt = checkpoint_dict(pretrained_network(SPEC, seed=seed).state_dict(), "nnUNetTrainer", plans(), DATASET_JSON,
                           CONFIGURATION, 0, AXES)
    (folder / "fold_0").mkdir()
    torch.save(ckpt, folder / "fold_0" / CHECKPOINT)
    return folder / "fold_0" / CHECKPOINT


def adapter_export(root: Path, name: str, trainer: str, labels: dict, folds=(0,), seed: int = 3,
                   base_seed: int = 0, the_plans: dict | None = None) -> Path:
    """An export-adapter folder ``root/name``: model folder of ``trainer`` with moved adapters and heads for
    ``labels``, trained (as if) from the base of ``base_seed``."""
    task = f"Dataset0{80 + len(name) % 10}_{name}"
    model = write_folder(root / "results" / name / f"{trainer}__nnUNetPlans_pretrained__{CONFIGURATION}", labels,
                         task, the_plans)
    for fold in folds:
        net = pretrained_network(SPEC, seed=base_seed)
        if len(labels) != SPEC.num_classes:
            torch.manual_seed(seed + fold)
            for i, head in enumerate(net.decoder.seg_layers):
                net.decoder.seg_layers[i] = nn.Conv3d(head.in_channels, len(labels), 1)
        inject_adapters(net, parse_trainer_name(trainer).peft_config())
        perturb_([p for p in net.parameters() if p.requires_grad], seed=seed + fold, scale=0.3)
        ckpt = checkpoint_dict(net.state_dict(), trainer, the_plans or plans(task), dataset_json(labels),
                               CONFIGURATION, fold, AXES)
        (model / f"fold_{fold}").mkdir()
        torch.save(ckpt, model / f"fold_{fold}" / CHECKPOINT)
    export_adapter(model, root / name)
    return root / name


def images(folder: Path, cases: int = 2, seed: int = 0) -> Path:
    """Two-channel cases whose spacing differs from the plans' (so nnU-Net resamples them)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for c in range(cases):
        shape = (10 + c, 16, 20)  # two sliding-window patches in-plane
        for channel in range(SPEC.in_channels):
            array = rng.normal(0, 1, shape).astype(np.float32)
            array[3:7, 5:12, 6:15] += 2.0 + channel
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((1.0, 1.0, 1.5))
            sitk.WriteImage(image, str(folder / f"case{c}_{channel:04d}.nii.gz"))
    return folder


def reference(model_folder: Path, inputs: Path, out: Path, folds=None, mirroring: bool = True, step: float = 0.5):
    """What nnUNetv2_predict writes for ``model_folder``: nnU-Net's predictor, in this process."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=step, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=folds)
    out.mkdir(parents=True)
    predictor.predict_from_files_sequential(str(inputs), str(out), save_probabilities=True, overwrite=True)
    return out


def assert_same_predictions(ours: Path, theirs: Path, cases: list[str], probabilities: bool = True) -> None:
    for case in cases:
        a, b = sitk.ReadImage(str(ours / f"{case}.nii.gz")), sitk.ReadImage(str(theirs / f"{case}.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)), case
        assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
        if probabilities:
            p, q = np.load(ours / f"{case}.npz")["probabilities"], np.load(theirs / f"{case}.npz")["probabilities"]
            assert p.shape == q.shape and np.array_equal(p, q), case


def predict(argv, capsys) -> tuple[int, str, str]:
    code = main(["predict", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A base, three adapters (one with two folds, one with other classes, one decoder-only), the cases."""
    root = tmp_path_factory.mktemp("served")
    base = base_checkpoint(root)
    adapters = {
        "siteA": adapter_export(root, "siteA", "nnUNetTrainerCPLoRA_r2_a4", DATASET_JSON["labels"], folds=(0, 1)),
        "tumour": adapter_export(root, "tumour", "nnUNetTrainerLoRAC_dec_r2", TWO_CLASSES, seed=7),
        "organs": adapter_export(root, "organs", "nnUNetTrainerLoRAPT_r2", FOUR_CLASSES, seed=11),
        "lesions": adapter_export(root, "lesions", "nnUNetTrainerHyPS_dec_r2", {"background": 0, "lesion": 1}, seed=13),
        "bndec": adapter_export(root, "bndec", "nnUNetTrainerCPLoRA_bn_dec_r2", FOUR_CLASSES, folds=(0, 1), seed=17),
    }
    return root, base, adapters, images(root / "images")


# The CPU these tests run on is slow and shared: most predictions run without mirroring (8x fewer passes);
# one test keeps nnU-Net's default mirroring, on one case.


def test_each_subfolder_is_what_apply_adapter_and_nnunet_predict_write(served, tmp_path, capsys, monkeypatch):
    root, base, adapters, inputs = served
    monkeypatch.setenv("nnUNet_extTrainer", str(trainer_dir()))
    code, out, err = predict(["-i", inputs, "-o", tmp_path / "out", "--checkpoint", base, "-a", *adapters.values(),
                              "--base", "-device", "cpu", "--save_probabilities", "--disable_tta"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(["base", *adapters])
    for name, folder in adapters.items():
        applied = apply_adapter(folder, base, tmp_path / f"applied_{name}")
        theirs = reference(applied, inputs, tmp_path / f"reference_{name}", mirroring=False)
        assert_same_predictions(tmp_path / "out" / name, theirs, ["case0", "case1"])
        assert json.loads((tmp_path / "out" / name / "dataset.json").read_text(encoding="utf-8")) == json.loads(
            (folder / "dataset.json").read_text(encoding="utf-8"))
    # the base's own task is the base: exactly what its own model folder predicts
    assert_same_predictions(tmp_path / "out" / "base",
                            reference(base.parent.parent, inputs, tmp_path / "ref_base", mirroring=False),
                            ["case0", "case1"])
    # the adapters predict something else than the base (the comparison above is not vacuous)
    a = np.load(tmp_path / "out" / "siteA" / "case0.npz")["probabilities"]
    b = np.load(tmp_path / "out" / "base" / "case0.npz")["probabilities"]
    assert a.shape == b.shape and not np.allclose(a, b, atol=1e-3)


def test_folds_mirroring_and_step_follow_nnunet(served, tmp_path, capsys, monkeypatch):
    root, base, adapters, inputs = served
    monkeypatch.setenv("nnUNet_extTrainer", str(trainer_dir()))
    one_case = tmp_path / "one_case"
    one_case.mkdir()
    for channel in range(SPEC.in_channels):
        (one_case / f"case1_{channel:04d}.nii.gz").symlink_to(inputs / f"case1_{channel:04d}.nii.gz")
    code, out, err = predict(["-i", one_case, "-o", tmp_path / "out", "--checkpoint", base, "-a", adapters["siteA"],
                              "-f", "1", "-step_size", "0.9", "-device", "cpu", "--save_probabilities"], capsys)
    assert code == 0, err
    applied = apply_adapter(adapters["siteA"], base, tmp_path / "applied")
    theirs = reference(applied, one_case, tmp_path / "reference", folds=(1,), step=0.9)  # mirroring: nnU-Net's default
    assert_same_predictions(tmp_path / "out" / "siteA", theirs, ["case1"])
    both = reference(applied, one_case, tmp_path / "both", mirroring=False, step=0.9)
    one = reference(applied, one_case, tmp_path / "one", folds=(1,), mirroring=False, step=0.9)
    assert not np.array_equal(np.load(one / "case1.npz")["probabilities"],
                              np.load(both / "case1.npz")["probabilities"])  # -f 1 is not both folds

    code, out, err = predict(["-i", inputs, "-o", tmp_path / "missing", "--checkpoint", base, "-a",
                              adapters["siteA"], "-f", "3", "-device", "cpu"], capsys)
    assert code == 2 and "fold_3" in err and "fold_0, fold_1" in err and not (tmp_path / "missing").exists()


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_combine_follows_its_rule_and_refuses_colliding_names(served, tmp_path, capsys):
    root, base, adapters, inputs = served
    out = tmp_path / "out"
    code, _, err = predict(["-i", inputs, "-o", out, "--checkpoint", base, "--base", "-a", adapters["tumour"],
                            adapters["organs"], "--combine", "--save_probabilities", "-device", "cpu",
                            "--disable_tta"], capsys)
    assert code == 0, err
    table = json.loads((out / "combined" / "labels.json").read_text(encoding="utf-8"))
    assert table["labels"] == {"background": 0, "blood": 1, "vessel": 2, "tumour": 3, "liver": 4, "spleen": 5,
                               "kidney": 6}
    assert table["sources"]["spleen"] == {"task": "organs", "label": 2} and "highest probability" in table["rule"]
    offsets = {"base": 0, "tumour": 2, "organs": 3}
    claimed_by_several = 0
    for case in ("case0", "case1"):
        combined = _read(out / "combined" / f"{case}.nii.gz")
        best = np.full(combined.shape, -np.inf)
        expected = np.zeros(combined.shape, np.int64)
        claims = np.zeros(combined.shape, np.int64)
        for task in ("base", "tumour", "organs"):  # the rule, written out independently
            seg = _read(out / task / f"{case}.nii.gz").astype(np.int64)
            prob = np.load(out / task / f"{case}.npz")["probabilities"]
            assert np.array_equal(seg, prob.argmax(0))  # the sub-folder holds the task's own argmax
            p = np.take_along_axis(prob, seg[None], 0)[0]
            wins = (seg > 0) & (p > best)
            expected[wins], best[wins] = seg[wins] + offsets[task], p[wins]
            claims += seg > 0
        assert np.array_equal(combined, expected), case
        claimed_by_several += int((claims > 1).sum())
        assert set(np.unique(combined)) - {0} and (combined == 0).any()
    assert claimed_by_several > 0  # the overlap rule was exercised

    # the base and siteA both have 'blood' and 'vessel': refused before anything is predicted
    code, _, err = predict(["-i", inputs, "-o", tmp_path / "clash", "--checkpoint", base, "--base", "-a",
                            adapters["siteA"], "--combine", "-device", "cpu"], capsys)
    assert code == 2 and "'blood'" in err and "siteA" in err and "base" in err and "--combine" in err
    assert not (tmp_path / "clash").exists()


def test_adapters_of_another_base_or_other_plans_are_refused(served, tmp_path, capsys):
    root, base, adapters, inputs = served
    other_base = adapter_export(tmp_path, "otherbase", "nnUNetTrainerLoRAC_dec_r2", TWO_CLASSES, base_seed=1)
    code, _, err = predict(["-i", inputs, "-o", tmp_path / "out", "--checkpoint", base, "-a", adapters["tumour"],
                            other_base, "-device", "cpu"], capsys)
    assert code == 2 and "fingerprint" in err and "--allow-other-base" in err and str(other_base) in err
    assert not (tmp_path / "out").exists()
    code, _, err = predict(["-i", inputs, "-o", tmp_path / "forced", "--checkpoint", base, "-a", other_base,
                            "--allow-other-base", "-device", "cpu", "--disable_tta"], capsys)
    assert code == 0 and "WARNING" in err and "allow_other_base" in err and (tmp_path / "forced" / "otherbase").is_dir()

    spaced = plans()
    spaced["configurations"][CONFIGURATION]["spacing"] = [1.5, 1.0, 1.0]
    elsewhere = adapter_export(tmp_path, "spaced", "nnUNetTrainerLoRAC_dec_r2", TWO_CLASSES, the_plans=spaced)
    code, _, err = predict(["-i", inputs, "-o", tmp_path / "out", "--checkpoint", base, "-a", elsewhere,
                            "-device", "cpu"], capsys)
    assert code == 2 and "spacing: [2.0, 1.0, 1.0] vs [1.5, 1.0, 1.0]" in err and "plan-from-checkpoint" in err

    code, _, err = predict(["-i", inputs, "-o", tmp_path / "out", "--checkpoint", base, "-a", adapters["tumour"],
                            adapters["tumour"], "-device", "cpu"], capsys)
    assert code == 2 and "tumour" in err and "twice" in err


def test_encoder_stages_no_adapter_changes_run_once_and_predict_the_same(served, tmp_path, capsys, monkeypatch):
    from nnunet_peft.model_folder import load_base
    from nnunet_peft.serving.shared import shared_stages
    from nnunet_peft.serving.tasks import load_tasks

    root, base, adapters, inputs = served
    network, tasks, _ = load_tasks(base, [adapters[n] for n in ("tumour", "lesions", "bndec", "siteA")], base=True)
    runs = {t.name: t.adapters for t in tasks}
    assert [shared_stages(network, runs[n]) for n in ("base", "tumour", "lesions", "bndec", "siteA")] == [4, 4, 4, 3, 0]
    assert shared_stages(network, runs["tumour"] + runs["bndec"] + runs["base"]) == 3
    assert shared_stages(load_base(base), [None]) == 4

    one_case = tmp_path / "one_case"
    one_case.mkdir()
    for channel in range(SPEC.in_channels):
        (one_case / f"case0_{channel:04d}.nii.gz").symlink_to(inputs / f"case0_{channel:04d}.nii.gz")
    common = ["-i", one_case, "--checkpoint", base, "--base", "-a", adapters["tumour"], adapters["lesions"],
              adapters["bndec"], "-device", "cpu", "--save_probabilities"]  # mirroring on: every flipped copy shares
    code, _, err = predict([*common, "-o", tmp_path / "shared"], capsys)
    assert code == 0 and "the first 3 of 4 encoder stages" in err, err
    code, _, err = predict([*common, "-o", tmp_path / "separate", "--no_shared_encoder"], capsys)
    assert code == 0 and "shared encoder" not in err, err
    for task in ("base", "tumour", "lesions", "bndec"):
        assert_same_predictions(tmp_path / "shared" / task, tmp_path / "separate" / task, ["case0"])
    monkeypatch.setenv("nnUNet_extTrainer", str(trainer_dir()))
    applied = apply_adapter(adapters["bndec"], base, tmp_path / "applied")
    assert_same_predictions(tmp_path / "shared" / "bndec", reference(applied, one_case, tmp_path / "ref"), ["case0"])


def test_the_shared_stages_and_the_rest_compute_the_whole_network_for_a_residual_encoder():
    """ResidualEncoderUNet runs a stem before its stages: the split must keep it in the shared part."""
    from networks import NET_SPECS, random_input
    from nnunet_peft import PeftConfig
    from nnunet_peft.serving.shared import SharedEncoderPredictor, shared_stages

    spec = NET_SPECS[3]  # ResidualEncoderUNet 3-D
    net = pretrained_network(spec, deep_supervision=False)
    inject_adapters(net, PeftConfig("lora_c", rank=2, placement=("bottleneck", "decoder")), name="bn_dec")
    perturb_([p for p in net.parameters() if p.requires_grad], seed=1)
    net.eval()
    n = shared_stages(net, ["bn_dec"])
    assert n == len(net.encoder.stages) - 1 and net.encoder.stem is not None
    sharer = SharedEncoderPredictor.__new__(SharedEncoderPredictor)
    sharer.network, sharer.n_shared = net, n
    x = random_input(spec, batch=1)
    with torch.no_grad():
        assert torch.equal(sharer._suffix(sharer._prefix(x)), net(x))


def test_a_subfolder_is_what_the_nnunet_command_line_writes(served, tmp_path, capsys):
    """The same comparison against nnUNetv2_predict_from_modelfolder itself (worker processes and all), for one
    adapter: nnU-Net's command line on the apply-adapter model folder."""
    import subprocess

    from nnunet_peft.trainer_folder import trainer_environment

    root, base, adapters, inputs = served
    code, _, err = predict(["-i", inputs, "-o", tmp_path / "out", "--checkpoint", base, "-a", adapters["tumour"],
                            "-device", "cpu", "--disable_tta", "--save_probabilities"], capsys)
    assert code == 0, err
    applied = apply_adapter(adapters["tumour"], base, tmp_path / "applied")
    env = trainer_environment() | {"OMP_NUM_THREADS": "1", "nnUNet_compile": "false", "PYTHONWARNINGS": "ignore",
                                   "nnUNet_raw": str(tmp_path), "nnUNet_preprocessed": str(tmp_path),
                                   "nnUNet_results": str(tmp_path)}
    proc = subprocess.run(["nnUNetv2_predict_from_modelfolder", "-i", str(inputs), "-o", str(tmp_path / "cli"), "-m",
                           str(applied), "-f", "0", "-device", "cpu", "--disable_tta", "--save_probabilities", "-npp", "1",
                           "-nps", "1"], env=env, capture_output=True, encoding="utf-8", errors="replace")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_predictions(tmp_path / "out" / "tumour", tmp_path / "cli", ["case0", "case1"])
