"""apt-plugin-checkpoint: crash-safe automatic checkpoints, best-k retention and exact resume.

Install it next to apt-core and it loads as the ``checkpoint`` plugin; configure it in
the ``checkpoint:`` config section (:class:`CheckpointConfig`) and resume a run with
``apt train --resume latest`` or ``--resume PATH``.

A checkpoint is a folder of ``tensors.safetensors`` (every tensor), ``state.json``
(everything else) and ``manifest.json`` (sizes and SHA-256, written last). Loading
verifies the manifest and never unpickles anything.
"""

from __future__ import annotations

from apt_plugin_checkpoint._config import CheckpointConfig
from apt_plugin_checkpoint._format import EncodedState
from apt_plugin_checkpoint._format import decode_state
from apt_plugin_checkpoint._format import encode_state
from apt_plugin_checkpoint._manifest import Manifest
from apt_plugin_checkpoint._manifest import verify
from apt_plugin_checkpoint._plugin import CheckpointPlugin
from apt_plugin_checkpoint._plugin import estimate_checkpoint_bytes
from apt_plugin_checkpoint._retention import CheckpointInfo
from apt_plugin_checkpoint._retention import RetentionPolicy
from apt_plugin_checkpoint._retention import select_for_deletion
from apt_plugin_checkpoint._store import CheckpointFallbackWarning
from apt_plugin_checkpoint._store import CheckpointStore
from apt_plugin_checkpoint._store import LoadedCheckpoint
from apt_plugin_checkpoint._store import load_checkpoint


__all__ = [
    "CheckpointConfig",
    "CheckpointFallbackWarning",
    "CheckpointInfo",
    "CheckpointPlugin",
    "CheckpointStore",
    "EncodedState",
    "LoadedCheckpoint",
    "Manifest",
    "RetentionPolicy",
    "decode_state",
    "encode_state",
    "estimate_checkpoint_bytes",
    "load_checkpoint",
    "select_for_deletion",
    "verify",
]
