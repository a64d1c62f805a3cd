"""APTConfig: the run's whole configuration, validated with pydantic v2.

Sections ``model``, ``training``, ``data`` and ``run`` belong to core and reject unknown
keys. ``plugins`` / ``disable_plugins`` choose plugins, ``schedules`` enables them at a
boundary and anneals parameters. Every other top-level key is a plugin's section
(``moe:``, ``align:`` ...); it is kept as a plain mapping here and validated by that
plugin's own ``config_model`` when the plugin loads (see :meth:`PluginManager.load`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from typing import Literal

import yaml
from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import ValidationError
from pydantic import field_validator
from pydantic import model_validator

from apt.errors import ConfigError


__all__ = [
    "APTConfig",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TrainingConfig",
    "config_error_from_validation",
    "did_you_mean",
]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """The GPT's shape and the providers it is built from."""

    vocab_size: int | None = Field(
        None,
        gt=0,
        description="Rows of the token embedding; None follows the tokenizer, rounded up to a multiple of 64 "
        "(256 for the byte tokenizer).",
    )
    block_size: int = Field(128, gt=0, description="Context length in tokens.")
    n_layer: int = Field(4, gt=0, description="Number of transformer blocks.")
    n_head: int = Field(4, gt=0, description="Attention heads per block.")
    d_model: int = Field(128, gt=0, description="Width of the residual stream.")
    d_ff: int | None = Field(None, gt=0, description="Hidden width of the FFN; None means 4 * d_model.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: bool = Field(False, description="Bias in linear layers and norms.")
    attention: str = Field("causal", description="Provider of kind 'attention'.")
    ffn: str = Field("gelu", description="Provider of kind 'ffn' ('gelu', 'swiglu', or a plugin's).")
    norm: str = Field("layernorm", description="Provider of kind 'norm' ('layernorm', 'rmsnorm').")
    tie_embeddings: bool = Field(True, description="Share the token embedding with the output head.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.d_model % self.n_head:
            raise ValueError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_head ({self.n_head}); change one of them"
            )
        return self

    @property
    def ffn_hidden(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def vocab_rows(self) -> int:
        """``vocab_size``, or the byte tokenizer's 256 while it is unset (the trainer sets it from the tokenizer)."""
        return self.vocab_size if self.vocab_size is not None else 256


class TrainingConfig(_Section):
    """The optimisation loop."""

    seed: int = Field(1337, ge=0, lt=2**63, description="Seeds every generator of the run.")
    max_epochs: int = Field(2, gt=0)
    steps_per_epoch: int = Field(200, gt=0, description="Optimizer steps per epoch.")
    batch_size: int = Field(16, gt=0, description="Sequences per micro-batch (per process).")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    optimizer: str = Field("adamw", description="Provider of kind 'optimizer'.")
    lr: float = Field(3e-3, gt=0)
    min_lr: float = Field(3e-4, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = Field((0.9, 0.95), description="Adam's betas (SGD's momentum is the first).")
    lr_scheduler: str = Field("cosine", description="Provider of kind 'lr_scheduler'.")
    warmup_steps: int = Field(20, ge=0)
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the global grad norm; None turns clipping off.")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1' ...")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 autocast on CUDA.")
    val_interval: int = Field(100, gt=0, description="Validate every N steps (and at each epoch end).")
    val_batches: int = Field(8, gt=0)
    log_interval: int = Field(10, gt=0, description="Write metrics.jsonl every N steps.")
    plugin_errors: Literal["isolate", "raise"] = Field(
        "isolate", description="'raise' makes every plugin critical: any hook error stops the run."
    )
    resume: str | None = Field(None, description="'latest' or a checkpoint path (needs a checkpoint plugin).")
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="Parallelism under torchrun: 'ddp' replicates the model; 'fsdp' shards it per block (FSDP2).",
    )
    ddp_find_unused: Literal["auto"] | bool = Field(
        "auto",
        description="DDP's find_unused_parameters; 'auto' turns it on when plugins changed the model's parameters.",
    )
    compile: bool = Field(False, description="torch.compile the model.")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError(f"each of training.betas must be in [0, 1), got {list(value)}")
        return value

    @property
    def total_steps(self) -> int:
        return self.max_epochs * self.steps_per_epoch


class DataConfig(_Section):
    """Where the text comes from."""

    path: str | None = Field(
        None,
        description="A folder made by `apt data prepare`, a UTF-8 text file, or a folder of .txt files; "
        "None = the embedded corpus.",
    )
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="Share of text files kept for validation.")
    tokenizer: str | None = Field(
        None,
        description="Provider of kind 'tokenizer' ('byte', 'bpe'); None: a prepared folder's own, else 'byte'.",
    )
    tokenizer_path: str | None = Field(None, description="A tokenizer.json to load (else bpe trains on the text).")
    tokenizer_vocab_size: int | None = Field(
        None, gt=257, description="Vocabulary of a BPE trained on the text (None: 4096)."
    )


class RunConfig(_Section):
    """Where the run's files go."""

    name: str | None = Field(None, description="Run folder name; None derives one from the time.")
    dir: str = Field("runs", description="Parent folder of run folders.")


