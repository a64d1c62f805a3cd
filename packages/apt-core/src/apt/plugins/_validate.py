"""Checks of a plugin class against the plugin contract, before it is instantiated."""

from __future__ import annotations

from packaging.requirements import InvalidRequirement
from packaging.requirements import Requirement
from packaging.specifiers import InvalidSpecifier
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion
from packaging.version import Version

from apt.core.config import did_you_mean
from apt.errors import PluginValidationError
from apt.plugins.base import PLUGIN_API_VERSION
from apt.plugins.base import Plugin
from apt.plugins.hookspecs import ALIASES
from apt.plugins.hookspecs import HOOK_NAMES


__all__ = ["validate_plugin_class"]

# Plugin methods that look like hooks but are plugin-level callbacks.
NOT_HOOKS = frozenset({"on_enable", "on_disable"})


def validate_plugin_class(name: str, cls: type[Plugin], where: str = "") -> None:
    """Check a plugin class against the contract: API version, version, hook names, requires."""
    try:
        spec = SpecifierSet(cls.api_version)
    except InvalidSpecifier:
        raise PluginValidationError(
            f"plugin {name!r}{where}: api_version {cls.api_version!r} is not a version specifier (write e.g. '>=1,<2')",
            plugin=name,
        ) from None
    if not spec.contains(PLUGIN_API_VERSION, prereleases=True):
        raise PluginValidationError(
            f"plugin {name!r}{where} supports plugin API {cls.api_version} but apt-core provides plugin API "
            f"{PLUGIN_API_VERSION}; install a version of the plugin made for this apt-core, or an apt-core "
            "that matches the plugin",
            plugin=name,
        )
    try:
        Version(cls.version)
    except InvalidVersion:
        raise PluginValidationError(
            f"plugin {name!r}{where}: version {cls.version!r} is not a PEP 440 version", plugin=name
        ) from None
    for attr in sorted(dir(cls)):
        if not attr.startswith("on_") or attr in HOOK_NAMES or attr in ALIASES or attr in NOT_HOOKS:
            continue
        if callable(getattr(cls, attr, None)):
            hint = did_you_mean(attr, [*HOOK_NAMES, *ALIASES])
            raise PluginValidationError(
                f"plugin {name!r}{where}: method {cls.__qualname__}.{attr} looks like a hook but matches "
                f"none{hint}; rename it, or give helper methods a name that does not start with 'on_'",
                plugin=name,
            )
    for req in [*cls.requires, *cls.conflicts]:
        try:
            Requirement(req)
        except InvalidRequirement:
            raise PluginValidationError(
                f"plugin {name!r}{where}: {req!r} in requires/conflicts is not a plugin name with an optional "
                "version specifier (write e.g. 'moe>=1.0')",
                plugin=name,
            ) from None
