"""The nnUNetTrainer subclass behind every ``nnUNetTrainer<Method>...`` name.

nnU-Net's order of events shapes this class:

1. ``initialize()`` builds the network and the optimiser (and compiles / wraps DDP on CUDA);
2. ``-pretrained_weights`` is loaded by ``run_training.maybe_load_checkpoint`` into that network,
   asserting that every key of the network is in the checkpoint, so it must still be stock then;
3. ``run_training()`` starts with ``on_train_start()``; ``--c`` and ``--val`` call
   ``load_checkpoint()`` instead, whose weights hold the adapters;
4. prediction rebuilds the network with the *static* ``build_network_architecture`` and loads the
   checkpoint strictly, so that method must return the adapted structure.

So the instance builds a stock network (an instance attribute shadows the static builder for
training), and the adapters are created in ``on_train_start`` from the loaded pretrained weights,
or as empty structure in ``load_checkpoint`` before the saved state is loaded into them.

Starting from a checkpoint with other classes or input channels
(``nnunet_peft.class_channel_mapping``): for nnU-Net's loader the stock network is built with the
*checkpoint's* input channel count when it differs (the trainer name's ``ch*`` token says how to
adapt it); ``on_train_start`` then maps the heads to the target's classes, rebuilds the first
convolution for the target's channels, and writes the load report before anything trains. Prediction
builds the target's network directly.

A backbone token (``_unetr``, ``_swinunetr``, ``_primus``; ``nnunet_peft.architectures``) builds that
network instead of the plans' U-Net, both here and in the static builder; what differs is asked of
its family (``family_for_token``). Its patch size constraint is applied to the plans before nnU-Net
sees them (as nnU-Net's own Primus trainers set theirs), so the model folder's plans.json and the
checkpoints' ``init_args`` hold the size that was trained. A family without deep-supervision outputs
turns nnU-Net's off. Heads that do not carry nnU-Net's ``.seg_layers.`` name would be compared by
shape in nnU-Net's loader: for ``-pretrained_weights`` the stock network is then built with the
checkpoint's class count and the heads are rebuilt for the target's classes in ``on_train_start``.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_peft.adapter_io import WEIGHTS_NAME, adapter_state_dict, nnunet_metadata, save_adapter
from nnunet_peft.architectures import Family, family_for_token, plans_with_backbone_patch_size
from nnunet_peft.class_channel_mapping import (Source, adapt_input_conv, channel_names, checkpoint_input_channels,
                                               checkpoint_output_channels, class_summary, label_map_from_env,
                                               map_heads, match_channels, read_source, resize_heads)
from nnunet_peft.injection import adapter_layers, configure_finetuning, inject_adapters
from nnunet_peft.mode_tuning import choose_forward_modes, format_mode_choices
from nnunet_peft.model_folder import ADAPTER_DIR, LOAD_REPORT_NAME, SUMMARY_NAME
from nnunet_peft.name_grammar import TrainerSpec, parse_trainer_name
from nnunet_peft.placement import input_convolution, network_stages
from nnunet_peft.summary import count_parameters, trainable_parameter_table
from nnunet_peft.trainer_network import build_adapted_network, build_stock_network
from nnunet_peft.training.load_report import build_load_report, format_load_report
from nnunet_peft.training.pretrained import check_pretrained_compatible, pretrained_weights_argument


class GroupPolyLRScheduler(PolyLRScheduler):
    """nnU-Net's poly schedule, applied to each parameter group's own initial rate (nnU-Net's sets every
    group to one rate). With one group it is nnU-Net's schedule exactly."""

    def __init__(self, optimizer, initial_lr: float, max_steps: int, exponent: float = 0.9,
                 current_step: int | None = None):
        self.group_initial_lrs = [group["lr"] for group in optimizer.param_groups]
        super().__init__(optimizer, initial_lr, max_steps, exponent, current_step)

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        factor = (1 - current_step / self.max_steps) ** self.exponent
        for group, initial in zip(self.optimizer.param_groups, self.group_initial_lrs):
            group["lr"] = initial * factor
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module inside DDP and torch.compile wrappers."""
    if isinstance(network, DDP):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


class nnUNetTrainerPeft(nnUNetTrainer):
    """Base of the generated trainers; ``spec`` is set per generated class (see ``trainer_class``)."""

    spec: TrainerSpec

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        # before nnU-Net reads the plans: its data loaders, plans.json and init_args then all hold this size
        plans, patch_note = plans_with_backbone_patch_size(plans, configuration, self.spec.backbone)
        super().__init__(plans, configuration, fold, dataset_json, device)
        spec = self.spec
        if not self.network_family.deep_supervision:
            self.enable_deep_supervision = False  # one output: nnU-Net's loss and targets without the wrapper
        if patch_note is not None:
            self.print_to_log_file(patch_note)
        self.num_epochs = spec.epochs
        self.initial_lr = spec.initial_lr
        self.num_iterations_per_epoch = spec.iterations
        # nnU-Net validates 50 batches per 250 training iterations; keep that ratio for short schedules
        self.num_val_iterations_per_epoch = max(1, round(spec.iterations / 5))
        # initialize() must build a stock network for -pretrained_weights to load; the static method
        # (used by prediction) stays the adapted one. An instance attribute shadows it for training only.
        self.build_network_architecture = functools.partial(build_stock_network, spec)
        self._peft_ready = False
        self._compile_after_setup = False
        self._source: Source | None = None  # the -pretrained_weights checkpoint, until on_train_start used it

    @property
    def network_family(self) -> Family:
        """The family this trainer's name builds (its backbone token's, else the plans' network's)."""
        return family_for_token(self.spec.backbone)

    # --------------------------------------------------------------- setup
    def _do_i_compile(self) -> bool:
        # compile once, after the adapters exist: a graph traced before injection would be thrown away
        if not self._peft_ready:
            self._compile_after_setup = super()._do_i_compile()
            return False
        return self._compile_after_setup

    def initialize(self):
        if self.was_initialized:
            return
        pretrained = pretrained_weights_argument()
        if pretrained is not None and self.spec.scratch:
            raise ValueError(f"{self.spec.name} trains from scratch; drop -pretrained_weights or the 'scratch' token")
        if pretrained is not None:
            self._source = read_source(pretrained)
            self.build_network_architecture = self._build_for_checkpoint
        super().initialize()
        if self._source is not None:
            # before nnU-Net's own bare assertion, with an error that says what to do
            check_pretrained_compatible(unwrap(self.network), pretrained, self.plans_manager.dataset_name,
                                        weights=self._source.weights)

    def set_deep_supervision_enabled(self, enabled: bool):
        if self.network_family.deep_supervision:  # otherwise there are no outputs to switch
            super().set_deep_supervision_enabled(enabled)

    def _build_for_checkpoint(self, plans_manager, configuration_manager, num_input_channels: int,
                              num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        """The stock network, with the checkpoint's input channel count if it differs (so nnU-Net can load it)
        and, where nnU-Net's loader would compare the heads (it skips ``.seg_layers.`` ones only), the
        checkpoint's class count."""
        build = functools.partial(build_stock_network, self.spec)
        network = build(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                        enable_deep_supervision)
        family = self.network_family
        if not family.nnunet_skips_heads:
            classes = checkpoint_output_channels(network, self._source.weights)
            if classes is not None and classes != num_output_channels:
                resize_heads(network, classes)
        theirs = checkpoint_input_channels(network, self._source.weights)
        if theirs is None or theirs == num_input_channels:
            return network
        src = channel_names(self._source.dataset_json)
        if not family.adapts_input_channels:  # its ch* tokens are refused (name_grammar.py says why)
            raise ValueError(
                f"the checkpoint {self._source.path} takes {theirs} input channel(s){f' {src}' if src else ''}, but "
                f"{self.plans_manager.dataset_name} has {num_input_channels} {channel_names(self.dataset_json)}; the "
                f"{self.spec.backbone} backbone cannot rebuild its input layers for other channels. Convert the "
                "target with the checkpoint's channels, or fine-tune a U-Net checkpoint.")
        if self.spec.input_channels is None:
            raise ValueError(
                f"the checkpoint {self._source.path} takes {theirs} input channel(s){f' {src}' if src else ''}, but "
                f"{self.plans_manager.dataset_name} has {num_input_channels} {channel_names(self.dataset_json)}. Say how "
                f"to rebuild the first convolution with a trainer-name token: {self.spec.name}_chzero (new channels "
                f"start at zero), {self.spec.name}_chrepeat (summed kernel / channel count) or "
                f"{self.spec.name}_chcopy<i> (new channels copy checkpoint channel i).")
        return build(plans_manager, configuration_manager, theirs, num_output_channels, enable_deep_supervision)

    def _setup_peft(self, from_checkpoint: bool) -> None:
        """Turn the stock network into this trainer's (adapters / freezing), then rebuild the optimiser."""
        if self._peft_ready:
            return
        network = unwrap(self.network)
        spec = self.spec
        source = None if from_checkpoint else self._source
        self._source = None  # the checkpoint's tensors are not needed after this
        stock_ids = {id(v) for v in network.state_dict(keep_vars=True).values()}
        statuses: dict[int, tuple[str, str]] = {}
        classes, channels = class_summary(None, {}), None
        if source is not None:
            # a backbone built with the checkpoint's class count gets fresh heads of the target's first
            stock_ids.update(resize_heads(network, self.label_manager.num_segmentation_heads))
            label_map = label_map_from_env()
            statuses.update(map_heads(network, source, self.dataset_json, label_map))
            classes = class_summary(source, self.dataset_json, label_map)
            if spec.input_channels is not None:
                channels = self._adapt_input_channels(network, source, statuses, stock_ids)
        elif not from_checkpoint and not spec.scratch:
            self.print_to_log_file(f"WARNING: {spec.name} is meant to start from -pretrained_weights; none were given, "
                                   "so it adapts a randomly initialised network.")
        if spec.peft_method is not None:
            inject_adapters(network, spec.peft_config(), init_weights=not from_checkpoint)
        else:
            configure_finetuning(network, spec.baseline, spec.placement, input_conv=spec.input_channels is not None)
        if not from_checkpoint:
            if source is not None:
                default = ("loaded", "same name and shape in the checkpoint")
            else:
                default = ("re-initialised", "no -pretrained_weights: nnU-Net's random initialisation")
            report = build_load_report(
                network, statuses, stock_ids, source=None if source is None else str(source.path), default=default,
                adapter_reason=f"new {spec.peft_method or spec.method} adapter tensor; the update is zero at step 0",
                classes=classes, channels=channels)
            self.print_to_log_file(format_load_report(report), add_timestamp=False)
            if self.local_rank == 0:
                folder = Path(self.output_folder)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / LOAD_REPORT_NAME).write_text(json.dumps(report, indent=1), encoding="utf-8")
        self._peft_ready = True
        self.network = network
        if self._do_i_compile():
            self.print_to_log_file('Using torch.compile...')
            self.network = torch.compile(self.network)
        if self.is_ddp:
            # frozen before wrapping: DDP registers hooks only for parameters that require grad
            self.network = DDP(self.network, device_ids=[self.local_rank])
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        self.print_to_log_file(f"{spec.name}: trainable parameters per stage\n{trainable_parameter_table(network)}",
                               add_timestamp=False)

    def _adapt_input_channels(self, network: nn.Module, source: Source, statuses: dict, stock_ids: set) -> dict:
        """Rebuild the first convolution for the target's channels (``spec.input_channels``); its report entry."""
        spec = self.spec
        conv = input_convolution(network)
        n_source = conv.weight.shape[1]
        theirs = channel_names(source.dataset_json)
        theirs = theirs if theirs is not None and len(theirs) == n_source else None
        ours = channel_names(self.dataset_json)
        sources, how = match_channels(theirs, ours, n_source)
        reason = adapt_input_conv(conv, spec.input_channels, sources, spec.copy_channel)
        if spec.input_channels == "copy" and theirs is not None:
            reason += f" (checkpoint channel {spec.copy_channel} is {theirs[spec.copy_channel]!r})"
        if spec.input_channels != "repeat":
            reason += f"; matched {how}"
        if conv.weight.shape[1] != self.num_input_channels:
            raise ValueError(f"the first convolution has {conv.weight.shape[1]} input channels after adaptation, "
                             f"the dataset {self.num_input_channels}")
        statuses[id(conv.weight)] = ("mapped", reason)
        stock_ids.add(id(conv.weight))
        return {"token": spec.input_channel_token, "mode": spec.input_channels, "checkpoint": theirs,
                "target": ours, "sources": sources, "matched": how,
                "text": reason + ("" if spec.baseline == "none" else
                                  f"; the first convolution trains fully under {spec.method}")}

    def configure_optimizers(self):
        params = [p for p in self.network.parameters() if p.requires_grad]
        if not params:  # NoFinetune: nothing trains, but nnU-Net still wants an optimiser to checkpoint
            params = [nn.Parameter(torch.zeros(1, device=self.device))]
        groups = [{"params": params, "lr": self.initial_lr}]
        if self._peft_ready and self.spec.train_decoder:
            # ftdec: the decoder's full weights at Finetune's rate, the adapters (and heads) at the adapters'
            full = {id(p) for stage in network_stages(unwrap(self.network)) if stage.placement == "decoder"
                    for module in stage.modules for p in module.parameters() if p.requires_grad}
            groups = [{"params": [p for p in params if id(p) not in full], "lr": self.initial_lr},
                      {"params": [p for p in params if id(p) in full], "lr": self.spec.full_lr}]
        optimizer = torch.optim.SGD(groups, self.initial_lr, weight_decay=self.weight_decay,
                                    momentum=0.99, nesterov=True)
        # max(1, ...): the poly schedule divides by the number of epochs, which is 0 for NoFinetune
        return optimizer, GroupPolyLRScheduler(optimizer, self.initial_lr, max(1, self.num_epochs))

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        self._setup_peft(from_checkpoint=False)
        self._choose_forward_modes()
        super().on_train_start()

    def _choose_forward_modes(self) -> None:
        """Time the ``forward_mode="auto"`` layers at this training's batch and patch on its device, once.
        After compile wrapping and DDP is fine: both trace or hook at the first step, and the modes compute
        the same gradients (so ranks that choose differently still average the same quantity)."""
        network = unwrap(self.network)
        if not any(layer.tunable_modes for layer in adapter_layers(network)):
            return
        example = torch.randn((self.batch_size, self.num_input_channels, *self.configuration_manager.patch_size),
                              device=self.device)
        choices = choose_forward_modes(network, example,
                                       autocast_dtype=torch.float16 if self.device.type == "cuda" else None)
        self.print_to_log_file(format_mode_choices(choices), add_timestamp=False)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not self.was_initialized:
            self.initialize()
        self._setup_peft(from_checkpoint=True)
        super().load_checkpoint(filename_or_checkpoint)

    # -------------------------------------------------------------- output
    def on_train_end(self):
        super().on_train_end()
        if self.local_rank == 0:
            self._write_summary()

    def _write_summary(self) -> None:
        network = unwrap(self.network)
        folder = Path(self.output_folder)
        trainable, total = count_parameters(network)
        if self.spec.peft_method is not None:
            # the base fingerprint is computed by save_adapter; the rest says what the adapter was trained with
            save_adapter(network, folder / ADAPTER_DIR, nnunet_metadata(
                self.__class__.__name__, self.plans_manager.plans, self.dataset_json, self.configuration_name, self.fold))
            adapter_bytes = (folder / ADAPTER_DIR / WEIGHTS_NAME).stat().st_size
        else:  # the baselines' "adapter" is the set of tensors they train
            adapter_bytes = sum(t.numel() * t.element_size() for t in adapter_state_dict(network).values())
        log = self.logger.get_checkpoint()
        log = log.get("local", log)  # MetaLogger nests the local logger's dict
        starts, ends = log.get("epoch_start_timestamps", []), log.get("epoch_end_timestamps", [])
        durations = [e - s for s, e in zip(starts, ends)]
        summary = {
            "trainer_name": self.__class__.__name__,
            "method": self.spec.method,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "adapter_bytes": adapter_bytes,
            "mean_epoch_time_s": float(np.mean(durations)) if durations else None,
            "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None,
        }
        report = folder / LOAD_REPORT_NAME  # written at the start of training (kept across --c)
        if report.is_file():
            summary["load_report"] = json.loads(report.read_text(encoding="utf-8"))
        (folder / SUMMARY_NAME).write_text(json.dumps(summary, indent=2), encoding="utf-8")


_CLASSES: dict[str, type] = {}


def trainer_class(name: str, module: str | None = None) -> type:
    """The trainer class for ``name`` (created once, then cached); raises a ValueError showing the grammar."""
    if name not in _CLASSES:
        spec = parse_trainer_name(name)

        def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                       num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
            return build_adapted_network(spec, plans_manager, configuration_manager, num_input_channels,
                                         num_output_channels, enable_deep_supervision)

        _CLASSES[name] = type(name, (nnUNetTrainerPeft,), {
            "spec": spec,
            "build_network_architecture": staticmethod(build_network_architecture),
            "__module__": module or __name__,
            "__qualname__": name,
            "__doc__": f"{spec.method} trainer generated from its name (placement {spec.placement}).",
        })
    return _CLASSES[name]
