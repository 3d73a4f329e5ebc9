"""Issue 2's check: `bench run` of experiments/reproduce-miracl-yo-minilm.toml on MIRACL Yoruba dev with
the MiniLM bi-encoder equals an independent computation (sentence-transformers encode, exact top-100,
pytrec_eval with trec_eval -c -M 100): every query's ranked list, every query's metrics and the means.

The CI test uses the real queries and qrels with a real sub-corpus (every judged passage plus the
first 1,500 of the corpus: 2,434 passages, conftest's `miracl_yo_subcorpus`, which bench and
sentence-transformers each encode).
The full-corpus version is the same test with RERANK_BENCH_FULL=1 (results/miracl-yo-minilm/): its
`bench run` side is the session's full-corpus run (conftest's `miracl_yo_full_run`, the shipped
experiment, shared with tests/test_reproduce.py), so only sentence-transformers encodes the 49,043
passages a second time. It prints both sides' values: the registry entry's (measured-miracl-yo-minilm.toml).

Tolerances: the two sides' fp32 encoders differ in how they batch and pad, so their cosines differ in
the last bits (the test measures by how much: `noise`). Where no two passages whose order decides a
metric lie within that noise of each other (the test asserts this of the data), the rankings and so
the metrics are the same, and they are compared to 1e-9: a tie-order bug that moves one passage of one
query fails.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from bench.config import load_experiment
from bench.pipeline import run_experiment
from bench.runs import read_run

SHIPPED = Path(__file__).resolve().parents[1] / "experiments" / "reproduce-miracl-yo-minilm.toml"
FULL = os.environ.get("RERANK_BENCH_FULL") == "1"
DEPTH = 100
METRICS = {"nDCG@10": "ndcg_cut_10", "Recall@100": "recall_100"}


def independent(folder: Path, model_dir: str, max_length: int) -> dict:
    """sentence-transformers + numpy + pytrec_eval, sharing no code with the harness: the top-101 of every
    judged query (ids and float64 scores of the fp32 embeddings), per-query metrics and their means."""
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
    model.max_seq_length = max_length
    doc_emb = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    qids = sorted(queries)
    q_emb = model.encode([queries[q] for q in qids], batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    scores = q_emb.astype(np.float64) @ doc_emb.astype(np.float64).T
    ranked = {}
    for i, q in enumerate(qids):
        top = np.argsort(-scores[i], kind="stable")[:DEPTH + 1]
        ranked[q] = [(ids[j], float(scores[i, j])) for j in top]
    run = {q: dict(hits[:DEPTH]) for q, hits in ranked.items()}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    assert set(per_query) == set(qrels)  # trec_eval -c: every judged query counts (all have a run here)
    per_query = {m: {q: v[key] for q, v in per_query.items()} for m, key in METRICS.items()}
    return {"ranked": ranked, "qrels": qrels, "per_query": per_query,
            "means": {m: float(np.mean(list(v.values()))) for m, v in per_query.items()}}


def deciding_gaps(ranked: list[tuple[str, float]], judged: dict[str, int]) -> list[float]:
    """Score gaps between neighbours (ranks 1-101) whose swap would change nDCG@10 or Recall@100: within
    the top 11 two passages of different relevance, at the 100th place one judged relevant and one not."""
    rel = [judged.get(d, 0) for d, _ in ranked]
    gaps = [ranked[i][1] - ranked[i + 1][1] for i in range(min(10, len(ranked) - 1)) if rel[i] != rel[i + 1]]
    if len(ranked) > DEPTH and (rel[DEPTH - 1] > 0) != (rel[DEPTH] > 0):
        gaps.append(ranked[DEPTH - 1][1] - ranked[DEPTH][1])
    return gaps


@pytest.mark.slow
def test_bench_run_equals_independent_computation(shared_data, minilm, miracl_yo_experiment, request, tmp_path):
    folder = shared_data / "miracl-yo-dev" if FULL else request.getfixturevalue("miracl_yo_subcorpus")
    if FULL:
        record, out = request.getfixturevalue("miracl_yo_full_run")
    else:  # the shipped experiment with its dataset path on the sub-corpus
        exp_path = miracl_yo_experiment(tmp_path / "exp", folder)
        out = tmp_path / "out"
        (record,) = run_experiment(load_experiment(exp_path), out, experiment_path=exp_path, progress=False,
                                   log=lambda m: None)
    assert record.dataset.n_queries == 119 and record.dataset.n_qrels == 1188
    max_length = load_experiment(SHIPPED).first_stages["minilm"].max_length
    ref = independent(folder, minilm, max_length)
    run = read_run(out / record.run_file)
    assert sorted(run) == sorted(ref["ranked"])

    # Each query's list: at every rank the passage the independent scores put there, scores within noise.
    scores = {q: dict(hits) for q, hits in ref["ranked"].items()}
    noise = max(abs(score - scores[q][d]) for q in run for d, score in run[q].items() if d in scores[q])
    assert noise < 1e-5, noise  # fp32 rounding of two encoders, nothing more
    for q, hits in run.items():
        ours = sorted(hits.items(), key=lambda x: (x[1], x[0]), reverse=True)
        theirs = ref["ranked"][q][:DEPTH]
        assert len(ours) == len(theirs) == DEPTH, q
        for rank, ((doc, _), (want, want_score)) in enumerate(zip(ours, theirs)):
            assert doc == want or abs(scores[q].get(doc, -1.0) - want_score) <= 2 * noise, (q, rank, doc, want)
    # No order that decides a metric is within the noise, so the metrics must be equal (not merely close).
    closest = min((g for q in run for g in deciding_gaps(ref["ranked"][q], ref["qrels"][q])), default=float("inf"))
    assert closest > 10 * noise, (closest, noise)
    for metric in METRICS:
        for q, value in ref["per_query"][metric].items():
            assert abs(record.per_query[metric][q] - value) <= 1e-9, (metric, q, record.per_query[metric][q], value)
        assert abs(record.metrics[metric] - ref["means"][metric]) <= 1e-9, (metric, record.metrics, ref["means"])
    # An English model on Yoruba: far above chance, far below a multilingual model.
    assert 0.2 < record.metrics["nDCG@10"] < 0.95
    print(json.dumps({"corpus": "full" if FULL else "sub", "bench_run": record.metrics, "independent": ref["means"],
                      "max_length": max_length, "noise": noise, "closest_deciding_gap": closest}, indent=2))
