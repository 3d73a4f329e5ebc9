"""Cells and sweeps: each engine setting timed on the same pairs, one record per sweep.

Why this module exists: a pairs/s number is only worth something with its context (which pairs, how
long, which engine and settings, on which device, against what ceiling). Every cell of a sweep runs
the same real pairs end to end (raw text in, float32 scores on the host out: tokenization included),
after warm-up runs, for several timed repeats; the record keeps every repeat and reports the median.

What one cell reports (see `run_cell`):

* ``pairs_per_s``: pairs ÷ median seconds of a full pass (CUDA-synchronised around the clock).
* ``queries_per_s``: ``pairs_per_s / k`` — queries of k candidates each, when queries are batched
  together (derived, not timed separately).
* ``latency_ms``: p50/p95 over a sample of queries, each query's k pairs scored as one call (what a
  search service sees per request).
* ``peak_memory``: ``torch.cuda.max_memory_allocated`` reset per cell (weights + activations); on CPU
  the process' peak resident set (VmHWM, reset per cell through /proc/self/clear_refs), or null with
  the reason when it cannot be reset.
* ``padding_fraction``: padded tokens that carry no text ÷ all tokens computed, from the engine's
  ``stats()``.
* ``useful_tflop_per_s`` and ``ceiling_share``: matmul FLOPs on the real (unpadded) tokens
  (`useful_flops`) ÷ median seconds, and that rate ÷ the device's measured matrix rate
  (`matmul_ceiling`, measured once per sweep). The count is the full model's on every real token, the
  same for every engine: work an engine skips (padding it never computes, the last layer's query
  side that only the first token needs with ``prune_last_layer``) shows as a higher rate, not a
  smaller count.
* ``speedup_vs_plain``: pairs/s ÷ that of the plain transformers loop (fp32) in the same sweep.

Records: ONE record of kind ``throughput`` per sweep, its cells inside (so a table or plot is made
from one file, and cells of one sweep share pairs, device and ceiling); fidelity of each precision
against fp32 on the same pairs goes into one record of kind ``fidelity`` (`bench.throughput.fidelity`).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import lazy, models
from ..config import RerankerSpec
from ..engine.device import release_memory, resolve_devices
from ..errors import BenchError
from ..records import make_record
from ..rerank import build_reranker
from ..rerank.common import is_query_reranker
from ..rerank.stage import STANDARD_COUNTERS, score_whole_queries, token_diagnostics
from .flops import ModelShape, matmul_ceiling, useful_flops
from .pairs import PairSet, pair_token_lengths
from .timing import PeakMemory, percentile, query_latencies, time_passes

#: Engines that are "the plain loop": speed-ups are relative to its fp32 cells.
PLAIN_ENGINE = "transformers"


@dataclass(frozen=True)
class Cell:
    """One point of a sweep: an engine with its precision and batching, on (a head of) the pairs.

    ``options`` are engine keywords beyond the spec (e.g. ``attention="sdpa-padded"`` for the fast
    engine); ``max_pairs`` limits a slow engine to the first whole queries holding that many pairs
    (recorded, so nobody mistakes it for the full set)."""

    engine: str
    dtype: str
    max_length: int
    batch_size: int | None = None
    token_budget: int | None = None
    options: tuple[tuple[str, Any], ...] = ()
    max_pairs: int | None = None
    note: str = ""

    @property
    def label(self) -> str:
        size = f"budget {self.token_budget}" if self.token_budget else f"batch {self.batch_size}"
        opts = "".join(f" {k}={v}" for k, v in self.options)
        return f"{self.engine} {self.dtype} {size} L{self.max_length}{opts}"

    @property
    def variant(self) -> str:
        """engine + options: one line in a throughput plot per variant × dtype."""
        return self.engine + "".join(f" {k}={v}" for k, v in self.options)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["options"] = dict(self.options)
        return d


def cells_from_spec(spec, *, options: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                    max_pairs: Mapping[str, int] | None = None,
                    engine_dtypes: Mapping[str, Sequence[str]] | None = None) -> list[Cell]:
    """The product a `ThroughputSpec` asks for: engines × dtypes × max_lengths × (token budgets for
    the fast engine, batch sizes for the baselines). `options` maps an engine to a list of keyword
    sets (one cell each); `max_pairs` caps the pairs of slow engines; `engine_dtypes` replaces the
    dtypes for the engines it names (a faithful baseline runs its users' precision: the plain loop
    fp32, FlagEmbedding-style fp16)."""
    cells = []
    for engine in spec.engines:
        for dtype in (engine_dtypes or {}).get(engine) or spec.dtypes:
            for max_length in spec.max_lengths:
                for opts in (options or {}).get(engine) or [{}]:
                    opts_t = tuple(sorted(opts.items()))
                    cap = (max_pairs or {}).get(engine)
                    if engine == "fast":
                        for budget in spec.token_budgets:
                            cells.append(Cell(engine, dtype, max_length, batch_size=None, token_budget=budget,
                                              options=opts_t, max_pairs=cap))
                    else:
                        for bs in spec.batch_sizes:
                            cells.append(Cell(engine, dtype, max_length, batch_size=bs, options=opts_t,
                                              max_pairs=cap))
    return cells


ScorerFactory = Callable[[Cell], Any]
"""Builds the reranker of a cell: an object with score(pairs), describe(), stats(), reset_stats()."""


def reranker_factory(model: str, *, cache_dir=None, device: str = "auto", query_max_length: int | None = None,
                     revision: str | None = None, scoring: Mapping[str, Any] | None = None) -> ScorerFactory:
    """Cells → rerankers through the project's one entry point, `bench.rerank.build_reranker`;
    ``scoring``: the reranker's decoder fields (head, template, instruction, prefix_reuse...)."""

    def build(cell: Cell):
        fields = dict(model=model, revision=revision, engine=cell.engine, dtype=cell.dtype,
                      max_length=cell.max_length, query_max_length=query_max_length, device=device,
                      **dict(scoring or {}))
        if cell.batch_size is not None:
            fields["batch_size"] = cell.batch_size
        if cell.token_budget is not None:
            fields["token_budget"] = cell.token_budget
        spec = RerankerSpec(**fields)
        reranker = build_reranker(spec, cache_dir=cache_dir, **dict(cell.options))
        return WholeQueries(reranker) if is_query_reranker(reranker) else reranker

    return build


