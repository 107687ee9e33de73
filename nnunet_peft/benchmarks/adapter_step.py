"""Speed and memory of the adapter methods against full fine-tuning, on a realistic nnU-Net.

Builds the default nnU-Net ``3d_fullres`` PlainConvUNet (features 32, 64, ... capped at 320,
kernels 3, strides 1, 2, 2, ..., two convolutions per stage, InstanceNorm, LeakyReLU, deep
supervision), or with ``--network unetr|swinunetr|primus`` a transformer backbone as the trainers'
backbone tokens build it (``nnunet_peft.architectures``: the papers' sizes, ``--backbone-size small``
or ``--backbone-kwargs`` for a CPU; no deep supervision), and measures, side by side in one process:

* one training step (forward, deep-supervision loss, backward, SGD step with momentum 0.99 and
  Nesterov as nnU-Net uses, over the trainable tensors) for full fine-tuning, for the *frozen floor*
  (everything frozen but the input requires a gradient, so the backward pass still runs through
  every layer: the least any adapter on every convolution can cost), and for every method x
  forward mode (``--modes``) x rank (``--ranks``) x placement (``--placements``);
* the peak memory of a training step (on CUDA ``max_memory_allocated``; on CPU the peak resident
  set (VmHWM) of a fresh subprocess per configuration, since the CPU allocator keeps no statistics);
* the inference time of the merged network (HyPS: parallel part merged, serial part kept) against
  the base network;
* with ``--per-layer``, forward + backward of each distinct layer of the network alone in every
  forward mode, so that a forward mode can be chosen per layer shape (``per_layer``: timed as
  ``forward_mode="auto"`` times it when training starts, ``nnunet_peft.mode_tuning``).

Each (rank, placement) is one block, timed interleaved step by step with its own full fine-tuning
and frozen floor, the order rotated every repeat so that drift in a shared machine's load and the
allocator state one setting leaves to the next hit all settings alike. The report starts with the
measurement's method (what a step contains, warm-up and timed steps, statistic, optimiser, threads,
device, dtype / AMP) so that a table never travels without it. ``scripts/benchmark_adapters.py`` is
this module's entry point (``python -m nnunet_peft.benchmarks.adapter_step`` is the same). Usage::

    python scripts/benchmark_adapters.py --out benchmark.md                   # CPU: 5 stages, 2 x 64^3
    python scripts/benchmark_adapters.py --device cuda --out benchmark.md     # CUDA: AMP, 6 stages, 2 x 128^3
    python scripts/benchmark_adapters.py --stages 5 --patch 48 --ranks 8 32 --placements all decoder \\
        --warmup 3 --repeats 7 --per-layer --out table.md                      # docs/results/speed_and_memory.md
    python scripts/benchmark_adapters.py --network unetr --device cuda --patch 96 --modes default \\
        --ranks 8 --warmup 3 --repeats 7 --out unetr.md                        # UNETR of the LoRA-PT paper
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nnunet_peft import METHODS, PLACEMENTS, PeftConfig, configure_finetuning, count_parameters, inject_adapters, merge_adapters
from nnunet_peft.architectures import BACKBONES, build_backbone, patch_size_problem
from nnunet_peft.benchmarks.per_layer import per_layer_report
from nnunet_peft.benchmarks.step_memory import cuda_peak_bytes, print_peak, proc_status_kib, subprocess_peak_bytes
from nnunet_peft.config import AUTO_MODE
from nnunet_peft.injection import LAYER_CLASSES, adapter_layers
from nnunet_peft.mode_tuning import choose_forward_modes, seconds

MODULE = "nnunet_peft.benchmarks.adapter_step"  # what the CPU memory probe runs with python -m
PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]


ALL = "all"  # the placement label of encoder + bottleneck + decoder
NETWORKS = ("unet", "unetr", "swinunetr", "primus")
# ``--backbone-size small``: a few million parameters, so that a CPU runs a step in seconds at 64^3
# (the papers' sizes are the defaults, as for the trainers' backbone tokens)
SMALL_BACKBONES = {
    "unetr": {"hidden_size": 192, "mlp_dim": 768, "num_heads": 4},
    "swinunetr": {"feature_size": 24},
    "primus": {"embed_dim": 192, "eva_depth": 6, "eva_numheads": 4},
}


def placement_label(placement: tuple[str, ...]) -> str:
    return ALL if set(placement) == set(PLACEMENTS) else "+".join(placement)


def parse_placement(label: str) -> tuple[str, ...]:
    placement = PLACEMENTS if label == ALL else tuple(label.split("+"))
    PeftConfig("lora_c", placement=placement)  # validates, with the config's error message
    return placement


@dataclass(frozen=True)
class Setting:
    """One benchmarked configuration: ``full`` (fine-tuning of the placed stages and heads), ``frozen``
    (the floor) or a method in a forward mode at a rank and placement."""

    kind: str
    mode: str | None = None
    rank: int | None = None
    placement: tuple[str, ...] = PLACEMENTS

    @property
    def method(self) -> str | None:
        return self.kind if self.kind in METHODS else None

    @property
    def name(self) -> str:
        """Unique and parseable (``Setting.parse``): the CPU memory probe rebuilds a setting from it."""
        core = self.kind if self.method is None else f"{self.kind}/{self.mode}/r{self.rank}"
        return f"{core}@{placement_label(self.placement)}"

    @classmethod
    def parse(cls, name: str) -> "Setting":
        core, _, where = name.partition("@")
        parts = core.split("/")
        if len(parts) == 3:
            return cls(parts[0], parts[1], int(parts[2][1:]), parse_placement(where))
        return cls(parts[0], placement=parse_placement(where))

    @property
    def label(self) -> str:
        return self.name


def modes_of(method: str, wanted: list[str]) -> list[str]:
    """The forward modes of ``method`` to time: ``all`` it supports (with ``auto`` where it has a choice),
    its ``default``, or those named."""
    spec = METHODS[method]
    tunable = (AUTO_MODE,) if len(spec.forward_modes) > 1 else ()
    if "all" in wanted:
        return [*spec.forward_modes, *tunable]
    chosen = [m for m in (*spec.forward_modes, *tunable) if m in wanted]
    if "default" in wanted and spec.default_forward_mode not in chosen:
        chosen.append(spec.default_forward_mode)
    return chosen


def blocks(args: argparse.Namespace) -> list[list[Setting]]:
    """The settings, in blocks of one rank and placement that are timed interleaved with full fine-tuning
    and the frozen floor (each block's ratios use its own full fine-tuning time, so that drift between
    blocks cancels); a placement other than ``all`` also times fine-tuning of just those stages."""
    out = []
    for placement in args.placements:
        for rank in args.ranks:
            block = [Setting("full"), Setting("frozen")]
            if set(placement) != set(PLACEMENTS):
                block.append(Setting("full", placement=placement))
            block += [Setting(m, mode, rank, placement) for m in args.methods for mode in modes_of(m, args.modes)]
            out.append(block)
    return out


def arch_kwargs(n_stages: int) -> dict:
    """``arch_kwargs`` of nnU-Net's default 3d_fullres plan for a PlainConvUNet of ``n_stages``."""
    return {
        "n_stages": n_stages,
        "features_per_stage": [min(32 * 2 ** i, 320) for i in range(n_stages)],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * n_stages,
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1),
        "n_conv_per_stage": [2] * n_stages,
        "n_conv_per_stage_decoder": [2] * (n_stages - 1),
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }


