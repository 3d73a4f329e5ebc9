"""A quick side-by-side of the reranker engines on real pairs, in one process (prints pairs/s).

    python -m bench.rerank.speed --model random:tiny-xlmr-reranker --pairs 500
    python -m bench.rerank.speed --model random:bge-reranker-base --pairs 200 --max-length 256

Pairs come from a BEIR folder (default ``../shared/data/miracl-yo-dev``): half judged (query,
passage) pairs, half a query with a random passage. Every engine scores the same pairs after a
short warm-up; wall time of one pass, tokenization included. The throughput sweep
(``bench throughput``) is the full measurement; this is the quick check.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import time
from pathlib import Path

from ..errors import BenchError


def beir_pairs(folder: str | Path, n: int, seed: int = 0, split: str = "dev") -> list[tuple[str, str]]:
    """``n`` real pairs from a BEIR folder: judged pairs (up to half) and random query-passage pairs."""
    folder = Path(folder)
    try:
        queries = {}
        for line in (folder / "queries.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            queries[row["_id"]] = row["text"]
        qrels = [line.split("\t")[:2] for line in (folder / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]]
    except FileNotFoundError as exc:
        raise BenchError(f"{exc.filename}: not found (need a BEIR folder with queries.jsonl and qrels/{split}.tsv)") from None
    qrels = [(q, d) for q, d in qrels if q in queries][: 2 * n]
    wanted = {d for _, d in qrels}
    docs, pool = {}, []
    with gzip.open(folder / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            row = json.loads(line)
            text = (row.get("title", "") + " " + row["text"]).strip()
            if row["_id"] in wanted:
                docs[row["_id"]] = text
            if i < 3000:
                pool.append(text)
            elif len(docs) == len(wanted):
                break
    rng = random.Random(seed)
    judged = [(queries[q], docs[d]) for q, d in qrels if d in docs]
    rng.shuffle(judged)
    qtexts = sorted(set(queries.values()))
    pairs = judged[: n // 2] + [(rng.choice(qtexts), rng.choice(pool)) for _ in range(n - len(judged[: n // 2]))]
    rng.shuffle(pairs)
    return pairs


def compare(model: str, pairs, *, engines=("fast", "transformers", "sentence-transformers", "flag"),
            max_length: int = 512, dtype: str = "auto", device: str = "auto", cache_dir=None,
            repeats: int = 3) -> list[dict]:
    """pairs/s of each engine on ``pairs``: a warm-up on the first 32 pairs, then the best of
    ``repeats`` timed passes (the best, because on a shared machine other processes only slow a pass)."""
    from ..config import RerankerSpec
    from . import build_reranker

    rows = []
    for name in engines:
        r = build_reranker(RerankerSpec(model=model, engine=name, dtype=dtype, device=device, max_length=max_length),
                           cache_dir=cache_dir)
        r.score(pairs[:32])
        r.reset_stats()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            r.score(pairs)
            times.append(time.perf_counter() - t0)
        seconds = min(times)
        st, d = r.stats(), r.describe()
        rows.append({"engine": name, "dtype": d["dtype"], "pairs_per_s": len(pairs) / seconds, "seconds": seconds,
                     "padding": 1 - st["tokens"] / st["padded_tokens"] if st["padded_tokens"] else None,
                     "attention": d.get("attention")})
        del r
    return rows


def threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:tiny-xlmr-reranker")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data" / "miracl-yo-dev"))
    ap.add_argument("--pairs", type=int, default=500)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--engines", nargs="+", default=["fast", "transformers", "sentence-transformers", "flag"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    pairs = beir_pairs(args.data, args.pairs)
    rows = compare(args.model, pairs, engines=args.engines, max_length=args.max_length, dtype=args.dtype,
                   device=args.device, repeats=args.repeats)
    print(f"{args.model}, {len(pairs)} pairs from {args.data}, max_length {args.max_length}, "
          f"best of {args.repeats} passes, {threads()} CPU threads")
    print(f"{'engine':24} {'dtype':5} {'pairs/s':>9} {'padding':>8}  attention")
    for row in rows:
        pad = "" if row["padding"] is None else f"{row['padding']:.0%}"
        print(f"{row['engine']:24} {row['dtype']:5} {row['pairs_per_s']:9.1f} {pad:>8}  {row['attention']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