class WholeQueries:
    """A query-level reranker (duoT5, listwise) behind ``score(pairs)``, for the sweep's timers: the
    pairs are grouped by query text (a pair set holds each query's pairs together) and each group is
    one query of ``rerank_queries``, as the rerank stage hands them over."""

    def __init__(self, reranker):
        self.reranker = reranker
        self.label = reranker.label

    def score(self, pairs):
        keys = [(q, str(i)) for i, (q, _) in enumerate(pairs)]
        return np.asarray(score_whole_queries(self.reranker, keys, list(pairs)), dtype=np.float32)

    def describe(self) -> dict:
        return self.reranker.describe()

    def stats(self) -> dict:
        return self.reranker.stats()

    def reset_stats(self) -> None:
        self.reranker.reset_stats()

    def close(self) -> None:
        _close(self.reranker)


def run_cell(reranker, cell: Cell, pairset: PairSet, *, shape: ModelShape | None, lengths: np.ndarray | None,
             ceiling: Mapping | None, device: str, warmup: int, repeats: int, latency_queries: int) -> tuple[dict, np.ndarray]:
    """Time one cell on `pairset` (already cut to the cell's pairs); returns (result, scores)."""
    memory = PeakMemory(device)
    memory.reset()
    for _ in range(warmup):
        reranker.score(pairset.pairs)
    reranker.reset_stats()  # the counters then cover exactly the timed passes
    times, scores = time_passes(reranker.score, pairset.pairs, warmup=0, repeats=repeats, device=device)
    stats = dict(reranker.stats())
    latencies = query_latencies(reranker.score, pairset, n_queries=latency_queries, device=device)
    result = cell_result(reranker, cell, pairset, times=times, stats=stats, latencies=latencies,
                         memory=memory.result(), shape=shape, lengths=lengths, ceiling=ceiling, warmup=warmup)
    return result, np.asarray(scores)


