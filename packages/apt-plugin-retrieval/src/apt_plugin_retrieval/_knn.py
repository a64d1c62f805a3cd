"""The kNN-LM arithmetic, the key a model is queried with, and the fingerprint of its weights."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager
from contextlib import contextmanager
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor
from torch import nn

from apt.model import GPT
from apt.model import unwrap_model


__all__ = ["KeyRecorder", "autocast", "capture_keys", "knn_log_probs", "mix_log_probs", "weights_sha256"]


def knn_log_probs(dist: Tensor, vals: Tensor, temperature: float, vocab_size: int) -> Tensor:
    """``log p_kNN`` over the vocabulary from each query's neighbours.

    ``p_kNN(y) = sum_i 1[v_i = y] exp(-d_i / T) / sum_i exp(-d_i / T)`` (Khandelwal et al. 2020, eq. 2).

    :param dist: ``(N, k)`` squared L2 distances; ``inf`` marks a missing neighbour.
    :param vals: ``(N, k)`` the neighbours' next tokens; ``-1`` marks a missing neighbour.
    :param temperature: ``T > 0``.
    :returns: ``(N, V)`` float32 log-probabilities; ``-inf`` where no neighbour votes.
    """
    missing = vals < 0  # (N, k)
    logw = (-dist.float() / temperature).masked_fill(missing, float("-inf"))  # (N, k)
    logw = logw - torch.logsumexp(logw, dim=-1, keepdim=True)  # normalised in log space, (N, k)
    w = logw.exp().nan_to_num(0.0)  # a query with no neighbour at all votes for nothing
    p = torch.zeros(dist.size(0), vocab_size, dtype=torch.float32, device=dist.device)  # (N, V)
    p.scatter_add_(1, vals.clamp(min=0).long(), w)
    return p.log()


def mix_log_probs(log_lm: Tensor, log_knn: Tensor, lmbda: float) -> Tensor:
    """``log(lmbda * p_kNN + (1 - lmbda) * p_LM)``, computed in log space.

    Mixing probabilities, not logits (a pitfall of some implementations); ``logaddexp``
    also handles ``p_kNN = 0``. With ``lmbda = 0`` the result is ``log_lm`` bit for bit
    (``x + 0`` and ``logaddexp(x, -inf)`` are exact), with ``lmbda = 1`` it is ``log_knn``.
    """
    log_a = math.log1p(-lmbda) if lmbda < 1 else float("-inf")
    log_b = math.log(lmbda) if lmbda > 0 else float("-inf")
    return torch.logaddexp(log_lm + log_a, log_knn + log_b)


def _ffn_of_last_block(model: nn.Module) -> nn.Module:
    """``model.blocks[-1].ffn`` of an :class:`apt.model.GPT` (a MoE layer when moe replaced it)."""
    if not isinstance(model, GPT) or len(model.blocks) == 0:
        raise TypeError(f"{type(model).__name__} is not an apt GPT with blocks; use retrieval.key: final_hidden")
    ffn: nn.Module = model.blocks[-1].get_submodule("ffn")
    return ffn


class KeyRecorder:
    """Records the retrieval key of every forward pass of ``model`` until :meth:`remove`.

    ``last_ffn_input``: a forward pre-hook on ``model.blocks[-1].ffn``, looked up now, so a
    feed-forward a plugin swapped in (MoE) is the one hooked; its input is ``ln_2(x)`` of the
    last block (the paper's ``last_ffn_input``). ``final_hidden``: a forward hook on
    ``model.ln_f`` (the output head's input). Each forward appends one ``(B, T, C)`` tensor
    to :attr:`seen`. Only public module names are used; the core model is unchanged.
    """

    def __init__(self, model: nn.Module, key: str) -> None:
        inner = unwrap_model(model)
        self.seen: list[Tensor] = []
        if key == "last_ffn_input":
            self._handle = _ffn_of_last_block(inner).register_forward_pre_hook(self._pre_hook)
        else:
            self._handle = inner.get_submodule("ln_f").register_forward_hook(self._post_hook)

    def _pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.seen.append(args[0].detach())

    def _post_hook(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        self.seen.append(output.detach())

    def remove(self) -> None:
        """Unregister the hook."""
        self._handle.remove()


@contextmanager
def capture_keys(model: nn.Module, key: str) -> Iterator[list[Tensor]]:
    """A :class:`KeyRecorder` for the duration of the block; yields its list of captured keys."""
    recorder = KeyRecorder(model, key)
    try:
        yield recorder.seen
    finally:
        recorder.remove()


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of the model's state (names, dtypes, shapes and bytes, in name order).

    A datastore records the hash of the weights that made its keys; another model's
    queries would search a space they do not live in.
    """
    h = hashlib.sha256()
    state = unwrap_model(model).state_dict()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def autocast(device: torch.device | str, dtype: torch.dtype) -> AbstractContextManager[Any]:
    """The trainer's autocast for ``dtype`` (none for float32), as its validation runs the model."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
