"""What a statement binds in the scope it runs in, read from its syntax tree.

Module-level and class-level reading both need to know which names a statement binds
without descending into the scopes it opens (functions, classes, lambdas and
comprehensions have scopes of their own).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator


__all__ = ["_compound_defs", "_same_scope_statements", "_target_names", "_top_level_names", "_walk_same_scope"]


def _walk_same_scope(node: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk`` that does not descend into lambdas and comprehensions (scopes of their own)."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        for child in ast.iter_child_nodes(current):
            if not isinstance(child, ast.Lambda | ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
                stack.append(child)


def _target_names(target: ast.AST) -> list[str]:
    return [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]


def _top_level_names(stmt: ast.stmt) -> list[str]:
    """Every name a statement binds in the scope it runs in (not in nested functions or classes)."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(node.name)  # its body runs in a scope of its own
            return
        if isinstance(node, ast.Lambda | ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name != "*":
                    names.append(alias.asname or alias.name.split(".")[0])
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names.append(node.id)
        elif isinstance(node, ast.NamedExpr):
            names.append(node.target.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.append(node.name)
        elif isinstance(node, ast.MatchAs | ast.MatchStar) and node.name:
            names.append(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.append(node.rest)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(stmt)
    return names


def _same_scope_statements(stmt: ast.stmt) -> Iterator[ast.stmt]:
    """``stmt`` and the statements nested in it that run in the same scope (not in functions or classes)."""
    yield stmt
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return
    for child in ast.iter_child_nodes(stmt):
        if isinstance(child, ast.stmt):
            yield from _same_scope_statements(child)
        elif isinstance(child, ast.ExceptHandler | ast.match_case):
            for sub in child.body:
                yield from _same_scope_statements(sub)


def _compound_defs(stmt: ast.stmt) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Functions defined inside a compound statement (not inside other functions or classes)."""
    stack: list[ast.AST] = list(ast.iter_child_nodes(stmt))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node
        elif not isinstance(node, ast.ClassDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))
