"""Expert banks: E feed-forward networks whose weights live in stacked tensors.

Stacking the experts' weights as ``(E, out, in)`` tensors lets them run as one grouped
matmul (:func:`torch.nn.functional.grouped_mm`) over token rows sorted by expert, or as
one matmul per expert over contiguous slices. ``ModuleExperts`` is the fallback for an
arbitrary FFN module (e.g. a plugin's) that cannot be expressed as stacked weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any
from typing import Literal
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import nn


__all__ = ["ExpertActivation", "ModuleExperts", "StackedExperts", "compute_dtype", "grouped_mm_available"]

ExpertActivation = Literal["gelu", "swiglu"]


def _grouped_mm_op() -> Callable[..., Tensor] | None:
    """The grouped matmul of this torch: public ``F.grouped_mm`` (torch >= 2.10), else the
    private ``torch._grouped_mm`` it wraps (torch 2.8 and 2.9, CUDA), else None."""
    op = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
    return cast("Callable[..., Tensor] | None", op)


def grouped_mm_available() -> bool:
    """Whether this torch has a grouped matmul (``torch.nn.functional.grouped_mm``, or
    ``torch._grouped_mm`` on torch 2.8 and 2.9)."""
    return _grouped_mm_op() is not None


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype matmuls on ``x`` run in: the autocast dtype when autocast is on, else x's."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _grouped_linear(xs: Tensor, weight: Tensor, offs: Tensor) -> Tensor:
    """``xs[rows of group e] @ weight[e].T`` for every group; ``(M, in) x (E, out, in) -> (M, out)``."""
    op = _grouped_mm_op()
    assert op is not None, "callers check grouped_mm_available() first"
    return op(xs, weight.transpose(-2, -1), offs=offs)


class _ExpertBias(torch.autograd.Function):
    """``out + b[e]`` on every row of expert ``e``, for ``out (M, F)`` with rows grouped by expert.

    grouped_mm has no bias. Adding ``b.repeat_interleave(counts)`` instead would be right in the
    forward, but its backward is ``index_add_``, which CUDA runs with atomic adds in the bias's
    compute dtype: nondeterministic, and in bf16 it loses most of a long sum. Here the gradient
    of ``b`` is a per-expert fp32 sum over its rows (a segmented reduction, no atomics).
    """

    @staticmethod
    def forward(ctx: Any, out: Tensor, b: Tensor, counts: Tensor) -> Tensor:
        ctx.save_for_backward(counts)
        ctx.b_dtype = b.dtype
        return out + b.to(out.dtype).repeat_interleave(counts, dim=0, output_size=out.shape[0])  # (M, F)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        (counts,) = ctx.saved_tensors
        grad_b = torch.segment_reduce(grad.float(), "sum", lengths=counts, axis=0)  # (E, F), fp32
        return grad, grad_b.to(ctx.b_dtype), None


class StackedExperts(nn.Module):
    """E GELU or SwiGLU FFNs with stacked weights.

    GELU expert e: ``w2[e] @ gelu(w1[e] @ x + b1[e]) + b2[e]`` with ``w1: (E, F, D)``.
    SwiGLU expert e: ``w2[e] @ (silu(gate) * up)`` where ``[gate | up] = w1[e] @ x + b1[e]`` and
    ``w1: (E, 2F, D)``: the gate and up projections are fused as in ``apt.model.SwiGLU.c_fc`` and
    transformers v5's ``gate_up_proj`` (Mixtral's w1 = ``w1[e, :F]``, w3 = ``w1[e, F:]``), so one
    matmul serves both. ``w2: (E, D, F)``; biases ``b1: (E, F or 2F)``, ``b2: (E, D)``.
    Default init is that of ``nn.Linear`` (uniform in ``±1/sqrt(fan_in)``), per expert.
    """

    def __init__(
        self, num_experts: int, d_model: int, d_ff: int, activation: ExpertActivation = "gelu", bias: bool = False
    ) -> None:
        super().__init__()
        if activation not in ("gelu", "swiglu"):
            raise ValueError(f"expert activation must be 'gelu' or 'swiglu', got {activation!r}")
        self.num_experts, self.d_model, self.d_ff = num_experts, d_model, d_ff
        self.activation: ExpertActivation = activation
        d_in = 2 * d_ff if activation == "swiglu" else d_ff  # rows of the first projection
        self.w1 = nn.Parameter(torch.empty(num_experts, d_in, d_model))
        self.w2 = nn.Parameter(torch.empty(num_experts, d_model, d_ff))
        self.b1 = nn.Parameter(torch.empty(num_experts, d_in)) if bias else None
        self.b2 = nn.Parameter(torch.empty(num_experts, d_model)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s default init, applied to each expert's matrices."""
        for w, b in ((self.w1, self.b1), (self.w2, self.b2)):
            bound = 1.0 / math.sqrt(w.shape[-1])
            with torch.no_grad():
                w.uniform_(-bound, bound)
                if b is not None:
                    b.uniform_(-bound, bound)

    # --- one expert ---------------------------------------------------------------------

    def expert_forward(self, e: int, x: Tensor) -> Tensor:
        """Expert ``e`` on rows ``x (M, D) -> (M, D)``."""
        return self._expert(self._per_expert(), e, x)

    def _per_expert(self) -> dict[str, tuple[Tensor, ...]]:
        # unbind once: its backward stacks the E gradients into one tensor, whereas indexing
        # w[e] per expert would make E full-size zero-filled gradients and add them up
        return {name: p.unbind(0) for name, p in self.named_parameters()}

    def _expert(self, per: dict[str, tuple[Tensor, ...]], e: int, x: Tensor) -> Tensor:
        def lin(name: str, inp: Tensor) -> Tensor:
            bias = per.get("b" + name[1:])
            return F.linear(inp, per[name][e].to(inp.dtype), None if bias is None else bias[e].to(inp.dtype))

        h = self._activate(lin("w1", x))  # (M, F)
        return lin("w2", h)  # (M, D)

    def _activate(self, h1: Tensor) -> Tensor:
        """gelu(h1), or silu(gate) * up for ``h1 = [gate | up]``: ``(M, F or 2F) -> (M, F)``."""
        if self.activation == "gelu":
            return F.gelu(h1)
        gate, up = torch.split(h1, self.d_ff, dim=-1)  # 2 x (M, F)
        out: Tensor = F.silu(gate) * up
        return out

    # --- all experts on rows sorted by expert -------------------------------------------

    def forward_sliced(self, xs: Tensor, counts: list[int]) -> Tensor:
        """Experts on rows sorted by expert: one matmul per expert over its contiguous slice.

        :param xs: ``(M, D)`` rows grouped by expert (expert 0's rows first).
        :param counts: rows of each expert, summing to M (host ints).
        """
        per = self._per_expert()
        parts = [self._expert(per, e, xe) for e, xe in enumerate(torch.split(xs, counts)) if xe.shape[0] > 0]
        return torch.cat(parts) if parts else xs.new_zeros(0, self.d_model)  # (M, D)

    def forward_grouped(self, xs: Tensor, counts: Tensor) -> Tensor:
        """Experts on rows sorted by expert as grouped matmuls (no host sync).

        :param xs: ``(M, D)`` rows grouped by expert.
        :param counts: ``(E,)`` int tensor of rows per expert on xs's device, summing to M.
        """
        offs = counts.cumsum(0).to(torch.int32)  # (E,) end row of each group
        dt = compute_dtype(xs)
        xs = xs.to(dt)  # grouped_mm is not autocast: cast like torchtitan (bf16 is the fast path on SM90)

        def glin(w: Tensor, b: Tensor | None, inp: Tensor) -> Tensor:
            out = _grouped_linear(inp, w.to(dt), offs)
            if b is None:
                return out
            return _ExpertBias.apply(out, b, counts)  # type: ignore[no-any-return]

        h = self._activate(glin(self.w1, self.b1, xs))  # (M, F)
        return glin(self.w2, self.b2, h)  # (M, D)

    def grouped_ok(self, dtype: torch.dtype) -> bool:
        """Whether grouped_mm accepts these shapes: row strides must be multiples of 16 bytes."""
        size = torch.empty(0, dtype=dtype).element_size()
        return grouped_mm_available() and (self.d_model * size) % 16 == 0 and (self.d_ff * size) % 16 == 0

    def forward_dense(self, x: Tensor) -> Tensor:
        """Every row through every expert, summed: used for shared experts. ``(..., D) -> (..., D)``."""
        per = self._per_expert()
        out = self._expert(per, 0, x)
        for e in range(1, self.num_experts):
            out = out + self._expert(per, e, x)
        return out

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, d_model={self.d_model}, d_ff={self.d_ff}, "
            f"activation={self.activation!r}, bias={self.b1 is not None}"
        )


class ModuleExperts(nn.Module):
    """E copies of an arbitrary FFN module ``(B, T, D) -> (B, T, D)``, run over sorted slices.

    Used when upcycling an FFN whose weights cannot be mapped onto :class:`StackedExperts`
    (an unknown provider). Slower on GPU (one call per expert), exact by construction.
    """

    def __init__(self, ffn: nn.Module, num_experts: int) -> None:
        super().__init__()
        self.experts = nn.ModuleList(copy.deepcopy(ffn) for _ in range(num_experts))
        self.num_experts = num_experts

    def expert_forward(self, e: int, x: Tensor) -> Tensor:
        """Expert ``e`` on rows ``x (M, D) -> (M, D)``."""
        return self.experts[e](x.unsqueeze(0)).squeeze(0)  # type: ignore[no-any-return]

    def forward_sliced(self, xs: Tensor, counts: list[int]) -> Tensor:
        """See :meth:`StackedExperts.forward_sliced`."""
        parts = [self.expert_forward(e, xe) for e, xe in enumerate(torch.split(xs, counts)) if xe.shape[0] > 0]
        return torch.cat(parts) if parts else xs.new_zeros(0, xs.shape[-1])
