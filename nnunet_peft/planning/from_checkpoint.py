"""Plan and preprocess a target dataset for a pretrained checkpoint (`nnunet-peft plan-from-checkpoint`).

Fine-tuning a pretrained nnU-Net needs the target preprocessed exactly as the network expects its
input: same architecture, patch size, target spacing, axis order and intensity normalisation. The
stock route, ``nnUNetv2_move_plans_between_datasets``, copies those plans from the *source*
dataset's preprocessed folder, which a user holding only a checkpoint does not have. But every
nnU-Net checkpoint carries the full plans (``init_args['plans']``), the configuration it was trained
with and the source ``dataset.json``, so the target's plans can be derived from the checkpoint alone:

1. read plans, configuration and source ``dataset.json`` from the checkpoint;
2. check the target against them. A different label set is fine (the plugin's trainers map the
   segmentation heads by class name). Other input channels are fine too: the first convolution is
   rebuilt by the trainer (``_chzero`` / ``_chrepeat`` / ``_chcopy<i>`` in its name), and each target
   channel is normalised as the checkpoint channel of the same name was (else as nnU-Net plans a
   channel of that name, with the target's statistics);
3. extract the target's fingerprint with nnU-Net's own ``nnUNetv2_extract_fingerprint``;
4. write the target plans: the checkpoint's configuration verbatim (architecture, patch size,
   strides, spacing, normalisation schemes, resampling, batch size) and its axis transposition
   (``transpose_forward/backward``: kernel sizes, strides and the patch are in transposed axis
   order, so a target planned with another transpose would build e.g. a (2, 2, 1) upsampling
   kernel where the checkpoint has (1, 2, 2)), plus the target's reader/writer, names and median
   geometry. Only the chosen configuration is kept, so no
   ``3d_lowres``/cascade entry can refer to a configuration that is not there;
5. copy the target ``dataset.json`` (which ``nnUNetv2_extract_fingerprint`` does not do, so
   ``nnUNetv2_preprocess`` would fail) and run ``nnUNetv2_preprocess`` for that configuration.

Everything is produced in a staging folder inside ``nnUNet_preprocessed`` and moved into place only
when all steps succeeded, the plans file last, so a failure leaves nothing half-written.

Intensity statistics. ``CTNormalization`` clips to the foreground's [0.5, 99.5] percentiles and
z-scores with the foreground mean and std, values nnU-Net takes from the plans. By default they are
the **source's** (from the checkpoint): CT intensities are absolute (HU), and with the source's
statistics a tissue maps to the same normalised value it had in pretraining, which is the input
distribution the frozen pretrained filters were fitted to; the adapters then need not spend their
small capacity on undoing an intensity shift. ``intensity_properties="target"`` uses the target's own
statistics instead, which is what nnU-Net does when training from scratch; choose it when the target
foreground lies largely outside the source window (a warning says so) or the channel is not CT.
Schemes that normalise per image (``ZScoreNormalization`` and the rest) ignore these statistics.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from nnunet_peft.errors import StepFailed
from nnunet_peft.planning.staging import move_into_place, nnunet_folder, staged_preprocessing

DEFAULT_PLANS_NAME = "nnUNetPlans_pretrained"
DEFAULT_TRAINER = "nnUNetTrainerCPLoRA"
IntensitySource = Literal["source", "target"]
INTENSITY_SOURCES: tuple[str, ...] = ("source", "target")

# Normalisation schemes that read the plans' foreground intensity statistics; the others compute
# theirs per image. Matched by class name because that is how plans name them.
_SCHEMES_USING_STATISTICS = frozenset({"CTNormalization"})
# Warn when more than this fraction of the target's foreground range falls outside the source
# clipping window: those intensities would all be saturated to the window's edge.
_CLIPPED_RANGE_WARNING = 0.10

_DATASET_NAME = re.compile(r"^Dataset(\d{3})_.+$")


class NnUNetStepFailed(StepFailed):
    """An nnU-Net command run by plan-from-checkpoint exited with an error (its output says why)."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about how its network was planned and trained."""

    path: Path
    plans: dict[str, Any]
    configuration: str
    dataset_json: dict[str, Any]
    trainer_name: str
    network_weights: dict[str, Any]