def cell_result(reranker, cell: Cell, pairset: PairSet, *, times: list[float], stats: Mapping,
                latencies: list[float], memory: dict, shape: ModelShape | None, lengths: np.ndarray | None,
                ceiling: Mapping | None, warmup: int) -> dict:
    """What a cell reports, from its timed passes, the engine's counters over them and its latencies."""
    repeats = len(times)
    med = statistics.median(times)
    n = len(pairset)
    out: dict[str, Any] = {
        **cell.to_dict(), "label": cell.label, "variant": cell.variant,
        "engine_describe": _jsonable(reranker.describe()),
        "n_pairs": n, "n_queries": pairset.n_queries, "k": pairset.k,
        "warmup": warmup, "repeats": repeats, "seconds": times, "median_s": med,
        "pairs_per_s": n / med, "queries_per_s": n / med / pairset.k,
        "latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                       "n_queries": len(latencies), "pairs_per_query": pairset.k},
        "peak_memory": memory, "stats": _jsonable(stats),
        "padding_fraction": _padding_fraction(stats),
        "mean_tokens_per_pair": (stats.get("tokens", 0) / stats["pairs"]) if stats.get("pairs") else None,
        "error": None,
    }
    family = {k: v for k, v in stats.items()  # a family's own counters (duo_pairs, windows...) per second
              if k not in STANDARD_COUNTERS and isinstance(v, (int, float)) and not isinstance(v, bool)}
    if family:
        out["counters_per_s"] = {k: v / repeats / med for k, v in family.items()}
    resolved = out["engine_describe"].get("dtype")
    out["dtype_resolved"] = resolved if isinstance(resolved, str) else cell.dtype
    # Data-parallel engines score in worker processes, one per device: the ceiling is per device,
    # and this process' allocator does not see the workers' memory.
    n_devices = len((out["engine_describe"].get("data_parallel") or {}).get("devices") or []) or 1
    out["devices"] = n_devices
    if n_devices > 1:
        out["peak_memory"] = {"bytes": None, "what": f"{n_devices} data-parallel worker processes: not measured here"}
    if shape is not None and lengths is not None:
        flops = useful_flops(shape, lengths)
        out["useful_flop"] = flops
        out["useful_tflop_per_s"] = flops / med / 1e12
        out["ceiling_share"] = (out["useful_tflop_per_s"] / (ceiling["tflop_per_s"] * n_devices)) if ceiling else None
        counted = int(np.asarray(lengths).sum())
        out["flop_tokens"] = counted
        if stats.get("tokens") is not None and stats["tokens"] != counted * repeats:
            out["flop_tokens_note"] = (f"FLOPs counted on {counted} tokens per pass (pair_token_lengths); the "
                                       f"engine reported {stats['tokens'] / repeats:.0f} real tokens per pass")
    return out


def run_encoder_cell(encoder, texts: Sequence[str], *, label: str, shape: ModelShape | None,
                     lengths: np.ndarray | None, ceiling: Mapping | None, device: str, warmup: int,
                     repeats: int) -> dict:
    """Time a bi-encoder's ``encode_docs`` over `texts` end to end (raw text in, float32 embeddings on
    the host out): passages/s, useful TFLOP/s (no head: pooling is not a matmul), peak memory."""
    memory = PeakMemory(device)
    memory.reset()
    times, emb = time_passes(encoder.encode_docs, list(texts), warmup=warmup, repeats=repeats, device=device)
    med = statistics.median(times)
    emb = np.asarray(emb)
    if not np.isfinite(emb).all():
        bad = int(np.flatnonzero(~np.isfinite(emb).all(axis=1))[0])
        raise BenchError(f"{label}: embedding of passage {bad} ({texts[bad][:60]!r}) is not finite")
    out = {"label": label, "describe": _jsonable(encoder.describe()), "n_texts": len(texts), "warmup": warmup,
           "repeats": repeats, "seconds": times, "median_s": med, "texts_per_s": len(texts) / med,
           "dim": int(emb.shape[1]) if emb.ndim == 2 else None, "peak_memory": memory.result(), "error": None}
    if shape is not None and lengths is not None:
        flops = useful_flops(shape, lengths)
        out.update(useful_flop=flops, useful_tflop_per_s=flops / med / 1e12,
                   mean_tokens_per_text=float(np.mean(lengths)) if len(lengths) else None,
                   ceiling_share=(flops / med / 1e12 / ceiling["tflop_per_s"]) if ceiling else None)
    return out


def _padding_fraction(stats: Mapping) -> float | None:
    """The quality records' ``padding_share`` (`bench.rerank.stage.token_diagnostics`): padding among
    the positions computed, with a decoder's prefix reuse counted as computed once."""
    return token_diagnostics(stats.get("pairs"), stats.get("tokens"), stats.get("padded_tokens"),
                             stats.get("computed_tokens"))["padding_share"]


