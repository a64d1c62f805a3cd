"""Read a plugin's metadata from its source code without importing it.

``apt plugins list`` must not run plugin code (an installed distribution's import can do
anything, and it would drag torch in). A plugin's metadata is plain class attributes
(see :class:`~apt.plugins.Plugin`), so it can be read from the syntax tree instead:

1. the entry point value ``pkg.mod:Class`` names a module; only the top-level package is
   located with :func:`importlib.util.find_spec` (which executes nothing for a top-level
   name), and the submodules are found by walking ``submodule_search_locations`` by hand;
2. the module is parsed with :mod:`ast`; the class is found there, following
   ``from .x import Class`` re-exports and ``Alias = Class`` assignments (for a value
   without ``:Class``, the class is chosen as :func:`~apt.plugins._discovery.plugin_class_from`
   chooses it at runtime: the one concrete Plugin subclass the module holds);
3. the class bodies are read as Python executes them (the last binding of a name wins;
   ``a, b = 1, 2`` binds both), and attributes are looked up along the class's method
   resolution order (C3, as Python computes it), with :class:`~apt.plugins.Plugin`'s
   defaults at Plugin's place in it. ``get_name()`` / ``get_version()`` overrides win over
   the ``name`` / ``version`` attributes, as they do for the kernel. Handlers are methods
   named after an event and methods decorated with ``@hook("event")``.

Whatever cannot be read this way (a computed value, a name bound under an ``if``, a base
class from an extension module) is reported in :attr:`StaticPluginInfo.unknown` instead
of guessed.

The implementation, one concept per module: ``_records`` (the result and the records passed
around), ``_scope`` (what a statement binds in its scope), ``_modules`` (finding and parsing
modules, their imports), ``_names`` (resolving names across modules), ``_body`` (reading one
class body), ``_hierarchy`` (bases, C3 MRO, abstract classes), ``_fields`` and ``_hooks``
(metadata fields and handlers along the MRO), ``_select`` (the class an entry point names)
and ``_read`` (:func:`read_static_metadata`, which ties them together).
"""

from __future__ import annotations

from apt.plugins._static._read import read_static_metadata
from apt.plugins._static._records import METADATA_FIELDS
from apt.plugins._static._records import StaticPluginInfo


__all__ = ["METADATA_FIELDS", "StaticPluginInfo", "read_static_metadata"]
