"""Mixtral through transformers: APT's Llama shape with MoE in every block exports and imports via hf_ffn:mixtral."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from apt.core import APTConfig
from apt.errors import ConfigError
from apt.interop import load_hf_weights
from apt.interop import save_hf
from apt.plugins import PluginManager
from apt.testing import TINY_CONFIG
from apt.train import Trainer
from apt_plugin_moe import MixtralConverter
from apt_plugin_moe import MoEPlugin
from apt_plugin_moe import moe_layers


transformers = pytest.importorskip("transformers")

VOCAB = 300
LLAMA = {"vocab_size": VOCAB, "block_size": 32, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "d_model": 64,
         "d_ff": 48, "position": "rope", "norm": "rmsnorm", "ffn": "swiglu", "rope_theta": 250000.0,
         "norm_eps": 3e-6, "tie_embeddings": False}  # fmt: skip
PROMPTS = torch.tensor([[1, 17, 255, 42, 7, 299, 3, 100], [5, 5, 5, 9, 200, 201, 0, 12], [250, 1, 2, 3, 4, 5, 6, 7]])


def _trainer(model: dict[str, Any], moe: dict[str, Any], plugins: tuple[str, ...] = ("moe",)) -> Trainer:
    # the model section is exactly `model` (tiny_config's shape fields would conflict with a checkpoint's)
    config = APTConfig(**{**TINY_CONFIG, "model": model, "plugins": list(plugins), "moe": moe})
    pm = PluginManager()
    pm.register_plugin("moe", MoEPlugin)
    pm.load_from_config(config)
    trainer = Trainer(config, pm)
    trainer.setup()
    assert trainer.model is not None
    trainer.model.eval()
    return trainer


def _hf_mixtral(folder: Path, **kw: Any) -> Any:
    torch.manual_seed(2)
    config = transformers.MixtralConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=3, num_experts_per_tok=2, max_position_embeddings=64,
        rms_norm_eps=2e-6, bos_token_id=0, eos_token_id=0, **kw,
    )  # fmt: skip
    model = transformers.MixtralForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(str(folder))
    return model.eval()


def test_moe_run_exports_as_mixtral(tmp_path: Path) -> None:
    """Exported logits equal APT's (< 1e-4), greedy generation of 20 tokens is identical."""
    trainer = _trainer(LLAMA, {"num_experts": 4, "top_k": 2, "expert_ffn": "swiglu"})
    model = trainer.model
    assert model is not None and len(moe_layers(model)) == 2
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    assert save_hf(model, tmp_path / "hf", registry=trainer.registry) == "mixtral"
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True).eval()
    assert type(hf).__name__ == "MixtralForCausalLM" and hf.config.num_local_experts == 4
    with torch.no_grad():
        diff = (model(PROMPTS).logits - hf(PROMPTS).logits).abs().max().item()
    assert diff < 1e-4, diff
    ours = model.generate(PROMPTS, 20, temperature=0.0, vocab_limit=256)  # padded rows are suppressed
    theirs = hf.generate(PROMPTS, attention_mask=torch.ones_like(PROMPTS), max_new_tokens=20, do_sample=False)
    assert torch.equal(ours, theirs)


def test_capacity_dropping_is_refused(tmp_path: Path) -> None:
    """A capacity factor drops tokens Mixtral would route: the export names moe.capacity_factor and writes nothing."""
    trainer = _trainer(LLAMA, {"num_experts": 4, "top_k": 2, "expert_ffn": "swiglu", "capacity_factor": 1.0})
    with pytest.raises(ConfigError, match="moe.capacity_factor") as info:
        save_hf(trainer.model, tmp_path / "hf", registry=trainer.registry)
    assert info.value.key == "moe.capacity_factor" and not (tmp_path / "hf").exists()


def test_gelu_experts_are_refused(tmp_path: Path) -> None:
    trainer = _trainer(LLAMA, {"num_experts": 4, "top_k": 2, "expert_ffn": "gelu"})
    with pytest.raises(ConfigError, match="moe.expert_ffn"):
        save_hf(trainer.model, tmp_path / "hf", registry=trainer.registry)


