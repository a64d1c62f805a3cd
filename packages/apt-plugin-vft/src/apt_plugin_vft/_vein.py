"""The vein subspace: orthonormal projector rows, the off-manifold rate and the orthogonality error.

A vein is a matrix ``V`` of shape ``(r, n)`` with orthonormal rows. ``z = V h`` are the
coordinates of ``h`` in the subspace, ``U z = Vᵀ z`` lifts them back, so ``VᵀV`` is the
orthogonal projector onto the subspace (the original used an independent ``U``, which made
``U V`` no projector at all and ``ε`` no distance).
"""

from __future__ import annotations

import torch
from torch import Tensor


__all__ = ["off_manifold_rate", "orthogonality_error", "orthonormal_rows"]


def orthonormal_rows(*shape: int, generator: torch.Generator | None = None) -> Tensor:
    """A ``(..., r, n)`` tensor whose last two dims have orthonormal rows (QR of a Gaussian), ``r <= n``.

    The signs are fixed by ``diag(R) > 0``, so the result is uniformly distributed (Haar).
    """
    *batch, r, n = shape
    if r > n:
        raise ValueError(f"cannot have {r} orthonormal rows of length {n}")
    g = torch.randn(*batch, n, r, generator=generator)
    q, rr = torch.linalg.qr(g)  # q: (..., n, r) orthonormal columns
    q = q * torch.sign(torch.diagonal(rr, dim1=-2, dim2=-1)).unsqueeze(-2)
    rows: Tensor = q.transpose(-1, -2).contiguous()  # (..., r, n)
    return rows


def off_manifold_rate(h: Tensor, vein: Tensor) -> Tensor:
    """``ε = ‖h − VᵀV h‖ / ‖h‖`` per vector: 0 in the subspace, 1 orthogonal to it.

    Relative to ``‖h‖`` so that a threshold means the same at every width and scale (an
    isotropic ``h`` has ``ε ≈ √(1 − r/n)``). Computed in fp32; ``h = 0`` gives 0.

    :param h: ``(..., n)``.
    :param vein: ``V``, ``(r, n)``.
    :returns: ``(...)`` fp32.
    """
    h = h.float()
    v = vein.float()
    normal = h - (h @ v.T) @ v  # (..., n): the part of h off the subspace
    eps: Tensor = normal.norm(dim=-1) / h.norm(dim=-1).clamp_min(1e-12)
    return eps


def orthogonality_error(vein: Tensor) -> Tensor:
    """``‖V Vᵀ − I‖²_F`` summed over the leading dims of a ``(..., r, n)`` vein (0 when rows are orthonormal)."""
    gram = vein @ vein.transpose(-1, -2)  # (..., r, r)
    eye = torch.eye(gram.shape[-1], device=gram.device, dtype=gram.dtype)
    return (gram - eye).pow(2).sum()