def backbone_kwargs(args: argparse.Namespace) -> dict:
    """Constructor overrides of the backbone: ``--backbone-size``'s, then ``--backbone-kwargs``."""
    return {**(SMALL_BACKBONES[args.network] if args.backbone_size == "small" else {}), **args.backbone_kwargs}


def build_network(args: argparse.Namespace, deep_supervision: bool = True) -> nn.Module:
    """The benchmarked network; a backbone has no deep supervision whatever ``deep_supervision`` says."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    torch.manual_seed(0)
    if args.network != "unet":
        return build_backbone(args.network, (args.patch,) * 3, args.in_channels, args.classes, **backbone_kwargs(args))
    return get_network_from_plans(
        PLAIN, arch_kwargs(args.stages), REQUIRES_IMPORT, args.in_channels, args.classes,
        allow_init=True, deep_supervision=deep_supervision,
    )


def make_optimizer(net: nn.Module) -> torch.optim.Optimizer | None:
    """nnU-Net's optimiser (SGD, momentum 0.99, Nesterov, weight decay 3e-5) over the trainable tensors.

    nnU-Net passes every parameter; frozen ones never receive a gradient and SGD skips a tensor whose
    ``grad`` is None, so leaving them out changes no timing, only the optimiser's bookkeeping.
    """
    params = [p for p in net.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5) if params else None


OPTIMIZER_TEXT = "SGD (lr 1e-2, momentum 0.99, Nesterov, weight decay 3e-5, as nnU-Net) over the trainable tensors only"


def prepare(setting: Setting, args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer | None]:
    """The network of ``setting`` on ``device`` with its optimiser (None for the frozen floor)."""
    net = build_network(args)
    if setting.method is None:
        configure_finetuning(net, "finetune" if setting.kind == "full" else "none", placement=setting.placement)
    else:
        inject_adapters(net, PeftConfig(setting.method, rank=setting.rank, forward_mode=setting.mode,
                                        placement=setting.placement))
    net = net.to(device).train()
    if setting.mode == AUTO_MODE:  # as the trainer does before its first step: each layer shape timed here
        choose_forward_modes(net, make_batch(args, device)[0],
                             autocast_dtype=torch.float16 if device.type == "cuda" else None)
    return net, make_optimizer(net)


def make_batch(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    shape = (args.batch, args.in_channels, *([args.patch] * 3))
    x = torch.randn(shape, generator=g).to(device)
    # one target per deep-supervision output, at that output's resolution (a backbone has one output)
    outputs = 1 if args.network != "unet" else args.stages - 1
    targets = [torch.randn((args.batch, args.classes, *([args.patch // 2 ** i] * 3)), generator=g).to(device)
               for i in range(outputs)]
    return x, targets


def ds_weights(n: int) -> list[float]:
    """nnU-Net's deep-supervision weights: halving per level, the lowest output dropped, normalised; one
    output (no deep supervision) has weight 1."""
    if n == 1:
        return [1.0]
    w = [1 / 2 ** i for i in range(n)]
    w[-1] = 0.0
    return [v / sum(w) for v in w]


class Stepper:
    """One training step of a prepared network, with AMP on CUDA as nnU-Net trains."""

    def __init__(self, net: nn.Module, optimizer, device: torch.device, frozen: bool) -> None:
        self.net, self.optimizer, self.device, self.frozen = net, optimizer, device, frozen
        self.amp = device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp and optimizer is not None else None

    def __call__(self, x: torch.Tensor, targets: list[torch.Tensor]) -> None:
        if self.frozen:
            x = x.detach().requires_grad_(True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            outputs = self.net(x)
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            weights = ds_weights(len(outputs))
            loss = sum(w * torch.nn.functional.mse_loss(o.float(), t) for w, o, t in zip(weights, outputs, targets) if w)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self.optimizer is not None:
                self.optimizer.step()
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        x.grad = None


# ------------------------------------------------------------------------------------ memory
def probe_argv(setting: Setting, args: argparse.Namespace) -> list[str]:
    """The command line of this module that measures ``setting``'s CPU peak memory (``memory_probe``)."""
    return ["--memory-probe", setting.name, "--stages", str(args.stages), "--patch", str(args.patch),
            "--batch", str(args.batch), "--threads", str(args.threads), "--device", "cpu", "--network", args.network,
            "--backbone-size", args.backbone_size, "--backbone-kwargs", json.dumps(args.backbone_kwargs)]


