"""The stable state: closed-form EMA, tied weights, buffers, hooks, structure changes, state round trip."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from apt.model import GPT
from apt_plugin_align import StableState
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.optim.swa_utils import get_ema_multi_avg_fn


def _fill(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_closed_form_after_n_updates(make_gpt: Callable[..., GPT]) -> None:
    """xi_0 = 0, theta = 1, decay 0.9: after 10 updates every stable weight is 1 - 0.9^10 = 0.6513216."""
    model = make_gpt()
    _fill(model, 0.0)
    stable = StableState(model)
    _fill(model, 1.0)
    for _ in range(10):
        stable.update(model, 0.9)
    assert stable.num_updates == 10
    for p in stable.module.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 1 - 0.9**10), atol=1e-6, rtol=0)
    assert 1 - 0.9**10 == pytest.approx(0.6513216, abs=5e-8)


def test_closed_form_with_changing_weights(make_gpt: Callable[..., GPT]) -> None:
    """With theta_k = k and decays m_k: xi_n = prod(m) xi_0 + sum_k (1 - m_k) prod_{j>k} m_j theta_k."""
    model = make_gpt()
    _fill(model, 0.5)
    stable = StableState(model)
    decays = [0.5, 2 / 3, 0.75, 0.8]
    expected = 0.5
    for k, m in enumerate(decays, start=1):
        _fill(model, float(k))
        stable.update(model, m)
        expected = m * expected + (1 - m) * k
    for p in stable.module.parameters():
        torch.testing.assert_close(p, torch.full_like(p, expected), atol=1e-6, rtol=0)


def test_decay_zero_copies_and_decay_one_freezes(make_gpt: Callable[..., GPT]) -> None:
    """Decay 0 makes xi == theta after one update; decay 1 leaves xi unchanged; others are refused."""
    model = make_gpt()
    stable = StableState(model)
    before = {k: v.clone() for k, v in stable.module.state_dict().items()}
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    stable.update(model, 1.0)
    for k, v in stable.module.state_dict().items():
        assert torch.equal(v, before[k])
    stable.update(model, 0.0)
    for k, v in stable.module.state_dict().items():
        assert torch.equal(v, model.state_dict()[k])
    with pytest.raises(ValueError, match="Invalid decay value -0.1"):
        stable.update(model, -0.1)


def test_matches_averaged_model(make_gpt: Callable[..., GPT]) -> None:
    """Constant decay: k updates equal torch's AveragedModel after k + 1 calls (its first call copies)."""
    model = make_gpt()
    stable = StableState(model)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    reference.update_parameters(model)  # the first call copies
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(6)
    for _ in range(5):
        x = torch.randint(0, 32, (2, 8))
        loss = model(x, targets=x).loss
        assert loss is not None
        opt.zero_grad()
        loss.backward()
        opt.step()
        stable.update(model, 0.9)
        reference.update_parameters(model)
    ours = dict(stable.module.named_parameters())
    for name, p in reference.module.named_parameters():
        torch.testing.assert_close(ours[name], p, atol=1e-6, rtol=1e-6)


def test_tied_weights_are_updated_once_and_stay_tied(make_gpt: Callable[..., GPT]) -> None:
    """wte/lm_head share one tensor: one update moves it by exactly (1 - d), not (1 - d^2); the copy keeps the tie."""
    model = make_gpt()
    assert model.lm_head.weight is model.wte.weight
    _fill(model, 0.0)
    stable = StableState(model)
    smod = stable.module
    assert isinstance(smod, GPT)
    assert smod.lm_head.weight is smod.wte.weight
    _fill(model, 1.0)
    stable.update(model, 0.9)
    torch.testing.assert_close(smod.wte.weight, torch.full_like(smod.wte.weight, 0.1), atol=1e-7, rtol=0)
    assert smod.lm_head.weight is smod.wte.weight
    # the checkpoint state lists the shared tensor once
    assert "lm_head.weight" not in stable.state_dict()["tensors"]


