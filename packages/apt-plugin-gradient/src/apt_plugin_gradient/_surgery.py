"""Gradient surgery between loss terms: PCGrad, and the term-gradient cosines.

Gradients here are flattened: one row per term, ``G`` of shape ``(T, P)``.
"""

from __future__ import annotations

import torch
from torch import Tensor


__all__ = ["pcgrad", "term_cosines"]


@torch.no_grad()
def pcgrad(grads: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """PCGrad (Yu et al. 2020, arXiv 2001.06782): project each term's gradient off the ones it conflicts with.

    For each term t: ``g'_t = g_t``; for every other term j, in a random order drawn from
    ``generator``: if ``g'_t . g_j < 0`` then ``g'_t <- g'_t - (g'_t . g_j / |g_j|^2) g_j``.
    The update is ``sum_t g'_t`` (the caller sums the rows). Non-conflicting pairs are
    left unchanged. No host synchronisation: the condition is a ``clamp``.

    :param grads: ``(T, P)`` per-term gradients (fp32 recommended).
    :returns: ``(T, P)`` projected gradients.
    """
    n_terms = grads.shape[0]
    sq = (grads @ grads.T).diagonal().clamp_min(1e-30)  # (T,) |g_j|^2
    out = grads.clone()
    for t in range(n_terms):
        order = torch.randperm(n_terms, generator=generator).tolist()
        for j in order:
            if j == t:
                continue
            dot = out[t] @ grads[j]  # ()
            # g'_t -= min(dot, 0) / |g_j|^2 * g_j: only a conflict (dot < 0) moves it; one fused op
            out[t].addcmul_(grads[j], dot.clamp(max=0.0) / sq[j], value=-1.0)
    return out


@torch.no_grad()
def term_cosines(grads: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise cosines and norms of per-term gradients.

    :param grads: ``(T, P)``.
    :returns: ``(T, T)`` cosine matrix and ``(T,)`` norms.
    """
    gram = grads @ grads.T  # (T, T)
    norms = gram.diagonal().clamp_min(0).sqrt()  # (T,)
    cos = gram / (norms[:, None] * norms[None, :]).clamp_min(1e-30)
    return cos, norms
