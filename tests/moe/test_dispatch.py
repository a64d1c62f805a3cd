"""Fast sorted dispatch equals the per-expert mask loop; capacity dropping is exact and deterministic."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from apt_plugin_moe import MoELayer
from apt_plugin_moe import capacity_for
from apt_plugin_moe import plan_dispatch


def _run(layer: MoELayer, x: torch.Tensor, dispatch: str) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    layer.dispatch = dispatch
    layer.zero_grad(set_to_none=True)
    xg = x.detach().clone().requires_grad_(True)
    y = layer(xg)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y)
    (y * g).sum().backward()
    assert xg.grad is not None
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in layer.parameters()]
    return y.detach(), xg.grad, grads


@pytest.mark.parametrize("capacity_factor", [None, 0.75])
@pytest.mark.parametrize("expert_ffn", ["gelu", "swiglu"])
@pytest.mark.parametrize("dispatch", ["sliced", "grouped_mm"])
def test_fast_dispatch_equals_loop_reference(
    capacity_factor: float | None, expert_ffn: Literal["gelu", "swiglu"], dispatch: str
) -> None:
    """Outputs and all gradients (input, router, experts) match the reference loop in fp32."""
    torch.manual_seed(0)
    layer = MoELayer(
        16,
        32,
        num_experts=4,
        top_k=2,
        expert_ffn=expert_ffn,
        bias=True,
        capacity_factor=capacity_factor,
        shared_experts=1,
    )
    x = torch.randn(3, 20, 16)
    y_ref, gx_ref, gp_ref = _run(layer, x, "loop")
    y, gx, gp = _run(layer, x, dispatch)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(gp, gp_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if capacity_factor is not None:
        # the capacity really bites in this case: some slots were dropped
        r = layer.router(x.reshape(-1, 16))
        cap = capacity_for(60, 2, 4, capacity_factor)
        assert int(plan_dispatch(r.experts, r.weights, 4, cap).num_dropped) > 0


def test_top1_switch_routing_matches_loop() -> None:
    """k=1 (Switch) goes through the same machinery."""
    torch.manual_seed(1)
    layer = MoELayer(8, 16, num_experts=3, top_k=1)
    x = torch.randn(2, 9, 8)
    y_ref, gx_ref, _ = _run(layer, x, "loop")
    y, gx, _ = _run(layer, x, "sliced")
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, gx_ref)


def test_dropped_counts_match_hand_case() -> None:
    """5 tokens, k=1, E=2, capacity 2: expert 0 gets 4 slots and keeps its 2 largest gates."""
    experts = torch.tensor([[0], [0], [1], [0], [0]])
    weights = torch.tensor([[0.6], [0.9], [0.7], [0.9], [0.5]])  # tie 0.9/0.9: lower slot kept first
    plan = plan_dispatch(experts, weights, num_experts=2, capacity=2)
    assert plan.counts.tolist() == [4, 1]
    assert plan.kept_counts.tolist() == [2, 1]
    assert int(plan.num_dropped) == 2
    assert plan.keep is not None
    assert plan.keep.tolist() == [False, True, True, True, False]
    # kept slots grouped by expert (largest gate first, ties by slot), dropped ones last
    assert plan.order.tolist() == [1, 3, 2, 0, 4]


def test_capacity_rule() -> None:
    """capacity = ceil(cf * N * k / E); None means dropless."""
    assert capacity_for(100, 2, 8, 1.0) == 25
    assert capacity_for(100, 2, 8, 1.25) == 32
    assert capacity_for(100, 2, 8, None) is None


def test_dropped_slot_contributes_zero() -> None:
    """A token whose only slot is dropped gets a zero MoE output (the residual carries it)."""
    torch.manual_seed(2)
    layer = MoELayer(8, 16, num_experts=2, top_k=1, capacity_factor=0.5)
    x = torch.randn(1, 8, 8)
    y = layer(x).reshape(8, 8)
    r = layer.router(x.reshape(8, 8))
    plan = plan_dispatch(r.experts, r.weights, 2, capacity_for(8, 1, 2, 0.5))
    assert plan.keep is not None
    dropped = ~plan.keep
    assert dropped.any()
    assert torch.all(y[dropped] == 0)
    assert torch.all(y[plan.keep].abs().sum(-1) > 0)


@pytest.mark.parametrize("dispatch", ["sliced", "grouped_mm"])
def test_deterministic_on_cpu(dispatch: str) -> None:
    """Two identical runs give bit-identical outputs and gradients."""
    results = []
    for _ in range(2):
        torch.manual_seed(3)
        layer = MoELayer(16, 32, num_experts=4, top_k=2, capacity_factor=1.0, dispatch=dispatch)
        x = torch.randn(2, 16, 16)
        results.append(_run(layer, x, dispatch))
    (y0, gx0, gp0), (y1, gx1, gp1) = results
    assert torch.equal(y0, y1) and torch.equal(gx0, gx1)
    assert all(torch.equal(a, b) for a, b in zip(gp0, gp1, strict=True))


def test_auto_uses_sliced_on_cpu_and_grouped_mm_checks_alignment() -> None:
    """'auto' picks the measured-faster sliced path on CPU; grouped_mm refuses misaligned widths."""
    from apt.errors import ConfigError

    layer = MoELayer(16, 32, num_experts=2, top_k=1)
    assert layer.backend(torch.randn(4, 16)) == "sliced"
    bad = MoELayer(6, 10, num_experts=2, top_k=1, dispatch="grouped_mm")
    with pytest.raises(ConfigError, match="moe.dispatch"):
        bad(torch.randn(1, 3, 6))


def test_grouped_mm_falls_back_to_the_private_op_of_older_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the public F.grouped_mm (torch < 2.10) the private torch._grouped_mm serves; with neither,
    'auto' takes the sliced path and an explicit 'grouped_mm' is a ConfigError naming moe.dispatch."""
    import torch.nn.functional as F
    from apt.errors import ConfigError

    torch.manual_seed(3)
    layer = MoELayer(16, 32, num_experts=4, top_k=2)
    x = torch.randn(2, 10, 16)
    y_ref, gx_ref, _ = _run(layer, x, "loop")
    monkeypatch.delattr(F, "grouped_mm", raising=False)
    y, gx, _ = _run(layer, x, "grouped_mm")
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)

    monkeypatch.delattr(torch, "_grouped_mm", raising=False)
    layer.dispatch = "auto"
    assert layer.backend(x.reshape(-1, 16)) == "sliced"
    with pytest.raises(ConfigError, match="moe.dispatch='grouped_mm' needs a grouped matmul"):
        _run(layer, x, "grouped_mm")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bias", [False, True])
