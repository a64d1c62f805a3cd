"""The two consistency terms between the stable (teacher) and the live (align) state.

Both are means over *valid* tokens (the DistilBERT ``batchmean`` choice), computed in fp32,
and both take the teacher side detached, so no gradient ever reaches the stable state.
Neither applies its weight: the plugin composes ``w(t) * (alpha * T^2 * kl + beta * hidden)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


__all__ = ["argmax_agreement", "hidden_cosine_loss", "temperature_kl"]


def _compute_dtype(x: Tensor) -> torch.dtype:
    """fp32 for half/bf16/fp32 inputs; fp64 stays fp64 (exact-value tests, gradcheck)."""
    return torch.promote_types(x.dtype, torch.float32)


def _masked_mean(per_token: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``per_token (...)`` over the positions where ``mask`` is true; ``0`` when none is.

    Elementwise (``where`` + sum) rather than boolean indexing: no gather/scatter in the
    backward pass and no host synchronisation; masked positions contribute exactly 0.
    """
    if mask is None:
        return per_token.mean()
    if mask.shape != per_token.shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match the token shape {tuple(per_token.shape)}")
    total = torch.where(mask, per_token, torch.zeros_like(per_token)).sum()
    return total / mask.sum().clamp(min=1)


def temperature_kl(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float, mask: Tensor | None = None
) -> Tensor:
    """``KL(softmax(teacher / T) || softmax(student / T))`` per valid token, averaged.

    This is the *raw* divergence; Hinton's distillation loss is ``T**2`` times it (the factor
    keeps the soft-target gradient, ``T * (q_T - p_T)``, comparable across temperatures;
    arXiv 1503.02531 section 2.1). It is a true KL, so it is exactly 0 when both states agree
    (a cross-entropy would leave the teacher's entropy).

    :param student_logits: ``(..., V)`` logits of the live model (gradients flow into them).
    :param teacher_logits: ``(..., V)`` logits of the stable state (detached here).
    :param temperature: ``T > 0``, applied to both sides.
    :param mask: boolean ``(...)`` of valid tokens; ``None`` means all are valid.
    :returns: a scalar in fp32 (fp64 for fp64 inputs); ``0`` (not NaN) when no token is valid.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    # fp32 before dividing: at T = 0.15 the logits grow 6.7x, beyond what bf16 resolves well
    dtype = _compute_dtype(student_logits)
    log_q = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)  # (..., V) student, log space
    log_p = F.log_softmax(teacher_logits.detach().to(dtype) / temperature, dim=-1)  # (..., V) teacher (no log(0))
    per_token = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=-1)  # (...) p (log p - log q)
    return _masked_mean(per_token, mask)


def hidden_cosine_loss(student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None) -> Tensor:
    """``1 - cos(h_student, h_teacher)`` per valid token, averaged; in ``[0, 2]``.

    Norm-invariant (BYOL's normalised regression, arXiv 2006.07733, up to a factor 2). A zero
    vector gives ``cos = 0`` through ``cosine_similarity``'s eps clamp, so a loss of 1, not NaN.

    :param student_hidden: ``(..., C)`` final hidden states of the live model.
    :param teacher_hidden: ``(..., C)`` final hidden states of the stable state (detached here).
    :param mask: boolean ``(...)`` of valid tokens; ``None`` means all are valid.
    :returns: a scalar in fp32 (fp64 for fp64 inputs); ``0`` (not NaN) when no token is valid.
    """
    dtype = _compute_dtype(student_hidden)
    cos = F.cosine_similarity(student_hidden.to(dtype), teacher_hidden.detach().to(dtype), dim=-1)  # (...)
    return _masked_mean(1.0 - cos, mask)


def argmax_agreement(logits_a: Tensor, logits_b: Tensor, mask: Tensor | None = None) -> tuple[int, int]:
    """How many valid tokens have the same argmax in both ``(..., V)`` logits: ``(agree, total)``."""
    same = logits_a.detach().argmax(dim=-1) == logits_b.detach().argmax(dim=-1)  # (...)
    if mask is not None:
        same = same & mask
        return int(same.sum().item()), int(mask.sum().item())
    return int(same.sum().item()), same.numel()