def read_checkpoint(checkpoint: str | os.PathLike) -> CheckpointInfo:
    """Load an nnU-Net checkpoint (``checkpoint_final.pth`` & co.) and pull out its plans.

    The file is unpickled with ``weights_only=False``, as nnU-Net itself does for these files:
    only load checkpoints you trust.
    """
    import torch

    path = Path(checkpoint).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass an nnU-Net checkpoint such as "
                                f"nnUNet_results/DatasetNNN_Name/TRAINER__PLANS__CONFIG/fold_0/checkpoint_final.pth")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a file that is no checkpoint
        raise ValueError(f"checkpoint {path} could not be read by torch.load ({type(e).__name__}: {e})") from e
    init_args = saved.get("init_args") if isinstance(saved, dict) else None
    missing = [k for k in ("plans", "configuration", "dataset_json")
               if not isinstance(init_args, dict) or k not in init_args]
    if missing or "network_weights" not in saved:
        raise ValueError(f"checkpoint {path} is not an nnU-Net v2 checkpoint: expected 'network_weights' and "
                         f"init_args with 'plans', 'configuration' and 'dataset_json' "
                         f"(missing: {', '.join(missing) or 'network_weights'}). nnU-Net writes these in "
                         f"nnUNetTrainer.save_checkpoint.")
    return CheckpointInfo(path=path, plans=init_args["plans"], configuration=str(init_args["configuration"]),
                          dataset_json=init_args["dataset_json"],
                          trainer_name=str(saved.get("trainer_name", "unknown")),
                          network_weights=saved["network_weights"])


def resolve_dataset(raw_folder: Path, dataset: str | int) -> tuple[int, str]:
    """Map a dataset id (``5``, ``"005"``) or name (``Dataset005_Prostate``) to (id, name) in ``raw_folder``."""
    text = str(dataset).strip()
    if text.isdigit():
        dataset_id = int(text)
        matches = sorted(p.name for p in raw_folder.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir())
        if not matches:
            raise FileNotFoundError(f"no folder Dataset{dataset_id:03d}_* in nnUNet_raw ({raw_folder}); "
                                    f"convert the target dataset to nnU-Net's raw layout first")
        if len(matches) > 1:
            raise ValueError(f"dataset id {dataset_id} is ambiguous in {raw_folder}: {', '.join(matches)}; "
                             f"pass the full dataset name")
        return dataset_id, matches[0]
    match = _DATASET_NAME.match(text)
    if match is None:
        raise ValueError(f"target dataset {text!r} is neither an id (e.g. 5) nor a name like Dataset005_Name")
    if not (raw_folder / text).is_dir():
        raise FileNotFoundError(f"dataset folder {raw_folder / text} does not exist")
    return int(match.group(1)), text


def _channel_names(dataset_json: dict[str, Any]) -> dict[str, str]:
    # 'modality' is the nnU-Net v1 spelling that v2 still accepts
    names = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(names, dict) or not names:
        raise ValueError("dataset.json has no 'channel_names'")
    return {str(k): str(v) for k, v in names.items()}


def _channel_list(dataset_json: dict[str, Any]) -> list[str]:
    names = _channel_names(dataset_json)
    return [names[k] for k in sorted(names, key=int)]


