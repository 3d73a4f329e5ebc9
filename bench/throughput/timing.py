"""Clocks and memory of one cell: timed passes, per-query latencies, peak memory.

Why: a GPU runs queued work after the call returns, so every clock reading waits for the device
first; and a peak is only a cell's own when it was reset before the cell.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import lazy
from ..engine.device import synchronize
from .pairs import PairSet


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


class PeakMemory:
    """Peak memory of one cell: CUDA allocator peak, or on CPU the process' peak RSS since reset.

    ``result()`` gives ``{"bytes": int | None, "what": str}``; ``bytes`` is None with the reason when
    the peak cannot be reset for this cell (never a number that covers earlier cells)."""

    def __init__(self, device: str):
        self.device = str(device)
        self.note = ""

    def reset(self) -> None:
        if self.device.startswith("cuda"):
            synchronize(self.device)
            lazy.torch.cuda.reset_peak_memory_stats()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
        except OSError as exc:
            self.note = f"cannot reset the peak RSS ({exc.__class__.__name__}); not recorded"
            return
        status = _proc_status()
        if "VmHWM" in status and "VmRSS" in status and status["VmHWM"] > status["VmRSS"] + 16 * 2**20:
            # some kernels and sandboxes accept the write and keep the old peak
            self.note = (f"the peak RSS did not reset (VmHWM {status['VmHWM'] // 2**20} MiB after the reset, "
                         f"RSS {status['VmRSS'] // 2**20} MiB); not recorded")

    def result(self) -> dict[str, Any]:
        if self.device.startswith("cuda"):
            return {"bytes": int(lazy.torch.cuda.max_memory_allocated()), "what": "torch.cuda.max_memory_allocated"}
        if self.note:
            return {"bytes": None, "what": self.note}
        peak = _proc_status().get("VmHWM")
        if peak is not None:
            return {"bytes": peak, "what": "process peak RSS (VmHWM), CPU"}
        return {"bytes": None, "what": "no /proc/self/status: peak RSS not recorded"}


def _proc_status() -> dict[str, int]:
    """The memory lines of /proc/self/status in bytes (empty where there is none)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) * 1024 for k, _, v in (line.partition(":") for line in lines)
            if k.startswith("Vm") and v.strip().endswith("kB")}


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None
