"""Peak memory of a training step: on CUDA from the allocator's statistics, on a CPU as the peak resident
set of a fresh process (the CPU allocator keeps no statistics), which runs the steps and prints its peak
as the last line of its output (``print_peak``)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn


def optimizer_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    if optimizer is None:
        return 0
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))


def cuda_peak_bytes(step: Callable[[], None], net: nn.Module, optimizer: torch.optim.Optimizer | None,
                    device: torch.device) -> int:
    """Peak bytes of one ``step()`` of ``net``: the step's transient peak plus the network's persistent
    state (parameters, buffers, optimiser state)."""
    step()  # optimiser state exists after one step
    torch.cuda.synchronize(device)
    persistent = sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()])
    persistent += optimizer_bytes(optimizer)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before + persistent


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


def print_peak(baseline_kib: int) -> None:
    """The probe's answer: this process's peak resident set above ``baseline_kib`` (its resident set
    before the network was built), as the JSON line ``subprocess_peak_bytes`` reads."""
    print(json.dumps({"peak_bytes": (proc_status_kib("VmHWM") - baseline_kib) * 1024}))


def subprocess_peak_bytes(module: str, argv: list[str]) -> int:
    """Run ``python -m <module> <argv>``, a probe that ends with ``print_peak``, and return its peak."""
    proc = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, encoding="utf-8",
                          errors="replace")
    if proc.returncode:
        raise RuntimeError(f"the memory probe python -m {module} {' '.join(argv)} failed (exit {proc.returncode}):\n"
                           + proc.stderr[-3000:])
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])
