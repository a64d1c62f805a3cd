"""Hugging Face export and import: transformers loads APT's GPT-2 and Llama shapes and computes the same logits.

Every model is tiny and random (d=64, 2 layers), in fp32 on the CPU; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from apt.core import APTConfig
from apt.core import ModelConfig
from apt.core import ProviderRegistry
from apt.errors import ConfigError
from apt.interop import init_weights
from apt.interop import load_hf_weights
from apt.interop import resolve_init_from
from apt.interop import save_hf
from apt.model import GPT
from apt.train import load_weights


transformers = pytest.importorskip("transformers")

VOCAB = 300
# prompts of one length (no padding), ids spread over the vocabulary
PROMPTS = torch.tensor([[1, 17, 255, 42, 7, 299, 3, 100], [5, 5, 5, 9, 200, 201, 0, 12], [250, 1, 2, 3, 4, 5, 6, 7]])

SHAPES: dict[str, dict[str, Any]] = {
    "gpt2-tied": {},
    "gpt2-bias-untied-tanh": {"bias": True, "tie_embeddings": False, "ffn": "gelu_tanh", "norm_eps": 3e-5},
    "llama-mha-tied": {"position": "rope", "norm": "rmsnorm", "ffn": "swiglu", "rope_theta": 500000.0},
    "llama-gqa-untied": {
        "position": "rope", "norm": "rmsnorm", "ffn": "swiglu", "n_kv_head": 2, "tie_embeddings": False,
        "rope_theta": 500000.0, "norm_eps": 3e-6, "d_ff": 96,
    },
    "llama-gqa-tied": {"position": "rope", "norm": "rmsnorm", "ffn": "swiglu", "n_kv_head": 1},
}  # fmt: skip


def random_apt(**shape: Any) -> GPT:
    """A tiny APT model whose weights are all far from their init (norm gains and biases too)."""
    torch.manual_seed(0)
    model = GPT(
        ModelConfig(vocab_size=VOCAB, block_size=32, n_layer=2, n_head=4, d_model=64, **shape), ProviderRegistry()
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def hf_load(folder: Path) -> Any:
    return transformers.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()


def greedy_hf(hf: Any, prompts: torch.Tensor, n: int) -> torch.Tensor:
    return hf.generate(
        prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n, do_sample=False, pad_token_id=0
    )


@pytest.mark.parametrize("name", list(SHAPES))
def test_export_matches_transformers(name: str, tmp_path: Path) -> None:
    """Exported logits equal APT's (< 1e-4) and greedy generation of 20 tokens is identical."""
    model = random_apt(**SHAPES[name])
    arch = save_hf(model, tmp_path / "hf", registry=ProviderRegistry())
    assert arch == name.split("-")[0]
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    hf = hf_load(tmp_path / "hf")
    assert type(hf).__name__ == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[arch]
    assert cfg["tie_word_embeddings"] == model.config.tie_embeddings
    if arch == "llama":
        assert hf.config.rope_parameters["rope_theta"] == model.config.rope_theta
        assert hf.config.num_key_value_heads == (model.config.n_kv_head or 4)
    with torch.no_grad():
        diff = (model(PROMPTS).logits - hf(PROMPTS).logits).abs().max().item()
    assert diff < 1e-4, diff
    # the byte tokenizer has 256 ids; rows past it are suppressed in generation_config.json
    ours = model.generate(PROMPTS, 20, temperature=0.0, vocab_limit=256)
    assert torch.equal(ours, greedy_hf(hf, PROMPTS, 20))


def test_export_shards_past_the_size_limit(tmp_path: Path) -> None:
    """Past --max-shard-size the weights are split with an index; transformers loads them the same."""
    model = random_apt(**SHAPES["llama-gqa-untied"])
    save_hf(model, tmp_path / "hf", registry=ProviderRegistry(), max_shard_bytes=100_000)
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and not (tmp_path / "hf" / "model.safetensors").exists()
    with torch.no_grad():
        diff = (model(PROMPTS).logits - hf_load(tmp_path / "hf")(PROMPTS).logits).abs().max().item()
    assert diff < 1e-4


def test_byte_tokenizer_loads_in_transformers(tmp_path: Path) -> None:
    """AutoTokenizer of an export encodes to the UTF-8 bytes and decodes like ByteTokenizer."""
    from apt.data import ByteTokenizer

    save_hf(random_apt(), tmp_path / "hf", registry=ProviderRegistry())
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    ours = ByteTokenizer()
    for text in ["Hello , world !", " leading", "a ,b . c 'n't", "emoji 😀 and CJK 和\n\ttab", ""]:
        ids = tok(text)["input_ids"]
        assert ids == ours.encode(text)
        assert tok.decode(ids) == text
    assert tok.decode([0xFF, 65]) == ours.decode([0xFF, 65])  # invalid UTF-8 -> U+FFFD, as ours


