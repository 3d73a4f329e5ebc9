"""Follow-up GPU check: does torch.compile (dynamic shapes, one graph for all layers) or a larger
budget move the fast engine past eager? Same pairs as run_checks.py (MIRACL-yo, 40 queries × 100),
random bge-reranker-large, bf16, end to end (tokenization included); eager measured in the same
process as the baseline. Also times tokenization alone, to see how much of a pass is host work.

    python experiments/gpu/compile_check.py --out $OUT [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    import torch

    from bench.config import CollectionSpec, RerankerSpec
    from bench.data import load_collection
    from bench.engine.tokens import PairTokenizer
    from bench.rerank import build_reranker
    from bench.throughput import pairs_from_collection

    data = Path(os.environ.get("DATA", ROOT / ".gpu" / "data"))
    coll = load_collection(CollectionSpec(source="beir", path=str(data / "miracl-yo-dev"), split="dev"))
    model = "random:tiny-xlmr-reranker" if args.smoke else "random:bge-reranker-large"
    device = "cpu" if args.smoke else "cuda"
    ps = pairs_from_collection(coll, k=8 if args.smoke else 100, max_queries=4 if args.smoke else 40)
    pairs = ps.pairs
    spec = RerankerSpec(model=model, dtype="bf16", device=device, max_length=512)
    results = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "pairs": len(pairs),
               "model": model, "cells": []}

    from transformers import AutoTokenizer

    from bench import models

    hf_tok = AutoTokenizer.from_pretrained(models.resolve(model))
    t0 = time.perf_counter()
    enc = PairTokenizer(hf_tok, 512)(pairs)
    results["tokenize_seconds"] = time.perf_counter() - t0
    results["tokens"] = sum(len(s) for s in enc.seqs)
    print(f"tokenize only: {len(pairs) / results['tokenize_seconds']:,.0f} pairs/s", flush=True)

    cells = [("eager 65536", {"token_budget": 65536}), ("compile 65536", {"token_budget": 65536, "compile": True}),
             ("eager 262144", {"token_budget": 262144})]
    for name, opts in cells:
        t_build = time.perf_counter()
        try:
            rr = build_reranker(spec, **opts)
            warm = []
            for _ in range(3 if opts.get("compile") else 1):
                t0 = time.perf_counter()
                rr.score(pairs)
                warm.append(time.perf_counter() - t0)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                rr.score(pairs)
                times.append(time.perf_counter() - t0)
            times.sort()
            cell = {"cell": name, "options": opts, "warmup_seconds": warm, "seconds": times,
                    "pairs_per_s": len(pairs) / times[1], "describe": {k: v for k, v in rr.describe().items()
                                                                      if isinstance(v, (str, int, float, bool))}}
            del rr
            torch.cuda.empty_cache() if device == "cuda" else None
        except Exception as exc:  # recorded, the next cell still runs
            cell = {"cell": name, "options": opts, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        cell["total_seconds"] = time.perf_counter() - t_build
        results["cells"].append(cell)
        print(json.dumps({k: cell.get(k) for k in ("cell", "pairs_per_s", "warmup_seconds", "error")}), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compile_check.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
