"""Token-budget batches, background tokenization and the out-of-memory budget search.

Batches are formed over items sorted longest first, so the first batch of a chunk is the heaviest
and an out-of-memory error shows up at once. ``packed`` batches count real tokens (no padding is
computed); ``padded`` batches count ``items x longest item``, the tensor a padded forward computes.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import BenchError


def next_batch(lengths: np.ndarray, offsets: np.ndarray, start: int, budget: int, padded: bool,
               max_items: int | None = None) -> int:
    """End (exclusive) of the batch that starts at ``start``: as many items as fit in ``budget``,
    at least one (an item longer than the budget runs alone)."""
    n = len(lengths)
    if padded:
        end = start + max(1, budget // int(lengths[start]))
    else:
        end = int(np.searchsorted(offsets, offsets[start] + budget, side="right")) - 1
        end = max(end, start + 1)
    if max_items is not None:
        end = min(end, start + max_items)
    return min(end, n)


def plan_batches(lengths: np.ndarray, budget: int, padded: bool, max_items: int | None = None) -> list[tuple[int, int]]:
    """All ``(start, end)`` batches of items sorted longest first under a fixed budget."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    out, s = [], 0
    while s < len(lengths):
        e = next_batch(lengths, offsets, s, budget, padded, max_items)
        out.append((s, e))
        s = e
    return out


def chunk_bounds(n: int, first: int = 512, largest: int = 16384) -> list[tuple[int, int]]:
    """Input ranges tokenized one at a time: small at first so the device starts early, then
    doubling up to ``largest`` so sorting by length has many items to work with."""
    out, s, size = [], 0, max(1, first)
    while s < n:
        e = min(n, s + size)
        out.append((s, e))
        s, size = e, min(largest, size * 2)
    return out


def prefetch(make: Callable, items: Iterable, depth: int = 2) -> Iterator:
    """``make(item)`` for each item, computed in a background thread up to ``depth`` ahead.

    Why: tokenization (Rust, releases the GIL) and host-side flattening overlap the device's
    compute. An exception in the thread is raised in the consumer; leaving early stops the thread.
    ``depth = 0`` computes inline: on the CPU, compute already uses every core, and a tokenizing
    thread beside torch's OpenMP threads made CPU scoring several times slower (measured on 2 cores)."""
    if depth == 0:
        for item in items:
            yield make(item)
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work():
        try:
            for item in items:
                result = make(item)
                while not stop.is_set():
                    try:
                        q.put((True, result), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((True, done))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put((False, exc))

    thread = threading.Thread(target=work, name="bench-tokenize", daemon=True)
    thread.start()
    try:
        while True:
            ok, value = q.get()
            if not ok:
                raise value
            if value is done:
                return
            yield value
    finally:
        stop.set()
        thread.join(timeout=5)


@dataclass
class TokenBudget:
    """The largest batch, in tokens, that fits on the device.

    Starts at ``requested``; on ``torch.OutOfMemoryError`` (and no other error) the batch is retried
    with half the budget, and the reduced value is kept for every later batch and call. ``events``
    records each failure so results state what was searched and what was used."""

    requested: int
    used: int = 0
    events: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if self.requested < 1:
            raise BenchError(f"token budget {self.requested}: must be at least 1")
        self.used = self.used or self.requested

    def shrink(self, failed_tokens: int, items: int) -> None:
        """Halve after an out-of-memory error on a batch of ``failed_tokens`` (``items`` items)."""
        self.events.append({"budget": self.used, "batch_tokens": failed_tokens, "batch_items": items})
        if items <= 1:
            raise BenchError(f"out of device memory on a single sequence of {failed_tokens} tokens; "
                             "lower max_length, use a smaller dtype (bf16/fp16) or a larger device")
        self.used = max(1, min(self.used, failed_tokens) // 2)

    def describe(self) -> dict:
        return {"token_budget_requested": self.requested, "token_budget_used": self.used,
                "oom_retries": list(self.events)}
