"""The GPT model and its provider building blocks.

``GPT(config.model, registry)`` builds a decoder whose attention, feed-forward and norm
modules come from the provider registry; the core providers live here too.
"""

from __future__ import annotations

from apt.model._gpt import GPT
from apt.model._gpt import Block
from apt.model._gpt import ModelOutput
from apt.model._gpt import unwrap_model
from apt.model._layers import MLP
from apt.model._layers import CausalSelfAttention
from apt.model._layers import LayerNorm
from apt.model._layers import RMSNorm
from apt.model._layers import SwiGLU


__all__ = [
    "GPT",
    "MLP",
    "Block",
    "CausalSelfAttention",
    "LayerNorm",
    "ModelOutput",
    "RMSNorm",
    "SwiGLU",
    "unwrap_model",
]
