"""Sparse upcycling preserves the FFN's (and the model's) output; stacking copies core FFNs exactly."""

from __future__ import annotations

import pytest
import torch
from apt.model import MLP
from apt.model import SwiGLU
from apt_plugin_moe import ModuleExperts
from apt_plugin_moe import StackedExperts
from apt_plugin_moe import stack_ffns
from apt_plugin_moe import upcycle_ffn
from torch import nn


@pytest.mark.parametrize("cls", [MLP, SwiGLU])
@pytest.mark.parametrize("bias", [False, True])
def test_upcycled_layer_equals_dense_ffn(cls: type[nn.Module], bias: bool) -> None:
    """Experts are copies and the k gates sum to 1, so output == dense output (dropless)."""
    torch.manual_seed(0)
    dense = cls(16, 32, 0.0, bias)
    if bias:
        for p in dense.parameters():
            nn.init.normal_(p, std=0.1)  # non-zero biases so that they are really tested
    layer = upcycle_ffn(dense, num_experts=4, top_k=2, shared_experts=1)
    assert isinstance(layer.experts, StackedExperts)
    x = torch.randn(2, 10, 16)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), dense(x), rtol=1e-5, atol=1e-6)


def test_upcycled_router_is_near_zero_and_routing_is_spread() -> None:
    """The router starts near zero: almost uniform probabilities, all experts used."""
    torch.manual_seed(0)
    layer = upcycle_ffn(MLP(16, 32), num_experts=4, top_k=2)
    assert layer.router.gate.weight.abs().max() < 0.01
    r = layer.router(torch.randn(256, 16))
    assert torch.allclose(r.probs, torch.full_like(r.probs, 0.25), atol=0.01)
    assert torch.bincount(r.experts.flatten(), minlength=4).min() > 0


def test_unknown_ffn_falls_back_to_module_copies() -> None:
    """An FFN that is not a core MLP/SwiGLU is copied as modules; the output is still preserved."""

    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 24)
            self.b = nn.Linear(24, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.b(torch.tanh(self.a(x)))
            return out

    torch.manual_seed(0)
    dense = Odd()
    layer = upcycle_ffn(dense, num_experts=3, top_k=2)
    assert isinstance(layer.experts, ModuleExperts)
    x = torch.randn(2, 7, 8)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), dense(x), rtol=1e-5, atol=1e-6)


def test_stack_ffns_reproduces_each_module() -> None:
    """Expert e of the stack computes exactly what module e computes."""
    torch.manual_seed(0)
    ffns = [SwiGLU(8, 12, 0.0, True) for _ in range(3)]
    bank = stack_ffns(ffns)
    assert bank is not None
    x = torch.randn(5, 8)
    with torch.no_grad():
        for e, f in enumerate(ffns):
            torch.testing.assert_close(bank.expert_forward(e, x), f(x.unsqueeze(0)).squeeze(0))
    assert stack_ffns([MLP(8, 12), SwiGLU(8, 12)]) is None