def check_compatibility(source_dataset_json: dict[str, Any], target_dataset_json: dict[str, Any],
                        checkpoint: Path, target_dataset_json_path: Path) -> list[str]:
    """Raise if the target's dataset.json is unusable; return notes for anything that differs from the checkpoint's."""
    source_channels = _channel_names(source_dataset_json)
    try:
        target_channels = _channel_names(target_dataset_json)
    except ValueError as e:
        raise ValueError(f"{target_dataset_json_path}: {e}") from None
    notes = []
    if len(source_channels) != len(target_channels):
        notes.append(
            f"channel count differs: checkpoint {checkpoint} was trained on {len(source_channels)} input channel(s) "
            f"{source_channels}, target {target_dataset_json_path} has {len(target_channels)} {target_channels}. "
            f"Train with a trainer name ending in _chzero, _chrepeat or _chcopy<i> (how the first convolution is "
            f"rebuilt; docs/pretrained_checkpoints.md, \"Other input channels\"). Each target channel is normalised "
            f"as the checkpoint channel of the same name, or as nnU-Net plans a new channel.")
        source_channels = {}  # no per-position comparison
    for key in sorted(source_channels, key=int):
        source_name, target_name = source_channels[key], target_channels.get(key)
        if target_name is None or source_name.casefold() != target_name.casefold():
            notes.append(f"WARNING: channel {key} is {target_name!r} in the target but {source_name!r} in the "
                         f"checkpoint; it is normalised the checkpoint's way. Check that the modalities "
                         f"really correspond.")
    source_labels, target_labels = source_dataset_json.get("labels", {}), target_dataset_json.get("labels", {})
    if list(source_labels) != list(target_labels):
        notes.append(f"labels: checkpoint has {len(source_labels)} ({', '.join(map(str, source_labels))}), target "
                     f"{len(target_labels)} ({', '.join(map(str, target_labels))}). Fine: the trainer maps the "
                     f"segmentation heads (decoder.seg_layers) by class name; classes new to the target start "
                     f"below the shared ones (NNUNET_PEFT_LABEL_MAP=target=checkpoint pairs renamed classes).")
    return notes


def _median_resampled_shape(fingerprint: dict[str, Any], transpose_forward: list[int],
                            spacing: list[float]) -> list[float]:
    """Median target image shape after resampling to ``spacing``, in transposed axis order, as the planner computes it.

    ``spacing`` has 2 entries for a 2d configuration: only the in-plane axes are resampled then.
    """
    import numpy as np

    shapes = []
    for case_spacing, case_shape in zip(fingerprint["spacings"], fingerprint["shapes_after_crop"]):
        old_spacing = np.asarray(case_spacing, dtype=float)[transpose_forward]
        new_spacing = old_spacing.copy()
        new_spacing[-len(spacing):] = spacing
        shapes.append(np.round(np.asarray(case_shape, dtype=float)[transpose_forward] * old_spacing / new_spacing))
    return [float(v) for v in np.median(shapes, axis=0)[-len(spacing):]]


def _clipping_warnings(source_props: dict[str, Any], target_props: dict[str, Any],
                       schemes: list[str]) -> list[str]:
    warnings = []
    for channel, scheme in enumerate(schemes):
        if scheme not in _SCHEMES_USING_STATISTICS:
            continue
        src, tgt = source_props[str(channel)], target_props[str(channel)]
        low, high = src["percentile_00_5"], src["percentile_99_5"]
        t_low, t_high = tgt["percentile_00_5"], tgt["percentile_99_5"]
        width = max(t_high - t_low, 1e-8)
        outside = max(0.0, low - t_low) + max(0.0, t_high - high)
        if outside / width > _CLIPPED_RANGE_WARNING:
            warnings.append(
                f"WARNING: channel {channel}: {outside / width:.0%} of the target foreground range "
                f"[{t_low:.1f}, {t_high:.1f}] lies outside the checkpoint's clipping window [{low:.1f}, {high:.1f}] "
                f"and will be saturated. If that contrast matters, rerun with --intensity-properties target.")
    return warnings


