"""The ``apt`` command line: ``apt train``, ``apt plot``, ``apt generate``, ``apt plugins ...``.

Importing this package does not import torch or any plugin: commands import what they
need when they run, so ``apt plugins list`` answers in well under a second.
"""

from __future__ import annotations

from apt.cli._main import exit_skipping_finalization
from apt.cli._main import main


__all__ = ["exit_skipping_finalization", "main"]