def _jsonable(obj):
    """Plain JSON types for a record (describe()/stats() may hold numpy numbers, tuples, paths)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def resolve_device(device: str) -> str:
    """The one device a sweep measures its ceiling and memory on (``auto`` → ``cuda:0`` when torch
    sees a GPU, else ``cpu``). Data-parallel cells run on all of them; each records its devices."""
    return resolve_devices(device)[0]


@dataclass
class Sweep:
    """A sweep's inputs: the pairs, the cells, how to build each cell's reranker, and the counting
    settings. `run()` returns the throughput record, the per-cell scores (for fidelity), and errors."""

    pairset: PairSet
    cells: list[Cell]
    build: ScorerFactory
    model: str
    device: str = "auto"
    warmup: int = 1
    repeats: int = 3
    latency_queries: int = 16
    tokenizer: Any = None
    shape: ModelShape | None = None
    query_max_length: int | None = None
    name: str = "throughput"
    deadline: float | None = None  # time.monotonic() after which remaining cells are skipped (recorded)
    interleave: bool = False  # see _run_interleaved: for shared CPUs
    settings: dict = field(default_factory=dict)

    def run(self, *, ceiling: Mapping | None = None, progress: bool = True,
            on_cell: Callable[[dict], None] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
        """Every cell (in order, or interleaved); `on_cell(result)` after each (e.g. to save partial
        results)."""
        labels = [c.label for c in self.cells]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise BenchError(f"throughput sweep: cells repeat {dup}; each cell must differ in a knob")
        device = resolve_device(self.device)
        if ceiling is None:
            ceiling = matmul_ceiling(device)
        self._lengths: dict[int, np.ndarray] = {}
        runner = self._run_interleaved if self.interleave else self._run_in_order
        results, scores = runner(device, ceiling, progress, on_cell)
        add_speedups(results)
        shape = asdict(self.shape) if self.shape else None
        record = make_record(
            "throughput", name=self.name, model={**models.describe(self.model), "shape": shape},
            device=device, pairs=self.pairset.describe() | self._token_summary(self._lengths),
            settings={"warmup": self.warmup, "repeats": self.repeats, "latency_queries": self.latency_queries,
                      "query_max_length": self.query_max_length, "interleave": self.interleave, **self.settings},
            ceiling=dict(ceiling), cells=results)
        return record, scores

    def _lengths_for(self, cell: Cell, n_pairs: int) -> np.ndarray | None:
        """Per-pair token counts at the cell's max_length (for FLOPs), computed once per max_length."""
        if self.tokenizer is None:
            return None
        if cell.max_length not in self._lengths:
            self._lengths[cell.max_length] = pair_token_lengths(self.tokenizer, self.pairset.pairs, cell.max_length,
                                                                self.query_max_length)
        return self._lengths[cell.max_length][:n_pairs]

    def _run_in_order(self, device, ceiling, progress, on_cell):
        """One cell after the other, each alone in memory (per-cell peak memory is exact)."""
        results, scores = [], {}
        bar = lazy.tqdm.tqdm(self.cells, desc="throughput cells", unit="cell", disable=not progress, file=sys.stderr)
        for cell in bar:
            bar.set_postfix_str(cell.label)
            pairs = self.pairset.head(cell.max_pairs)
            if self.deadline is not None and time.monotonic() > self.deadline:
                results.append(_failed(cell, "skipped: the sweep's time limit was reached"))
                continue
            reranker = None
            try:
                reranker = self.build(cell)
                result, scores[cell.label] = run_cell(
                    reranker, cell, pairs, shape=self.shape, lengths=self._lengths_for(cell, len(pairs)),
                    ceiling=ceiling, device=device, warmup=self.warmup, repeats=self.repeats,
                    latency_queries=self.latency_queries)
            except Exception as exc:  # an engine crash must not lose the other cells: recorded, then reported
                result = _failed(cell, _error_text(exc))
            finally:
                _close(reranker)
                del reranker
                release_memory(device)
            results.append(result)
            if on_cell is not None:
                on_cell(result)
        return results, scores

    def _run_interleaved(self, device, ceiling, progress, on_cell):
        """All cells' engines loaded together; warm-ups, then timed pass r of every cell before pass
        r+1 of any. On a shared machine (a CPU running other work) load changes then spread over all
        cells instead of favouring whichever cell ran in a quiet moment. Per-cell peak memory cannot
        be told apart this way and is recorded as not measured."""
        built: dict[str, Any] = {}        # label -> reranker (every one is closed at the end)
        failed: dict[str, dict] = {}      # label -> error result
        times: dict[str, list[float]] = {}
        scores: dict[str, np.ndarray] = {}
        results: dict[str, dict] = {}
        cells = {c.label: (c, self.pairset.head(c.max_pairs)) for c in self.cells}

        def live():
            return [label for label in built if label not in failed]

        def guarded(label, fn):
            try:
                fn()
            except Exception as exc:  # recorded per cell; the other cells go on
                failed[label] = _failed(cells[label][0], _error_text(exc))

        def timed_pass(label):
            t, scores[label] = time_passes(built[label].score, cells[label][1].pairs, warmup=0, repeats=1,
                                           device=device)
            times[label] += t

        def finish(label):
            cell, pairs = cells[label]
            reranker = built[label]
            stats = dict(reranker.stats())
            lat = query_latencies(reranker.score, pairs, n_queries=self.latency_queries, device=device)
            results[label] = cell_result(
                reranker, cell, pairs, times=times[label], stats=stats, latencies=lat,
                memory={"bytes": None, "what": "interleaved cells share the process: per-cell peak not measured"},
                shape=self.shape, lengths=self._lengths_for(cell, len(pairs)), ceiling=ceiling, warmup=self.warmup)

        try:
            for label, (cell, _) in cells.items():
                try:
                    built[label] = self.build(cell)
                except Exception as exc:
                    failed[label] = _failed(cell, _error_text(exc))
            for label in live():
                guarded(label, lambda label=label: [built[label].score(cells[label][1].pairs)
                                                    for _ in range(self.warmup)])
                built[label].reset_stats()  # the counters then cover exactly the timed passes
                times[label] = []
            for r in lazy.tqdm.tqdm(range(self.repeats), desc="interleaved passes", unit="pass", disable=not progress,
                          file=sys.stderr):
                if r > 0 and self.deadline is not None and time.monotonic() > self.deadline:
                    break  # every cell keeps the passes done so far (its `repeats` says how many)
                for label in live():
                    guarded(label, lambda label=label: timed_pass(label))
            for label in live():
                guarded(label, lambda label=label: finish(label))
        finally:
            for reranker in built.values():
                _close(reranker)
            built.clear()
            release_memory(device)
        ordered = [results.get(c.label) or failed[c.label] for c in self.cells]
        if on_cell is not None:
            for result in ordered:
                on_cell(result)
        return ordered, {label: v for label, v in scores.items() if label in results}

    def _token_summary(self, lengths_cache: Mapping[int, np.ndarray]) -> dict:
        return {"mean_tokens_per_pair": {str(L): float(v.mean()) for L, v in lengths_cache.items() if len(v)},
                "truncated_share": {str(L): float((v >= L).mean()) for L, v in lengths_cache.items() if len(v)}}


