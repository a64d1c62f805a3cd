"""The `apt train`, `apt plot` and `apt generate` commands, end to end on a tiny configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from apt.cli import main
from apt.plugins import Plugin
from apt.testing import TINY_CONFIG
from apt.testing import FakeEntryPoint
from apt.testing import fake_entry_points


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_CONFIG), encoding="utf-8")
    return path


@pytest.fixture
def trained(tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(tiny_yaml), "--no-plugins", "--run-dir", str(run_dir)]) == 0
    capsys.readouterr()
    return run_dir


def test_apt_train_end_to_end(tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`apt train` trains, writes the run folder and prints it with the final val_bpb and the baseline."""
    run_dir = tmp_path / "run"
    code = main(["train", "--config", str(tiny_yaml), "--no-plugins", "--run-dir", str(run_dir),
                 "--set", "training.steps_per_epoch=3"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"run folder: {run_dir}" in out
    assert f"val_bpb {summary['val_bpb']:.4f}" in out and f"baseline {summary['baseline_bpb']:.4f}" in out
    assert summary["steps"] == 6 and summary["plugins"] == []
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["training"]["steps_per_epoch"] == 3 and saved["plugins"] == []
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 6


def test_default_run_folder_comes_from_run_section(tiny_yaml: Path, tmp_path: Path) -> None:
    """Without --run-dir the run goes to run.dir/run.name."""
    code = main(["train", "--config", str(tiny_yaml), "--no-plugins", "--set", f"run.dir={tmp_path / 'runs'}",
                 "--set", "run.name=demo", "--set", "training.max_epochs=1"])  # fmt: skip
    assert code == 0 and (tmp_path / "runs" / "demo" / "summary.json").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "training.lr=-1"], "training.lr"),
        (["--set", "training.lrr=0.1"], "did you mean 'lr'"),
        (["--set", "training.device=gpu9"], "training.device"),
        (["--plugins", "no_such_plugin"], "no_such_plugin"),
        (["--config", "missing.yaml"], "missing.yaml"),
        (["--set", "data.path=/no/such/file.txt"], "data.path"),
        (["--set", "model.vocab_size=100"], "model.vocab_size is 100, but the tokenizer"),
        (["--set", "training.betas=[1.5, 0.9]"], "training.betas must be in [0, 1)"),
        (["--set", "training.seed=99999999999999999999999"], "training.seed"),
        (["--plugins", "a", "--no-plugins"], "not allowed with argument --plugins (see: apt train --help)"),
    ],
)
def test_bad_config_exits_2_with_one_line(
    argv: list[str], message: str, tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A configuration mistake prints one line naming the key and exits 2, before any training."""
    if argv[0] != "--config":
        argv = ["--config", str(tiny_yaml), *argv]
    try:
        code = main(["train", *argv, "--run-dir", str(tmp_path / "run")])
    except SystemExit as exc:  # argparse's own checks
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("apt: error:") and message in err
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_run_folder_that_cannot_be_written_exits_2_with_one_line(
    tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "a_file"
    taken.write_text("keep me")
    code = main(["train", "--config", str(tiny_yaml), "--no-plugins", "--run-dir", str(taken)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"apt: error: cannot write the run folder {str(taken)!r}") and "--run-dir" in err
    assert taken.read_text() == "keep me"


def test_bad_config_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    """`python -m apt train` with a bad value: exit status 2, one line on stderr, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "apt", "train", "--set", "model.n_layer=0", "--run-dir", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "model.n_layer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plot_writes_pngs(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`apt plot` draws loss.png, val_bpb.png and training.png (lr, grad_norm, tokens/s) under RUN_DIR/plots."""
    assert main(["plot", str(trained)]) == 0
    names = {p.name for p in (trained / "plots").iterdir()}
    assert {"loss.png", "training.png", "val_bpb.png"} <= names
    assert (trained / "plots" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("line", "message"), [("{not json", "line 2 is not JSON"), ("[1, 2]", "line 2 is not a JSON object")]
)
def test_plot_names_the_bad_line_of_metrics_jsonl(
    line: str, message: str, trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = trained / "metrics.jsonl"
    first = metrics.read_text().splitlines()[0]
    metrics.write_text(f"{first}\n{line}\n")
    assert main(["plot", str(trained)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "metrics.jsonl" in err


def test_a_new_run_refuses_a_folder_that_holds_a_run(
    trained: Path, tiny_yaml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --resume, training into a used folder would overwrite its weights, summary and checkpoints."""
    before = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()}
    code = main(["train", "--config", str(tiny_yaml), "--no-plugins", "--run-dir", str(trained)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"run folder {str(trained)!r} already holds a run" in err and "--resume latest" in err
    assert {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()} == before


def test_a_reader_that_goes_away_ends_the_command_quietly(trained: Path) -> None:
    """`apt ... | head -1`: no BrokenPipeError traceback; the exit status is 141, as for other tools."""
    for argv in (["plugins", "list"], ["generate", "--run", str(trained), "--max-new-tokens", "200"]):
        proc = subprocess.run(
            ["bash", "-c", '"$PYTHON" -m apt "$@" | true; echo "rc=${PIPESTATUS[0]}" >&2', "_", *argv],
            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable},
        )  # fmt: skip
        assert "Traceback" not in proc.stderr and ("rc=141" in proc.stderr or "rc=0" in proc.stderr), proc.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--temperature", "nan"], "--temperature must be a finite number"),
        (["--seed", str(2**70)], "--seed must be in [0, 2**63)"),
    ],
)
def test_generate_refuses_bad_sampling_options(
    argv: list[str], message: str, trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "--run", str(trained), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_plot_names_a_line_that_is_not_utf8(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = trained / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes() + b'{"step": 99, "loss": "\xff"}\n')
    assert main(["plot", str(trained)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not UTF-8 text" in err


class PlotPlugin(Plugin):
    """Adds metrics under 'demo/' and a 'plot' provider drawing its own figure."""

    name = "demo"
    version = "0.1.0"

    def setup(self, registry: Any, hook_manager: Any) -> None:
        registry.register("plot", "demo", self.draw)
        registry.register("weights", "zeros", self.zero_weights)

    @staticmethod
    def draw(records: list[dict[str, Any]], run_dir: Path) -> list[Path]:
        path = run_dir / "plots" / "demo_custom.txt"
        path.write_text(f"{len(records)} records")
        return [path]

    @staticmethod
    def zero_weights(run_dir: Path) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return {k: torch.zeros_like(v) for k, v in load_file(run_dir / "model.safetensors").items()}

    def on_step_end(self, step: int, **kwargs: Any) -> dict[str, float]:
        return {"demo/a": float(step), "demo/b": 2.0 * step}


def test_plugin_series_and_plot_providers(tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A plugin's metric group gets its own figure, and its 'plot' provider is called by `apt plot`."""
    run_dir = tmp_path / "run"
    with fake_entry_points(FakeEntryPoint("demo", PlotPlugin)):
        assert main(["train", "--config", str(tiny_yaml), "--plugins", "demo", "--run-dir", str(run_dir)]) == 0
        assert main(["plot", str(run_dir)]) == 0
    plots = run_dir / "plots"
    assert (plots / "demo.png").is_file()
    assert (plots / "demo_custom.txt").read_text() == "8 records"


def test_generate_samples_from_the_run(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`apt generate` continues the prompt; the same seed gives the same text."""
    argv = ["generate", "--run", str(trained), "--prompt", "def f", "--max-new-tokens", "12", "--seed", "3"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("def f") and len(first.encode()) >= len("def f")
    assert main(argv) == 0 and capsys.readouterr().out == first
    assert main(["generate", "--run", str(trained), "--weights", "nope"]) == 2
    assert "'weights' provider" in capsys.readouterr().err


def test_generate_from_a_padded_vocabulary_and_a_prompt_that_is_not_utf8(
    tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """model.vocab_size 512: only byte ids are sampled. A prompt from argv with undecodable bytes
    (surrogate-escaped by Python) goes in as those bytes."""
    run = tmp_path / "padded"
    code = main(["train", "--config", str(tiny_yaml), "--no-plugins", "--run-dir", str(run),
                 "--set", "model.vocab_size=512", "--set", "training.max_epochs=1"])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    for seed in range(3):
        argv = ["generate", "--run", str(run), "--prompt", "ab\udcffc", "--temperature", "2", "--seed", str(seed)]
        assert main([*argv, "--max-new-tokens", "40"]) == 0
        assert capsys.readouterr().out.startswith("ab\ufffdc")


def test_generate_with_a_weights_provider(tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--weights NAME takes the weights from that provider (here: all zeros, so greedy output is constant)."""
    run_dir = tmp_path / "run"
    with fake_entry_points(FakeEntryPoint("demo", PlotPlugin)):
        assert main(["train", "--config", str(tiny_yaml), "--plugins", "demo", "--run-dir", str(run_dir)]) == 0
        capsys.readouterr()
        assert main(["generate", "--run", str(run_dir), "--weights", "zeros", "--prompt", "ab",
                     "--max-new-tokens", "3", "--temperature", "0"]) == 0  # fmt: skip
    # zero weights: all logits equal, greedy picks byte 0 every time
    assert capsys.readouterr().out == "ab\x00\x00\x00\n"


def test_generate_needs_a_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder without config.yaml is a usage error."""
    assert main(["generate", "--run", str(tmp_path), "--prompt", "x"]) == 2
    assert "config.yaml" in capsys.readouterr().err
