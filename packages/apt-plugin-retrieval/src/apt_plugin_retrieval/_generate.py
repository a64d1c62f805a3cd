"""kNN-LM sampling: the ``logprobs:retrieval`` provider behind ``apt generate --retrieval``."""

from __future__ import annotations

from torch import Tensor
from torch import nn

from apt_plugin_retrieval._datastore import Datastore
from apt_plugin_retrieval._knn import KeyRecorder
from apt_plugin_retrieval._knn import knn_log_probs
from apt_plugin_retrieval._knn import mix_log_probs


__all__ = ["KnnLogprobs"]


class KnnLogprobs:
    """Mixes a datastore's ``p_kNN`` into the model's next-token log-probabilities while it samples.

    Pass it as ``GPT.generate(..., logprobs_fn=...)``: the model's forward records the key of
    every position (a hook on public module names); each call takes the last position's key,
    searches the ``k`` nearest neighbours, and returns ``log(lmbda p_kNN + (1 - lmbda) p_LM)``.
    Call :meth:`close` when done (it removes the hook).
    """

    def __init__(
        self, model: nn.Module, store: Datastore, *, k: int, lmbda: float, temperature: float, key: str,
        recompute: bool = True,
    ) -> None:  # fmt: skip
        self.store = store
        self.k, self.lmbda, self.temperature, self.recompute = k, lmbda, temperature, recompute
        self._recorder = KeyRecorder(model, key)

    def __call__(self, idx: Tensor, logprobs: Tensor) -> Tensor:
        """``idx`` ``(B, T)`` the context just run, ``logprobs`` ``(B, V)`` the model's; returns ``(B, V)``."""
        query = self._recorder.seen[-1][:, -1, :]  # (B, C): the key of each sequence's last position
        self._recorder.seen.clear()
        dist, vals = self.store.search(query, self.k, recompute=self.recompute)  # (B, k) each
        log_knn = knn_log_probs(dist, vals, self.temperature, logprobs.size(-1)).to(logprobs.device)  # (B, V)
        return mix_log_probs(logprobs.float(), log_knn, self.lmbda)

    def close(self) -> None:
        """Remove the key hook from the model."""
        self._recorder.remove()
