"""Read-only configs: what plugins see of their config section, and of the run config.

A pydantic model comes back as an instance of a subclass of its own class (``isinstance``,
``model_dump`` and field access work as before) whose ``__setattr__`` raises
:class:`~apt.errors.ReadOnlyConfigError` naming the plugin and the key; nested models are
frozen too, and a mapping becomes a read-only ``dict``. Nothing is
validated again: the manager validated the section once.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any
from typing import NoReturn

from pydantic import BaseModel

from apt.errors import ReadOnlyConfigError


__all__ = ["ReadOnlyDict", "read_only"]


def read_only(config: Any, plugin: str | None = None, path: str = "") -> Any:
    """A copy of ``config`` that refuses writes; ``plugin`` owns it (None: the run config), ``path`` is its key."""
    if isinstance(config, BaseModel) and not getattr(config, "_apt_read_only", False):
        values = {k: read_only(v, plugin, _join(path, k)) for k, v in config}
        return _frozen_class(type(config), plugin, path).model_construct(set(config.model_fields_set), **values)
    if isinstance(config, Mapping) and not isinstance(config, ReadOnlyDict):
        return ReadOnlyDict({k: read_only(v, plugin, _join(path, str(k))) for k, v in config.items()}, plugin, path)
    return config


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _refuse(plugin: str | None, key: str) -> NoReturn:
    whose = f"plugin {plugin!r}: its config" if plugin else "the run config"
    raise ReadOnlyConfigError(
        f"{whose} is read-only: cannot set {key!r} (plugins receive the validated config; change the value in "
        "the config file, or keep plugin state in an attribute of the plugin)",
        key=key,
        plugin=plugin,
    )


@functools.cache
def _frozen_class(cls: type[BaseModel], plugin: str | None, path: str) -> type[BaseModel]:
    """``cls`` with writes refused (one class per model, owner and key path, kept for reuse)."""

    def refuse(self: BaseModel, name: str, *value: Any) -> NoReturn:
        _refuse(plugin, _join(path, name))

    def reduce(self: BaseModel) -> tuple[Any, ...]:
        return (cls.model_validate, (self.model_dump(),))  # a pickled copy is the plain model

    namespace = {"__setattr__": refuse, "__delattr__": refuse, "__reduce__": reduce, "_apt_read_only": True}
    return type(cls.__name__, (cls,), {**namespace, "__module__": cls.__module__, "__qualname__": cls.__qualname__})


class ReadOnlyDict(dict[Any, Any]):
    """A ``dict`` whose writes raise :class:`~apt.errors.ReadOnlyConfigError` naming the key."""

    def __init__(self, data: dict[Any, Any], plugin: str | None, path: str) -> None:
        super().__init__(data)
        self._where = (plugin, path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))  # copies and pickles are plain dicts

    def _refuse(self, key: Any = None) -> NoReturn:
        _refuse(self._where[0], _join(self._where[1], str(key)) if key is not None else self._where[1])

    def __setitem__(self, key: Any, value: Any) -> None:
        self._refuse(key)

    def __delitem__(self, key: Any) -> None:
        self._refuse(key)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._refuse(key)

    def pop(self, key: Any, *default: Any) -> Any:
        self._refuse(key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._refuse()

    def clear(self) -> None:
        self._refuse()
