"""Exact search: equals brute force, whatever the chunking, with ties in corpus order."""

import numpy as np
import pytest

from bench.retrieve.search import TIE_MARGIN, exact_top_k


def brute(q, d, k):
    s = q.astype(np.float64) @ d.astype(np.float64).T
    return [sorted(range(d.shape[0]), key=lambda j: (-s[i, j], j))[:k] for i in range(q.shape[0])]


@pytest.mark.parametrize("chunk", [7, 100, 1000, 65536])
@pytest.mark.parametrize("shard", [50, 333, 2000])
def test_equals_brute_force_with_ties(chunk, shard):
    rng = np.random.default_rng(chunk * 31 + shard)
    # Small integer vectors: exact in float32, and many exact ties.
    d = rng.integers(-2, 3, size=(1200, 8)).astype(np.float32)
    d[500:500 + 3 * TIE_MARGIN] = d[3]  # a tie block longer than the margin
    q = rng.integers(-2, 3, size=(9, 8)).astype(np.float32)
    q[0] = d[3]
    ids = [f"doc{i}" for i in range(len(d))]
    shards = [(ids[i:i + shard], d[i:i + shard]) for i in range(0, len(d), shard)]
    got = exact_top_k(q, shards, 25, chunk=chunk, progress=False)
    want = brute(q, d, 25)
    for i in range(len(q)):
        assert [doc for doc, _ in got[i]] == [f"doc{j}" for j in want[i]]
        scores = [s for _, s in got[i]]
        assert scores == sorted(scores, reverse=True)


def test_k_larger_than_corpus_returns_everything():
    d = np.eye(5, dtype=np.float32)
    got = exact_top_k(np.ones((1, 5), np.float32), [(list("abcde"), d)], 10, progress=False)
    assert [doc for doc, _ in got[0]] == list("abcde")
