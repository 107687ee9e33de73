"""One base serving K tasks: ``nnunet-peft predict`` with K adapters against K separate nnU-Net predictions.

Builds, in a work folder, a synthetic nnU-Net setup (nothing trains): a stock base checkpoint of a
PlainConvUNet, K adapters per kind (``dec``: CP-LoRA on the decoder only; ``all``: CP-LoRA on every
stage) with their tensors moved off their initialisation, each exported (``export-adapter``) and
applied (``apply-adapter``: the model folder a user would otherwise predict with), and a few cases.
Then, for K = 1, 3, 5 and each kind, side by side in one run:

* separate: K processes, each nnU-Net's predictor on one apply-adapter model folder
  (``nnUNetPredictor.initialize_from_trained_model_folder`` + ``predict_from_files_sequential``: what
  ``nnUNetv2_predict_from_modelfolder`` runs, without its worker pools);
* one: one process running ``nnunet-peft predict``'s ``predict_many`` with the K adapters (the base
  loaded once; for ``dec`` the encoder runs once per patch), and for ``dec`` also with
  ``--no_shared_encoder``, to separate what loading once and what sharing the encoder give.

Time is measured inside each process from before the model is loaded to after the last file is
written (interpreter start and imports excluded: they are the same for both and would flatter the
one-process side at small sizes), and also as the processes' wall time including those. Peak memory
is the peak resident set of the process (``wait4``'s ``ru_maxrss``); the K separate runs are
sequential, so their peak is the largest of them. Every task's segmentations are compared between
the two sides (they must be identical). Storage: one base + K adapter files against K full models
(what K fine-tuned models take; each is the size of the base).

    nice -n 19 python scripts/benchmark_serving.py --out serving.md                 # CPU, a few minutes
    python scripts/benchmark_serving.py --device cuda --stages 6 --features 32 --max-features 320 \\
        --patch 128 128 128 --image 160 192 192 --tta --out serving_cuda.md          # a 3d_fullres-like U-Net
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
CONFIGURATION = "3d_fullres"
PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
KINDS = {"dec": "nnUNetTrainerCPLoRA_dec_r8", "all": "nnUNetTrainerCPLoRA_r8"}
LABELS = {"background": 0, "a": 1, "b": 2}


# ------------------------------------------------------------------------------------ the setup
def plans(stages: int, features: int, max_features: int, patch: list[int]) -> dict:
    kernels = [[3, 3, 3]] * stages
    strides = [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1)
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    stats = {"mean": 0.0, "median": 0.0, "std": 1.0, "min": -5.0, "max": 5.0, "percentile_00_5": -3.0,
             "percentile_99_5": 3.0}
    arch = {
        "n_stages": stages, "features_per_stage": [min(features * 2 ** i, max_features) for i in range(stages)],
        "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": kernels, "strides": strides,
        "n_conv_per_stage": [2] * stages, "n_conv_per_stage_decoder": [2] * (stages - 1), "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": patch, "median_image_size_in_voxels": patch, "spacing": [1.0, 1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resampling, "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
        "architecture": {"network_class_name": PLAIN, "arch_kwargs": arch,
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": False,
    }
    return {"dataset_name": "Dataset500_Base", "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [1, 1, 1],
            "original_median_shape_after_transp": patch, "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {CONFIGURATION: configuration}, "experiment_planner_used": "ExperimentPlanner",
            "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {"0": stats}}


def dataset_json(name: str) -> dict:
    return {"channel_names": {"0": "MRI"}, "labels": LABELS, "numTraining": 10, "file_ending": ".nii.gz",
            "name": name}


def _write_model_folder(folder: Path, the_plans: dict, ds: dict, trainer: str, weights: dict) -> Path:
    import torch

    from nnunet_peft.model_folder import CHECKPOINT, checkpoint_dict

    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(the_plans), encoding="utf-8")
    (folder / "dataset.json").write_text(json.dumps(ds), encoding="utf-8")
    torch.save(checkpoint_dict(weights, trainer, the_plans, ds, CONFIGURATION, 0, None), folder / "fold_0" / CHECKPOINT)
    return folder / "fold_0" / CHECKPOINT


def build_setup(work: Path, args) -> dict:
    """The base, K adapters per kind (exported and applied) and the cases; returns their paths."""
    import numpy as np
    import SimpleITK as sitk
    import torch

    from nnunet_peft.adapter_sharing import apply_adapter, export_adapter
    from nnunet_peft.injection import inject_adapters
    from nnunet_peft.model_folder import build_network
    from nnunet_peft.name_grammar import parse_trainer_name

    the_plans = plans(args.stages, args.features, args.max_features, list(args.patch))
    torch.manual_seed(0)
    base_net = build_network("nnUNetTrainer", the_plans, dataset_json("Dataset500_Base"), CONFIGURATION)
    with torch.no_grad():  # weights that look trained: biases and norm affines off their initialisation
        for name, p in base_net.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape))
    base = _write_model_folder(work / "base_model", the_plans, dataset_json("Dataset500_Base"), "nnUNetTrainer",
                               base_net.state_dict())
    setup = {"base": str(base), "adapters": {}, "applied": {}}
    for kind, trainer in KINDS.items():
        for k in range(max(args.ks)):
            name = f"{kind}{k}"
            net = build_network("nnUNetTrainer", the_plans, dataset_json(name), CONFIGURATION)
            net.load_state_dict(base_net.state_dict())
            inject_adapters(net, parse_trainer_name(trainer).peft_config())
            g = torch.Generator().manual_seed(100 + k)
            with torch.no_grad():
                for p in net.parameters():
                    if p.requires_grad:
                        p.add_(0.05 * torch.randn(p.shape, generator=g))
            model = work / "results" / name / f"{trainer}__nnUNetPlans__{CONFIGURATION}"
            _write_model_folder(model, the_plans, dataset_json(f"Dataset5{10 + k}_{name}"), trainer, net.state_dict())
            export_adapter(model, work / "adapters" / name)
            apply_adapter(work / "adapters" / name, base, work / "applied" / name)
            setup["adapters"].setdefault(kind, []).append(str(work / "adapters" / name))
            setup["applied"].setdefault(kind, []).append(str(work / "applied" / name))
    images = work / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for c in range(args.cases):
        array = rng.normal(0, 1, args.image).astype(np.float32)
        z, y, x = (s // 3 for s in args.image)
        array[z:2 * z, y:2 * y, x:2 * x] += 3.0
        sitk.WriteImage(sitk.GetImageFromArray(array), str(images / f"case{c}_0000.nii.gz"))
    setup["images"] = str(images)
    return setup


# -------------------------------------------------------------------------------- the workers
def worker_separate(model: str, images: str, out: str, device: str, tta: bool) -> dict:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    started = time.perf_counter()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                                perform_everything_on_device=True, device=torch.device(device), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model, use_folds=None)
    Path(out).mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files_sequential(images, out, save_probabilities=False, overwrite=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - started,
            "gpu_peak": torch.cuda.max_memory_allocated() if device == "cuda" else None}


def worker_one(checkpoint: str, adapters: list[str], images: str, out: str, device: str, tta: bool,
               shared: bool) -> dict:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: F401 (as the separate worker)

    from nnunet_peft.serving.predict import predict_many

    started = time.perf_counter()
    summary = predict_many(Path(images), Path(out), Path(checkpoint), [Path(a) for a in adapters], device=device,
                           use_mirroring=tta, shared_encoder=shared, overwrite=True, log=lambda text: None)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - started, "load_s": summary["load_s"], "predict_s": summary["predict_s"],
            "shared_stages": summary["shared_stages"],
            "gpu_peak": torch.cuda.max_memory_allocated() if device == "cuda" else None}


def measure(argv: list[str], env: dict) -> dict:
    """A worker run with its own peak RSS: the children's maximum is monotonic, so each worker is started from a
    fresh intermediate process whose own children maximum is that worker's alone."""
    code = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(json.dumps({'rc': p.returncode, 'out': p.stdout, 'err': p.stderr[-3000:], "
            "'wall': time.perf_counter() - t, "
            "'rss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    proc = subprocess.run([sys.executable, "-c", code, sys.executable, str(HERE), *argv], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {' '.join(argv)} failed: {proc.stderr[-3000:]}")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    if record["rc"] != 0:
        raise RuntimeError(f"worker {' '.join(argv)} failed:\n{record['out'][-2000:]}\n{record['err']}")
    result = json.loads(record["out"].strip().splitlines()[-1])
    result.update(wall=record["wall"], rss_mib=record["rss_kib"] / 1024)
    return result


def same_segmentations(a: Path, b: Path) -> bool:
    import numpy as np
    import SimpleITK as sitk

    files = sorted(p.name for p in a.glob("*.nii.gz"))
    return bool(files) and files == sorted(p.name for p in b.glob("*.nii.gz")) and all(
        np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(a / f))),
                       sitk.GetArrayFromImage(sitk.ReadImage(str(b / f)))) for f in files)


