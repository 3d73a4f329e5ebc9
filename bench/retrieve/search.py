"""Exact inner-product top-k, streamed over corpus chunks so memory stays bounded.

Scores are computed chunk by chunk (`chunk` corpus rows at a time, on the chosen device) and merged
into a running top-k per query; peak memory is O(queries × (k + chunk)) whatever the corpus size.
Embeddings are L2-normalised, so inner product equals cosine similarity.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from .. import lazy


def exact_top_k(queries: np.ndarray, shards: Iterable[tuple[list[str], np.ndarray]], k: int, *,
                chunk: int = 65536, device: str = "cpu", progress: bool = True, n_docs: int | None = None
                ) -> list[list[tuple[str, float]]]:
    """Top-`k` (doc id, score) per query row, best first, over all shards.

    Ties at equal score keep corpus order (earlier document first), also across the k-th place.
    """
    torch = lazy.torch
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(device)
    nq = q.shape[0]
    best_scores = torch.full((nq, 0), float("-inf"), device=device)
    best_pos = torch.zeros((nq, 0), dtype=torch.long, device=device)
    all_ids: list[str] = []
    bar = lazy.tqdm.tqdm(total=n_docs, desc="exact search", unit="doc", disable=not progress, dynamic_ncols=True)
    for ids, vecs in shards:
        base = len(all_ids)
        all_ids.extend(ids)
        for start in range(0, len(ids), chunk):
            block = torch.from_numpy(np.array(vecs[start:start + chunk], dtype=np.float32)).to(device)  # a writable copy of the memory-mapped rows
            scores = q @ block.T
            chunk_scores, chunk_pos = _chunk_top(scores, k)
            cand_scores = torch.cat([best_scores, chunk_scores], dim=1)
            cand_pos = torch.cat([best_pos, chunk_pos + (base + start)], dim=1)
            order = torch.sort(cand_scores, dim=1, descending=True, stable=True).indices[:, :k]
            best_scores = torch.gather(cand_scores, 1, order)
            best_pos = torch.gather(cand_pos, 1, order)
            bar.update(block.shape[0])
    bar.close()
    scores_np = best_scores.float().cpu().numpy()
    pos_np = best_pos.cpu().numpy()
    return [[(all_ids[p], float(s)) for p, s in zip(pos_np[i], scores_np[i])] for i in range(nq)]


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
