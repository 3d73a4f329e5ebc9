"""Metrics with trec_eval's numbers, computed by ranx.

Reranker papers disagree in the second decimal because of unstated conventions. Here each one is
stated, and the defaults are those of ``trec_eval -c`` (checked against pytrec_eval in the tests):

* every query in the qrels counts; a query the run misses (or ranks nothing for) scores 0;
  queries in the run but not in the qrels are ignored;
* documents with equal scores are ordered by document id descending (`bench.runs.sort_ranking`);
* ``depth`` (trec_eval ``-M``) keeps the top N of that order before anything else;
* ``judged_only`` (``-J``) then drops documents without a judgment (absent from the qrels, or
  judged with a negative value, which trec_eval reads as "in the pool, unjudged");
* a document is relevant when its judgment is ≥ ``rel_level`` (``-l``); nDCG is the exception,
  as in trec_eval: its gain is the judgment itself (linear gains, log2(rank+1) discount) for every
  judgment ≥ 1, whatever ``rel_level`` says;
* a query whose qrels hold no relevant document still counts, with 0 for every metric
  (trec_eval computes 0 for it and averages it in).

ranx sorts documents by score alone (ties in an unspecified order) and hashes document ids, so
this module never hands it raw scores: it orders and cuts each ranking itself, gives ranx integer
ids in that order, and calls ranx's metric kernels on those prepared arrays.

ranx's kernels are compiled by numba on first use (about a minute) and cached on disk; see
`warm_up` and `kernels_cached`.
"""

from __future__ import annotations

import importlib
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from . import lazy
from .errors import BenchError
from .metrics import Metric, parse_metric
from .runs import Qrels, Run, sort_ranking

#: Our measure -> (ranx kernel module, kernel function); judged@k is counted here, not by ranx.
KERNELS: dict[str, tuple[str, str]] = {
    "ndcg": ("ndcg", "_ndcg_parallel"),
    "mrr": ("reciprocal_rank", "_reciprocal_rank_parallel"),
    "recall": ("recall", "_recall_parallel"),
    "map": ("average_precision", "_average_precision_parallel"),
    "precision": ("precision", "_precision_parallel"),
    "r-precision": ("r_precision", "_r_precision_parallel"),
}


@dataclass(frozen=True)
class Conventions:
    """The evaluation conventions, trec_eval -c by default; each maps to a trec_eval flag."""

    depth: int | None = None  # trec_eval -M: keep the top `depth` documents of each ranking
    rel_level: int = 1  # trec_eval -l: relevance ≥ rel_level counts as relevant (not for nDCG)
    judged_only: bool = False  # trec_eval -J: drop unjudged documents (after the depth cut)

    def __post_init__(self):
        if self.depth is not None and (not isinstance(self.depth, int) or isinstance(self.depth, bool) or self.depth < 1):
            raise BenchError(f"depth {self.depth!r}: must be a positive integer (or None for the whole ranking)")
        if not isinstance(self.rel_level, int) or isinstance(self.rel_level, bool) or self.rel_level < 1:
            raise BenchError(f"rel_level {self.rel_level!r}: must be an integer ≥ 1")
        if not isinstance(self.judged_only, bool):
            raise BenchError(f"judged_only {self.judged_only!r}: must be true or false")

    def trec_eval_flags(self) -> str:
        flags = ["-c"]
        if self.depth is not None:
            flags.append(f"-M {self.depth}")
        if self.rel_level != 1:
            flags.append(f"-l {self.rel_level}")
        if self.judged_only:
            flags.append("-J")
        return " ".join(flags)

    def describe(self) -> dict:
        """Every convention in words, for records and table footnotes."""
        return {
            "trec_eval_flags": self.trec_eval_flags(),
            "depth": self.depth,
            "rel_level": self.rel_level,
            "judged_only": self.judged_only,
            "queries": "every query in the qrels counts; one the run misses scores 0; run-only queries are ignored",
            "ties": "score descending, then document id descending (trec_eval's order)",
            "relevant": f"judgment >= {self.rel_level}",
            "ndcg_gain": "linear: gain = judgment for judgments >= 1 (independent of rel_level, as in trec_eval); discount log2(rank+1)",
            "no_relevant_queries": "a query without relevant documents counts with 0",
            "judged": "a document is judged when the qrels hold a judgment >= 0 for it",
        }


@dataclass
class Evaluation:
    """Means over all qrels queries, per-query values (per_query[metric][qid]) and the conventions used;
    metrics are keyed by their canonical form (`bench.metrics`)."""

    means: dict[str, float]
    per_query: dict[str, dict[str, float]]
    conventions: Conventions
    num_queries: int = 0
    seconds: float = field(default=0.0, compare=False)


def prepare_ranking(docs: dict[str, float] | None, judged: dict[str, int], conventions: Conventions) -> list[str]:
    """Document ids of one query in the order trec_eval scores them: sorted (ties by docid
    descending), cut at `depth`, then, with `judged_only`, without unjudged documents."""
    if not docs:
        return []
    ranked = [doc_id for doc_id, _ in sort_ranking(docs)]
    if conventions.depth is not None:
        ranked = ranked[: conventions.depth]
    if conventions.judged_only:
        ranked = [d for d in ranked if judged.get(d, -1) >= 0]
    return ranked


