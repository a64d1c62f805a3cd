"""``GradientConfig``: the ``gradient:`` section of an APT config, one sub-section per part.

Everything is off by default except logging::

    gradient:
      log: {every: 10, groups: module, update_ratio: true}
      nonfinite: {policy: skip, max_consecutive: 5}
      clip: {mode: agc, agc_lambda: 0.01}
      surgery: {mode: pcgrad, terms: [lm, moe_balance], start_epoch: 1, cosine_every: 50}
      noise_scale: {enabled: true, beta: 0.99}
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field


__all__ = [
    "ClipConfig",
    "GradientConfig",
    "LogConfig",
    "NoiseScaleConfig",
    "NonFiniteConfig",
    "SurgeryConfig",
]

_STRICT = ConfigDict(extra="forbid", validate_assignment=True)


class LogConfig(BaseModel):
    """Gradient logging (on by default)."""

    model_config = _STRICT

    enabled: bool = Field(True, description="Log grad/norm every step and the per-group metrics every `every` steps.")
    every: int = Field(
        10, ge=1, description="Per-group gradient norms, parameter norms and update ratios every N optimizer steps."
    )
    groups: Literal["none", "layer", "module", "param"] = Field(
        "module",
        description=(
            "How parameters are grouped: none (only the global norm), layer (blocks.3), module (blocks.3.attn) "
            "or param (every tensor). Parameters outside the blocks group by their first name part (wte, ln_f)."
        ),
    )
    update_ratio: bool = Field(
        True, description="Log |W_after - W_before| / |W_before| per group on logging steps (one weight copy then)."
    )


class NonFiniteConfig(BaseModel):
    """What happens when a gradient holds NaN or inf (detected before the optimizer step)."""

    model_config = _STRICT

    policy: Literal["warn", "skip", "stop"] = Field(
        "warn",
        description=(
            "warn: log the first offending parameter and go on (the optimizer gets the non-finite gradient); "
            "skip: veto the optimizer step (counted) and stop after max_consecutive skips in a row; "
            "stop: skip this step and stop the run."
        ),
    )
    max_consecutive: int = Field(5, ge=1, description="With policy skip: stop the run after this many skips in a row.")


class ClipConfig(BaseModel):
    """Adaptive gradient clipping, applied before the core's ``training.grad_clip`` (both may be on)."""

    model_config = _STRICT

    mode: Literal["none", "agc", "autoclip", "zscore"] = Field("none", description="Which clipping rule.")
    agc_lambda: float = Field(0.01, gt=0.0, description="AGC: clip unit i when |G_i| / max(|W_i|, eps) > lambda.")
    agc_eps: float = Field(1e-3, gt=0.0, description="AGC: the floor of the weight norm.")
    agc_exclude: list[str] = Field(
        default_factory=lambda: ["wte", "lm_head"],
        description="AGC: parameter-name prefixes left unclipped (the tied embedding/output layer by default).",
    )
    autoclip_percentile: float = Field(
        10.0, ge=0.0, le=100.0, description="AutoClip: clip at this percentile of the history of global norms."
    )
    autoclip_history: int = Field(1000, ge=1, description="AutoClip: how many past norms are kept (a ring).")
    zscore_alpha: float = Field(0.97, gt=0.0, lt=1.0, description="z-score: EMA factor of the norm's mean/variance.")
    zscore_threshold: float = Field(2.5, gt=0.0, description="z-score: clip norms more than this many sigma above.")
    zscore_warmup: int = Field(25, ge=1, description="z-score: steps whose norms initialise the mean and variance.")
    zscore_mode: Literal["adaptive", "mean"] = Field(
        "adaptive", description="z-score: clip a spike to mu + thr^2 sigma / z (adaptive, ZClip) or to mu (mean)."
    )


class SurgeryConfig(BaseModel):
    """Gradient surgery between named loss terms, and the term-gradient diagnostic."""

    model_config = _STRICT

    mode: Literal["none", "pcgrad"] = Field(
        "none", description="pcgrad: project conflicting term gradients (Yu et al. 2020); one backward per term."
    )
    terms: list[str] = Field(
        default_factory=list,
        description="Loss terms taking part ('lm' is the language-model loss); empty = every term of the step.",
    )
    start_epoch: int = Field(0, ge=0, description="Surgery runs from this epoch on (the cosines are logged before).")
    cosine_every: int = Field(
        0, ge=0, description="Log term-gradient cosines and norms every N steps (0: only on surgery steps)."
    )


class NoiseScaleConfig(BaseModel):
    """The simple gradient noise scale B_simple (McCandlish et al. 2018)."""

    model_config = _STRICT

    enabled: bool = Field(False, description="Estimate B_simple; needs training.grad_accum >= 2 or several processes.")
    beta: float = Field(0.99, ge=0.0, lt=1.0, description="EMA factor of |G|^2 and tr(Sigma) (each smoothed alone).")


class GradientConfig(BaseModel):
    """Options of the gradient plugin (see the package README)."""

    model_config = _STRICT

    log: LogConfig = Field(default_factory=LogConfig)
    nonfinite: NonFiniteConfig = Field(default_factory=NonFiniteConfig)
    clip: ClipConfig = Field(default_factory=ClipConfig)
    surgery: SurgeryConfig = Field(default_factory=SurgeryConfig)
    noise_scale: NoiseScaleConfig = Field(default_factory=NoiseScaleConfig)
