"""Data-parallel scoring: one worker process per device, each with its own engine.

Pairs are cut into contiguous shards of about equal text length (one per device), scored at the
same time, and the scores concatenated, so they come back in input order. Workers start once (the
model loads once per device) and live until ``close()`` or garbage collection. The same code runs
with several CPU workers, which is how CI tests it.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ..engine.workers import PooledEngine, prepare_device, serve
from .common import Stats, check_pairs, check_scores
from .engines import build_single


def _worker(conn, device: str, cpu_threads: int | None, spec, cache_dir, options: dict) -> None:
    """Worker: build the engine on `device`, then answer ("score", pairs) / ("stats",) / ("reset",) / ("describe",)."""

    def build():
        prepare_device(device, cpu_threads)
        return build_single(spec, device, cache_dir=cache_dir, options=options)

    def handle(engine, msg):
        if msg[0] == "score":
            return engine.score(msg[1])
        if msg[0] == "stats":
            return engine.stats()
        if msg[0] == "reset":
            return engine.reset_stats()
        return engine.describe()

    serve(conn, build, handle)


def shard_bounds(pairs: Sequence[tuple[str, str]], parts: int) -> list[tuple[int, int]]:
    """Contiguous ranges with about equal characters each (a proxy for tokens, known without tokenizing)."""
    sizes = np.fromiter((len(q) + len(p) + 1 for q, p in pairs), dtype=np.int64, count=len(pairs))
    cum = np.cumsum(sizes)
    total = int(cum[-1]) if len(cum) else 0
    cuts = [0] + [int(np.searchsorted(cum, total * k / parts, side="left")) + 1 for k in range(1, parts)] + [len(pairs)]
    cuts = [min(max(c, 0), len(pairs)) for c in cuts]
    for i in range(1, len(cuts)):
        cuts[i] = max(cuts[i], cuts[i - 1])
    return [(cuts[i], cuts[i + 1]) for i in range(parts)]


class DataParallelReranker(PooledEngine):
    """``score(pairs)`` over several devices, one process each (``torch.multiprocessing`` spawn)."""

    sharding = "contiguous, balanced by characters"

    def __init__(self, spec, devices: Sequence[str], *, cache_dir=None, options: dict | None = None):
        self.spec = spec
        self.label = spec.label
        super().__init__(_worker, devices, (spec, cache_dir, dict(options or {})), role="reranker")
        self._stats = Stats()

    def _ask(self, messages) -> list:
        return self._pool.ask(messages)

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        pairs = check_pairs(pairs)
        t0 = time.perf_counter()
        bounds = shard_bounds(pairs, len(self.devices)) if pairs else [(0, 0)] * len(self.devices)
        parts = self._ask([("score", pairs[s:e]) for s, e in bounds])
        scores = np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])
        self._stats.add(pairs=len(pairs), seconds=time.perf_counter() - t0)
        return check_scores(scores, pairs, self.label)

    def stats(self) -> dict:
        """Workers' counters summed; ``seconds`` is wall time of the parallel calls."""
        out = self._stats.as_dict()
        per = self._ask([("stats",)] * len(self.devices))
        for key in ("tokens", "padded_tokens", "truncated_pairs", "truncated_queries"):
            vals = [p.get(key) for p in per]
            out[key] = None if any(v is None for v in vals) else sum(vals)
        out["worker_seconds"] = [p["seconds"] for p in per]
        return out

    def reset_stats(self) -> None:
        self._ask([("reset",)] * len(self.devices))
        self._stats.reset()

    def describe(self) -> dict:
        return self._describe(workers=self._ask([("describe",)] * len(self.devices)))
