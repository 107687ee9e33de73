"""The tensor family: LoRA-PT (t-SVD) and tCURLoRA (tensor CUR) over groups of same-shape layers.

The kernels of a group, each unfolded to ``Cout x (Cin*K)``, are the frontal slices of a tensor
``T`` of shape ``Cout x (Cin*K) x L`` (a Linear's weight is such a matrix as it is; a fused q/k/v
projection contributes its three row blocks as three slices). The t-product is circular convolution along the third mode;
decompositions are computed slice-wise in the Fourier domain and stored in the spatial domain,
where every factor is real.

Both methods are written as ``W = T + delta`` with ``delta`` exactly zero at initialisation:
LoRA-PT's ``residual + principal`` becomes ``T + (P(U, S, V) - P(U0, S0, V0))``, which is the same
function of the trainable factors, keeps the identity bit-exact, and needs only the small initial
factors (not a residual as large as the kernels) to be saved with the adapter.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nnunet_peft.config import PeftConfig
from nnunet_peft.layers.base import AdapterLayer


def t_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(n1, n2, L) * (n2, n3, L) -> (n1, n3, L)``: ``C_l = sum_j A_j @ B_{(l-j) mod L}``."""
    n = a.shape[-1]
    idx = (torch.arange(n, device=a.device)[None, :] - torch.arange(n, device=a.device)[:, None]) % n
    return torch.einsum("ijm,jkml->ikl", a, b[:, :, idx])


def t_product_slice(a: torch.Tensor, b: torch.Tensor, index: int) -> torch.Tensor:
    """Slice ``index`` of ``a * b``, ``sum_j A_j @ B_{(index-j) mod L}``, without computing the others.

    Each layer of a group needs its own slice only; building all ``L`` slices in every layer would
    cost ``L`` times more (a UNETR group holds 48 matrices).
    """
    n = a.shape[-1]
    idx = (index - torch.arange(n, device=a.device)) % n
    return torch.einsum("ijm,jkm->ik", a, b[:, :, idx])


def t_transpose(a: torch.Tensor) -> torch.Tensor:
    """The t-transpose: each slice transposed, slices 1..L-1 in reverse order."""
    order = [0] + list(range(a.shape[-1] - 1, 0, -1))
    return a.transpose(0, 1)[:, :, order]


