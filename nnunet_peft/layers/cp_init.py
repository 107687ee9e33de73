"""Weight-informed CP factors for CP-LoRA (``cp_init="parafac"``), computed with tensorly."""
from __future__ import annotations

import torch


def parafac_factors(weight: torch.Tensor, rank: int, n_iter_max: int = 50) -> list[torch.Tensor]:
    """Rank-``rank`` CP factors of a kernel ``(Cout, Cin, k...)``: ``[U_out, U_in, U_1, ..., U_d]``.

    The adapter keeps the input and spatial factors (the kernel's dominant directions) and zeroes the
    output factor, so the update starts at zero but first moves within the pretrained kernel's span.
    Axes of size 1 are handled by tensorly like any other; a rank above an axis size is allowed.
    A Linear's ``(out, in)`` weight is a matrix, whose best rank-``r`` CP decomposition is its truncated
    SVD (tensorly's ALS fails on a matrix): see ``_matrix_factors``.
    """
    if weight.dim() == 2:
        return _matrix_factors(weight, rank)
    import tensorly as tl
    from tensorly.decomposition import parafac

    array = weight.detach().double().cpu().numpy()
    # random_state fixes the ALS start, so the same kernel always gives the same factors
    cp = parafac(tl.tensor(array), rank=rank, n_iter_max=n_iter_max, init="random", random_state=0, normalize_factors=True)
    return [torch.as_tensor(f, dtype=weight.dtype, device=weight.device) for f in cp.factors]


def _matrix_factors(weight: torch.Tensor, rank: int) -> list[torch.Tensor]:
    """``[U S, V]`` of the SVD ``W = U S V^T``, ``rank`` columns each. Columns beyond ``min(out, in)`` are
    seeded random directions, so that a rank above the matrix's is allowed as for kernels."""
    u, s, vh = torch.linalg.svd(weight.detach().double().cpu(), full_matrices=False)
    k = min(rank, s.numel())
    g = torch.Generator().manual_seed(0)
    left = torch.randn(weight.shape[0], rank, generator=g, dtype=torch.float64)
    right = torch.randn(weight.shape[1], rank, generator=g, dtype=torch.float64)
    left[:, :k], right[:, :k] = u[:, :k] * s[:k], vh[:k].t()
    return [f.to(dtype=weight.dtype, device=weight.device) for f in (left, right)]
