"""Follow-up GPU checks of single engine variants on one collection's pairs, side by side in one
process: random bge-reranker-large, end to end (tokenization included), warm-up then the median of 3
passes. Also times tokenization alone, to see how much of a pass is host work.

    python -m experiments.gpu.engine_check --out $OUT --cells fast fast-compile fast-262144   # MIRACL-yo
    python -m experiments.gpu.engine_check --out $OUT --collection vaswani --split test --cells fast flag

    python -m experiments.gpu.engine_check --out $OUT --collection vaswani --split test --queries 41 \
        --cells fp32 flag fast fast-fp16 fast-full-last fast-gelu-epilogue fast-add-norm fast-fused

Cells: fast (bf16, 65,536-token budget, the engine's defaults), fast-compile (the same with
torch.compile), fast-262144, fast-fp16, fast-full-last (prune_last_layer off: every token through
the last layer, as before it existed), fast-gelu-epilogue, fast-add-norm (fused_add_norm), fast-fused
(both), fp32 (the fast engine in fp32: the fidelity reference), flag (FlagEmbedding-style fp16,
batch 128), fast-host-only (the fast engine with a forward that returns zeros: tokenization,
packing, copies and the loop, overlapped as in a real run; the host side's ceiling). 40-41 queries × 100 candidates (qrels-based: relevant, judged, then seeded random
passages), as run_checks.py builds them.

Fidelity: when the fp32 cell ran, every other cell's scores are compared with it (max |Δ|, Kendall τ,
top-10 identical, ΔnDCG@10 against the collection's qrels), and every fast variant's with the default
bf16 cell's (how far a variant moves scores, next to how far bf16 itself moves them from fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--collection", default="miracl-yo-dev")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--cells", nargs="+", default=["fast", "fast-compile", "fast-262144"])
    args = ap.parse_args()
    import torch

    from bench.config import CollectionSpec, RerankerSpec
    from bench.data import load_collection
    from bench.engine.device import release_memory
    from bench.engine.tokens import PairTokenizer
    from bench.rerank import build_reranker
    from bench.throughput.pairs import pairs_from_collection
    from bench.throughput.timing import time_passes

    data = Path(os.environ.get("DATA", ROOT / ".gpu" / "data"))
    coll = load_collection(CollectionSpec(source="beir", path=str(data / args.collection), split=args.split))
    model = "random:tiny-xlmr-reranker" if args.smoke else "random:bge-reranker-large"
    device = "cpu" if args.smoke else "cuda"
    ps = pairs_from_collection(coll, k=8 if args.smoke else 100, max_queries=4 if args.smoke else args.queries)
    pairs = ps.pairs
    spec = RerankerSpec(model=model, dtype="bf16", device=device, max_length=512)
    results = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "pairs": len(pairs),
               "collection": f"{args.collection}/{args.split}", "model": model, "cells": []}

    from transformers import AutoTokenizer

    from bench import models

    hf_tok = AutoTokenizer.from_pretrained(models.resolve(model))
    t0 = time.perf_counter()
    enc = PairTokenizer(hf_tok, 512)(pairs)
    results["tokenize_seconds"] = time.perf_counter() - t0
    results["tokens"] = sum(len(s) for s in enc.seqs)
    results["mean_tokens_per_pair"] = results["tokens"] / len(pairs)
    print(f"{len(pairs)} pairs from {args.collection}, mean {results['mean_tokens_per_pair']:.1f} tokens", flush=True)
    print(f"tokenize only: {len(pairs) / results['tokenize_seconds']:,.0f} pairs/s", flush=True)

    budget = {"token_budget": 65536}
    known = {"fast": ({}, budget), "fast-compile": ({}, {**budget, "compile": True}),
             "fast-262144": ({}, {"token_budget": 262144}), "fast-fp16": ({"dtype": "fp16"}, budget),
             "fast-full-last": ({}, {**budget, "prune_last_layer": False}),
             "fast-gelu-epilogue": ({}, {**budget, "gelu_epilogue": True}),
             "fast-add-norm": ({}, {**budget, "fused_add_norm": True}),
             "fast-fused": ({}, {**budget, "gelu_epilogue": True, "fused_add_norm": True}),
             "fp32": ({"dtype": "fp32"}, budget),
             "fast-host-only": ({}, budget),
             "flag": ({"engine": "flag", "dtype": "fp16" if device == "cuda" else "fp32"}, {})}
    unknown = sorted(set(args.cells) - set(known))
    if unknown:
        ap.error(f"unknown cells {unknown}; known: {', '.join(known)}")
    scores = {}
    for name in args.cells:
        spec_update, opts = known[name]
        t_build = time.perf_counter()
        try:
            rr = build_reranker(spec.model_copy(update=spec_update), **opts)
            if name == "fast-host-only":  # the host side's ceiling: everything but the model
                rr._forward = lambda batch: torch.zeros(batch.n, device=batch.input_ids.device)
            n_warm = 3 if opts.get("compile") or opts.get("fused_add_norm") else 1
            warm, scores[name] = time_passes(rr.score, pairs, warmup=0, repeats=n_warm, device=device)
            times, _ = time_passes(rr.score, pairs, warmup=0, repeats=3, device=device)
            times.sort()
            cell = {"cell": name, "spec": spec_update, "options": opts, "warmup_seconds": warm, "seconds": times,
                    "pairs_per_s": len(pairs) / times[1], "describe": {k: v for k, v in rr.describe().items()
                                                                      if isinstance(v, (str, int, float, bool))}}
            del rr
            release_memory(device)
        except Exception as exc:  # recorded, the next cell still runs
            cell = {"cell": name, "spec": spec_update, "options": opts, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        cell["total_seconds"] = time.perf_counter() - t_build
        results["cells"].append(cell)
        print(json.dumps({k: cell.get(k) for k in ("cell", "pairs_per_s", "warmup_seconds", "error")}), flush=True)
        write(args, results)
    results["fidelity"] = fidelity(scores, ps, coll.qrels)
    for row in results["fidelity"]:
        print(json.dumps({k: row.get(k) for k in ("cell", "reference", "max_abs_diff", "top10_identical")}))
    write(args, results)
    return 0


def fidelity(scores, pairset, qrels) -> list[dict]:
    """Each cell against fp32, and each fast variant against the default bf16 cell, on the same pairs."""
    from bench.throughput.fidelity import compare

    rows = []
    for ref in ("fp32", "fast"):
        if ref not in scores:
            continue
        for name, got in scores.items():
            if name in (ref, "fp32", "fast-host-only") or (ref == "fast" and not name.startswith("fast")):
                continue
            row = compare(scores[ref], got, pairset, qrels=qrels, labels=(ref, name))
            rows.append({"cell": name, "reference": ref, **row})
    return rows


def write(args, results) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"engine_check-{args.collection}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
