"""The core building blocks of the GPT, each registered as a provider.

The registry builds them by keyword (``attention:causal``, ``ffn:gelu``, ``ffn:gelu_tanh``,
``ffn:swiglu``, ``norm:layernorm``, ``norm:rmsnorm``). Every module maps ``(B, T, C) -> (B, T, C)``.
Output projections are called ``c_proj`` so that :class:`~apt.model.GPT` finds them and
applies the scaled residual initialisation (GPT-2 paper, section 2.3).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import nn


__all__ = ["MLP", "CausalSelfAttention", "LayerNorm", "RMSNorm", "RotaryEmbedding", "SwiGLU", "build_gelu_tanh_mlp"]


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's ``nn.LayerNorm`` cannot drop only the bias)."""

    def __init__(self, d_model: int, bias: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


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


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021, arXiv 2104.09864) in the half-split layout.

    Dimension ``i`` of a head is rotated together with dimension ``i + hs/2`` (``rotate_half``),
    the convention of Hugging Face's Llama, so q/k projection weights map onto it without a
    permutation. The angles are computed in fp32 outside autocast, as transformers does.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head size, got {head_dim}")
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Rotate ``q`` ``(B, nh, T, hs)`` and ``k`` ``(B, nkv, T, hs)`` by their positions ``0..T-1``."""
        T, hs = q.size(-2), self.head_dim
        with torch.autocast(device_type=q.device.type, enabled=False):
            exponent = torch.arange(0, hs, 2, dtype=torch.int64, device=q.device).float() / hs
            inv_freq = 1.0 / (self.theta**exponent)  # (hs/2,)
            t = torch.arange(T, dtype=torch.float32, device=q.device)  # (T,)
            freqs = torch.outer(t, inv_freq)  # (T, hs/2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (T, hs): each angle for dims i and i + hs/2
            cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}"


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)  # 2 x (..., hs/2)
    return torch.cat((-x2, x1), dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention on ``F.scaled_dot_product_attention``.

    ``is_causal=True`` lets PyTorch pick a fused kernel (flash / memory-efficient on
    CUDA) and never materialises a mask. With ``n_kv_head < n_head`` it is grouped-query
    attention (Ainslie et al. 2023): query heads ``j*r .. (j+1)*r - 1`` share key/value head
    ``j``, ``r = n_head / n_kv_head``. With ``rope_theta`` set, q and k are rotated
    (:class:`RotaryEmbedding`). ``c_attn`` rows are ``[q (n_head*hs) | k (n_kv_head*hs) | v (n_kv_head*hs)]``.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        block_size: int,
        dropout: float = 0.0,
        bias: bool = False,
        n_kv_head: int | None = None,
        rope_theta: float | None = None,
    ) -> None:
        super().__init__()
        if d_model % n_head != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_head ({n_head})")
        n_kv_head = n_kv_head or n_head
        if n_head % n_kv_head != 0:
            raise ValueError(f"n_head ({n_head}) must be divisible by n_kv_head ({n_kv_head})")
        self.n_head = n_head
        self.n_kv_head = n_kv_head
        self.d_model = d_model
        self.head_dim = d_model // n_head
        self.block_size = block_size
        self.dropout = dropout
        kv = n_kv_head * self.head_dim
        self.c_attn = nn.Linear(d_model, d_model + 2 * kv, bias=bias)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(d_model, d_model, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.rope = RotaryEmbedding(self.head_dim, rope_theta) if rope_theta is not None else None

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.size()  # batch, sequence length, d_model
        hs, nh, nkv = self.head_dim, self.n_head, self.n_kv_head
        q, k, v = self.c_attn(x).split([C, nkv * hs, nkv * hs], dim=2)  # (B, T, C), 2 x (B, T, nkv*hs)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if self.rope is not None:
            q, k = self.rope(q, k)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True, enable_gqa=nkv != nh
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads: (B, T, C)
        out: Tensor = self.resid_dropout(self.c_proj(y))  # (B, T, C)
        return out


class MLP(nn.Module):
    """The GPT-2 feed-forward block: Linear, GELU, Linear.

    :param approximate: ``"none"`` (exact erf GELU, provider ``ffn:gelu``) or ``"tanh"``
        (OpenAI GPT-2's ``gelu_new``, provider ``ffn:gelu_tanh``).
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        dropout: float = 0.0,
        bias: bool = False,
        approximate: Literal["none", "tanh"] = "none",
    ) -> None:
        super().__init__()
        self.approximate = approximate
        self.c_fc = nn.Linear(d_model, d_ff, bias=bias)
        self.c_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.c_fc(x), approximate=self.approximate)  # (B, T, d_ff)
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


def build_gelu_tanh_mlp(d_model: int, d_ff: int, dropout: float = 0.0, bias: bool = False) -> MLP:
    """Provider ``ffn:gelu_tanh``: the GPT-2 MLP with the tanh-approximated GELU (``gelu_new``)."""
    return MLP(d_model, d_ff, dropout=dropout, bias=bias, approximate="tanh")