def memory_probe(args: argparse.Namespace) -> None:
    """In a fresh process: build ``--memory-probe``'s setting, run two steps and print the peak resident set
    above the resident set before the network was built (interpreter, torch, inputs)."""
    device = torch.device("cpu")
    setting = Setting.parse(args.memory_probe)
    x, targets = make_batch(args, device)
    baseline = proc_status_kib("VmRSS")  # before the network exists
    net, optimizer = prepare(setting, args, device)
    step = Stepper(net, optimizer, device, frozen=setting.kind == "frozen")
    for _ in range(2):  # the second step holds activations, gradients and momentum at once
        step(x, targets)
    print_peak(baseline)


# --------------------------------------------------------------------------------- inference
def inference_network(setting: Setting, net: nn.Module) -> nn.Module:
    """The deployable network: merged where the method allows, else each layer's parallel part merged."""
    net = copy.deepcopy(net).eval()
    if METHODS[setting.method].mergeable:
        net = merge_adapters(net)
    else:
        for layer in adapter_layers(net):
            layer.merge()
    if hasattr(net, "decoder") and hasattr(net.decoder, "deep_supervision"):
        net.decoder.deep_supervision = False  # nnU-Net predicts without deep supervision
    return net


def time_block(block: list[Setting], args: argparse.Namespace, device: torch.device, x, targets) -> dict:
    """Train-step times (all samples), peak memory, trainable counts and merged-inference times of one block."""
    print(f"building {len(block)} networks ...", file=sys.stderr)
    prepared = {s: prepare(s, args, device) for s in block}
    steppers = {s: Stepper(*prepared[s], device, frozen=s.kind == "frozen") for s in block}
    trainable = {s: count_parameters(prepared[s][0])[0] for s in block}
    tensors = {s: 0 if prepared[s][1] is None else sum(len(g["params"]) for g in prepared[s][1].param_groups)
               for s in block}
    times: dict[Setting, list[float]] = {s: [] for s in block}
    for repeat in range(args.warmup + args.repeats):
        # interleaved, and rotated every repeat so that no setting always runs right after the same one
        shift = repeat % len(block)
        for s in block[shift:] + block[:shift]:
            t = seconds(lambda: steppers[s](x, targets), device)
            if repeat >= args.warmup:
                times[s].append(t)
        print(f"training repeat {repeat + 1}/{args.warmup + args.repeats} done", file=sys.stderr)

    peaks: dict[Setting, int] = {}
    if not args.no_memory:
        for s in block:
            peaks[s] = (cuda_peak_bytes(lambda: steppers[s](x, targets), *prepared[s], device) if device.type == "cuda"
                        else subprocess_peak_bytes(MODULE, probe_argv(s, args)))
            print(f"memory {s.label}: {peaks[s] / 2 ** 20:.0f} MiB", file=sys.stderr)

    # merged inference: one network per method (the forward mode does not survive merging), against the base
    inf_times: dict[object, list[float]] = {}
    if not args.no_inference:
        first = {}
        for s in block:
            if s.method:
                first.setdefault(s.method, s)
        infer = {"base": build_network(args, deep_supervision=False).to(device).eval()}
        infer |= {s: inference_network(s, prepared[s][0]) for s in first.values()}
        del prepared, steppers
        inf_times = {k: [] for k in infer}
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            for repeat in range(args.warmup + args.repeats):
                for key, net in infer.items():
                    t = seconds(lambda: net(x), device)
                    if repeat >= args.warmup:
                        inf_times[key].append(t)
        for s in block:  # every mode of a method shares its merged network's time
            if s.method and s not in inf_times:
                inf_times[s] = inf_times[first[s.method]]
    return {"times": times, "peaks": peaks, "inference": inf_times, "trainable": trainable, "tensors": tensors}


