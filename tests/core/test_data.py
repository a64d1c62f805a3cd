"""Data: the byte tokenizer, the corpus loader, the unigram baseline and seeded, sharded batches."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from apt.data import BatchSource
from apt.data import ByteTokenizer
from apt.data import TextDataset
from apt.data import load_corpus
from apt.data import split_tokens
from apt.data import unigram_bpb
from apt.data import validation_windows
from apt.errors import ConfigError


def test_byte_tokenizer_round_trip() -> None:
    """Any text round-trips through UTF-8 bytes; invalid bytes decode to U+FFFD instead of failing."""
    tok = ByteTokenizer()
    text = "héllo → 世界 🐍\n"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8")) and max(ids) < 256
    assert tok.decode(ids) == text
    assert tok.decode([0xFF, 104]) == "\ufffdh"


def test_embedded_corpus_is_python_docs_and_stable() -> None:
    """With no path the corpus is the pydoc topics text, identical on every call."""
    text = load_corpus(None)
    assert len(text) > 100_000 and "lambda" in text
    assert load_corpus(None) == text


def test_corpus_from_file_and_folder(tmp_path: Path) -> None:
    """data.path accepts a UTF-8 file or a folder of .txt files (sorted, joined)."""
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "skip.md").write_text("not text data", encoding="utf-8")
    assert load_corpus(tmp_path) == "first\n\nsecond"
    assert load_corpus(tmp_path / "a.txt") == "first"


@pytest.mark.parametrize("case", ["missing", "empty_dir", "binary", "blank"])
def test_bad_corpus_paths_name_the_key(tmp_path: Path, case: str) -> None:
    """Unusable data paths raise ConfigError with key data.path."""
    target = {"missing": tmp_path / "nope.txt", "empty_dir": tmp_path, "binary": tmp_path / "x.bin",
              "blank": tmp_path / "blank.txt"}[case]  # fmt: skip
    (tmp_path / "x.bin").write_bytes(b"\xff\xfe\x00bad")
    (tmp_path / "blank.txt").write_text("  \n", encoding="utf-8")
    if case == "empty_dir":
        target = tmp_path / "empty"
        target.mkdir()
    with pytest.raises(ConfigError) as info:
        load_corpus(target)
    assert info.value.key == "data.path"


def test_split_and_unigram_baseline() -> None:
    """The split is contiguous; the baseline is the cross-entropy under training byte frequencies."""
    tokens = torch.arange(100)
    train, val = split_tokens(tokens, 0.1)
    assert torch.equal(torch.cat([train, val]), tokens) and len(val) == 10
    # train: 3 x 'a', 1 x 'b' -> with add-one smoothing over 256 bytes p(a) = 4/260
    bpb = unigram_bpb(torch.tensor([97, 97, 97, 98]), torch.tensor([97]))
    assert bpb == pytest.approx(-math.log2(4 / 260))


def test_dataset_baseline_on_embedded_corpus() -> None:
    """The embedded corpus has a unigram baseline a model must beat, between 4 and 6 bits per byte."""
    ds = TextDataset(load_corpus(None), block_size=64)
    assert 4.0 < ds.baseline_bpb < 6.0
    assert len(ds.val) == pytest.approx(0.1 * (len(ds.train) + len(ds.val)), rel=0.01)


def test_too_little_text_is_a_config_error() -> None:
    """A corpus shorter than a block is refused with the fix."""
    with pytest.raises(ConfigError, match="block_size"):
        TextDataset("tiny text", block_size=64)


def test_batches_are_shifted_windows() -> None:
    """y is x shifted by one token; shapes are (grad_accum * B, T)."""
    tokens = torch.arange(1000)
    src = BatchSource(tokens, block_size=8, batch_size=3, grad_accum=2, seed=0)
    x, y = src.next_step()
    assert x.shape == y.shape == (6, 8)
    torch.testing.assert_close(y, x + 1)
    micro = src.micro_batches(x, y)
    assert len(micro) == 2 and micro[1][0].shape == (3, 8)


def test_batches_are_seeded_and_resumable() -> None:
    """The same seed gives the same batches; a restored state continues with the same batches."""
    tokens = torch.randint(0, 256, (5000,))
    a, b = BatchSource(tokens, 16, 4, seed=7), BatchSource(tokens, 16, 4, seed=7)
    assert torch.equal(a.next_step()[0], b.next_step()[0])
    assert not torch.equal(a.next_step()[0], BatchSource(tokens, 16, 4, seed=8).next_step()[0])
    state = a.state_dict()
    expected = [a.next_step()[0] for _ in range(3)]
    c = BatchSource(tokens, 16, 4, seed=0)
    c.load_state_dict(state)
    assert all(torch.equal(e, c.next_step()[0]) for e in expected)


def test_rank_slices_make_up_the_global_batch() -> None:
    """Two ranks with batch B see exactly what one process with batch 2B sees."""
    tokens = torch.randint(0, 256, (5000,))
    single = BatchSource(tokens, 16, 8, seed=3)
    ranks = [BatchSource(tokens, 16, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        x, _ = single.next_step()
        assert torch.equal(torch.cat([r.next_step()[0] for r in ranks]), x)


def test_validation_windows_are_fixed_and_sharded() -> None:
    """Validation uses the same windows every time; two ranks with batch B cover the one-process set of 2B."""
    tokens = torch.randint(0, 256, (3000,))
    single = torch.cat([xb for xb, _ in validation_windows(tokens, 16, batch_size=8, n_batches=2)])  # 16 windows
    assert torch.equal(single, torch.cat([xb for xb, _ in validation_windows(tokens, 16, 8, 2)]))
    shards = [validation_windows(tokens, 16, 4, 2, rank=r, world_size=2) for r in range(2)]
    assert all(len(s) == 2 and s[0][0].shape == (4, 16) for s in shards)
    assert torch.equal(torch.cat([xb for shard in shards for xb, _ in shard]), single)
