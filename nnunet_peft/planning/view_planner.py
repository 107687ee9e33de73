"""nnU-Net's experiment planner with a fixed axis order: one plans file per 2-D view.

nnU-Net slices a ``2d`` configuration along the first axis after its plans' ``transpose_forward``,
which its planner chooses once per plans file (``ExperimentPlanner.determine_transpose``: the axis of
largest spacing first, so the axial view of thick-slice CT). These subclasses fix it instead, one
per view, and otherwise plan exactly as nnU-Net does (target spacing, patch size, batch size,
resampling, normalisation). Only the ``2d`` configuration is kept: a transposed ``3d_fullres`` would
be the same 3-D network with its axes renamed.

Views are array axes of nnU-Net's reader (SimpleITK: ``(z, y, x)`` for a NIfTI/NRRD/MHA volume):
``axial`` slices along axis 0, ``coronal`` along axis 1, ``sagittal`` along axis 2; the remaining
axes keep their order, as in nnU-Net's own ``determine_transpose``. The names hold for volumes
stored in axial slices, as CT is.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

VIEWS: dict[str, tuple[int, int, int]] = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}
ARCHITECTURES = ("unet", "multiview")
CONFIGURATION = "2d"


def default_plans_name(view: str, architecture: str = "unet") -> str:
    """``nnUNetPlans_axial`` (nnU-Net's 2-D U-Net) or ``nnUNetPlans_multiview_axial`` (the Multiview network)."""
    check_view(view)
    check_architecture(architecture)
    return f"nnUNetPlans_{view}" if architecture == "unet" else f"nnUNetPlans_{architecture}_{view}"


def check_view(view: str) -> str:
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
    return view


def check_architecture(architecture: str) -> str:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
    return architecture


def transpose_pair(view: str) -> tuple[list[int], list[int]]:
    """``(transpose_forward, transpose_backward)`` of a view."""
    forward = list(VIEWS[check_view(view)])
    return forward, [forward.index(i) for i in range(3)]


def view_of_transpose(transpose_forward: Sequence[int]) -> str | None:
    """The view whose slices a plans' ``transpose_forward`` takes (its first axis), or None if it is no view's."""
    forward = tuple(int(i) for i in transpose_forward)
    return next((v for v, t in VIEWS.items() if t == forward), None)


class ViewPlanner(ExperimentPlanner):
    """nnU-Net's planner with the view's ``transpose_forward`` and only the ``2d`` configuration.

    Same constructor as ``ExperimentPlanner`` (``plans_name`` defaults to ``default_plans_name``),
    plus ``architecture``: ``"unet"`` keeps nnU-Net's PlainConvUNet, ``"multiview"`` names the SAH
    laboratory's network (``nnunet_peft.architectures.multiview``) with nnU-Net's planned strides,
    patch and batch size.
    """

    view: ClassVar[str]

    def __init__(self, dataset_name_or_id: str | int, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str | None = None,
                 overwrite_target_spacing: Sequence[float] | None = None, suppress_transpose: bool = False,
                 architecture: str = "unet") -> None:
        if suppress_transpose:
            raise ValueError(f"{type(self).__name__} fixes the transpose of the {self.view} view; "
                             "suppress_transpose would undo it")
        self.architecture = check_architecture(architecture)
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name,
                         plans_name or default_plans_name(self.view, architecture),
                         None if overwrite_target_spacing is None else [float(s) for s in overwrite_target_spacing],
                         suppress_transpose=False)

    def determine_transpose(self) -> tuple[list[int], list[int]]:
        return transpose_pair(self.view)

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier, approximate_n_voxels_dataset,
                                    _cache):
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        if len(spacing) == 2 and self.architecture == "multiview":
            from nnunet_peft.architectures.multiview import multiview_architecture

            # nnU-Net's strides (pooling only along the fine axis while pixels are anisotropic); its patch
            # is a multiple of their product, so every level pools evenly
            plan["architecture"] = multiview_architecture(plan["architecture"]["arch_kwargs"]["strides"])
        return plan

    def save_plans(self, plans: dict) -> None:
        plans["configurations"] = {CONFIGURATION: plans["configurations"][CONFIGURATION]}
        plans["view"] = self.view  # informative; nnU-Net ignores keys it does not know
        super().save_plans(plans)


class AxialViewPlanner(ViewPlanner):
    view = "axial"


class CoronalViewPlanner(ViewPlanner):
    view = "coronal"


class SagittalViewPlanner(ViewPlanner):
    view = "sagittal"


PLANNERS: dict[str, type[ViewPlanner]] = {"axial": AxialViewPlanner, "coronal": CoronalViewPlanner,
                                          "sagittal": SagittalViewPlanner}


def plan_and_preprocess_view(dataset_id: int, view: str, plans_name: str | None = None, architecture: str = "unet",
                             num_processes: int = 2, target_spacing: Sequence[float] | None = None) -> dict:
    """Plan one view and preprocess its ``2d`` configuration with nnU-Net's own preprocessor.

    nnU-Net reads ``nnUNet_raw`` / ``nnUNet_preprocessed`` when it is first imported, so callers that
    change them run this in a fresh process (``nnunet_peft.views.plan_views`` does); the dataset
    fingerprint must exist (``nnUNetv2_extract_fingerprint``).
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset

    planner = PLANNERS[check_view(view)](dataset_id, plans_name=plans_name, architecture=architecture,
                                         overwrite_target_spacing=target_spacing)
    plans = planner.plan_experiment()
    preprocess_dataset(dataset_id, planner.plans_identifier, (CONFIGURATION,), [num_processes],
                       show_progress_bar=False)
    return plans