def run(args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    x, targets = make_batch(args, device)
    sections = [method_text(args)]
    for block in blocks(args):
        result = time_block(block, args, device, x, targets)
        sections.append(report_block(block, result, args))
        if args.out:  # what is done so far, in case a later block is interrupted
            args.out.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    if args.per_layer:
        sections.append(per_layer_report(build_network(args).to(device), x, args.per_layer_methods, args.ranks,
                                         warmup=args.warmup, repeats=args.repeats))
    return "\n\n".join(sections)


def method_text(args: argparse.Namespace) -> str:
    """What exactly is measured, printed above the tables so that a table never travels without it."""
    cuda = args.device.startswith("cuda")
    threads = (f"torch threads {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}), "
               f"os.cpu_count() {os.cpu_count()}, CPUs in affinity mask {len(os.sched_getaffinity(0))}, "
               f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    return "\n".join([
        f"Machine: {machine(args)}",
        f"Network: {network_text(args)}, batch {args.batch} x {args.patch}^3.",
        "Method:",
        "- timed: one training step = forward in train mode, nnU-Net's deep-supervision weighting of a loss "
        "(MSE against fixed random targets stands in for Dice + CE), backward, optimiser step, "
        "zero_grad(set_to_none=True); the frozen floor (everything frozen, the input requires a gradient so the "
        "backward still runs through every layer) has no optimiser step"
        + (", under torch.autocast(float16) with a GradScaler, as nnU-Net trains on CUDA; " if cuda else "; float32, no autocast; ")
        + ("torch.cuda.synchronize() around each step." if cuda else "wall clock (time.perf_counter) per step."),
        f"- optimiser: {OPTIMIZER_TEXT}.",
        f"- steps: {args.warmup} warm-up + {args.repeats} timed per setting; settings are interleaved step by step "
        "within a block (one rank and placement, with its own full fine-tuning and frozen floor), the order rotated "
        "every repeat; ratios are medians over the timed steps divided by the block's full fine-tuning median, the "
        "mean ratio and each setting's min-max seconds are shown beside them.",
        f"- threads: {threads}.",
        "- memory: " + ("torch.cuda.max_memory_allocated over one step plus the network's parameters, buffers and "
                        "optimiser state." if cuda else
                        "peak resident set (VmHWM) of a fresh process per setting running two steps, minus its "
                        "resident set before the network is built."),
        "- merged inference: the base network against each method's merged network (HyPS: parallel part merged, "
        "serial part kept), forward without gradients, same steps and statistic.",
    ])


def network_text(args: argparse.Namespace) -> str:
    if args.network == "unet":
        return (f"3d_fullres PlainConvUNet, {args.stages} stages, features "
                f"{arch_kwargs(args.stages)['features_per_stage']}, deep supervision")
    kwargs = {**BACKBONES[args.network].defaults, **backbone_kwargs(args)}
    if not backbone_kwargs(args):
        size = "the papers' configuration"
    else:
        size = " with ".join(([f"--backbone-size {args.backbone_size}"] if args.backbone_size != "paper" else [])
                             + (["--backbone-kwargs"] if args.backbone_kwargs else []))
    return (f"{BACKBONES[args.network].description} ({size}): "
            + ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items())) + "; no deep supervision (one output)")