def _slicewise_fourier(t: torch.Tensor, fn) -> list:
    """Apply ``fn`` to the Fourier slices ``0..L//2`` of a real tensor; the rest are conjugates.

    Conjugate symmetry makes the inverse FFT of every factor real, so factors can live in the
    spatial domain as real parameters.
    """
    tf = torch.fft.fft(t.to(torch.complex128), dim=-1)
    n = t.shape[-1]
    half = [fn(tf[..., f]) for f in range(n // 2 + 1)]
    full = []
    for f in range(n):
        full.append(half[f] if f <= n // 2 else tuple(x.conj() for x in half[n - f]))
    return full


def _from_fourier(slices: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    return torch.fft.ifft(torch.stack(slices, dim=-1), dim=-1).real.to(dtype)


def effective_rank(rank: int, rows: int, cols: int) -> int:
    """The t-SVD and CUR select at most ``min(rows, cols)`` triplets / columns."""
    return max(1, min(rank, rows, cols))


class TensorGroup(nn.Module):
    """The shared factors of one group of same-shape kernels.

    In training every layer of the group needs its slice of the same update; ``layer_update`` builds
    the whole update once per training step and hands each layer its slice, instead of each layer
    building its own. The build is reused while it is valid: same factors and buffers (an optimiser
    step or a load changes a tensor's version), same autocast state, and no backward pass has yet run
    through it (its graph is freed then; a hook on the build forgets it). One limitation follows:
    two forward passes that share a build must be backpropagated together (as one summed loss), not
    one after the other. Without gradients (validation, merging) and under torch.compile, where the
    shared products are common subexpressions of one graph anyway, each layer computes its slice.
    """

    #: build the update once per step and slice it (``False``: every layer computes its own slice)
    share_updates: bool = True

    def __init__(self, kernels: list[torch.Tensor], config: PeftConfig) -> None:
        super().__init__()
        self._shared: tuple[tuple, tuple[torch.Tensor, ...]] | None = None
        self.builds = 0  # whole-update builds for the layers, counted for the tests
        self.num_layers = len(kernels)
        self.kernel_shape = tuple(kernels[0].shape)
        self.rows, self.cols = self.kernel_shape[0], int(torch.tensor(self.kernel_shape[1:]).prod())
        self.rank = effective_rank(config.rank, self.rows, self.cols)
        self.scaling = config.scaling

    @staticmethod
    def stack(kernels: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([k.detach().reshape(k.shape[0], -1) for k in kernels], dim=-1)

    def delta(self) -> torch.Tensor:
        """The update of every slice, ``(Cout, Cin*K, L)``."""
        raise NotImplementedError

    def delta_slice(self, index: int) -> torch.Tensor:
        """The update of slice ``index`` in its kernel's shape."""
        return self.delta()[:, :, index].reshape(self.kernel_shape)

    def layer_update(self, index: int) -> torch.Tensor:
        """Slice ``index`` of the update for a layer's forward pass (see the class docstring)."""
        if not (self.share_updates and torch.is_grad_enabled()) or torch.compiler.is_compiling():
            return self.delta_slice(index)
        key = self._state_key()
        if self._shared is None or self._shared[0] != key:
            delta = self.delta()
            self.builds += 1
            if delta.requires_grad:
                delta.register_hook(self._forget)
            # unbind, not indexing: the backward pass then stacks the L slice gradients once
            self._shared = (key, tuple(d.reshape(self.kernel_shape) for d in delta.unbind(-1)))
        return self._shared[1][index]

    def _state_key(self) -> tuple:
        tensors = [*self.parameters(), *self.buffers()]
        device = tensors[0].device.type
        amp = torch.is_autocast_enabled(device)
        return (amp, torch.get_autocast_dtype(device) if amp else None,
                tuple((t.data_ptr(), t._version, t.requires_grad) for t in tensors))

    def _forget(self, grad: torch.Tensor) -> None:
        self._shared = None

    def __getstate__(self) -> dict:
        # a build holds an autograd graph, which neither deepcopy nor pickle can carry
        return {**self.__dict__, "_shared": None}

    def trainable_per_layer(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad) // self.num_layers


class LoRAPTGroup(TensorGroup):
    """LoRA-PT: the leading ``r`` tubal singular triplets ``U * S * V^T`` are trainable."""

    def __init__(self, kernels: list[torch.Tensor], config: PeftConfig, init_weights: bool = True) -> None:
        super().__init__(kernels, config)
        r, n, dtype = self.rank, self.num_layers, kernels[0].dtype
        shapes = {"U": (self.rows, r, n), "S": (r, r, n), "V": (self.cols, r, n)}
        values = self._tsvd(self.stack(kernels), r) if init_weights else {k: torch.zeros(s) for k, s in shapes.items()}
        for name in shapes:
            value = values[name].to(dtype)
            setattr(self, name, nn.Parameter(value.clone()))
            self.register_buffer(f"{name}0", value.clone())

    @staticmethod
    def _tsvd(t: torch.Tensor, r: int) -> dict[str, torch.Tensor]:
        def svd(m):
            u, s, vh = torch.linalg.svd(m, full_matrices=False)
            return u[:, :r], torch.diag(s[:r]).to(m.dtype), vh[:r].conj().t()

        slices = _slicewise_fourier(t, svd)
        return {name: _from_fourier([s[i] for s in slices], t.dtype) for i, name in enumerate("USV")}

    @staticmethod
    def principal(u: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return t_product(t_product(u, s), t_transpose(v))

    def delta(self) -> torch.Tensor:
        return (self.principal(self.U, self.S, self.V) - self.principal(self.U0, self.S0, self.V0)) * self.scaling

    def delta_slice(self, index: int) -> torch.Tensor:
        # both principal slices come from the same code on equal inputs at init: their difference is exactly 0
        p = t_product_slice(t_product(self.U, self.S), t_transpose(self.V), index)
        p0 = t_product_slice(t_product(self.U0, self.S0), t_transpose(self.V0), index)
        return ((p - p0) * self.scaling).reshape(self.kernel_shape)


class TCURGroup(TensorGroup):
    """tCURLoRA: ``W = T + C * (U - U0) * R``; only the ``r x r x L`` core ``U`` trains."""

    def __init__(self, kernels: list[torch.Tensor], config: PeftConfig, init_weights: bool = True) -> None:
        super().__init__(kernels, config)
        r, n, dtype = self.rank, self.num_layers, kernels[0].dtype
        if init_weights:
            c, core, r_ = self._tcur(self.stack(kernels).double(), r)
        else:
            c, core, r_ = torch.zeros(self.rows, r, n), torch.zeros(r, r, n), torch.zeros(r, self.cols, n)
        self.register_buffer("C", c.to(dtype))
        self.register_buffer("R", r_.to(dtype))
        self.register_buffer("U0", core.to(dtype))
        self.U = nn.Parameter(core.to(dtype).clone())

    @staticmethod
    def _tcur(t: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tf = torch.fft.fft(t, dim=-1)
        cols = tf.abs().pow(2).sum(0).sqrt().sum(-1).topk(r).indices.sort().values
        rows = tf[:, cols].abs().pow(2).sum(1).sqrt().sum(-1).topk(r).indices.sort().values
        c, r_ = t[:, cols], t[rows]
        core = _from_fourier([s[0] for s in _slicewise_fourier(t[rows][:, cols], lambda m: (torch.linalg.pinv(m),))], t.dtype)
        return c, core, r_

    def delta(self) -> torch.Tensor:
        return t_product(self.C, t_product(self.U - self.U0, self.R)) * self.scaling

    def delta_slice(self, index: int) -> torch.Tensor:
        # (C * (U - U0)) * R: the small product in full, the large one for this slice only
        return (t_product_slice(t_product(self.C, self.U - self.U0), self.R, index) * self.scaling).reshape(self.kernel_shape)


class TensorGroupAdapter(AdapterLayer):
    """One layer of a group: its weight is slice ``index`` of the group's adapted tensor.

    ``slices`` lists ``(group, index)`` per block of output rows, in order: one pair for an ordinary
    layer, three for a fused q/k/v projection, whose q, k and v matrices are slices of their own
    (``nnunet_peft.placement.fused_blocks``). Groups are registered once on the network root
    (``peft_groups``), not under every layer, so their factors appear once in the state dict and in
    the optimiser.
    """

    def __init__(self, base_layer: nn.Module, config: PeftConfig, slices: Sequence[tuple[TensorGroup, int]]) -> None:
        super().__init__(base_layer, config)
        slices = tuple(slices)
        rows = sum(group.kernel_shape[0] for group, _ in slices)
        if not slices or rows != self.out_channels or any(
                group.kernel_shape[1:] != self.conv_shape[1:] for group, _ in slices):
            raise ValueError(
                f"the slices {[group.kernel_shape for group, _ in slices]} do not stack along the output rows to "
                f"this layer's weight {self.conv_shape} (conv layout)"
            )
        self.__dict__["slices"] = slices  # references, deliberately not registered submodules

    @property
    def groups(self) -> list[TensorGroup]:
        """The distinct groups this layer reads from."""
        return list({id(g): g for g, _ in self.slices}.values())

    def delta_weight(self) -> torch.Tensor:
        blocks = [group.layer_update(index) for group, index in self.slices]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=0)

    def num_trainable_parameters(self) -> int:
        return sum(group.trainable_per_layer() for group, _ in self.slices)
