"""``RetrievalPlugin``: the kNN-LM wired into the trainer's hooks, ``apt eval`` and ``apt generate``.

Lifecycle:

1. ``on_train_begin``: estimate the index's memory from the training split's size and
   refuse, before any step, an index that would not fit.
2. ``on_validation_end``: when a datastore for the current weights exists (in memory or in
   the run folder) or is due (the run's last validation; every epoch-end validation with
   ``build: epoch``; any validation outside training, as in ``apt eval``, when the run folder
   holds none), build or open it,
   score the trainer's own validation windows once, tune (lmbda, T) on their first half
   (first use of each datastore; the sweep goes to ``<folder>/sweep.csv``), and return
   ``retrieval/*`` metrics next to the core's ``val_bpb``.
3. ``on_train_end``: make sure the datastore matches the final weights (for ``apt eval`` and
   ``apt generate --retrieval``).
4. Checkpoints reference the datastore (folder, manifest hash, weights hash); they never copy it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from torch import Tensor
from torch import nn

from apt.errors import UsageError
from apt.model import GPT
from apt.model import unwrap_model
from apt.plugins import Plugin
from apt.plugins import TrainerView
from apt_plugin_retrieval._config import RetrievalConfig
from apt_plugin_retrieval._datastore import MANIFEST_FILE
from apt_plugin_retrieval._datastore import Datastore
from apt_plugin_retrieval._datastore import RetrievalError
from apt_plugin_retrieval._datastore import build_datastore
from apt_plugin_retrieval._datastore import check_memory
from apt_plugin_retrieval._datastore import plan_index
from apt_plugin_retrieval._datastore import sha256_file
from apt_plugin_retrieval._eval import best
from apt_plugin_retrieval._eval import halves
from apt_plugin_retrieval._eval import score_batches
from apt_plugin_retrieval._eval import sweep
from apt_plugin_retrieval._eval import write_sweep
from apt_plugin_retrieval._generate import KnnLogprobs
from apt_plugin_retrieval._knn import weights_sha256


if TYPE_CHECKING:
    from apt.core import ProviderRegistry
    from apt.data import PreparedDataset
    from apt.data import TextDataset
    from apt.plugins import HookManager


__all__ = ["SWEEP_FILE", "TUNED_FILE", "RetrievalPlugin"]

log = logging.getLogger("apt.retrieval")

#: the (lmbda, T) sweep table, in the datastore folder
SWEEP_FILE = "sweep.csv"
#: the chosen (lmbda, T) with the weights they were tuned for, in the datastore folder
TUNED_FILE = "tuned.json"


class RetrievalPlugin(Plugin):
    """A kNN-LM over a FAISS datastore of the model's training contexts.

    :param config: the validated ``retrieval:`` section (a :class:`RetrievalConfig`, a mapping, or ``None``).
    """

    name = "retrieval"
    version = "1.0.0"
    description = "kNN-LM: interpolates the model with a FAISS datastore of its training contexts."
    providers = ("logprobs:retrieval",)
    config_model = RetrievalConfig
    # its errors are refusals of bad input (a stale or corrupt datastore): they must stop the
    # command; the train-time builds catch their own errors so a finished run keeps its weights
    critical = True
    state_version = 1

    config: RetrievalConfig

    def __init__(self, config: RetrievalConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)  # validated once (by the plugin manager, or here from a mapping); read-only
        self.store: Datastore | None = None
        self.tuned: tuple[float, float] | None = None  # (lmbda, T) for self.store
        self._training = False
        self._scratch: Path | None = None  # the datastore folder of a trainer without a run folder

    def setup(self, registry: ProviderRegistry, hook_manager: HookManager) -> None:
        """Register ``logprobs:retrieval`` (see :meth:`generation_logprobs`)."""
        super().setup(registry, hook_manager)
        registry.register("logprobs", "retrieval", self.generation_logprobs)

    def teardown(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        super().teardown()

    # --- where things are ---------------------------------------------------------------

    def folder(self, trainer: TrainerView) -> Path:
        """``<run_dir>/<retrieval.folder>``; a temporary folder when the trainer writes no files."""
        if trainer.run_dir is not None:
            return Path(trainer.run_dir) / self.config.folder
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="apt-retrieval-"))
        return self._scratch / self.config.folder

    @staticmethod
    def _dataset(trainer: TrainerView) -> TextDataset | PreparedDataset:
        """The run's training data, which the datastore is built from (``apt train`` and ``apt eval`` have it)."""
        if trainer.data is None:
            raise UsageError(
                "retrieval: this command has no training data to build the datastore from; "
                "run apt train or apt eval on the run first"
            )
        return trainer.data

    @classmethod
    def _train_tokens(cls, trainer: TrainerView) -> Tensor:
        """The training split as one tensor; a prepared (sharded) folder is refused with the fix."""
        tokens = cls._dataset(trainer).train
        if not isinstance(tokens, Tensor):
            raise UsageError(
                f"retrieval: data.path {trainer.config.data.path!r} is a prepared folder; the datastore is built "
                "from text data only: point data.path at the text file, or drop retrieval from plugins"
            )
        return tokens

    @staticmethod
    def _tokenizer_id(data: TextDataset | PreparedDataset) -> dict[str, Any]:
        tok = data.tokenizer
        return {"repr": repr(tok), "vocab_size": int(tok.vocab_size)}

    # --- training -----------------------------------------------------------------------

    def on_train_begin(self, trainer: TrainerView, model: nn.Module) -> None:
        """Refuse, before the first step, a datastore index that would not fit in memory."""
        self._training = True
        if not trainer.is_global_zero:
            return
        n = len(self._train_tokens(trainer)) - 1
        dim = trainer.config.model.d_model
        spec = plan_index(n, dim, self.config)
        check_memory(spec, n, dim, self.config.memory_limit_mb, self.folder(trainer))

    def on_validation_end(
        self, trainer: TrainerView, model: nn.Module, metrics: dict[str, float]
    ) -> dict[str, float] | None:
        """``retrieval/val_bpb`` (all validation windows, tuned lmbda and T) and the held-out comparison.

        ``retrieval/heldout_val_bpb`` and ``retrieval/heldout_lm_bpb`` are the kNN-LM and the
        model alone on the second half of the windows, which tuning never saw. Bits per token
        are scaled to bits per byte by the core's own ratio (``val_bpb / val_loss * ln 2``:
        exactly 1 for the byte tokenizer).
        """
        if not trainer.is_global_zero:
            return None  # one process builds and scores (its own share of the windows)
        try:
            store = self._store_for(trainer, model)
        except (UsageError, OSError) as exc:
            if not self._training:
                raise  # apt eval: refuse bad input with one line
            # during training the run's weights come first: report and go on without retrieval
            log.error("retrieval: no datastore for this validation (%s)", exc)
            return None
        if store is None:
            return None
        return self._evaluate(trainer, model, store, _bytes_scale(metrics))

    def on_train_end(self, trainer: TrainerView, model: nn.Module) -> None:
        """Make the datastore match the final weights (the last validation usually did already)."""
        self._training = False
        if not trainer.is_global_zero:
            return
        wh = weights_sha256(model)
        if self.store is not None and self.store.weights_sha256 == wh:
            return
        self._safe_build(trainer, model)

    # --- datastore ----------------------------------------------------------------------

    def _due(self, trainer: TrainerView) -> bool:
        tc = trainer.config.training
        epoch_end = trainer.step_in_epoch >= tc.steps_per_epoch
        last = trainer.stop_reason is not None or (epoch_end and trainer.epoch + 1 >= tc.max_epochs)
        return last or (self.config.build == "epoch" and epoch_end)

    def _store_for(self, trainer: TrainerView, model: nn.Module) -> Datastore | None:
        """The datastore of the current weights: in memory, in the run folder, or built now if due."""
        wh = weights_sha256(model)
        if self.store is not None and self.store.weights_sha256 == wh:
            return self.store
        folder = self.folder(trainer)
        manifest = folder / MANIFEST_FILE
        if manifest.is_file():
            on_disk = _manifest_weights(manifest)
            if on_disk == wh:
                return self._open(trainer, folder)
            if not self._training:
                # apt eval of other weights (--weights stable): the run's datastore belongs to its
                # own weights; say so and leave the core's metrics to stand alone
                log.warning(
                    "retrieval: %s was built by other weights (sha256 %s) than this model's (%s); no retrieval "
                    "metrics (delete %s to rebuild it for these weights)", manifest, on_disk[:12], wh[:12], folder,
                )  # fmt: skip
                return None
        if self._training:
            return self._safe_build(trainer, model) if self._due(trainer) else None
        return self._build(trainer, model)

    def _open(self, trainer: TrainerView, folder: Path) -> Datastore:
        data = self._dataset(trainer)
        self.store = Datastore.open(
            folder, dim=trainer.config.model.d_model, tokenizer=self._tokenizer_id(data),
            memory_limit_mb=self.config.memory_limit_mb,
        )  # fmt: skip
        self.tuned = _read_tuned(folder / TUNED_FILE, self.store.weights_sha256)
        return self.store

    def _build(self, trainer: TrainerView, model: nn.Module) -> Datastore:
        from tqdm.auto import tqdm

        data = self._dataset(trainer)
        cfg = trainer.config
        folder = self.folder(trainer)
        tokens = self._train_tokens(trainer)
        n_windows = -(-(len(tokens) - 1) // (self.config.stride or cfg.model.block_size))
        with tqdm(
            total=n_windows, unit="window", desc="retrieval datastore", dynamic_ncols=True,
            disable=None if self.config.progress else True,
        ) as bar:  # fmt: skip
            self.store = build_datastore(
                folder, model, tokens, self.config,
                block_size=cfg.model.block_size, tokenizer=self._tokenizer_id(data),
                weights_sha256=weights_sha256(model), device=trainer.device,
                dtype=trainer.dtype, progress=bar.update,
            )  # fmt: skip
        self.tuned = None
        return self.store

    def _safe_build(self, trainer: TrainerView, model: nn.Module) -> Datastore | None:
        """A build during training: a failure is logged, never raised (the run's weights come first)."""
        try:
            return self._build(trainer, model)
        except (UsageError, OSError, RuntimeError) as exc:
            log.error("retrieval: the datastore could not be built (%s); the run goes on without it", exc)
            return None

    # --- evaluation ---------------------------------------------------------------------

    def _evaluate(
        self, trainer: TrainerView, model: nn.Module, store: Datastore, scale: float = 1.0
    ) -> dict[str, float]:
        from apt.train import bits_per_byte

        cfg = self.config
        scored = score_batches(
            model, list(trainer.val_batches), store, k=cfg.k, key=cfg.key, recompute=cfg.recompute_distances,
            device=trainer.device, dtype=trainer.dtype,
        )  # fmt: skip
        if self.tuned is None:
            if cfg.tune:
                rows = sweep(scored, cfg.lambdas, cfg.temperature_scales)
                write_sweep(rows, store.folder / SWEEP_FILE)
                chosen = best(rows)
                self.tuned = (chosen.lmbda, chosen.temperature)
            else:
                self.tuned = (cfg.lmbda, cfg.temperature)
            _write_tuned(store.folder / TUNED_FILE, self.tuned, store.weights_sha256)
        lam, temp = self.tuned
        _, held = halves(len(scored.targets))
        return {
            "retrieval/val_bpb": bits_per_byte(scored.batch_mean_nll(lam, temp)) * scale,
            "retrieval/heldout_val_bpb": bits_per_byte(scored.batch_mean_nll(lam, temp, held)) * scale,
            "retrieval/heldout_lm_bpb": bits_per_byte(scored.batch_mean_nll(0.0, temp, held)) * scale,
            "retrieval/lambda": lam,
            "retrieval/temperature": temp,
            "retrieval/hit_rate": scored.hit_rate(),
            "retrieval/keys": float(store.size),
            "retrieval/search_ms_per_token": 1000.0 * scored.search_s / max(scored.tokens, 1),
            "retrieval/build_s": float(store.manifest.get("build_s", 0.0)),
        }

    # --- generation ---------------------------------------------------------------------

    def generation_logprobs(self, model: nn.Module, run_dir: str | Path) -> KnnLogprobs:
        """The ``logprobs:retrieval`` provider: a :class:`KnnLogprobs` over ``run_dir``'s datastore.

        :raises RetrievalError: no datastore, or one built by other weights than ``model``'s.
        """
        folder = Path(run_dir) / self.config.folder
        inner = unwrap_model(model)
        d_model = inner.config.d_model if isinstance(inner, GPT) else None  # another model: no width check
        store = Datastore.open(folder, dim=d_model, memory_limit_mb=self.config.memory_limit_mb)
        wh = weights_sha256(model)
        if store.weights_sha256 != wh:
            raise RetrievalError(
                f"{store.manifest_path}: the datastore was built by other weights (sha256 {store.weights_sha256[:12]}) "
                f"than the model being sampled ({wh[:12]}); sample the run's own weights, or delete {folder} and "
                "rebuild it (apt eval) for these",
                path=store.manifest_path,
            )
        lam, temp = _read_tuned(folder / TUNED_FILE, wh) or (self.config.lmbda, self.config.temperature)
        return KnnLogprobs(
            model, store, k=self.config.k, lmbda=lam, temperature=temp, key=self.config.key,
            recompute=self.config.recompute_distances,
        )  # fmt: skip

    # --- state --------------------------------------------------------------------------

    def on_save_checkpoint(self) -> dict[str, Any]:
        """A reference to the datastore (folder, manifest and weights hashes) and the tuned (lmbda, T); no data."""
        if self.store is None:
            return {"datastore": None, "tuned": None}
        return {
            "datastore": {
                "folder": str(self.store.folder),
                "manifest_sha256": sha256_file(self.store.manifest_path),
                "weights_sha256": self.store.weights_sha256,
            },
            "tuned": list(self.tuned) if self.tuned is not None else None,
        }

    def on_load_checkpoint(self, state: Any) -> None:
        """Refuse a resume whose referenced datastore was rebuilt by other weights since the save."""
        ref = state.get("datastore") if isinstance(state, dict) else None
        if not ref:
            return
        try:
            manifest = Path(ref["folder"]) / MANIFEST_FILE
            expected, weights = str(ref["manifest_sha256"]), str(ref["weights_sha256"])
        except (KeyError, TypeError) as exc:
            raise RetrievalError(f"the retrieval plugin's checkpoint state is malformed ({exc!r})") from None
        if not manifest.is_file():
            log.info("retrieval: the checkpoint's datastore %s is gone; it is rebuilt when due", manifest.parent)
            return
        if sha256_file(manifest) != expected:
            raise RetrievalError(
                f"{manifest}: the datastore was rebuilt by other weights (sha256 {_manifest_weights(manifest)[:12]}) "
                f"since this checkpoint was saved with it (weights {weights[:12]}); delete {manifest.parent} "
                "(it is rebuilt when due) or resume from the checkpoint saved with it",
                path=manifest,
            )


def _bytes_scale(metrics: dict[str, float] | None) -> float:
    """Tokens per byte of the validation windows, as the core applied it to ``val_bpb``."""
    from apt.train import bits_per_byte

    if not metrics or "val_loss" not in metrics or "val_bpb" not in metrics:
        return 1.0
    bits = bits_per_byte(float(metrics["val_loss"]))
    return float(metrics["val_bpb"]) / bits if bits > 0 else 1.0


def _manifest_weights(manifest: Path) -> str:
    try:
        return str(json.loads(manifest.read_text(encoding="utf-8"))["weights_sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RetrievalError(
            f"{manifest}: not a datastore manifest ({exc}); delete {manifest.parent} to rebuild it", path=manifest
        ) from None


def _read_tuned(path: Path, weights: str) -> tuple[float, float] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["weights_sha256"] == weights:
            return float(data["lmbda"]), float(data["temperature"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _write_tuned(path: Path, tuned: tuple[float, float], weights: str) -> None:
    payload = {"lmbda": tuned[0], "temperature": tuned[1], "weights_sha256": weights}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
