"""Real (query, passage) pairs for a sweep, grouped by query, and their token lengths.

Why one place: every engine of a sweep must score exactly the same pairs in the same order, and the
FLOP count must see the same tokens the engines see.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.tokens import PairTokenizer
from ..errors import BenchError
from ..runs import sort_ranking


@dataclass(frozen=True)
class PairSet:
    """Real (query, passage) pairs, grouped by query (each query's pairs are contiguous, k each).

    One object so that every engine of a sweep scores exactly the same pairs in the same order, and
    subsets (`head`) are whole queries, so per-query quality and latency stay meaningful.
    """

    pairs: list[tuple[str, str]]
    qids: list[str]
    doc_ids: list[str]
    k: int
    source: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pairs)

    def query_slices(self) -> list[tuple[str, slice]]:
        """(qid, slice into pairs) for each query, in order."""
        out: list[tuple[str, slice]] = []
        start = 0
        for i in range(1, len(self.qids) + 1):
            if i == len(self.qids) or self.qids[i] != self.qids[start]:
                out.append((self.qids[start], slice(start, i)))
                start = i
        return out

    @property
    def n_queries(self) -> int:
        return len(self.query_slices())

    def head(self, max_pairs: int | None) -> "PairSet":
        """The first whole queries holding at most `max_pairs` pairs (at least one query)."""
        if max_pairs is None or max_pairs >= len(self.pairs):
            return self
        end = 0
        for _, sl in self.query_slices():
            if sl.stop > max_pairs and end > 0:
                break
            end = sl.stop
        return PairSet(self.pairs[:end], self.qids[:end], self.doc_ids[:end], self.k,
                       {**self.source, "subset_of_pairs": len(self.pairs)})

    def describe(self) -> dict[str, Any]:
        chars = [len(q) + len(d) for q, d in self.pairs]
        return {**self.source, "n_pairs": len(self.pairs), "n_queries": self.n_queries, "k": self.k,
                "mean_chars_per_pair": float(np.mean(chars)) if chars else 0.0}


def build_pairs(queries: Mapping[str, str], get_docs: Callable[[Iterable[str]], Mapping[str, str]],
                candidates: Mapping[str, Sequence[str]], *, k: int, max_queries: int | None = None,
                source: dict | None = None) -> PairSet:
    """Pair each query (in `queries` order) with its first k `candidates`; queries with fewer than k
    candidates keep what they have (said in ``source['short_queries']``)."""
    if k <= 0:
        raise BenchError(f"k must be > 0 (got {k})")
    pairs, qids, dids = [], [], []
    short = 0
    kept = 0
    for qid, qtext in queries.items():
        if max_queries is not None and kept >= max_queries:
            break
        cands = list(candidates.get(qid, ()))[:k]
        if not cands:
            continue
        short += len(cands) < k
        texts = get_docs(cands)
        for did in cands:
            pairs.append((qtext, texts[did]))
            qids.append(qid)
            dids.append(did)
        kept += 1
    if not pairs:
        raise BenchError("no (query, passage) pairs could be built: no query has candidates "
                         "(check the run file's query ids against the collection's queries)")
    return PairSet(pairs, qids, dids, k, {**(source or {}), "short_queries": short})


def candidates_from_qrels(queries: Iterable[str], qrels: Mapping[str, Mapping[str, int]],
                          corpus_ids: Sequence[str], *, k: int, seed: int = 0) -> dict[str, list[str]]:
    """Deterministic stand-in for a first stage: relevant documents first (by relevance, then id),
    then judged non-relevant ones, then documents drawn from `corpus_ids` by a seeded generator.

    Judged non-relevant documents were retrieved by some system once, so they are realistic hard
    candidates; the random rest gives realistic passage lengths."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {}
    for qid in queries:
        judged = qrels.get(qid, {})
        rel = sorted((d for d, r in judged.items() if r > 0), key=lambda d: (-judged[d], d))
        nonrel = sorted(d for d, r in judged.items() if r <= 0)
        chosen = (rel + nonrel)[:k]
        seen = set(chosen)
        need = k - len(chosen)
        if need > 0 and len(corpus_ids):
            # Draw a few more than needed so that skipping already chosen ids rarely runs short.
            draw = rng.choice(len(corpus_ids), size=min(len(corpus_ids), need + len(seen) + 8), replace=False)
            for i in draw:
                did = corpus_ids[int(i)]
                if did not in seen:
                    chosen.append(did)
                    seen.add(did)
                    if len(chosen) == k:
                        break
        out[qid] = chosen
    return out


def pairs_from_collection(collection, *, k: int, max_queries: int | None = None, run: Mapping | None = None,
                          run_source: str | None = None, seed: int = 0, pool: int = 200_000) -> PairSet:
    """Real pairs from a `bench.data.Collection`: each query with its first-stage top-k from `run`
    (qid -> docid -> score, ordered by `bench.runs.sort_ranking`), or, without a run, with k documents
    chosen by `candidates_from_qrels` from the first `pool` documents of the corpus."""
    queries = dict(collection.queries)
    if max_queries is not None:
        queries = dict(list(queries.items())[:max_queries])
    source = {"collection": collection.name, "language": getattr(collection, "language", None)}
    if run is not None:
        cands = {q: [d for d, _ in sort_ranking(dict(run[q]))] for q in queries if q in run}
        source["candidates"] = f"first-stage top-{k} from {run_source or 'a run'}"
    else:
        ids: list[str] = []
        for batch in collection.iter_docs():
            ids.extend(d for d, _ in batch)
            if len(ids) >= pool:
                break
        ids = ids[:pool]
        cands = candidates_from_qrels(queries, collection.qrels, ids, k=k, seed=seed)
        source["candidates"] = (f"relevant, then judged non-relevant, then random documents from the first "
                                f"{len(ids)} of the corpus (seed {seed})")
    return build_pairs(queries, collection.get_docs, cands, k=k, source=source)


def sampled_pairs(collection, n: int, *, seed: int = 0, pool: int = 3000) -> PairSet:
    """`n` pairs in random order, for a quick pairs/s check: up to half of them judged (query,
    passage) pairs, the rest a random query with one of the first `pool` passages of the corpus.

    Not grouped by query (k = 1: each pair stands alone), so many queries and passage lengths mix in
    every batch; per-query figures mean nothing on it."""
    rng = random.Random(seed)
    judged_ids = [(q, d) for q, docs in collection.qrels.items() if q in collection.queries for d in docs][: 2 * n]
    missing = set(collection.judged_docs_missing())
    judged = [(q, d) for q, d in judged_ids if d not in missing]
    texts = collection.get_docs({d for _, d in judged})
    rng.shuffle(judged)
    qid_of: dict[str, str] = {}  # query text -> its first id
    for qid, text in collection.queries.items():
        qid_of.setdefault(text, qid)
    qtexts = sorted(qid_of)
    docs: list[tuple[str, str]] = []
    for batch in collection.iter_docs():
        docs.extend(batch)
        if len(docs) >= pool:
            break
    docs = docs[:pool]
    chosen = [(q, d, texts[d]) for q, d in judged[: n // 2]]
    for _ in range(n - len(chosen)):
        qid = qid_of[rng.choice(qtexts)]
        chosen.append((qid, *rng.choice(docs)))
    rng.shuffle(chosen)
    return PairSet([(collection.queries[q], text) for q, _, text in chosen], [q for q, _, _ in chosen],
                   [d for _, d, _ in chosen], 1,
                   {"collection": collection.name, "language": getattr(collection, "language", None),
                    "candidates": f"judged pairs (up to half) and random queries with one of the first {len(docs)} "
                                  f"documents, shuffled (seed {seed})"})


def pair_token_lengths(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int,
                       query_max_length: int | None = None) -> np.ndarray:
    """Tokens each pair has after truncation, special tokens included: the fast engine's own
    tokenizer (query cut to `query_max_length` first, then the passage so the pair fits `max_length`),
    so FLOP counts and the engines agree by construction."""
    if not pairs:
        return np.zeros(0, dtype=np.int64)
    encoded = PairTokenizer(tokenizer, max_length, query_max_length)(pairs)
    return np.array([len(seq) for seq in encoded.seqs], dtype=np.int64)


def text_token_lengths(tokenizer, texts: Sequence[str], max_length: int) -> np.ndarray:
    """Tokens of each text after truncation to `max_length`, special tokens included (bi-encoders)."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return np.array([len(x) for x in ids], dtype=np.int64)