@pytest.mark.parametrize(
    ("shape", "key"),
    [
        ({"position": "rope"}, "model.norm"),  # rope + layernorm
        ({"norm": "rmsnorm"}, "model.norm"),  # learned + rmsnorm
        ({"ffn": "swiglu"}, "model.ffn"),  # learned + swiglu
        ({"n_kv_head": 2}, "model.n_kv_head"),  # GPT-2 without GQA
        ({"position": "rope", "norm": "rmsnorm", "ffn": "swiglu", "bias": True}, "model.bias"),
        ({"position": "rope", "norm": "rmsnorm", "ffn": "gelu"}, "model.ffn"),
    ],
)
def test_unmappable_shapes_are_refused_before_writing(shape: dict[str, Any], key: str, tmp_path: Path) -> None:
    """A combination with no Hugging Face counterpart is a ConfigError naming the field; nothing is written."""
    with pytest.raises(ConfigError) as info:
        save_hf(random_apt(**shape), tmp_path / "hf", registry=ProviderRegistry())
    assert info.value.key == key and key in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "hf").exists()


def test_custom_attention_provider_is_refused(tmp_path: Path) -> None:
    """A plugin's attention has no Hugging Face counterpart: the error names model.attention."""
    from apt.model import CausalSelfAttention

    class MyAttention(CausalSelfAttention):
        pass

    registry = ProviderRegistry()
    registry.register("attention", "mine", MyAttention)
    model = GPT(ModelConfig(vocab_size=VOCAB, n_layer=1, n_head=2, d_model=32, attention="mine"), registry)
    with pytest.raises(ConfigError, match="model.attention='mine'"):
        save_hf(model, tmp_path / "hf", registry=registry)


# --- import -------------------------------------------------------------------------------


def hf_made(arch: str, folder: Path, **kw: Any) -> Any:
    """``save_pretrained`` of a randomly initialised transformers model."""
    torch.manual_seed(1)
    if arch == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=VOCAB, n_positions=32, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0, **kw
        )
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64, bos_token_id=0, eos_token_id=0, **kw,
        )  # fmt: skip
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # norms and biases away from 1 and 0
    model.save_pretrained(str(folder))
    return model.eval()


def imported(folder: Path, **model: Any) -> GPT:
    """An APT model built and loaded the way the trainer does for ``model.init_from``."""
    config = resolve_init_from(APTConfig(model={"init_from": str(folder), **model}))
    registry = ProviderRegistry()
    apt_model = GPT(config.model, registry)
    load_weights(apt_model, init_weights(apt_model, config, registry))
    return apt_model.eval()


HF_MADE: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2-gelu_new": ("gpt2", {}),
    "gpt2-gelu-untied": ("gpt2", {"activation_function": "gelu", "tie_word_embeddings": False}),
    "llama-gqa": ("llama", {"num_key_value_heads": 2, "rope_theta": 250000.0, "rms_norm_eps": 3e-6}),
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
}


@pytest.mark.parametrize("name", list(HF_MADE))
def test_transformers_checkpoint_imports_and_round_trips(name: str, tmp_path: Path) -> None:
    """A save_pretrained checkpoint imported into APT gives transformers' logits; exporting it again is bitwise equal."""
    arch, kw = HF_MADE[name]
    hf = hf_made(arch, tmp_path / "src", **kw)
    model = imported(tmp_path / "src")
    with torch.no_grad():
        diff = (model(PROMPTS).logits - hf(PROMPTS).logits).abs().max().item()
    assert diff < 1e-4, diff
    save_hf(model, tmp_path / "out", registry=ProviderRegistry())
    before, after = load_hf_weights(tmp_path / "src"), load_hf_weights(tmp_path / "out")
    assert before.keys() == after.keys()
    for key, t in before.items():
        assert torch.equal(t, after[key]), key


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("model_type", "qwen2", "model_type='qwen2'"),
        ("sliding_window", 16, "sliding_window=16"),
        ("rope_parameters", {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}, "rope_parameters.rope_type"),
        ("hidden_act", "gelu", "hidden_act='gelu'"),
        ("head_dim", 32, "head_dim=32"),
    ],
)
def test_unsupported_checkpoint_fields_are_one_line_errors(field: str, value: Any, named: str, tmp_path: Path) -> None:
    """A checkpoint feature APT lacks is refused in one line naming the config.json field."""
    hf_made("llama", tmp_path / "src")
    path = tmp_path / "src" / "config.json"
    cfg = json.loads(path.read_text())
    cfg[field] = value
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as info:
        resolve_init_from(APTConfig(model={"init_from": str(tmp_path / "src")}))
    assert named in str(info.value) and "\n" not in str(info.value)


