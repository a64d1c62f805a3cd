"""``apt config show``: the resolved configuration, and every key with its type, default and meaning.

``apt config show`` prints, as YAML, the configuration ``apt train`` would use (the
defaults, a ``--config`` file and ``--set`` overrides) or, given a run folder, the one that
run recorded. ``--plugins`` fills in the whole section of every plugin that loads, defaults
included. ``--schema`` lists every key instead: core sections and the sections of the
plugins that load, each with its type, default and description.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from apt.errors import UsageError


__all__ = ["register", "schema_rows"]


def register(subparsers: Any) -> None:
    """Add the ``config`` command (``config show``)."""
    p = subparsers.add_parser("config", help="show the resolved configuration or every config key")
    sub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", parser_class=type(p))
    show = sub.add_parser(
        "show",
        help="print the resolved configuration (--schema: every key with type, default and description)",
        description="Print the configuration of RUN_DIR, or what apt train would use with these --config/--set.",
    )
    show.add_argument("run_dir", nargs="?", type=Path, metavar="RUN_DIR", help="a run folder (its config.yaml)")
    show.add_argument("--config", type=Path, metavar="FILE", help="YAML configuration file")
    show.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one value"
    )
    show.add_argument("--plugins", action="store_true", help="include every loaded plugin's whole section")
    show.add_argument("--schema", action="store_true", help="list every key: type, default, description")
    show.add_argument("--json", action="store_true", help="print JSON instead of YAML / a table")
    show.set_defaults(func=run_show)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _model_rows(model: type[BaseModel], prefix: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += _model_rows(annotation, key)  # a nested section
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        rows.append(
            {"key": key, "type": _type_name(annotation), "default": default, "description": field.description or ""}
        )
    return rows


def schema_rows(plugin_models: dict[str, type[BaseModel] | None]) -> list[dict[str, Any]]:
    """Every config key: core sections, then each plugin's section (``{name: config_model}``)."""
    from apt.core import APTConfig

    rows = _model_rows(APTConfig, "")
    for name, model in sorted(plugin_models.items()):
        if model is None:
            rows.append({"key": name, "type": "mapping", "default": {}, "description": "(no declared options)"})
        else:
            rows += _model_rows(model, name)
    return rows


def run_show(args: argparse.Namespace) -> int:
    import yaml

    from apt.core import APTConfig
    from apt.plugins import PluginManager

    if args.run_dir is not None:
        path = args.run_dir / "config.yaml"
        if not path.is_file():
            raise UsageError(f"{str(args.run_dir)!r} is not a run folder: it has no config.yaml")
        config = APTConfig.from_yaml(path)
    else:
        config = APTConfig.from_yaml(args.config) if args.config is not None else APTConfig()
    config = config.with_overrides(list(args.overrides))
    pm = PluginManager()
    loaded = pm.load_from_config(config)
    if args.schema:
        rows = schema_rows({p.get_name(): type(p).config_model for p in loaded})
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            width = max(len(r["key"]) for r in rows)
            for r in rows:
                default = json.dumps(r["default"])
                print(f"{r['key']:<{width}}  {r['type']}  (default {default})  {r['description']}".rstrip())
        return 0
    data = config.to_dict()
    data["training"].pop("resume", None)
    if args.plugins:
        for plugin in loaded:
            cfg = plugin.config
            data[plugin.get_name()] = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else dict(cfg or {})
    print(
        json.dumps(data, indent=1) if args.json else yaml.safe_dump(data, sort_keys=False),
        end="\n" if args.json else "",
    )
    return 0
