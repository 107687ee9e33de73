"""Speed and memory of the adapter methods against full fine-tuning, on a realistic nnU-Net.

Builds the default nnU-Net ``3d_fullres`` PlainConvUNet (features 32, 64, ... capped at 320,
kernels 3, strides 1, 2, 2, ..., two convolutions per stage, InstanceNorm, LeakyReLU, deep
supervision) and measures, side by side in one process:

* one training step (forward, deep-supervision loss, backward, SGD step with momentum 0.99 and
  Nesterov as nnU-Net uses) for full fine-tuning, for the *frozen floor* (everything frozen but
  the input requires a gradient, so the backward pass still runs through every layer: the least
  any adapter on every convolution can cost), and for every method x forward mode with adapters
  on all three placements;
* the peak memory of a training step (on CUDA ``max_memory_allocated``; on CPU the peak resident
  set (VmHWM) of a fresh subprocess per configuration, since the CPU allocator keeps no statistics);
* the inference time of the merged network (HyPS: parallel part merged, serial part kept) against
  the base network.

Configurations are interleaved within every repeat so that drift in a shared machine's load hits
all of them alike; the median over repeats is reported. Usage::

    python scripts/benchmark_adapters.py --out benchmark.md                   # CPU: 5 stages, 2 x 64^3
    python scripts/benchmark_adapters.py --device cuda --out benchmark.md     # CUDA: AMP, 6 stages, 2 x 128^3
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nnunet_peft import METHODS, PeftConfig, configure_finetuning, count_parameters, inject_adapters, merge_adapters
from nnunet_peft.injection import adapter_layers

PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]


@dataclass(frozen=True)
class Setting:
    """One benchmarked configuration: ``full``, ``frozen`` or a method in a forward mode."""

    name: str
    method: str | None = None
    mode: str | None = None

    @property
    def label(self) -> str:
        return self.name if self.method is None else f"{self.method}/{self.mode}"


def all_settings(methods: list[str]) -> list[Setting]:
    settings = [Setting("full"), Setting("frozen")]
    for method in methods:
        for mode in METHODS[method].forward_modes:
            settings.append(Setting(f"{method}/{mode}", method, mode))
    return settings


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


def build_network(args: argparse.Namespace, deep_supervision: bool = True) -> nn.Module:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    torch.manual_seed(0)
    return get_network_from_plans(
        PLAIN, arch_kwargs(args.stages), REQUIRES_IMPORT, args.in_channels, args.classes,
        allow_init=True, deep_supervision=deep_supervision,
    )


def prepare(setting: Setting, args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer | None]:
    """The network of ``setting`` on ``device`` with its optimiser (None for the frozen floor)."""
    net = build_network(args)
    if setting.method is None:
        configure_finetuning(net, "finetune" if setting.name == "full" else "none")
    else:
        inject_adapters(net, PeftConfig(setting.method, rank=args.rank, forward_mode=setting.mode))
    net = net.to(device).train()
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5) if params else None
    return net, optimizer


def make_batch(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    shape = (args.batch, args.in_channels, *([args.patch] * 3))
    x = torch.randn(shape, generator=g).to(device)
    # one target per deep-supervision output, at that output's resolution
    targets = [torch.randn((args.batch, args.classes, *([args.patch // 2 ** i] * 3)), generator=g).to(device)
               for i in range(args.stages - 1)]
    return x, targets


def ds_weights(n: int) -> list[float]:
    """nnU-Net's deep-supervision weights: halving per level, the lowest output dropped, normalised."""
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------ memory
def optimizer_bytes(optimizer) -> int:
    if optimizer is None:
        return 0
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))


def cuda_peak_bytes(step: Stepper, x, targets) -> int:
    """Peak bytes of one step: the step's transient peak plus this network's persistent state."""
    device = step.device
    step(x, targets)  # optimiser state exists after one step
    sync(device)
    persistent = sum(t.numel() * t.element_size() for t in [*step.net.parameters(), *step.net.buffers()])
    persistent += optimizer_bytes(step.optimizer)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step(x, targets)
    sync(device)
    return torch.cuda.max_memory_allocated(device) - before + persistent


def cpu_peak_bytes_subprocess(setting: Setting, args: argparse.Namespace) -> int:
    """Peak resident memory of a fresh process that builds ``setting`` and runs two steps, minus
    the process's resident memory just before the network is built (interpreter, torch, inputs)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", setting.name,
           "--stages", str(args.stages), "--patch", str(args.patch), "--batch", str(args.batch),
           "--rank", str(args.rank), "--threads", str(args.threads), "--device", "cpu"]
    out = subprocess.run(cmd, check=True, capture_output=True, encoding="utf-8", errors="replace").stdout
    return int(json.loads(out.strip().splitlines()[-1])["peak_bytes"])


def memory_probe(args: argparse.Namespace) -> None:
    device = torch.device("cpu")
    setting = next(s for s in all_settings(list(METHODS)) if s.name == args.memory_probe)
    x, targets = make_batch(args, device)
    baseline = proc_status_kib("VmRSS")  # before the network exists
    net, optimizer = prepare(setting, args, device)
    step = Stepper(net, optimizer, device, frozen=setting.name == "frozen")
    for _ in range(2):  # the second step holds activations, gradients and momentum at once
        step(x, targets)
    print(json.dumps({"peak_bytes": (proc_status_kib("VmHWM") - baseline) * 1024}))


def proc_status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB.

    VmHWM (peak resident set) belongs to the process's own address space, so a fresh subprocess
    starts from zero; getrusage's ru_maxrss does not: Linux carries the parent's high-water mark
    over fork and exec, which hides the child's peak under the parent's.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status; the CPU memory probe needs Linux")


# --------------------------------------------------------------------------------- inference
def inference_network(setting: Setting, net: nn.Module) -> nn.Module:
    """The deployable network: merged where the method allows, else each layer's parallel part merged."""
    net = copy.deepcopy(net).eval()
    if METHODS[setting.method].mergeable:
        net = merge_adapters(net)
    else:
        for layer in adapter_layers(net):
            layer.merge()
    net.decoder.deep_supervision = False  # nnU-Net predicts without deep supervision
    return net


