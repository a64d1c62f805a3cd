"""MoEConfig: the ``moe:`` section of an APT configuration."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import field_validator
from pydantic import model_validator


__all__ = ["MoEConfig"]


class MoEConfig(BaseModel):
    """Options of the MoE plugin (the ``moe:`` config section).

    Example::

        plugins: [moe]
        moe: {num_experts: 8, top_k: 2, layers: 2, expert_ffn: swiglu}
        schedules:
          enable_moe_at_epoch: 1                          # sparse upcycling at epoch 1
          moe_aux_loss_weight: {start: 0.05, end: 0.01, by: step}
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    num_experts: int = Field(8, ge=1, description="Experts per MoE layer (E).")
    top_k: int = Field(2, ge=1, description="Experts each token is sent to (k); 1 gives Switch routing.")
    capacity_factor: float | None = Field(
        None,
        gt=0.0,
        description=(
            "None = dropless. Otherwise each expert takes at most ceil(capacity_factor * tokens * top_k / "
            "num_experts) token slots per forward; the lowest-gate slots beyond that are dropped."
        ),
    )
    aux_loss_weight: float = Field(
        0.01, ge=0.0, description="Weight of the Switch load-balancing loss (E * sum_i f_i P_i, 1 at perfect balance)."
    )
    z_loss_weight: float = Field(0.001, ge=0.0, description="Weight of the router z-loss (mean logsumexp(logits)^2).")
    jitter: float = Field(
        0.0, ge=0.0, lt=1.0, description="Multiplicative router-input noise U(1-j, 1+j) in training (0 = off)."
    )
    shared_experts: int = Field(
        0,
        ge=0,
        description="Always-on experts added to every token's output (DeepSeek/Qwen style), each of width d_ff.",
    )
    layers: Literal["all"] | int | list[int] = Field(
        "all", description="Blocks that get an MoE FFN: 'all', every n-th block (an int n >= 1), or a list of indices."
    )
    expert_ffn: Literal["gelu", "swiglu"] = Field("gelu", description="Expert FFN type (the core ffn provider's name).")
    d_ff: int | None = Field(None, gt=0, description="Hidden width of each expert; None = the model's d_ff.")
    dispatch: Literal["auto", "grouped_mm", "sliced", "loop"] = Field(
        "auto",
        description=(
            "Expert execution: 'grouped_mm' (one torch grouped matmul), 'sliced' (one matmul per expert over "
            "contiguous sorted slices), 'loop' (the per-expert mask reference, for tests), 'auto' (grouped_mm on "
            "CUDA when usable, else sliced)."
        ),
    )

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, value: str | int | list[int]) -> str | int | list[int]:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"an int selects every n-th block and must be >= 1, got {value}")
        if isinstance(value, list):
            if any(i < 0 for i in value):
                raise ValueError(f"block indices must be >= 0, got {value}")
            if len(set(value)) != len(value):
                raise ValueError(f"block indices must be unique, got {value}")
        return value

    @model_validator(mode="after")
    def _check_top_k(self) -> MoEConfig:
        if self.top_k > self.num_experts:
            raise ValueError(
                f"moe.top_k ({self.top_k}) must be <= moe.num_experts ({self.num_experts}); "
                "lower moe.top_k or raise moe.num_experts"
            )
        return self

    def selected_layers(self, n_layer: int) -> list[int]:
        """The block indices that get an MoE FFN in a model of ``n_layer`` blocks.

        :raises ValueError: when an explicit index is out of range.
        """
        if self.layers == "all":
            return list(range(n_layer))
        if isinstance(self.layers, int):
            # every n-th block, counting from the first: n=2 -> 1, 3, 5 ... (the second block of each pair), as
            # in GShard/Switch "every other layer"; n=1 -> all blocks.
            return [i for i in range(n_layer) if (i + 1) % self.layers == 0]
        bad = [i for i in self.layers if i >= n_layer]
        if bad:
            raise ValueError(f"moe.layers has indices {bad} but the model has only {n_layer} blocks (0..{n_layer - 1})")
        return sorted(self.layers)
