"""Comparing the plugin set that wrote a checkpoint with the one resuming it."""

from __future__ import annotations

from typing import Any


__all__ = ["diff_fingerprints"]


def diff_fingerprints(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Human-readable differences: plugins gone or new, versions, per-event order."""
    diffs: list[str] = []
    old_p = {p["name"]: p["version"] for p in saved.get("plugins", [])}
    new_p = {p["name"]: p["version"] for p in now["plugins"]}
    for name in sorted(old_p.keys() - new_p.keys()):
        diffs.append(f"plugin {name!r} {old_p[name]} was active when the checkpoint was written but is not loaded now")
    for name in sorted(new_p.keys() - old_p.keys()):
        diffs.append(f"plugin {name!r} {new_p[name]} is loaded now but was not when the checkpoint was written")
    for name in sorted(old_p.keys() & new_p.keys()):
        if old_p[name] != new_p[name]:
            diffs.append(f"plugin {name!r} was version {old_p[name]}, now {new_p[name]}")
    for event in sorted(set(saved.get("order", {})) | set(now["order"])):
        a, b = saved.get("order", {}).get(event, []), now["order"].get(event, [])
        if a != b and set(a) == set(b):
            diffs.append(f"hook order of {event!r} changed: {a} -> {b}")
    return diffs
