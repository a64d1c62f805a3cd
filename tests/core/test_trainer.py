"""The Trainer: hook order and arguments, loss terms, stop requests, model changes, determinism, resume."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from apt.core import ProviderRegistry
from apt.errors import PluginConflictError
from apt.errors import PluginHookError
from apt.errors import UsageError
from apt.model import GPT
from apt.model import MLP
from apt.plugins import Plugin
from apt.plugins.hookspecs import Hookspecs
from apt.testing import RecordingPlugin
from apt.testing import run_tiny_training
from apt.testing import tiny_config
from apt.train import load_weights
from torch import nn


def losses(run: Any) -> list[float]:
    return [c["loss"] for c in run.recorder.calls("on_step_end")]


# --- hooks ------------------------------------------------------------------------------

# One optimizer step with `grad_accum` micro-batches, as documented in apt.plugins.hookspecs.
STEP = r"on_step_begin (on_compute_loss on_backward_begin on_backward on_backward_end ){%d}on_after_backward " \
       r"on_before_optimizer_step on_optimizer_step on_step_end (on_validation_begin on_validation_end )?"  # fmt: skip


def test_every_hook_fires_in_the_documented_order() -> None:
    """The recorded sequence is model_built, train_begin, (epoch_begin, steps, val, epoch_end)*, train_end."""
    run = run_tiny_training(overrides=["training.grad_accum=2"])
    seq = " ".join(run.recorder.names()) + " "
    step = STEP % 2
    epoch = rf"on_epoch_begin ({step})+on_validation_begin on_validation_end on_epoch_end "
    pattern = rf"on_model_built on_train_begin ({epoch}){{2}}on_train_end on_save_checkpoint on_load_checkpoint "
    assert re.fullmatch(pattern, seq), seq
    names = run.recorder.names()
    assert names.count("on_step_end") == 8 and names.count("on_compute_loss") == 16
    # validation every 3 steps inside an epoch (step 3 of epoch 0, step 6 of epoch 1) plus each epoch end
    assert names.count("on_validation_end") == 4


def test_hook_arguments_are_the_documented_ones() -> None:
    """Each event receives exactly its hookspec's arguments, with the documented values."""
    run = run_tiny_training(overrides=["training.grad_accum=2"])
    rec, trainer = run.recorder, run.trainer
    for event, calls in {e: rec.calls(e) for e in set(rec.names())}.items():
        spec = [p for p in inspect.signature(getattr(Hookspecs, event)).parameters if p != "self"]
        for kwargs in calls:
            assert sorted(kwargs) == sorted(spec), event
            if "trainer" in kwargs:
                assert kwargs["trainer"] is trainer
            if "model" in kwargs:
                assert kwargs["model"] is trainer.model
    begin = rec.calls("on_step_begin")
    assert [c["step"] for c in begin] == list(range(8)) and [c["epoch"] for c in begin] == [0] * 4 + [1] * 4
    assert begin[0]["batch"][0].shape == (2 * 4, 32)  # (grad_accum * B, T)
    loss_calls = rec.calls("on_compute_loss")
    assert [c["micro_step"] for c in loss_calls[:4]] == [0, 1, 0, 1]
    first = loss_calls[0]
    assert first["batch"][0].shape == (4, 32) and first["outputs"].logits.shape == (4, 32, 256)
    assert first["outputs"].hidden.shape == (4, 32, 32) and first["loss"] is first["outputs"].loss
    # on_step_end: step is the step just finished; metrics carry what is logged
    end = rec.calls("on_step_end")[0]
    assert end["step"] == 0 and set(end["metrics"]) >= {"loss", "lr", "grad_norm"}
    assert rec.calls("on_epoch_end")[0]["metrics"].keys() >= {"train_loss", "val_loss", "val_bpb"}
    assert rec.calls("on_train_end")[0]["metrics"]["val_bpb"] == run.summary["val_bpb"]
    assert rec.calls("on_before_optimizer_step")[0]["optimizer"] is trainer.optimizer
    assert rec.calls("on_backward_begin")[0]["loss"].item() == pytest.approx(first["loss"].item() / 2)


