"""Core optimizer / LR-schedule providers and the weights file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from apt.core import ModelConfig
from apt.core import ProviderRegistry
from apt.core import TrainingConfig
from apt.errors import CheckpointError
from apt.model import GPT
from apt.train import load_weights
from apt.train import param_groups
from apt.train import save_weights


def model(**kw: object) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**{"n_layer": 1, "n_head": 2, "d_model": 16, "block_size": 8, **kw}), ProviderRegistry())


def test_weight_decay_only_on_matrices() -> None:
    """Matrices and embeddings decay; norm gains and biases do not; tied weights appear once."""
    m = model(bias=True)
    decay, plain = param_groups(m, 0.1)
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in plain["params"])
    assert sum(p is m.wte.weight for p in decay["params"]) == 1
    assert len(decay["params"]) + len(plain["params"]) == len(list(m.parameters()))


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_optimizer_providers_use_the_training_config(name: str) -> None:
    """The registry builds the optimizer from param groups and the training config."""
    tc = TrainingConfig(lr=0.01, weight_decay=0.2)
    opt = ProviderRegistry().build("optimizer", name, param_groups=param_groups(model(), tc.weight_decay), config=tc)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]
    assert all(g["lr"] == 0.01 for g in opt.param_groups)


def lrs(name: str, tc: TrainingConfig, total: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=tc.lr)
    sched = ProviderRegistry().build("lr_scheduler", name, optimizer=opt, config=tc, total_steps=total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_schedule_warms_up_then_decays_to_min_lr() -> None:
    """Linear warm-up to lr, cosine down to min_lr at the last step."""
    tc = TrainingConfig(lr=1.0, min_lr=0.1, warmup_steps=4)
    values = lrs("cosine", tc, 24)
    assert values[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert values[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[4:], values[5:], strict=False))
    assert values[-1] == pytest.approx(0.1, abs=0.01)
    assert lrs("constant", tc, 24)[4:] == pytest.approx([1.0] * 20)


def test_weights_round_trip_and_mismatch(tmp_path: Path) -> None:
    """model.safetensors stores a tied head once and loads back; a different model is a CheckpointError."""
    from safetensors.torch import load_file

    path = save_weights(model(), tmp_path / "model.safetensors")
    assert "lm_head.weight" not in load_file(path)
    fresh = model()
    with torch.no_grad():
        fresh.wte.weight.zero_()
    load_weights(fresh, path)
    assert fresh.lm_head.weight is fresh.wte.weight and torch.equal(fresh.wte.weight, model().wte.weight)
    with pytest.raises(CheckpointError, match="do not fit the model"):
        load_weights(model(n_layer=2), path)
    with pytest.raises(CheckpointError, match="cannot read"):
        (tmp_path / "bad.safetensors").write_bytes(b"garbage")
        load_weights(model(), tmp_path / "bad.safetensors")