def build_target_plans(source_plans: dict[str, Any], configuration: str, target_dataset_name: str,
                       plans_name: str, target_fingerprint: dict[str, Any], image_reader_writer: str,
                       intensity_properties: IntensitySource = "source",
                       channels: tuple[list[str], list[str]] | None = None) -> dict[str, Any]:
    """Target plans that make nnU-Net build and feed exactly the checkpoint's network. Pure function.

    Kept from the source: the configuration (architecture, patch size, strides, spacing,
    normalisation, resampling, batch size), ``transpose_forward/backward`` (the patch and kernel
    axes are in transposed order), planner and label-manager names. From the target: names,
    reader/writer, median geometry (informative only) and, when asked, the foreground intensity
    statistics. ``channels`` = (checkpoint's channel names, target's): when their counts differ,
    the per-channel entries are rebuilt for the target's channels (``_per_target_channel``).
    """
    if intensity_properties not in INTENSITY_SOURCES:
        raise ValueError(f"intensity_properties must be one of {INTENSITY_SOURCES}, got {intensity_properties!r}")
    configurations = source_plans.get("configurations", {})
    if configuration not in configurations:
        raise ValueError(f"configuration {configuration!r} is not in the checkpoint's plans; "
                         f"available: {', '.join(configurations)}")
    # Resolve 'inherits_from' exactly as nnU-Net does, so the kept configuration stands alone
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    config = PlansManager(deepcopy(source_plans))._internal_resolve_configuration_inheritance(configuration)
    if config.get("previous_stage") is not None:
        raise ValueError(f"configuration {configuration!r} is a cascade stage: its network also takes the "
                         f"predictions of {config['previous_stage']!r} as input. Fine-tune from a 3d_fullres "
                         f"(or 3d_lowres / 2d) checkpoint instead.")
    for key in ("inherits_from", "next_stage", "previous_stage"):
        config.pop(key, None)
    config["data_identifier"] = f"{plans_name}_{configuration}"

    transpose_forward = [int(i) for i in source_plans["transpose_forward"]]
    config["median_image_size_in_voxels"] = _median_resampled_shape(target_fingerprint, transpose_forward,
                                                                     list(config["spacing"]))

    import numpy as np

    source_props = source_plans.get("foreground_intensity_properties_per_channel",
                                    source_plans.get("foreground_intensity_properties_by_modality"))
    target_props = target_fingerprint["foreground_intensity_properties_per_channel"]
    chosen = deepcopy(source_props if intensity_properties == "source" else target_props)
    if channels is not None and len(channels[0]) != len(channels[1]):
        if source_props is None or len(source_props) != len(config["normalization_schemes"]):
            raise ValueError("the checkpoint's plans hold no intensity statistics for each of its channels")
        chosen = _per_target_channel(config, source_props, target_fingerprint, intensity_properties, *channels)
    elif chosen is None or len(chosen) != len(config["normalization_schemes"]):
        raise ValueError(f"the checkpoint's plans hold intensity statistics for "
                         f"{0 if source_props is None else len(source_props)} channel(s) but its configuration "
                         f"normalises {len(config['normalization_schemes'])}; the plans are inconsistent")

    return {
        "dataset_name": target_dataset_name,
        "plans_name": plans_name,
        "original_median_spacing_after_transp":
            [float(v) for v in np.median(target_fingerprint["spacings"], axis=0)[transpose_forward]],
        "original_median_shape_after_transp":
            [int(round(v)) for v in np.median(target_fingerprint["shapes_after_crop"], axis=0)[transpose_forward]],
        "image_reader_writer": image_reader_writer,
        "transpose_forward": transpose_forward,
        "transpose_backward": [int(i) for i in source_plans["transpose_backward"]],
        "configurations": {configuration: config},
        "experiment_planner_used": source_plans.get("experiment_planner_used", "ExperimentPlanner"),
        "label_manager": source_plans.get("label_manager", "LabelManager"),
        "foreground_intensity_properties_per_channel": chosen,
        # provenance; nnU-Net ignores keys it does not know
        "pretrained_from": {
            "source_dataset_name": source_plans.get("dataset_name"),
            "source_plans_name": source_plans.get("plans_name"),
            "configuration": configuration,
            "intensity_properties": intensity_properties,
        },
    }


def _per_target_channel(config: dict[str, Any], source_props: dict[str, Any], fingerprint: dict[str, Any],
                        intensity_properties: str, source_names: list[str], target_names: list[str]) -> dict[str, Any]:
    """Normalisation entries for target channels when the channel count differs; returns the statistics.

    A target channel with a checkpoint channel of the same name (case-insensitive) is normalised as
    that channel was (scheme, mask, and its statistics unless ``intensity_properties="target"``); the
    first convolution keeps that channel's kernel. Any other channel is planned as nnU-Net plans it
    (``get_normalization_scheme`` of its name, the nonzero mask when cropping removed over a quarter,
    the target's statistics). Matching is by name only: no position is assumed here, since the trainer
    matches by position only when no name is shared, and then every channel is new for normalisation.
    """
    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import get_normalization_scheme

    folded = {name.casefold(): i for i, name in reversed(list(enumerate(source_names)))}
    schemes, masks, stats = [], [], {}
    crop_small = fingerprint.get("median_relative_size_after_cropping", 1.0) < 3 / 4
    for t, name in enumerate(target_names):
        s = folded.get(name.casefold())
        if s is not None:
            schemes.append(config["normalization_schemes"][s])
            masks.append(bool(config["use_mask_for_norm"][s]))
            stats[str(t)] = deepcopy(source_props[str(s)] if intensity_properties == "source"
                                     else fingerprint["foreground_intensity_properties_per_channel"][str(t)])
        else:
            scheme = get_normalization_scheme(name)
            schemes.append(scheme.__name__)
            masks.append(bool(crop_small and scheme.leaves_pixels_outside_mask_at_zero_if_use_mask_for_norm_is_true))
            stats[str(t)] = deepcopy(fingerprint["foreground_intensity_properties_per_channel"][str(t)])
    config["normalization_schemes"], config["use_mask_for_norm"] = schemes, masks
    return stats