def test_plugin_exception_fires_on_exception_and_stops() -> None:
    """A critical plugin's error stops the run as PluginHookError, after on_exception handlers ran."""

    class Boom(Plugin):
        name = "boom"
        critical = True

        def on_step_end(self, step: int, **kwargs: Any) -> None:
            if step == 2:
                raise RuntimeError("kaput")

    events: list[str] = []

    class Spy(Plugin):
        name = "spy"

        def on_exception(self, exception: BaseException, step: int, **kwargs: Any) -> None:
            events.append(f"{type(exception).__name__}@{step}")

    with pytest.raises(PluginHookError, match="boom.*kaput") as info:
        run_tiny_training(Boom, Spy, record=False)
    assert info.value.plugin == "boom"
    assert events == ["PluginHookError@3"]  # global_step: step 2 had finished


# --- loss terms ---------------------------------------------------------------------------


class WeightPenalty(Plugin):
    """Adds 0.5 * mean(wte^2) as the loss term 'l2'."""

    name = "penalty"

    def on_compute_loss(self, model: nn.Module, **kwargs: Any) -> dict[str, torch.Tensor]:
        return {"l2": 0.5 * model.wte.weight.pow(2).mean()}


def test_loss_term_reaches_the_loss_and_metrics(tmp_path: Path) -> None:
    """A plugin's term is added to the loss, trains the model and is logged as loss/<name>."""
    run = run_tiny_training(WeightPenalty, run_dir=tmp_path, overrides=["training.grad_accum=2"])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("loss/l2" in r for r in records)
    lm = [c["loss"].item() for c in run.recorder.calls("on_compute_loss")]
    first = records[0]
    # the logged loss is the mean over micro-batches of (LM loss + term)
    assert first["loss"] == pytest.approx((lm[0] + lm[1]) / 2 + first["loss/l2"], rel=1e-5)
    plain = run_tiny_training()
    assert not torch.equal(run.trainer.model.wte.weight, plain.trainer.model.wte.weight)


def test_clashing_loss_terms_name_both_plugins() -> None:
    """Two plugins returning the same term name is a PluginConflictError naming both."""

    class Other(WeightPenalty):
        name = "other_penalty"

    with pytest.raises(PluginConflictError, match="'l2'.*'penalty'.*'other_penalty'|'l2'.*'other_penalty'.*'penalty'"):
        run_tiny_training(WeightPenalty, Other, record=False)


def test_grad_accumulation_matches_a_bigger_batch() -> None:
    """grad_accum=2 x B=2 trains like B=4: each micro-batch loss is divided by grad_accum."""
    accum = run_tiny_training(overrides=["training.grad_accum=2", "training.batch_size=2"], round_trip=False)
    big = run_tiny_training(overrides=["training.batch_size=4"], round_trip=False)
    torch.testing.assert_close(torch.tensor(losses(accum)), torch.tensor(losses(big)), rtol=1e-5, atol=0)


# --- stop requests --------------------------------------------------------------------------


def stopper(plugin_name: str, at: int) -> type[Plugin]:
    class Stop(Plugin):
        name = plugin_name

        def on_step_end(self, trainer: Any, step: int, **kwargs: Any) -> None:
            if step == at:
                trainer.request_stop(f"enough at {step}", source=self.get_name())

    return Stop


def test_stop_requests_combine_and_end_the_run() -> None:
    """Stop requests are ORed, logged with their source, and end the run after that step's epoch-end work."""
    run = run_tiny_training(stopper("early", 1), stopper("late", 5))
    assert run.summary["steps"] == 2
    assert run.summary["stop_reason"] == "enough at 1 (from early)"
    names = run.recorder.names()
    assert names[-5:-2] == ["on_validation_end", "on_epoch_end", "on_train_end"]
    both = run_tiny_training(stopper("a", 2), stopper("b", 2), record=False)
    assert both.summary["steps"] == 3 and "(from a)" in both.summary["stop_reason"]
    assert "(from b)" in both.summary["stop_reason"]


