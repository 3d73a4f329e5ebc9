"""Issue 2's check: `bench run` on MIRACL Yoruba dev with the MiniLM bi-encoder equals an independent
computation (sentence-transformers encode, exact top-100, pytrec_eval with trec_eval -c -M 100).

The CI test uses the real queries and qrels with a real sub-corpus (every judged passage plus the
first 1,500 of the corpus: 2,434 passages, which bench and sentence-transformers each encode).
The full-corpus version is the same test with RERANK_BENCH_FULL=1 (results/miracl-yo-minilm/): its
`bench run` side is the session's full-corpus run (conftest's `miracl_yo_full_run`, the same first
stage and evaluation, shared with tests/test_reproduce.py), so only sentence-transformers encodes
the 49,043 passages a second time.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench.config import load_experiment
from bench.pipeline import run_experiment

FULL = os.environ.get("RERANK_BENCH_FULL") == "1"
EXTRA_DOCS = 1500


def experiment(path: Path) -> dict:
    """The check's experiment over the collection folder `path` (experiments/reproduce-miracl-yo-minilm.toml
    with another name)."""
    return {"name": "miracl-yo-minilm-check",
            "first_stages": {"minilm": {"kind": "dense", "model": "offline:all-MiniLM-L6-v2", "depth": 100,
                                        "dtype": "fp32", "max_length": 256}},
            "datasets": [{"source": "beir", "path": path, "split": "dev", "name": "miracl-yo-dev", "language": "yo"}],
            "evaluation": {"metrics": ["nDCG@10", "Recall@100"], "depth": 100}}


def collection_folder(shared: Path, tmp: Path) -> Path:
    """The shared collection, or (default) a copy whose corpus keeps judged passages + the first N."""
    src = shared / "miracl-yo-dev"
    if FULL:
        return src
    dst = tmp / "miracl-yo-dev-sub"
    (dst / "qrels").mkdir(parents=True)
    shutil.copy(src / "queries.jsonl", dst / "queries.jsonl")
    shutil.copy(src / "qrels" / "dev.tsv", dst / "qrels" / "dev.tsv")
    judged = {line.split("\t")[1] for line in (src / "qrels" / "dev.tsv").read_text().splitlines()[1:]}
    with gzip.open(src / "corpus.jsonl.gz", "rt", encoding="utf-8") as fin, \
            open(dst / "corpus.jsonl", "w", encoding="utf-8") as fout:
        for i, line in enumerate(fin):
            if i < EXTRA_DOCS or json.loads(line)["_id"] in judged:
                fout.write(line)
    return dst


def independent(folder: Path, model_dir: str) -> dict[str, float]:
    """sentence-transformers + numpy + pytrec_eval, sharing no code with the harness."""
    import pytrec_eval
    from sentence_transformers import SentenceTransformer

    opener = gzip.open if (folder / "corpus.jsonl.gz").exists() else open
    corpus_file = folder / ("corpus.jsonl.gz" if opener is gzip.open else "corpus.jsonl")
    ids, texts = [], []
    with opener(corpus_file, "rt", encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            ids.append(d["_id"])
            texts.append(f"{d['title']} {d['text']}".strip())
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels" / "dev.tsv").read_text().splitlines()[1:]:
        q, d, r = line.split("\t")
        qrels.setdefault(q, {})[d] = int(r)
    queries = {}
    for line in (folder / "queries.jsonl").read_text().splitlines():
        obj = json.loads(line)
        if obj["_id"] in qrels:
            queries[obj["_id"]] = obj["text"]
    model = SentenceTransformer(model_dir, device="cpu")
    model.max_seq_length = 256
    doc_emb = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    qids = sorted(queries)
    q_emb = model.encode([queries[q] for q in qids], batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    scores = q_emb @ doc_emb.T
    run = {}
    for i, q in enumerate(qids):
        top = np.argsort(-scores[i], kind="stable")[:100]
        run[q] = {ids[j]: float(scores[i, j]) for j in top}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    # trec_eval -c: every judged query counts (all have a run here; assert it).
    assert set(per_query) == set(qrels)
    return {"nDCG@10": float(np.mean([v["ndcg_cut_10"] for v in per_query.values()])),
            "Recall@100": float(np.mean([v["recall_100"] for v in per_query.values()]))}


@pytest.mark.slow
def test_bench_run_equals_independent_computation(shared_data, minilm, experiment_toml, request, tmp_path):
    folder = collection_folder(shared_data, tmp_path)
    if FULL:
        record = request.getfixturevalue("miracl_yo_full_run")
    else:
        exp_path = experiment_toml(**experiment(folder))
        (record,) = run_experiment(load_experiment(exp_path), tmp_path / "out", experiment_path=exp_path,
                                   progress=False, log=lambda m: None)
    assert record.dataset.n_queries == 119 and record.dataset.n_qrels == 1188
    reference = independent(folder, minilm)
    for metric in ("nDCG@10", "Recall@100"):
        assert abs(record.metrics[metric] - reference[metric]) <= 0.002, (metric, record.metrics, reference)
    # An English model on Yoruba: far above chance, far below a multilingual model.
    assert 0.2 < record.metrics["nDCG@10"] < 0.95
    if FULL:
        print(json.dumps({"bench_run": record.metrics, "independent": reference}, indent=2))
