"""The Vein-Flow feed-forward (``ffn:vft``): an FFN in a rank-r subspace, a stabilising path, a compensator.

For a token ``h`` (the block's normed input, width ``C``) and a vein ``V`` of shape ``(r, C)``
with orthonormal rows (``U = Vᵀ`` lifts back)::

    z = V h                                            # (r,)  coordinates in the vein subspace
    y = Vᵀ c_proj(gelu(c_fc(z)))                       # the FFN runs on r numbers, hidden width r_h
      + stab(h)                                        # stabilising path: a C x C linear map (optional)
      + [ε > τ] · A (B n)                              # compensator on the normal part n = h − VᵀV h (optional)
    ε = ‖n‖ / ‖h‖                                      # off-manifold rate, relative: 0 in the subspace, 1 orthogonal

The compensator is a rank-``s`` map (``B``: ``(s, C)``, ``A``: ``(s, C)``, ``A`` zero at init so
the layer starts without it) added only for tokens whose ``ε`` exceeds ``τ``: it gives the
tokens the subspace cannot represent a path of their own. The mask is hard (no gradient
through ``ε``); ``A`` and ``B`` learn from the tokens above ``τ``.

In training mode each forward adds ``(Σε, #(ε > τ), #tokens)`` to an on-device accumulator
that the plugin reads once per optimizer step (:meth:`VeinFlowFFN.stats_tensor`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import nn

from apt_plugin_vft._vein import orthonormal_rows


__all__ = ["VeinFlowFFN"]


class VeinFlowFFN(nn.Module):
    """Feed-forward block computed in a rank-``rank`` vein subspace of the residual stream.

    :param d_model: ``C``.
    :param rank: ``r <= d_model``.
    :param hidden: hidden width of the subspace FFN (``r_h``).
    :param stabilizer: add the ``C x C`` linear stabilising path.
    :param compensator: add the rank-``compensator_rank`` correction for tokens with ``ε > tau``.
    :param tau: the threshold on the relative off-manifold rate, in ``[0, 1]``; the plugin
        updates it when ``schedules.vft_tau`` anneals it.
    """

    def __init__(
        self,
        d_model: int,
        rank: int,
        hidden: int,
        dropout: float = 0.0,
        bias: bool = False,
        stabilizer: bool = True,
        compensator: bool = True,
        compensator_rank: int = 4,
        tau: float = 0.95,
    ) -> None:
        super().__init__()
        if not 1 <= rank <= d_model:
            raise ValueError(f"rank ({rank}) must be between 1 and d_model ({d_model})")
        if compensator and not 1 <= compensator_rank <= d_model:
            raise ValueError(f"compensator_rank ({compensator_rank}) must be between 1 and d_model ({d_model})")
        self.d_model = d_model
        self.rank = rank
        self.tau = tau
        self.vein = nn.Parameter(orthonormal_rows(rank, d_model))  # V: (r, C), orthonormal rows
        self.c_fc = nn.Linear(rank, hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, rank, bias=bias)  # named c_proj: the GPT gives it the scaled residual init
        self.stab = nn.Linear(d_model, d_model, bias=bias) if stabilizer else None
        self.comp_in: nn.Parameter | None = None
        self.comp_out: nn.Parameter | None = None
        if compensator:
            self.comp_in = nn.Parameter(orthonormal_rows(compensator_rank, d_model))  # B: (s, C)
            self.comp_out = nn.Parameter(torch.zeros(compensator_rank, d_model))  # A: (s, C), zero: starts off
        self.dropout = nn.Dropout(dropout)
        self._acc: Tensor | None = None  # (3,) fp64: sum of eps, tokens over tau, tokens

    def forward(self, h: Tensor) -> Tensor:
        V = self.vein  # (r, C)
        z = F.linear(h, V)  # (B, T, r): coordinates in the vein subspace
        y = F.linear(self.c_proj(F.gelu(self.c_fc(z))), V.T)  # (B, T, C): the subspace FFN, lifted by U = Vᵀ
        normal = h - F.linear(z, V.T)  # (B, T, C): the part of h off the subspace
        eps = normal.float().norm(dim=-1) / h.float().norm(dim=-1).clamp_min(1e-12)  # (B, T)
        over = eps > self.tau  # (B, T)
        if self.stab is not None:
            y = y + self.stab(h)  # (B, T, C)
        if self.comp_in is not None and self.comp_out is not None:
            comp = F.linear(F.linear(normal, self.comp_in), self.comp_out.T)  # (B, T, C): A (B n)
            y = y + comp * over.unsqueeze(-1).to(comp.dtype)  # only the tokens above tau
        if self.training:
            self._record(eps.detach(), over)
        out: Tensor = self.dropout(y)
        return out

    # --- statistics ---------------------------------------------------------------------

    @torch.no_grad()
    def _record(self, eps: Tensor, over: Tensor) -> None:
        step = torch.stack([eps.sum(), over.sum(), eps.new_tensor(float(eps.numel()))]).double()
        self._acc = step if self._acc is None else self._acc + step

    def stats_tensor(self) -> Tensor | None:
        """``(Σε, #(ε > τ), #tokens)`` of the training forwards since :meth:`reset_stats` (fp64), or None."""
        return self._acc

    def reset_stats(self) -> None:
        """Forget the accumulated statistics (the plugin calls it at each step's begin)."""
        self._acc = None

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, rank={self.rank}, tau={self.tau}"
