"""`apt plugins list` (metadata only) against importing the plugins, side by side in one run.

    python benchmarks/bench_plugins_list.py
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
        "python -c pass": "pass",
        "apt plugins list": "from apt.cli import main; main(['plugins', 'list', '--json'])",
        "apt plugins list --check": "from apt.cli import main; main(['plugins', 'list', '--json', '--check'])",
        "import torch": "import torch",
    }
    results = {name: median_s(code, 7 if "torch" not in name and "check" not in name else 3) for name, code in cases.items()}
    base = results["apt plugins list"]
    for name, seconds in results.items():
        print(f"{name:28s} {seconds * 1e3:8.0f} ms   {seconds / base:5.2f}x of `list`")


if __name__ == "__main__":
    main()
