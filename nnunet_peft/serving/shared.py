"""Shared computation: the encoder stages no adapter changes run once per patch, for every task.

When every adapter leaves the first ``n`` encoder stages as the base's (placements ``dec`` and
``bn_dec``: no adapter layer and no trained tensor there), those stages compute the same skips for
every adapter and fold. Each sliding-window patch (and each of its mirrored copies) then runs them
once; each adapter runs only the remaining stages and its decoder. Everything else is nnU-Net's
sliding window (``nnUNetPredictor``) step for step: the same patches, Gaussian weights, mirrored
copies and their order, half-precision sums per fold and the folds' average. On the CPU the result
is the separate path's bit for bit (tests/test_predict_many.py); on a GPU cuDNN may choose other
kernels for other calls, as it may between two nnU-Net runs.

Only for nnU-Net's U-Nets (``PlainConvUNet``, ``ResidualEncoderUNet``), whose forward is the
encoder's stages in order and the decoder on their outputs; other networks take the separate path.
HyPS adapters in the encoder, and any adapter with encoder placement, leave nothing to share.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import torch
from torch import nn

from nnunet_peft.named_adapters import disable_adapters, get_adapter, set_adapter


def _known_unet(network: nn.Module) -> bool:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
    from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
    from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder

    return type(network) in (PlainConvUNet, ResidualEncoderUNet) and \
        type(getattr(network, "encoder", None)) in (PlainConvEncoder, ResidualEncoder)


def shared_stages(network: nn.Module, adapters: Sequence[str | None]) -> int:
    """How many leading encoder stages every one of ``adapters`` (None: the base) leaves as the base's:
    0 when one of them changes the first stage or the stem, or the network is not one of nnU-Net's U-Nets."""
    if not _known_unet(network):
        return 0
    with disable_adapters(network):  # the stock structure: every module is the base's own
        encoder = network.encoder
        stage_of: dict[int, int] = {}
        if getattr(encoder, "stem", None) is not None:
            stage_of.update({id(m): 0 for m in encoder.stem.modules()})
        for i, stage in enumerate(encoder.stages):
            stage_of.update({id(m): i for m in stage.modules()})
        shared = len(encoder.stages)
        for name in adapters:
            if name is None:
                continue
            adapter = get_adapter(network, name)
            touched = [layer.base_layer for layer in adapter.layers]
            touched += [network.get_submodule(key.rpartition(".")[0]) for key in adapter.owned]
            for module in touched:
                if id(module) in stage_of:
                    shared = min(shared, stage_of[id(module)])
    return shared