class _WithBuffers(nn.Module):
    running: torch.Tensor
    count: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.register_buffer("running", torch.zeros(3))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def test_buffers_are_copied_not_averaged() -> None:
    """Float and integer buffers take the live values at each update."""
    model = _WithBuffers()
    stable = StableState(model)
    model.running.fill_(4.0)
    model.count.fill_(7)
    stable.update(model, 0.9)
    smod = stable.module
    assert isinstance(smod, _WithBuffers)
    assert torch.equal(smod.running, torch.full((3,), 4.0))
    assert smod.count.item() == 7 and smod.count.dtype == torch.long


def test_stable_copy_is_fp32_frozen_eval_and_hook_free(make_gpt: Callable[..., GPT]) -> None:
    """The copy is fp32, eval(), requires_grad=False, and does not carry the live model's forward hooks."""
    model = make_gpt().to(torch.bfloat16)
    calls: list[int] = []
    model.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    stable = StableState(model)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in stable.module.parameters())
    assert not stable.module.training
    stable.module(torch.zeros(1, 4, dtype=torch.long))
    assert calls == []
    model(torch.zeros(1, 4, dtype=torch.long))
    assert calls == [1]
    stable.update(model, 0.5)  # bf16 live weights lerp into the fp32 copy
    assert all(p.dtype == torch.float32 for p in stable.module.parameters())


def test_structure_change_keeps_matching_tensors(make_gpt: Callable[..., GPT]) -> None:
    """When a plugin replaces a block's FFN, unchanged tensors keep their EMA and new ones start from live."""
    model = make_gpt()
    _fill(model, 0.0)
    stable = StableState(model)
    _fill(model, 1.0)
    stable.update(model, 0.5)  # every stable weight is 0.5
    linear = nn.Linear(16, 16, bias=False)
    nn.init.constant_(linear.weight, 3.0)
    new_ffn = nn.Sequential(linear)
    model.blocks[0].ffn = new_ffn
    assert not stable.matches(model)
    kept, new = stable.rebuild(model)
    assert (kept, new) == (7, 1)
    smod = dict(stable.module.named_parameters())
    assert torch.all(smod["blocks.0.ffn.0.weight"] == 3.0)
    assert torch.all(smod["wte.weight"] == 0.5)
    assert "blocks.0.ffn.c_fc.weight" not in smod
    stable.update(model, 0.5)  # still one update per call, against the new structure
    assert stable.num_updates == 2
    assert torch.all(dict(stable.module.named_parameters())["wte.weight"] == 0.75)


def test_state_dict_round_trip(make_gpt: Callable[..., GPT]) -> None:
    """state_dict/load_state_dict restore tensors and the update count exactly; strict mode names mismatches."""
    model = make_gpt()
    stable = StableState(model)
    torch.manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    stable.update(model, 0.7)
    state = stable.state_dict()
    other = StableState(make_gpt(seed=1))
    assert other.load_state_dict(state) == len(state["tensors"])
    assert other.num_updates == 1
    for k, v in stable.module.state_dict().items():
        assert torch.equal(other.module.state_dict()[k], v)
    tensors = dict(state["tensors"])
    del tensors["wpe.weight"]
    bad = {"tensors": tensors, "num_updates": 1}
    with pytest.raises(KeyError, match="wpe.weight"):
        other.load_state_dict(bad)


def test_param_drift(make_gpt: Callable[..., GPT]) -> None:
    """||theta - xi|| / ||xi||: 0 for equal states, 1 for theta = 2 xi, NaN once the structure changed."""
    model = make_gpt()
    stable = StableState(model)
    assert stable.drift(model) == 0.0
    _fill(model, 0.5)
    stable.update(model, 0.0)
    _fill(model, 1.0)
    assert stable.drift(model) == pytest.approx(1.0, abs=1e-6)
    model.blocks[0].ffn = nn.Sequential(nn.Linear(16, 16, bias=False))
    assert math.isnan(stable.drift(model))
