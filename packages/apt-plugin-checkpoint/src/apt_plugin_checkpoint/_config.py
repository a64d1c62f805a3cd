"""The ``checkpoint:`` config section, validated with pydantic."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import field_validator


__all__ = ["CheckpointConfig"]


class CheckpointConfig(BaseModel):
    """When to write checkpoints, how many to keep, and what to do when a save fails.

    Example (YAML)::

        checkpoint:
          every_n_steps: 100
          keep_last: 3
          monitor: val_loss
          mode: min
          keep_best: 1
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    dir: str = Field(
        "checkpoints",
        description="Checkpoint folder; a relative path is taken under the run folder (or the current folder).",
    )
    every_n_steps: int | None = Field(100, gt=0, description="Save every N optimizer steps; None turns it off.")
    every_n_epochs: int | None = Field(1, gt=0, description="Save at the end of every N-th epoch; None turns it off.")
    every_minutes: float | None = Field(
        None, gt=0, description="Also save when this many minutes passed since the last save."
    )
    keep_last: int | None = Field(3, ge=0, description="Keep the K newest checkpoints; None keeps all.")
    monitor: str | None = Field(
        "val_loss", description="Metric that ranks checkpoints for keep_best; None disables it."
    )
    mode: Literal["min", "max"] = Field(
        "min", description="Whether a smaller ('min') or larger ('max') metric is better."
    )
    keep_best: int = Field(1, ge=0, description="Keep the k best checkpoints by `monitor`; they are never deleted.")
    filename: str = Field(
        "step{step:08d}",
        description="Folder name template; fields: step and epoch (integers) and the metrics measured at the "
        "saved step (floats, e.g. '{val_loss:.3f}'; NaN when not measured at that step).",
    )
    save_on_exception: bool = Field(True, description="Write an emergency checkpoint when the run fails.")
    save_on_train_end: bool = Field(True, description="Write a checkpoint when training ends.")
    on_save_error: Literal["continue", "stop"] = Field(
        "continue", description="After a failed save (e.g. disk full): keep training, or request a stop."
    )
    strict_resume: bool = Field(False, description="Refuse to resume when the plugin set differs (else: a warning).")
    async_save: bool = Field(
        True,
        description="Write checkpoints in a background thread after a quick copy of the state (training is "
        "blocked only for the copy); False writes in the training thread.",
    )

    @field_validator("filename")
    @classmethod
    def _check_filename(cls, value: str) -> str:
        # Format the template the way a save will (see CheckpointPlugin._make_job): the
        # counters as ints, every other field as a float metric. Any exception counts:
        # attribute or index access ('{step.foo}', '{step[0]}') raises AttributeError or
        # TypeError, and a spec that only fits ints ('{loss:d}') would fail every save.
        try:
            name = value.format_map(_Probe())
        except Exception as exc:
            raise ValueError(
                f"template {value!r} cannot be formatted ({type(exc).__name__}: {exc}); use only plain fields "
                f"(no attribute or index access) with format specs that fit their type: "
                f"{' and '.join(sorted(INT_FIELDS))} are integers (e.g. '{{step:08d}}'), metrics such as val_loss "
                "are floats (e.g. '{val_loss:.3f}')"
            ) from None
        if not name or "/" in name or "\\" in name or name.startswith(".") or name == "latest":
            raise ValueError(
                f"template {value!r} must give a plain folder name (no '/', not starting with '.', not 'latest')"
            )
        return value


#: Template fields that are integer counters; every other field is a metric (a float).
INT_FIELDS = frozenset({"step", "epoch"})


class _Probe(dict[str, object]):
    """Formats the counters as ints and any other field as a float metric, so that templates
    are checked without a real run."""

    def __missing__(self, key: str) -> object:
        return 0 if key in INT_FIELDS else 0.5
