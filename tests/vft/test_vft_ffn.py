"""ffn:vft: the relative off-manifold rate, the compensator's threshold, the subspace FFN, its statistics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from apt_plugin_vft import VeinFlowFFN
from apt_plugin_vft import off_manifold_rate
from apt_plugin_vft import orthogonality_error
from apt_plugin_vft import orthonormal_rows


def _axis_vein(ffn: VeinFlowFFN) -> None:
    """V = the first r coordinate axes, so the subspace is span(e_0 .. e_{r-1})."""
    with torch.no_grad():
        ffn.vein.copy_(torch.eye(ffn.rank, ffn.d_model))


def test_eps_is_zero_in_the_subspace_and_one_orthogonal_to_it() -> None:
    """h = Vᵀa has ε = 0 (any scale); h ⟂ the subspace has ε = 1; h = 0 has ε = 0."""
    torch.manual_seed(0)
    vein = orthonormal_rows(8, 32)
    inside = torch.randn(100, 8) @ vein * torch.logspace(-3, 3, 100).unsqueeze(1)  # (100, 32) in the subspace
    torch.testing.assert_close(off_manifold_rate(inside, vein), torch.zeros(100), rtol=0, atol=1e-5)
    g = torch.randn(50, 32)
    outside = g - (g @ vein.T) @ vein
    torch.testing.assert_close(off_manifold_rate(outside, vein), torch.ones(50), rtol=0, atol=1e-5)
    assert off_manifold_rate(torch.zeros(32), vein).item() == 0.0


def test_eps_matches_a_hand_computation() -> None:
    """V = [e0, e1] in R^4, h = (3, 4, 0, 12): ‖h‖ = 13, normal part (0, 0, 0, 12), ε = 12/13; and one more."""
    vein = torch.eye(2, 4)
    h = torch.tensor([[3.0, 4.0, 0.0, 12.0], [1.0, 0.0, 2.0, 2.0]])
    # second row: ‖h‖ = 3, normal part (0, 0, 2, 2) of norm 2√2
    expected = torch.tensor([12 / 13, 2 * math.sqrt(2) / 3])
    torch.testing.assert_close(off_manifold_rate(h, vein), expected)
    # the layer's own ε (what the metrics average) is the same number
    ffn = VeinFlowFFN(4, rank=2, hidden=4, compensator=False)
    _axis_vein(ffn)
    ffn.train()
    ffn(h.view(1, 2, 4))
    acc = ffn.stats_tensor()
    assert acc is not None
    torch.testing.assert_close(acc[0].float(), expected.sum())
    assert acc[2].item() == 2


def test_isotropic_vectors_have_eps_sqrt_one_minus_r_over_d() -> None:
    """The scale the default tau is chosen against: E ε ≈ √(1 − r/d) for isotropic h."""
    torch.manual_seed(1)
    eps = off_manifold_rate(torch.randn(4000, 128), orthonormal_rows(16, 128))
    assert eps.mean().item() == pytest.approx(math.sqrt(1 - 16 / 128), abs=0.01)


def _tokens(pairs: list[tuple[float, float]], d: int = 8) -> torch.Tensor:
    """(1, T, d) tokens h = (a, 0, b, 0, ...): for the axis vein of rank 2, ε = |b| / √(a² + b²)."""
    h = torch.zeros(1, len(pairs), d)
    for t, (a, b) in enumerate(pairs):
        h[0, t, 0], h[0, t, 2] = a, b
    return h


# ε of these tokens: 0, 0.2425, 0.6 and 0.8 (exact in floating point: 3-4-5 triangles), 0.7071, 0.9487, 1
PAIRS = [(1.0, 0.0), (4.0, 1.0), (4.0, 3.0), (3.0, 4.0), (1.0, 1.0), (1.0, 3.0), (0.0, 1.0)]
EPS = [abs(b) / math.hypot(a, b) for a, b in PAIRS]


def test_compensator_fires_only_above_tau() -> None:
    """Exactly the tokens with ε > τ get the correction; a token with ε = τ does not; moving τ moves the boundary."""
    h = _tokens(PAIRS)
    ffn = VeinFlowFFN(8, rank=2, hidden=4, compensator=True, compensator_rank=2, tau=0.8)
    _axis_vein(ffn)
    assert ffn.comp_out is not None
    plain = ffn(h)  # A = 0 at init: the compensator adds nothing yet
    with torch.no_grad():
        ffn.comp_out.normal_()
    for tau in (0.8, 0.6, 0.0, 1.0):
        ffn.tau = tau
        fired = (ffn(h) - plain).abs().amax(dim=-1)[0] > 0  # (T,)
        assert fired.tolist() == [e > tau for e in EPS], tau


def test_compensator_output_is_the_rank_s_correction_of_the_normal_part() -> None:
    """Above τ the layer adds A(B n) with n = h − VᵀVh; with compensator=False nothing is added."""
    torch.manual_seed(3)
    on = VeinFlowFFN(16, rank=4, hidden=8, compensator=True, compensator_rank=3, tau=0.0)
    off = VeinFlowFFN(16, rank=4, hidden=8, compensator=False)
    assert on.comp_in is not None and on.comp_out is not None and off.comp_in is None
    with torch.no_grad():
        on.comp_out.normal_()
    off.load_state_dict({k: v for k, v in on.state_dict().items() if not k.startswith("comp_")})
    h = torch.randn(2, 5, 16)
    normal = h - (h @ on.vein.T) @ on.vein
    expected = off(h) + (normal @ on.comp_in.T) @ on.comp_out
    torch.testing.assert_close(on(h), expected, rtol=1e-5, atol=1e-6)


def test_subspace_ffn_without_stabilizer_sees_only_the_subspace() -> None:
    """Without the stabiliser (and compensator) the output is Vᵀ c_proj(gelu(c_fc(V h))): off-subspace parts of h are ignored."""
    torch.manual_seed(4)
    ffn = VeinFlowFFN(16, rank=4, hidden=8, stabilizer=False, compensator=False)
    h = torch.randn(2, 5, 16)
    z = h @ ffn.vein.T
    expected = ffn.c_proj(F.gelu(ffn.c_fc(z))) @ ffn.vein
    torch.testing.assert_close(ffn(h), expected)
    g = torch.randn(2, 5, 16)
    torch.testing.assert_close(ffn(h + (g - (g @ ffn.vein.T) @ ffn.vein)), ffn(h), rtol=1e-5, atol=1e-6)
    assert ffn.stab is None and sum(p.numel() for p in ffn.parameters()) == 4 * 16 + 4 * 8 + 8 * 4


def test_statistics_count_training_forwards_only_and_reset() -> None:
    """Training forwards accumulate (Σε, #over τ, #tokens); eval forwards do not; reset_stats forgets."""
    ffn = VeinFlowFFN(8, rank=2, hidden=4, tau=0.7)
    _axis_vein(ffn)
    h = _tokens(PAIRS[:4])  # ε 0, 0.2425, 0.6, 0.8
    ffn.eval()
    ffn(h)
    assert ffn.stats_tensor() is None
    ffn.train()
    ffn(h)
    ffn(h)
    acc = ffn.stats_tensor()
    assert acc is not None
    expected = torch.tensor([2 * sum(EPS[:4]), 2.0, 8.0], dtype=torch.float64)
    torch.testing.assert_close(acc, expected, rtol=1e-6, atol=1e-6)
    ffn.reset_stats()
    assert ffn.stats_tensor() is None


def test_orthogonality_error_is_zero_for_orthonormal_rows() -> None:
    """‖VVᵀ − I‖²_F: 0 for orthonormal rows (also batched), and r·(s² − 1)² for s times them."""
    v = orthonormal_rows(3, 6, 10)
    assert orthogonality_error(v).item() == pytest.approx(0.0, abs=1e-10)
    assert orthogonality_error(2 * v[0]).item() == pytest.approx(6 * 9.0, rel=1e-5)


def test_bad_ranks_are_refused() -> None:
    """rank and compensator_rank must be in 1..d_model."""
    with pytest.raises(ValueError, match=r"rank \(33\).*d_model \(32\)"):
        VeinFlowFFN(32, rank=33, hidden=8)
    with pytest.raises(ValueError, match=r"compensator_rank \(40\)"):
        VeinFlowFFN(32, rank=8, hidden=8, compensator_rank=40)
