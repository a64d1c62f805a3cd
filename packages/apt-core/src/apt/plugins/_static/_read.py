"""``read_static_metadata``: find the class an entry point names, then read it along its MRO."""

from __future__ import annotations

from apt.plugins._static._fields import _read_field
from apt.plugins._static._hierarchy import _Hierarchy
from apt.plugins._static._hooks import _read_hooks
from apt.plugins._static._modules import _top_level_missing
from apt.plugins._static._names import _Resolver
from apt.plugins._static._records import METADATA_FIELDS
from apt.plugins._static._records import StaticPluginInfo
from apt.plugins._static._records import _Class
from apt.plugins._static._records import _NotFound
from apt.plugins._static._select import _find_class


__all__ = ["read_static_metadata"]


def read_static_metadata(target: str) -> StaticPluginInfo:
    """Read the metadata of the plugin class named by an entry point value, without importing it.

    :param target: ``"package.module:ClassName"``, or ``"package.module"`` when the module
        holds exactly one concrete Plugin subclass (chosen as the runtime chooses it; when
        reading the source cannot tell which class that is, nothing is guessed: ``error``).
    :returns: a :class:`StaticPluginInfo`; never raises for a missing or unparsable module,
        which is reported in :attr:`StaticPluginInfo.error` instead.
    """
    info = StaticPluginInfo(target=target)
    module_name, _, attr = target.partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if not module_name:
        info.error = f"entry point value {target!r} names no module; expected 'package.module:ClassName'"
        info.unknown = [*METADATA_FIELDS, "hooks"]
        return info
    # One resolver and hierarchy per call: each module is parsed, and each class read, once.
    hierarchy = _Hierarchy(_Resolver())
    try:
        found = _find_class(hierarchy, module_name, attr or None)
    except _NotFound as exc:
        info.error = str(exc)
        info.unknown = [*METADATA_FIELDS, "hooks"]
        info.missing = _top_level_missing(module_name)
        return info
    info.module, info.qualname, info.file = found.module, found.node.name, found.file
    _read_class(hierarchy, found, info)
    return info


def _read_class(hierarchy: _Hierarchy, cls: _Class, info: StaticPluginInfo) -> None:
    """Fill ``info`` with what ``cls`` (with its bases) gives each field, in MRO order."""
    mro = hierarchy.mro(hierarchy.node_for(cls))
    if mro is None:
        # Python would refuse the class (inconsistent bases, a cycle): nothing can be trusted.
        info.unknown = [*METADATA_FIELDS, "hooks"]
        return
    certain = hierarchy.certain_prefix(mro)
    unknown: set[str] = set()
    for attr in METADATA_FIELDS:
        ok, value = _read_field(hierarchy, mro, certain, attr)
        if ok:
            info.metadata[attr] = list(value) if isinstance(value, tuple | list) else value
        else:
            unknown.add(attr)
    hooks, suspicious, hooks_unknown = _read_hooks(hierarchy, mro)
    if hooks_unknown:
        unknown.add("hooks")
    info.hooks = sorted(hooks)
    info.suspicious = sorted(suspicious)
    info.unknown = [f for f in [*METADATA_FIELDS, "hooks"] if f in unknown]