def checkpoint_backbone(trainer_name: str) -> str | None:
    """The backbone token of a checkpoint's trainer (``nnUNetTrainerFinetune_unetr_scratch``: ``unetr``), else None."""
    from nnunet_peft.name_grammar import TrainerNameError, is_plugin_name, parse_trainer_name

    if not is_plugin_name(trainer_name):
        return None
    try:
        return parse_trainer_name(trainer_name).backbone
    except TrainerNameError:
        return None


def check_weights_fit(plans: dict[str, Any], configuration: str, target_dataset_json: dict[str, Any],
                      network_weights: dict[str, Any], checkpoint: Path, backbone: str | None = None) -> None:
    """Fail now, not at epoch 0, if ``-pretrained_weights`` would reject the checkpoint for these plans.

    Builds the network nnU-Net's trainer builds from the plans (on the meta device: shapes only, no
    memory) and applies the same rule as ``nnunetv2.run.load_pretrained_weights``: every key except
    ``.seg_layers.`` must be in the checkpoint with the same shape. ``backbone``: the checkpoint's
    trainer built that transformer backbone (its patch size is in the plans), whose head is skipped.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_peft.architectures import build_network, family_for_token
    from nnunet_peft.placement import HEAD_KEY, head_modules, input_convolution

    plans_manager = PlansManager(plans)
    config = plans_manager.get_configuration(configuration)
    num_outputs = plans_manager.get_label_manager(target_dataset_json).num_segmentation_heads
    # shapes only: nnU-Net's networks on the meta device (no memory); MONAI's SwinUNETR reads tensor values
    # while it builds, so the backbone families build on the CPU
    network = build_network(backbone, plans_manager, config, len(_channel_names(target_dataset_json)), num_outputs,
                            deep_supervision=True, shapes_only=True)
    other_heads = not family_for_token(backbone).nnunet_skips_heads
    heads = tuple(f"{prefix}." for prefix, _ in head_modules(network)) if other_heads else ()

    # the trainer rebuilds the first convolution when the channel counts differ (a ch* token)
    first = {k for k, v in network.state_dict(keep_vars=True).items() if v is input_convolution(network).weight}
    problems = []
    for key, tensor in network.state_dict().items():
        if HEAD_KEY in key or key.startswith(heads):
            continue
        if key in first and key in network_weights and network_weights[key].shape[0] == tensor.shape[0] \
                and network_weights[key].shape[2:] == tensor.shape[2:]:
            continue
        if key not in network_weights:
            problems.append(f"{key} missing")
        elif tuple(network_weights[key].shape) != tuple(tensor.shape):
            problems.append(f"{key} {tuple(network_weights[key].shape)} != {tuple(tensor.shape)}")
    if problems:
        raise ValueError(f"the network built from the checkpoint's plans does not match its weights "
                         f"({len(problems)} tensors, e.g. {'; '.join(problems[:3])}). The checkpoint's trainer "
                         f"probably builds a custom architecture; -pretrained_weights {checkpoint} would fail.")


def train_command(dataset_id: int, configuration: str, plans_name: str, checkpoint: Path,
                  trainer: str = DEFAULT_TRAINER, fold: int | str = 0) -> str:
    """The ``nnUNetv2_train`` call that fine-tunes ``checkpoint`` on the planned target."""
    return (f"nnUNet_extTrainer=$(nnunet-peft trainer-dir) nnUNetv2_train {dataset_id} {configuration} {fold} "
            f"-p {shlex.quote(plans_name)} -tr {trainer} -pretrained_weights {shlex.quote(str(checkpoint))}")


def _run_nnunet(entry_point: str, command_name: str, args: list[str], env: dict[str, str],
                log: Callable[[str], None]) -> None:
    """Run one of nnU-Net's console entry points with this interpreter (so the same nnU-Net), in its own process.

    A subprocess because nnunetv2.paths reads nnUNet_raw/nnUNet_preprocessed once, at import.
    """
    log(f"running: {command_name} {' '.join(args)}")
    code = (f"import sys; sys.argv[0] = {command_name!r}; from nnunetv2.experiment_planning."
            f"plan_and_preprocess_entrypoints import {entry_point}; sys.exit({entry_point}())")
    result = subprocess.run([sys.executable, "-c", code, *args], env=env)
    if result.returncode != 0:
        raise NnUNetStepFailed(f"{command_name} {' '.join(args)} failed with exit code {result.returncode} "
                               f"(its output above says why); nothing was written")


def plan_from_checkpoint(target: str | int, checkpoint: str | os.PathLike, configuration: str | None = None,
                         plans_name: str = DEFAULT_PLANS_NAME, intensity_properties: IntensitySource = "source",
                         num_processes: int | None = None, raw_folder: str | os.PathLike | None = None,
                         preprocessed_folder: str | os.PathLike | None = None, overwrite: bool = False,
                         verify_dataset_integrity: bool = False, trainer: str = DEFAULT_TRAINER,
                         log: Callable[[str], None] = print) -> Path:
    """Write ``nnUNet_preprocessed/<target>/<plans_name>.json`` from ``checkpoint`` and preprocess the target.

    ``configuration`` defaults to the one the checkpoint was trained as (its ``init_args['configuration']``);
    another configuration of its plans is planned with a warning, and only if the checkpoint's weights
    fit its network (``check_weights_fit``). Folders default to the nnU-Net environment variables.
    An existing plans file of that name is replaced when it was made from the same checkpoint with the
    same settings (a rerun), otherwise only with ``overwrite``.
    Returns the plans file; ``log`` receives the report, ending with the ``nnUNetv2_train`` command.
    See the module docstring for ``intensity_properties``.
    """
    if intensity_properties not in INTENSITY_SOURCES:
        raise ValueError(f"intensity_properties must be one of {INTENSITY_SOURCES}, got {intensity_properties!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", plans_name):
        raise ValueError(f"plans name {plans_name!r} must be a plain file name stem (letters, digits, _ . -)")
    num_processes = num_processes if num_processes is not None else min(4, os.cpu_count() or 1)
    if num_processes < 1:
        raise ValueError(f"num_processes must be at least 1, got {num_processes}")
    raw = nnunet_folder(raw_folder, "nnUNet_raw")
    preprocessed = nnunet_folder(preprocessed_folder, "nnUNet_preprocessed")

    dataset_id, dataset_name = resolve_dataset(raw, target)
    target_json_path = raw / dataset_name / "dataset.json"
    if not target_json_path.is_file():
        raise FileNotFoundError(f"{target_json_path} is missing; every nnU-Net raw dataset needs one")
    target_dataset_json = json.loads(target_json_path.read_text(encoding="utf-8"))
    ckpt = read_checkpoint(checkpoint)
    configuration = configuration or ckpt.configuration
    if configuration != ckpt.configuration:
        log(f"WARNING: the checkpoint was trained as {ckpt.configuration!r}; its weights only fit that "
            f"configuration's network, not {configuration!r}")
    notes = check_compatibility(ckpt.dataset_json, target_dataset_json, ckpt.path, target_json_path)

    destination = preprocessed / dataset_name
    plans_path = destination / f"{plans_name}.json"
    provenance = {"source_dataset_name": ckpt.plans.get("dataset_name"),
                  "source_plans_name": ckpt.plans.get("plans_name"), "configuration": configuration,
                  "intensity_properties": intensity_properties, "checkpoint": str(ckpt.path)}
    if plans_path.is_file() and not overwrite:
        # same checkpoint and settings: a rerun (e.g. after adding cases) that refreshes its own output
        existing = json.loads(plans_path.read_text(encoding="utf-8")).get("pretrained_from")
        if existing != provenance:
            raise FileExistsError(f"{plans_path} exists and was not made from this checkpoint with these settings "
                                  f"(it records {existing}); pass --overwrite to replace it or choose another "
                                  f"--plans-name")
    with staged_preprocessing(raw, preprocessed, dataset_name, "plan-from-checkpoint") as (staged, env):
        fp_args = ["-d", str(dataset_id), "-np", str(num_processes), "--clean"]
        _run_nnunet("extract_fingerprint_entry", "nnUNetv2_extract_fingerprint",
                    fp_args + (["--verify_dataset_integrity"] if verify_dataset_integrity else []), env, log)
        fingerprint = json.loads((staged / "dataset_fingerprint.json").read_text(encoding="utf-8"))

        from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

        cases = get_filenames_of_train_images_and_targets(str(raw / dataset_name), target_dataset_json)
        example_image = next(iter(cases.values()))["images"][0]
        reader_writer = determine_reader_writer_from_dataset_json(
            target_dataset_json, example_image, allow_nonmatching_filename=True, verbose=False).__name__

        plans = build_target_plans(ckpt.plans, configuration, dataset_name, plans_name, fingerprint,
                                   reader_writer, intensity_properties,
                                   channels=(_channel_list(ckpt.dataset_json), _channel_list(target_dataset_json)))
        plans["pretrained_from"] = provenance  # adds the checkpoint path, which build_target_plans does not know
        backbone = checkpoint_backbone(ckpt.trainer_name)
        check_weights_fit(plans, configuration, target_dataset_json, ckpt.network_weights, ckpt.path, backbone)

        (staged / f"{plans_name}.json").write_text(json.dumps(plans, indent=4), encoding="utf-8")
        shutil.copyfile(target_json_path, staged / "dataset.json")
        _run_nnunet("preprocess_entry", "nnUNetv2_preprocess",
                    ["-d", str(dataset_id), "-plans_name", plans_name, "-c", configuration,
                     "-np", str(num_processes)], env, log)
        move_into_place(staged, destination, plans_path.name)

    config = plans["configurations"][configuration]
    log(f"checkpoint: {ckpt.path} (trainer {ckpt.trainer_name}, dataset {ckpt.plans.get('dataset_name')}, "
        f"configuration {ckpt.configuration})")
    from nnunet_peft.architectures import family_for_token

    family = family_for_token(backbone)
    architecture = (config['architecture']['network_class_name'].rsplit('.', 1)[-1] if family.nnunet_builds
                    else f"the {backbone} backbone (from the trainer name {ckpt.trainer_name})")
    log(f"kept from the checkpoint: {architecture}, patch size "
        f"{config['patch_size']}, spacing {config['spacing']} (target median "
        f"{[round(v, 3) for v in plans['original_median_spacing_after_transp']]}), normalisation {config['normalization_schemes']}, "
        f"batch size {config['batch_size']}; only configuration {configuration} is planned")
    if any(s in _SCHEMES_USING_STATISTICS for s in config["normalization_schemes"]):
        if intensity_properties == "source":
            log("intensity statistics: the checkpoint's, so each intensity maps to the normalised value the "
                "pretrained network saw in pretraining (right for CT in HU)")
            notes += _clipping_warnings(plans["foreground_intensity_properties_per_channel"],
                                        fingerprint["foreground_intensity_properties_per_channel"],
                                        config["normalization_schemes"])
        else:
            log("intensity statistics: the target's own (as nnU-Net would plan it from scratch); the network's "
                "input distribution shifts from pretraining, which the fine-tuning must absorb")
    for note in notes:
        log(note)
    log(f"plans: {plans_path}; preprocessed data: {destination / config['data_identifier']}")
    log("next, fine-tune (any fold; any nnUNetTrainer<Method> of nnunet-peft):")
    if len(_channel_names(ckpt.dataset_json)) != len(_channel_names(target_dataset_json)) and "_ch" not in trainer \
            and family.adapts_input_channels:
        trainer += "_chzero"  # other input channels: the trainer must be told how to rebuild the first convolution
    if not family.nnunet_builds and checkpoint_backbone(trainer) != backbone:
        trainer += f"_{backbone}"  # the name builds the network: it must be the checkpoint's backbone
    log("  " + train_command(dataset_id, configuration, plans_name, ckpt.path, trainer))
    return plans_path
