"""Throughput of the listwise families: FIRST on the packed engine, FIRST's transformers reference and
generated rankings, side by side on the same queries, in one record and one table.

A listwise reranker's unit of work is a window, not a pair: a query of k candidates costs rank_llm's
number of windows (window 20, stride 10: 9 for k = 100), each one prompt of up to ``context_size``
tokens, and for generation some 4 x window new tokens. So a cell reports, per timed pass over the
same queries (raw text in, scores out, prompts built inside the pass):

* ``windows_per_s`` and ``queries_per_s`` (``pairs_per_s``: candidates reranked per second, for the
  quality-versus-speed chart), ``latency_ms`` per query (p50/p95, one query per call);
* ``tokens_per_window`` (prompt tokens), ``generated_tokens_per_window``, ``prefix_tokens_saved`` (the
  share of prompt tokens the fast engine's shared-prefix reuse did not compute);
* ``repaired_share`` (windows whose answer had to be repaired) and, for FIRST, ``same_order_as`` the
  reference cell (the share of queries whose final order equals the transformers fp32 cell's).

Cells: every listwise reranker of the experiment × the ``[throughput]`` engines its head runs (FIRST:
fast and transformers; listwise: transformers) × dtypes × token budgets (fast) or batch sizes (windows
per batch; transformers) × the fast engine's variants. On a CPU the cells' timed passes interleave (as
`bench.throughput.sweep` does), so load on a shared machine spreads over all of them.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

from .. import lazy, models
from ..config import RerankerSpec, ThroughputSpec
from ..engine.device import release_memory
from ..records import ThroughputRecord, make_record
from ..rerank import build_reranker
from ..rerank.common import QueryCandidates
from ..rerank.listwise import LISTWISE_HEADS
from .pairs import PairSet
from .sweep import Cell, _close, _error_text, _failed, _jsonable, cells_from_spec, resolve_device
from .timing import PeakMemory, percentile

#: the engines each listwise head runs
HEAD_ENGINES = {"first": ("fast", "transformers"), "listwise": ("transformers",)}
COLUMNS = ["reranker", "head", "engine", "dtype", "batch / budget", "options", "queries", "windows", "windows/s",
           "min–max", "q/s", "cand./s", "p50 ms", "tokens/window", "gen. tokens/window", "prefix saved", "repaired",
           "same order", "vs reference"]


def is_listwise(spec: RerankerSpec) -> bool:
    return spec.head in LISTWISE_HEADS


def queries_of(pairset: PairSet) -> list[QueryCandidates]:
    """The sweep's pairs as whole queries (each query's candidates in first-stage order)."""
    out = []
    for _, sl in pairset.query_slices():
        pairs = pairset.pairs[sl]
        out.append(QueryCandidates(pairs[0][0], tuple(pairset.doc_ids[sl]), tuple(p for _, p in pairs)))
    return out


@dataclass
class ListwiseCell:
    """One reranker × one engine setting: the spec it builds and the sweep cell's knobs."""

    spec: RerankerSpec
    cell: Cell

    @property
    def label(self) -> str:
        return f"{self.spec.label}: {self.cell.label}"


def listwise_cells(specs: list[RerankerSpec], tp: ThroughputSpec, options=None, engine_dtypes=None) -> list[ListwiseCell]:
    """Every listwise reranker × the throughput table's cells its head can run (one max_length: the
    prompt's bound is the reranker's listwise.context_size)."""
    out = []
    for spec in specs:
        for cell in cells_from_spec(tp.model_copy(update={"max_lengths": tp.max_lengths[:1]}), options=options,
                                    engine_dtypes=engine_dtypes):
            if cell.engine in HEAD_ENGINES[spec.head]:
                fields = {"engine": cell.engine, "dtype": cell.dtype}
                if cell.batch_size is not None:
                    fields["batch_size"] = cell.batch_size
                if cell.token_budget is not None:
                    fields["token_budget"] = cell.token_budget
                spec_cell = spec.model_copy(update=fields)
                out.append(ListwiseCell(spec_cell, Cell(cell.engine, cell.dtype, spec.listwise.context_size,
                                                        cell.batch_size, cell.token_budget, cell.options)))
    return out


