"""The KL and hidden-state terms: exact values from the align reference note, section 4."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from apt_plugin_align import argmax_agreement
from apt_plugin_align import hidden_cosine_loss
from apt_plugin_align import temperature_kl


def _kl(teacher: list[float], student: list[float], t: float) -> float:
    s = torch.tensor([student], dtype=torch.float64)
    te = torch.tensor([teacher], dtype=torch.float64)
    return float(temperature_kl(s, te, t))


@pytest.mark.parametrize(
    ("t", "kl", "t2_kl"),
    [(1.0, 0.3278133, 0.3278133), (2.0, 0.1109441, 0.4437763), (0.15, 0.6931240, 0.0155953)],
)
def test_two_class_closed_form_and_t2_scaling(t: float, kl: float, t2_kl: float) -> None:
    """Teacher [2, 0] vs student [0, 0]: KL_T, T^2 KL_T, and KL = ln 2 - H(sigmoid(2/T))."""
    value = _kl([2.0, 0.0], [0.0, 0.0], t)
    assert value == pytest.approx(kl, abs=5e-8)
    assert t * t * value == pytest.approx(t2_kl, abs=5e-8)
    p = 1.0 / (1.0 + math.exp(-2.0 / t))
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p)) if 0 < p < 1 else 0.0
    assert value == pytest.approx(math.log(2.0) - entropy, abs=1e-12)


def test_default_weighting_of_the_kl_term() -> None:
    """alpha * T^2 * KL at the original's alpha = 0.35, T = 0.15 is 0.0054584."""
    assert 0.35 * 0.15**2 * _kl([2.0, 0.0], [0.0, 0.0], 0.15) == pytest.approx(0.0054584, abs=5e-8)


def test_kl_is_not_cross_entropy() -> None:
    """At T = 1 the result is CE (0.6931472) minus the teacher entropy (0.3653339), i.e. the KL."""
    value = _kl([2.0, 0.0], [0.0, 0.0], 1.0)
    assert value == pytest.approx(0.6931472 - 0.3653339, abs=1e-7)


@pytest.mark.parametrize(("t", "expected"), [(1, 0.1232845), (10, 0.1134836), (100, 0.1113571), (1000, 0.1111358)])
def test_high_temperature_limit(t: float, expected: float) -> None:
    """Teacher [1, 0, 0] vs student [0, 0, 0]: T^2 KL tends to 1/9 (logit matching)."""
    assert t * t * _kl([1.0, 0.0, 0.0], [0.0, 0.0, 0.0], t) == pytest.approx(expected, abs=5e-8)


