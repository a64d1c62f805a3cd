"""A GPT-style decoder assembled from providers, in the spirit of nanoGPT's ``model.py``.

Which attention, feed-forward and norm modules a block uses is not hard-coded: the
model asks the provider registry for ``model.attention``, ``model.ffn`` and
``model.norm`` by name, so a plugin (MoE, say) can supply its own or replace
``block.ffn`` after the model is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import nn


if TYPE_CHECKING:
    from apt.core import ModelConfig
    from apt.core import ProviderRegistry


__all__ = ["GPT", "Block", "ModelOutput"]


@dataclass
class ModelOutput:
    """What :meth:`GPT.forward` returns.

    :ivar logits: ``(B, T, V)`` next-token logits for every position.
    :ivar hidden: ``(B, T, C)`` final hidden states after ``ln_f``, when asked for.
    :ivar loss: mean token cross-entropy in fp32, when targets were given.
    """

    logits: Tensor
    hidden: Tensor | None = None
    loss: Tensor | None = None


class Block(nn.Module):
    """One pre-norm transformer block: ``x + attn(ln_1(x))`` then ``x + ffn(ln_2(x))``."""

    def __init__(self, config: ModelConfig, registry: ProviderRegistry) -> None:
        super().__init__()
        c = config
        self.ln_1 = registry.build("norm", c.norm, d_model=c.d_model, bias=c.bias)
        self.attn = registry.build(
            "attention", c.attention, d_model=c.d_model, n_head=c.n_head, block_size=c.block_size,
            dropout=c.dropout, bias=c.bias,
        )  # fmt: skip
        self.ln_2 = registry.build("norm", c.norm, d_model=c.d_model, bias=c.bias)
        self.ffn = registry.build("ffn", c.ffn, d_model=c.d_model, d_ff=c.ffn_hidden, dropout=c.dropout, bias=c.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))  # (B, T, C)
        x = x + self.ffn(self.ln_2(x))  # (B, T, C)
        return x


class GPT(nn.Module):
    """A decoder-only transformer language model.

    :param config: the ``model`` section of the configuration.
    :param registry: where the attention / ffn / norm providers come from.
    """

    def __init__(self, config: ModelConfig, registry: ProviderRegistry) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_rows, config.d_model)  # token embedding
        self.wpe = nn.Embedding(config.block_size, config.d_model)  # learned position embedding
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, registry) for _ in range(config.n_layer))
        self.ln_f = registry.build("norm", config.norm, d_model=config.d_model, bias=config.bias)
        self.lm_head = nn.Linear(config.d_model, config.vocab_rows, bias=False)
        if config.tie_embeddings:
            # Weight tying (Press & Wolf 2017, arXiv 1608.05859): the output head reuses the
            # token embedding, which saves V*C parameters and trains better at small scale.
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # Scaled init of the residual projections (GPT-2): each block adds two outputs to the
        # residual stream, so their std shrinks with depth to keep the stream's variance flat.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Number of parameters (shared tensors counted once); position embeddings excluded by default."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def forward(self, idx: Tensor, targets: Tensor | None = None, return_hidden: bool = False) -> ModelOutput:
        """Run the model.

        :param idx: ``(B, T)`` int64 token ids, ``T <= block_size``.
        :param targets: optional ``(B, T)`` next-token ids; ``-1`` is ignored in the loss.
        :param return_hidden: also return the final hidden states (after ``ln_f``).
        """
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"cannot forward a sequence of length {T}: model.block_size is {self.config.block_size}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        h = self.ln_f(x)  # (B, T, C)
        logits = self.lm_head(h)  # (B, T, V)
        loss = None
        if targets is not None:
            # fp32 cross-entropy even under bf16 autocast: the log-softmax over V needs it
            loss = F.cross_entropy(logits.float().view(B * T, -1), targets.reshape(B * T), ignore_index=-1)
        return ModelOutput(logits=logits, hidden=h if return_hidden else None, loss=loss)

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        vocab_limit: int | None = None,
        logprobs_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> Tensor:
        """Sample ``max_new_tokens`` tokens after ``idx`` ``(B, T)``; returns ``(B, T + max_new_tokens)``.

        ``temperature == 0`` picks the most likely token (greedy); ``top_k`` keeps only the
        k most likely tokens before sampling; ``vocab_limit`` only ids below it (a vocabulary
        padded beyond what the tokenizer can decode). Put the model in eval mode first.

        ``logprobs_fn(idx_cond, logprobs)`` is the hook through which a plugin adjusts the
        next-token distribution (``apt generate --retrieval`` passes the ``logprobs:retrieval``
        provider, a kNN-LM): it gets the context just run ``(B, T')`` and the model's
        log-probabilities ``(B, V)`` of the next token, right after this step's forward, and
        returns new log-probabilities ``(B, V)``; temperature, ``top_k`` and sampling apply to those.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.config.block_size :]  # crop the context to the block size
            logits = self(idx_cond).logits[:, -1, :].float()  # (B, V) for the last position only
            if vocab_limit is not None:
                logits[:, vocab_limit:] = float("-inf")
            if logprobs_fn is not None:
                logits = logprobs_fn(idx_cond, F.log_softmax(logits, dim=-1))  # (B, V) log-probabilities
                if vocab_limit is not None:
                    logits[:, vocab_limit:] = float("-inf")
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]  # (B, 1)
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)  # (B, V)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
            idx = torch.cat((idx, next_id), dim=1)  # (B, T + 1)
        return idx


def unwrap_model(model: Any) -> nn.Module:
    """The module inside a DDP / ``torch.compile`` wrapper (or the module itself)."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model  # type: ignore[no-any-return]
        model = inner
