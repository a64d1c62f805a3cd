"""Fake entry points: test plugin discovery without installing anything.

>>> with fake_entry_points(FakeEntryPoint("demo", DemoPlugin, distribution="apt-plugin-demo")):
...     PluginManager().discover()
['demo']
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import Iterator
from typing import Any

from apt.plugins._discovery import ENTRY_POINT_GROUP


__all__ = ["FakeEntryPoint", "fake_entry_points"]


class _FakeDist:
    def __init__(self, name: str, version: str, summary: str | None) -> None:
        self.metadata = {"Name": name} if summary is None else {"Name": name, "Summary": summary}
        self.version = version


class FakeEntryPoint:
    """Stands in for an ``importlib.metadata.EntryPoint`` of the ``apt.plugins`` group.

    :param target: what ``load()`` returns (a Plugin class or module), or an exception
        instance that ``load()`` raises (to test a plugin whose import fails); None:
        ``load()`` imports ``value`` (``module`` or ``module:Class``) as a real entry
        point does, so that a test can see whether plugin code was imported.
    :param summary: the distribution's ``Summary`` metadata (shown by ``apt plugins list``).
    """

    def __init__(
        self,
        name: str,
        target: Any,
        *,
        distribution: str | None = None,
        version: str = "1.0.0",
        group: str = ENTRY_POINT_GROUP,
        value: str | None = None,
        summary: str | None = None,
    ) -> None:
        self.name = name
        self.group = group
        self.target = target
        self.value = value or f"fake_{name}:{getattr(target, '__name__', 'Plugin')}"
        self.dist = _FakeDist(distribution or f"apt-plugin-{name}", version, summary)
        self.loads = 0

    def load(self) -> Any:
        self.loads += 1
        if isinstance(self.target, BaseException):
            raise self.target
        if self.target is None:
            return importlib.metadata.EntryPoint(self.name, self.value, self.group).load()
        return self.target


@contextlib.contextmanager
def fake_entry_points(*fakes: FakeEntryPoint, keep_installed: bool = False) -> Iterator[list[FakeEntryPoint]]:
    """Make ``importlib.metadata.entry_points`` report ``fakes`` for their groups.

    :param keep_installed: also report the really installed entry points of those groups.
    """
    real = importlib.metadata.entry_points
    groups = {f.group for f in fakes} or {ENTRY_POINT_GROUP}

    def patched(**params: Any) -> Any:
        group = params.get("group")
        if group in groups:
            installed = list(real(**params)) if keep_installed else []
            return [*installed, *(f for f in fakes if f.group == group)]
        return real(**params)

    importlib.metadata.entry_points = patched
    try:
        yield list(fakes)
    finally:
        importlib.metadata.entry_points = real
