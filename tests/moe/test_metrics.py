"""Per-step metric reduction from the layers' accumulators, and the package's public surface."""

from __future__ import annotations

import apt_plugin_moe
import pytest
import torch
from apt_plugin_moe import MoELayer
from apt_plugin_moe import reduce_moe_stats


def test_reduce_hand_case() -> None:
    """Counts [6, 2, 0, 0] over 2 forwards of 4 tokens (k=1): loads, imbalance, dead experts, drops, means."""
    #        counts          dropped slots entropy_sum tokens balance_sum z_sum forwards
    row = [6.0, 2.0, 0.0, 0.0, 1.0, 8.0, 4.0, 8.0, 5.0, 3.0, 2.0]
    m = reduce_moe_stats([row], [3], num_experts=4)
    assert [m[f"moe/layer3/load_e{j}"] for j in range(4)] == [0.75, 0.25, 0.0, 0.0]
    assert m["moe/layer3/max_load"] == 0.75
    assert m["moe/layer3/max_over_mean_load"] == 3.0
    assert m["moe/layer3/dead_experts"] == 2.0
    assert m["moe/layer3/dropped_frac"] == 0.125
    assert m["moe/layer3/entropy"] == 0.5
    assert m["moe/layer3/aux_loss"] == 2.5 and m["moe/layer3/z_loss"] == 1.5
    assert m["moe/aux_loss"] == 2.5 and m["moe/dead_experts"] == 2.0


def test_layer_accumulates_exact_counts_over_micro_batches() -> None:
    """Two training forwards add up: slot counts equal the bincount of both routings."""
    torch.manual_seed(0)
    layer = MoELayer(8, 16, num_experts=4, top_k=2, capacity_factor=1.0)
    xs = [torch.randn(1, 6, 8), torch.randn(1, 10, 8)]
    expected = torch.zeros(4)
    for x in xs:
        layer(x)
        expected += torch.bincount(layer.router(x.reshape(-1, 8)).experts.flatten(), minlength=4).float()
    acc = layer.stats_tensor()
    assert acc is not None
    assert acc[:4].tolist() == expected.tolist()
    m = reduce_moe_stats([acc.tolist()], [0], 4)
    assert sum(m[f"moe/layer0/load_e{j}"] for j in range(4)) == pytest.approx(1.0)
    assert m["moe/layer0/dropped_frac"] > 0  # capacity 3 and 5 slots per expert for 6 and 10 tokens, k=2


def test_public_names_sorted_and_importable() -> None:
    """__all__ is sorted, complete for the package's public names, and every name imports."""
    names = apt_plugin_moe.__all__
    assert names == sorted(names)
    public = {n for n in vars(apt_plugin_moe) if not n.startswith("_") and n != "annotations"}
    assert set(names) == public
