"""The class hierarchy of a class read from source: its bases, its MRO and what it inherits.

Attributes are looked up along the method resolution order (C3, as Python computes it),
with :class:`~apt.plugins.Plugin`'s defaults at Plugin's place in it. A base class that
cannot be read (from an extension module, computed) stays in the MRO as an ``unresolved``
node: anything may be defined there, so a lookup that reaches it is not trusted.
"""

from __future__ import annotations

import ast
from typing import Any
from typing import Literal

from apt.plugins._static._body import _read_body
from apt.plugins._static._modules import _Module
from apt.plugins._static._names import _Resolver
from apt.plugins._static._records import _MAX_DEPTH
from apt.plugins._static._records import _PLUGIN
from apt.plugins._static._records import _PLUGIN_BINDS
from apt.plugins._static._records import _Binding
from apt.plugins._static._records import _Body
from apt.plugins._static._records import _Class
from apt.plugins._static._records import _Hit
from apt.plugins._static._records import _Node
from apt.plugins._static._records import _Resolved


__all__ = ["_Hierarchy"]

# Base classes known to define nothing read here (they carry no metadata and no handlers).
_OPAQUE_BASES = frozenset({"abc.ABC", "typing.Generic", "typing_extensions.Generic"})
_ABC_META = frozenset({"abc.ABCMeta"})
_ABSTRACT_DECORATORS = frozenset(
    {"abc.abstractmethod", "abc.abstractproperty", "abc.abstractclassmethod", "abc.abstractstaticmethod"}
)
# The last parts of those names: a re-export is followed only for a name ending in one of them.
_OPAQUE_NAMES = frozenset(d.rpartition(".")[2] for d in _OPAQUE_BASES)
_ABC_META_NAMES = frozenset({"ABCMeta"})
_ABSTRACT_NAMES = frozenset(d.rpartition(".")[2] for d in _ABSTRACT_DECORATORS)
_PLUGIN_NAMES = frozenset({"Plugin"})


