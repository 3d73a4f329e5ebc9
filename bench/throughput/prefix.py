"""`python -m bench.throughput.prefix`: the share of prompt tokens that shared-prefix reuse saves on
real first-stage candidates (no model runs: the count needs only the tokenizer and the template).

Each query's top-k candidates are built into prompts as the fast engine builds them
(``bench.engine.prompts``); the tokens computed with reuse are each distinct prefix once plus every
prompt's remaining tokens (``bench.engine.decoder.split_prefixes``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import lazy, models
from ..cache import cache_root
from ..config import CollectionSpec, FirstStageSpec
from ..data import load_collection
from ..engine.decoder import split_prefixes
from ..engine.prompts import PromptTokenizer
from ..retrieve.stage import FirstStage
from .pairs import pairs_from_collection


def prefix_savings(tokenizer, template: str, pairs, max_length: int, instruction: str | None = None) -> dict:
    """Prompt tokens, tokens computed with shared-prefix reuse, and the share saved."""
    enc = PromptTokenizer(tokenizer, template, max_length, instruction=instruction)(pairs)
    prefixes, items = split_prefixes(enc.seqs, enc.shared, True)
    total = sum(len(s) for s in enc.seqs)
    computed = sum(len(p) for p in prefixes) + sum(len(run) for _, run, _ in items)
    return {"template": template, "max_length": max_length, "pairs": len(pairs), "prefixes": len(prefixes),
            "tokens": total, "computed_tokens": computed, "saved_share": round(1 - computed / total, 4),
            "mean_prompt_tokens": round(total / len(pairs), 1), "truncated_pairs": enc.hit_max}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data" / "miracl-yo-dev"))
    ap.add_argument("--split", default="dev")
    ap.add_argument("--model", default="random:tiny-qwen3-reranker", help="whose tokenizer builds the prompts")
    ap.add_argument("--template", default="qwen3")
    ap.add_argument("--k", type=int, default=100, help="candidates per query (BM25 top-k)")
    ap.add_argument("--max-lengths", type=int, nargs="+", default=[512, 8192])
    args = ap.parse_args(argv)
    collection = load_collection(CollectionSpec(source="beir", path=args.data, split=args.split))
    run = FirstStage("bm25", FirstStageSpec(kind="bm25", depth=args.k), cache_root(None)).retrieve(collection).run
    pairs = pairs_from_collection(collection, k=args.k, run=run, run_source="bm25").pairs
    tokenizer = lazy.transformers.AutoTokenizer.from_pretrained(models.resolve(args.model))
    for max_length in args.max_lengths:
        print(json.dumps({"data": Path(args.data).name, "first_stage": f"bm25 top-{args.k}",
                          **prefix_savings(tokenizer, args.template, pairs, max_length)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
