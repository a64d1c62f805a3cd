"""Known answers: AGC, AutoClip and z-score clipping, PCGrad, and the noise-scale estimator."""

from __future__ import annotations

import math

import pytest
import torch
from apt_plugin_gradient import AutoClip
from apt_plugin_gradient import NoiseScale
from apt_plugin_gradient import ZScoreClip
from apt_plugin_gradient import agc_clip_
from apt_plugin_gradient import group_of
from apt_plugin_gradient import pcgrad
from apt_plugin_gradient import term_cosines


def test_agc_clips_each_row_at_lambda_times_its_weight_norm() -> None:
    """Rows with |G|/|W| = 0.0017, 0.114, 0.71, 24.4 at lambda 0.01 end at 0.0017, 0.01, 0.01, 0.01."""
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.6, 0.8], [1.0, 0.0]])  # row norms 1, 2, 1, 1
    g = torch.tensor([[0.0017, 0.0], [0.0, 0.228], [0.0, 0.71], [24.4, 0.0]])
    clipped, units = agc_clip_([(w, g)], lam=0.01, eps=1e-3)
    ratios = (g.norm(dim=1) / w.norm(dim=1)).tolist()
    assert ratios == pytest.approx([0.0017, 0.01, 0.01, 0.01], rel=1e-5)
    assert g[3].tolist() == pytest.approx([0.01, 0.0])  # the direction is kept
    assert int(clipped) == 3 and units == 4


def test_agc_floors_the_weight_norm_at_eps_and_treats_a_vector_as_one_unit() -> None:
    w0, g0 = torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0]])  # a zero row: max(|W|, eps) = 1e-3
    b, gb = torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4])  # |gb| / |b| = 0.1
    agc_clip_([(w0, g0), (b, gb)], lam=0.01, eps=1e-3)
    assert g0[0].tolist() == pytest.approx([1e-5, 0.0, 0.0])
    assert gb.tolist() == pytest.approx([0.03, 0.04])  # norm 0.05 = 0.01 * 5


def test_autoclip_threshold_is_the_percentile_of_the_history_including_the_current_norm() -> None:
    """History 1..100 at p=10: np.percentile's linear interpolation gives 10.9."""
    clip = AutoClip(percentile=10.0, history=1000)
    for v in range(1, 100):
        clip.threshold(float(v))
    assert clip.threshold(100.0) == pytest.approx(10.9)
    ring = AutoClip(percentile=50.0, history=3)
    for v in (100.0, 1.0, 2.0):
        ring.threshold(v)
    assert ring.threshold(3.0) == 2.0  # 100 fell out of the ring: median of 1, 2, 3


def test_zscore_clips_a_spike_to_the_mean_when_the_history_has_no_spread() -> None:
    """25 norms of 1.0 then 10.0: sigma = 0, so the adaptive target mu + thr^2 sigma / z is mu = 1.0."""
    clip = ZScoreClip(alpha=0.97, threshold=2.5, warmup=25)
    assert [clip.threshold(1.0) for _ in range(25)] == [1.0] * 25
    assert clip.threshold(10.0) == pytest.approx(1.0)


def test_zscore_adaptive_target_and_ema_update_match_hand_computation() -> None:
    """Warm-up 1, 2, 3, 4: mu 2.5, var 1.25; a norm of 10 has z 6.708 and goes to 3.5417; EMAs follow."""
    clip = ZScoreClip(alpha=0.97, threshold=2.5, warmup=4)
    for v in (1.0, 2.0, 3.0, 4.0):
        clip.threshold(v)
    std = math.sqrt(1.25)
    z = 7.5 / (std + 1e-6)
    target = 2.5 + 2.5**2 * std / z
    assert target == pytest.approx(3.541667, rel=1e-5)
    assert clip.threshold(10.0) == pytest.approx(target, rel=1e-12)
    mean = 0.97 * 2.5 + 0.03 * target
    assert clip.mean == pytest.approx(mean) and clip.var == pytest.approx(0.97 * 1.25 + 0.03 * (target - mean) ** 2)
    assert clip.threshold(2.6) == 2.6  # no spike: unchanged
    by_mean = ZScoreClip(alpha=0.97, threshold=2.5, warmup=4, mode="mean")
    for v in (1.0, 2.0, 3.0, 4.0):
        by_mean.threshold(v)
    assert by_mean.threshold(10.0) == 2.5


