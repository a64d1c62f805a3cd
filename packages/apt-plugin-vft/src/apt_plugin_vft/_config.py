"""VFTConfig: the ``vft:`` section of an APT configuration."""

from __future__ import annotations

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field


__all__ = ["VFTConfig"]


class VFTConfig(BaseModel):
    """Options of the vft plugin (the ``vft:`` config section).

    The providers are chosen in the ``model`` section; this section shapes them. Example::

        plugins: [vft]
        model: {attention: tva, ffn: vft}
        vft: {rank: 16, ffn_rank: 32, tau: 0.9, compensator: true}
        schedules:
          vft_tau: {start: 0.95, end: 0.85, by: step}     # anneal the compensator threshold
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    rank: int = Field(16, ge=1, description="Vein rank r of each attention head (attention:tva); <= d_model/n_head.")
    ffn_rank: int | None = Field(
        None, ge=1, description="Vein rank of the feed-forward (ffn:vft); <= d_model. None = rank."
    )
    hidden_mult: int = Field(4, ge=1, description="Hidden width of the subspace FFN = hidden_mult * ffn_rank.")
    fold: bool = Field(
        True,
        description="attention:tva folds each head's projector into the q/k/v and output weights (same function, "
        "fewer FLOPs); false applies it to the full-width q/k/v.",
    )
    stabilizer: bool = Field(True, description="ffn:vft adds the d_model x d_model linear stabilising path.")
    compensator: bool = Field(True, description="ffn:vft corrects tokens whose off-manifold rate exceeds tau.")
    compensator_rank: int = Field(4, ge=1, description="Rank s of the compensator's correction.")
    tau: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description="Threshold on the relative off-manifold rate eps = |h - V^T V h| / |h| (0 in the subspace, 1 "
        "orthogonal to it; about sqrt(1 - r/d) for an isotropic h: 0.935 at r = 16, d = 128, so 0.95 fires on the "
        "tokens least aligned with the vein). Anneal it with schedules.vft_tau.",
    )
    ortho_weight: float = Field(
        1.0,
        ge=0.0,
        description="Weight of the loss term vft_ortho = sum over veins of |V V^T - I|_F^2, which keeps the veins' "
        "rows orthonormal (so V^T V stays a projector); 0 turns it off.",
    )

    @property
    def ffn_vein_rank(self) -> int:
        """The feed-forward's vein rank (``ffn_rank``, or ``rank`` when unset)."""
        return self.ffn_rank if self.ffn_rank is not None else self.rank
