"""The whole flow on a small corpus: train -> build -> validate (as apt eval does) -> generate."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from apt.cli import main
from apt.core import APTConfig
from apt.train import load_weights
from apt_plugin_retrieval import MANIFEST_FILE
from apt_plugin_retrieval import SWEEP_FILE
from apt_plugin_retrieval import TUNED_FILE
from apt_plugin_retrieval import Datastore
from apt_plugin_retrieval import weights_sha256
from retrieval_helpers import make_trainer
from retrieval_helpers import records
from retrieval_helpers import retrieval_config


def test_training_logs_retrieval_val_bpb_beside_val_bpb(trained_run: Path) -> None:
    """The last validation builds the datastore and logs retrieval/* in the same record as val_bpb."""
    last = records(trained_run)[-1]
    assert {"val_bpb", "retrieval/val_bpb", "retrieval/heldout_val_bpb", "retrieval/heldout_lm_bpb"} <= set(last)
    assert math.isfinite(last["retrieval/val_bpb"]) and last["retrieval/keys"] > 0
    # mid-run validations came before the datastore existed: no retrieval metric there
    assert not any("retrieval/val_bpb" in r for r in records(trained_run)[:-1])
    folder = trained_run / "retrieval"
    assert (folder / MANIFEST_FILE).is_file() and (folder / SWEEP_FILE).is_file() and (folder / TUNED_FILE).is_file()
    rows = (folder / SWEEP_FILE).read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("lambda,") and len(rows) == 1 + 5 * 5
    assert last["retrieval/lambda"] in (0.05, 0.1, 0.25, 0.5, 0.75)


def test_lambda_zero_reproduces_the_models_bpb_exactly(tmp_path: Path, corpus_path: Path) -> None:
    """With lmbda = 0 the kNN-LM's bpb is the core's val_bpb, bit for bit, on the same windows."""
    config = retrieval_config(corpus_path, tune=False, lmbda=0.0)
    make_trainer(config, tmp_path / "run").fit()
    last = records(tmp_path / "run")[-1]
    assert last["retrieval/val_bpb"] == last["val_bpb"]


def _validate_again(run_dir: Path) -> dict[str, float]:
    """What `apt eval RUN_DIR` does: the run's config and plugins, its final weights, Trainer.validate()."""
    config = APTConfig.from_yaml(run_dir / "config.yaml")
    trainer = make_trainer(config, run_dir)
    trainer.setup()
    assert trainer.model is not None
    load_weights(trainer.model, run_dir / "model.safetensors")
    return trainer.validate()


def test_validation_without_training_uses_the_run_folders_datastore(trained_run: Path) -> None:
    """Trainer.validate() of a fresh trainer (apt eval) loads the datastore and reproduces the run's numbers."""
    last = records(trained_run)[-1]
    metrics = _validate_again(trained_run)
    assert metrics["val_bpb"] == last["val_bpb"]
    assert metrics["retrieval/val_bpb"] == pytest.approx(last["retrieval/val_bpb"], abs=1e-6)
    assert metrics["retrieval/lambda"] == last["retrieval/lambda"]


def test_validation_without_training_builds_a_missing_datastore(tmp_path: Path, corpus_path: Path) -> None:
    """A run trained without a datastore folder gets one built when validated (apt eval)."""
    run_dir = tmp_path / "run"
    make_trainer(retrieval_config(corpus_path), run_dir).fit()
    import shutil

    shutil.rmtree(run_dir / "retrieval")
    metrics = _validate_again(run_dir)
    assert "retrieval/val_bpb" in metrics and (run_dir / "retrieval" / MANIFEST_FILE).is_file()


def test_generate_with_retrieval(
    trained_run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """apt generate --retrieval mixes the kNN-LM into every sampling step (and only with the flag)."""
    from apt_plugin_retrieval import KnnLogprobs

    calls: list[int] = []
    original = KnnLogprobs.__call__

    def counting(self: KnnLogprobs, idx: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
        calls.append(idx.size(1))
        return original(self, idx, logprobs)

    monkeypatch.setattr(KnnLogprobs, "__call__", counting)
    assert main(["generate", "--run", str(trained_run), "--prompt", "The ", "--max-new-tokens", "24",
                 "--temperature", "0", "--retrieval"]) == 0  # fmt: skip
    with_knn = capsys.readouterr().out
    assert main(["generate", "--run", str(trained_run), "--prompt", "The ", "--max-new-tokens", "24",
                 "--temperature", "0"]) == 0  # fmt: skip
    without = capsys.readouterr().out
    assert with_knn.startswith("The ") and without.startswith("The ")
    assert len(calls) == 24 and calls[0] == len("The ")  # once per new token, none without --retrieval


def test_knn_logprobs_provider_mixes_the_datastore(trained_run: Path) -> None:
    """The provider's output is the mixture of the model's distribution with the datastore's vote."""
    from apt.cli._generate import load_run_model

    model, pm = load_run_model(trained_run)
    try:
        fn = pm.registry.build("logprobs", "retrieval", model=model, run_dir=trained_run)
        idx = torch.tensor([list(b"The module ")])
        logp = torch.log_softmax(model(idx).logits[:, -1, :].float(), dim=-1)
        mixed = fn(idx, logp)
        fn.close()
        assert mixed.shape == logp.shape
        assert torch.allclose(mixed.exp().sum(-1), torch.ones(1), atol=1e-5)
        assert not torch.allclose(mixed, logp)
    finally:
        pm.teardown_all()


def test_generate_refuses_a_datastore_of_other_weights(
    tmp_path: Path, trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A datastore built by other weights is refused with one line naming the manifest (exit 2)."""
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(trained_run, run_dir)
    config = APTConfig.from_yaml(run_dir / "config.yaml")
    trainer = make_trainer(config, None)
    trainer.setup()
    assert trainer.model is not None
    from apt.train import save_weights

    save_weights(trainer.model, run_dir / "model.safetensors")  # the untrained weights
    assert weights_sha256(trainer.model) != Datastore.open(run_dir / "retrieval").weights_sha256
    code = main(["generate", "--run", str(run_dir), "--max-new-tokens", "4", "--retrieval"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(run_dir / "retrieval" / MANIFEST_FILE) in err and "other weights" in err


def test_generate_retrieval_without_the_plugin_says_how(
    tmp_path: Path, corpus_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--retrieval on a run trained without the plugin is one line naming the plugin to enable."""
    config = retrieval_config(corpus_path)
    config.plugins = []
    run_dir = tmp_path / "plain"
    make_trainer(config, run_dir).fit()
    code = main(["generate", "--run", str(run_dir), "--max-new-tokens", "4", "--retrieval"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "apt-plugin-retrieval" in err and len(err.splitlines()) == 1


def test_a_bpe_run_compares_in_bits_per_byte(tmp_path: Path, corpus_path: Path) -> None:
    """Under a BPE tokenizer the datastore stores token ids and lambda=0 still gives the core's val_bpb."""
    config = retrieval_config(corpus_path, tune=False, lmbda=0.0)
    config.data.tokenizer = "bpe"
    config.data.tokenizer_vocab_size = 320
    make_trainer(config, tmp_path / "run").fit()
    last = records(tmp_path / "run")[-1]
    assert last["retrieval/val_bpb"] == pytest.approx(last["val_bpb"], rel=1e-6)
    manifest = Datastore.open(tmp_path / "run" / "retrieval").manifest
    assert manifest["tokenizer"]["vocab_size"] == 320 and "byte" not in manifest["tokenizer"]["repr"].lower()
