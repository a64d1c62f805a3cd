"""Token dispatch: sort token slots by expert, run the experts, combine deterministically.

A *slot* is one (token, choice) pair: token ``t``'s ``j``-th expert is slot ``t * k + j``
of the ``N * k`` slots. Dispatch sorts the slots by expert (stable argsort, so equal
experts keep slot order), runs each expert on its contiguous block of rows, puts the
results back in slot order (``index_copy`` with a permutation: no collisions, no atomics)
and sums the k slots of each token with their gates (a reshape-sum: deterministic).

Capacity mode keeps, per expert, the ``capacity`` slots with the largest gate (ties:
lower slot index first); the other slots are dropped: they contribute zero, and the
token keeps only its residual path for that choice.
"""

from __future__ import annotations

import math
from typing import Literal
from typing import NamedTuple

import torch
from torch import Tensor

from apt_plugin_moe._experts import ModuleExperts
from apt_plugin_moe._experts import StackedExperts


__all__ = ["DispatchPlan", "capacity_for", "expert_counts", "loop_moe", "plan_dispatch", "sorted_moe"]

Backend = Literal["grouped_mm", "sliced"]


class DispatchPlan(NamedTuple):
    """How the ``N * k`` slots go to the experts.

    :ivar order: ``(N*k,)`` slot ids: the kept slots grouped by expert (expert 0 first),
        then the dropped slots.
    :ivar counts: ``(E,)`` int64, slots routed to each expert (before dropping).
    :ivar kept_counts: ``(E,)`` int64, slots each expert processes.
    :ivar keep: ``(N*k,)`` bool in slot order, or ``None`` when dropless.
    :ivar num_dropped: ``()`` int64, number of dropped slots.
    """

    order: Tensor
    counts: Tensor
    kept_counts: Tensor
    keep: Tensor | None
    num_dropped: Tensor


def capacity_for(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float | None) -> int | None:
    """Slots per expert: ``ceil(capacity_factor * num_tokens * top_k / num_experts)`` (Megatron's rule).

    ``None`` (dropless) when ``capacity_factor`` is None.
    """
    if capacity_factor is None:
        return None
    return max(1, math.ceil(capacity_factor * num_tokens * top_k / num_experts))


def expert_counts(expert_ids: Tensor, num_experts: int) -> Tensor:
    """Slots per expert, ``(E,)`` int64. Integer ``scatter_add`` is exact and, unlike ``bincount``
    on CUDA, needs no host sync to size its output."""
    flat = expert_ids.reshape(-1)
    return torch.zeros(num_experts, dtype=torch.int64, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))


def plan_dispatch(experts: Tensor, weights: Tensor, num_experts: int, capacity: int | None) -> DispatchPlan:
    """Sort slots by expert and, with a capacity, choose the slots to drop.

    :param experts: ``(N, k)`` expert ids.
    :param weights: ``(N, k)`` gates (only read with a capacity).
    :param num_experts: E.
    :param capacity: max slots per expert, or None for dropless.
    """
    flat = experts.reshape(-1)  # (S,) S = N*k, slot order
    counts = expert_counts(flat, num_experts)  # (E,)
    if capacity is None:
        order = torch.argsort(flat, stable=True)  # (S,)
        return DispatchPlan(order, counts, counts, None, counts.new_zeros(()))

    # Sort by gate descending (stable: ties keep slot order), then stably by expert, so each
    # expert's block lists its slots from the largest gate down.
    by_gate = torch.argsort(weights.reshape(-1).detach(), descending=True, stable=True)  # (S,)
    order = by_gate[torch.argsort(flat[by_gate], stable=True)]  # (S,)
    starts = torch.cumsum(counts, 0) - counts  # (E,) first row of each expert's block
    rank = torch.arange(order.numel(), device=order.device) - starts[flat[order]]  # (S,) rank inside its block
    keep_sorted = rank < capacity  # (S,)
    keep = torch.empty_like(keep_sorted)
    keep[order] = keep_sorted  # (S,) back in slot order
    # kept slots first (still grouped by expert), dropped slots at the end
    order = order[torch.argsort((~keep_sorted).to(torch.uint8), stable=True)]
    kept_counts = counts.clamp(max=capacity)  # (E,)
    return DispatchPlan(order, counts, kept_counts, keep, flat.numel() - kept_counts.sum())