def _failed(cell: Cell, error: str) -> dict:
    return {**cell.to_dict(), "label": cell.label, "variant": cell.variant, "error": error}


def _error_text(exc: BaseException) -> str:
    """One line for the record: the message of a BenchError, the type and message of anything else."""
    if isinstance(exc, BenchError):
        return str(exc)
    if _is_oom(exc):
        return f"out of memory: {exc}".splitlines()[0]
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _close(reranker) -> None:
    """Data-parallel engines hold worker processes: stop them."""
    if reranker is not None and hasattr(reranker, "close"):
        reranker.close()


def _is_oom(exc: BaseException) -> bool:
    try:
        return isinstance(exc, lazy.torch.OutOfMemoryError)
    except (ImportError, AttributeError):  # pragma: no cover
        return False


def add_speedups(cells: list[dict]) -> None:
    """speedup_vs_plain = pairs/s ÷ the plain loop's (engine 'transformers', fp32, same max_length; the
    first such cell). Null, with the reason in the record, where the sweep has no such cell."""
    for cell in cells:
        if cell.get("error"):
            continue
        ref = next((c for c in cells if not c.get("error") and c["engine"] == PLAIN_ENGINE
                    and c.get("dtype_resolved") == "fp32" and c["max_length"] == cell["max_length"]), None)
        cell["speedup_vs_plain"] = cell["pairs_per_s"] / ref["pairs_per_s"] if ref else None
        cell["speedup_reference"] = ref["label"] if ref else "no plain-loop fp32 cell at this max_length"
