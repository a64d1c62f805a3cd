"""Tokenizers, `apt data prepare`, prepared-data training, exact resume and the bad-input table."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from apt.cli import main
from apt.core import ProviderRegistry
from apt.data import BatchSource
from apt.data import BPETokenizer
from apt.data import ByteTokenizer
from apt.data import PreparedData
from apt.data import fingerprint
from apt.data import load_tokenizer
from apt.data import padded_vocab_size
from apt.data import prepare
from apt.data import val_tokens_per_byte
from apt.data import validation_windows
from apt.data._prepare import _ShardWriter
from apt.data._prepare import token_dtype
from apt.data._sources import expand_sources
from apt.data._sources import read_pieces
from apt.errors import DataError
from apt.testing import RecordingPlugin
from apt.testing import run_tiny_training
from apt.testing import tiny_config
from apt.train import Trainer


SAMPLES = [
    "Hello, world!",
    "  leading spaces and trailing  ",
    "a ,b . c 'n't",
    "héllo 世界 😀 — ünïcödé\ttabs\r\nand CRLF",
    "literal <|endoftext|> stays text",
    "",
    "\n\n\n",
]


def _corpus_text() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 20 JSONL documents and two text files (one long enough to be cut into pieces)."""
    root = tmp_path_factory.mktemp("corpus")
    docs = _corpus_text()
    with open(root / "docs.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(docs[:20]):
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    (root / "long.txt").write_text("\n\n".join(docs[20:60]), encoding="utf-8")
    (root / "notes.md").write_text("# Notes\n\nA short markdown document.\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def bpe(corpus: Path) -> BPETokenizer:
    return BPETokenizer.train(_corpus_text()[:30], vocab_size=512)


# --- tokenizers -------------------------------------------------------------------------


def test_bpe_round_trips_text_exactly(bpe: BPETokenizer) -> None:
    """decode(encode(s)) == s for ASCII, whitespace, emoji, CJK and the separator's spelling (which stays text)."""
    for s in SAMPLES:
        assert bpe.decode(bpe.encode(s)) == s
    assert bpe.eos_id is not None and bpe.eos_id not in bpe.encode(SAMPLES[4])
    assert len(bpe.encode("the return statement")) < len(b"the return statement")  # it did learn merges


def test_bpe_trained_on_ascii_still_encodes_every_byte() -> None:
    """The byte alphabet is in the vocabulary: text unseen in training (emoji) round-trips."""
    tok = BPETokenizer.train(["plain ascii text only"] * 20, vocab_size=300)
    assert tok.decode(tok.encode("héllo 世界 😀")) == "héllo 世界 😀"


def test_saved_tokenizers_are_standard_hf_json(tmp_path: Path, bpe: BPETokenizer) -> None:
    """Both tokenizers save a tokenizers JSON that `tokenizers` loads with the same ids; load_tokenizer reads them back."""
    from tokenizers import Tokenizer as HF

    for tok in (ByteTokenizer(eos=True), bpe):
        path = tmp_path / f"{tok.name}.json"
        path.write_text(tok.to_json(), encoding="utf-8")
        hf = HF.from_file(str(path))
        assert hf.token_to_id("<|endoftext|>") == tok.eos_id
        assert hf.encode(SAMPLES[3], add_special_tokens=False).ids == tok.encode(SAMPLES[3])
        back = load_tokenizer(path)
        assert type(back) is type(tok) and fingerprint(back) == fingerprint(tok)


def test_tokenizer_providers_and_vocab_padding() -> None:
    """`tokenizer` is a provider kind with byte (default) and bpe; padding rounds up to 64."""
    registry = ProviderRegistry()
    assert registry.default_name("tokenizer") == "byte"
    assert registry.list_providers("tokenizer") == ["bpe", "byte"]
    assert isinstance(registry.build("tokenizer", "byte"), ByteTokenizer)
    tok = registry.build("tokenizer", "bpe", texts=_corpus_text()[:5], vocab_size=400)
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 400
    assert [padded_vocab_size(n) for n in (256, 257, 400, 50257)] == [256, 320, 448, 50304]


def test_text_pieces_encode_like_the_whole_file(corpus: Path, bpe: BPETokenizer) -> None:
    """A long text file is read in pieces cut where BPE never merges: the pieces' ids are the whole file's."""
    (source,) = expand_sources([str(corpus / "long.txt")])
    pieces = list(read_pieces(source, "text"))
    assert len(pieces) > 3 and [p.last for p in pieces] == [False] * (len(pieces) - 1) + [True]
    whole = (corpus / "long.txt").read_text(encoding="utf-8")
    assert "".join(p.text for p in pieces) == whole
    assert [i for p in pieces for i in bpe.encode(p.text)] == bpe.encode(whole)


# --- the byte tokenizer's numbers do not move ------------------------------------------


def test_byte_run_val_bpb_equals_the_value_before_tokenizers() -> None:
    """The tiny byte run's val_bpb is what main produced before this change (6.956193286337676, one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU reductions round differently with other thread counts (~7e-7 here)
    try:
        run = run_tiny_training(round_trip=False, record=False)
    finally:
        torch.set_num_threads(threads)
    assert run.trainer.config.model.vocab_size == 256
    assert math.isclose(run.summary["val_bpb"], 6.956193286337676, abs_tol=1e-6)
    assert math.isclose(run.summary["baseline_bpb"], 4.683846448806741, abs_tol=1e-9)


# --- prepare ----------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_prepare_is_byte_identical_whatever_the_workers(corpus: Path, tmp_path: Path) -> None:
    """The same inputs give the same shards, tokenizer and manifest, with 1 or 2 workers and any shard size."""
    a = prepare([str(corpus)], tmp_path / "a", tokenizer="bpe", vocab_size=400, val_fraction=0.2, workers=1)
    prepare([str(corpus)], tmp_path / "b", tokenizer="bpe", vocab_size=400, val_fraction=0.2, workers=2)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert a["dtype"] == "uint16" and a["tokenizer"]["vocab_size"] == 400
    assert a["splits"]["train"]["docs"] + a["splits"]["val"]["docs"] == 20 + 2
    # smaller shards: the same token stream, cut differently
    prepare([str(corpus)], tmp_path / "c", tokenizer="bpe", vocab_size=400, val_fraction=0.2, shard_tokens=5000)
    c = PreparedData(tmp_path / "c")
    assert len(c.manifest["splits"]["train"]["shards"]) > 2
    stream = np.concatenate([np.fromfile(tmp_path / "c" / s["file"], np.uint16)
                             for s in c.manifest["splits"]["train"]["shards"]])  # fmt: skip
    assert np.array_equal(stream, np.fromfile(tmp_path / "a" / "train-000000.bin", np.uint16))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_the_split_does_not_depend_on_where_the_data_lives(corpus: Path, tmp_path: Path) -> None:
    """The same files in another folder give the same shards (the split hashes names inside the source)."""
    import shutil

    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(corpus, moved)
    prepare([str(corpus)], tmp_path / "a", val_fraction=0.3)
    prepare([str(moved)], tmp_path / "b", val_fraction=0.3)
    for name in ("train-000000.bin", "val-000000.bin", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_prepared_shards_hold_documents_and_separators(corpus: Path, tmp_path: Path) -> None:
    """Each document's tokens are followed by end-of-text; byte shards decode to the documents."""
    out = tmp_path / "bytes"
    m = prepare([str(corpus / "docs.jsonl")], out, tokenizer="byte", val_fraction=0.2)
    assert m["tokenizer"] == {**m["tokenizer"], "name": "byte", "vocab_size": 257, "eos_id": 256}
    tokens = np.fromfile(out / "train-000000.bin", np.uint16)
    docs = bytes(tokens[tokens != 256].astype(np.uint8)).decode("utf-8")
    assert int((tokens == 256).sum()) == m["splits"]["train"]["docs"]
    assert _corpus_text()[0] in docs or _corpus_text()[0] in bytes(
        np.fromfile(out / "val-000000.bin", np.uint16)[:-1].astype(np.uint8)
    ).decode("utf-8", "replace")


def test_uint32_when_ids_do_not_fit_uint16(tmp_path: Path) -> None:
    """Vocabularies above 65536 ids get uint32 shards; the writer keeps ids above 65535 intact."""
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    w = _ShardWriter(tmp_path, "train", token_dtype(70000), shard_tokens=10)
    w.write(np.array([1, 65536, 69999], dtype=np.uint32), docs=1)
    info = w.finish()
    assert np.fromfile(tmp_path / "train-000000.bin", "<u4").tolist() == [1, 65536, 69999]
    assert info["tokens"] == 3


def test_parquet_and_datasets_sources(corpus: Path, tmp_path: Path) -> None:
    """Parquet files and save_to_disk folders are read by --field, like JSONL, giving the same tokens."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    texts = _corpus_text()[:20]
    pq.write_table(pa.table({"body": texts, "n": list(range(20))}), tmp_path / "d.parquet")
    prepare([str(tmp_path / "d.parquet")], tmp_path / "pq", field="body", val_fraction=0.2)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts), encoding="utf-8")
    prepare([str(jsonl)], tmp_path / "js", field="body", val_fraction=0.2)
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"body": texts}).save_to_disk(str(tmp_path / "hf"))
    prepare([str(tmp_path / "hf")], tmp_path / "hfo", field="body", val_fraction=0.2)
    for name in ("pq", "hfo"):  # the unit names differ (file names), so compare the token multisets
        a = np.concatenate([np.fromfile(tmp_path / name / f"{s}-000000.bin", np.uint16) for s in ("train", "val")])
        b = np.concatenate([np.fromfile(tmp_path / "js" / f"{s}-000000.bin", np.uint16) for s in ("train", "val")])
        assert sorted(a.tolist()) == sorted(b.tolist())


# --- training on prepared data ----------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare([str(corpus)], out, tokenizer="bpe", vocab_size=400, val_fraction=0.2, shard_tokens=20_000)
    return out


def test_windows_come_from_the_shards_without_loading_them(prepared: Path) -> None:
    """Batches are (x, y) shifted windows inside one shard; ranks' slices make up the global batch."""
    data = PreparedData(prepared)
    assert all(isinstance(m, np.memmap) for m in data.train.maps) and len(data.train.maps) > 1
    one = BatchSource(data.train, block_size=16, batch_size=8, seed=3)
    x, y = one.next_step()
    assert x.dtype == torch.long and x.shape == (8, 16) and torch.equal(x[:, 1:], y[:, :-1])
    ranks = [BatchSource(data.train, 16, batch_size=4, seed=3, rank=r, world_size=2).next_step()[0] for r in (0, 1)]
    assert torch.equal(torch.cat(ranks), x)
    val = validation_windows(data.val, 16, 4, 2)
    assert len(val) == 2 and val[0][0].shape == (4, 16)


def test_prepare_train_generate_end_to_end_with_bpe(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`apt data prepare --tokenizer bpe`, `apt train --set data.path=...`, `apt generate`: the BPE goes through."""
    out, run = tmp_path / "data", tmp_path / "run"
    assert main(["data", "prepare", str(corpus), "--out", str(out), "--tokenizer", "bpe", "--vocab-size", "300",
                 "--val-fraction", "0.2", "--workers", "2"]) == 0  # fmt: skip
    assert "apt train --set data.path=" in capsys.readouterr().out
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(tiny_config().to_yaml(), encoding="utf-8")
    assert main(["train", "--config", str(tiny), "--no-plugins", "--run-dir", str(run), "--set", f"data.path={out}",
                 "--set", "training.max_epochs=1"]) == 0  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    assert math.isfinite(summary["val_bpb"]) and 0 < summary["val_bpb"] < 20
    assert (run / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
    assert "vocab_size: 320" in (run / "config.yaml").read_text()  # 300 ids, padded to 64
    capsys.readouterr()
    assert main(["generate", "--run", str(run), "--prompt", "The return", "--max-new-tokens", "12"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("The return") and len(text) > len("The return")


def test_bpb_counts_bytes_not_tokens(prepared: Path) -> None:
    """With BPE, val_bpb is val_loss / ln 2 times tokens per byte of the validation targets (< 1 token/byte)."""
    config = tiny_config(data={"path": str(prepared)}, training={"max_epochs": 1})
    trainer = Trainer(config)
    summary = trainer.fit()
    tc = config.training
    ratio = val_tokens_per_byte(trainer.tokenizer, trainer.data.val, 32, tc.batch_size, tc.val_batches, 1)
    assert 0.2 < ratio < 1.0
    assert math.isclose(summary["val_bpb"], summary["val_loss"] / math.log(2) * ratio, rel_tol=1e-12)


def test_mid_epoch_resume_on_prepared_data_is_bitwise_exact(prepared: Path, state_saver: Any) -> None:
    """A state taken mid-epoch on prepared data resumes with exactly the uninterrupted run's batches and losses."""
    config = tiny_config(data={"path": str(prepared)})
    full = run_tiny_training(config=config, round_trip=False)
    Saver, captured = state_saver("on_step_end", 2)
    run_tiny_training(Saver, config=config, round_trip=False, record=False)
    state = captured["state"]
    assert state["counters"]["step_in_epoch"] == 3 and state["data"]["data"] == PreparedData(prepared).sha256

    class Resumer(RecordingPlugin):
        resume_state = state

    resumed = run_tiny_training(Resumer, config=config, overrides=["training.resume=latest"], round_trip=False,
                                record=False)  # fmt: skip
    rec = resumed.plugin_manager.get_plugin("recorder")
    tail = [c["batch"][0] for c in rec.calls("on_step_begin")]
    full_batches = [c["batch"][0] for c in full.recorder.calls("on_step_begin")]
    assert len(tail) == 5 and all(torch.equal(a, b) for a, b in zip(tail, full_batches[3:], strict=True))
    assert [c["loss"] for c in rec.calls("on_step_end")] == [c["loss"] for c in full.recorder.calls("on_step_end")][3:]
    assert resumed.summary["val_bpb"] == full.summary["val_bpb"]


# --- bad input: one line naming the file (and line) and the fix, exit 2, nothing written ---


def _bad(tmp_path: Path, case: str) -> tuple[list[str], str]:
    src = tmp_path / "src"
    src.mkdir()
    if case == "non-utf8":
        (src / "a.txt").write_bytes(b"fine line\nbad \xff byte\n")
        return [str(src / "a.txt")], "a.txt' line 2 is not UTF-8 text"
    if case == "bad-json":
        (src / "a.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
        return [str(src / "a.jsonl")], "a.jsonl' line 2 is not JSON"
    if case == "missing-field":
        (src / "a.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n', encoding="utf-8")
        return [str(src / "a.jsonl")], "a.jsonl' line 2 has no field 'text' (it has: body); pass the text field"
    if case == "empty":
        (src / "a.txt").write_text("", encoding="utf-8")
        return [str(src / "a.txt")], "a.txt' is empty"
    if case == "empty-folder":
        return [str(src)], "is a folder without .txt, .md, .jsonl or .parquet files"
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"body": ["x"]}), src / "a.parquet")
    return [str(src / "a.parquet")], "a.parquet' has no column 'text' (columns: body); pass"


@pytest.mark.parametrize("case", ["non-utf8", "bad-json", "missing-field", "empty", "empty-folder", "parquet-column"])
def test_bad_sources_exit_2_with_one_line_and_write_nothing(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each bad source is one line naming the file (and line) and the fix; no output folder, no leftovers."""
    sources, message = _bad(tmp_path, case)
    out = tmp_path / "out"
    assert main(["data", "prepare", *sources, "--out", str(out), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("apt: error: ") and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_an_interrupted_prepare_leaves_no_output(corpus: Path, tmp_path: Path, monkeypatch: Any) -> None:
    """Ctrl-C in the middle of writing: neither the output folder nor the temporary folder remains."""
    import apt.data._prepare as prep

    real = prep._ShardWriter.write
    calls = {"n": 0}

    def interrupt(self: Any, tokens: Any, docs: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real(self, tokens, docs)

    monkeypatch.setattr(prep._ShardWriter, "write", interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare([str(corpus)], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_is_refused_and_overwrite_replaces_it_whole(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare([str(corpus / "docs.jsonl")], out, val_fraction=0.2)
    with pytest.raises(Exception, match="exists; choose another --out or pass --overwrite"):
        prepare([str(corpus / "docs.jsonl")], out, val_fraction=0.2)
    prepare([str(corpus)], out, val_fraction=0.2, overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["sources"][0]["files"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _train_argv(tmp_path: Path, *sets: str) -> list[str]:
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(tiny_config().to_yaml(), encoding="utf-8")
    argv = ["train", "--config", str(tiny), "--no-plugins", "--run-dir", str(tmp_path / "run")]
    for s in sets:
        argv += ["--set", s]
    return argv


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("hash", "has SHA-256"),
        ("tokenizer", "was prepared with the 'bpe' tokenizer but data.tokenizer is 'byte'"),
        ("tokenizer-file", "was prepared with another tokenizer than data.tokenizer_path"),
        ("vocab", "model.vocab_size is 64, but the tokenizer"),
    ],
)
def test_bad_prepared_data_exits_2_with_one_line(
    case: str, message: str, prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A corrupt shard, another tokenizer than asked, a model vocabulary too small: one line, exit 2, no run folder."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    sets = [f"data.path={data}"]
    if case == "hash":
        shard = data / "train-000001.bin"
        raw = bytearray(shard.read_bytes())
        raw[10] ^= 1
        shard.write_bytes(bytes(raw))
        message = f"shard {str(shard)!r} has SHA-256"
    elif case == "tokenizer":
        sets.append("data.tokenizer=byte")
    elif case == "tokenizer-file":
        other = tmp_path / "other.json"
        other.write_text(ByteTokenizer(eos=True).to_json(), encoding="utf-8")
        sets.append(f"data.tokenizer_path={other}")
    else:
        sets.append("model.vocab_size=64")
    assert main(_train_argv(tmp_path, *sets)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_resume_refuses_other_data(prepared: Path, state_saver: Any) -> None:
    """A sampler state from prepared data does not load into a run on other data."""
    Saver, captured = state_saver("on_step_end", 1)
    run_tiny_training(Saver, config=tiny_config(data={"path": str(prepared)}), round_trip=False, record=False)
    text_run = BatchSource(torch.arange(100), 8, 2)
    with pytest.raises(Exception, match="came from other data"):
        text_run.load_state_dict(captured["state"]["data"])


def test_bad_source_errors_are_data_errors(tmp_path: Path) -> None:
    """The typed error carries the file and line."""
    f = tmp_path / "a.jsonl"
    f.write_text('{"text": "a"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        list(read_pieces(expand_sources([str(f)])[0], "text"))
    assert info.value.line == 2 and Path(info.value.path) == f
    assert os.listdir(tmp_path) == ["a.jsonl"]
