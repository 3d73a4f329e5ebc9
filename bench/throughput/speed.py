"""A quick side-by-side of the reranker engines on real pairs, in one process (prints pairs/s).

    python -m bench.throughput.speed --model random:tiny-xlmr-reranker --pairs 500
    python -m bench.throughput.speed --model random:bge-reranker-base --pairs 200 --max-length 256

Pairs come from a BEIR folder (default ``../shared/data/miracl-yo-dev``): whole queries, each with
its judged passages first, then random ones (`bench.throughput.pairs.pairs_from_collection`), so
about half are judged on MIRACL. Every engine scores the same pairs through a throughput sweep
(`bench.throughput.sweep.Sweep`) after a warm-up pass: wall time of one pass, tokenization
included, the best of the timed passes (on a shared machine other processes only slow a pass).
`bench throughput` is the full measurement; this is the quick check.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import lazy
from ..config import CollectionSpec
from ..data import load_collection
from ..engine.device import ENGINES
from .pairs import PairSet, sampled_pairs
from .sweep import Cell, Sweep, reranker_factory


def beir_pairs(folder: str | Path, n: int, seed: int = 0, split: str = "dev") -> PairSet:
    """`n` real pairs from a BEIR folder: judged pairs (up to half) and random query-passage pairs."""
    collection = load_collection(CollectionSpec(source="beir", path=str(folder), split=split))
    return sampled_pairs(collection, n, seed=seed)


def threads() -> int:
    return lazy.torch.get_num_threads()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:tiny-xlmr-reranker")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data" / "miracl-yo-dev"))
    ap.add_argument("--pairs", type=int, default=500)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    args = ap.parse_args(argv)
    if args.threads:
        lazy.torch.set_num_threads(args.threads)
    pairset = beir_pairs(args.data, args.pairs)
    sweep = Sweep(pairset, [Cell(engine, args.dtype, args.max_length) for engine in args.engines],
                  reranker_factory(args.model, device=args.device), model=args.model, device=args.device,
                  warmup=1, repeats=args.repeats, latency_queries=0)
    record, _ = sweep.run(ceiling={}, progress=False)  # no tokenizer given: no FLOPs, so no ceiling to measure
    print(f"{args.model}, {len(pairset)} pairs from {args.data}, max_length {args.max_length}, "
          f"best of {args.repeats} passes, {threads()} CPU threads")
    print(f"{'engine':24} {'dtype':5} {'pairs/s':>9} {'padding':>8}  attention")
    for cell in record.cells:
        if cell.error:
            print(f"{cell.engine:24} {cell.dtype:5} error: {cell.error}")
            continue
        pad = "" if cell.padding_fraction is None else f"{cell.padding_fraction:.0%}"
        print(f"{cell.engine:24} {cell.dtype_resolved:5} {cell.n_pairs / min(cell.seconds):9.1f} {pad:>8}  "
              f"{cell.engine_describe.get('attention')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
