"""What `apt train` prints: plain periodic lines when stdout is not a terminal, a bar only on one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from apt.cli import main
from apt.testing import TINY_CONFIG
from apt.train._console import format_duration


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_CONFIG), encoding="utf-8")
    return path


def test_non_terminal_output_has_a_line_per_log_interval_and_per_validation(
    tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """stdout captured (not a TTY): step lines every log_interval with loss, lr, tok/s, ETA; val lines."""
    args = ["train", "--config", str(tiny_yaml), "--no-plugins", "--run-dir", str(tmp_path / "run"),
            "--set", "training.log_interval=2"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    steps = [line for line in out if re.match(r"step \d+/8 epoch \d \| loss ", line)]
    assert [int(line.split()[1].split("/")[0]) for line in steps] == [2, 4, 6, 8]
    pattern = r"step \d+/8 epoch \d \| loss \d+\.\d{4} \| lr \d\.\d\de-\d\d \| \d+ tok/s \| ETA \d+s"
    assert all(re.fullmatch(pattern, line) for line in steps), steps
    vals = [line for line in out if line.startswith("step ") and "val_bpb" in line]
    # val_interval=3 (step 3, 6) and every epoch end (4, 8)
    assert [int(line.split()[1].split("/")[0]) for line in vals] == [3, 4, 6, 8]
    assert all(re.search(r"val_loss \d+\.\d{4} \| val_bpb \d+\.\d{4}", line) for line in vals)


def test_a_terminal_gets_the_bar_and_no_plain_lines(
    tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import apt.train._trainer

    monkeypatch.setattr(apt.train._trainer, "stdout_is_terminal", lambda: True)
    assert main(["train", "--config", str(tiny_yaml), "--no-plugins", "--run-dir", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    assert not any(line.startswith("step ") for line in captured.out.splitlines())
    assert "8/8" in captured.err  # tqdm's bar


def test_durations_read_like_a_clock() -> None:
    assert [format_duration(s) for s in (0, 42.4, 185, 3725)] == ["0s", "42s", "3m05s", "1h02m"]
