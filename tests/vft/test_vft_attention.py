"""attention:tva: exact reduction to core attention, every head count, per-head reference, causality."""

from __future__ import annotations

import math

import pytest
import torch
from apt.model import CausalSelfAttention
from apt_plugin_vft import TriVeinAttention
from torch import Tensor


D = 32
HEADS = [h for h in range(1, D + 1) if D % h == 0]  # every head count that divides d_model: 1, 2, 4, 8, 16, 32


def _identity_veins(attn: TriVeinAttention) -> None:
    nh, r, hs = attn.vein.shape
    assert r == hs
    with torch.no_grad():
        attn.vein.copy_(torch.eye(hs).expand(nh, hs, hs))


def _reference(attn: TriVeinAttention, x: Tensor) -> Tensor:
    """Per-head TVA written out with loops and an explicit mask: o_h = P_hᵀ softmax(q̃k̃ᵀ/√r + mask) ṽ."""
    B, T, C = x.shape
    nh, r, hs = attn.vein.shape
    q, k, v = (x @ attn.c_attn.weight.T).split(C, dim=-1)  # 3 x (B, T, C)
    mask = torch.full((T, T), float("-inf")).triu(1)  # position t sees 0..t
    heads = []
    for h in range(nh):
        P = attn.vein[h]  # (r, hs)
        cols = slice(h * hs, (h + 1) * hs)
        qt, kt, vt = q[..., cols] @ P.T, k[..., cols] @ P.T, v[..., cols] @ P.T  # (B, T, r)
        att = torch.softmax(qt @ kt.transpose(1, 2) / math.sqrt(r) + mask, dim=-1)  # (B, T, T)
        heads.append((att @ vt) @ P)  # (B, T, hs)
    out: Tensor = torch.cat(heads, dim=-1) @ attn.c_proj.weight.T
    return out


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
@pytest.mark.parametrize("n_head", HEADS)
def test_full_rank_identity_veins_reproduce_core_attention_exactly(n_head: int, fold: bool) -> None:
    """r = d_model/n_head with P_h = I gives bit-for-bit the core attention:causal output, for every head count."""
    torch.manual_seed(n_head)
    core = CausalSelfAttention(D, n_head, block_size=16)
    tva = TriVeinAttention(D, n_head, block_size=16, rank=D // n_head, fold=fold)
    missing, unexpected = tva.load_state_dict(core.state_dict(), strict=False)
    assert (missing, unexpected) == (["vein"], [])
    _identity_veins(tva)
    x = torch.randn(3, 16, D)
    assert torch.equal(tva(x), core(x))


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
@pytest.mark.parametrize("n_head", HEADS)
def test_every_head_count_matches_the_per_head_reference(n_head: int, fold: bool) -> None:
    """For each head count dividing d and ranks below the head size, the output is the per-head formula's."""
    hs = D // n_head
    for rank in sorted({1, max(1, hs // 2), hs}):
        torch.manual_seed(100 * n_head + rank)
        tva = TriVeinAttention(D, n_head, block_size=16, rank=rank, fold=fold)
        x = torch.randn(2, 16, D)
        torch.testing.assert_close(tva(x), _reference(tva, x), rtol=1e-5, atol=1e-6)


def test_folded_and_unfolded_compute_the_same_function_and_gradients() -> None:
    """fold=True and fold=False agree on outputs and on every parameter's gradient (bias included)."""
    torch.manual_seed(0)
    a = TriVeinAttention(D, 4, block_size=16, rank=3, bias=True, fold=True)
    b = TriVeinAttention(D, 4, block_size=16, rank=3, bias=True, fold=False)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 16, D)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)
    ya.square().sum().backward()
    yb.square().sum().backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert pa.grad is not None and pb.grad is not None, name
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
def test_no_position_sees_the_future(fold: bool) -> None:
    """Changing tokens t.. never changes the outputs before t; it does change the output at t."""
    torch.manual_seed(1)
    tva = TriVeinAttention(D, 4, block_size=16, rank=4, fold=fold)
    x = torch.randn(2, 16, D)
    y = tva(x)
    for t in (1, 7, 15):
        x2 = x.clone()
        x2[:, t:] = torch.randn(2, 16 - t, D) * 10
        y2 = tva(x2)
        assert torch.equal(y2[:, :t], y[:, :t]), t
        assert not torch.allclose(y2[:, t], y[:, t]), t


def test_a_gradient_never_flows_from_a_position_to_an_earlier_input() -> None:
    """d y_t / d x_s = 0 for s > t: the backward pass is causal too."""
    torch.manual_seed(2)
    tva = TriVeinAttention(D, 2, block_size=8, rank=5)
    x = torch.randn(1, 8, D, requires_grad=True)
    tva(x)[0, 3].sum().backward()
    assert x.grad is not None
    assert torch.count_nonzero(x.grad[0, 4:]) == 0 and torch.count_nonzero(x.grad[0, :4]) > 0


def test_veins_start_orthonormal_and_bad_ranks_are_refused() -> None:
    """Every head's P_h has orthonormal rows at init; rank outside 1..head size is a ValueError naming both."""
    tva = TriVeinAttention(64, 4, block_size=8, rank=16)
    gram = tva.vein @ tva.vein.transpose(1, 2)  # (nh, r, r)
    torch.testing.assert_close(gram, torch.eye(16).expand(4, 16, 16), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"rank \(17\).*head size d_model/n_head \(16\)"):
        TriVeinAttention(64, 4, block_size=8, rank=17)
    with pytest.raises(ValueError, match=r"rank \(0\)"):
        TriVeinAttention(64, 4, block_size=8, rank=0)
