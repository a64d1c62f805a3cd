"""The metadata fields of a class, as the kernel would see them, read along its MRO.

A field's value is the literal its winning binding holds (or a module-level constant it
names); ``get_name()`` / ``get_version()`` overrides win over the ``name`` / ``version``
attributes, as they do for the kernel. A value that is computed, of the wrong type, or
found beyond what the unresolved bases may hide is unreadable.
"""

from __future__ import annotations

import ast
from typing import Any

from apt.plugins._static._hierarchy import _Hierarchy
from apt.plugins._static._records import METADATA_FIELDS
from apt.plugins._static._records import _Binding
from apt.plugins._static._records import _Class
from apt.plugins._static._records import _copy
from apt.plugins._static._records import _Node


__all__ = ["_read_field"]

# The getter the kernel calls for a field, which a subclass may override.
_GETTERS = {"name": "get_name", "version": "get_version"}


def _read_field(hierarchy: _Hierarchy, mro: list[_Node], certain: int, attr: str) -> tuple[bool, Any]:
    """(readable?, value) of one metadata field, as the kernel would see it."""
    getter = _GETTERS.get(attr)
    if getter is not None:
        # An unresolved base is assumed not to override get_name()/get_version(): the
        # class's own attribute is the evidence then (and a rare override would show in --check).
        hit = hierarchy.lookup(mro, getter, skip_unresolved=True)
        if hit is not None and hit.node.kind == "class":
            assert hit.node.cls is not None
            return _getter_value(hierarchy, mro, certain, attr, hit.node.cls, hit.binding)
    return _attribute_value(hierarchy, mro, certain, attr)


def _attribute_value(hierarchy: _Hierarchy, mro: list[_Node], certain: int, attr: str) -> tuple[bool, Any]:
    hit = hierarchy.lookup(mro, attr)
    if hit is None:  # not a Plugin subclass at all: the defaults stand
        return True, _copy(METADATA_FIELDS[attr])
    if hit.index >= certain or hit.node.kind == "unresolved":
        return False, None
    if hit.node.kind == "plugin":
        return True, _copy(METADATA_FIELDS[attr])
    if not isinstance(hit.binding, ast.expr):  # a method, or bound where it cannot be read
        return False, None
    assert hit.node.cls is not None
    ok, literal = hierarchy.resolver.literal(hit.node.cls.owner, hit.binding, 0)
    return (True, literal) if ok and _valid(attr, literal) else (False, None)


def _getter_value(
    hierarchy: _Hierarchy, mro: list[_Node], certain: int, attr: str, owner: _Class, binding: _Binding | None
) -> tuple[bool, Any]:
    # The original's style: `def get_name(self): return "my_plugin"`.
    if not isinstance(binding, ast.FunctionDef):  # a coroutine, a value, unreadable: not a readable name
        return False, None
    returned = _single_return(binding)
    if returned is None:
        return False, None
    if _is_own_attribute(returned, attr):  # `return self.version` / `type(self).version`
        return _attribute_value(hierarchy, mro, certain, attr)
    ok, literal = hierarchy.resolver.literal(owner.owner, returned, 0)
    return (True, literal) if ok and isinstance(literal, str) else (False, None)


def _valid(attr: str, value: Any) -> bool:
    """Whether a literal has the type the Plugin contract gives the attribute."""
    if attr in ("requires", "conflicts", "providers"):
        return isinstance(value, tuple | list) and all(isinstance(v, str) for v in value)
    if attr == "priority":
        return isinstance(value, int) and not isinstance(value, bool)
    if attr == "critical":
        return value is None or isinstance(value, bool)
    if attr == "name":
        return value is None or isinstance(value, str)
    return isinstance(value, str)


def _single_return(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.expr | None:
    body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]  # docstring
    if len(body) == 1 and isinstance(body[0], ast.Return):
        return body[0].value
    return None


def _is_own_attribute(expr: ast.expr, attr: str) -> bool:
    """``self.<attr>``, ``type(self).<attr>`` or ``self.__class__.<attr>``."""
    if not (isinstance(expr, ast.Attribute) and expr.attr == attr):
        return False
    owner = expr.value
    if isinstance(owner, ast.Name):
        return owner.id == "self"
    if isinstance(owner, ast.Attribute):
        return owner.attr == "__class__" and isinstance(owner.value, ast.Name) and owner.value.id == "self"
    return (
        isinstance(owner, ast.Call)
        and isinstance(owner.func, ast.Name)
        and owner.func.id == "type"
        and len(owner.args) == 1
        and isinstance(owner.args[0], ast.Name)
        and owner.args[0].id == "self"
    )
