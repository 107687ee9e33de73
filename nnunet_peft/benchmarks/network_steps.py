"""The trainers' networks stepped alone: what each setting's network costs without the rest of an epoch.

An epoch of ``nnUNetv2_train`` (``trainer_epochs``) holds the data loader's augmentation workers on the
same cores, validation and the checkpoint, and its run-to-run spread is a few percent, larger than the
difference between two forward-mode choices. Here every setting's network is built by its own trainer
(``get_trainer_from_args`` and ``initialize``, the adapters injected as training injects them, ``auto``
timed as training times it, or one mode forced) and all of them live in one process; each repeat steps
every network once (forward, the trainer's deep-supervision loss on random labels, backward into
``.grad``), in an order rotated per repeat, and a setting's ratio is the median over repeats of its step
over the reference's step in the same repeat. No optimizer step: it took 0.01-0.02 s per epoch in the
trainer (docs/results/speed_and_memory.md).
"""
from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch

from nnunet_peft.config import AUTO_MODE
from nnunet_peft.mode_tuning import seconds

FIXED_MODE_NONE = AUTO_MODE  # the trainer's own choice: no mode forced
T = TypeVar("T")


def rotated(items: Sequence[T], k: int) -> list[T]:
    k %= len(items)
    return list(items[k:]) + list(items[:k])


def fix_forward_modes(trainer, mode: str) -> None:
    """Replace the trainer's ``auto`` timing by one mode for every adapter layer that has it (a harness
    option: it shows what each mode costs inside the full step, against what ``auto`` chose)."""
    from nnunet_peft.injection import adapter_layers
    from nnunet_peft.training.trainer import unwrap

    def fixed():
        for layer in adapter_layers(unwrap(trainer.network)):
            if mode in layer.tunable_modes:
                layer.forward_mode = mode

    trainer._choose_forward_modes = fixed


def forward_modes_used(trainer) -> dict[str, int]:
    from nnunet_peft.injection import adapter_layers
    from nnunet_peft.training.trainer import unwrap

    return dict(Counter(layer.forward_mode for layer in adapter_layers(unwrap(trainer.network))))


@dataclass
class SteppedNetwork:
    """One setting: its trainer's network, the loss, a batch of the trainer's shape and the modes it runs."""

    name: str
    mode: str
    network: torch.nn.Module
    loss: torch.nn.Module
    batch: torch.Tensor
    targets: list[torch.Tensor] | torch.Tensor  # one per deep-supervision output, or one
    modes: dict[str, int]
    trainable: int

    def step(self) -> None:
        # nnU-Net's train_step autocasts on CUDA (float16) and nowhere else
        with torch.autocast(self.batch.device.type, enabled=self.batch.device.type == "cuda"):
            loss = self.loss(self.network(self.batch), self.targets)
        loss.backward()
        for p in self.network.parameters():
            p.grad = None


def build(dataset: str, configuration: str, fold: int, trainer_name: str, plans: str, device: str,
          forward_mode: str = FIXED_MODE_NONE) -> SteppedNetwork:
    """The network ``trainer_name`` trains, set up as at the start of its training (adapters, forward modes)."""
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_peft.training.trainer import unwrap

    trainer = get_trainer_from_args(dataset, configuration, fold, trainer_name, plans, device=torch.device(device))
    trainer.initialize()
    if hasattr(trainer, "_setup_peft"):  # an adapter trainer: what its on_train_start does before the loader
        if forward_mode != FIXED_MODE_NONE:
            fix_forward_modes(trainer, forward_mode)
        trainer._setup_peft(from_checkpoint=False)
        trainer._choose_forward_modes()
    network = unwrap(trainer.network)
    network.train()
    batch = torch.randn((trainer.batch_size, trainer.num_input_channels, *trainer.configuration_manager.patch_size),
                        device=trainer.device)
    with torch.no_grad():
        output = network(batch)

    def labels(o: torch.Tensor) -> torch.Tensor:
        return torch.randint(0, o.shape[1], (o.shape[0], 1, *o.shape[2:]), device=o.device).float()

    targets = [labels(o) for o in output] if isinstance(output, (list, tuple)) else labels(output)
    return SteppedNetwork(trainer_name, forward_mode, network, trainer.loss, batch, targets,
                          forward_modes_used(trainer), sum(p.numel() for p in network.parameters() if p.requires_grad))


def step_rounds(networks: Sequence[SteppedNetwork], repeats: int, warmup: int = 1) -> list[dict]:
    """Seconds per step of every network, interleaved (order rotated per repeat); ratios to the first."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"expected repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if not networks:
        raise ValueError("expected at least one network (the reference first)")
    device = networks[0].batch.device
    times: list[list[float]] = [[] for _ in networks]
    for repeat in range(warmup + repeats):
        for i in rotated(range(len(networks)), repeat):
            t = seconds(networks[i].step, device)
            if repeat >= warmup:
                times[i].append(t)
    rows = []
    for n, t in zip(networks, times):
        ratios = [a / b for a, b in zip(t, times[0])]
        rows.append({"method": n.name, "forward_mode": n.mode, "step_s": statistics.median(t),
                     "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "modes": n.modes, "trainable": n.trainable})
    return rows


def format_report(rows: list[dict], header: str) -> str:
    lines = [header, "", "| method | forward mode | step s | ratio to the reference [min, max] | modes used | trainable |",
             "|---|---|---:|---|---|---:|"]
    for r in rows:
        modes = ", ".join(f"{m} {n}" for m, n in sorted(r["modes"].items())) or "-"
        lines.append(f"| {r['method']} | {r['forward_mode']} | {r['step_s']:.3f} | {r['ratio']:.2f} "
                     f"[{r['ratio_min']:.2f}, {r['ratio_max']:.2f}] | {modes} | {r['trainable']:,} |")
    return "\n".join(lines) + "\n"
