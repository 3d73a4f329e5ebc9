"""duoT5 (pairwise): every ordered pair of a query's candidates compared, then aggregated.

For a query's k candidates (its top ``top_k``, in the order they arrive: usually monoT5's), each
ordered pair (i, j), i != j, is one input ``Query: q Document0: d_i Document1: d_j Relevant:``
scored as monoT5 scores (``bench.rerank.seq2seq.t5``): p(i > j) = p(true). The k·(k-1) probabilities
are aggregated by sym-sum, as the authors do (Pradeep et al. 2021, "The Expando-Mono-Duo Design
Pattern"; pygaggle ``DuoT5.rescore`` over ``permutations``): s_i = Σ_j p(i > j) + Σ_j (1 - p(j > i)).
rank_llm's ``PairwiseRankLLM.rerank_batch`` scores only the pairs i < j (adding p to i and 1 - p to
j), half the work and not the same ranking: ``duo_aggregation = "rank_llm"`` runs that variant (the
one rank_llm's 2CR rows were made with); the default follows the paper and pygaggle.

A query-level reranker (``rerank_queries``): the rerank stage hands it whole queries; the inputs
of every query of a call are scored together (the fast engine sorts them by length across queries).
Counters: ``pairs`` are the candidates reranked (as for every family), ``duo_pairs`` the ordered
pairs compared (summed into the record's ``diagnostics.counters``).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ...errors import BenchError
from ..common import QueryCandidates
from .monot5 import T5EngineBase
from .templates import DUOT5_MAX_PAIRS, duo_pairs

AGGREGATION = {"sym-sum": "sym-sum over every ordered pair: s_i = sum_j p(i > j) + sum_j (1 - p(j > i)) (pygaggle DuoT5)",
               "rank_llm": "each pair i < j once: s_i += p(i > j), s_j += 1 - p(i > j) (rank_llm PairwiseRankLLM)"}


def sym_sum(n: int, order: list[tuple[int, int]], probs: np.ndarray) -> np.ndarray:
    """Each candidate's sym-sum score from the ordered pairs' p(i > j) (float64 sums, float32 out)."""
    p = np.zeros((n, n), dtype=np.float64)
    for (i, j), value in zip(order, probs):
        p[i, j] = value
    off = ~np.eye(n, dtype=bool)
    return ((p * off).sum(axis=1) + ((1.0 - p) * off).sum(axis=0)).astype(np.float32)


def once_sum(n: int, order: list[tuple[int, int]], probs: np.ndarray) -> np.ndarray:
    """rank_llm's aggregation over the pairs i < j: p(i > j) to i, 1 - p(i > j) to j (float64 sums)."""
    s = np.zeros(n, dtype=np.float64)
    for (i, j), value in zip(order, probs):
        s[i] += value
        s[j] += 1.0 - value
    return s.astype(np.float32)


class DuoT5Reranker(T5EngineBase):
    """duoT5: ``rerank_queries`` -> sym-sum scores per candidate."""

    head = "duot5"

    def __init__(self, spec, device: str = "cpu", cache_dir=None, **kwargs):
        super().__init__(spec, device, cache_dir, **kwargs)
        self.max_pairs = spec.max_pairs_per_query if spec.max_pairs_per_query is not None else DUOT5_MAX_PAIRS
        self.aggregation = spec.duo_aggregation or "sym-sum"
        self.duo_pairs = 0

    def rerank_queries(self, queries: Sequence[QueryCandidates]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        seqs, plans, hit, hit_q = [], [], 0, 0
        for q in queries:
            n = len(q.passages)
            if duo_pairs(n, self.aggregation) > self.max_pairs:
                raise BenchError(f"reranker {self.label}: a query with {n} candidates makes "
                                 f"{duo_pairs(n, self.aggregation):,} duoT5 pairs, above max_pairs_per_query = "
                                 f"{self.max_pairs:,}; lower top_k or raise max_pairs_per_query to confirm")
            enc, order = self.t5.prompts.duo(q.query, list(q.passages), once=self.aggregation == "rank_llm")
            plans.append((n, order, len(seqs)))
            seqs += enc.seqs
            hit, hit_q = hit + enc.hit_max, hit_q + enc.hit_query_max
        log_p, padded = self.score_ids(seqs)
        probs = np.exp(log_p.astype(np.float64))
        aggregate = once_sum if self.aggregation == "rank_llm" else sym_sum
        out = [aggregate(n, order, probs[start:start + len(order)]) for n, order, start in plans]
        self.duo_pairs += len(seqs)
        self._stats.add(pairs=sum(len(q.passages) for q in queries), tokens=sum(map(len, seqs)), padded_tokens=padded,
                        truncated_pairs=hit, truncated_queries=hit_q, seconds=time.perf_counter() - t0)
        return out

    def stats(self) -> dict:
        return {**super().stats(), "duo_pairs": self.duo_pairs}

    def reset_stats(self) -> None:
        super().reset_stats()
        self.duo_pairs = 0

    def describe(self) -> dict:
        return self._describe_t5(top_k=self.spec.top_k, max_pairs_per_query=self.max_pairs,
                                 pairs_per_query="k·(k-1)/2 pairs i < j" if self.aggregation == "rank_llm"
                                 else "k·(k-1) ordered pairs",
                                 duo_aggregation=self.aggregation, aggregation=AGGREGATION[self.aggregation])


class DuoT5Transformers(DuoT5Reranker):
    engine = "transformers"


class DuoT5Fast(DuoT5Reranker):
    engine = "fast"
