"""The dense first stage: cached embeddings, and corpus encoding spread over several devices."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bench.retrieve.stage as fs_mod
from bench.config import CollectionSpec, FirstStageSpec
from bench.data import load_collection
from bench.retrieve.stage import FirstStage


@pytest.fixture(scope="module")
def collection():
    spec = CollectionSpec(source="synthetic", synthetic={"languages": ["en"], "docs_per_language": 160,
                                                         "queries_per_language": 10})
    return load_collection(spec)


def embeddings(stage, collection):
    from bench.retrieve.embeddings import EmbeddingStore

    result = stage.retrieve(collection)
    store = EmbeddingStore(result.info["embeddings"]["folder"])
    ids, vecs = zip(*[(i, np.asarray(v)) for s_ids, s_vecs in store.shards() for i, v in zip(s_ids, s_vecs)])
    return result.run, result.info, list(ids), np.stack(vecs)


def test_two_worker_processes_encode_like_one(collection, minilm, tmp_path, monkeypatch):
    monkeypatch.setattr(fs_mod, "SHARD_SIZE", 50)  # 4 shards for 2 workers
    spec = FirstStageSpec(kind="dense", model=minilm, dtype="fp32", depth=20, max_length=64, device="cpu")
    one = FirstStage("one", spec, tmp_path / "a", progress=False)
    run1, info1, ids1, vecs1 = embeddings(one, collection)
    one.close()
    two = FirstStage("two", spec.model_copy(update={"device": "cpu,cpu"}), tmp_path / "b", progress=False)
    run2, info2, ids2, vecs2 = embeddings(two, collection)
    two.close()
    assert info2["encoder"]["data_parallel"]["processes"] == 2
    assert info2["embeddings"]["encoded_docs"] == 160
    assert ids1 == ids2 == [d for batch in collection.iter_docs(50) for d, _ in batch]
    np.testing.assert_allclose(vecs1, vecs2, atol=1e-5)
    assert {q: list(d) for q, d in run1.items()} == {q: list(d) for q, d in run2.items()}


def test_rerun_reuses_embeddings_and_run(collection, minilm, tmp_path):
    spec = FirstStageSpec(kind="dense", model=minilm, dtype="fp32", depth=10, max_length=64, device="cpu")
    stage = FirstStage("s", spec, tmp_path, progress=False)
    first = stage.retrieve(collection)
    run = first.run
    assert not first.cached and first.info["embeddings"]["encoded_docs"] == 160
    second = FirstStage("s", spec, tmp_path, progress=False).retrieve(collection)
    assert second.cached and second.run == run
    # Another depth: a new candidate run, but the corpus is not encoded again.
    third = FirstStage("s", spec.model_copy(update={"depth": 15}), tmp_path, progress=False).retrieve(collection)
    deeper = third.run
    assert third.info["embeddings"]["encoded_docs"] == 0 and third.info["embeddings"]["reused_docs"] == 160
    assert all(list(deeper[q])[:10] == list(run[q]) for q in run)


@pytest.mark.shared_data
def test_interrupted_corpus_encoding_resumes_with_the_rest(miracl_yo_experiment, miracl_yo_subcorpus, tmp_path,
                                                           monkeypatch, capsys):
    """Ctrl-C once half of the passages are encoded (a tiny random bi-encoder stands in for MiniLM):
    the message says what is kept, and the rerun encodes only the rest. The shipped MIRACL-yo experiment
    on conftest's real 2,434-passage sub-corpus, cut into 20 shards of 125 (the last one short, as the
    full corpus's is): resuming is a matter of shards, so the full 49,043 passages would prove no more."""
    from bench.cli import main
    from bench.retrieve.encoder import Encoder

    n_docs = sum(1 for _ in open(miracl_yo_subcorpus / "corpus.jsonl", encoding="utf-8"))
    assert n_docs == 2434  # 19 full shards of 125 and one of 59
    path = miracl_yo_experiment(tmp_path, miracl_yo_subcorpus,
                                **{'model = "offline:all-MiniLM-L6-v2"': 'model = "random:tiny-bge-m3"',
                                   'dtype = "fp32"': 'dtype = "fp32"\nshard_size = 125'})
    path.write_text(f'cache_dir = "{(tmp_path / "cache").as_posix()}"\n' + path.read_text(encoding="utf-8"),
                    encoding="utf-8")
    encoded, stop_after = [], None
    plain = Encoder.encode_shards

    def encode_shards(self, items):
        for key, vecs in plain(self, items):
            if stop_after is not None and sum(encoded) >= stop_after:
                raise KeyboardInterrupt  # as Ctrl-C while the next shard is encoded
            encoded.append(len(vecs))
            yield key, vecs

    monkeypatch.setattr(Encoder, "encode_shards", encode_shards)
    argv = ["run", str(path), "--out", str(tmp_path / "out"), "--no-progress", "--skip-preflight"]
    stop_after = n_docs // 2
    assert main(argv) == 130
    assert encoded == [125] * 10
    assert "10 of 20 shards (1,250 of 2,434 passages) are on disk" in capsys.readouterr().err
    encoded, stop_after = [], None
    assert main(argv) == 0
    assert sum(encoded) == n_docs - 1250 and len(encoded) == 10 and encoded[-1] == 59
    (info,) = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "runs").glob("*/info.json")]
    assert (info["embeddings"]["reused_docs"], info["embeddings"]["shard_size"]) == (1250, 125)