class _GatherSlots(torch.autograd.Function):
    """``x[token_of_row]`` whose backward sums the k copies of a token with a reshape-sum.

    Plain indexing would accumulate the k gradients of a token with atomics on CUDA
    (nondeterministic); here the backward scatters the rows into their slots (a
    permutation: no collisions) and sums over the k slots.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, rows: Tensor, top_k: int) -> Tensor:
        ctx.save_for_backward(rows)
        ctx.shape = (x.shape[0], top_k, x.shape[1])  # type: ignore[attr-defined]
        return x[torch.div(rows, top_k, rounding_mode="floor")]  # (M, D)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        (rows,) = ctx.saved_tensors  # type: ignore[attr-defined]
        n, k, d = ctx.shape  # type: ignore[attr-defined]
        slots = grad.new_zeros(n * k, d).index_copy_(0, rows, grad)  # (N*k, D)
        return slots.view(n, k, d).sum(1), None, None  # (N, D)


def sorted_moe(
    x: Tensor, weights: Tensor, plan: DispatchPlan, bank: StackedExperts | ModuleExperts, backend: Backend
) -> Tensor:
    """Run the experts on slots sorted by expert and combine them with their gates.

    :param x: ``(N, D)`` tokens.
    :param weights: ``(N, k)`` gates.
    :param plan: from :func:`plan_dispatch`.
    :param bank: the experts.
    :param backend: ``"grouped_mm"`` (one grouped matmul per weight, no host sync when
        dropless) or ``"sliced"`` (one matmul per expert; one host sync for the counts).
    :returns: ``(N, D)``, the gate-weighted sum of each token's kept experts.
    """
    n, d = x.shape
    k = weights.shape[1]
    s = n * k
    if backend == "sliced" or isinstance(bank, ModuleExperts):
        counts_host = plan.kept_counts.tolist()
        n_kept = sum(counts_host)
    else:
        n_kept = s if plan.keep is None else int(plan.kept_counts.sum())  # sync only in capacity mode
    rows = plan.order if n_kept == s else plan.order[:n_kept]  # (M,) slot ids of the kept rows
    xs: Tensor = _GatherSlots.apply(x, rows, k)  # type: ignore[no-untyped-call, unused-ignore]  # (M, D) grouped by expert
    if backend == "sliced" or isinstance(bank, ModuleExperts):
        ys = bank.forward_sliced(xs, counts_host)  # (M, D)
    else:
        ys = bank.forward_grouped(xs, plan.kept_counts)  # (M, D)
    # back to slot order; dropped slots stay zero
    y_slots = (ys.new_empty(s, d) if n_kept == s else ys.new_zeros(s, d)).index_copy(0, rows, ys)  # (N*k, D)
    return (y_slots.view(n, k, d) * weights.to(ys.dtype).unsqueeze(-1)).sum(1)  # (N, D)


def loop_moe(
    x: Tensor, weights: Tensor, experts: Tensor, keep: Tensor | None, bank: StackedExperts | ModuleExperts
) -> Tensor:
    """The reference: HF Mixtral's per-expert mask loop (``where`` + ``index_add_``).

    :param x: ``(N, D)``; ``weights``, ``experts``: ``(N, k)``; ``keep``: ``(N*k,)`` bool or None.
    """
    n, k = experts.shape
    out = x.new_zeros(x.shape)  # (N, D)
    mask_all = torch.ones_like(experts, dtype=torch.bool) if keep is None else keep.view(n, k)
    for e in range(bank.num_experts):
        tok, slot = torch.where((experts == e) & mask_all)  # (m,), (m,)
        if tok.numel() == 0:
            continue
        y = bank.expert_forward(e, x[tok]) * weights[tok, slot].to(x.dtype).unsqueeze(-1)  # (m, D)
        out = out.index_add(0, tok, y)
    return out