def run(args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    settings = all_settings(args.methods)
    x, targets = make_batch(args, device)

    print(f"building {len(settings)} networks ...", file=sys.stderr)
    prepared = {s.name: prepare(s, args, device) for s in settings}
    steppers = {s.name: Stepper(*prepared[s.name], device, frozen=s.name == "frozen") for s in settings}
    trainable = {s.name: count_parameters(prepared[s.name][0])[0] for s in settings}

    times: dict[str, list[float]] = {s.name: [] for s in settings}
    for repeat in range(args.warmup + args.repeats):
        for s in settings:
            t = timed(lambda: steppers[s.name](x, targets), device)
            if repeat >= args.warmup:
                times[s.name].append(t)
        print(f"training repeat {repeat + 1}/{args.warmup + args.repeats} done", file=sys.stderr)

    peaks: dict[str, int] = {}
    if args.out:  # the timings so far, in case the slower memory probes are interrupted
        args.out.write_text(report(args, settings, times, peaks, {}, trainable) + "\n")
    if not args.no_memory:
        for s in settings:
            if device.type == "cuda":
                peaks[s.name] = cuda_peak_bytes(steppers[s.name], x, targets)
            else:
                peaks[s.name] = cpu_peak_bytes_subprocess(s, args)
            print(f"memory {s.label}: {peaks[s.name] / 2 ** 20:.0f} MiB", file=sys.stderr)

    # inference: the base network against every merged one, interleaved, without gradients
    base = build_network(args, deep_supervision=False).to(device).eval()
    infer = {"base": base} | {s.name: inference_network(s, prepared[s.name][0]) for s in settings if s.method}
    del prepared, steppers
    inf_times: dict[str, list[float]] = {k: [] for k in infer}
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
        for repeat in range(args.warmup + args.repeats):
            for name, net in infer.items():
                t = timed(lambda: net(x), device)
                if repeat >= args.warmup:
                    inf_times[name].append(t)
    return report(args, settings, times, peaks, inf_times, trainable)


def report(args, settings, times, peaks, inf_times, trainable) -> str:
    med = {k: statistics.median(v) for k, v in times.items()}
    inf = {k: statistics.median(v) for k, v in inf_times.items()}
    base_inference = f"; base inference {inf['base']:.3f} s." if "base" in inf else "."
    full = med["full"]
    lines = [
        f"Machine: {machine(args)}",
        f"Network: 3d_fullres PlainConvUNet, {args.stages} stages, features "
        f"{arch_kwargs(args.stages)['features_per_stage']}, batch {args.batch} x {args.patch}^3, "
        f"rank {args.rank}, adapters on encoder + bottleneck + decoder; median of {args.repeats} steps after "
        f"{args.warmup} warm-up. Full fine-tuning: {full:.3f} s/step"
        + (f", {peaks['full'] / 2 ** 20:.0f} MiB peak" if peaks else "")
        + base_inference,
        "",
        "| method | forward mode | train step / full FT | peak memory / full FT | merged inference / base | trainable params |",
        "|---|---|---|---|---|---|",
    ]
    for s in settings:
        method, mode = (s.method, s.mode) if s.method else (s.name, "-")
        if s.name == "full":
            method = "full fine-tuning"
        elif s.name == "frozen":
            method = "frozen floor (input grad only)"
        mem = f"{peaks[s.name] / peaks['full']:.2f}" if peaks else "n/a"
        merged = f"{inf[s.name] / inf['base']:.3f}" if s.name in inf else "-"
        if s.method and not METHODS[s.method].mergeable:
            merged += " (serial kept)"
        default = " (default)" if s.method and METHODS[s.method].default_forward_mode == s.mode else ""
        lines.append(f"| {method} | {mode}{default} | {med[s.name] / full:.2f} | {mem} | {merged} | {trainable[s.name]:,} |")
    faster = []
    for method in args.methods:
        modes = METHODS[method].forward_modes
        if len(modes) > 1:
            best = min(modes, key=lambda m: med[f"{method}/{m}"])
            faster.append(f"{method}: {best}" + ("" if best == METHODS[method].default_forward_mode else
                                                  f" (config default is {METHODS[method].default_forward_mode})"))
    if faster:
        lines += ["", "Faster forward mode per method: " + "; ".join(faster) + "."]
    return "\n".join(lines)


def machine(args: argparse.Namespace) -> str:
    if args.device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (AMP fp16), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, float32, torch {torch.__version__}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--stages", type=int, default=None, help="network stages (default 5 on CPU, 6 on CUDA)")
    p.add_argument("--patch", type=int, default=None, help="cubic patch edge (default 64 on CPU, 128 on CUDA)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="timed steps per configuration (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    p.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)  # internal: one CPU memory probe
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda given but CUDA is not available")
    args.stages = args.stages or (6 if cuda else 5)
    args.patch = args.patch or (128 if cuda else 64)
    if args.patch % 2 ** (args.stages - 1):
        p.error(f"--patch {args.patch} must be divisible by 2**(stages-1) = {2 ** (args.stages - 1)}")
    args.in_channels, args.classes = 1, 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        memory_probe(args)
        return 0
    table = run(args)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