class SharedEncoderPredictor:
    """Predicts one preprocessed case for several tasks in one sliding-window pass (see the module docstring).

    ``predictors``: the tasks' ``TaskPredictor`` objects (their adapters, classes, patch size, mirroring
    axes, step size and device), all on the same network; their patch size and mirroring must agree.
    """

    def __init__(self, network: nn.Module, predictors: Sequence, n_shared: int) -> None:
        if n_shared < 1:
            raise ValueError(f"n_shared must be >= 1 (0: nothing to share, use the predictors), got {n_shared}")
        first = predictors[0]
        for p in predictors[1:]:
            if tuple(p.configuration_manager.patch_size) != tuple(first.configuration_manager.patch_size) or \
                    p.tile_step_size != first.tile_step_size or p.use_gaussian != first.use_gaussian or \
                    self._mirror_axes(p) != self._mirror_axes(first):
                raise ValueError("the tasks differ in patch size, step or mirroring; predict them separately")
        self.network, self.predictors, self.n_shared = network, list(predictors), n_shared
        self.keys = [(t, f, adapter) for t, p in enumerate(predictors) for f, adapter in enumerate(p.adapters)]

    @staticmethod
    def _mirror_axes(predictor):
        return tuple(predictor.allowed_mirroring_axes) if predictor.use_mirroring and \
            predictor.allowed_mirroring_axes is not None else None

    @staticmethod
    def can_share(predictors: Sequence) -> bool:
        first = predictors[0]
        return all(tuple(p.configuration_manager.patch_size) == tuple(first.configuration_manager.patch_size) and
                   SharedEncoderPredictor._mirror_axes(p) == SharedEncoderPredictor._mirror_axes(first)
                   for p in predictors)

    # ---------------------------------------------------------------------------- the network
    def _prefix(self, x: torch.Tensor) -> list[torch.Tensor]:
        encoder = self.network.encoder
        if getattr(encoder, "stem", None) is not None:
            x = encoder.stem(x)
        skips = []
        for stage in encoder.stages[:self.n_shared]:
            x = stage(x)
            skips.append(x)
        return skips

    def _suffix(self, skips: list[torch.Tensor]) -> torch.Tensor:
        encoder = self.network.encoder
        skips, x = list(skips), skips[-1]
        for stage in encoder.stages[self.n_shared:]:
            x = stage(x)
            skips.append(x)
        return self.network.decoder(skips)

    def _mirror_and_predict(self, x: torch.Tensor) -> dict:
        # nnUNetPredictor._internal_maybe_mirror_and_predict for every task, the shared stages run once per copy
        first = self.predictors[0]
        mirror_axes = self._mirror_axes(first)
        combinations = []
        if mirror_axes is not None:
            assert max(mirror_axes) <= x.ndim - 3, "mirror_axes does not match the dimension of the input!"
            axes = [m + 2 for m in mirror_axes]
            combinations = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
        predictions: dict = {}
        for flip in [None, *combinations]:
            skips = self._prefix(x if flip is None else torch.flip(x, flip))
            for key in self.keys:
                set_adapter(self.network, key[2])
                out = self._suffix(skips)
                if flip is None:
                    predictions[key] = out
                else:
                    predictions[key] += torch.flip(out, flip)
        if combinations:
            for key in self.keys:
                predictions[key] /= (len(combinations) + 1)
        return predictions

    # ------------------------------------------------------------------------- sliding window
    def _sliding_window(self, data: torch.Tensor, slicers, do_on_device: bool) -> dict:
        # nnUNetPredictor._internal_predict_sliding_window_return_logits, one accumulator per task and fold
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian
        from nnunetv2.utilities.helpers import empty_cache

        first = self.predictors[0]
        device = first.device
        results_device = device if do_on_device else torch.device("cpu")
        empty_cache(device)
        data = data.to(results_device)
        logits = {key: torch.zeros((self.predictors[key[0]].label_manager.num_segmentation_heads, *data.shape[1:]),
                                   dtype=torch.half, device=results_device) for key in self.keys}
        n_predictions = torch.zeros(data.shape[1:], dtype=torch.half, device=results_device)
        gaussian = compute_gaussian(tuple(first.configuration_manager.patch_size), sigma_scale=1. / 8,
                                    value_scaling_factor=10, device=results_device) if first.use_gaussian else 1
        for sl in slicers:
            workon = torch.clone(data[sl][None], memory_format=torch.contiguous_format).to(device)
            predictions = self._mirror_and_predict(workon)
            for key in self.keys:
                prediction = predictions[key][0].to(results_device)
                if first.use_gaussian:
                    prediction *= gaussian
                logits[key][sl] += prediction
            n_predictions[sl[1:]] += gaussian
        for key in self.keys:
            torch.div(logits[key], n_predictions, out=logits[key])
            if torch.any(torch.isinf(logits[key])):
                raise RuntimeError("Encountered inf in predicted array. Aborting... (nnU-Net's check: the Gaussian "
                                   "weights overflowed half precision)")
        return logits

    @torch.inference_mode()
    def predict(self, data: torch.Tensor) -> list[torch.Tensor]:
        """Each task's logits for one preprocessed case, as its ``predict_logits_from_preprocessed_data`` gives them."""
        from acvl_utils.cropping_and_padding.padding import pad_nd_image
        from nnunetv2.configuration import default_num_processes
        from nnunetv2.utilities.helpers import dummy_context, empty_cache

        first = self.predictors[0]
        n_threads = torch.get_num_threads()
        torch.set_num_threads(default_num_processes if default_num_processes < n_threads else n_threads)
        self.network.eval()
        device = first.device
        with torch.autocast(device.type, enabled=True) if device.type == "cuda" else dummy_context():
            assert data.ndim == 4, "input_image must be a 4D np.ndarray or torch.Tensor (c, x, y, z)"
            padded, revert = pad_nd_image(data, first.configuration_manager.patch_size, "constant", {"value": 0},
                                          True, None)
            slicers = first._internal_get_sliding_window_slicers(padded.shape[1:])
            if first.perform_everything_on_device and device != "cpu":
                try:
                    logits = self._sliding_window(padded, slicers, first.perform_everything_on_device)
                except RuntimeError:
                    print("Prediction on device was unsuccessful, probably due to a lack of memory. Moving results "
                          "arrays to CPU")
                    empty_cache(device)
                    logits = self._sliding_window(padded, slicers, False)
            else:
                logits = self._sliding_window(padded, slicers, first.perform_everything_on_device)
            empty_cache(device)
            logits = {key: value[(slice(None), *revert[1:])] for key, value in logits.items()}
        results = []
        for t, predictor in enumerate(self.predictors):  # the folds averaged as predict_logits_from_preprocessed_data
            prediction = None
            for f in range(len(predictor.adapters)):
                if prediction is None:
                    prediction = logits[(t, f, predictor.adapters[f])].to("cpu")
                else:
                    prediction += logits[(t, f, predictor.adapters[f])].to("cpu")
            if len(predictor.adapters) > 1:
                prediction /= len(predictor.adapters)
            results.append(prediction)
        torch.set_num_threads(n_threads)
        return results
