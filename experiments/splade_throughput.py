"""SPLADE document encoding: the fast MLM path against the plain AutoModelForMaskedLM loop, on the CPU.

    PYTHONPATH=. python experiments/splade_throughput.py --out results/splade-throughput-cpu [--passages 256]

Real Vaswani abstracts (../shared/data); the tiny random model (random:tiny-splade) and random weights of
SPLADE++ EnsembleDistil's exact shape (random:splade-pp-ed, BERT base with its MLM head), fp32, max_length
256. Both engines run in this process on the same passages (`bench.throughput.splade`); writes one
throughput record per model under OUT/records/ and OUT/table.md. GPU figures come with the GPU checks.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.io import atomic_write_text  # noqa: E402
from bench.throughput.splade import splade_table, splade_throughput  # noqa: E402

VASWANI = REPO.parent / "shared" / "data" / "vaswani" / "corpus.jsonl.gz"


def passages(n: int) -> list[str]:
    out = []
    with gzip.open(VASWANI, "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            out.append(f"{d.get('title', '')} {d['text']}".strip())
            if len(out) == n:
                break
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--passages", type=int, default=256)
    ap.add_argument("--models", default="random:tiny-splade,random:splade-pp-ed")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    texts = passages(args.passages)
    records = []
    for model in args.models.split(","):
        rec = splade_throughput(model, texts, collection="vaswani (first passages)", repeats=args.repeats)
        rec.to_disk(out / "records" / f"{rec.name}.json")
        records.append(rec)
    table = splade_table(records)
    atomic_write_text(out / "table.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
