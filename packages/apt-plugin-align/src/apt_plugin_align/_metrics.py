"""Metrics of the align plugin: per-step means of the raw terms, and stable-vs-live validation."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from collections.abc import Iterable

import torch
from torch import Tensor
from torch import nn

from apt_plugin_align._losses import argmax_agreement


__all__ = ["StepStats", "compare_states", "summarize_comparison"]


class StepStats:
    """Sums of the raw KL and hidden terms over one optimizer step's micro-batches.

    Values stay on the device as tensors until :meth:`means`, so logging costs one
    synchronisation per step, not one per micro-batch.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the current step."""
        self._kl: Tensor | None = None
        self._hidden: Tensor | None = None
        self.count = 0

    def add(self, kl: Tensor, hidden: Tensor | None) -> None:
        """Record one micro-batch's raw (unweighted) ``kl`` and ``1 - cos`` terms."""
        kl = kl.detach()
        self._kl = kl if self._kl is None else self._kl + kl
        if hidden is not None:
            hidden = hidden.detach()
            self._hidden = hidden if self._hidden is None else self._hidden + hidden
        self.count += 1

    def means(self, all_reduce_sum: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """``{"kl": ..., "hidden": ...}`` averaged over the recorded micro-batches (empty if none).

        :param all_reduce_sum: sums a tensor over processes in place (``trainer.all_reduce_sum``):
            the average is then over every process's micro-batches (a collective: every rank
            calls it once per step, as the trainer's ``on_step_end`` does).
        """
        if self.count == 0 or self._kl is None:
            return {}
        hidden = self._hidden if self._hidden is not None else torch.zeros_like(self._kl)
        sums = torch.stack([self._kl.float(), hidden.float(), self._kl.new_full((), float(self.count))])
        if all_reduce_sum is not None:
            all_reduce_sum(sums)
        kl, hidden_sum, count = sums.tolist()  # the step's one host read
        out = {"kl": kl / count}
        if self._hidden is not None:
            out["hidden"] = hidden_sum / count
        return out


@torch.no_grad()
def compare_states(
    live: nn.Module,
    stable: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    device: torch.device,
    autocast_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Validation sums of both states on the same batches, for reduction over processes.

    Losses are each model's own mean token cross-entropy per batch (``model(x, y).loss``),
    summed over batches, exactly as the trainer computes ``val_loss``; agreement counts the
    valid tokens (target ``>= 0``) where both states predict the same next token.

    :returns: ``(5,)`` fp64 tensor on ``device``: live loss sum, stable loss sum, number of
        batches, agreeing tokens, valid tokens. See :func:`summarize_comparison`.
    """
    totals = torch.zeros(5, dtype=torch.float64, device=device)
    for xb, yb in batches:
        x, y = xb.to(device), yb.to(device)
        with _autocast(device, autocast_dtype):
            live_out = live(x, y)
            stable_out = stable(x, y)
        agree, n = argmax_agreement(live_out.logits, stable_out.logits, y >= 0)
        totals += torch.tensor(
            [float(live_out.loss), float(stable_out.loss), 1.0, agree, n], dtype=torch.float64, device=device
        )
    return totals


def summarize_comparison(totals: Tensor) -> dict[str, float]:
    """``{"live_val_loss", "stable_val_loss", "argmax_agreement"}`` from :func:`compare_states` sums (NaN if empty)."""
    live, stable, batches, agree, tokens = (float(v) for v in totals.tolist())
    return {
        "live_val_loss": live / batches if batches else math.nan,
        "stable_val_loss": stable / batches if batches else math.nan,
        "argmax_agreement": agree / tokens if tokens else math.nan,
    }


def _autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[object]:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
