"""Adapters under DistributedDataParallel (issue 15): nnU-Net's multi-GPU training wraps the adapted
network in DDP after freezing (``nnunet_peft.training.trainer``). The projected mode's custom backward
and the tensor groups' once-per-step update must hand DDP the same gradients as one process on the
whole batch. Two CPU processes over gloo stand in for two GPUs.
"""
from __future__ import annotations

import gc
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from adapter_helpers import moved_adapter_network
from networks import NET_SPECS, outputs, random_input

SPEC = NET_SPECS[2]  # 2-D residual encoder: tensor groups of several same-shape convolutions
WORLD = 2


def adapted(method: str, mode: str | None) -> torch.nn.Module:
    return moved_adapter_network(SPEC, method, mode)


def loss_of(net, x) -> torch.Tensor:
    # per-sample mean over the batch, as nnU-Net's losses: the mean of the two halves' losses is the whole's
    return sum(o.square().mean() for o in outputs(net, x))


def trainable_grads(net) -> list[torch.Tensor]:
    return [p.grad.clone() for p in net.parameters() if p.requires_grad]


CASES = [("cp_dora", "projected"), ("lora_pt", None)]  # the projected backward; a group's once-per-step update


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        grads = {}
        x = random_input(SPEC, batch=2 * WORLD).chunk(WORLD)[rank]
        for method, mode in CASES:  # one pair of processes for every case: spawning is the slow part
            net = DDP(adapted(method, mode))
            for _ in range(2):  # two steps: the second must not reuse the first step's shared update
                net.zero_grad(set_to_none=True)
                loss_of(net, x).backward()
            grads[method] = trainable_grads(net.module)
            # a DDP module sits in reference cycles, so only the collector frees it and the process
            # group it holds; one left for the interpreter's exit takes gloo's threads down there and
            # the process dies of SIGABRT ("terminate called without an active exception", ~1 run in 10)
            del net
            gc.collect()
        if rank == 0:
            torch.save(grads, out)
        dist.barrier()  # neither rank tears the group down while the other may still be using it
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_grads(tmp_path_factory) -> dict[str, list[torch.Tensor]]:
    out = str(tmp_path_factory.mktemp("ddp") / "grads.pt")
    mp.spawn(_worker, args=(free_port(), out), nprocs=WORLD, join=True)
    return torch.load(out)


@pytest.mark.parametrize(("method", "mode"), CASES)
def test_ddp_gradients_equal_one_process_on_the_whole_batch(method, mode, ddp_grads):
    net = adapted(method, mode)
    loss_of(net, random_input(SPEC, batch=2 * WORLD)).backward()
    single = trainable_grads(net)
    ddp = ddp_grads[method]
    assert len(ddp) == len(single) > 0
    assert any(g.abs().max() > 0 for g in single)
    for a, b in zip(ddp, single):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
