"""``RetrievalConfig``: the ``retrieval:`` section of an APT config."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import field_validator


__all__ = ["RetrievalConfig"]

KeyType = Literal["last_ffn_input", "final_hidden"]
IndexType = Literal["auto", "flat", "ivfpq"]


class RetrievalConfig(BaseModel):
    """Options of the kNN-LM (Khandelwal et al. 2020, arXiv 1911.00172).

    ``p(y|x) = lmbda * p_kNN(y|x) + (1 - lmbda) * p_LM(y|x)`` with
    ``p_kNN(y|x) ∝ sum over the k nearest stored keys with value y of exp(-d / temperature)``,
    ``d`` the squared L2 distance between the query's key and a stored key.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    key: KeyType = Field(
        "last_ffn_input",
        description=(
            "What is stored and queried: the input of the last block's feed-forward after its norm "
            "(the paper's choice), or final_hidden (after ln_f, what the output head sees)."
        ),
    )
    k: int = Field(64, gt=0, description="Neighbours per query (1024 in the paper; 256 byte values need fewer).")
    lmbda: float = Field(0.25, ge=0.0, le=1.0, description="Interpolation weight of p_kNN when tune is false.")
    temperature: float = Field(
        10.0, gt=0.0, description="Softmax temperature over negative squared distances when tune is false."
    )
    tune: bool = Field(True, description="Choose lmbda and temperature on a slice of the validation windows.")
    lambdas: list[float] = Field(
        [0.05, 0.1, 0.25, 0.5, 0.75], min_length=1, description="The lmbda grid of the tuning sweep."
    )
    temperature_scales: list[float] = Field(
        [0.1, 0.3, 1.0, 3.0, 10.0],
        min_length=1,
        description="The temperature grid of the sweep, in units of the median nearest-neighbour distance.",
    )
    build: Literal["train_end", "epoch"] = Field(
        "train_end",
        description=(
            "When the datastore is built: at the run's last validation (train_end), or at every "
            "epoch-end validation (epoch; rebuilt each time, costly)."
        ),
    )
    index: IndexType = Field(
        "auto", description="flat (exact), ivfpq (approximate, trained quantisers), or auto by flat_max_keys."
    )
    flat_max_keys: int = Field(2_000_000, gt=0, description="auto uses flat up to this many keys, ivfpq above.")
    nlist: int | None = Field(None, gt=0, description="IVF cells; None = a power of two near 4 * sqrt(N).")
    nprobe: int = Field(32, gt=0, description="IVF cells visited per query.")
    pq_m: int | None = Field(None, gt=0, description="PQ sub-quantisers (must divide the key width); None = d/8.")
    pq_bits: int = Field(8, ge=1, le=16, description="Bits per PQ sub-quantiser code.")
    train_keys: int = Field(100_000, gt=0, description="At most this many keys (a seeded sample) train ivfpq.")
    recompute_distances: bool = Field(
        True,
        description="ivfpq: re-rank 4k candidates by exact distances from the stored keys (the paper recomputes too).",
    )
    stride: int | None = Field(
        None,
        gt=0,
        description=(
            "Window stride of the datastore pass; None = model.block_size (every training token once, "
            "with the same 0..T-1 contexts validation sees); smaller keeps only each window's last stride keys."
        ),
    )
    batch_size: int = Field(32, gt=0, description="Windows per forward pass while building.")
    memory_limit_mb: int | None = Field(
        None, gt=0, description="Refuse an index larger than this; None = the machine's available memory."
    )
    seed: int = Field(0, ge=0, description="Seeds the ivfpq training sample and k-means.")
    folder: str = Field("retrieval", min_length=1, description="The datastore folder, relative to the run folder.")
    progress: bool = Field(True, description="Show a progress bar while building.")

    @field_validator("lambdas")
    @classmethod
    def _lambdas_in_range(cls, value: list[float]) -> list[float]:
        for lam in value:
            if not 0.0 <= lam <= 1.0:
                raise ValueError(f"every lmbda must be in [0, 1], got {lam}")
        return value

    @field_validator("temperature_scales")
    @classmethod
    def _scales_positive(cls, value: list[float]) -> list[float]:
        for s in value:
            if not s > 0:
                raise ValueError(f"every temperature scale must be > 0, got {s}")
        return value
