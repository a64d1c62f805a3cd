"""Balancing loss and z-loss equal hand-computed values; the router follows the Mixtral convention."""

from __future__ import annotations

import math

import pytest
import torch
from apt_plugin_moe import TopKRouter
from apt_plugin_moe import router_entropy
from apt_plugin_moe import router_z_loss
from apt_plugin_moe import switch_load_balancing_loss


def test_balance_loss_is_one_at_perfect_balance() -> None:
    """Uniform probabilities and equal slot counts give exactly 1."""
    e = 4
    probs = torch.full((8, e), 1.0 / e)
    experts = torch.tensor([[0, 1], [2, 3]] * 4)  # every expert gets 4 of the 16 slots
    assert switch_load_balancing_loss(probs, experts, e).item() == pytest.approx(1.0, abs=1e-7)


def test_balance_loss_is_num_experts_when_collapsed() -> None:
    """All slots and all probability on one expert gives E."""
    probs = torch.tensor([[1.0, 0.0, 0.0]] * 5)
    experts = torch.zeros(5, 1, dtype=torch.long)
    assert switch_load_balancing_loss(probs, experts, 3).item() == pytest.approx(3.0)


def test_balance_loss_hand_computed() -> None:
    """E * sum_i f_i P_i with f over all N*k slots and P the mean probability."""
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    experts = torch.tensor([[0, 1], [1, 2]])
    # f = [1, 2, 1] / 4 ; P = [0.3, 0.45, 0.25]
    expected = 3 * (0.25 * 0.3 + 0.5 * 0.45 + 0.25 * 0.25)
    assert switch_load_balancing_loss(probs, experts, 3).item() == pytest.approx(expected)


def test_balance_loss_gradient_flows_through_probabilities_only() -> None:
    """d loss / d P_i = E * f_i / N per token: f is a constant (counts are not differentiable)."""
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], requires_grad=True)
    experts = torch.tensor([[0, 1], [1, 2]])
    switch_load_balancing_loss(probs, experts, 3).backward()
    assert probs.grad is not None
    expected = torch.tensor([0.25, 0.5, 0.25]) * 3 / 2
    torch.testing.assert_close(probs.grad, expected.expand(2, 3))


def test_hf_mixtral_convention_is_k_times_ours() -> None:
    """For one layer, HF's load_balancing_loss_func value = top_k * ours (documented conversion)."""
    torch.manual_seed(0)
    logits = torch.randn(32, 4)
    probs = logits.softmax(-1)
    k = 2
    sel = probs.topk(k, -1).indices
    # HF 4.x formula, written out: one_hot(sel) mean over tokens summed over k, times mean probs, times E
    hf = 4 * (torch.nn.functional.one_hot(sel, 4).float().mean(0) * probs.mean(0)[None]).sum()
    torch.testing.assert_close(k * switch_load_balancing_loss(probs, sel, 4), hf)


def test_z_loss_hand_computed() -> None:
    """mean over tokens of logsumexp(logits)^2."""
    logits = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    lse = [math.log(2.0), math.log(math.e + math.e**2)]
    expected = (lse[0] ** 2 + lse[1] ** 2) / 2
    assert router_z_loss(logits).item() == pytest.approx(expected, rel=1e-6)


def test_router_entropy_normalised() -> None:
    """1 for uniform routing, 0 for one-hot routing."""
    assert router_entropy(torch.full((3, 4), 0.25)).item() == pytest.approx(1.0, rel=1e-6)
    assert router_entropy(torch.tensor([[1.0, 0.0, 0.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)


def test_router_top_k_renormalised() -> None:
    """softmax -> top-k -> gates renormalised over the k (sum 1), sorted by gate."""
    torch.manual_seed(0)
    router = TopKRouter(8, 5, 2)
    x = torch.randn(6, 8)
    out = router(x)
    probs = (x @ router.gate.weight.T).softmax(-1)
    top, idx = probs.topk(2, -1)
    torch.testing.assert_close(out.weights, top / top.sum(-1, keepdim=True))
    assert torch.equal(out.experts, idx)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(6))


def test_router_jitter_only_in_training() -> None:
    """Jitter perturbs routing logits in train mode and is off in eval mode."""
    torch.manual_seed(0)
    router = TopKRouter(8, 4, 1, jitter=0.5)
    x = torch.randn(16, 8)
    router.eval()
    a, b = router(x).logits, router(x).logits
    assert torch.equal(a, b)
    router.train()
    assert not torch.equal(router(x).logits, a)


def test_top_k_larger_than_experts_is_a_config_error() -> None:
    """The config names moe.top_k and the fix."""
    from apt_plugin_moe import MoEConfig

    with pytest.raises(ValueError, match=r"moe\.top_k"):
        MoEConfig(num_experts=2, top_k=3)
