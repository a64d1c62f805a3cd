"""Hugging Face folders: :func:`save_hf` writes one, :func:`resolve_init_from` and :func:`init_weights` read one.

A folder written by :func:`save_hf` loads, with no network, as
``transformers.AutoModelForCausalLM.from_pretrained(DIR)`` and
``AutoTokenizer.from_pretrained(DIR)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch import nn

from apt.errors import ConfigError
from apt.errors import UsageError
from apt.interop._hf import HFBlockConverter
from apt.interop._hf import apt_to_hf
from apt.interop._hf import architecture_of
from apt.interop._hf import hf_config
from apt.interop._hf import hf_to_apt
from apt.interop._hf import model_fields_from_hf
from apt.interop._tokenizer import token_count
from apt.interop._tokenizer import write_tokenizer_files


__all__ = [
    "DEFAULT_MAX_SHARD_BYTES",
    "hf_converters",
    "init_weights",
    "load_hf_weights",
    "resolve_init_from",
    "save_hf",
]

#: Weights beyond this many bytes go into several ``model-0000k-of-0000n.safetensors`` files.
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3

#: The ``model`` fields that describe the network's shape (what ``init_from`` fixes).
SHAPE_FIELDS = (
    "vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "bias", "attention", "ffn",
    "norm", "position", "rope_theta", "norm_eps", "tie_embeddings",
)  # fmt: skip


def hf_converters(registry: Any) -> list[HFBlockConverter]:
    """One instance of every ``hf_ffn`` provider in ``registry`` (plugins register them)."""
    if "hf_ffn" not in registry.kinds():
        return []
    return [registry.build("hf_ffn", name) for name in registry.list_providers("hf_ffn")]


def save_hf(
    model: Any,
    out: Path,
    *,
    registry: Any,
    tokenizer_json: Path | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    dtype: torch.dtype = torch.float32,
) -> str:
    """Write ``model`` as a Hugging Face folder ``out`` (created; it must not hold files yet).

    Files: ``config.json``, ``generation_config.json``, ``model.safetensors`` (or shards plus
    ``model.safetensors.index.json`` past ``max_shard_bytes``), ``tokenizer.json``,
    ``tokenizer_config.json`` and ``special_tokens_map.json``.

    :param tokenizer_json: the run's ``tokenizer.json`` (a BPE); None writes the byte tokenizer.
    :param dtype: the stored floating-point type (``config.json``'s ``dtype``); fp32 keeps the
        weights exactly.
    :returns: the architecture (``"gpt2"``, ``"llama"`` or a converter's, e.g. ``"mixtral"``).
    :raises ConfigError: a part of the model that has no Hugging Face counterpart, named.
    """
    from safetensors.torch import save_file

    arch, converter = architecture_of(model, hf_converters(registry))
    config = hf_config(model, arch, converter)
    weights = apt_to_hf(model, arch, converter)  # before any file: a refusal writes nothing
    if tokenizer_json is not None:
        n_tokens = token_count(json.loads(tokenizer_json.read_text(encoding="utf-8")))
        if n_tokens > model.wte.num_embeddings:
            raise UsageError(
                f"{str(tokenizer_json)!r} uses {n_tokens} token ids but the model has {model.wte.num_embeddings} "
                "(model.vocab_size); export the tokenizer the run trained with"
            )
    weights = {name: t.to(dtype) if t.is_floating_point() else t for name, t in weights.items()}
    config["dtype"] = str(dtype).removeprefix("torch.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {str(out)!r} exists and is not an empty folder; give a new folder")
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, t in weights.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map: dict[str, str] = {}
        for k, shard in enumerate(shards, start=1):
            fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / fname), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, fname))
        total = sum(t.numel() * t.element_size() for t in weights.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    n_tokens = write_tokenizer_files(out, tokenizer_json, model_max_length=int(model.config.block_size))
    generation: dict[str, Any] = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    vocab = int(model.wte.num_embeddings)
    if n_tokens < vocab:
        # rows that pad the vocabulary are no tokens: generate() never picks them (apt generate's vocab_limit)
        generation["suppress_tokens"] = list(range(n_tokens, vocab))
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    return arch


# --- reading ------------------------------------------------------------------------------


def load_hf_weights(folder: Path) -> dict[str, Tensor]:
    """Every tensor of a Hugging Face folder: ``model.safetensors`` or the shards its index lists."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    try:
        if index.is_file():
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        out: dict[str, Tensor] = {}
        for name in files:
            out.update(load_file(str(folder / name)))
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise ConfigError(
            f"model.init_from {str(folder)!r}: cannot read its safetensors weights ({exc}); give a folder written "
            "by save_pretrained or apt export (pytorch_model.bin is not read: it would unpickle)",
            key="model.init_from",
        ) from None
    return out


def _source(path: str) -> tuple[str, Path, dict[str, Any]]:
    """``(kind, folder, shape fields)``: kind is ``"hf"`` (config.json) or ``"apt"`` (config.yaml)."""
    folder = Path(path).expanduser()
    if (folder / "config.json").is_file():
        try:
            cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model.init_from: cannot read {str(folder / 'config.json')!r}: {exc}") from None
        return "hf", folder, model_fields_from_hf(cfg, repr(str(folder)))
    if (folder / "config.yaml").is_file():
        from apt.core import APTConfig

        source = APTConfig.from_yaml(folder / "config.yaml").model
        return "apt", folder, {name: getattr(source, name) for name in SHAPE_FIELDS}
    raise ConfigError(
        f"model.init_from {str(folder)!r} is neither a Hugging Face folder (config.json) nor an APT run "
        "(config.yaml); give a local folder (hub names are not downloaded)",
        key="model.init_from",
    )


def resolve_init_from(config: Any) -> Any:
    """``config`` with the ``model`` shape of ``model.init_from`` (unchanged when it is None).

    Shape fields the configuration leaves at their defaults are taken from the source; one it
    sets to another value than the source's is a ConfigError naming ``model.<field>``.
    (Defaults, not "unset": a configuration that went through ``--set`` has every field set.)
    ``block_size`` is bounded by a learned position table (GPT-2: a shorter context keeps its
    first rows); with RoPE the run chooses its context. The source's ``tokenizer.json``
    becomes ``data.tokenizer_path`` unless ``data.tokenizer`` or ``data.tokenizer_path`` is set.
    """
    mc = config.model
    if mc.init_from is None:
        return config
    kind, folder, fields = _source(mc.init_from)
    longest = fields.pop("block_size", None)
    if fields.get("position") == "learned":
        # a learned table fixes the longest context; a shorter one uses its first rows
        if mc.block_size == type(mc).model_fields["block_size"].default and longest is not None:
            fields["block_size"] = longest
        elif longest is not None and mc.block_size > longest:
            raise ConfigError(
                f"model.block_size is {mc.block_size} but model.init_from {str(folder)!r} has learned positions "
                f"for {longest} tokens only; set model.block_size to at most {longest}",
                key="model.block_size",
            )
    defaults = type(mc).model_fields
    for name, value in fields.items():
        mine = getattr(mc, name)
        if mine != value and mine != defaults[name].default:
            raise ConfigError(
                f"model.{name} is {mine!r} but model.init_from {str(folder)!r} has {value!r}; "
                f"remove model.{name} from the config or set it to {value!r}",
                key=f"model.{name}",
            )
    model = type(mc).model_validate({**mc.model_dump(), **fields})
    update: dict[str, Any] = {"model": model}
    # the source's tokenizer, unless the data section names one (a prepared data.path brings its own, and
    # the data loader refuses one that differs from data.tokenizer_path)
    dc = config.data
    if (folder / "tokenizer.json").is_file() and dc.tokenizer is None and dc.tokenizer_path is None:
        update["data"] = dc.model_copy(update={"tokenizer_path": str(folder / "tokenizer.json")})
    return config.model_copy(update=update)


def init_weights(model: nn.Module, config: Any, registry: Any) -> dict[str, Tensor]:
    """The weights of ``config.model.init_from`` as a state dict for ``model`` (built from the resolved config).

    Load them with :func:`apt.train.load_weights`, which re-ties a tied head. A Hugging Face
    FFN the core does not have (Mixtral's sparse block) is converted by the ``hf_ffn``
    provider whose ``architecture`` is the checkpoint's ``model_type``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    kind, folder, _ = _source(config.model.init_from)
    if kind == "apt":
        path = folder / "model.safetensors"
        try:
            weights = load_file(str(path))
        except (OSError, SafetensorError) as exc:
            raise ConfigError(
                f"model.init_from: cannot read {str(path)!r} ({exc}); give a run that finished", key="model.init_from"
            ) from None
        if "wpe.weight" in weights:  # a shorter context than the source's keeps the first positions
            weights["wpe.weight"] = weights["wpe.weight"][: config.model.block_size]
        return weights
    cfg: Mapping[str, Any] = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    arch = cfg["model_type"]
    converter = None
    if arch not in ("gpt2", "llama"):
        found = [c for c in hf_converters(registry) if c.architecture == arch]
        if not found:
            raise ConfigError(
                f"model.init_from {str(folder)!r} is a {arch} checkpoint, and no loaded plugin converts its blocks "
                f"(an hf_ffn provider for {arch!r}); for mixtral add plugins: [moe] (pip install apt-plugin-moe)",
                key="plugins",
            )
        converter = found[0]
        blocks = getattr(model, "blocks", [])
        missing = [i for i, b in enumerate(blocks) if not converter.claims(b.ffn)]
        if missing:
            raise ConfigError(
                f"model.init_from {str(folder)!r} is a {arch} checkpoint with a sparse block in every layer, but "
                f"blocks {missing} have a dense FFN; configure the plugin to convert every block (moe.layers: all)",
                key="model.init_from",
            )
    return hf_to_apt(load_hf_weights(folder), cfg, model, converter)