# -------------------------------------------------------------------------------------- report
def _mib(n: float) -> str:
    return f"{n / 2 ** 20:.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=("separate", "one"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--adapters", nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    parser.add_argument("--pred", help=argparse.SUPPRESS)
    parser.add_argument("--no-shared", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 3, 5], help="numbers of tasks (default 1 3 5)")
    parser.add_argument("--kinds", nargs="+", choices=sorted(KINDS), default=["dec", "all"])
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--image", nargs=3, type=int, default=[40, 64, 64], help="case shape (z y x)")
    parser.add_argument("--patch", nargs=3, type=int, default=[32, 48, 48])
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--max-features", type=int, default=64)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process on the CPU (default 1)")
    parser.add_argument("--tta", action="store_true", help="mirroring on (nnU-Net's default; 8x the passes)")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here (markdown)")
    args = parser.parse_args(argv)

    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        if args.worker == "separate":
            result = worker_separate(args.model, args.images, args.pred, args.device, args.tta)
        else:
            result = worker_one(args.checkpoint, args.adapters, args.images, args.pred, args.device, args.tta,
                                not args.no_shared)
        print(json.dumps(result))
        return 0

    from nnunet_peft.adapter_io import WEIGHTS_NAME
    from nnunet_peft.trainer_folder import trainer_environment

    work = args.work or Path(tempfile.mkdtemp(prefix="benchmark_serving."))
    if args.work is not None and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    env = trainer_environment() | {"OMP_NUM_THREADS": str(args.threads), "nnUNet_compile": "false",
                                   "PYTHONWARNINGS": "ignore"}
    common = ["--images", "", "--device", args.device, "--threads", str(args.threads)] + (["--tta"] if args.tta else [])
    started = time.perf_counter()
    try:
        setup = build_setup(work, args)
        common[1] = setup["images"]
        rows, storage = [], []
        base_bytes = Path(setup["base"]).stat().st_size
        for kind in args.kinds:
            for k in sorted(args.ks):
                separate = [measure(["--worker", "separate", "--model", m, "--pred", str(work / "pred" / f"sep_{kind}{k}" / Path(m).name), *common], env)
                            for m in setup["applied"][kind][:k]]
                one_out = work / "pred" / f"one_{kind}{k}"
                one = measure(["--worker", "one", "--checkpoint", setup["base"], "--adapters",
                               *setup["adapters"][kind][:k], "--pred", str(one_out), *common], env)
                unshared = None
                if kind == "dec" and k > 1:
                    unshared = measure(["--worker", "one", "--checkpoint", setup["base"], "--adapters",
                                        *setup["adapters"][kind][:k], "--pred", str(work / "pred" / f"noshare_{kind}{k}"),
                                        "--no-shared", *common], env)
                identical = all(same_segmentations(one_out / Path(m).name,
                                                   work / "pred" / f"sep_{kind}{k}" / Path(m).name)
                                for m in setup["applied"][kind][:k])
                rows.append({"kind": kind, "k": k, "separate": separate, "one": one, "unshared": unshared,
                             "identical": identical})
                print(f"{kind} K={k}: separate {sum(r['seconds'] for r in separate):.1f} s, one "
                      f"{one['seconds']:.1f} s", file=sys.stderr)
        for kind in args.kinds:
            for k in sorted(args.ks):
                adapter_bytes = [sum(f.stat().st_size for f in Path(a).rglob(WEIGHTS_NAME))
                                 for a in setup["adapters"][kind][:k]]
                storage.append((kind, k, base_bytes + sum(adapter_bytes), k * base_bytes, adapter_bytes))
        report = format_report(args, rows, storage, base_bytes, time.perf_counter() - started, setup)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(report)
    if args.out is not None:
        args.out.write_text(report, encoding="utf-8")
    return 0


