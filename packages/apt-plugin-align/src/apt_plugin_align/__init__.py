"""apt-plugin-align: bistate alignment for APT.

An fp32 EMA *stable state* of the model is created when the plugin activates and is
updated after every optimizer step; the live (*align*) model is pulled towards it by
``w(t) * (alpha * T**2 * KL(stable_T || live_T) + beta * (1 - cos(h_live, h_stable)))``.
Enable it with ``plugins: [align]`` and an ``align:`` config section (see :class:`AlignConfig`).
"""

from __future__ import annotations

from apt_plugin_align._config import AlignConfig
from apt_plugin_align._ema import StableState
from apt_plugin_align._losses import argmax_agreement
from apt_plugin_align._losses import hidden_cosine_loss
from apt_plugin_align._losses import temperature_kl
from apt_plugin_align._plugin import AlignPlugin
from apt_plugin_align._schedules import DECAY_SCHEDULES
from apt_plugin_align._schedules import RAMPS
from apt_plugin_align._schedules import align_weight
from apt_plugin_align._schedules import ema_decay_at
from apt_plugin_align._schedules import ramp_value
from apt_plugin_align._weights import STABLE_WEIGHTS_FILE
from apt_plugin_align._weights import load_stable_weights
from apt_plugin_align._weights import save_stable_weights
from apt_plugin_align._weights import stable_weights_path


__all__ = [
    "DECAY_SCHEDULES",
    "RAMPS",
    "STABLE_WEIGHTS_FILE",
    "AlignConfig",
    "AlignPlugin",
    "StableState",
    "align_weight",
    "argmax_agreement",
    "ema_decay_at",
    "hidden_cosine_loss",
    "load_stable_weights",
    "ramp_value",
    "save_stable_weights",
    "stable_weights_path",
    "temperature_kl",
]
