"""``apt plugins list|info|doctor|order``: what is installed, what loads, in which order, and why not.

``list`` and ``info`` read metadata only: the ``apt.plugins`` entry points of installed
distributions and the plugin classes' literal attributes, parsed from source by
:mod:`apt.plugins._static`. They import neither torch nor plugin code, so a broken or
slow plugin cannot break them. ``list --check``, ``doctor`` and ``order`` do import:
they load every plugin through the kernel exactly as a run would.

Status of a plugin:

``available``
    installed, and would load under the current config and environment.
``disabled``
    installed, but turned off: ``APT_DISABLE_PLUGIN_AUTOLOAD``, ``disable_plugins``, or
    not named in a ``plugins:`` list of ``--config``.
``failed: <reason>``
    will not load. Without importing, only problems visible in the metadata are found
    (module missing, plugin API mismatch, misspelled hook, missing requirement); the
    importing commands report import, validation and setup errors too.
``loaded``
    (``--check`` / ``doctor`` / ``order``) imported, validated and set up.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING
from typing import Any

from apt.cli._plugin_status import apply_check
from apt.cli._plugin_status import load_all
from apt.cli._plugin_status import order_report
from apt.cli._plugin_status import static_rows


if TYPE_CHECKING:
    from apt.core import APTConfig


__all__ = ["register"]

# Columns of the `apt plugins list` table: (header, row key).
_COLUMNS = (
    ("NAME", "name"),
    ("VERSION", "version"),
    ("DISTRIBUTION", "distribution"),
    ("STATUS", "status"),
    ("PRIORITY", "priority"),
    ("REQUIRES", "requires"),
    ("CONFLICTS", "conflicts"),
    ("PROVIDERS", "providers"),
    ("HOOKS", "hooks"),
)


def register(subparsers: Any) -> None:
    """Add ``apt plugins`` (and its subcommands) to the ``apt`` parser."""
    parser = subparsers.add_parser(
        "plugins",
        help="list, inspect and check installed plugins",
        description="Inspect installed APT plugins: what is installed, what loads, in which order, and why not.",
    )
    parser.set_defaults(func=lambda args: _usage(parser))
    sub = parser.add_subparsers(dest="plugins_command", metavar="SUBCOMMAND", parser_class=type(parser))

    p = sub.add_parser("list", help="installed plugins and their status (reads metadata; imports no plugin code)")
    _add_config_option(p)
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--check", action="store_true", help="also import and load every plugin (status loaded/failed)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="everything known about one plugin")
    p.add_argument("name", help="the plugin name (as in `apt plugins list`)")
    _add_config_option(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--check", action="store_true", help="also import and load it (status loaded/failed)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("doctor", help="import, validate and set up every installed plugin; exit 1 if any fails")
    _add_config_option(p)
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("order", help="the resolved handler order of each event, and why")
    _add_config_option(p)
    p.add_argument("--event", help="only this event (aliases such as on_epoch_start are accepted)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_order)


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="a run config (YAML): its plugins / disable_plugins and plugin sections apply"
    )


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


# --- metadata-only view --------------------------------------------------------------


def _read_config(path: str | None) -> APTConfig:
    from apt.core import APTConfig

    return APTConfig.from_yaml(path) if path else APTConfig()


# --- importing view (through the kernel) -----------------------------------------------


# --- commands ---------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    """``apt plugins list [--json] [--check] [--config FILE]``."""
    config = _read_config(args.config)
    rows = static_rows(config)
    if args.check:
        apply_check(rows, config)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no APT plugins installed (distributions advertise them with an 'apt.plugins' entry point)")
    else:
        _print_table(rows)
    return 0


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return "-" if value is None or value == "" else str(value)


def _print_table(rows: list[dict[str, Any]]) -> None:
    table = [[h for h, _ in _COLUMNS]]
    table += [[_cell(r[key]) if key != "status" else r["status"].split(":")[0] for _, key in _COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    notes = [f"  {r['name']}: {r['status'].split(':')[0]}: {r['reason']}" for r in rows if r["reason"]]
    notes += [f"  {r['name']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        print()
        print("\n".join(notes))


def cmd_info(args: argparse.Namespace) -> int:
    """``apt plugins info NAME``: metadata, origin, status and (with --check) what loading shows."""
    from apt.core.config import did_you_mean
    from apt.errors import PluginNotFoundError

    config = _read_config(args.config)
    rows = static_rows(config)
    matches = [r for r in rows if r["name"] == args.name]
    if not matches:
        names = [r["name"] for r in rows]
        raise PluginNotFoundError(
            f"no installed plugin is named {args.name!r}{did_you_mean(args.name, names)}; "
            f"installed: {', '.join(names) or 'none'} (see `apt plugins list`)",
            plugin=args.name,
        )
    if args.check:
        apply_check(rows, config)
    if args.json:
        print(json.dumps(matches[0] if len(matches) == 1 else matches, indent=2))
        return 0
    for row in matches:
        unknown = set(row["unknown"])
        for key in (
            "name",
            "version",
            "description",
            "distribution",
            "dist_version",
            "value",
            "file",
            "status",
            "priority",
            "critical",
            "requires",
            "conflicts",
            "providers",
            "hooks",
            "api_version",
        ):
            label = {"value": "entry point", "dist_version": "dist. version", "critical": "critical"}.get(key, key)
            value = row[key]
            if key == "critical" and value is None:
                value = "auto (critical if it defines on_compute_loss, on_model_built, on_backward or on_after_backward)"
            shown = "(not readable without importing; see --check)" if key in unknown else _cell(value)
            print(f"{label + ':':15} {shown}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """``apt plugins doctor``: import, validate and set up every installed plugin; 1 if any fails."""
    config = _read_config(args.config)
    rows = static_rows(config)
    pm, failures = load_all(config, every_installed=True)
    loaded = pm.list_loaded()
    entries: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "python": sys.executable,
        "plugins": entries,
        "failed": sorted(failures),
        "ok": not failures,
    }
    for row in rows:
        name = row["name"]
        entry: dict[str, Any] = {
            "name": name,
            "distribution": row["distribution"],
            "version": row["dist_version"],
            "would_load": row["status"] == "available",
            "selection": row["reason"] if row["status"] == "disabled" else None,
        }
        if name in loaded:
            entry["result"] = "loaded"
        elif name in failures:
            entry["result"] = "failed"
            entry["failure"] = failures[name]
        else:
            entry["result"] = "not loaded"
        entries.append(entry)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_doctor(report, loaded)
    return 0 if report["ok"] else 1


def _print_doctor(report: dict[str, Any], order: list[str]) -> None:
    plugins = report["plugins"]
    if not plugins:
        print("no APT plugins installed: nothing to check")
        return
    for entry in plugins:
        origin = f"{entry['distribution']} {entry['version']}" if entry["distribution"] else "registered"
        mark = {"loaded": "ok  ", "failed": "FAIL"}.get(entry["result"], "--  ")
        print(f"[{mark}] {entry['name']} ({origin})")
        if entry["selection"]:
            print(f"       disabled for runs: {entry['selection']} (checked anyway)")
        failure = entry.get("failure")
        if failure:
            print(f"       stage: {failure['stage']}")
            if failure.get("chain"):
                print(f"       chain: {' -> '.join(failure['chain'])}")
            print(f"       cause: {failure['error']}")
    print()
    if order:
        print(f"load order: {' -> '.join(order)}")
    failed = report["failed"]
    print(
        f"{len(plugins) - len(failed)} of {len(plugins)} plugins OK"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )


def cmd_order(args: argparse.Namespace) -> int:
    """``apt plugins order [--event E]``: the resolved handler order per event (imports plugins)."""
    config = _read_config(args.config)
    pm, failures = load_all(config, every_installed=False)
    report = order_report(pm, args.event)
    if args.json:
        print(json.dumps({"plugins": pm.list_loaded(), "order": report, "failed": failures}, indent=2))
        return 0
    print(f"plugins in resolved order: {' -> '.join(pm.list_loaded()) or '(none)'}")
    for name, failure in sorted(failures.items()):
        print(f"not loaded: {name} ({failure['stage']}): {failure['error']}")
    if not report:
        print("no handlers registered" + (f" for {args.event}" if args.event else ""))
    for event, rows in report.items():
        print(f"\n{event}")
        for i, row in enumerate(rows, start=1):
            state = "" if row["enabled"] else "  [disabled]"
            who = f"{row['plugin']}:{row['handler']}" if row["plugin"] else row["handler"]
            print(f"  {i}. {who}{state}  -- {row['reason']}")
    return 0