def evaluate(qrels: Qrels, run: Run, metrics: Sequence[str | Metric],
             conventions: Conventions = Conventions()) -> Evaluation:
    """Score `run` against `qrels` for `metrics` (any spelling `parse_metric` accepts) under `conventions`.

    Keys of `means` and `per_query` are the metrics' canonical forms (``ndcg@10`` -> ``nDCG@10``)."""
    started = time.perf_counter()
    if isinstance(metrics, (str, Metric)):
        metrics = [metrics]
    parsed = [parse_metric(m) for m in metrics]
    if not parsed:
        raise BenchError("no metrics asked for; name at least one, e.g. ndcg@10")
    if len(set(parsed)) != len(parsed):
        raise BenchError(f"metric names repeat: {list(map(str, metrics))}")
    if not qrels:
        raise BenchError("empty qrels: there is no query to evaluate")

    qids = list(qrels)
    rankings = [prepare_ranking(run.get(qid), qrels[qid], conventions) for qid in qids]
    per_query: dict[str, dict[str, float]] = {}
    arrays = None
    for metric in parsed:
        if metric.measure == "judged":
            values = [_judged_at(ranking, qrels[qid], metric.cutoff) for qid, ranking in zip(qids, rankings)]
        else:
            if arrays is None:
                arrays = _ranx_arrays(qrels, qids, rankings)
            values = _ranx_kernel(metric, arrays, conventions)
        per_query[str(metric)] = {qid: float(v) for qid, v in zip(qids, values)}
    means = {name: float(sum(v.values()) / len(v)) for name, v in per_query.items()}
    return Evaluation(means=means, per_query=per_query, conventions=conventions, num_queries=len(qids),
                      seconds=time.perf_counter() - started)


def _judged_at(ranking: list[str], judged: dict[str, int], k: int) -> float:
    """Share of the top k that holds a judgment ≥ 0; like P@k the denominator is k even when fewer are ranked."""
    return sum(1 for d in ranking[:k] if judged.get(d, -1) >= 0) / k


def _ranx_arrays(qrels: Qrels, qids: list[str], rankings: list[list[str]]):
    """Per query, ranx's (id, value) float64 arrays with small integer ids instead of hashed docids:
    qrels sorted by judgment descending (ranx's ideal DCG reads them in that order), the run in our
    prepared order (ranx's kernels read it as given; its score column is not used)."""
    q_list, r_list = [], []
    for qid, ranking in zip(qids, rankings):
        judged = sorted(qrels[qid].items(), key=lambda item: -item[1])
        ids = {doc_id: i for i, (doc_id, _) in enumerate(judged)}
        q_arr = np.empty((len(judged), 2))
        q_arr[:, 0] = np.arange(len(judged))
        q_arr[:, 1] = [rel for _, rel in judged]
        offset = len(judged)  # unjudged documents get ids past the judged ones, unique by position
        r_arr = np.empty((len(ranking), 2))
        r_arr[:, 0] = [ids.get(doc_id, offset + pos) for pos, doc_id in enumerate(ranking)]
        r_arr[:, 1] = np.arange(len(ranking), 0, -1)
        q_list.append(q_arr)
        r_list.append(r_arr)
    return lazy.numba.typed.List(q_list), lazy.numba.typed.List(r_list)


def _kernel(measure: str):
    module, function = KERNELS[measure]
    return getattr(importlib.import_module(f"ranx.metrics.{module}"), function)


def _ranx_kernel(metric: Metric, arrays, conventions: Conventions):
    q_list, r_list = arrays
    k = metric.cutoff or 0  # ranx: 0 = the whole ranking
    kernel = _kernel(metric.measure)
    with warnings.catch_warnings():
        # numba's compile of ranx's prange loops warns about its own uint64 loop index; harmless
        warnings.simplefilter("ignore", lazy.numba.core.errors.NumbaTypeSafetyWarning)
        if metric.measure == "ndcg":
            return kernel(q_list, r_list, k, 1, True)  # gains from every judgment >= 1, Järvelin's linear DCG
        if metric.measure == "r-precision":
            return kernel(q_list, r_list, conventions.rel_level)
        return kernel(q_list, r_list, k, conventions.rel_level)


# ------------------------------------------------------------------------------------ numba warm-up
COLD_NOTICE = ("compiling ranx's metric kernels (first use after install; up to a minute, cached "
               "afterwards; `make install` does this ahead)...")


def kernels_cached(metrics: Sequence[str] | None = None) -> bool:
    """Whether numba holds an on-disk cache for the ranx kernels `metrics` need (default: all that
    `evaluate` uses), so that evaluating them compiles nothing.

    Reads numba's cache index for each kernel; an index that is missing, stale (ranx's source
    changed) or empty means the next call compiles."""
    measures = {parse_metric(m).measure for m in metrics} if metrics is not None else set(KERNELS)
    for measure in sorted(measures & set(KERNELS)):
        cache = getattr(_kernel(measure), "_cache", None)
        try:
            if not cache._cache_file._load_index():  # numba internals: {} when absent or stale
                return False
        except Exception:  # a numba without these internals: say it may compile
            return False
    return True


def notify_if_cold(metrics: Sequence[str] | None = None, stream=None) -> bool:
    """Print `COLD_NOTICE` to `stream` (stderr) when the kernels for `metrics` are not cached yet;
    returns whether it did."""
    if kernels_cached(metrics):
        return False
    print(COLD_NOTICE, file=stream or sys.stderr, flush=True)
    return True


def warm_up() -> float:
    """Compile (or load from numba's cache) every ranx kernel `evaluate` uses, on a tiny input.

    Called by `make install` / CI so the first `bench eval` does not sit silent for a minute.
    Returns the seconds it took."""
    started = time.perf_counter()
    qrels = {"q1": {"d1": 2, "d2": 0, "d3": 1}, "q2": {"d9": 1}}
    run = {"q1": {"d1": 0.5, "d3": 0.5, "d4": 0.1}, "q2": {}}
    evaluate(qrels, run, ["ndcg@10", "ndcg", "mrr@10", "recall@10", "map", "precision@10", "r-precision", "judged@10"])
    return time.perf_counter() - started
