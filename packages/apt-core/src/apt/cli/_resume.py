"""Resume that remembers: the configuration and the folder of a run being continued.

``apt train --run-dir R --resume latest`` continues the run in ``R`` with the configuration
it was started with (``R/config.yaml``); ``--config`` and ``--set`` on the resume command
apply on top. A change to a key that decides what the run computes (the model's shape,
the data, the seed, the batch and the length of an epoch, the warm-up, the plugins'
sections and schedules) would make the resumed run a different run, so it is refused
with a line naming the key, unless ``--force-config``. Keys that only say how the run is
carried out (``training.max_epochs`` to extend it, the device, intervals of validation
and logging, the checkpoint policy) may change.

Without ``--run-dir`` (and without ``run.name``) ``--resume`` continues the newest run
folder under ``run.dir``: the one whose ``config.yaml`` was written last.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apt.errors import ConfigError
from apt.errors import UsageError


__all__ = [
    "COMPUTE_KEYS",
    "changed_compute_keys",
    "describe_changes",
    "merge_config_data",
    "newest_run_dir",
    "refuse_compute_changes",
]

#: Keys (dotted prefixes) whose value decides what a run computes. A resumed run that changed
#: one would continue another run's weights with other data, shapes or schedule.
COMPUTE_KEYS: tuple[str, ...] = (
    "model",
    "data",
    "training.seed",
    "training.steps_per_epoch",
    "training.batch_size",
    "training.grad_accum",
    "training.warmup_steps",
    "training.optimizer",
    "training.lr_scheduler",
    "plugins",
    "disable_plugins",
    "schedules",
)

# plugin sections that only say where and when files are written
_HARMLESS_PLUGIN_SECTIONS = ("checkpoint",)


def merge_config_data(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in, section by section (``update`` wins key by key)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_config_data(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, Mapping) or not data:
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _decides_computation(key: str, core_sections: tuple[str, ...]) -> bool:
    top = key.split(".", 1)[0]
    if top not in core_sections:  # a plugin's section: moe.n_experts, align.weight ...
        return top not in _HARMLESS_PLUGIN_SECTIONS
    return any(key == k or key.startswith(k + ".") for k in COMPUTE_KEYS)


def changed_compute_keys(old: Mapping[str, Any], new: Mapping[str, Any], core_sections: tuple[str, ...]) -> list[str]:
    """The dotted keys that decide what the run computes and differ between ``old`` and ``new``."""
    a, b = _flatten(old), _flatten(new)
    changed = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    return [k for k in changed if _decides_computation(k, core_sections)]


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any], keys: list[str]) -> str:
    a, b = _flatten(old), _flatten(new)
    return ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:4]) + (" ..." if len(keys) > 4 else "")


def newest_run_dir(parent: Path) -> Path:
    """The folder under ``parent`` whose ``config.yaml`` was written last (a run to continue)."""
    runs = [d for d in parent.iterdir() if (d / "config.yaml").is_file()] if parent.is_dir() else []
    if not runs:
        raise UsageError(
            f"--resume without --run-dir continues the newest run under {str(parent)!r}, but it holds no run "
            "(no folder with a config.yaml); name the run folder with --run-dir"
        )
    return max(runs, key=lambda d: (d / "config.yaml").stat().st_mtime)


def refuse_compute_changes(old: Mapping[str, Any], new: Mapping[str, Any], core_sections: tuple[str, ...]) -> None:
    """Raise :class:`~apt.errors.ConfigError` naming the first changed key that decides the computation."""
    keys = changed_compute_keys(old, new, core_sections)
    if keys:
        raise ConfigError(
            f"resuming would change {describe_changes(old, new, keys)}, which the run in progress was started "
            "without; a resumed run keeps its model, data, seed and schedule lengths. Drop that --set/--config, "
            "start a new run in another folder, or pass --force-config to resume anyway",
            key=keys[0],
        )