def test_analytic_gradient_and_gradcheck() -> None:
    """d(T^2 KL)/dz_student = T (softmax(z_s/T) - softmax(z_t/T)); gradcheck in float64."""
    t = 2.0
    student = torch.tensor([[0.2, 0.1, -0.4]], dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor([[1.0, -0.5, 0.3]], dtype=torch.float64)
    (t * t * temperature_kl(student, teacher, t)).backward()
    assert student.grad is not None
    torch.testing.assert_close(
        student.grad, torch.tensor([[-0.1757435, 0.2727457, -0.0970022]], dtype=torch.float64), atol=5e-8, rtol=0
    )
    torch.manual_seed(0)
    s = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    te = torch.randn(3, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: temperature_kl(z, te, 0.7), (s,))
    assert temperature_kl(s.float(), te.float(), 0.7).dtype == torch.float32
    assert temperature_kl(s.half(), te.half(), 0.7).dtype == torch.float32


def test_zero_when_states_are_equal_and_nonnegative_otherwise() -> None:
    """Equal logits and hidden states give exactly 0; random ones give kl >= 0 and 0 <= hid <= 2."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    hidden = torch.randn(2, 5, 7)
    assert temperature_kl(logits, logits.clone(), 0.15).item() == 0.0
    assert hidden_cosine_loss(hidden, hidden.clone()).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(2, 5, 11)
    assert temperature_kl(logits, other, 0.15).item() > 0.0
    hid = hidden_cosine_loss(hidden, torch.randn(2, 5, 7)).item()
    assert 0.0 <= hid <= 2.0


def test_shift_invariance() -> None:
    """Adding a constant to all logits of either state leaves the KL unchanged."""
    torch.manual_seed(1)
    s, t = torch.randn(4, 9, dtype=torch.float64), torch.randn(4, 9, dtype=torch.float64)
    base = temperature_kl(s, t, 0.5)
    torch.testing.assert_close(temperature_kl(s + 3.0, t - 7.0, 0.5), base, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1, 0], [0, 1], 1.0),
        ([1, 0], [-1, 0], 2.0),
        ([3, 4], [6, 8], 0.0),
        ([1, 1], [1, 0], 0.2928932),
        ([0, 0], [1, 0], 1.0),
    ],
)
def test_hidden_term_values(a: list[float], b: list[float], expected: float) -> None:
    """1 - cos on pairs of vectors: orthogonal 1, opposite 2, parallel 0 (norm-free), zero vector 1 (not NaN)."""
    value = hidden_cosine_loss(torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64))
    assert value.item() == pytest.approx(expected, abs=1e-7)


def test_masking_and_reduction() -> None:
    """Masked tokens do not count; the loss is a mean over valid tokens; all-masked gives 0, not NaN."""
    torch.manual_seed(2)
    s, t = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    mask = torch.tensor([[True, False, True, True], [False, True, True, False]])
    value = temperature_kl(s, t, 1.0, mask)
    # hand-written sum over valid tokens / number of valid tokens
    p = F.softmax(t, -1)
    per_token = (p * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1)  # (B, T)
    torch.testing.assert_close(value, per_token[mask].sum() / mask.sum(), atol=1e-6, rtol=1e-6)
    # reduction="mean" over elements would also divide by V = 6
    with warnings.catch_warnings():  # torch warns that "mean" is not the true KL: that is the point here
        warnings.simplefilter("ignore", UserWarning)
        elem_mean = F.kl_div(F.log_softmax(s[mask], -1), F.log_softmax(t[mask], -1), reduction="mean", log_target=True)
    torch.testing.assert_close(value, elem_mean * 6, atol=1e-6, rtol=1e-6)
    # changing masked positions changes nothing
    s2, t2 = s.clone(), t.clone()
    s2[~mask] += 100.0
    t2[~mask] -= 50.0
    assert temperature_kl(s2, t2, 1.0, mask).item() == value.item()
    h1, h2 = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    h1b = h1.clone()
    h1b[~mask] = 0.0
    assert hidden_cosine_loss(h1b, h2, mask).item() == hidden_cosine_loss(h1, h2, mask).item()
    # duplicating the batch leaves the mean unchanged
    dup = temperature_kl(torch.cat([s, s]), torch.cat([t, t]), 1.0, torch.cat([mask, mask]))
    torch.testing.assert_close(dup, value)
    # all masked: 0, finite, and backward still works
    s_req = s.clone().requires_grad_(True)
    none = torch.zeros(2, 4, dtype=torch.bool)
    zero = temperature_kl(s_req, t, 1.0, none) + hidden_cosine_loss(h1, h2, none)
    assert zero.item() == 0.0
    zero.backward()
    assert s_req.grad is not None and torch.all(s_req.grad == 0)


def test_no_gradient_into_the_teacher() -> None:
    """The teacher side is detached: only the student's logits and hidden states get a gradient."""
    torch.manual_seed(3)
    s = torch.randn(2, 3, 5, requires_grad=True)
    t = torch.randn(2, 3, 5, requires_grad=True)
    hs = torch.randn(2, 3, 4, requires_grad=True)
    ht = torch.randn(2, 3, 4, requires_grad=True)
    (temperature_kl(s, t, 0.15) + hidden_cosine_loss(hs, ht)).backward()
    assert s.grad is not None and hs.grad is not None
    assert t.grad is None and ht.grad is None


def test_bf16_large_logits_are_finite_in_fp32() -> None:
    """T = 0.15 on bf16 logits of magnitude 1e4 gives a finite fp32 loss."""
    torch.manual_seed(4)
    s = (torch.randn(3, 16) * 1e4).bfloat16()
    t = (torch.randn(3, 16) * 1e4).bfloat16()
    value = temperature_kl(s, t, 0.15)
    assert value.dtype == torch.float32 and torch.isfinite(value)


def test_temperature_must_be_positive() -> None:
    """T <= 0 is refused with the value in the message."""
    with pytest.raises(ValueError, match="got 0"):
        temperature_kl(torch.zeros(1, 2), torch.zeros(1, 2), 0.0)


def test_argmax_agreement_counts_valid_tokens() -> None:
    """Agreement counts equal argmaxes over valid tokens only."""
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    b = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    assert argmax_agreement(a, b) == (1, 3)
    assert argmax_agreement(a, b, torch.tensor([[True, False, False]])) == (1, 1)