def run_listwise_sweep(specs: list[RerankerSpec], tp: ThroughputSpec, pairset: PairSet, *, cache_dir=None,
                       name: str = "throughput", options=None, engine_dtypes=None, settings: dict | None = None,
                       progress: bool = True) -> ThroughputRecord:
    """Time every listwise cell on the same queries; one ``throughput`` record holding them all."""
    queries = queries_of(pairset)
    cells = listwise_cells(specs, tp, options, engine_dtypes)
    device = resolve_device(specs[0].device)
    interleave = tp.order == "interleaved" or (tp.order == "auto" and device.startswith("cpu"))
    built, results, times, orders = {}, {}, {}, {}
    bar = lazy.tqdm.tqdm(total=len(cells) * (tp.warmup + tp.repeats), desc="listwise cells", unit="pass",
                         disable=not progress, file=sys.stderr)

    def timed(c: ListwiseCell):
        t0 = time.perf_counter()
        scores = built[c.label].rerank_queries(queries)
        times[c.label].append(time.perf_counter() - t0)
        orders[c.label] = [np.argsort(-s, kind="stable").tolist() for s in scores]
        bar.update(1)

    def start(c: ListwiseCell):
        built[c.label] = build_reranker(c.spec, cache_dir=cache_dir, **dict(c.cell.options))
        for _ in range(tp.warmup):
            built[c.label].rerank_queries(queries)
            bar.update(1)
        built[c.label].reset_stats()  # the counters then cover exactly the timed passes
        times[c.label] = []

    def finish(c: ListwiseCell):
        rr = built.pop(c.label)
        stats, described = dict(rr.stats()), _jsonable(rr.describe())
        latencies = []
        for q in queries[:tp.latency_queries]:
            t0 = time.perf_counter()
            rr.rerank_queries([q])
            latencies.append((time.perf_counter() - t0) * 1000.0)
        results[c.label] = cell_result(c, queries, times[c.label], stats, described, latencies, memory)
        _close(rr)

    memory = {"bytes": None, "what": "interleaved cells share the process: per-cell peak not measured"}
    todo = [c for c in cells]
    try:
        if interleave:
            for c in list(todo):
                _guard(c, start, results, todo)
            for _ in range(tp.repeats):
                for c in list(todo):
                    _guard(c, timed, results, todo)
            for c in list(todo):
                _guard(c, finish, results, todo)
        else:
            for c in list(todo):
                peak = PeakMemory(device)
                peak.reset()
                _guard(c, start, results, todo)
                for _ in range(tp.repeats):
                    if c in todo:
                        _guard(c, timed, results, todo)
                memory = peak.result()
                if c in todo:
                    _guard(c, finish, results, todo)
                release_memory(device)
    finally:
        for rr in built.values():
            _close(rr)
        built.clear()
        bar.close()
    ordered = [results[c.label] for c in cells]
    compare_orders(cells, ordered, orders)
    first = specs[0]
    return make_record(
        "throughput", name=f"{name}-listwise", model={**models.describe(first.model, first.revision), "shape": None},
        device=device, pairs={**pairset.describe(), "n_windows_per_pass": ordered[0].get("windows_per_pass")
                              if ordered else None},
        settings={"warmup": tp.warmup, "repeats": tp.repeats, "latency_queries": tp.latency_queries,
                  "interleave": interleave, "family": "listwise", **(settings or {}),
                  "rerankers": [s.model_dump(mode="json") for s in specs]},
        ceiling={}, cells=ordered)


def _guard(c: ListwiseCell, step, results: dict, todo: list) -> None:
    """Run one step of a cell; a failure is recorded as the cell's error and the cell leaves the sweep."""
    try:
        step(c)
    except Exception as exc:  # an engine crash must not lose the other cells
        results[c.label] = {**_failed(c.cell, _error_text(exc)), "label": c.label, "reranker": c.spec.label,
                            "head": c.spec.head}
        todo.remove(c)


