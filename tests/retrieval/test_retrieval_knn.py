"""The kNN-LM arithmetic against brute force, and the mixture's limits."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from apt_plugin_retrieval import Datastore
from apt_plugin_retrieval import IndexSpec
from apt_plugin_retrieval import knn_log_probs
from apt_plugin_retrieval import make_index
from apt_plugin_retrieval import mix_log_probs


def _hand_built_store(keys: np.ndarray, vals: np.ndarray) -> Datastore:
    manifest = {"count": len(keys), "dim": keys.shape[1], "weights_sha256": "x", "index": IndexSpec("flat").as_dict()}
    return Datastore(
        Path("unused"), manifest, keys.astype(np.float16), vals.astype(np.int32), make_index(keys, IndexSpec("flat"))
    )


def test_the_papers_toy_example() -> None:
    """Distances 0, 1, 4 with values 1, 1, 3 at T = 1 give p_kNN = [0, 0.987, 0, 0.013, 0]."""
    dist = torch.tensor([[0.0, 1.0, 4.0]])
    vals = torch.tensor([[1, 1, 3]])
    p = knn_log_probs(dist, vals, 1.0, 5).exp()[0]
    z = 1 + math.exp(-1) + math.exp(-4)
    expected = torch.tensor([0, (1 + math.exp(-1)) / z, 0, math.exp(-4) / z, 0])
    assert torch.allclose(p, expected, atol=1e-6)
    assert abs(float(p[1]) - 0.987) < 1e-3


def test_knn_distribution_on_a_hand_built_datastore_equals_brute_force() -> None:
    """Search + p_kNN over a 12-key datastore equals a direct computation over all keys, for several k and T."""
    rng = np.random.default_rng(0)
    keys = rng.integers(-3, 4, size=(12, 3)).astype(np.float32)  # small integers: exact in float16
    keys[5] = keys[2] + 0.5  # near-duplicates with different values
    vals = rng.integers(0, 6, size=12)
    store = _hand_built_store(keys, vals)
    queries = rng.integers(-3, 4, size=(7, 3)).astype(np.float32)
    for k in (1, 3, 12):
        for temperature in (0.5, 2.0, 10.0):
            dist, got_vals = store.search(torch.from_numpy(queries), k)
            got = knn_log_probs(dist, got_vals, temperature, 6).exp()
            for q, query in enumerate(queries):
                d = ((keys - query) ** 2).sum(-1)  # (12,) squared L2 to every key
                order = np.argsort(d, kind="stable")[:k]
                # ties at the k-th distance may be broken either way: compare with the tie-aware sets
                kth = d[order[-1]]
                if np.sum(d == kth) > np.sum(d[order] == kth):
                    continue  # ambiguous neighbour set (a tie straddles k); skip this query
                w = np.exp(-d[order] / temperature)
                expected = np.zeros(6)
                np.add.at(expected, vals[order], w / w.sum())
                assert np.allclose(got[q].numpy(), expected, atol=1e-5), (k, temperature, q)


def test_missing_neighbours_vote_for_nothing() -> None:
    """A neighbour marked missing (-1, inf) gets no weight; a query with none gets p_kNN = 0 everywhere."""
    dist = torch.tensor([[0.5, float("inf")], [float("inf"), float("inf")]])
    vals = torch.tensor([[2, -1], [-1, -1]])
    p = knn_log_probs(dist, vals, 1.0, 4).exp()
    assert torch.equal(p[0], torch.tensor([0.0, 0.0, 1.0, 0.0]))
    assert torch.equal(p[1], torch.zeros(4))


def test_mixture_limits_and_normalisation() -> None:
    """lmbda = 0 is the model bit for bit, lmbda = 1 is p_kNN, and every mixture sums to 1."""
    torch.manual_seed(0)
    log_lm = torch.log_softmax(torch.randn(5, 7), dim=-1)
    log_knn = knn_log_probs(torch.rand(5, 3) * 4, torch.randint(0, 7, (5, 3)), 1.0, 7)
    assert torch.equal(mix_log_probs(log_lm, log_knn, 0.0), log_lm)
    assert torch.allclose(mix_log_probs(log_lm, log_knn, 1.0).exp(), log_knn.exp())
    for lam in (0.1, 0.25, 0.5):
        mixed = mix_log_probs(log_lm, log_knn, lam).exp()
        assert torch.allclose(mixed.sum(-1), torch.ones(5), atol=1e-6)
        assert torch.allclose(mixed, lam * log_knn.exp() + (1 - lam) * log_lm.exp(), atol=1e-6)
