"""Exact inner-product top-k, streamed over corpus chunks so memory stays bounded.

Scores are computed chunk by chunk (`chunk` corpus rows at a time, on the chosen device) and merged
into a running top-k per query; peak memory is O(queries × (k + chunk)) whatever the corpus size.
Embeddings are L2-normalised, so inner product equals cosine similarity.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from .. import lazy
from ..progress import bar as progress_bar


def exact_top_k(queries: np.ndarray, shards: Iterable[tuple[list[str], np.ndarray]], k: int, *,
                chunk: int = 65536, device: str = "cpu", progress: bool = True, n_docs: int | None = None
                ) -> list[list[tuple[str, float]]]:
    """Top-`k` (doc id, score) per query row, best first, over all shards.

    Ties at equal score keep corpus order (earlier document first), also across the k-th place.
    """
    torch = lazy.torch
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(device)
    best = RunningTopK(q.shape[0], k, device)
    bar = progress_bar(n_docs, "exact search", "passage", enabled=progress)
    for ids, vecs in shards:
        base = best.extend(ids)
        for start in range(0, len(ids), chunk):
            block = torch.from_numpy(np.array(vecs[start:start + chunk], dtype=np.float32)).to(device)  # a writable copy of the memory-mapped rows
            best.add(q @ block.T, base + start)
            bar.update(block.shape[0])
    bar.close()
    return best.result()


class RunningTopK:
    """The best ``k`` columns per query row over score blocks seen one after another (any scorer:
    dense products here, sparse ones in ``bench.retrieve.sparse``). Ties at equal score keep corpus
    order (the earlier position first), also across the k-th place."""

    def __init__(self, n_queries: int, k: int, device: str = "cpu", dtype=None):
        torch = lazy.torch
        self.k = k
        self.scores = torch.full((n_queries, 0), float("-inf"), device=device, dtype=dtype or torch.float32)
        self.pos = torch.zeros((n_queries, 0), dtype=torch.long, device=device)
        self.ids: list[str] = []

    def extend(self, ids: list[str]) -> int:
        """Register a shard's doc ids; returns the corpus position of its first row."""
        base = len(self.ids)
        self.ids.extend(ids)
        return base

    def add(self, scores, base: int) -> None:
        """Merge a ``[queries, m]`` block of scores whose columns are corpus positions base..base+m-1."""
        torch = lazy.torch
        chunk_scores, chunk_pos = _chunk_top(scores, self.k)
        cand_scores = torch.cat([self.scores, chunk_scores.to(self.scores.dtype)], dim=1)
        cand_pos = torch.cat([self.pos, chunk_pos + base], dim=1)
        order = torch.sort(cand_scores, dim=1, descending=True, stable=True).indices[:, :self.k]
        self.scores = torch.gather(cand_scores, 1, order)
        self.pos = torch.gather(cand_pos, 1, order)

    def result(self) -> list[list[tuple[str, float]]]:
        scores_np = self.scores.cpu().numpy()
        pos_np = self.pos.cpu().numpy()
        return [[(self.ids[p], float(s)) for p, s in zip(pos_np[i], scores_np[i])] for i in range(len(pos_np))]


#: Extra candidates taken per chunk so that a run of equal scores at the k-th place is seen whole.
TIE_MARGIN = 64


def _chunk_top(scores, k: int):
    """The chunk's best `k` columns per row as (scores, column positions), ordered by score desc and
    position asc. torch.topk is fast but picks arbitrarily among equal scores, so it takes `k +
    TIE_MARGIN` and falls back to a full stable sort only where ties reach past that margin."""
    torch = lazy.torch
    n = scores.shape[1]
    take = min(n, k + TIE_MARGIN)
    vals, cols = torch.topk(scores, take, dim=1, sorted=True)
    if take < n and bool((vals[:, min(k, take) - 1] == vals[:, -1]).any()):
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        return torch.gather(scores, 1, order), order
    # Re-order the candidates by (score desc, position asc): sort by position, then stable by score.
    by_pos = torch.sort(cols, dim=1).indices
    vals, cols = torch.gather(vals, 1, by_pos), torch.gather(cols, 1, by_pos)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.gather(vals, 1, order), torch.gather(cols, 1, order)
