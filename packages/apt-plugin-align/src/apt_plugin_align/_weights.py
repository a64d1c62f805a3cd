"""The stable weights on disk: ``run_dir/align/stable.safetensors`` and the ``weights:stable`` provider."""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor
from torch import nn

from apt.errors import CheckpointError
from apt.train import save_weights


__all__ = ["STABLE_WEIGHTS_FILE", "load_stable_weights", "save_stable_weights", "stable_weights_path"]

#: Where the stable weights go, relative to the run folder.
STABLE_WEIGHTS_FILE = Path("align") / "stable.safetensors"


def stable_weights_path(run_dir: str | Path) -> Path:
    """``run_dir/align/stable.safetensors``."""
    return Path(run_dir) / STABLE_WEIGHTS_FILE


def save_stable_weights(stable: nn.Module, run_dir: str | Path) -> Path:
    """Write the stable module's weights to ``run_dir/align/stable.safetensors``.

    The format is core's ``model.safetensors`` (:func:`apt.train.save_weights`: a tied head is
    stored once and re-tied on load by :func:`apt.train.load_weights`). The file is written
    next to its final name and renamed, so a crash never leaves a truncated file behind.

    :returns: the path written.
    """
    path = stable_weights_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_weights(stable, tmp)
    tmp.replace(path)
    return path


def load_stable_weights(run_dir: Path) -> dict[str, Tensor]:
    """The ``weights:stable`` provider: the stable state's ``state_dict`` saved in ``run_dir``.

    ``apt generate --weights stable`` loads it into the run's model (with
    :func:`apt.train.load_weights`, which re-ties a tied head) to sample from the stable state.

    :param run_dir: the run folder (the one holding ``config.yaml``).
    :raises CheckpointError: when the file is missing or unreadable, with how to get one.
    """
    path = stable_weights_path(run_dir)
    if not path.is_file():
        raise CheckpointError(
            f"no stable weights at {str(path)!r}: the align plugin writes them when training ends, and only if "
            "it was active (epoch >= align.start_epoch, or enabled by a schedule) and align.save_stable is true; "
            "train with the align plugin or sample without --weights stable",
            path=path,
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read stable weights {str(path)!r}: {exc}", path=path) from exc
