"""Throughput sweeps: reranker engines × batch size or token budget × dtype × max_length, on real pairs.

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
against fp32 on the same pairs goes into one record of kind ``fidelity`` (`bench.fidelity`).
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BenchError

#: Engines that are "the plain loop": speed-ups are relative to its fp32 cells.
PLAIN_ENGINE = "transformers"


# ------------------------------------------------------------------------------------------------
# Real pairs
# ------------------------------------------------------------------------------------------------

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
        from .runs import sort_ranking

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


def pair_token_lengths(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int,
                       query_max_length: int | None = None) -> np.ndarray:
    """Tokens each pair has after truncation, special tokens included: the fast engine's own
    tokenizer (query cut to `query_max_length` first, then the passage so the pair fits `max_length`),
    so FLOP counts and the engines agree by construction."""
    if not pairs:
        return np.zeros(0, dtype=np.int64)
    from .engine.tokens import PairTokenizer

    encoded = PairTokenizer(tokenizer, max_length, query_max_length)(pairs)
    return np.array([len(seq) for seq in encoded.seqs], dtype=np.int64)


# ------------------------------------------------------------------------------------------------
# FLOPs and the device's matrix ceiling
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelShape:
    """The sizes that decide a BERT-family transformer's matmul FLOPs."""

    layers: int
    hidden: int
    ffn: int
    head_labels: int | None  # None: no classification head (a bi-encoder)

    @classmethod
    def from_config(cls, config, *, head: bool = True) -> "ModelShape":
        get = config.get if isinstance(config, dict) else (lambda name, default=None: getattr(config, name, default))
        try:
            return cls(int(get("num_hidden_layers")), int(get("hidden_size")), int(get("intermediate_size")),
                       int(get("num_labels", 1) or 1) if head else None)
        except (TypeError, ValueError):
            raise BenchError("model config lacks num_hidden_layers / hidden_size / intermediate_size: FLOPs "
                             "are counted for BERT-family models only") from None


def useful_flops(shape: ModelShape, lengths: Sequence[int] | np.ndarray) -> int:
    """Matmul FLOPs of a forward pass over sequences of the given real (unpadded) lengths.

    Per layer and token: ``2·(4h² + 2·h·ffn)`` for the Q, K, V and output projections and the two FFN
    matrices, plus ``2·2·L·h`` for attention (QKᵀ and AV against the L tokens of its own sequence).
    Per sequence, the classification head on the first token: ``2·(h² + h·labels)`` (XLM-R's
    dense→out_proj, BERT's pooler→classifier). A FLOP is a multiply or an add (2 per multiply-add).
    Embeddings, LayerNorm, softmax and activations are not matmuls and are not counted. Padding is
    never counted: this is the work any engine must do, so engines compare on equal terms.
    """
    lens = np.asarray(lengths, dtype=np.int64)
    h, f = shape.hidden, shape.ffn
    per_token = 2 * (4 * h * h + 2 * h * f)
    total = shape.layers * (per_token * int(lens.sum()) + 4 * h * int((lens * lens).sum()))
    if shape.head_labels is not None:
        total += len(lens) * 2 * (h * h + h * shape.head_labels)
    return int(total)


def matmul_ceiling(device: str = "cuda", *, n: int | None = None, repeats: int | None = None) -> dict[str, Any]:
    """The device's measured matrix rate: median over repeats of a large square matmul.

    On CUDA: bf16 (the precision the fast engine runs), n = 8192, each repeat 10 back-to-back
    products between two CUDA events (one product takes ~1.5 ms on an H100: too short to time
    alone). On CPU: fp32 (CPU bf16 matmuls are not what CPU engines run), n = 1024, one product per
    repeat, wall clock; the record says so.
    """
    import torch

    cuda = str(device).startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    n = n or (8192 if cuda else 1024)
    repeats = repeats or (20 if cuda else 5)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(10):
                    torch.mm(a, b)
                end.record()
                end.synchronize()
                seconds = start.elapsed_time(end) / 1000.0 / 10
            else:
                t0 = time.perf_counter()
                torch.mm(a, b)
                seconds = time.perf_counter() - t0
            if i >= 2:  # two warm-up products
                times.append(seconds)
    med = statistics.median(times)
    return {"device": _device_name(device), "dtype": "bf16" if cuda else "fp32", "n": n, "repeats": repeats,
            "median_s": med, "tflop_per_s": 2 * n ** 3 / med / 1e12,
            "method": ("median over repeats of 10 torch.mm of two n×n matrices, CUDA events" if cuda else
                       "median of torch.mm on two n×n fp32 matrices, wall clock (CPU: fp32 rate, not bf16)")}


