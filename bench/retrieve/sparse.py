"""Lexical (sparse) weights on disk beside the dense embeddings, and exact sparse search.

bge-m3's sparse head gives each text a few dozen (token id, weight) pairs over XLM-R's 250,002-id
vocabulary. A corpus's weights are stored per shard of the embedding store (``EmbeddingStore``) as a
``scipy.sparse`` CSR matrix (``shard-NNNNN.sparse.npz``: one row per passage, in the shard's order),
written atomically before the shard's dense vectors, so a shard whose dense file exists has its
weights too and an interrupted run resumes like a dense one.

Search is exact: query weights (CSR, ``[queries, vocab]``) times each chunk of corpus rows, in float64,
merged into a running top-k (``bench.retrieve.search.RunningTopK``), so memory stays bounded by
``queries x chunk`` scores whatever the corpus size. No approximate index.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import lazy
from ..progress import bar as progress_bar
from ..cache import checked, write_checked
from .embeddings import DONE, EmbeddingStore
from .search import RunningTopK

#: Scores held at once per chunk: queries x corpus rows (float64), about 256 MB.
SCORE_CELLS = 1 << 25


def shard_file(folder: str | Path, i: int) -> Path:
    return Path(folder) / f"shard-{i:05d}.sparse.npz"


def save_shard(folder: str | Path, i: int, weights) -> None:
    """One shard's lexical weights (CSR, one row per passage), written atomically with its check."""
    buf = io.BytesIO()
    lazy.scipy_sparse.save_npz(buf, weights.tocsr(), compressed=False)
    write_checked(shard_file(folder, i), buf.getvalue())


def drop_unpaired(folder: str | Path) -> list[Path]:
    """Delete each dense shard whose lexical weights are missing or fail their check (and the
    completion marker), so that the store encodes those shards again; returns the shards dropped."""
    folder = Path(folder)
    dropped = []
    for vec_path in sorted(folder.glob("shard-*.npy")):
        if not checked(shard_file(folder, int(vec_path.stem.split("-")[1]))):
            vec_path.unlink()
            dropped.append(vec_path)
    if dropped:
        (folder / DONE).unlink(missing_ok=True)
    return dropped


def shards(store: EmbeddingStore) -> Iterator[tuple[list[str], object]]:
    """(doc ids, CSR weights) per shard, in corpus order (the ids are the dense store's)."""
    for i, (ids, _) in enumerate(store.shards()):
        weights = lazy.scipy_sparse.load_npz(shard_file(store.folder, i)).tocsr()
        if weights.shape[0] != len(ids):
            raise RuntimeError(f"{shard_file(store.folder, i)}: {weights.shape[0]} rows for {len(ids)} passages")
        yield ids, weights


def sparse_top_k(queries, weight_shards, k: int, *, progress: bool = True, n_docs: int | None = None
                 ) -> list[list[tuple[str, float]]]:
    """Top-``k`` (doc id, score) per query row, score = sum over shared token ids of the weight
    products, best first; ties keep corpus order. ``queries``: CSR ``[n, vocab]``."""
    torch = lazy.torch
    q = queries.tocsr().astype(np.float64)
    best = RunningTopK(q.shape[0], k, dtype=torch.float64)
    chunk = max(1, SCORE_CELLS // max(1, q.shape[0]))
    bar = progress_bar(n_docs, "sparse search", "passage", enabled=progress)
    for ids, weights in weight_shards:
        base = best.extend(ids)
        if weights.shape[1] != q.shape[1]:
            raise RuntimeError(f"corpus weights have {weights.shape[1]} columns, the queries' {q.shape[1]}")
        for start in range(0, len(ids), chunk):
            block = weights[start:start + chunk]
            scores = np.asarray((q @ block.T.astype(np.float64)).todense())
            best.add(torch.from_numpy(scores), base + start)
            bar.update(block.shape[0])
    bar.close()
    return best.result()

