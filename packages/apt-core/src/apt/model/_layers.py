"""The core building blocks of the GPT, each registered as a provider.

The registry builds them by keyword (``attention:causal``, ``ffn:gelu``, ``ffn:swiglu``,
``norm:layernorm``, ``norm:rmsnorm``). Every module maps ``(B, T, C) -> (B, T, C)``.
Output projections are called ``c_proj`` so that :class:`~apt.model.GPT` finds them and
applies the scaled residual initialisation (GPT-2 paper, section 2.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import nn


__all__ = ["MLP", "CausalSelfAttention", "LayerNorm", "RMSNorm", "SwiGLU"]


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's ``nn.LayerNorm`` cannot drop only the bias)."""

    def __init__(self, d_model: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019, arXiv 1910.07467): no centring, one gain."""

    def __init__(self, d_model: int, bias: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        # normalise in fp32 so that bf16 activations do not lose the small mean square
        xf = x.float()
        y = (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight
        return y + self.bias if self.bias is not None else y


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention on ``F.scaled_dot_product_attention``.

    ``is_causal=True`` lets PyTorch pick a fused kernel (flash / memory-efficient on
    CUDA) and never materialises a mask.
    """

    def __init__(self, d_model: int, n_head: int, block_size: int, dropout: float = 0.0, bias: bool = False) -> None:
        super().__init__()
        if d_model % n_head != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.d_model = d_model
        self.block_size = block_size
        self.dropout = dropout
        self.c_attn = nn.Linear(d_model, 3 * d_model, bias=bias)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(d_model, d_model, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.size()  # batch, sequence length, d_model
        q, k, v = self.c_attn(x).split(self.d_model, dim=2)  # 3 x (B, T, C)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads: (B, T, C)
        out: Tensor = self.resid_dropout(self.c_proj(y))  # (B, T, C)
        return out


class MLP(nn.Module):
    """The GPT-2 feed-forward block: Linear, GELU, Linear."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, bias: bool = False) -> None:
        super().__init__()
        self.c_fc = nn.Linear(d_model, d_ff, bias=bias)
        self.c_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.c_fc(x))  # (B, T, d_ff)
        out: Tensor = self.dropout(self.c_proj(h))  # (B, T, C)
        return out


class SwiGLU(nn.Module):
    """Gated feed-forward block ``c_proj(silu(x W_gate) * (x W_up))`` (Shazeer 2020, arXiv 2002.05202).

    ``d_ff`` is the gated hidden width; ``2/3 * 4 * d_model`` keeps the parameter count of
    the GELU MLP, as in LLaMA. The gate and up projections share one matmul.
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, bias: bool = False) -> None:
        super().__init__()
        self.d_ff = d_ff
        self.c_fc = nn.Linear(d_model, 2 * d_ff, bias=bias)  # [gate | up]
        self.c_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.c_fc(x).split(self.d_ff, dim=-1)  # 2 x (B, T, d_ff)
        out: Tensor = self.dropout(self.c_proj(F.silu(gate) * up))  # (B, T, C)
        return out
