"""Lexical (sparse) weights on disk, and exact sparse search.

bge-m3's sparse head gives each text a few dozen (token id, weight) pairs over XLM-R's 250,002-id
vocabulary; SPLADE gives a few hundred over BERT's 30,522. A corpus's weights are stored per shard as a
``scipy.sparse`` CSR matrix (``shard-NNNNN.sparse.npz``: one row per passage, in the shard's order),
written atomically with its check. bge-m3 keeps them beside the shard's dense vectors, written before
them, so a shard whose dense file exists has its weights too; SPLADE has weights only, in a
``SparseStore`` (the embedding store's shards, ids and completion marker, with the weights in place of
the vectors). Either way an interrupted run resumes like a dense one.

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


def shard_files(i: int) -> tuple[str, str]:
    """The file names of shard `i` of a `SparseStore` (weights, doc ids), the same wherever it is written."""
    return f"shard-{i:05d}.sparse.npz", f"shard-{i:05d}.ids"


def shard_file(folder: str | Path, i: int) -> Path:
    return Path(folder) / shard_files(i)[0]


def npz_bytes(weights) -> bytes:
    """A CSR matrix as the bytes of an uncompressed ``.npz`` (``scipy.sparse.save_npz``)."""
    buf = io.BytesIO()
    lazy.scipy_sparse.save_npz(buf, weights.tocsr(), compressed=False)
    return buf.getvalue()


def shard_payload(weights, ids: list[str]) -> tuple[bytes, str]:
    """A weight shard's two files as written: the CSR weights as .npz bytes, the ids one a line."""
    if weights.shape[0] != len(ids):
        raise RuntimeError(f"encoder returned {weights.shape[0]} rows of weights for {len(ids)} texts")
    return npz_bytes(weights), "\n".join(ids)


def save_shard(folder: str | Path, i: int, weights) -> None:
    """One shard's lexical weights (CSR, one row per passage), written atomically with its check."""
    write_checked(shard_file(folder, i), npz_bytes(weights))


class SparseStore(EmbeddingStore):
    """A cache entry of corpus term weights (SPLADE): the embedding store's shards, doc ids, completion
    marker and checks, each shard's vectors file replaced by its CSR weights (``shard_files``)."""

    shard_files = staticmethod(shard_files)

    @staticmethod
    def payload(weights, ids: list[str], storage_dtype: str) -> tuple[bytes, str]:
        return shard_payload(weights, ids)

    @staticmethod
    def load(path: Path):
        return lazy.scipy_sparse.load_npz(path).tocsr()


def quantize(weights, factor: float):
    """Weights as integer impacts: ``round(w x factor)`` (half to even, as Python's ``round`` and
    ``np.rint``), zeros dropped: what Pyserini's and Anserini's impact indexes store."""
    out = weights.tocsr().astype(np.float64, copy=True)
    out.data = np.rint(out.data * factor)
    out.eliminate_zeros()
    return out


class SparseRows:
    """Sparse rows made batch by batch in the order a `BatchLoop` processes texts (longest first), put
    back in input order at the end. ``add`` keeps one batch's (row, token id, weight) triples and
    returns each of its texts' processing position, which the loop hands back in input order."""

    def __init__(self, vocab: int):
        self.vocab = vocab
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.done = 0

    def add(self, seq, ids, weights, n: int):
        torch = lazy.torch
        self.parts.append((seq.cpu().numpy() + self.done, ids.cpu().numpy(), weights.float().cpu().numpy()))
        position = torch.arange(self.done, self.done + n, device=seq.device, dtype=torch.float32)
        self.done += n
        return position

    def matrix(self, position: np.ndarray):
        """CSR ``[len(position), vocab]`` in input order; ``position[i]``: input i's processing position."""
        n = len(position)
        if not self.parts:
            return lazy.scipy_sparse.csr_matrix((n, self.vocab), dtype=np.float32)
        rows, ids, weights = (np.concatenate(p) for p in zip(*self.parts))
        done = lazy.scipy_sparse.csr_matrix((weights, (rows, ids)), shape=(self.done, self.vocab), dtype=np.float32)
        return done[np.asarray(position, dtype=np.int64)]


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