# --- model changes ----------------------------------------------------------------------------


class Grower(Plugin):
    """At step 3 replaces block 0's FFN with a fresh, wider one and adds a gain; syncs the optimizer."""

    name = "grower"
    seen: dict[str, Any] = {}

    def on_step_begin(self, trainer: Any, model: GPT, step: int, **kwargs: Any) -> None:
        if step != 3:
            return
        old = model.blocks[0].ffn
        kept = model.blocks[1].ffn.c_fc.weight
        self.seen.update(old=list(old.parameters()), kept=kept,
                         kept_state=trainer.optimizer.state[kept]["exp_avg"].clone())  # fmt: skip
        model.blocks[0].ffn = MLP(32, 64, 0.0, False)
        model.gain = nn.Parameter(torch.ones(()))
        trainer.sync_optimizer()
        self.seen["new"] = [*model.blocks[0].ffn.parameters(), model.gain]
        self.seen["new_init"] = [p.detach().clone() for p in self.seen["new"]]


def test_model_change_mid_run_reaches_the_optimizer() -> None:
    """New parameters join the optimizer and train; removed ones leave; kept ones keep their state."""
    run = run_tiny_training(Grower, round_trip=False)
    opt, seen = run.trainer.optimizer, Grower.seen
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in seen["new"])
    assert not any(id(p) in in_opt or p in opt.state for p in seen["old"])
    decay = next(g for g in opt.param_groups if g["name"] == "decay")
    assert any(p is run.trainer.model.blocks[0].ffn.c_fc.weight for p in decay["params"])
    assert not any(p is run.trainer.model.gain for p in decay["params"])  # a scalar: no weight decay
    assert all(not torch.equal(p, p0) for p, p0 in zip(seen["new"][:1], seen["new_init"][:1], strict=True))
    assert opt.state[seen["new"][0]]["step"].item() == 5  # trained in steps 3..7
    assert opt.state[seen["kept"]]["step"].item() == 8  # its moments were kept through the sync


class Upcycle(Plugin):
    """Scheduled to switch on at step 4; on_enable swaps every FFN for a SwiGLU."""

    name = "upcycle"

    def on_enable(self, trainer: Any = None, epoch: int | None = None, step: int | None = None) -> None:
        if trainer is not None and trainer.model is not None:
            for block in trainer.model.blocks:
                block.ffn = trainer.registry.build("ffn", "swiglu", d_model=32, d_ff=48, dropout=0.0, bias=False)


def test_schedule_enables_a_plugin_that_changes_the_model() -> None:
    """A plugin enabled by the schedule mid-run changes the model; the trainer syncs the optimizer itself."""
    config = tiny_config(schedules={"enable_upcycle_at_step": 4})
    run = run_tiny_training(Upcycle, config=config, round_trip=False)
    model, opt = run.trainer.model, run.trainer.optimizer
    ffn_params = [p for b in model.blocks for p in b.ffn.parameters()]
    assert all(type(b.ffn).__name__ == "SwiGLU" for b in model.blocks)
    assert all(opt.state[p]["step"].item() == 4 for p in ffn_params)  # steps 4..7


# --- determinism and resume -------------------------------------------------------------------


def test_same_seed_same_losses_bitwise() -> None:
    """On CPU two runs with one seed give identical losses; another seed gives others."""
    a, b = run_tiny_training(round_trip=False), run_tiny_training(round_trip=False)
    assert losses(a) == losses(b)
    c = run_tiny_training(overrides=["training.seed=99"], round_trip=False)
    assert losses(c) != losses(a)


