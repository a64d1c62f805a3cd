"""kNN-augmented evaluation on the trainer's validation windows, and the (lmbda, T) sweep."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import nn

from apt.train import bits_per_byte
from apt_plugin_retrieval._datastore import Datastore
from apt_plugin_retrieval._knn import autocast
from apt_plugin_retrieval._knn import capture_keys
from apt_plugin_retrieval._knn import knn_log_probs
from apt_plugin_retrieval._knn import mix_log_probs


__all__ = ["ScoredBatches", "SweepRow", "score_batches", "sweep", "write_sweep"]


@dataclass
class ScoredBatches:
    """One forward pass over validation batches: the model's log-probabilities and each token's neighbours.

    Per batch ``b`` with ``N_b = B * T`` tokens: ``log_lm[b]`` ``(N_b, V)``, ``targets[b]``
    ``(N_b,)``, ``dist[b]`` and ``vals[b]`` ``(N_b, k)``.
    """

    log_lm: list[Tensor] = field(default_factory=list)
    targets: list[Tensor] = field(default_factory=list)
    dist: list[Tensor] = field(default_factory=list)
    vals: list[Tensor] = field(default_factory=list)
    search_s: float = 0.0

    @property
    def tokens(self) -> int:
        return sum(len(t) for t in self.targets)

    def nearest_distance(self) -> float:
        """Median distance to the nearest neighbour: the unit of the temperature grid."""
        d = torch.cat([d[:, 0] for d in self.dist])
        d = d[torch.isfinite(d)]
        return float(d.median()) if len(d) else 1.0

    def hit_rate(self) -> float:
        """Share of tokens whose true next token is among their neighbours' values."""
        hits = sum(int((v == y[:, None]).any(-1).sum()) for v, y in zip(self.vals, self.targets, strict=True))
        return hits / max(self.tokens, 1)

    def batch_mean_nll(self, lmbda: float, temperature: float, batches: range | None = None) -> float:
        """Mean over batches of each batch's mean token NLL (nats) under the mixture: the core's ``val_loss``.

        Each batch's loss is ``F.nll_loss`` of the mixed log-probabilities, the same reduction
        ``F.cross_entropy`` uses, so ``lmbda = 0`` gives the core's number bit for bit.
        """
        total = torch.zeros(2)
        for b in batches if batches is not None else range(len(self.targets)):
            vocab = self.log_lm[b].size(-1)
            log_p = mix_log_probs(self.log_lm[b], knn_log_probs(self.dist[b], self.vals[b], temperature, vocab), lmbda)
            total[0] += F.nll_loss(log_p, self.targets[b], ignore_index=-1)
            total[1] += 1
        return float(total[0] / total[1])


def score_batches(
    model: nn.Module,
    batches: list[tuple[Tensor, Tensor]],
    store: Datastore,
    *,
    k: int,
    key: str,
    recompute: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ScoredBatches:
    """Run ``model`` once over ``batches`` (eval mode, no grad) and search the neighbours of every position.

    The logits come from the same call the core's validation makes (``model(x)``; targets
    only add the loss), so ``p_LM`` here is the model's own.
    """
    out = ScoredBatches()
    was_training = model.training
    model.eval()
    with torch.no_grad(), capture_keys(model, key) as seen:
        for xb, yb in batches:
            seen.clear()
            with autocast(device, dtype):
                logits = model(xb.to(device)).logits  # (B, T, V)
            B, T, V = logits.shape
            out.log_lm.append(F.log_softmax(logits.float().reshape(B * T, V), dim=-1).cpu())  # (B*T, V)
            out.targets.append(yb.reshape(B * T).cpu())
            t0 = time.perf_counter()
            dist, vals = store.search(seen[-1].reshape(B * T, -1), k, recompute=recompute)  # (B*T, k) each
            out.search_s += time.perf_counter() - t0
            out.dist.append(dist)
            out.vals.append(vals)
    model.train(was_training)
    return out


@dataclass(frozen=True)
class SweepRow:
    """One point of the sweep: bits per token on the tuning half, the held-out half, and all batches."""

    lmbda: float
    temperature_scale: float
    temperature: float
    tune_bpb: float
    heldout_bpb: float
    all_bpb: float


def halves(n_batches: int) -> tuple[range, range]:
    """The tuning half (first batches) and the held-out half (the rest); one batch is both."""
    if n_batches < 2:
        return range(n_batches), range(n_batches)
    cut = n_batches // 2
    return range(cut), range(cut, n_batches)


def sweep(scored: ScoredBatches, lambdas: list[float], scales: list[float]) -> list[SweepRow]:
    """Every (lmbda, T) of the grid; ``T = scale * median nearest-neighbour distance``."""
    unit = scored.nearest_distance()
    tune, held = halves(len(scored.targets))
    rows = []
    for scale in scales:
        temperature = scale * unit
        for lam in lambdas:
            rows.append(
                SweepRow(
                    lmbda=lam,
                    temperature_scale=scale,
                    temperature=temperature,
                    tune_bpb=bits_per_byte(scored.batch_mean_nll(lam, temperature, tune)),
                    heldout_bpb=bits_per_byte(scored.batch_mean_nll(lam, temperature, held)),
                    all_bpb=bits_per_byte(scored.batch_mean_nll(lam, temperature)),
                )
            )
    return rows


def best(rows: list[SweepRow]) -> SweepRow:
    """The row with the lowest bpb on the tuning half (ties: the first)."""
    return min(rows, key=lambda r: r.tune_bpb)


def write_sweep(rows: list[SweepRow], path: Path) -> None:
    """The sweep table as CSV (one row per (lmbda, T))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["lambda", "temperature_scale", "temperature", "tune_bpb", "heldout_bpb", "all_bpb"])
        for r in rows:
            w.writerow([r.lmbda, r.temperature_scale, f"{r.temperature:.6g}", f"{r.tune_bpb:.6f}",
                        f"{r.heldout_bpb:.6f}", f"{r.all_bpb:.6f}"])  # fmt: skip
