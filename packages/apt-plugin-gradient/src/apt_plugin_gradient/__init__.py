"""apt-plugin-gradient: gradient logging, non-finite step skipping, adaptive clipping, PCGrad, noise scale.

``pip install apt-plugin-gradient`` registers the plugin ``gradient`` (entry point group
``apt.plugins``) with the provider ``plot:gradient``. The building blocks work on their own::

    from apt_plugin_gradient import pcgrad, agc_clip_, NoiseScale
    projected = pcgrad(torch.stack([g_lm, g_aux]))          # (T, P) -> (T, P)
"""

from __future__ import annotations

from apt_plugin_gradient._clip import AutoClip
from apt_plugin_gradient._clip import ZScoreClip
from apt_plugin_gradient._clip import agc_clip_
from apt_plugin_gradient._clip import scale_grads_
from apt_plugin_gradient._config import ClipConfig
from apt_plugin_gradient._config import GradientConfig
from apt_plugin_gradient._config import LogConfig
from apt_plugin_gradient._config import NoiseScaleConfig
from apt_plugin_gradient._config import NonFiniteConfig
from apt_plugin_gradient._config import SurgeryConfig
from apt_plugin_gradient._groups import ParamGroups
from apt_plugin_gradient._groups import group_of
from apt_plugin_gradient._noise import NoiseScale
from apt_plugin_gradient._plot import plot_gradient
from apt_plugin_gradient._plugin import GradientPlugin
from apt_plugin_gradient._surgery import pcgrad
from apt_plugin_gradient._surgery import term_cosines


__all__ = [
    "AutoClip",
    "ClipConfig",
    "GradientConfig",
    "GradientPlugin",
    "LogConfig",
    "NoiseScale",
    "NoiseScaleConfig",
    "NonFiniteConfig",
    "ParamGroups",
    "SurgeryConfig",
    "ZScoreClip",
    "agc_clip_",
    "group_of",
    "pcgrad",
    "plot_gradient",
    "scale_grads_",
    "term_cosines",
]
