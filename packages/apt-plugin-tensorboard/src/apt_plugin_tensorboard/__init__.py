"""apt-plugin-tensorboard: a TensorBoard metrics logger for APT runs.

Installed next to apt-core it loads as the ``tensorboard`` plugin and registers the
``logger:tensorboard`` provider: every record the Trainer logs goes, as scalars, to
TensorBoard event files under ``RUN_DIR/tensorboard/``.
"""

from __future__ import annotations

from apt_plugin_tensorboard._plugin import TensorBoardConfig
from apt_plugin_tensorboard._plugin import TensorBoardLogger
from apt_plugin_tensorboard._plugin import TensorBoardPlugin


__all__ = ["TensorBoardConfig", "TensorBoardLogger", "TensorBoardPlugin"]