def test_resume_through_on_resume_is_exact() -> None:
    """A run stopped at step 3 and resumed from its state dict continues with the very same losses."""
    full = run_tiny_training(round_trip=False)
    part = run_tiny_training(stopper("halt", 2), round_trip=False)
    assert part.summary["steps"] == 3
    state = part.trainer.state_dict()
    assert state["counters"] == {"epoch": 0, "global_step": 3, "step_in_epoch": 3}

    class Resumer(RecordingPlugin):
        resume_state = state

    resumed = run_tiny_training(Resumer, overrides=["training.resume=latest"], round_trip=False, record=False)
    rec = resumed.plugin_manager.get_plugin("recorder")
    assert rec.names()[:4] == ["on_model_built", "on_resume", "on_load_checkpoint", "on_train_begin"]
    assert rec.calls("on_train_begin")[0]["step"] == 3
    tail = [c["loss"] for c in rec.calls("on_step_end")]
    assert tail == losses(full)[3:]


def test_a_state_taken_in_on_step_end_resumes_the_epoch_train_loss_exactly(state_saver: Any) -> None:
    """What a checkpoint plugin saves in on_step_end holds that step whole, its loss included."""
    full = run_tiny_training(round_trip=False)
    Saver, captured = state_saver("on_step_end", 1)

    run_tiny_training(Saver, round_trip=False)
    state = captured["state"]
    assert state["counters"]["step_in_epoch"] == 2 == len(state["epoch_losses"])

    class Resumer(RecordingPlugin):
        resume_state = state

    resumed = run_tiny_training(Resumer, overrides=["training.resume=latest"], round_trip=False, record=False)
    assert resumed.summary["train_loss"] == full.summary["train_loss"]


