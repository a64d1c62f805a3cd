"""`apt plugins list` (metadata only) against importing the plugins, side by side in one run.

    python benchmarks/bench_plugins_list.py

Each case is a fresh interpreter (a cold process, as a user's shell runs it). ``import
apt.cli`` is what every ``apt`` command pays before it starts; ``list`` adds discovery
(distribution metadata) and printing; ``list --check`` imports and sets up every plugin.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time


def median_s(code: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    cases = {
        "python -c pass": ("pass", 7),
        "import apt.cli": ("import apt.cli", 7),
        "apt plugins list": ("from apt.cli import main; main(['plugins', 'list'])", 7),
        "apt plugins list --json": ("from apt.cli import main; main(['plugins', 'list', '--json'])", 7),
        "apt plugins list --check": ("from apt.cli import main; main(['plugins', 'list', '--json', '--check'])", 3),
        "import torch": ("import torch", 3),
    }
    results = {name: median_s(code, repeat) for name, (code, repeat) in cases.items()}
    base = results["apt plugins list"]
    for name, seconds in results.items():
        print(f"{name:28s} {seconds * 1e3:8.0f} ms   {seconds / base:5.2f}x of `list`")


if __name__ == "__main__":
    main()
