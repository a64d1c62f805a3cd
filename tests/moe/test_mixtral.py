"""Hugging Face Mixtral layout: exact round trip and a hand-written Mixtral forward equals ours."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from apt.errors import CheckpointError
from apt.errors import ConfigError
from apt_plugin_moe import MoELayer
from apt_plugin_moe import from_mixtral_state_dict
from apt_plugin_moe import to_mixtral_state_dict


def _mixtral_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, top_k: int) -> torch.Tensor:
    """HF MixtralSparseMoeBlock (4.x) written out: softmax -> top-k -> renormalise -> weighted experts."""
    b, t, d = x.shape
    h = x.view(-1, d)
    logits = h @ sd["gate.weight"].T  # (N, E)
    w = F.softmax(logits, dim=1, dtype=torch.float)
    w, sel = torch.topk(w, top_k, dim=-1)
    w = w / w.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(h)
    for n in range(h.shape[0]):
        for j in range(top_k):
            e = int(sel[n, j])
            xe = h[n]
            y = sd[f"experts.{e}.w2.weight"] @ (
                F.silu(sd[f"experts.{e}.w1.weight"] @ xe) * (sd[f"experts.{e}.w3.weight"] @ xe)
            )
            out[n] += w[n, j] * y
    return out.view(b, t, d)


def _random_mixtral_sd(e: int, d: int, f: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {"gate.weight": torch.randn(e, d, generator=g)}
    for i in range(e):
        sd[f"experts.{i}.w1.weight"] = torch.randn(f, d, generator=g) * 0.2
        sd[f"experts.{i}.w3.weight"] = torch.randn(f, d, generator=g) * 0.2
        sd[f"experts.{i}.w2.weight"] = torch.randn(d, f, generator=g) * 0.2
    return sd


def test_round_trip_is_exact() -> None:
    """Mixtral sd -> MoELayer -> Mixtral sd gives bit-identical tensors, and layer -> sd -> layer too."""
    sd = _random_mixtral_sd(4, 8, 12)
    layer = from_mixtral_state_dict(sd, top_k=2, prefix="")
    back = to_mixtral_state_dict(layer)
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    torch.manual_seed(1)
    fresh = MoELayer(8, 12, num_experts=4, top_k=2, expert_ffn="swiglu")
    again = from_mixtral_state_dict(to_mixtral_state_dict(fresh, prefix="m."), prefix="m.")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), again.state_dict().values(), strict=True))


def test_hand_written_mixtral_forward_equals_layer() -> None:
    """Same weights, same routing convention: the outputs agree in fp32."""
    sd = _random_mixtral_sd(4, 8, 12)
    layer = from_mixtral_state_dict(sd, top_k=2)
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _mixtral_forward(sd, x, 2), rtol=1e-5, atol=1e-5)


def test_conversion_errors_name_the_problem() -> None:
    """GELU experts cannot be exported; a missing key names itself."""
    with pytest.raises(ConfigError, match="swiglu"):
        to_mixtral_state_dict(MoELayer(8, 12, num_experts=2, top_k=1, expert_ffn="gelu"))
    sd = _random_mixtral_sd(2, 8, 12)
    del sd["experts.1.w3.weight"]
    with pytest.raises(CheckpointError, match=r"experts\.1\.w3\.weight"):
        from_mixtral_state_dict(sd)


def test_experts_that_disagree_with_the_gate_are_rejected() -> None:
    """Expert weights beyond the gate's E, or missing ones, raise instead of being silently ignored."""
    sd = _random_mixtral_sd(8, 8, 12)
    sd["gate.weight"] = sd["gate.weight"][:4].clone()  # a 4-expert gate, 8 experts' weights
    with pytest.raises(CheckpointError, match=r"gate has 4 experts.*0\.\.7.*extra.*4\.\.7"):
        from_mixtral_state_dict(sd, top_k=2)
    sd = _random_mixtral_sd(4, 8, 12)
    for name in ("w1", "w2", "w3"):
        del sd[f"experts.2.{name}.weight"]
    with pytest.raises(CheckpointError, match=r"gate has 4 experts.*missing.*\b2\b"):
        from_mixtral_state_dict(sd, top_k=2)