def report_block(block: list[Setting], result: dict, args: argparse.Namespace) -> str:
    times, peaks, inf_times = result["times"], result["peaks"], result["inference"]
    med = {s: statistics.median(v) for s, v in times.items()}
    mean = {s: statistics.fmean(v) for s, v in times.items()}
    full = next(s for s in block if s.kind == "full" and set(s.placement) == set(PLACEMENTS))
    rank = next((s.rank for s in block if s.rank), None)
    where = placement_label(block[-1].placement)
    inf = {k: statistics.median(v) for k, v in inf_times.items()}
    head = (f"### rank {rank}, adapters on {where}\n\nFull fine-tuning: {med[full]:.3f} s/step (median)"
            + (f", {peaks[full] / 2 ** 20:.0f} MiB peak" if peaks else "")
            + (f"; base inference {inf['base']:.3f} s." if "base" in inf else "."))
    lines = [head, "",
             "| method | forward mode | rank | placement | train step / full FT (median) | mean | s/step min-max "
             "| peak memory / full FT | merged inference / base | trainable params (tensors) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in block:
        if s.method:
            method = s.method
            mode = s.mode + (" (default)" if METHODS[s.method].default_forward_mode == s.mode else "")
        else:
            method = ("full fine-tuning" if set(s.placement) == set(PLACEMENTS) else "fine-tuning")
            method = "frozen floor (input grad only)" if s.kind == "frozen" else method
            mode = "-"
        mem = f"{peaks[s] / peaks[full]:.2f}" if peaks else "n/a"
        merged = f"{inf[s] / inf['base']:.3f}" if s in inf else "-"
        if s.method and not METHODS[s.method].mergeable:
            merged += " (serial kept)"
        lines.append(
            f"| {method} | {mode} | {s.rank or '-'} | {placement_label(s.placement)} | {med[s] / med[full]:.2f} "
            f"| {mean[s] / mean[full]:.2f} | {min(times[s]):.3f}-{max(times[s]):.3f} | {mem} | {merged} "
            f"| {result['trainable'][s]:,} ({result['tensors'][s]}) |")
    faster = []
    for method in args.methods:
        modes = [s for s in block if s.method == method]
        if len(modes) > 1:
            best = min(modes, key=lambda s: med[s])
            default = METHODS[method].default_forward_mode
            faster.append(f"{method}: {best.mode}" + ("" if best.mode == default else f" (config default is {default})"))
    if faster:
        lines += ["", "Faster forward mode per method: " + "; ".join(faster) + "."]
    return "\n".join(lines)


def machine(args: argparse.Namespace) -> str:
    if args.device.startswith("cuda"):
        return (f"{torch.cuda.get_device_name()} (AMP fp16, cudnn.benchmark={torch.backends.cudnn.benchmark}), "
                f"torch {torch.__version__}")
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # the vector ISA torch dispatches to and the oneDNN version decide how fast thin and depthwise
    # convolutions run relative to wide ones, so two CPUs of one name can rank the forward modes differently
    onednn = next((line.split("MKL-DNN", 1)[1].split("(")[0].strip() for line in torch.__config__.show().splitlines()
                   if "MKL-DNN" in line), "n/a")
    return (f"{cpu}, {torch.get_num_threads()} threads, ISA {torch.backends.cpu.get_cpu_capability()}, "
            f"oneDNN {onednn}, float32, torch {torch.__version__}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--network", default="unet", choices=NETWORKS,
                   help="nnU-Net's PlainConvUNet (default) or a transformer backbone (nnunet_peft.architectures)")
    p.add_argument("--backbone-size", default="paper", choices=("paper", "small"),
                   help="backbone sizes: the papers' (default; UNETR hidden 768, 12 heads; SwinUNETR feature size "
                        "48; Primus-S) or small ones a CPU can step through: "
                        + "; ".join(f"{k} {v}" for k, v in SMALL_BACKBONES.items()))
    p.add_argument("--backbone-kwargs", type=json.loads, default={},
                   help="JSON object of backbone constructor arguments over --backbone-size's, "
                        "e.g. '{\"hidden_size\": 96, \"num_heads\": 2}'")
    p.add_argument("--stages", type=int, default=None, help="network stages (default 5 on CPU, 6 on CUDA)")
    p.add_argument("--patch", type=int, default=None, help="cubic patch edge (default 64 on CPU, 128 on CUDA)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--ranks", type=int, nargs="+", default=[8], help="adapter ranks, one block of settings each")
    p.add_argument("--placements", nargs="+", default=[ALL],
                   help=f"'{ALL}' (encoder+bottleneck+decoder) or stages joined by '+', e.g. decoder, one block each")
    p.add_argument("--modes", nargs="+", default=["all"],
                   help="forward modes to time per method: 'all' it supports (default), 'default', or names "
                        "(reconstruct, chain, projected, auto: each layer shape in its fastest, timed when the "
                        "network is built, as the trainer does); a method without any of them is left out")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per setting (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per setting first")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the CPUs this process may run on)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--per-layer", action="store_true",
                   help="also time each distinct layer of the network alone in every forward mode")
    p.add_argument("--per-layer-methods", nargs="+", default=["lora_c", "cp_lora", "dora_c", "cp_dora", "hyps"],
                   choices=list(LAYER_CLASSES), help="methods of the per-layer table")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--no-inference", action="store_true", help="skip the merged-inference measurement")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    p.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)  # internal: one CPU memory probe
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda given but CUDA is not available")
    args.stages = args.stages or (6 if cuda else 5)
    args.patch = args.patch or (128 if cuda else 64)
    if not isinstance(args.backbone_kwargs, dict):
        p.error(f"--backbone-kwargs must be a JSON object, got {args.backbone_kwargs!r}")
    if args.network == "unet":
        if args.backbone_size != "paper" or args.backbone_kwargs:
            p.error("--backbone-size and --backbone-kwargs are for --network unetr, swinunetr or primus")
        if args.stages < 3:
            p.error(f"--stages must be >= 3 (deep supervision needs two weighted outputs), got {args.stages}")
        if args.patch % 2 ** (args.stages - 1):
            p.error(f"--patch {args.patch} must be divisible by 2**(stages-1) = {2 ** (args.stages - 1)}")
    else:
        problem = patch_size_problem(args.network, (args.patch,) * 3)
        if problem:
            p.error(f"--patch {args.patch} for --network {args.network}: {problem}")
    if args.repeats < 1 or args.warmup < 0 or any(r < 1 for r in args.ranks):
        p.error("--repeats and --ranks must be >= 1, --warmup >= 0")
    try:
        args.placements = [parse_placement(label) for label in args.placements]
    except ValueError as err:
        p.error(f"--placements: {err}")
    args.methods = [m for m in args.methods if modes_of(m, args.modes)]
    if not args.methods:
        p.error(f"no method supports the forward modes {args.modes}")
    args.threads = args.threads or len(os.sched_getaffinity(0))
    args.in_channels, args.classes = 1, 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        memory_probe(args)
        return 0
    text = run(args)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
