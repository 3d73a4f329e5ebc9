"""Caches and checkpoints: an interrupted step resumes without recomputing what is done."""

import json

import numpy as np
import pytest

from bench.cache import entry, key_of
from bench.errors import BenchError
from bench.rerank.stage import RerankStage
from bench.retrieve.embeddings import EmbeddingStore


def docs(n):
    return [(f"d{i}", f"text {i}") for i in range(n)]


def batches(items, size):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def test_cache_key_changes_with_every_part(tmp_path):
    parts = {"model": "m", "revision": None, "max_length": 256, "dtype": "fp32", "corpus": {"n_docs": 10, "sha": "ab"}}
    a = entry(tmp_path, "runs", "x/y", **parts)
    assert entry(tmp_path, "runs", "x/y", **parts) == a
    assert json.loads((a / "key.json").read_text()) == parts and a.parent.name == "runs"
    others = [entry(tmp_path, "embeddings", "x/y", **parts), entry(tmp_path, "runs", "x/z", **parts),
              entry(tmp_path, "runs", "x/y", **parts, extra=1),  # a part added
              entry(tmp_path, "runs", "x/y", **{k: v for k, v in parts.items() if k != "revision"})]  # None != absent
    changes = {"model": "m2", "revision": "abc", "max_length": 512, "dtype": "fp16",
               "corpus": {"n_docs": 10, "sha": "ac"}}  # a nested value too
    assert changes.keys() == parts.keys()  # every part is changed once
    others += [entry(tmp_path, "runs", "x/y", **{**parts, name: value}) for name, value in changes.items()]
    assert len({a, *others}) == 1 + len(others)
    assert key_of(a=1, b={"c": 2, "d": 3}) == key_of(b={"d": 3, "c": 2}, a=1)  # order never matters
    assert key_of(a=1) != key_of(a="1")


def test_embedding_store_resumes_after_interruption(tmp_path):
    corpus = docs(10)
    calls = []

    def encode(texts):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt  # interrupted while encoding the third shard
        return np.array([[float(t.split()[1]), 1.0] for t in texts], dtype=np.float32)

    store = EmbeddingStore(tmp_path / "emb", shard_size=4)
    with pytest.raises(KeyboardInterrupt):
        store.build(batches(corpus, 4), encode, n_docs=10, progress=False)
    assert not store.complete()
    calls.clear()
    info = store.build(batches(corpus, 4), lambda t: np.array([[float(x.split()[1]), 1.0] for x in t], np.float32),
                       n_docs=10, progress=False)
    assert info == {"encoded_docs": 2, "reused_docs": 8}
    got_ids, got = zip(*[(i, v) for ids, vecs in store.shards() for i, v in zip(ids, np.asarray(vecs))])
    assert list(got_ids) == [d for d, _ in corpus]
    assert [v[0] for v in got] == list(range(10))


def test_embedding_store_refuses_a_changed_corpus(tmp_path):
    store = EmbeddingStore(tmp_path / "emb", shard_size=4)
    enc = lambda t: np.zeros((len(t), 2), np.float32)  # noqa: E731
    store.build(batches(docs(6), 4), enc, n_docs=6, progress=False)
    (tmp_path / "emb" / "complete.json").unlink()
    reordered = list(reversed(docs(6)))
    with pytest.raises(BenchError, match="does not match the collection's document order"):
        store.build(batches(reordered, 4), enc, n_docs=6, progress=False)


class CountingReranker:
    """Scores a pair by the passage's number; fails on demand, to simulate an interruption."""

    def __init__(self, fail_after=None):
        self.calls = 0
        self.fail_after = fail_after

    def score(self, pairs):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt
        return np.array([float(p.split()[1]) for _, p in pairs], dtype=np.float32)

    def reset_stats(self):
        self._n = 0

    def stats(self):
        return {"pairs": 0, "tokens": 0, "padded_tokens": 0, "truncated_pairs": 0, "truncated_queries": 0,
                "seconds": 0.0}


