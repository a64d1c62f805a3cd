"""Fixtures of the align plugin's tests: a tiny GPT built from core's providers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from apt.core import ModelConfig
from apt.core import ProviderRegistry
from apt.model import GPT


def _make_gpt(seed: int = 0, **overrides: object) -> GPT:
    torch.manual_seed(seed)
    options: dict[str, object] = {"vocab_size": 32, "block_size": 8, "n_layer": 1, "n_head": 2, "d_model": 16}
    options.update(overrides)
    return GPT(ModelConfig(**options), ProviderRegistry())


@pytest.fixture
def make_gpt() -> Callable[..., GPT]:
    """``make_gpt(seed=0, **model_options)``: a tiny GPT (V=32, T=8, 1 layer, C=16), tied embeddings."""
    return _make_gpt
