"""The training engine: the Trainer, core optimizer / LR-schedule / logger providers, weights I/O."""

from __future__ import annotations

from apt.train._distributed import DistInfo
from apt.train._loggers import CSVLogger
from apt.train._loggers import JSONLLogger
from apt.train._loggers import MetricsLogger
from apt.train._metrics import bits_per_byte
from apt.train._metrics import default_run_dir
from apt.train._optim import build_adamw
from apt.train._optim import build_constant
from apt.train._optim import build_cosine
from apt.train._optim import build_sgd
from apt.train._optim import param_groups
from apt.train._optim import sync_param_groups
from apt.train._trainer import Trainer
from apt.train._weights import load_weights
from apt.train._weights import save_weights


__all__ = [
    "CSVLogger",
    "DistInfo",
    "JSONLLogger",
    "MetricsLogger",
    "Trainer",
    "bits_per_byte",
    "build_adamw",
    "build_constant",
    "build_cosine",
    "build_sgd",
    "default_run_dir",
    "load_weights",
    "param_groups",
    "save_weights",
    "sync_param_groups",
]
