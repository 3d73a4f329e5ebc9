"""Data-parallel scoring: one worker process per device, each with its own engine.

Pairs are cut into contiguous shards of about equal text length (one per device), scored at the
same time, and the scores concatenated, so they come back in input order. Workers start once (the
model loads once per device) and live until ``close()`` or garbage collection. The same code runs
with several CPU workers, which is how CI tests it.
"""

from __future__ import annotations

import time
import traceback
from typing import Sequence

import numpy as np

from ..errors import BenchError
from .common import Stats, check_pairs, check_scores


def _worker(conn, spec, device: str, cache_dir, options: dict, cpu_threads: int | None) -> None:
    """Worker main loop: build the engine, then answer ("score", pairs) / ("stats",) / ("stop",)."""
    try:
        import torch

        if cpu_threads:
            torch.set_num_threads(cpu_threads)
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        from . import build_single

        engine = build_single(spec, device, cache_dir=cache_dir, options=options)
        conn.send(("ready", engine.describe()))
    except BaseException as exc:  # reported to the parent, which raises it
        conn.send(("error", isinstance(exc, BenchError), f"{exc}\n{traceback.format_exc()}"))
        return
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        try:
            if msg[0] == "score":
                conn.send(("ok", engine.score(msg[1])))
            elif msg[0] == "stats":
                conn.send(("ok", engine.stats()))
            elif msg[0] == "reset":
                engine.reset_stats()
                conn.send(("ok", None))
            elif msg[0] == "describe":
                conn.send(("ok", engine.describe()))
        except BaseException as exc:
            conn.send(("error", isinstance(exc, BenchError), f"{exc}\n{traceback.format_exc()}"))


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


class DataParallelReranker:
    """``score(pairs)`` over several devices, one process each (``torch.multiprocessing`` spawn)."""

    def __init__(self, spec, devices: Sequence[str], *, cache_dir=None, options: dict | None = None):
        import os

        import torch.multiprocessing as mp

        self.spec = spec
        self.label = spec.label
        self.devices = list(devices)
        cpu_workers = sum(d == "cpu" for d in self.devices)
        threads = max(1, (os.cpu_count() or 1) // cpu_workers) if cpu_workers else None
        ctx = mp.get_context("spawn")
        self._workers = []
        for dev in self.devices:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, spec, dev, cache_dir, dict(options or {}),
                                                     threads if dev == "cpu" else None), daemon=True)
            proc.start()
            child.close()
            self._workers.append((proc, parent))
        self._describes = [self._receive(conn, dev) for (_, conn), dev in zip(self._workers, self.devices)]
        self._stats = Stats()

    def _receive(self, conn, device: str):
        try:
            msg = conn.recv()
        except EOFError:
            self.close()
            raise BenchError(f"reranker worker on {device} exited without answering (out of host memory?)") from None
        if msg[0] == "error":
            self.close()
            if msg[1]:
                raise BenchError(f"worker on {device}: {msg[2].splitlines()[0]}")
            raise RuntimeError(f"reranker worker on {device} failed:\n{msg[2]}")
        return msg[1]

    def _ask(self, messages) -> list:
        for (_, conn), msg in zip(self._workers, messages):
            conn.send(msg)
        return [self._receive(conn, dev) for (_, conn), dev in zip(self._workers, self.devices)]

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        pairs = check_pairs(pairs)
        t0 = time.perf_counter()
        bounds = shard_bounds(pairs, len(self._workers)) if pairs else [(0, 0)] * len(self._workers)
        parts = self._ask([("score", pairs[s:e]) for s, e in bounds])
        scores = np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])
        self._stats.add(pairs=len(pairs), seconds=time.perf_counter() - t0)
        return check_scores(scores, pairs, self.label)

    def stats(self) -> dict:
        """Workers' counters summed; ``seconds`` is wall time of the parallel calls."""
        out = self._stats.as_dict()
        per = self._ask([("stats",)] * len(self._workers))
        for key in ("tokens", "padded_tokens", "truncated_pairs", "truncated_queries"):
            vals = [p.get(key) for p in per]
            out[key] = None if any(v is None for v in vals) else sum(vals)
        out["worker_seconds"] = [p["seconds"] for p in per]
        return out

    def reset_stats(self) -> None:
        self._ask([("reset",)] * len(self._workers))
        self._stats.reset()

    def describe(self) -> dict:
        first = dict(self._describes[0])
        first["device"] = ",".join(self.devices)
        first["data_parallel"] = {"devices": self.devices, "processes": len(self.devices),
                                  "sharding": "contiguous, balanced by characters",
                                  "workers": self._ask([("describe",)] * len(self._workers))}
        return first

    def close(self) -> None:
        for proc, conn in getattr(self, "_workers", []):
            try:
                conn.send(("stop",))
            except (OSError, BrokenPipeError):
                pass
        for proc, conn in getattr(self, "_workers", []):
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
            conn.close()
        self._workers = []

    def __del__(self):
        self.close()
