"""The loop that keeps a device fed: token chunks in, outputs in input order out.

Chunks of the input are tokenized and flattened in a background thread (``batching.prefetch``)
while a CUDA device computes (inline on the CPU, where the cores are busy computing). Host tensors are pinned and copied with ``non_blocking=True``; outputs
stay on the device until the next chunk's work is queued, then come back with one copy per chunk,
so there is no per-batch synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .. import lazy
from ..progress import advance
from .batching import TokenBudget, chunk_bounds, next_batch, prefetch
from .device import release_memory
from .tokens import Encoded, TokenChunk, flatten


@dataclass
class Batch:
    """One batch on the device. Packed: ``input_ids`` etc. are ``[tokens]`` with ``cu_seqlens``;
    padded: ``[n, max_len]`` with ``attention_mask``."""

    n: int
    max_len: int
    tokens: int
    padded_tokens: int
    input_ids: Any
    token_type_ids: Any = None
    position_ids: Any = None
    cu_seqlens: Any = None
    attention_mask: Any = None


@dataclass
class Counts:
    """What a run processed: items, real tokens, tokens computed including padding, truncations."""

    items: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    hit_max: int = 0
    hit_query_max: int = 0
    batches: int = 0
    extra: dict = field(default_factory=dict)


@dataclass
class _Host:
    ids: Any
    types: Any
    positions: Any
    offsets: Any


class BatchLoop:
    """Runs ``forward(Batch) -> tensor [n, ...]`` over token-budget batches on one device.

    ``padded=False`` gives packed batches (for ``PackedEncoder``), ``padded=True`` padded ones (for a
    Hugging Face forward). The ``budget`` object is shared across calls, so a size found after an
    out-of-memory error is kept."""

    def __init__(self, device: str, budget: TokenBudget, *, padded: bool, pad_id: int = 0,
                 position_offset: int = 0, max_items: int | None = None,
                 first_chunk: int = 512, largest_chunk: int = 16384):
        self.device = device
        self.budget = budget
        self.padded = padded
        self.pad_id = pad_id
        self.position_offset = position_offset
        self.max_items = max_items
        self.first_chunk = first_chunk
        self.largest_chunk = largest_chunk
        self.pin = device.startswith("cuda")
        self.prefetch_depth = 2 if self.pin else 0  # background tokenization only beside an accelerator

    def run(self, items: Sequence, encode: Callable[[Sequence], Encoded], forward: Callable[[Batch], Any]) -> tuple[np.ndarray | None, Counts]:
        """Outputs (float32, input order) and counts; ``None`` outputs for empty input."""
        items = list(items)
        counts = Counts()
        result: np.ndarray | None = None
        pending = None

        def make(bounds):
            s, e = bounds
            chunk = flatten(encode(items[s:e]), s, self.position_offset)
            return chunk, self._host(chunk)

        bounds = chunk_bounds(len(items), self.first_chunk, self.largest_chunk)
        for chunk, host in prefetch(make, bounds, self.prefetch_depth):
            out = self._run_chunk(chunk, host, forward, counts)
            if pending is not None:
                result = self._collect(*pending, result, len(items))
                advance(pending[0].n)  # the running step's bar (a corpus encoding), none of its own
            pending = (chunk, out)
        if pending is not None:
            result = self._collect(*pending, result, len(items))
            advance(pending[0].n)
        return result, counts

    # -- internals -----------------------------------------------------------------------------------------
    def _host(self, chunk: TokenChunk) -> _Host | None:
        if self.padded:
            return None

        def t(a):
            if a is None:
                return None
            x = lazy.torch.from_numpy(a)
            return x.pin_memory() if self.pin else x

        return _Host(t(chunk.ids), t(chunk.types), t(chunk.positions), t(chunk.offsets.astype(np.int32)))

    def _run_chunk(self, chunk: TokenChunk, host, forward, counts: Counts):
        outs, s = [], 0
        while s < chunk.n:
            e = next_batch(chunk.lengths, chunk.offsets, s, self.budget.used, self.padded, self.max_items)
            batch = self._packed(chunk, host, s, e) if not self.padded else self._padded_batch(chunk, s, e)
            size = batch.padded_tokens
            try:
                out = forward(batch)
            except lazy.torch.OutOfMemoryError:
                out = None
            if out is None:
                del batch
                release_memory(self.device)
                self.budget.shrink(size, e - s)
                continue
            outs.append(out)
            counts.batches += 1
            counts.tokens += batch.tokens
            counts.padded_tokens += batch.padded_tokens
            s = e
        counts.items += chunk.n
        counts.hit_max += chunk.hit_max
        counts.hit_query_max += chunk.hit_query_max
        return lazy.torch.cat(outs) if outs else None

    def _packed(self, chunk: TokenChunk, host: _Host, s: int, e: int) -> Batch:
        a, b = int(chunk.offsets[s]), int(chunk.offsets[e])
        dev = self.device

        def to(x):
            return None if x is None else x.to(dev, non_blocking=True)

        cu = to(host.offsets[s:e + 1])
        return Batch(n=e - s, max_len=int(chunk.lengths[s]), tokens=b - a, padded_tokens=b - a,
                     input_ids=to(host.ids[a:b]), token_type_ids=to(None if host.types is None else host.types[a:b]),
                     position_ids=to(host.positions[a:b]), cu_seqlens=cu - cu[0])

    def _padded_batch(self, chunk: TokenChunk, s: int, e: int) -> Batch:
        lengths = chunk.lengths[s:e]
        n, longest = e - s, int(lengths[0])
        a, b = int(chunk.offsets[s]), int(chunk.offsets[e])
        mask = np.arange(longest)[None, :] < lengths[:, None]
        ids = np.full((n, longest), self.pad_id, dtype=np.int64)
        ids[mask] = chunk.ids[a:b]
        types = None
        if chunk.types is not None:
            types = np.zeros((n, longest), dtype=np.int64)
            types[mask] = chunk.types[a:b]

        def to(x):
            if x is None:
                return None
            t = lazy.torch.from_numpy(x)
            if self.pin:
                t = t.pin_memory()
            return t.to(self.device, non_blocking=True)

        return Batch(n=n, max_len=longest, tokens=b - a, padded_tokens=n * longest, input_ids=to(ids),
                     token_type_ids=to(types), attention_mask=to(mask.astype(np.int64)))

    @staticmethod
    def _collect(chunk: TokenChunk, out, result, total: int):
        if out is None:
            return result
        host = out.float().cpu().numpy()
        if result is None:
            result = np.empty((total,) + host.shape[1:], dtype=np.float32)
        result[chunk.start + chunk.order] = host
        return result
