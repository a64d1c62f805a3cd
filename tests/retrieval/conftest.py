"""Fixtures of the retrieval plugin's tests: a small text corpus and a trained tiny run with the plugin."""

from __future__ import annotations

from pathlib import Path

import pytest
from apt.data import load_corpus
from retrieval_helpers import make_trainer
from retrieval_helpers import retrieval_config


@pytest.fixture(autouse=True)
def _one_faiss_thread() -> None:
    import faiss

    faiss.omp_set_num_threads(1)  # tiny indexes; a busy machine makes OpenMP regions stall


@pytest.fixture(scope="session")
def corpus_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 24,000 characters of the embedded corpus (about 21,600 training bytes)."""
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(load_corpus(None)[:24_000], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, corpus_path: Path) -> Path:
    """A finished tiny run with the retrieval plugin (datastore built at its last validation)."""
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    make_trainer(retrieval_config(corpus_path), run_dir).fit()
    return run_dir