def test_a_refused_resume_names_the_shapes_and_leaves_the_run_folder_untouched(tmp_path: Path) -> None:
    """Resuming a checkpoint of another model width is a UsageError naming the tensors and shapes;
    the run folder it was aimed at keeps its config.yaml and metrics.jsonl byte for byte."""
    first = run_tiny_training(run_dir=tmp_path, round_trip=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}

    class Resumer(RecordingPlugin):
        resume_state = first.trainer.state_dict()

    with pytest.raises(UsageError, match=r"differ in shape \(.*: \(96, 32\) saved, \(144, 48\) in the model"):
        run_tiny_training(
            Resumer,
            overrides=["training.resume=latest", "model.d_model=48"],
            run_dir=tmp_path,
            round_trip=False,
            record=False,
        )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_resuming_into_the_same_folder_keeps_one_record_per_step(tmp_path: Path, state_saver: Any) -> None:
    """The first run's records after the checkpoint move to metrics.superseded.jsonl; metrics.jsonl then
    holds each step once, and its records after the checkpoint are the resumed run's."""
    Saver, captured = state_saver("on_step_end", 2)

    run_tiny_training(Saver, run_dir=tmp_path, round_trip=False)

    class Resumer(RecordingPlugin):
        resume_state = captured["state"]

    resumed = run_tiny_training(
        Resumer, overrides=["training.resume=latest"], run_dir=tmp_path, round_trip=False, record=False
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    tail = [c["loss"] for c in resumed.plugin_manager.get_plugin("recorder").calls("on_step_end")]
    assert [r["loss"] for r in records[3:]] == tail
    superseded = [json.loads(line) for line in (tmp_path / "metrics.superseded.jsonl").read_text().splitlines()]
    assert [r["step"] for r in superseded] == [4, 5, 6, 7, 8]


def test_resuming_at_the_end_of_the_last_epoch_only_finishes_the_run(tmp_path: Path, state_saver: Any) -> None:
    """A checkpoint from the last epoch's end (say the run died writing summary.json): the resumed run
    writes no second epoch-end record and reports the same summary."""
    Saver, captured = state_saver("on_epoch_end", 1)

    first = run_tiny_training(Saver, run_dir=tmp_path, round_trip=False)

    class Resumer(RecordingPlugin):
        resume_state = captured["state"]

    resumed = run_tiny_training(
        Resumer, overrides=["training.resume=latest"], run_dir=tmp_path, round_trip=False, record=False
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    for key in ("steps", "train_loss", "val_loss", "val_bpb"):
        assert resumed.summary[key] == first.summary[key], key
    assert "on_step_begin" not in resumed.plugin_manager.get_plugin("recorder").names()


def test_plugins_can_write_in_the_run_folder_from_on_model_built(tmp_path: Path) -> None:
    class Archive(Plugin):
        name = "archive"

        def on_model_built(self, trainer: Any, model: torch.nn.Module) -> None:
            folder = trainer.run_dir / "archive"
            folder.mkdir(exist_ok=True)
            (folder / "model.txt").write_text(str(model))

    run_tiny_training(Archive, run_dir=tmp_path / "run", round_trip=False)
    assert (tmp_path / "run" / "archive" / "model.txt").read_text().startswith("GPT(")


def test_a_line_cut_off_by_a_kill_is_set_aside_on_resume(tmp_path: Path) -> None:
    from apt.train._metrics import set_aside_records_after

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert set_aside_records_after(metrics, 2) == 1
    assert metrics.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
    assert (tmp_path / "metrics.superseded.jsonl").read_text() == '{"step": 3, "lo\n'


def test_resume_without_a_checkpoint_plugin_says_what_to_install() -> None:
    """training.resume with no plugin answering on_resume is a UsageError naming apt-plugin-checkpoint."""
    with pytest.raises(UsageError, match="apt-plugin-checkpoint"):
        run_tiny_training(overrides=["training.resume=latest"])


def test_state_dict_has_the_contract_keys() -> None:
    """state_dict holds everything the contract lists, with the recorder's state under its name."""
    run = run_tiny_training()
    assert run.state is not None
    assert set(run.state) >= {"model", "optimizer", "lr_scheduler", "grad_scaler", "rng", "data", "counters",
                              "config", "plugins", "plugin_manager", "fingerprint"}  # fmt: skip
    assert run.state["counters"] == {"epoch": 1, "global_step": 8, "step_in_epoch": 4}
    assert [p["name"] for p in run.state["fingerprint"]["plugins"]] == ["recorder"]


# --- run folder -------------------------------------------------------------------------------


def test_run_folder_files(tmp_path: Path) -> None:
    """config.yaml, metrics.jsonl, summary.json and model.safetensors are written and consistent."""
    run = run_tiny_training(run_dir=tmp_path, round_trip=False)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json", "model.safetensors"}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert all({"step", "epoch", "loss", "lr", "tokens_per_s"} <= r.keys() for r in records)
    assert {"val_loss", "val_bpb", "train_loss"} <= records[3].keys()
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("steps", "epochs", "train_loss", "val_loss", "val_bpb", "baseline_bpb", "wall_s", "plugins", "hooks"):
        assert key in summary
    assert summary["steps"] == 8 and summary["epochs"] == 2
    assert summary["plugins"] == [{"name": "recorder", "version": "1.0.0", "enabled": True, "failure": None}]
    assert summary["hooks"]["on_step_end"]["calls"] == 8
    # the saved weights rebuild the trained model exactly
    model = GPT(run.trainer.config.model, ProviderRegistry())
    load_weights(model, tmp_path / "model.safetensors")
    idx = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(model(idx).logits, run.trainer.model(idx).logits, rtol=0, atol=0)


def test_training_beats_the_unigram_baseline() -> None:
    """A short real run already predicts bytes better than their frequencies do."""
    overrides = ["training.steps_per_epoch=60", "training.batch_size=8", "training.val_interval=1000",
                 "training.lr=0.01", "training.min_lr=0.001"]  # fmt: skip
    run = run_tiny_training(overrides=overrides, round_trip=False, record=False)
    assert run.summary["val_bpb"] < run.summary["baseline_bpb"] - 0.25


def test_cuda_generator_states_of_a_bigger_machine_restore_on_the_devices_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A checkpoint written where 8 GPUs were visible resumes where 1 is: each device here gets its state."""
    from apt.train._rng import rng_state
    from apt.train._rng import set_rng_state

    restored: list[tuple[int, torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((device, s)))
    monkeypatch.setattr(
        torch.cuda, "get_rng_state_all", lambda: [torch.full((4,), i, dtype=torch.uint8) for i in range(8)]
    )
    state = rng_state()
    assert len(state["cuda"]) == 8
    set_rng_state(state)
    assert [(d, int(s[0])) for d, s in restored] == [(0, 0)]