def test_init_from_conflicting_field_names_it(tmp_path: Path) -> None:
    """A shape field the config sets to another value than the checkpoint's is refused, naming it."""
    hf_made("llama", tmp_path / "src")
    with pytest.raises(ConfigError, match=r"model.n_layer is 3 but model.init_from .* has 2") as info:
        resolve_init_from(APTConfig(model={"init_from": str(tmp_path / "src"), "n_layer": 3}))
    assert info.value.key == "model.n_layer"
    # the same value, or a field the checkpoint does not fix (RoPE's context), is fine
    ok = resolve_init_from(APTConfig(model={"init_from": str(tmp_path / "src"), "n_layer": 2, "block_size": 16}))
    assert ok.model.block_size == 16 and ok.model.n_kv_head == 4 and ok.model.position == "rope"


def test_init_from_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither a Hugging Face folder"):
        resolve_init_from(APTConfig(model={"init_from": str(tmp_path / "nope")}))


def test_blocks_with_different_ffn_widths_are_refused(tmp_path: Path) -> None:
    """Hugging Face configs have one intermediate_size: a model whose blocks differ names the blocks."""
    from apt.model import SwiGLU

    model = random_apt(**SHAPES["llama-mha-tied"])
    model.blocks[1].ffn = SwiGLU(64, 32)
    with pytest.raises(ConfigError, match=r"blocks \[1\] differ from block 0"):
        save_hf(model, tmp_path / "hf", registry=ProviderRegistry())
    assert not (tmp_path / "hf").exists()


def test_attention_provider_without_rope_is_a_config_error() -> None:
    """position: rope with an attention provider that takes only the base signature names model.attention."""
    from torch import nn

    class Plain(nn.Module):
        def __init__(self, d_model: int, n_head: int, block_size: int, dropout: float, bias: bool) -> None:
            super().__init__()

    registry = ProviderRegistry()
    registry.register("attention", "plain", Plain)
    GPT(ModelConfig(n_layer=1, attention="plain"), registry)  # the default shape builds it
    with pytest.raises(ConfigError, match="'plain' does not take rope_theta") as info:
        GPT(ModelConfig(n_layer=1, attention="plain", position="rope"), registry)
    assert info.value.key == "model.attention"


def test_bfloat16_export(tmp_path: Path) -> None:
    """dtype=bfloat16 stores the rounded weights and says so in config.json; transformers loads them as bf16."""
    model = random_apt(**SHAPES["llama-gqa-untied"])
    save_hf(model, tmp_path / "hf", registry=ProviderRegistry(), dtype=torch.bfloat16)
    stored = load_hf_weights(tmp_path / "hf")
    assert torch.equal(stored["model.embed_tokens.weight"], model.wte.weight.detach().to(torch.bfloat16))
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    hf = hf_load(tmp_path / "hf")
    assert hf.model.embed_tokens.weight.dtype == torch.bfloat16


def test_padded_vocabulary_rows_are_suppressed_in_generation(tmp_path: Path) -> None:
    """Rows past the tokenizer's ids are suppressed in generation_config.json: transformers' default greedy
    generation equals APT's with vocab_limit (what apt generate does)."""
    model = random_apt(**SHAPES["llama-gqa-untied"])  # 300 rows, byte tokenizer: 256 ids
    save_hf(model, tmp_path / "hf", registry=ProviderRegistry())
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["suppress_tokens"] == list(range(256, VOCAB))
    prompts = PROMPTS % 256
    hf = hf_load(tmp_path / "hf")
    theirs = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=20, pad_token_id=0)
    assert torch.equal(theirs, model.generate(prompts, 20, temperature=0.0, vocab_limit=256))
    assert not torch.equal(theirs, model.generate(prompts, 20, temperature=0.0))  # the padded rows would win


def test_gpt2_import_with_a_shorter_context(tmp_path: Path) -> None:
    """A GPT-2 checkpoint fine-tunes with a shorter block_size (the first position rows); a longer one is refused."""
    hf = hf_made("gpt2", tmp_path / "src")
    model = imported(tmp_path / "src", block_size=8)
    assert model.config.block_size == 8 and model.wpe is not None and model.wpe.weight.shape[0] == 8
    with torch.no_grad():
        diff = (model(PROMPTS).logits - hf(PROMPTS).logits).abs().max().item()
    assert diff < 1e-4
    with pytest.raises(ConfigError, match="learned positions for 32 tokens only") as info:
        resolve_init_from(APTConfig(model={"init_from": str(tmp_path / "src"), "block_size": 64}))
    assert info.value.key == "model.block_size"