def _device_name(device: str) -> str:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({torch.get_num_threads()} threads)"


# ------------------------------------------------------------------------------------------------
# Clocks and memory
# ------------------------------------------------------------------------------------------------

def synchronize(device: str) -> None:
    """Wait for queued GPU work before reading a clock (no-op on CPU)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


class PeakMemory:
    """Peak memory of one cell: CUDA allocator peak, or on CPU the process' peak RSS since reset.

    ``result()`` gives ``{"bytes": int | None, "what": str}``; ``bytes`` is None with the reason when
    the peak cannot be reset for this cell (never a number that covers earlier cells)."""

    def __init__(self, device: str):
        self.device = str(device)
        self.note = ""

    def reset(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
        except OSError as exc:
            self.note = f"cannot reset the peak RSS ({exc.__class__.__name__}); not recorded"

    def result(self) -> dict[str, Any]:
        if self.device.startswith("cuda"):
            import torch

            return {"bytes": int(torch.cuda.max_memory_allocated()), "what": "torch.cuda.max_memory_allocated"}
        if self.note:
            return {"bytes": None, "what": self.note}
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return {"bytes": int(line.split()[1]) * 1024, "what": "process peak RSS (VmHWM), CPU"}
        except OSError:
            pass
        return {"bytes": None, "what": "no /proc/self/status: peak RSS not recorded"}


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


# ------------------------------------------------------------------------------------------------
# Cells and sweeps
# ------------------------------------------------------------------------------------------------

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
                     revision: str | None = None) -> ScorerFactory:
    """Cells → rerankers through the project's one entry point, `bench.rerank.build_reranker`."""

    def build(cell: Cell):
        from .config import RerankerSpec
        from .rerank import build_reranker

        fields = dict(model=model, revision=revision, engine=cell.engine, dtype=cell.dtype,
                      max_length=cell.max_length, query_max_length=query_max_length, device=device)
        if cell.batch_size is not None:
            fields["batch_size"] = cell.batch_size
        if cell.token_budget is not None:
            fields["token_budget"] = cell.token_budget
        spec = RerankerSpec(**fields)
        return build_reranker(spec, cache_dir=cache_dir, **dict(cell.options))

    return build


def time_passes(score: Callable[[Sequence[tuple[str, str]]], np.ndarray], pairs: Sequence[tuple[str, str]],
                *, warmup: int, repeats: int, device: str) -> tuple[list[float], np.ndarray]:
    """Seconds of each timed full pass (after `warmup` untimed ones) and the last pass' scores."""
    scores = None
    for _ in range(warmup):
        scores = score(pairs)
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        scores = score(pairs)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times, scores


def query_latencies(score: Callable, pairset: PairSet, *, n_queries: int, device: str) -> list[float]:
    """Milliseconds to score each of the first `n_queries` queries' k pairs as one call (one untimed
    call first, so the first query does not pay for warm-up)."""
    slices = pairset.query_slices()[:n_queries]
    if not slices:
        return []
    score(pairset.pairs[slices[0][1]])
    out = []
    for _, sl in slices:
        synchronize(device)
        t0 = time.perf_counter()
        score(pairset.pairs[sl])
        synchronize(device)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


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


