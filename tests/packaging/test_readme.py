"""The README's promises: its plugin example runs as written, its error example is real."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from apt.testing import run_tiny_training


README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_plugin_example_trains_and_logs_its_metric(tmp_path: Path) -> None:
    (source,) = [b for b in _python_blocks() if "class GradNormPlugin" in b]
    namespace: dict[str, object] = {}
    exec(compile(source, "README.md", "exec"), namespace)  # noqa: S102
    plugin = namespace["GradNormPlugin"]
    run = run_tiny_training(plugin, run_dir=tmp_path, overrides=["gradnorm.stop_above=1e-9"])  # type: ignore[arg-type]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert any('"gradnorm/seen": 1.0' in line for line in lines)
    # its stop request went through: the run stopped after the first step, with the reason
    assert run.trainer.global_step == 1 and "grad norm" in run.trainer.stop_reason


def test_readme_error_example_is_what_the_cli_prints() -> None:
    text = README.read_text(encoding="utf-8")
    shown = re.search(r"\$ (apt train --set training.max_epoch=3)\napt: error: (.*?)\.\.\.", text)
    assert shown is not None
    out = subprocess.run(
        [sys.executable, "-m", "apt", "train", "--set", "training.max_epoch=3"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stderr.startswith("apt: error: " + shown.group(2)) and out.stderr.count("\n") == 1
