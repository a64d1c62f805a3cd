"""``AlignConfig``: the ``align:`` section of an APT config."""

from __future__ import annotations

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import model_validator

from apt_plugin_align._schedules import DecaySchedule
from apt_plugin_align._schedules import Ramp


__all__ = ["AlignConfig"]


class AlignConfig(BaseModel):
    """Options of bistate alignment.

    The loss added to the language-model loss after activation is
    ``w(t) * (alpha * T**2 * KL(stable_T || live_T) + beta * (1 - cos(h_live, h_stable)))``
    with ``T = tau_align`` (the original's names and defaults). ``alpha = beta = 0`` keeps
    only the EMA (no teacher forward pass), e.g. to evaluate or sample from EMA weights.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    alpha: float = Field(0.35, ge=0.0, description="Weight of the temperature-scaled KL term.")
    beta: float = Field(0.20, ge=0.0, description="Weight of the hidden-state term 1 - cos.")
    tau_align: float = Field(
        0.15,
        gt=0.0,
        description=(
            "Temperature T of the KL term, applied to both states' logits; the term is multiplied "
            "by T**2 (Hinton et al. 2015). T < 1 sharpens both distributions (argmax-like matching)."
        ),
    )
    start_epoch: int = Field(
        1,
        ge=0,
        description=(
            "First epoch in which the stable state exists. A schedule enable_align_at_epoch "
            "activates at the later of the two."
        ),
    )
    ramp: Ramp = Field("sigmoid", description="Shape of w(t): sigmoid (Mean Teacher), linear, cosine or step.")
    ramp_steps: int | None = Field(
        None, ge=0, description="Ramp length in optimizer steps; None = one epoch; 0 = full weight at once."
    )
    ema_decay: float = Field(
        0.999, ge=0.0, le=1.0, description="EMA decay m (the cap of mt_warmup, the start of cosine/linear)."
    )
    ema_schedule: DecaySchedule = Field(
        "mt_warmup", description="Decay schedule: mt_warmup (min(1 - 1/(k+1), m)), constant, cosine, linear."
    )
    ema_decay_end: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Final decay of cosine/linear; None = 1.0 for cosine, 0.9999 for linear. Must be >= ema_decay.",
    )
    ema_schedule_steps: int | None = Field(
        None, ge=0, description="Updates over which cosine/linear anneal; None = until the end of training."
    )
    eval_stable: bool = Field(True, description="At each validation also evaluate the stable state.")
    save_stable: bool = Field(
        True, description="Write run_dir/align/stable.safetensors when training ends or a schedule stops align."
    )

    @model_validator(mode="after")
    def _check_decay_end(self) -> AlignConfig:
        end = self.decay_end
        if end < self.ema_decay and self.ema_schedule in ("cosine", "linear"):
            raise ValueError(
                f"ema_decay_end must be >= ema_decay ({self.ema_decay}) for the {self.ema_schedule!r} schedule, "
                f"got {end}"
            )
        return self

    @property
    def decay_end(self) -> float:
        """``ema_decay_end`` with its schedule-dependent default filled in."""
        if self.ema_decay_end is not None:
            return self.ema_decay_end
        return 1.0 if self.ema_schedule == "cosine" else max(0.9999, self.ema_decay)

    @property
    def ema_only(self) -> bool:
        """``alpha == beta == 0``: track the EMA but add no loss and run no teacher forward."""
        return self.alpha == 0.0 and self.beta == 0.0
