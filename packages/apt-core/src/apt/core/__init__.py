"""Configuration, schedules and the provider registry (no torch import here).

``from apt.core import APTConfig`` and the global ``registry`` are as in the original
project; ``config.py``, ``readonly.py``, ``registry.py`` and ``schedules.py`` are the modules behind them.
"""

from __future__ import annotations

from apt.core.config import APTConfig
from apt.core.config import DataConfig
from apt.core.config import ModelConfig
from apt.core.config import RunConfig
from apt.core.config import TrainingConfig
from apt.core.readonly import read_only
from apt.core.registry import CORE_KINDS
from apt.core.registry import ProviderInfo
from apt.core.registry import ProviderRegistry
from apt.core.schedules import Anneal
from apt.core.schedules import Schedule


__all__ = [
    "CORE_KINDS",
    "APTConfig",
    "Anneal",
    "DataConfig",
    "ModelConfig",
    "ProviderInfo",
    "ProviderRegistry",
    "RunConfig",
    "Schedule",
    "TrainingConfig",
    "read_only",
    "registry",
]

#: The process-wide registry used by the global ``plugin_manager``.
registry = ProviderRegistry()
