"""Reading one class body as Python executes it: the last binding of each name wins.

A binding that depends on running code (``if``, ``+=``, ``:=``, an import ...) is recorded
as unreadable, so that the field it feeds is reported unknown rather than guessed.
"""

from __future__ import annotations

import ast

from apt.plugins._static._records import _UNREADABLE
from apt.plugins._static._records import _Binding
from apt.plugins._static._records import _Body
from apt.plugins._static._records import _Unreadable
from apt.plugins._static._scope import _compound_defs
from apt.plugins._static._scope import _target_names
from apt.plugins._static._scope import _top_level_names
from apt.plugins._static._scope import _walk_same_scope


__all__ = ["_read_body"]


def _read_body(node: ast.ClassDef) -> _Body:
    """Execute a class body symbolically: each name's last binding, or unreadable.

    Plain assignments (also to tuple / list targets unpacked from a literal of the same
    length) and ``def`` bind what they say. Any other binding of a name (a tuple target
    from a non-literal, ``+=``, ``:=``, a name bound inside ``if`` / ``try`` / ``for`` /
    ``with`` / ``match``, an import) is unreadable: the field is unknown, never Plugin's
    default. ``del name`` removes the binding (the base class's value shows through).
    """
    body = _Body(bindings={})
    bindings = body.bindings
    for stmt in node.body:
        if isinstance(stmt, ast.Assign):
            _walrus(stmt.value, bindings)
            value = _class_level_value(stmt.value, bindings)
            for target in stmt.targets:
                _bind_target(target, value, bindings)
        elif isinstance(stmt, ast.AnnAssign):
            if stmt.value is not None:  # `name: str` alone binds nothing
                _walrus(stmt.value, bindings)
                _bind_target(stmt.target, _class_level_value(stmt.value, bindings), bindings)
        elif isinstance(stmt, ast.AugAssign):
            _walrus(stmt.value, bindings)
            for name in _target_names(stmt.target):
                bindings[name] = _UNREADABLE
        elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            bindings[stmt.name] = stmt
        elif isinstance(stmt, ast.Delete):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    bindings.pop(target.id, None)
        elif isinstance(stmt, ast.Expr):
            _walrus(stmt.value, bindings)
        else:
            # class, import, if / for / while / try / with / match ...: whatever they bind
            # depends on running them
            if not isinstance(stmt, ast.ClassDef):
                for child in _compound_defs(stmt):
                    if child.decorator_list or child.name.startswith("on_"):
                        body.hooks_unknown = True
            for name in _top_level_names(stmt):
                bindings[name] = _UNREADABLE
    return body


def _class_level_value(value: ast.expr, bindings: dict[str, _Binding]) -> ast.expr | _Unreadable:
    """A value expression, with a bare name of the class body replaced by what it is bound to."""
    if isinstance(value, ast.Name) and value.id in bindings:
        bound = bindings[value.id]
        return bound if isinstance(bound, ast.expr) else _UNREADABLE
    return value


def _bind_target(target: ast.expr, value: ast.expr | _Unreadable, bindings: dict[str, _Binding]) -> None:
    if isinstance(target, ast.Name):
        bindings[target.id] = value
    elif isinstance(target, ast.Tuple | ast.List):
        if (
            isinstance(value, ast.Tuple | ast.List)
            and len(value.elts) == len(target.elts)
            and not any(isinstance(e, ast.Starred) for e in [*target.elts, *value.elts])
        ):
            for sub_target, sub_value in zip(target.elts, value.elts, strict=True):
                _bind_target(sub_target, sub_value, bindings)
        else:
            for name in _target_names(target):
                bindings[name] = _UNREADABLE
    elif isinstance(target, ast.Starred):
        for name in _target_names(target):
            bindings[name] = _UNREADABLE
    # an attribute or subscript target binds no name of the class


def _walrus(expr: ast.expr, bindings: dict[str, _Binding]) -> None:
    """``(name := value)`` in a class-level expression binds ``name`` in the class."""
    for sub in _walk_same_scope(expr):
        if isinstance(sub, ast.NamedExpr):
            bindings[sub.target.id] = _UNREADABLE
