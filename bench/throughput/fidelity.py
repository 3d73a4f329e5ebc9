"""Score fidelity: how much a lower precision changes a reranker's scores and rankings against fp32.

Why: bf16/fp16 buy speed; a user needs to know what they cost in ranking terms on the same pairs,
not in abstract ulps. For each precision against the fp32 reference we report

* ``max_abs_diff`` / ``mean_abs_diff`` of the float32 scores;
* per-query Kendall tau (scipy's tau-b) between the two score lists of the query's k candidates
  (a query whose reference scores are all equal has no tau: counted in ``tau_undefined``);
* ``top10_identical``: the share of queries whose top 10 is the same documents in the same order,
  ranked with the project's one tie rule (`bench.runs.sort_ranking`);
* ``ndcg@10``: reference, candidate and their difference on the same queries (needs qrels), with
  the evaluator that computed it named in ``computed_by``.

A NaN or infinite score is an error naming the pair (index, query id, document id), never something
a sort silently puts somewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import lazy
from ..errors import BenchError
from ..evaluate import evaluate
from ..records import CellResult, FidelityComparison, FidelityRecord, ThroughputRecord, make_record
from ..rerank.common import check_scores
from ..runs import sort_ranking
from .pairs import PairSet

EVALUATORS = ("auto", "bench.evaluate", "pytrec_eval", "builtin")


def run_of(scores: np.ndarray, pairset: PairSet) -> dict[str, dict[str, float]]:
    """qid -> docid -> score, refusing duplicate documents within a query (a ranking needs unique ids)."""
    run: dict[str, dict[str, float]] = {}
    for i, (qid, did) in enumerate(zip(pairset.qids, pairset.doc_ids)):
        docs = run.setdefault(qid, {})
        if did in docs:
            raise BenchError(f"pair {i}: document {did!r} appears twice for query {qid!r}; fidelity needs unique "
                             "candidates per query")
        docs[did] = float(scores[i])
    return run


def top_ids(docs: Mapping[str, float], n: int) -> list[str]:
    return [d for d, _ in sort_ranking(dict(docs))[:n]]


def ndcg_at_10(qrels: Mapping[str, Mapping[str, int]], runs: Sequence[Mapping[str, Mapping[str, float]]],
               evaluator: str = "auto") -> tuple[list[float], str]:
    """Mean nDCG@10 of each run over the qrels' queries (trec_eval -c conventions: a query the run
    misses scores 0), and the name of what computed it.

    ``auto`` takes the project's evaluator (`bench.evaluate`, ranx with trec_eval's conventions), then
    pytrec_eval, then the builtin formula — whichever is installed first; ``computed_by`` says which."""
    if evaluator not in EVALUATORS:
        raise BenchError(f"unknown evaluator {evaluator!r}; use one of {', '.join(EVALUATORS)}")
    order = ["bench.evaluate", "pytrec_eval", "builtin"] if evaluator == "auto" else [evaluator]
    missing = []
    for name in order:
        note = f" (not installed: {'; '.join(missing)})" if missing else ""
        try:
            if name == "bench.evaluate":
                return [float(evaluate(dict(qrels), dict(r), ["nDCG@10"]).means["nDCG@10"]) for r in runs], name
            if name == "pytrec_eval":
                import pytrec_eval

                out = []
                for r in runs:
                    full = {q: dict(r.get(q, {})) for q in qrels}
                    ev = pytrec_eval.RelevanceEvaluator({q: dict(v) for q, v in qrels.items()}, {"ndcg_cut.10"})
                    per = ev.evaluate(full)
                    out.append(float(np.mean([per[q]["ndcg_cut_10"] if q in per else 0.0 for q in qrels])))
                return out, "pytrec_eval ndcg_cut.10" + note
            return [_builtin_ndcg10(qrels, r) for r in runs], "builtin nDCG@10 (linear gains, trec_eval tie order)" + note
        except ImportError as exc:
            if evaluator != "auto":
                raise BenchError(f"evaluator {name!r} is not installed ({exc}); use evaluator='auto'") from None
            missing.append(f"{name}: {exc}")
    raise AssertionError("unreachable")  # pragma: no cover - builtin never raises ImportError


def _builtin_ndcg10(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]) -> float:
    """trec_eval's ndcg_cut.10 with -c: gain = relevance (negative counts as 0), log2(rank+1) discount,
    ideal from all judged documents, documents ordered by `sort_ranking`; a query with no relevant
    document scores 0."""
    values = []
    for qid, judged in qrels.items():
        gains = sorted((max(r, 0) for r in judged.values()), reverse=True)[:10]
        ideal = sum(g / np.log2(i + 2) for i, g in enumerate(gains))
        if ideal <= 0:
            values.append(0.0)
            continue
        ranked = top_ids(run.get(qid, {}), 10)
        dcg = sum(max(judged.get(d, 0), 0) / np.log2(i + 2) for i, d in enumerate(ranked))
        values.append(dcg / ideal)
    return float(np.mean(values)) if values else 0.0


def compare(reference: np.ndarray, candidate: np.ndarray, pairset: PairSet, *,
            qrels: Mapping[str, Mapping[str, int]] | None = None, top: int = 10, evaluator: str = "auto",
            labels: tuple[str, str] = ("reference", "candidate")) -> dict[str, Any]:
    """Fidelity of `candidate` scores against `reference` scores on the same `pairset`."""
    ref = check_scores(reference, pairset.pairs, labels[0], qids=pairset.qids, doc_ids=pairset.doc_ids)
    cand = check_scores(candidate, pairset.pairs, labels[1], qids=pairset.qids, doc_ids=pairset.doc_ids)
    diff = np.abs(ref.astype(np.float64) - cand.astype(np.float64))
    taus, undefined, identical = [], 0, 0
    ref_run, cand_run = run_of(ref, pairset), run_of(cand, pairset)
    slices = pairset.query_slices()
    for qid, sl in slices:
        if len(np.unique(ref[sl])) < 2 or len(np.unique(cand[sl])) < 2:
            undefined += 1
        else:
            taus.append(float(lazy.scipy_stats.kendalltau(ref[sl], cand[sl]).statistic))
        identical += top_ids(ref_run[qid], top) == top_ids(cand_run[qid], top)
    out: dict[str, Any] = {
        "n_pairs": len(pairset), "n_queries": len(slices),
        "max_abs_diff": float(diff.max()) if len(diff) else 0.0,
        "mean_abs_diff": float(diff.mean()) if len(diff) else 0.0,
        # how far apart the reference scores are: a precision error is small or large against this
        "reference_score_std": float(ref.std()) if len(ref) else 0.0,
        "max_abs_diff_over_std": float(diff.max() / ref.std()) if len(ref) and ref.std() > 0 else None,
        "kendall_tau": {"mean": _stat(taus, np.mean), "median": _stat(taus, np.median), "min": _stat(taus, np.min),
                        "n_queries": len(taus), "tau_undefined": undefined, "method": "scipy.stats.kendalltau (tau-b)"},
        f"top{top}_identical": identical / len(slices) if slices else None,
        f"top{top}_identical_queries": identical,
    }
    if qrels is not None:
        judged = {q: dict(qrels[q]) for q, _ in slices if q in qrels}
        if judged:
            (r, c), by = ndcg_at_10(judged, [ref_run, cand_run], evaluator)
            out["ndcg@10"] = {"reference": r, "candidate": c, "delta": c - r, "n_queries": len(judged),
                              "computed_by": by}
        else:
            out["ndcg@10"] = {"reference": None, "candidate": None, "delta": None, "n_queries": 0,
                              "computed_by": "none: no query of the pairs has qrels"}
    return out


def _stat(values: Sequence[float], fn) -> float | None:
    return float(fn(values)) if len(values) else None


def reference_for(cell: CellResult, cells: Sequence[CellResult]) -> CellResult | None:
    """The fp32 cell a cell is compared with, at the same max_length: the same engine and options if
    the sweep has one (isolates precision), else the same engine, else the plain loop's fp32 cell,
    else any fp32 cell."""
    ok = [c for c in cells if not c.error and c.dtype_resolved == "fp32"
          and c.max_length == cell.max_length and c.label != cell.label]
    for pick in (lambda c: c.variant == cell.variant, lambda c: c.engine == cell.engine,
                 lambda c: c.engine == "transformers", lambda c: True):
        found = [c for c in ok if pick(c)]
        if found:
            return max(found, key=lambda c: c.n_pairs)
    return None


def sweep_fidelity(throughput_record: ThroughputRecord, scores: Mapping[str, np.ndarray], pairset: PairSet, *,
                   qrels: Mapping[str, Mapping[str, int]] | None = None, evaluator: str = "auto",
                   include_fp32: bool = False) -> list[FidelityComparison]:
    """Each non-fp32 cell of a sweep against its fp32 reference (`reference_for`), on the pairs both
    scored (the shorter one's whole queries). fp32 cells against another fp32 cell with
    `include_fp32` (e.g. two budgets of one engine; should be ~1e-6)."""
    cells = [c for c in throughput_record.cells if not c.error and c.label in scores]
    out, done = [], set()
    # The plain loop's cells last: between two fp32 cells, the plain loop is the reference.
    for cell in sorted(cells, key=lambda c: c.engine == "transformers"):
        if cell.dtype_resolved == "fp32" and not include_fp32:
            continue
        ref = reference_for(cell, cells)
        if ref is None or (cell.label, ref.label) in done:
            continue
        done.add((ref.label, cell.label))
        n = min(cell.n_pairs, ref.n_pairs)
        sub = pairset.head(n)
        n = len(sub)
        result = compare(scores[ref.label][:n], scores[cell.label][:n], sub, qrels=qrels,
                         evaluator=evaluator, labels=(ref.label, cell.label))
        out.append(FidelityComparison.model_validate(
            {"cell": cell.label, "engine": cell.engine, "variant": cell.variant, "dtype": cell.dtype_resolved,
             "reference": ref.label, **result}))
    return out


def fidelity_record(comparisons: list[FidelityComparison], *, throughput_record: ThroughputRecord | None = None,
                    **fields) -> FidelityRecord:
    """One record of kind ``fidelity`` holding every comparison of a sweep."""
    if throughput_record is not None:
        fields = {"name": throughput_record.name, "model": throughput_record.model,
                  "device": throughput_record.device, "pairs": throughput_record.pairs, **fields}
    return make_record("fidelity", comparisons=comparisons, **fields)
