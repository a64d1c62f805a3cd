"""``apt plugins list|info|doctor|order``: what is installed, what loads, in which order, and why not.

Which commands import plugin code:

``list``
    reads installed distributions' metadata only (entry point, distribution, version,
    summary): neither torch nor any plugin is imported, so a broken or slow plugin
    cannot break it.
``list --check``, ``info``, ``doctor``, ``order``
    import and set up plugins through the kernel's :class:`~apt.plugins.PluginManager`,
    exactly as a run would, and report what it found.

Status of a plugin:

``available``
    installed, and a run with this config would import it.
``disabled``
    installed, but turned off: ``APT_DISABLE_PLUGIN_AUTOLOAD``, ``disable_plugins``, or
    not named in a ``plugins:`` list of ``--config``.
``failed``
    will not load. Without importing, only a name claimed by several distributions is
    seen; the importing commands report import, validation, requirement and setup errors.
``loaded``
    (``--check`` / ``info`` / ``doctor`` / ``order``) imported, validated and set up.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap
from typing import TYPE_CHECKING
from typing import Any

from apt.cli._plugin_status import apply_check
from apt.cli._plugin_status import load_all
from apt.cli._plugin_status import metadata_rows
from apt.cli._plugin_status import order_report


if TYPE_CHECKING:
    from apt.core import APTConfig


__all__ = ["register"]

# Columns of the `apt plugins list` table: (header, row key, widest cell before it is cut
# with "…"; None: never cut). The summary goes under each row, wrapped to the terminal.
_COLUMNS = (
    ("NAME", "name", 20),
    ("VERSION", "version", 12),
    ("DISTRIBUTION", "distribution", 28),
    ("STATUS", "status", None),
)
# `--wide`: one line per plugin, summary and the entry point's target as columns, nothing cut.
_WIDE_COLUMNS = (*((h, k, None) for h, k, _ in _COLUMNS), ("SUMMARY", "summary", None), ("TARGET", "target", None))


def register(subparsers: Any) -> None:
    """Add ``apt plugins`` (and its subcommands) to the ``apt`` parser."""
    parser = subparsers.add_parser(
        "plugins",
        help="list, inspect and check installed plugins",
        description="Inspect installed APT plugins: what is installed, what loads, in which order, and why not.",
    )
    parser.set_defaults(func=lambda args: _usage(parser))
    sub = parser.add_subparsers(dest="plugins_command", metavar="SUBCOMMAND", parser_class=type(parser))

    p = sub.add_parser(
        "list", help="installed plugins from distribution metadata (imports no plugin code, and not torch)"
    )
    _add_config_option(p)
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--wide", action="store_true", help="cut no field, and add the entry point's target")
    p.add_argument(
        "--check", action="store_true", help="also import and load the plugins as a run would (status loaded/failed)"
    )
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="everything known about one plugin (imports it through the kernel)")
    p.add_argument("name", help="the plugin name (as in `apt plugins list`)")
    _add_config_option(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    # `info` always imports now; --check stays accepted so that old command lines still run
    p.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("doctor", help="import, validate and set up every installed plugin; exit 1 if any fails")
    _add_config_option(p)
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("order", help="the resolved handler order of each event, and why (imports plugins)")
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


def _read_config(path: str | None) -> APTConfig:
    from apt.core import APTConfig

    return APTConfig.from_yaml(path) if path else APTConfig()


def _width() -> int:
    """The terminal's width (``COLUMNS`` when set; 80 when not a terminal)."""
    return shutil.get_terminal_size((80, 24)).columns


# --- list ---------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    """``apt plugins list [--json] [--wide] [--check] [--config FILE]``."""
    config = _read_config(args.config)
    rows = metadata_rows(config)
    if args.check:
        apply_check(rows, config)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no APT plugins installed (distributions advertise them with an 'apt.plugins' entry point)")
    else:
        _print_table(rows, wide=args.wide, width=_width())
    return 0


def _cut(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)] + "…"


