"""APT: a PyTorch trainer for transformer language models, extended by plugins.

``apt.core`` holds configuration, schedules and the provider registry; ``apt.plugins``
the plugin kernel; ``apt.model``, ``apt.data`` and ``apt.train`` the training engine;
``apt.cli`` the ``apt`` command. Importing ``apt`` does not import torch.
"""

from __future__ import annotations

from apt.plugins.base import PLUGIN_API_VERSION


__all__ = ["PLUGIN_API_VERSION", "__version__"]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version

        try:
            return version("apt-core")
        except PackageNotFoundError:  # running from a source tree that is not installed
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
