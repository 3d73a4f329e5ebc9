"""Corpus embeddings on disk: sharded, memory-mapped, resumable.

Encoding a large corpus is the most expensive step of a dense first stage, so it is done once per
(model, revision, collection, max_length, dtype) and kept. The corpus is cut into fixed-size shards
in the collection's own document order; each shard is written atomically as `shard-NNNNN.npy`
(vectors) and `shard-NNNNN.ids` (doc ids), so an interrupted run resumes at the first missing shard,
and search reads shards through memory maps without loading the whole matrix.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .. import lazy
from ..errors import BenchError
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text

DONE = "complete.json"


def shard_files(i: int) -> tuple[str, str]:
    """The file names of shard `i` (vectors, doc ids), the same in a local cache entry and on a
    cluster's storage, so a shard written by either is found by the other."""
    return f"shard-{i:05d}.npy", f"shard-{i:05d}.ids"


def shard_payload(vecs: np.ndarray, ids: list[str], storage_dtype: str) -> tuple[bytes, str]:
    """A shard's two files as written: the vectors as .npy bytes in `storage_dtype`, the ids one a line."""
    vecs = np.ascontiguousarray(vecs, dtype=storage_dtype)
    if vecs.shape[0] != len(ids):
        raise RuntimeError(f"encoder returned {vecs.shape[0]} vectors for {len(ids)} texts")
    buf = io.BytesIO()
    np.save(buf, vecs)
    return buf.getvalue(), "\n".join(ids)


def completion(n_docs: int, shard_size: int, storage_dtype: str) -> dict:
    """What the completion marker (`DONE`) of a finished entry holds."""
    return {"n_docs": n_docs, "shard_size": shard_size, "storage_dtype": storage_dtype}


class EmbeddingStore:
    """One cache entry of corpus embeddings: a folder of shards plus a completion marker."""

    def __init__(self, folder: str | Path, shard_size: int = 100_000):
        self.folder = Path(folder)
        self.shard_size = shard_size

    def complete(self) -> bool:
        return (self.folder / DONE).exists()

    def _shard(self, i: int) -> tuple[Path, Path]:
        vec_name, ids_name = shard_files(i)
        return self.folder / vec_name, self.folder / ids_name

    def build(self, doc_batches: Iterator[list[tuple[str, str]]], encode: Callable[[list[str]], np.ndarray] | None = None,
              *, n_docs: int, storage_dtype: str = "float32", progress: bool = True,
              encode_shards: Callable[[Iterator[tuple[int, list[str]]]], Iterator[tuple[int, np.ndarray]]] | None = None
              ) -> dict:
        """Encode every shard that is not on disk yet. `doc_batches` must yield the corpus in its fixed
        order in batches of exactly `shard_size` (the last may be shorter). Either `encode(texts)` (one
        device) or `encode_shards` (an iterator of (index, texts) in, (index, vectors) out, in any
        order: several devices) does the encoding; each shard is written as soon as it is done."""
        if (encode is None) == (encode_shards is None):
            raise ValueError("give exactly one of encode and encode_shards")
        if encode_shards is None:
            encode_shards = lambda items: ((i, encode(texts)) for i, texts in items)  # noqa: E731
        self.folder.mkdir(parents=True, exist_ok=True)
        counts = {"encoded_docs": 0, "reused_docs": 0}
        bar = lazy.tqdm.tqdm(total=n_docs, desc="encode corpus", unit="doc", disable=not progress, dynamic_ncols=True)
        pending_ids: dict[int, list[str]] = {}

        def missing():
            for i, batch in enumerate(doc_batches):
                vec_path, ids_path = self._shard(i)
                ids = [doc_id for doc_id, _ in batch]
                if vec_path.exists() and ids_path.exists():
                    if ids_path.read_text(encoding="utf-8").split("\n") != ids:
                        raise BenchError(f"{ids_path}: cached shard does not match the collection's document "
                                         f"order; delete {self.folder} and rerun")
                    counts["reused_docs"] += len(ids)
                    bar.update(len(ids))
                    continue
                pending_ids[i] = ids
                yield i, [text for _, text in batch]

        for i, vecs in encode_shards(missing()):
            ids = pending_ids.pop(i)
            vec_bytes, ids_text = shard_payload(vecs, ids, storage_dtype)
            vec_path, ids_path = self._shard(i)
            atomic_write_bytes(vec_path, vec_bytes)
            atomic_write_text(ids_path, ids_text)
            counts["encoded_docs"] += len(ids)
            bar.update(len(ids))
        bar.close()
        total = counts["encoded_docs"] + counts["reused_docs"]
        if total != n_docs:
            raise BenchError(f"{self.folder}: the collection yielded {total} documents, expected {n_docs}")
        atomic_write_json(self.folder / DONE, completion(total, self.shard_size, storage_dtype))
        return counts

    def shards(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """(doc ids, memory-mapped vectors) per shard, in corpus order."""
        if not self.complete():
            raise BenchError(f"{self.folder}: embeddings are incomplete; rerun to finish encoding")
        meta = json.loads((self.folder / DONE).read_text())
        seen = 0
        i = 0
        while seen < meta["n_docs"]:
            vec_path, ids_path = self._shard(i)
            ids = ids_path.read_text(encoding="utf-8").split("\n")
            vecs = np.load(vec_path, mmap_mode="r")
            yield ids, vecs
            seen += len(ids)
            i += 1
