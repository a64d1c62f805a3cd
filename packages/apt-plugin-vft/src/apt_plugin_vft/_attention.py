"""Tri-Vein attention (``attention:tva``): causal multi-head attention in a rank-r vein subspace per head.

For head ``h`` with ``q_h, k_h, v_h`` of width ``hs = d_model / n_head`` from the usual
``c_attn``, and a vein ``P_h`` of shape ``(r, hs)`` with orthonormal rows::

    q̃, k̃, ṽ = P_h q_h, P_h k_h, P_h v_h                 # (B, nh, T, r)
    o_h = P_hᵀ · SDPA(q̃, k̃, ṽ, is_causal=True)         # scale 1/√r
    y = c_proj(concat_h o_h)

The projector is per head (the original sized it for ``d_model`` and applied it per head,
so only ``n_head = 1`` ran). Since ``P_h`` is linear it folds into the weights:
``P_h W_{q,k,v},h`` and ``W_o,h P_hᵀ`` are formed once per forward (O(r·d²), independent of
the tokens), and the tokens then go through an attention of head size ``r``. ``fold=False``
computes the same function the literal way (full ``q, k, v``, then ``P_h``), for reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import nn

from apt_plugin_vft._vein import orthonormal_rows


__all__ = ["TriVeinAttention"]


class TriVeinAttention(nn.Module):
    """Causal self-attention whose scores and values live in a per-head rank-``rank`` vein subspace.

    Same constructor keywords as the core ``attention:causal`` provider plus ``rank`` and
    ``fold``; ``c_attn`` and ``c_proj`` have the core's shapes, so a core attention's weights
    load into it (``strict=False``: the vein is extra). With ``rank = d_model / n_head`` and
    ``P_h = I`` it computes exactly what :class:`apt.model.CausalSelfAttention` computes.

    :param rank: ``r``, the vein rank of each head, ``1 <= r <= d_model / n_head``.
    :param fold: fold ``P_h`` into the q/k/v and output weights (fast) or apply it to the
        full-width q/k/v (the literal formulation).
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        block_size: int,
        dropout: float = 0.0,
        bias: bool = False,
        rank: int = 16,
        fold: bool = True,
    ) -> None:
        super().__init__()
        if d_model % n_head != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_head ({n_head})")
        hs = d_model // n_head
        if not 1 <= rank <= hs:
            raise ValueError(f"rank ({rank}) must be between 1 and the head size d_model/n_head ({hs})")
        self.n_head = n_head
        self.d_model = d_model
        self.block_size = block_size
        self.rank = rank
        self.fold = fold
        self.dropout = dropout
        self.c_attn = nn.Linear(d_model, 3 * d_model, bias=bias)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(d_model, d_model, bias=bias)
        self.vein = nn.Parameter(orthonormal_rows(n_head, rank, hs))  # (nh, r, hs): P_h, orthonormal rows
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.size()  # batch, sequence length, d_model
        nh, r, hs = self.vein.shape
        P = self.vein  # (nh, r, hs)
        if self.fold:
            # P_h folded into the rows of head h's q/k/v weights: (3, nh, r, C)
            w = torch.einsum("hrs,khsc->khrc", P, self.c_attn.weight.view(3, nh, hs, C)).reshape(3 * nh * r, C)
            b = None
            if self.c_attn.bias is not None:
                b = torch.einsum("hrs,khs->khr", P, self.c_attn.bias.view(3, nh, hs)).reshape(3 * nh * r)
            qkv = F.linear(x, w, b).view(B, T, 3, nh, r)  # (B, T, 3, nh, r)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, r)
        else:
            q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
            Pt = P.transpose(-1, -2)  # (nh, hs, r)
            q = q.view(B, T, nh, hs).transpose(1, 2) @ Pt  # (B, nh, T, r)
            k = k.view(B, T, nh, hs).transpose(1, 2) @ Pt  # (B, nh, T, r)
            v = v.view(B, T, nh, hs).transpose(1, 2) @ Pt  # (B, nh, T, r)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )  # (B, nh, T, r), scores scaled by 1/sqrt(r)
        if self.fold:
            # the lift P_hᵀ folded into head h's columns of c_proj: (C, nh, r)
            wo = torch.einsum("chs,hrs->chr", self.c_proj.weight.view(C, nh, hs), P).reshape(C, nh * r)
            out = F.linear(y.transpose(1, 2).reshape(B, T, nh * r), wo, self.c_proj.bias)  # (B, T, C)
        else:
            y = (y @ P).transpose(1, 2).contiguous().view(B, T, C)  # lift each head back: (B, T, C)
            out = self.c_proj(y)  # (B, T, C)
        result: Tensor = self.resid_dropout(out)
        return result

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_head={self.n_head}, rank={self.rank}, fold={self.fold}"
