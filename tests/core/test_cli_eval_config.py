"""`apt eval` (validation of a run's weights with its plugins) and `apt config show` (config and schema)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from apt.cli import main
from apt.plugins import Plugin
from apt.testing import TINY_CONFIG
from apt.testing import FakeEntryPoint
from apt.testing import fake_entry_points
from pydantic import BaseModel
from pydantic import Field


class _DemoConfig(BaseModel):
    weight: float = Field(0.25, description="How much the demo metric counts.")


class ValMetric(Plugin):
    """Adds a validation metric, as a retrieval plugin adds retrieval/val_bpb."""

    name = "demo"
    version = "1.0.0"
    config_model = _DemoConfig

    def on_validation_end(self, metrics: dict[str, float]) -> dict[str, float]:
        return {"demo/val_bpb": metrics["val_bpb"] * self.config.weight}


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_CONFIG), encoding="utf-8")
    return path


def test_apt_eval_reproduces_the_runs_last_val_bpb_with_plugin_metrics(
    tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the run's own data and weights, eval prints the summary's val_bpb, and the plugin's metric."""
    run_dir = tmp_path / "run"
    with fake_entry_points(FakeEntryPoint("demo", ValMetric)):
        assert main(["train", "--config", str(tiny_yaml), "--plugins", "demo", "--run-dir", str(run_dir)]) == 0
        summary = json.loads((run_dir / "summary.json").read_text())
        files = sorted(p.name for p in run_dir.iterdir())
        last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
        capsys.readouterr()
        assert main(["eval", str(run_dir), "--json"]) == 0
        metrics = json.loads(capsys.readouterr().out)
        assert metrics["val_bpb"] == summary["val_bpb"] == last["val_bpb"]
        assert metrics["val_loss"] == summary["val_loss"]
        assert metrics["demo/val_bpb"] == last["demo/val_bpb"]
        # another text: other numbers
        other = tmp_path / "other.txt"
        other.write_text("zzzz qqqq " * 2000, encoding="utf-8")
        assert main(["eval", str(run_dir), "--data", str(other), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["val_bpb"] != summary["val_bpb"]
        assert sorted(p.name for p in run_dir.iterdir()) == files  # eval writes nothing


def test_apt_eval_of_a_folder_without_a_run_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err


def test_config_show_schema_lists_core_and_plugin_keys(capsys: pytest.CaptureFixture[str]) -> None:
    """Every key with type, default and description; a plugin's section included."""
    with fake_entry_points(FakeEntryPoint("demo", ValMetric)):
        assert main(["config", "show", "--schema", "--json"]) == 0
    rows = {r["key"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["demo.weight"] == {
        "key": "demo.weight", "type": "float", "default": 0.25, "description": "How much the demo metric counts."
    }  # fmt: skip
    assert rows["training.lr"]["type"] == "float" and rows["training.lr"]["default"] == 3e-3
    assert all(r["description"] for r in rows.values()), [k for k, r in rows.items() if not r["description"]]


def test_config_show_prints_a_runs_config_with_plugin_sections(
    tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fake_entry_points(FakeEntryPoint("demo", ValMetric)):
        assert main(["config", "show", "--config", str(tiny_yaml), "--set", "plugins=[demo]", "--plugins"]) == 0
        shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["demo"] == {"weight": 0.25} and shown["model"]["d_model"] == 32
    assert "resume" not in shown["training"]


def test_apt_eval_of_a_bpe_run_uses_the_runs_tokenizer(
    tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A BPE run: eval loads the run's tokenizer.json (not a BPE retrained) and reproduces val_bpb."""
    text = tmp_path / "text.txt"
    text.write_text("def f(x):\n    return x + 1\n" * 400 + "class A:\n    pass\n" * 300, encoding="utf-8")
    run_dir = tmp_path / "run"
    args = ["train", "--config", str(tiny_yaml), "--no-plugins", "--run-dir", str(run_dir), "--set",
            f"data.path={text}", "--set", "data.tokenizer=bpe", "--set", "data.tokenizer_vocab_size=300"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val_bpb"] == summary["val_bpb"]