def format_report(args, rows, storage, base_bytes, total_s, setup) -> str:
    import torch

    from nnunet_peft.model_folder import build_network, read_json

    net = build_network("nnUNetTrainer", read_json(Path(setup["base"]).parents[1] / "plans.json"),
                        dataset_json("x"), CONFIGURATION)
    params = sum(p.numel() for p in net.parameters())
    lines = [
        f"# One base, K tasks: `nnunet-peft predict` against K separate nnU-Net predictions",
        "",
        f"Command: `python scripts/benchmark_serving.py {' '.join(sys.argv[1:])}`",
        "",
        f"Network: PlainConvUNet, {args.stages} stages, features {args.features}..{args.max_features}, "
        f"{params / 1e6:.2f} M parameters, patch {'x'.join(map(str, args.patch))}; {args.cases} case(s) of "
        f"{'x'.join(map(str, args.image))} voxels; mirroring {'on' if args.tta else 'off'}; device {args.device}"
        f"{f', {args.threads} thread(s) per process' if args.device == 'cpu' else ''}; one fold per adapter; "
        f"adapters CP-LoRA r8 (`dec`: decoder only, `all`: every stage). "
        f"Host: {platform.processor() or platform.machine()}, torch {torch.__version__}. Total run {total_s:.0f} s.",
        "",
        "Time: inside each process, from loading the model(s) to the last file written (interpreter start and imports "
        "excluded); the separate runs' times are summed (they run one after another). Wall: the processes' own wall "
        "time, start and imports included. Peak RSS: the largest process's. Identical: every task's segmentations "
        "equal between the two sides.",
        "",
        "| adapters | K | separate: time (s) | one predict: time (s) | ratio | one, encoder not shared: time (s) | "
        "ratio | separate: wall (s) | one: wall (s) | wall ratio | separate: peak RSS (MiB) | one: peak RSS (MiB) | "
        "shared encoder stages | identical |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sep_t = sum(x["seconds"] for x in r["separate"])
        sep_w = sum(x["wall"] for x in r["separate"])
        sep_m = max(x["rss_mib"] for x in r["separate"])
        one = r["one"]
        un = r["unshared"]
        un_t = f"{un['seconds']:.1f}" if un else "-"
        un_r = f"{un['seconds'] / sep_t:.2f}x" if un else "-"
        lines.append(f"| {r['kind']} | {r['k']} | {sep_t:.1f} | {one['seconds']:.1f} | {one['seconds'] / sep_t:.2f}x | "
                     f"{un_t} | {un_r} | {sep_w:.1f} | {one['wall']:.1f} | {one['wall'] / sep_w:.2f}x | {sep_m:.0f} | "
                     f"{one['rss_mib']:.0f} | {one['shared_stages']} of {args.stages} | "
                     f"{'yes' if r['identical'] else 'NO'} |")
    lines += ["", "Storage (one fold per task):", "",
              "| adapters | K | one base + K adapter files (MiB) | K fine-tuned models (MiB) | ratio |",
              "|---|---|---|---|---|"]
    for kind, k, ours, theirs, adapter_bytes in storage:
        lines.append(f"| {kind} | {k} | {_mib(ours)} (base {_mib(base_bytes)} + {k} x {_mib(adapter_bytes[0])}) | "
                     f"{_mib(theirs)} | {ours / theirs:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
