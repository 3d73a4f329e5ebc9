"""GPU check of the fast engine on a decoder reranker, one process: random Qwen3-Reranker-0.6B shape
(Qwen's real tokenizer) on 40 MIRACL-yo queries x 100 candidates (4,000 pairs), the fast engine in
bf16 with and without shared-prefix reuse against the model card's snippet and sentence-transformers'
CrossEncoder (both bf16, as fast as their users can run them), warm-up then the median of 3 passes,
and each cell's scores against the card's (max |diff|, Kendall tau, top-10 identical).

    python experiments/gpu/decoder_check.py --out $OUT            # on the GPU box (a few minutes)
    python experiments/gpu/decoder_check.py --out /tmp/x --smoke  # any CPU: tiny model, proves the script

Target of issue 13: the fast engine with prefix reuse at least 5x the card's pairs/s. The JSON is
rewritten after every cell, so a cut-off run keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CELLS = ("fast", "fast-no-reuse", "card", "sentence-transformers")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    args = ap.parse_args()
    import torch

    from bench.config import CollectionSpec, RerankerSpec
    from bench.data import load_collection
    from bench.engine.device import release_memory
    from bench.rerank import build_reranker
    from bench.throughput.fidelity import compare
    from bench.throughput.pairs import pairs_from_collection
    from bench.throughput.timing import time_passes

    data = Path(os.environ.get("DATA", ROOT / ".gpu" / "data"))
    coll = load_collection(CollectionSpec(source="beir", path=str(data / "miracl-yo-dev"), split="dev"))
    model = "random:tiny-qwen3-reranker" if args.smoke else "random:qwen3-reranker-0.6b"
    device = "cpu" if args.smoke else "cuda"
    dtype = "fp32" if args.smoke else "bf16"
    ps = pairs_from_collection(coll, k=8 if args.smoke else 100, max_queries=4 if args.smoke else args.queries)
    pairs = ps.pairs
    base = RerankerSpec(model=model, dtype=dtype, device=device, max_length=args.max_length, batch_size=32)
    cells = {"fast": ({}, {}), "fast-no-reuse": ({}, {"prefix_reuse": False}),
             "card": ({"engine": "transformers"}, {}),
             "sentence-transformers": ({"engine": "sentence-transformers"}, {})}
    results = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "model": model,
               "pairs": len(pairs), "queries": ps.n_queries, "dtype": dtype, "max_length": args.max_length,
               "cells": []}
    scores = {}
    for name in args.cells:
        update, options = cells[name]
        t0 = time.perf_counter()
        try:
            rr = build_reranker(base.model_copy(update=update), **options)
            _, scores[name] = time_passes(rr.score, pairs, warmup=1, repeats=0, device=device)
            rr.reset_stats()
            times, scores[name] = time_passes(rr.score, pairs, warmup=0, repeats=3, device=device)
            times.sort()
            described = rr.describe()
            cell = {"cell": name, "seconds": times, "pairs_per_s": len(pairs) / times[len(times) // 2],
                    "stats": rr.stats(), "prefix_reuse": described.get("prefix_reuse"),
                    "attention": described.get("attention"), "dtype": described.get("dtype")}
            if device == "cuda":
                cell["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            del rr
            release_memory(device)
        except Exception as exc:  # recorded, the next cell still runs
            cell = {"cell": name, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        cell["total_seconds"] = time.perf_counter() - t0
        results["cells"].append(cell)
        print(json.dumps({k: cell.get(k) for k in ("cell", "pairs_per_s", "error")}), flush=True)
        write(args.out, results)
    card = next((c for c in results["cells"] if c["cell"] == "card" and "error" not in c), None)
    if card:
        for c in results["cells"]:
            if "error" not in c and c["cell"] != "card":
                c["speedup_vs_card"] = c["pairs_per_s"] / card["pairs_per_s"]
        results["fidelity"] = [{"cell": n, **compare(scores["card"], s, ps, qrels=coll.qrels, labels=("card", n))}
                               for n, s in scores.items() if n != "card"]
    write(args.out, results)
    for c in results["cells"]:
        print(json.dumps({k: c.get(k) for k in ("cell", "pairs_per_s", "speedup_vs_card")}))
    return 0


def write(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "decoder_check.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