def test_grouped_mm_on_cuda_bf16_matches_loop(bias: bool) -> None:
    """On CUDA, 'auto' takes the grouped_mm path; in bf16 it agrees with the loop reference to bf16 precision."""
    torch.manual_seed(0)
    layer = MoELayer(64, 128, num_experts=8, top_k=2, expert_ffn="swiglu", bias=bias).cuda().to(torch.bfloat16)
    x = torch.randn(4, 64, 64, device="cuda", dtype=torch.bfloat16)
    assert layer.backend(x.reshape(-1, 64)) == "grouped_mm"
    y_ref, gx_ref, _ = _run(layer, x, "loop")
    y, gx, _ = _run(layer, x, "auto")
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gx.float(), gx_ref.float(), rtol=2e-2, atol=2e-2)


def test_grouped_bias_gradient_is_an_fp32_sum_per_expert() -> None:
    """In bf16 the bias gradient of the grouped_mm path is each expert's rows summed in fp32 (not an
    index_add in bf16, which CUDA runs with atomics): it equals the fp64 sum of the same row gradients."""
    from apt_plugin_moe import StackedExperts

    torch.manual_seed(0)
    bank = StackedExperts(4, 16, 32, "gelu", bias=True)
    counts = torch.tensor([2048, 1024, 0, 1024])
    xs = torch.randn(int(counts.sum()), 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ys = bank.forward_grouped(xs, counts)
    grad = (torch.randn_like(ys, dtype=torch.float32) * 1e-2 + 1e-2).to(ys.dtype)
    ys.backward(grad)
    assert bank.b2 is not None and bank.b2.grad is not None
    reference = torch.stack([g.double().sum(0) for g in torch.split(grad, counts.tolist())])
    torch.testing.assert_close(bank.b2.grad.double(), reference, rtol=1e-6, atol=1e-6)