def test_pcgrad_projects_two_conflicting_gradients_as_the_paper_formula() -> None:
    """g1=(1,0), g2=(-1,1): g1' = g1 - (g1.g2/|g2|^2) g2 = (0.5, 0.5), g2' = (0, 1); sum (0.5, 1.5)."""
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    out = pcgrad(g, torch.Generator().manual_seed(0))
    assert out.flatten().tolist() == pytest.approx([0.5, 0.5, 0.0, 1.0])
    assert out.sum(0).tolist() == pytest.approx([0.5, 1.5])
    assert float(out[0] @ g[1]) == pytest.approx(0.0)  # no conflict left


def test_pcgrad_leaves_non_conflicting_gradients_unchanged() -> None:
    g = torch.tensor([[1.0, 0.0, 2.0], [1.0, 1.0, 0.0], [0.0, 3.0, 1.0]])  # all pairwise dots >= 0
    assert torch.equal(pcgrad(g, torch.Generator().manual_seed(0)), g)


def test_pcgrad_three_terms_follow_the_generator_order() -> None:
    """T=3 with conflicts: the result equals a plain loop over the same random orders."""
    torch.manual_seed(0)
    g = torch.randn(3, 16)
    out = pcgrad(g, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    expected = g.clone()
    for t in range(3):
        for j in torch.randperm(3, generator=gen).tolist():
            if j != t and float(expected[t] @ g[j]) < 0:
                expected[t] = expected[t] - float(expected[t] @ g[j]) / float(g[j] @ g[j]) * g[j]
    torch.testing.assert_close(out, expected)


def test_term_cosines() -> None:
    cos, norms = term_cosines(torch.tensor([[3.0, 4.0], [-4.0, 3.0], [6.0, 8.0]]))
    assert norms.tolist() == pytest.approx([5.0, 5.0, 10.0])
    assert cos[0, 1].item() == pytest.approx(0.0, abs=1e-7) and cos[0, 2].item() == pytest.approx(1.0)


def test_noise_scale_recovers_the_variance_of_synthetic_gradients() -> None:
    """g = G + eps per example, eps ~ N(0, 0.3^2 I), P = 10^4, |G|^2 = 1: tr(Sigma) = 900, B_simple = 900.

    Each step: 8 micro-batches of 4 examples (the small batch) and their mean (the big
    batch of 32), as a training step with grad_accum 8 sees them. 400 steps, seed 0.
    """
    gen = torch.Generator().manual_seed(0)
    p_dim, sigma, b, accum = 10_000, 0.3, 4, 8
    true_g = torch.full((p_dim,), 1.0 / math.sqrt(p_dim), dtype=torch.float64)  # |G|^2 = 1
    ns = NoiseScale(beta=0.99)
    for _ in range(400):
        micro = true_g + torch.randn(accum, p_dim, generator=gen, dtype=torch.float64) * sigma / math.sqrt(b)
        small_sq = float((micro**2).sum(dim=1).mean())
        big_sq = float((micro.mean(dim=0) ** 2).sum())
        ns.update(small_sq, big_sq, b_small=b, b_big=b * accum)
    assert ns.trace == pytest.approx(p_dim * sigma**2, rel=0.10)
    assert ns.g2 == pytest.approx(1.0, rel=0.10)
    assert ns.b_simple == pytest.approx(900.0, rel=0.10)
    one = NoiseScale.estimate(small_sq=2.0, big_sq=1.25, b_small=1, b_big=4)  # hand: G2 = (5-2)/3, tr = 0.75/0.75
    assert one == pytest.approx((1.0, 1.0))


def test_noise_scale_ema_of_ratio_parts_not_mean_of_ratios() -> None:
    ns = NoiseScale(beta=0.5)
    ns.update(3.0, 1.0, 1, 2)  # G2 = -1, tr = 4
    ns.update(5.0, 4.0, 1, 2)  # G2 = 3, tr = 2
    # bias-corrected EMAs: G2 = (0.25*-1 + 0.5*3) / 0.75, tr = (0.25*4 + 0.5*2) / 0.75
    assert ns.g2 == pytest.approx(1.25 / 0.75) and ns.trace == pytest.approx(2.0 / 0.75)
    assert ns.b_simple == pytest.approx(2.0 / 1.25)
    assert math.isnan(NoiseScale(0.9).b_simple)
    with pytest.raises(ValueError, match="b_big > b_small"):
        NoiseScale.estimate(1.0, 1.0, 4, 4)


def test_groups() -> None:
    assert group_of("blocks.3.attn.c_attn.weight", "layer") == "blocks.3"
    assert group_of("blocks.3.attn.c_attn.weight", "module") == "blocks.3.attn"
    assert group_of("blocks.3.attn.c_attn.weight", "param") == "blocks.3.attn.c_attn.weight"
    assert group_of("wte.weight", "module") == "wte"
