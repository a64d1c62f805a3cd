"""`apt export` and `model.init_from` end to end: train, export, load in transformers, generate the same text."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from apt.cli import main
from apt.core import APTConfig
from apt.testing import TINY_CONFIG
from apt.testing import run_tiny_training
from apt.train import Trainer
from safetensors.torch import load_file


transformers = pytest.importorskip("transformers")

LLAMA = {"position": "rope", "norm": "rmsnorm", "ffn": "swiglu", "n_kv_head": 1, "tie_embeddings": False}


def _train(tmp_path: Path, model: dict[str, Any] | None = None, **sections: Any) -> Path:
    data = copy.deepcopy(TINY_CONFIG)
    data["model"].update(model or {})
    data["training"].update({"max_epochs": 1, "steps_per_epoch": 3})
    data.update(sections)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    run_dir = tmp_path / "run"
    plugins = ["--plugins", ",".join(data["plugins"])] if data["plugins"] else ["--no-plugins"]
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), *plugins, "--run-dir", str(run_dir)]) == 0
    return run_dir


def _hf_text(folder: Path, prompt: str, n: int) -> str:
    tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    ids = torch.tensor([tok(prompt)["input_ids"]])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=0)
    text: str = tok.decode(out[0].tolist())
    return text


@pytest.mark.parametrize(("model", "arch"), [({}, "gpt2"), (LLAMA, "llama")])
def test_export_generates_what_apt_generate_does(
    model: dict[str, Any], arch: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A short run (byte tokenizer), exported, loaded by transformers, greedy-generates `apt generate`'s text."""
    run_dir = _train(tmp_path, model)
    capsys.readouterr()
    assert main(["export", str(run_dir), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert capsys.readouterr().out.strip() == f"exported {run_dir} as {arch} to {tmp_path / 'hf'}"
    files = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json"} <= files  # fmt: skip
    prompt = "The cat "
    assert main(["generate", "--run", str(run_dir), "--prompt", prompt, "--temperature", "0",
                 "--max-new-tokens", "20"]) == 0  # fmt: skip
    ours = capsys.readouterr().out.removesuffix("\n")
    assert ours == _hf_text(tmp_path / "hf", prompt, 20)
    assert len(ours.encode()) >= len(prompt) + 1


def test_export_stable_weights_are_aligns_ema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--weights stable exports align's EMA weights (run_dir/align/stable.safetensors), not the live ones."""
    run_dir = _train(tmp_path, plugins=["align"], align={"start_epoch": 0, "ema_decay": 0.5})
    assert main(["export", str(run_dir), "--out", str(tmp_path / "stable"), "--weights", "stable"]) == 0
    assert main(["export", str(run_dir), "--out", str(tmp_path / "live")]) == 0
    stable = load_file(str(run_dir / "align" / "stable.safetensors"))["wte.weight"]
    live = load_file(str(run_dir / "model.safetensors"))["wte.weight"]
    assert not torch.equal(stable, live)
    assert torch.equal(load_file(str(tmp_path / "stable" / "model.safetensors"))["transformer.wte.weight"], stable)
    assert torch.equal(load_file(str(tmp_path / "live" / "model.safetensors"))["transformer.wte.weight"], live)


def test_export_refusals_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A shape with no counterpart, or an --out folder that holds files, exits 2 with one line; nothing is lost."""
    run_dir = _train(tmp_path, {"position": "rope"})  # rope + layernorm: neither GPT-2 nor Llama
    capsys.readouterr()
    assert main(["export", str(run_dir), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.norm='layernorm'" in err and not (tmp_path / "hf").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    run_ok = _train(tmp_path / "b")
    capsys.readouterr()
    assert main(["export", str(run_ok), "--out", str(tmp_path / "full")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    assert main(["export", str(run_ok), "--out", str(tmp_path / "x"), "--max-shard-size", "lots"]) == 2


def test_init_from_export_and_run_fine_tune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """model.init_from an exported folder or an APT run starts from those weights, and `apt train` fine-tunes."""
    run_dir = _train(tmp_path, LLAMA)
    assert main(["export", str(run_dir), "--out", str(tmp_path / "hf")]) == 0
    trained = load_file(str(run_dir / "model.safetensors"))
    for source in (tmp_path / "hf", run_dir):
        config = APTConfig(**{**TINY_CONFIG, "model": {"init_from": str(source)}})
        trainer = Trainer(config)
        trainer.setup()
        assert trainer.config.model.position == "rope" and trainer.config.model.n_kv_head == 1
        state = trainer.model.state_dict()
        for name, t in trained.items():
            assert torch.equal(state[name], t), (source, name)
    data = {**copy.deepcopy(TINY_CONFIG), "model": {"init_from": str(tmp_path / "hf")}}
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    assert main(["train", "--config", str(tmp_path / "ft.yaml"), "--no-plugins", "--run-dir", str(tmp_path / "ft"),
                 "--set", "training.max_epochs=1"]) == 0  # fmt: skip
    saved = yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())["model"]
    assert saved["position"] == "rope" and saved["init_from"] == str(tmp_path / "hf")


def test_default_run_is_unchanged() -> None:
    """The default model trains to the val_bpb it had before the rope/GQA options (pinned to 4 decimals)."""
    run = run_tiny_training(round_trip=False)
    assert round(run.summary["val_bpb"], 4) == 6.9562


def _bpe_tokenizer_json(path: Path) -> int:
    """Train a small byte-level BPE (the standard tokenizers JSON a BPE run keeps); returns its vocabulary size."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = ["the cat sat on the mat, the dog sat on the log; " * 20, "def main():\n    return 0\n" * 20]
    tok.train_from_iterator(text, trainer)
    tok.save(str(path))
    size: int = tok.get_vocab_size()
    return size


def test_run_tokenizer_json_is_exported(tmp_path: Path) -> None:
    """A run that keeps a BPE tokenizer.json exports it: AutoTokenizer gives its ids, and transformers'
    greedy text from BPE ids equals APT's model decoding through the run's tokenizer."""
    from apt.cli._generate import load_run_model
    from tokenizers import Tokenizer

    vocab = _bpe_tokenizer_json(tmp_path / "bpe.json")
    run_dir = _train(tmp_path, {"vocab_size": vocab, **LLAMA})
    (tmp_path / "bpe.json").rename(run_dir / "tokenizer.json")
    assert main(["export", str(run_dir), "--out", str(tmp_path / "hf")]) == 0
    bpe = Tokenizer.from_file(str(run_dir / "tokenizer.json"))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    for text in ["the cat sat", " leading space", "emoji 😀 和", "def main():\n"]:
        assert hf_tok(text)["input_ids"] == bpe.encode(text).ids
    assert hf_tok.eos_token == "<|endoftext|>"
    model, pm = load_run_model(run_dir)
    pm.teardown_all()
    prompt = "the cat "
    ids = torch.tensor([bpe.encode(prompt).ids])
    ours = bpe.decode(model.generate(ids, 20, temperature=0.0)[0].tolist())
    assert ours == _hf_text(tmp_path / "hf", prompt, 20)


def test_bpe_run_exports_and_generates_like_apt_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A short run with a BPE tokenizer, exported, loaded by transformers, greedy-generates `apt generate`'s text;
    init_from the export fine-tunes with that tokenizer."""
    run_dir = _train(tmp_path, LLAMA, data={"tokenizer": "bpe", "tokenizer_vocab_size": 300})
    assert main(["export", str(run_dir), "--out", str(tmp_path / "hf")]) == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    assert len(hf_tok) == 300 and hf_tok.eos_token == "<|endoftext|>"
    capsys.readouterr()
    prompt = "The with statement"
    assert main(["generate", "--run", str(run_dir), "--prompt", prompt, "--temperature", "0",
                 "--max-new-tokens", "20"]) == 0  # fmt: skip
    ours = capsys.readouterr().out.removesuffix("\n")
    assert ours == _hf_text(tmp_path / "hf", prompt, 20)
    config = APTConfig(**{**TINY_CONFIG, "model": {"init_from": str(tmp_path / "hf")}})
    trainer = Trainer(config)
    assert trainer.config.data.tokenizer_path == str(tmp_path / "hf" / "tokenizer.json")
    assert trainer.tokenizer.vocab_size == 300