class _Hierarchy:
    """Class bodies, bases, MROs and abstract methods of classes read from source (all cached).

    :param resolver: resolves base-class expressions and decorators to their definitions.
    """

    def __init__(self, resolver: _Resolver) -> None:
        self.resolver = resolver
        self._bodies: dict[int, _Body] = {}
        self._nodes: dict[Any, _Node] = {}
        self._bases: dict[int, list[_Node]] = {}
        self._mros: dict[int, list[_Node] | None] = {}
        self._abstracts: dict[int, set[str] | None] = {}

    # --- nodes and bases --------------------------------------------------------------

    def body(self, cls: _Class) -> _Body:
        """The bindings executing ``cls``'s body would leave (cached)."""
        key = id(cls.node)
        if key not in self._bodies:
            self._bodies[key] = _read_body(cls.node)
        return self._bodies[key]

    def node_for(self, cls: _Class) -> _Node:
        """The MRO node of a class read from source (apt's own ``Plugin`` is the ``plugin`` node)."""
        if cls.module == "apt.plugins.base" and cls.node.name == "Plugin":
            return _PLUGIN
        key = ("class", id(cls.node))
        if key not in self._nodes:
            abc_meta = any(
                k.arg == "metaclass" and self.resolver.dotted(cls.owner, k.value, _ABC_META_NAMES) in _ABC_META
                for k in cls.node.keywords
            )
            self._nodes[key] = _Node("class", cls.node.name, cls=cls, abc_meta=abc_meta)
        return self._nodes[key]

    def bases(self, node: _Node) -> list[_Node]:
        """The direct bases of a node, each resolved to a node (``object`` left out)."""
        if node.cls is None:
            return []
        key = id(node.cls.node)
        if key not in self._bases:
            self._bases[key] = [b for b in (self._base_node(node.cls, e) for e in node.cls.node.bases) if b is not None]
        return self._bases[key]

    def _base_node(self, cls: _Class, base: ast.expr) -> _Node | None:
        mod = cls.owner
        if _is_plugin_root(mod, base, self.resolver):
            return _PLUGIN
        expr = base.value if isinstance(base, ast.Subscript) else base  # Generic[T], Base[int]
        dotted = self.resolver.dotted(mod, expr, _OPAQUE_NAMES)
        if dotted is not None and dotted in _OPAQUE_BASES:
            return self._shared_node("opaque", dotted)
        if (
            isinstance(expr, ast.Name)
            and expr.id == "object"
            and dotted is None
            and self.resolver.resolve(mod, "object", 0) is None
        ):
            return None  # every MRO ends in object, which defines nothing read here
        resolved: _Resolved = None
        if isinstance(expr, ast.Name):
            resolved = self.resolver.resolve(mod, expr.id, 1)
        elif isinstance(expr, ast.Attribute):
            resolved = self.resolver.resolve_attribute(mod, expr, 1)
        if isinstance(resolved, _Class):
            return self.node_for(resolved)
        label = dotted or ast.unparse(expr)
        return self._shared_node("unresolved", dotted or f"{mod.name}:{label}", label=label)

    def _shared_node(self, kind: Literal["opaque", "unresolved"], key: str, label: str | None = None) -> _Node:
        if (kind, key) not in self._nodes:
            dotted = key if ":" not in key else None
            self._nodes[(kind, key)] = _Node(kind, label or key, dotted=dotted)
        return self._nodes[(kind, key)]

    # --- the MRO ----------------------------------------------------------------------

    def mro(self, node: _Node, depth: int = 0) -> list[_Node] | None:
        """The C3 linearisation of ``node`` (as ``type.mro()``), or None if Python would refuse it.

        Nodes that are not classes read from source have no known bases: an unresolved base
        appears once, at the place C3 gives it; what it may hide is judged by :meth:`certain_prefix`.
        """
        if node.cls is None:
            return [node]
        key = id(node.cls.node)
        if key in self._mros:
            return self._mros[key]
        if depth > _MAX_DEPTH:
            return None
        self._mros[key] = None  # a class that is its own base (a cycle) has no MRO
        bases = self.bases(node)
        linearised = [self.mro(b, depth + 1) for b in bases]
        result: list[_Node] | None = None
        if all(lin is not None for lin in linearised):
            merged = _c3_merge([*(lin for lin in linearised if lin is not None), list(bases)])
            result = [node, *merged] if merged is not None else None
        self._mros[key] = result
        return result

    def certain_prefix(self, mro: list[_Node]) -> int:
        """How many leading MRO entries keep their place whatever the unresolved bases hide.

        An unresolved base may have bases of its own, which C3 would interleave with the
        known classes. A class certainly precedes it only when Python's rules force that
        (it is a subclass of it, or listed before it in some base list, transitively). The
        entries before the first one not forced so are certain; a lookup that ends beyond
        them is not trusted.
        """
        unresolved = [n for n in mro if n.kind == "unresolved"]
        if not unresolved:
            return len(mro)
        edges: dict[int, set[int]] = {id(n): set() for n in mro}
        for n in mro:
            bases = self.bases(n)
            for b in bases:
                edges[id(n)].add(id(b))
            for earlier, later in zip(bases, bases[1:], strict=False):
                edges[id(earlier)].add(id(later))

        def reaches(start: _Node, goal: _Node) -> bool:
            seen, stack = {id(start)}, [id(start)]
            while stack:
                for nxt in edges.get(stack.pop(), ()):
                    if nxt == id(goal):
                        return True
                    if nxt not in seen:
                        seen.add(nxt)
                        stack.append(nxt)
            return False

        count = 0
        for n in mro:
            if n.kind == "unresolved" or not all(reaches(n, u) for u in unresolved):
                break
            count += 1
        return count

    def lookup(self, mro: list[_Node], name: str, *, skip_unresolved: bool = False) -> _Hit | None:
        """The first MRO entry that binds ``name`` (an unresolved base might bind anything)."""
        for i, node in enumerate(mro):
            if node.kind == "plugin" and name in _PLUGIN_BINDS:
                return _Hit(i, node, None)
            if node.kind == "unresolved" and not skip_unresolved:
                return _Hit(i, node, None)
            if node.cls is not None:
                binding = self.body(node.cls).bindings.get(name)
                if binding is not None:
                    return _Hit(i, node, binding)
        return None

    # --- abstract classes -------------------------------------------------------------

    def abstract_names(self, node: _Node) -> set[str]:
        """The abstract methods ABCMeta leaves ``node`` with (empty when it is concrete or not an ABC)."""
        return self._abstracts_of(node) or set()

    def _abstracts_of(self, node: _Node) -> set[str] | None:
        """``__abstractmethods__`` as ABCMeta computes it; None for a class ABCMeta does not make."""
        if node.kind == "opaque":
            return set() if node.dotted == "abc.ABC" else None
        if node.cls is None:
            return None
        key = id(node.cls.node)
        if key in self._abstracts:
            return self._abstracts[key]
        self._abstracts[key] = None  # guards a cycle
        bases = self.bases(node)
        base_abstracts = [self._abstracts_of(b) for b in bases]
        if not node.abc_meta and all(a is None for a in base_abstracts):
            return None
        mro = self.mro(node) or [node]
        body = self.body(node.cls)
        # what the class body binds to an abstract method, plus each inherited abstract name
        # that still resolves to an abstract method
        result = {n for n, b in body.bindings.items() if self._is_abstract_method(node.cls, b)}
        for names in base_abstracts:
            for name in names or ():
                hit = self.lookup(mro, name, skip_unresolved=True)
                if hit is not None and hit.node.cls is not None and self._is_abstract_method(hit.node.cls, hit.binding):
                    result.add(name)
        self._abstracts[key] = result
        return result

    def _is_abstract_method(self, cls: _Class, binding: _Binding | None) -> bool:
        if not isinstance(binding, ast.FunctionDef | ast.AsyncFunctionDef):
            return False
        return any(
            self.resolver.dotted(cls.owner, d, _ABSTRACT_NAMES) in _ABSTRACT_DECORATORS for d in binding.decorator_list
        )


def _c3_merge(sequences: list[list[_Node]]) -> list[_Node] | None:
    """C3's merge step: None when no consistent order exists (Python raises TypeError then)."""
    seqs = [list(s) for s in sequences if s]
    out: list[_Node] = []
    while seqs:
        for seq in seqs:
            head = seq[0]
            if not any(head in other[1:] for other in seqs):
                break
        else:
            return None
        out.append(head)
        seqs = [rest for rest in ((s[1:] if s[0] is head else s) for s in seqs) if rest]
    return out


def _is_plugin_root(mod: _Module, base: ast.expr, resolver: _Resolver) -> bool:
    """Whether a base-class expression is APT's own ``Plugin`` (the end of the chain)."""
    if not isinstance(base, ast.Name | ast.Attribute):
        return False
    dotted = resolver.dotted(mod, base, _PLUGIN_NAMES)
    # apt.plugins.Plugin, apt.plugins.base.Plugin, plugins.Plugin after `from apt import plugins`
    return dotted is not None and dotted.split(".")[0] == "apt" and dotted.endswith(".Plugin")
