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


def test_module_copies_apply_the_dense_dropout_once() -> None:
    """Copies keep the FFN's own dropout, so the layer adds none: training output is dropped like the dense one."""

    class DropFFN(nn.Module):
        def __init__(self, d: int, p: float) -> None:
            super().__init__()
            self.up = nn.Linear(d, d, bias=False)
            self.dropout = nn.Dropout(p)
            with torch.no_grad():
                self.up.weight.copy_(torch.eye(d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.dropout(self.up(x))
            return out

    torch.manual_seed(0)
    dense = DropFFN(32, 0.5)
    # top_k=1: the single gate is exactly 1, so the layer's output is one expert's output
    layer = upcycle_ffn(dense, num_experts=4, top_k=1, generator=torch.Generator().manual_seed(0))
    assert isinstance(layer.experts, ModuleExperts)
    x = torch.ones(1, 2048, 32)
    layer.train()
    with torch.no_grad():
        y = layer(x)
    # one dropout of p=0.5 on ones: half the entries zeroed, the rest scaled by 1/(1-p) = 2 (twice: 3/4 and 4)
    zeroed = (y == 0).float().mean().item()
    assert abs(zeroed - 0.5) < 0.02, zeroed
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 2.0))
    dense.eval()
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), dense(x), rtol=1e-5, atol=1e-6)


def test_core_ffn_subclass_with_its_own_forward_is_copied_as_modules() -> None:
    """A subclass of MLP that overrides forward is not the core FFN: upcycled as modules, output unchanged."""

    class ReluMLP(MLP):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.dropout(self.c_proj(torch.relu(self.c_fc(x))))
            return out

    torch.manual_seed(0)
    dense = ReluMLP(16, 64).eval()
    layer = upcycle_ffn(dense, num_experts=4, top_k=2, generator=torch.Generator().manual_seed(0)).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), dense(x), rtol=1e-5, atol=1e-6)
    assert isinstance(layer.experts, ModuleExperts)
    assert stack_ffns([dense, dense]) is None
