"""The GPT and its core providers: shapes, causality, tying, providers, sampling."""

from __future__ import annotations

import pytest
import torch
from apt.core import ModelConfig
from apt.core import ProviderRegistry
from apt.model import GPT
from apt.model import MLP
from apt.model import RMSNorm
from apt.model import SwiGLU
from torch import nn


def tiny(**kw: object) -> ModelConfig:
    return ModelConfig(**{"n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 16, **kw})


def make(seed: int = 0, **kw: object) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny(**kw), ProviderRegistry()).eval()


def test_forward_shapes_and_loss() -> None:
    """Logits cover every position; hidden states only on request; the loss is an fp32 scalar."""
    model = make()
    idx = torch.randint(0, 256, (3, 16))
    out = model(idx)
    assert out.logits.shape == (3, 16, 256)
    assert out.hidden is None and out.loss is None
    out = model(idx, targets=torch.randint(0, 256, (3, 16)), return_hidden=True)
    assert out.hidden is not None and out.hidden.shape == (3, 16, 32)
    assert out.loss is not None and out.loss.shape == () and out.loss.dtype == torch.float32
    # the head reads the returned hidden states
    torch.testing.assert_close(model.lm_head(out.hidden), out.logits)
    # an untrained model is close to uniform over 256 bytes
    assert abs(out.loss.item() - torch.log(torch.tensor(256.0)).item()) < 0.3


@pytest.mark.parametrize(("ffn", "norm"), [("gelu", "layernorm"), ("swiglu", "rmsnorm")])
def test_causality(ffn: str, norm: str) -> None:
    """Changing token j never changes the logits of positions before j."""
    model = make(ffn=ffn, norm=norm)
    idx = torch.randint(0, 256, (2, 16))
    base = model(idx).logits
    for j in (0, 5, 15):
        changed = idx.clone()
        changed[:, j] = (changed[:, j] + 1) % 256
        logits = model(changed).logits
        torch.testing.assert_close(logits[:, :j], base[:, :j], rtol=0, atol=0)
        assert not torch.allclose(logits[:, j], base[:, j])


def test_providers_are_chosen_by_name() -> None:
    """model.ffn / model.norm pick the registered providers; a plugin's provider is used too."""
    model = make(ffn="swiglu", norm="rmsnorm")
    assert all(isinstance(b.ffn, SwiGLU) and isinstance(b.ln_1, RMSNorm) for b in model.blocks)
    assert isinstance(make().blocks[0].ffn, MLP)

    class Doubler(nn.Module):
        def __init__(self, d_model: int, d_ff: int, dropout: float, bias: bool) -> None:
            super().__init__()
            self.c_proj = nn.Linear(d_model, d_model, bias=bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c_proj(2 * x)

    registry = ProviderRegistry()
    registry.register("ffn", "doubler", Doubler)
    model = GPT(tiny(ffn="doubler"), registry)
    assert all(isinstance(b.ffn, Doubler) for b in model.blocks)


def test_tied_embeddings_and_scaled_init() -> None:
    """The head shares the embedding by default; residual projections start smaller."""
    model = make()
    assert model.lm_head.weight is model.wte.weight
    assert make(tie_embeddings=False).lm_head.weight is not make(tie_embeddings=False).wte.weight
    torch.manual_seed(0)
    big = GPT(ModelConfig(n_layer=8, n_head=2, d_model=64, block_size=16), ProviderRegistry())
    proj = big.blocks[0].attn.c_proj.weight.std().item()
    fc = big.blocks[0].ffn.c_fc.weight.std().item()
    assert proj == pytest.approx(0.02 / 4, rel=0.1)  # 0.02 / sqrt(2 * n_layer)
    assert fc == pytest.approx(0.02, rel=0.1)


def test_rmsnorm_normalises() -> None:
    """RMSNorm output has unit root-mean-square before its gain."""
    x = torch.randn(4, 7, 32) * 5
    y = RMSNorm(32)(x)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(4, 7), rtol=1e-4, atol=1e-4)


def test_too_long_input_is_refused() -> None:
    """A sequence longer than block_size is an error naming both lengths."""
    with pytest.raises(ValueError, match="length 17.*block_size is 16"):
        make()(torch.zeros(1, 17, dtype=torch.long))


def test_generate() -> None:
    """Sampling appends tokens; greedy equals top_k=1; a seeded generator repeats itself."""
    model = make()
    idx = torch.randint(0, 256, (2, 5))
    greedy = model.generate(idx, 20, temperature=0)  # longer than block_size: the context is cropped
    assert greedy.shape == (2, 25) and torch.equal(greedy[:, :5], idx)
    top1 = model.generate(idx, 20, temperature=1.0, top_k=1)
    assert torch.equal(greedy, top1)
    a = model.generate(idx, 10, generator=torch.Generator().manual_seed(3))
    b = model.generate(idx, 10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_generate_logprobs_fn_adjusts_every_step() -> None:
    """logprobs_fn sees the cropped context and the model's log-probabilities, and its output is sampled."""
    model = make()
    model.eval()
    seen: list[tuple[int, float]] = []

    def force_seven(idx: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
        seen.append((idx.size(1), float(logprobs.exp().sum())))
        out = torch.full_like(logprobs, float("-inf"))
        out[:, 7] = 0.0  # all mass on token 7
        return out

    idx = torch.randint(0, 256, (2, 5))
    out = model.generate(idx, 20, temperature=0.8, logprobs_fn=force_seven)
    assert torch.equal(out[:, 5:], torch.full((2, 20), 7))
    assert len(seen) == 20 and max(t for t, _ in seen) == model.config.block_size
    assert all(abs(total - 2.0) < 1e-4 for _, total in seen)  # two rows of probabilities summing to 1
