"""`--resume` on prepared (memory-mapped) data: the checkpoint plugin's mid-epoch resume is bitwise exact."""

from __future__ import annotations

import json
from pathlib import Path

from apt.data import prepare
from apt.plugins import PluginManager
from apt.train import Trainer
from ckpt_helpers import one_thread
from ckpt_helpers import same_weights
from ckpt_helpers import step_losses
from ckpt_helpers import tiny_config


def _corpus(folder: Path) -> Path:
    from pydoc_data.topics import topics

    folder.mkdir()
    with open(folder / "docs.jsonl", "w", encoding="utf-8") as f:
        for key in sorted(topics)[:30]:
            f.write(json.dumps({"text": topics[key]}) + "\n")
    return folder


def _trainer(config: object, run_dir: Path) -> Trainer:
    pm = PluginManager()
    pm.load_from_config(config)  # type: ignore[arg-type]
    return Trainer(config, pm, run_dir=run_dir)  # type: ignore[arg-type]


def test_resume_mid_epoch_on_prepared_bpe_shards_repeats_the_run_bitwise(tmp_path: Path) -> None:
    """Checkpoints of a run on BPE shards; resuming at step 4 (mid-epoch) ends with the same weights and losses."""
    data = tmp_path / "data"
    prepare([str(_corpus(tmp_path / "corpus"))], data, tokenizer="bpe", vocab_size=320, val_fraction=0.2,
            shard_tokens=8_000)  # fmt: skip
    ckpt = {"every_n_steps": 2, "keep_last": None}
    ref_run = tmp_path / "ref"
    ref = _trainer(tiny_config(["checkpoint"], checkpoint=ckpt, data={"path": str(data)}), ref_run)
    with one_thread():
        ref.fit()
        resumed_run = tmp_path / "resumed"
        resume = str(ref_run / "checkpoints" / "step00000004")
        resumed = _trainer(tiny_config(["checkpoint"], resume=resume, data={"path": str(data)}), resumed_run)
        resumed.fit()
    assert resumed.global_step == ref.global_step == 12
    assert same_weights(ref.model, resumed.model)
    ref_losses, new_losses = step_losses(ref_run), step_losses(resumed_run)
    assert sorted(new_losses) == list(range(5, 13))
    assert all(new_losses[s] == ref_losses[s] for s in new_losses)
    assert (resumed_run / "tokenizer.json").read_bytes() == (data / "tokenizer.json").read_bytes()