def _print_table(rows: list[dict[str, Any]], *, wide: bool, width: int) -> None:
    """One row per plugin. Without ``--wide`` every line fits ``width``: long names are cut
    and the summary is wrapped under its row; ``--wide`` cuts nothing."""
    columns = _WIDE_COLUMNS if wide else _COLUMNS
    table = [
        [h for h, _, _ in columns],
        *([_cut(str(r[key] or "-"), limit) for _, key, limit in columns] for r in rows),
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for i, line in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        summary = rows[i - 1]["summary"] if i and not wide else None
        if summary:
            print(_wrap(summary, width, indent="    ", subsequent="    "))
    notes = [f"{r['name']}: {r['status']}: {r['reason']}" for r in rows if r["reason"]]
    if notes:
        print()
        for note in notes:
            print(_wrap(note, width, indent="  ", subsequent="    "))


def _wrap(text: str, width: int, *, indent: str, subsequent: str) -> str:
    return textwrap.fill(
        text, width=max(width, 40), initial_indent=indent, subsequent_indent=subsequent, break_on_hyphens=False
    )


# --- info ---------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    """``apt plugins info NAME``: metadata, whether a run would load it, and what loading it shows."""
    from apt.core.config import did_you_mean
    from apt.errors import PluginNotFoundError

    config = _read_config(args.config)
    rows = metadata_rows(config)
    matches = [r for r in rows if r["name"] == args.name]
    if not matches:
        names = sorted({r["name"] for r in rows})
        raise PluginNotFoundError(
            f"no installed plugin is named {args.name!r}{did_you_mean(args.name, names)}; "
            f"installed: {', '.join(names) or 'none'} (see `apt plugins list`)",
            plugin=args.name,
        )
    for row in matches:
        # whether a run would load it is what the metadata says; the rest needs importing
        row["selected"] = row["status"] == "available"
        row["selection"] = row["reason"] if row["status"] == "disabled" else None
    apply_check(matches, config, every_installed=True)
    if args.json:
        print(json.dumps(matches[0] if len(matches) == 1 else matches, indent=2))
        return 0
    width = _width()
    for i, row in enumerate(matches):
        if i:
            print()
        _print_info(row, width)
    return 0


def _print_info(row: dict[str, Any], width: int) -> None:
    def line(label: str, value: Any) -> None:
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "-"
        text = "-" if value is None or value == "" else str(value)
        # a long word (a file path) is never cut: it may pass the width instead
        parts = textwrap.wrap(text, max(width - 16, 24), break_long_words=False, break_on_hyphens=False)
        print(f"{label + ':':16}{parts[0]}")
        for part in parts[1:]:
            print(" " * 16 + part)

    line("name", row["name"])
    line("distribution", row["distribution"])
    line("dist. version", row["version"])
    line("summary", row["summary"])
    line("entry point", row["target"])
    line("runs load it", "yes" if row["selected"] else f"no: {row['selection'] or row['reason']}")
    line("status", row["status"] if row["reason"] is None else f"{row['status']}: {row['reason']}")
    failure = row["failure"]
    if failure is not None:
        line("stage", failure["stage"])
        if failure["chain"]:
            line("chain", " -> ".join(failure["chain"]))
    plugin = row["plugin"]
    if plugin is not None:
        critical = plugin["critical"]
        for label, key in (
            ("version", "version"),
            ("description", "description"),
            ("priority", "priority"),
            ("requires", "requires"),
            ("conflicts", "conflicts"),
            ("providers", "providers"),
            ("hooks", "hooks"),
            ("api_version", "api_version"),
            ("file", "file"),
        ):
            line(label, plugin[key])
        line("critical", "yes" if critical else "no")


# --- doctor -------------------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    """``apt plugins doctor``: import, validate and set up every installed plugin; 1 if any fails."""
    config = _read_config(args.config)
    rows = metadata_rows(config)
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
            "version": row["version"],
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


# --- order ---------------------------------------------------------------------------------


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