def test_transformers_mixtral_imports_and_round_trips(tmp_path: Path) -> None:
    """A save_pretrained Mixtral starts an APT run with transformers' logits; exporting it is bitwise equal."""
    hf = _hf_mixtral(tmp_path / "src")
    trainer = _trainer({"init_from": str(tmp_path / "src")}, {"num_experts": 3, "top_k": 2, "expert_ffn": "swiglu"})
    mc = trainer.config.model
    assert (mc.n_kv_head, mc.d_ff, mc.rope_theta, mc.norm_eps, mc.position) == (2, 48, 1e6, 2e-6, "rope")
    with torch.no_grad():
        diff = (trainer.model(PROMPTS).logits - hf(PROMPTS).logits).abs().max().item()
    assert diff < 1e-4, diff
    save_hf(trainer.model, tmp_path / "out", registry=trainer.registry)
    before, after = load_hf_weights(tmp_path / "src"), load_hf_weights(tmp_path / "out")
    assert before.keys() == after.keys()
    for key, t in before.items():
        assert torch.equal(t, after[key]), key


def test_fused_v5_layout_loads_like_the_saved_one(tmp_path: Path) -> None:
    """transformers 5's in-memory layout (mlp.gate, mlp.experts.gate_up_proj/down_proj) loads the same tensors."""
    hf = _hf_mixtral(tmp_path / "src")
    fused = {k: v.detach() for k, v in hf.state_dict().items()}
    assert "model.layers.0.mlp.experts.gate_up_proj" in fused
    trainer = _trainer({"init_from": str(tmp_path / "src")}, {"num_experts": 3, "top_k": 2, "expert_ffn": "swiglu"})
    layer = trainer.model.blocks[1].ffn
    expected = {k: v.clone() for k, v in layer.state_dict().items()}
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
    MixtralConverter().load_hf(layer, fused, "model.layers.1.", hf.config.to_dict())
    for k, v in layer.state_dict().items():
        assert torch.equal(v, expected[k]), k


@pytest.mark.parametrize(
    ("moe", "plugins", "key"),
    [
        ({"num_experts": 4, "top_k": 2, "expert_ffn": "swiglu"}, ("moe",), "moe.num_experts"),
        ({"num_experts": 3, "top_k": 1, "expert_ffn": "swiglu"}, ("moe",), "moe.top_k"),
        ({"num_experts": 3, "top_k": 2, "expert_ffn": "gelu"}, ("moe",), "moe.expert_ffn"),
        ({}, (), "plugins"),
    ],
)
def test_mixtral_import_mismatch_names_the_field(
    moe: dict[str, Any], plugins: tuple[str, ...], key: str, tmp_path: Path
) -> None:
    """An MoE configuration that cannot hold the checkpoint is a ConfigError naming the field to change."""
    _hf_mixtral(tmp_path / "src")
    with pytest.raises(ConfigError) as info:
        _trainer({"init_from": str(tmp_path / "src")}, moe, plugins)
    assert info.value.key == key and key in str(info.value) and "\n" not in str(info.value)


def test_sliding_window_checkpoint_is_refused(tmp_path: Path) -> None:
    _hf_mixtral(tmp_path / "src")
    path = tmp_path / "src" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "sliding_window": 8}))
    with pytest.raises(ConfigError, match="sliding_window=8"):
        _trainer({"init_from": str(tmp_path / "src")}, {"num_experts": 3, "expert_ffn": "swiglu"})


def test_moe_in_some_blocks_only_is_refused(tmp_path: Path) -> None:
    """Mixtral has a sparse block in every layer: MoE in block 1 only names the dense blocks."""
    trainer = _trainer(LLAMA, {"num_experts": 4, "top_k": 2, "expert_ffn": "swiglu", "layers": [1]})
    with pytest.raises(ConfigError, match=r"blocks \[0\] have another FFN.*moe.layers: all"):
        save_hf(trainer.model, tmp_path / "hf", registry=trainer.registry)