class APTConfig(BaseModel):
    """The whole configuration of a run.

    ``APTConfig(plugins=['my_plugin'])`` works as in the original; so does
    ``APTConfig.from_yaml('config.yaml')``. Unknown keys inside core sections are
    rejected with their path and a suggestion.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    plugins: list[str] | None = Field(None, description="None: every installed plugin; a list: exactly those.")
    disable_plugins: list[str] = Field(default_factory=list)
    schedules: dict[str, Any] = Field(default_factory=dict)

    @field_validator("plugins", "disable_plugins", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise config_error_from_validation(exc, type(self)) from None

    # --- plugin sections --------------------------------------------------------------

    @classmethod
    def core_sections(cls) -> tuple[str, ...]:
        return tuple(cls.model_fields)

    def plugin_sections(self) -> dict[str, Any]:
        """Every top-level key that is not a core section (plugin configs)."""
        return dict(self.model_extra or {})

    def section(self, name: str) -> dict[str, Any]:
        """A plugin's raw config section (``{}`` when absent)."""
        value = (self.model_extra or {}).get(name)
        if value is None:
            return {}
        if isinstance(value, BaseModel):
            return value.model_dump()
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"config section {name!r} must be a mapping of options, got {type(value).__name__} {value!r}",
                key=name,
            )
        return dict(value)

    def check_sections(self, known_plugins: Iterable[str]) -> None:
        """Reject top-level keys that are neither core sections nor known plugin names."""
        known = set(known_plugins)
        for key in self.plugin_sections():
            if key not in known:
                hint = did_you_mean(key, [*self.core_sections(), *known])
                raise ConfigError(
                    f"unknown config key {key!r}{hint}; top-level keys are the sections "
                    f"{', '.join(self.core_sections())} or the name of an installed plugin "
                    f"({', '.join(sorted(known)) or 'none installed'})",
                    key=key,
                )

    # --- files and overrides ----------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> APTConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a configuration must be a mapping, got {type(data).__name__}")
        return cls(**dict(data))

    @classmethod
    def from_yaml(cls, path: str | Path) -> APTConfig:
        """Read a YAML file; errors name the file (and the line, for syntax errors)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config file {str(path)!r}{where} is not valid YAML: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}", key=exc.key) from None

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain data (plugin sections included)."""
        return self.model_dump(mode="json")

    def to_yaml(self, path: str | Path | None = None) -> str:
        """Serialize to YAML; write it to ``path`` when given. Round-trips through from_yaml."""
        text: str = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def with_overrides(self, overrides: Iterable[str]) -> APTConfig:
        """A copy with dotted overrides applied: ``["training.max_epochs=3", "moe.top_k=1"]``.

        Values are parsed as YAML scalars/lists (``3``, ``0.1``, ``true``, ``[a, b]``), except
        that a core key holding text (``run.name=2026-11-26``, ``data.path=0123``) keeps the
        text as written, and so does any value YAML would read as a date.
        """
        data = self.to_dict()
        for item in overrides:
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ConfigError(f"override {item!r} must look like KEY=VALUE, e.g. training.max_epochs=3")
            try:
                value = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError:
                value = raw
            if (
                value is not None
                and not isinstance(value, str)
                and (_is_text_field(type(self), key) or _is_date(value))
            ):
                value = raw.strip()
            _set_dotted(data, key, value, type(self))
        return type(self).from_dict(data)


def _is_date(value: Any) -> bool:
    import datetime

    return isinstance(value, datetime.date)  # datetime is a date too


def _is_text_field(cls: type[BaseModel], key: str) -> bool:
    """Whether ``key`` names a core field typed ``str`` (or ``str | None``)."""
    model: Any = cls
    parts = key.split(".")
    for part in parts[:-1]:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return False
        model = field.annotation
    field = model.model_fields.get(parts[-1]) if isinstance(model, type) and issubclass(model, BaseModel) else None
    return field is not None and field.annotation in (str, str | None)


def _set_dotted(data: dict[str, Any], key: str, value: Any, cls: type[APTConfig]) -> None:
    parts = key.split(".")
    node: Any = data
    in_plugin_section = parts[0] not in cls.model_fields
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None and in_plugin_section:
            child = node[part] = {}  # a plugin section (or a part of one) that was not in the file yet
        if not isinstance(child, dict):
            path = ".".join(parts[: i + 1])
            hint = did_you_mean(part, node.keys()) if child is None else ""
            raise ConfigError(f"cannot set {key!r}: {path!r} is not a section{hint}", key=key)
        node = child
    node[parts[-1]] = value


def config_error_from_validation(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> ConfigError:
    """Turn pydantic's error into one line naming the key's dotted path and the fix."""
    messages = []
    first_key = None
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join([prefix, *loc] if prefix else loc)
        first_key = first_key or key
        if err["type"] == "extra_forbidden":
            fields = _fields_at(model, loc[:-1])
            hint = did_you_mean(loc[-1], fields)
            allowed = f"; allowed: {', '.join(fields)}" if fields else ""
            messages.append(f"unknown config key {key!r}{hint}{allowed}")
        elif err["type"] == "value_error" or isinstance(err.get("input"), Mapping):
            # a check across fields: its own message names the keys; the whole section is noise
            messages.append(f"config key {key!r}: {err['msg'].removeprefix('Value error, ')}")
        else:
            messages.append(f"config key {key!r}: {err['msg']} (got {err.get('input')!r})")
    return ConfigError("; ".join(messages), key=first_key)


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return list(getattr(current, "model_fields", {}))