def test_rerank_stage_resumes_from_checkpoints(tmp_path, monkeypatch):
    import bench.rerank.stage as rr

    monkeypatch.setattr(rr, "BLOCK_PAIRS", 5)
    queries = {f"q{i}": f"query {i}" for i in range(6)}
    texts = {f"d{j}": f"passage {j}" for j in range(20)}
    candidates = {q: {f"d{j}": -float(j) for j in range(8)} for q in queries}  # first stage order: d0 > d1 > ...
    first = CountingReranker(fail_after=3)  # a warm-up call, two blocks, then the interruption
    stage = RerankStage(lambda: first, 3, tmp_path / "ck", progress=False)
    with pytest.raises(KeyboardInterrupt):
        stage.rerank(queries, candidates, lambda ids: {i: texts[i] for i in ids})
    second = CountingReranker()
    result = RerankStage(lambda: second, 3, tmp_path / "ck", progress=False).rerank(
        queries, candidates, lambda ids: {i: texts[i] for i in ids})
    run = result.run
    assert result.resumed_blocks == 2 and result.blocks == 3
    assert second.calls == 2  # an untimed warm-up on the block's first query, then the block
    # Only the first stage's top 3 were reranked, and their scores are the reranker's.
    assert {d: run["q0"][d] for d in ("d0", "d1", "d2")} == {"d0": 0.0, "d1": 1.0, "d2": 2.0}
    # The rest of the candidates follow in first-stage order, under the reranked prefix.
    assert sorted(run["q0"], key=run["q0"].get, reverse=True) == ["d2", "d1", "d0", "d3", "d4", "d5", "d6", "d7"]
    assert set(run) == set(queries)


class ReversingQueryReranker:
    """A query-level reranker (the pairwise and listwise families' interface): it puts each query's
    candidates in the reverse of the order they arrive in, and counts the queries it saw."""

    label = "reverse"

    def __init__(self):
        self.seen = []
        self.reset_stats()

    def rerank_queries(self, queries):
        self.seen.extend(queries)
        self._queries += len(queries)
        return [np.arange(len(q.doc_ids), dtype=np.float32) for q in queries]  # last arrived ranks first

    def describe(self):
        return {"engine": "test"}

    def stats(self):
        return {"pairs": sum(len(q.doc_ids) for q in self.seen), "tokens": None, "padded_tokens": None,
                "truncated_pairs": None, "truncated_queries": None, "seconds": 0.0, "windows": self._queries}

    def reset_stats(self):
        self._queries = 0
        self.seen = []


def test_rerank_stage_hands_query_rerankers_whole_queries_in_incoming_order(tmp_path, monkeypatch):
    import bench.rerank.stage as rr

    monkeypatch.setattr(rr, "BLOCK_PAIRS", 5)  # 4 pairs a query: blocks of two queries, never split
    queries = {f"q{i}": f"query {i}" for i in range(5)}
    texts = {f"d{j}": f"passage {j}" for j in range(10)}
    candidates = {q: {f"d{j}": -float(j) for j in range(6)} for q in queries}  # first stage: d0 > d1 > ...
    reranker = ReversingQueryReranker()
    result = RerankStage(lambda: reranker, 4, tmp_path / "ck", progress=False).rerank(
        queries, candidates, lambda ids: {i: texts[i] for i in ids})
    assert result.blocks == 3 and result.pairs == 20
    assert result.diagnostics()["counters"] == {"windows": 5}  # a family's own counter, summed over blocks
    for q in queries:
        assert sorted(result.run[q], key=result.run[q].get, reverse=True) == ["d3", "d2", "d1", "d0", "d4", "d5"]
    resumed = RerankStage(lambda: pytest.fail("rebuilt"), 4, tmp_path / "ck", progress=False).rerank(
        queries, candidates, lambda ids: {i: texts[i] for i in ids})
    assert resumed.run == result.run and resumed.resumed_blocks == 3