def cell_result(c: ListwiseCell, queries, times: list[float], stats: dict, described: dict, latencies, memory) -> dict:
    med = statistics.median(times)
    repeats = len(times)
    windows = stats.get("windows", 0) / repeats
    candidates = sum(len(q.passages) for q in queries)
    prefix = described.get("prefix_reuse") or {}
    return {
        **c.cell.to_dict(), "label": c.label, "variant": f"{c.spec.label} {c.cell.variant}",
        "reranker": c.spec.label, "head": c.spec.head, "engine_describe": described,
        "n_pairs": candidates, "n_queries": len(queries), "k": max(len(q.passages) for q in queries),
        "warmup": None, "repeats": repeats, "seconds": times, "median_s": med,
        "pairs_per_s": candidates / med, "queries_per_s": len(queries) / med,
        "windows_per_pass": windows, "windows_per_s": windows / med,
        "tokens_per_window": stats.get("tokens", 0) / repeats / windows if windows else None,
        "generated_tokens_per_window": stats.get("generated_tokens", 0) / repeats / windows if windows else None,
        "prefix_tokens_saved": prefix.get("prefix_tokens_saved") if prefix.get("enabled") else None,
        "repaired_share": stats.get("repaired_windows", 0) / stats["windows"] if stats.get("windows") else None,
        "latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                       "n_queries": len(latencies)},
        "peak_memory": memory, "stats": _jsonable(stats), "dtype_resolved": described.get("dtype"),
        "error": None,
    }


def compare_orders(cells: list[ListwiseCell], results: list[dict], orders: dict) -> None:
    """Each cell's final orders against its reranker's reference cell (transformers, fp32): the share
    of queries ordered identically, and the speed ratio."""
    for c, r in zip(cells, results):
        if r.get("error"):
            continue
        ref = next((x for x, rx in zip(cells, results) if not rx.get("error") and x.spec.label == c.spec.label
                    and x.cell.engine == "transformers" and rx.get("dtype_resolved") == "fp32"), None)
        if ref is None or ref is c:
            r["same_order_as"] = None
            continue
        mine, theirs = orders[c.label], orders[ref.label]
        r["same_order_as"] = {"cell": ref.label, "share": sum(a == b for a, b in zip(mine, theirs)) / len(mine)}
        r["speedup_vs_reference"] = r["windows_per_s"] / next(rx for x, rx in zip(cells, results)
                                                              if x is ref)["windows_per_s"]


def listwise_table(record: ThroughputRecord) -> str:
    """The listwise cells as one Markdown table, made from the record."""
    rows = []
    for c in record.cells:
        get = (c.model_extra or {}).get
        size = f"{c.token_budget} tok" if c.token_budget else f"{c.batch_size} win"
        opts = " ".join(f"{k}={v}" for k, v in c.options.items()) or "-"
        if c.error:
            rows.append([get("reranker", ""), get("head", ""), c.engine, c.dtype, size, opts, "", c.error[:70]]
                        + [""] * (len(COLUMNS) - 8))
            continue
        same = get("same_order_as")
        rates = [get("windows_per_pass") / t for t in c.seconds if t]
        rows.append([get("reranker"), get("head"), c.engine, c.dtype_resolved or c.dtype, size, opts, str(c.n_queries),
                     f"{get('windows_per_pass'):.0f}", f"{get('windows_per_s'):.3g}",
                     f"{min(rates):.3g}–{max(rates):.3g}" if rates else "–", f"{c.queries_per_s:.3g}",
                     f"{c.pairs_per_s:.3g}", _fmt(c.latency_ms.get("p50"), "{:.0f}"),
                     _fmt(get("tokens_per_window"), "{:.0f}"), _fmt(get("generated_tokens_per_window"), "{:.1f}"),
                     _fmt(get("prefix_tokens_saved"), "{:.1%}"), _fmt(get("repaired_share"), "{:.0%}"),
                     _fmt(same and same["share"], "{:.0%}"), _fmt(get("speedup_vs_reference"), "{:.2f}×")])
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    body = "".join("| " + " | ".join(str(x) for x in row) + " |\n" for row in rows)
    device = record.device
    return (head + body + f"\nDevice: {device}. Timed passes: {record.settings.repeats} per cell (median; min–max over "
            "them), "
            f"{'interleaved' if record.settings.interleave else 'one cell after the other'}; each pass reranks the "
            f"same {record.pairs.n_queries} queries end to end (prompts built inside the pass). 'same order': share of "
            "queries whose final order equals the reranker's transformers fp32 cell; 'vs reference': windows/s "
            "against that cell.\n")


def _fmt(value, spec: str) -> str:
    return "–" if value is None else spec.format(value)