def text_token_lengths(tokenizer, texts: Sequence[str], max_length: int) -> np.ndarray:
    """Tokens of each text after truncation to `max_length`, special tokens included (bi-encoders)."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return np.array([len(x) for x in ids], dtype=np.int64)


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
    tokens, padded = stats.get("tokens"), stats.get("padded_tokens")
    if not padded:
        return None
    return float(max(padded - tokens, 0) / padded)


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


def release(device: str) -> None:
    """Give memory back between cells so one cell's model does not sit beside the next one's."""
    gc.collect()
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def resolve_device(device: str) -> str:
    """The one device a sweep measures its ceiling and memory on: the first of
    ``bench.engine.device.resolve_devices(device)`` (``auto`` → ``cuda:0`` when torch sees a GPU, else
    ``cpu``). Data-parallel cells run on all of them; each records its devices."""
    from .engine.device import resolve_devices

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
        from . import models
        from .records import make_record

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
        from tqdm.auto import tqdm

        results, scores = [], {}
        bar = tqdm(self.cells, desc="throughput cells", unit="cell", disable=not progress, file=sys.stderr)
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
                release(device)
            results.append(result)
            if on_cell is not None:
                on_cell(result)
        return results, scores

    def _run_interleaved(self, device, ceiling, progress, on_cell):
        """All cells' engines loaded together; warm-ups, then timed pass r of every cell before pass
        r+1 of any. On a shared machine (a CPU running other work) load changes then spread over all
        cells instead of favouring whichever cell ran in a quiet moment. Per-cell peak memory cannot
        be told apart this way and is recorded as not measured."""
        from tqdm.auto import tqdm

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
            for r in tqdm(range(self.repeats), desc="interleaved passes", unit="pass", disable=not progress,
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
            release(device)
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
        import torch

        return isinstance(exc, torch.OutOfMemoryError)
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


# ------------------------------------------------------------------------------------------------
# Table
# ------------------------------------------------------------------------------------------------

TABLE_COLUMNS = ["engine", "dtype", "batch / budget", "max_len", "pairs", "pairs/s", "q/s@k", "p50 ms",
                 "p95 ms", "peak mem", "padding", "TFLOP/s", "% ceiling", "vs plain"]


def table_rows(record: Mapping) -> list[list[str]]:
    rows = []
    for c in record.get("cells", []):
        size = f"{c['token_budget']} tok" if c.get("token_budget") else f"{c.get('batch_size')} pairs"
        name = c.get("variant", c["engine"])
        if c.get("error"):
            rows.append([name, c["dtype"], size, str(c["max_length"]), "", c["error"][:60]] + [""] * 8)
            continue
        lat = c.get("latency_ms", {})
        mem = c.get("peak_memory", {}).get("bytes")
        rows.append([
            name, c.get("dtype_resolved", c["dtype"]), size, str(c["max_length"]), str(c["n_pairs"]),
            _rate(c["pairs_per_s"]), _rate(c["queries_per_s"]), _fmt(lat.get("p50"), "{:.1f}"),
            _fmt(lat.get("p95"), "{:.1f}"), _fmt(mem and mem / 2**30, "{:.2f} GiB"),
            _fmt(c.get("padding_fraction") if c.get("padding_fraction") is None else 100 * c["padding_fraction"], "{:.1f}%"),
            _fmt(c.get("useful_tflop_per_s"), "{:.3g}"),
            _fmt(c.get("ceiling_share") if c.get("ceiling_share") is None else 100 * c["ceiling_share"], "{:.1f}%"),
            _fmt(c.get("speedup_vs_plain"), "{:.2f}×"),
        ])
    return rows


def _fmt(value, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


def _rate(value: float) -> str:
    """Whole numbers with separators from 100 up; three significant figures below (CPU rates)."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def markdown_table(record: Mapping) -> str:
    """The sweep as a Markdown table, with a header line naming model, device, pairs and ceiling."""
    pairs = record.get("pairs", {})
    ceil = record.get("ceiling") or {}
    mean_tok = ", ".join(f"{v:.1f} (L{k})" for k, v in (pairs.get("mean_tokens_per_pair") or {}).items())
    head = (f"Model {record['model']['ref']}{' (untrained)' if record['model'].get('untrained') else ''} on "
            f"{(record.get('environment') or {}).get('device', {}).get('device', record.get('device'))}; "
            f"{pairs.get('n_pairs')} pairs, {pairs.get('n_queries')} queries × k={pairs.get('k')}"
            f" from {pairs.get('collection')}; mean tokens per pair {mean_tok or '?'}; "
            f"ceiling {ceil.get('tflop_per_s', float('nan')):.3g} TFLOP/s ({ceil.get('dtype')} matmul, measured).")
    lines = [head, "", "| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(record)]
    return "\n".join(lines) + "\n"
