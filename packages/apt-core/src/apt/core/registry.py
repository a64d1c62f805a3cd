"""The provider registry: named factories for swappable parts of a model and a run.

A *provider* is a factory registered under a ``kind`` (``attention``, ``ffn`` ...) and a
``name``. The model asks the registry for ``ffn:<model.ffn>``; a plugin makes a new FFN
available by registering it. Core's own providers are registered by ``"module:attr"``
path and imported on first use, so creating a registry imports nothing heavy.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from apt.core.config import did_you_mean
from apt.errors import PluginConflictError
from apt.errors import ProviderError


__all__ = ["CORE_KINDS", "ProviderInfo", "ProviderRegistry"]

log = logging.getLogger("apt.registry")

#: Kinds that core knows; a plugin may add others by registering under a new kind.
CORE_KINDS: tuple[str, ...] = (
    "attention",
    "ffn",
    "norm",
    "router",
    "align",
    "optimizer",
    "lr_scheduler",
    "plot",  # (records: list[dict], run_dir: Path) -> list[Path]; every one is called by `apt plot`
    "weights",  # (run_dir: Path) -> dict[str, Tensor]; chosen by `apt generate --weights NAME`
    "tokenizer",  # (path, texts, vocab_size) -> apt.data.Tokenizer; chosen by data.tokenizer
)

# Core's built-in providers, imported lazily: (kind, name, "module:attr", default)
_BUILTINS: tuple[tuple[str, str, str, bool], ...] = (
    ("attention", "causal", "apt.model._layers:CausalSelfAttention", True),
    ("ffn", "gelu", "apt.model._layers:MLP", True),
    ("ffn", "swiglu", "apt.model._layers:SwiGLU", False),
    ("norm", "layernorm", "apt.model._layers:LayerNorm", True),
    ("norm", "rmsnorm", "apt.model._layers:RMSNorm", False),
    ("optimizer", "adamw", "apt.train._optim:build_adamw", True),
    ("optimizer", "sgd", "apt.train._optim:build_sgd", False),
    ("lr_scheduler", "cosine", "apt.train._optim:build_cosine", True),
    ("lr_scheduler", "constant", "apt.train._optim:build_constant", False),
    ("tokenizer", "byte", "apt.data._tokenizer:build_byte", True),
    ("tokenizer", "bpe", "apt.data._tokenizer:build_bpe", False),
)


@dataclass
class ProviderInfo:
    """What the registry knows about one provider."""

    kind: str
    name: str
    factory: Callable[..., Any] | str
    is_default: bool = False  # registered with default=True (get_info() says whether it is the default now)
    plugin: str | None = None
    version: str | None = None

    def resolve(self) -> Callable[..., Any]:
        """The factory, importing it first if it was registered by path."""
        if isinstance(self.factory, str):
            module, _, attr = self.factory.partition(":")
            try:
                self.factory = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise ProviderError(
                    f"provider {self.kind}:{self.name} points at {self.factory!r}, which cannot be imported: {exc}"
                ) from exc
        return self.factory  # type: ignore[return-value]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "is_default": self.is_default,
            "plugin": self.plugin,
            "version": self.version,
        }


class ProviderRegistry:
    """Providers by kind and name.

    >>> registry.register('attention', 'flash_v2', FlashAttentionProvider, default=False)
    >>> registry.get('attention', 'flash_v2')     # the factory
    >>> registry.build('ffn', 'gelu', d_model=64, d_ff=256, dropout=0.0, bias=False)

    :param builtins: register core's own providers (the model's defaults).
    """

    def __init__(self, *, builtins: bool = True) -> None:
        # kind -> name -> the entries registered under that name, the one in force last. A
        # plugin's entry stacks on a core (or user) one, which comes back when the plugin goes.
        self._stacks: dict[str, dict[str, list[ProviderInfo]]] = {kind: {} for kind in CORE_KINDS}
        # kind -> the entries registered with default=True, newest last: the default is the
        # name of the newest one still registered (its name may be served by a newer entry)
        self._claims: dict[str, list[ProviderInfo]] = {}
        # Set by the plugin manager while a plugin's setup() runs, to attribute providers.
        self._current_plugin: tuple[str, str] | None = None
        if builtins:
            for kind, name, path, default in _BUILTINS:
                self._add(ProviderInfo(kind, name, path, default, plugin=None, version=None))

    # --- registration -----------------------------------------------------------------

    def register(self, kind: str, name: str, factory: Callable[..., Any] | str, default: bool = False) -> None:
        """Register ``factory`` as provider ``kind:name``; ``default`` makes it the kind's default.

        Registering a name that another plugin already registered is a conflict; the
        same plugin (or core) registering it again replaces it. A plugin may replace a core
        (or user) provider under its name: that one comes back when the plugin goes.
        """
        if not kind or not name:
            raise ProviderError(f"provider kind and name must be non-empty, got {kind!r}:{name!r}")
        if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
            raise ProviderError(
                f"provider {kind}:{name} must be a callable factory (a class or function) or a "
                f"'module:attr' path, got {factory!r}"
            )
        plugin, version = self._current_plugin or (None, None)
        existing = self._entry(kind, name)
        if existing is not None and existing.plugin is not None and existing.plugin != plugin:
            raise PluginConflictError(
                f"provider {kind}:{name} is registered by plugin {existing.plugin!r} and again by "
                f"{plugin or 'user code'!r}; disable one of them (disable_plugins: [...]) or register "
                "under another name",
                plugin=plugin,
                other=existing.plugin,
            )
        self._add(ProviderInfo(kind, name, factory, default, plugin=plugin, version=version))

    def _add(self, info: ProviderInfo) -> None:
        stack = self._stacks.setdefault(info.kind, {}).setdefault(info.name, [])
        claims = self._claims.setdefault(info.kind, [])
        if stack and stack[-1].plugin == info.plugin:
            # the same owner again: the new entry takes the old one's place, default role included
            old = stack.pop()
            claims[:] = [info if c is old else c for c in claims]
        stack.append(info)
        if info.is_default:
            claims.append(info)

    def unregister(self, kind: str, name: str) -> None:
        """Remove ``kind:name`` (every entry under that name). If it was the default, the newest
        earlier default still registered is the default again; without one, the kind has none."""
        self._lookup_exact(kind, name)
        gone = self._stacks[kind].pop(name)
        self._drop_claims(kind, gone)

    def unregister_plugin(self, plugin: str) -> list[str]:
        """Remove every provider a plugin registered; returns their ``kind:name``.

        A core (or user) provider that the plugin replaced under the same name comes back,
        and so does the default the plugin displaced.
        """
        removed = []
        for kind, stacks in self._stacks.items():
            for name, stack in list(stacks.items()):
                gone = [info for info in stack if info.plugin == plugin]
                if not gone:
                    continue
                removed.append(f"{kind}:{name}")
                stack[:] = [info for info in stack if info.plugin != plugin]
                if not stack:
                    del stacks[name]
                self._drop_claims(kind, gone)
        return removed

    def _drop_claims(self, kind: str, gone: list[ProviderInfo]) -> None:
        self._claims[kind] = [c for c in self._claims.get(kind, []) if all(c is not g for g in gone)]

    def _entry(self, kind: str, name: str) -> ProviderInfo | None:
        """The entry in force under ``kind:name``."""
        stack = self._stacks.get(kind, {}).get(name)
        return stack[-1] if stack else None

    # --- lookup -----------------------------------------------------------------------

    def get(self, kind: str, name: str | None = None, config: Any = None) -> Any:
        """The factory registered as ``kind:name`` (the kind's default when ``name`` is None).

        An unknown name falls back to the kind's default with a warning naming both.
        With ``config`` the factory is called: ``factory(**config)`` for a mapping,
        ``factory(config)`` otherwise, and the instance is returned.
        """
        info = self._lookup(kind, name)
        factory = info.resolve()
        if config is None:
            return factory
        if isinstance(config, Mapping):
            return factory(**config)
        return factory(config)

    def build(self, kind: str, name: str | None = None, /, **kwargs: Any) -> Any:
        """Call the factory of ``kind:name`` with keyword arguments; unknown names are errors."""
        info = self._lookup_exact(kind, name) if name is not None else self._lookup(kind, None)
        return info.resolve()(**kwargs)

    def has(self, kind: str, name: str) -> bool:
        return name in self._stacks.get(kind, {})

    def default_name(self, kind: str) -> str | None:
        claims = self._claims.get(kind)
        return claims[-1].name if claims else None

    def get_info(self, kind: str, name: str) -> dict[str, Any]:
        """``{'kind', 'name', 'is_default', 'plugin', 'version'}`` of one provider."""
        return {**self._lookup_exact(kind, name).as_dict(), "is_default": name == self.default_name(kind)}

    def list_providers(self, kind: str | None = None) -> dict[str, list[str]] | list[str]:
        """``{kind: [names]}`` for every kind that has providers, or the names of one kind."""
        if kind is not None:
            self._check_kind(kind)
            return sorted(self._stacks[kind])
        return {k: sorted(v) for k, v in self._stacks.items() if v}

    def kinds(self) -> list[str]:
        return sorted(self._stacks)

    def _check_kind(self, kind: str) -> None:
        if kind not in self._stacks:
            raise ProviderError(
                f"unknown provider kind {kind!r}{did_you_mean(kind, self._stacks)}; "
                f"known kinds: {', '.join(sorted(self._stacks))}"
            )

    def _lookup_exact(self, kind: str, name: str | None) -> ProviderInfo:
        self._check_kind(kind)
        info = self._entry(kind, name or "")
        if info is None:
            names = sorted(self._stacks[kind])
            raise ProviderError(
                f"no provider {kind}:{name}{did_you_mean(name or '', names)}; registered {kind} providers: "
                f"{', '.join(names) or 'none'} (is the plugin that provides it installed and enabled?)"
            )
        return info

    def _lookup(self, kind: str, name: str | None) -> ProviderInfo:
        self._check_kind(kind)
        by_name = self._stacks[kind]
        if name is not None and name in by_name:
            return by_name[name][-1]
        default = self.default_name(kind)
        if default is None:
            return self._lookup_exact(kind, name)
        if name is not None:
            log.warning(
                "no %s provider %r%s; using the default %r instead",
                kind,
                name,
                did_you_mean(name, by_name),
                default,
            )
        return by_name[default][-1]

    def __repr__(self) -> str:
        return f"ProviderRegistry({self.list_providers()})"
