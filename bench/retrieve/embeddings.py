"""Corpus embeddings on disk: sharded, memory-mapped, resumable.

Encoding a large corpus is the most expensive step of a dense first stage, so it is done once per
(model, revision, collection, max_length, dtype) and kept. The corpus is cut into fixed-size shards
in the collection's own document order; each shard is written atomically as `shard-NNNNN.npy`
(vectors) and `shard-NNNNN.ids` (doc ids), so an interrupted run resumes at the first missing shard,
and search reads shards through memory maps without loading the whole matrix. Every file is written
with a check (size, sha256; `bench.cache`) and verified before use: a damaged shard is re-encoded.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import BenchError, Interrupted
from ..progress import catch_up, skip, step
from ..cache import checked, read_checked, read_checked_json, write_checked, write_checked_json, write_checked_text

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


def kept_message(shards: int, passages: int, n_docs: int, shard_size: int, where: str) -> str:
    """What an interrupted corpus encoding leaves, as the command line says it after Ctrl-C."""
    return (f"corpus encoding stopped: {shards} of {-(-n_docs // shard_size)} shards ({passages:,} of {n_docs:,} "
            f"passages) are on disk in {where} and will be reused; rerun the same command to encode the rest")


class EmbeddingStore:
    """One cache entry of corpus embeddings: a folder of shards plus a completion marker."""

    def __init__(self, folder: str | Path, shard_size: int = 100_000):
        self.folder = Path(folder)
        self.shard_size = shard_size

    def laid_out_shard_size(self) -> int | None:
        """The shard size this entry's files were written with: its marker's, else its first shard's
        length (the first shard is full unless it is the only one), else None (nothing on disk yet)."""
        meta = self._meta()
        if meta is not None and isinstance(meta.get("shard_size"), int):
            return meta["shard_size"]
        vec_path, ids_path = self._shard(0)
        ids = self._ids(ids_path) if checked(vec_path) else None
        return len(ids) if ids else None

    def kept(self) -> tuple[int, int]:
        """(shards, passages) intact on disk, whichever they are (several devices finish out of order)."""
        shards = passages = 0
        for ids_path in sorted(self.folder.glob("shard-*.ids")):
            ids = self._ids(ids_path)
            if ids is not None and checked(self._shard(int(ids_path.stem.split("-")[1]))[0]):
                shards, passages = shards + 1, passages + len(ids)
        return shards, passages

    def complete(self) -> bool:
        """The marker and every shard it counts are intact (a damaged shard makes the store incomplete,
        so `build` re-encodes just that shard)."""
        try:
            return sum(1 for _ in self._intact_shards()) > 0
        except BenchError:
            return False

    def _intact_shards(self) -> Iterator[tuple[list[str], Path]]:
        """(doc ids, vectors file) of each shard the marker counts; a BenchError at the first damaged one."""
        meta = self._meta()
        if meta is None:
            raise BenchError(f"{self.folder}: embeddings are incomplete; rerun to finish encoding")
        seen = 0
        i = 0
        while seen < meta["n_docs"]:
            vec_path, ids_path = self._shard(i)
            ids = self._ids(ids_path)
            if ids is None or not checked(vec_path):
                raise BenchError(f"{vec_path}: embedding shard missing or damaged; rerun to re-encode it")
            yield ids, vec_path
            seen += len(ids)
            i += 1

    def _meta(self) -> dict | None:
        """The completion marker, when present and intact."""
        meta = read_checked_json(self.folder / DONE)
        return meta if isinstance(meta, dict) and isinstance(meta.get("n_docs"), int) else None

    def _ids(self, ids_path: Path) -> list[str] | None:
        data = read_checked(ids_path)
        return None if data is None else data.decode("utf-8").split("\n")

    def _shard(self, i: int) -> tuple[Path, Path]:
        vec_name, ids_name = self.shard_files(i)
        return self.folder / vec_name, self.folder / ids_name

    # -- what a shard holds: dense vectors here; `bench.retrieve.sparse.SparseStore` holds term weights ----
    shard_files = staticmethod(shard_files)

    @staticmethod
    def payload(vecs, ids: list[str], storage_dtype: str) -> tuple[bytes, str]:
        return shard_payload(vecs, ids, storage_dtype)

    @staticmethod
    def load(path: Path):
        return np.load(path, mmap_mode="r")

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
        pending_ids: dict[int, list[str]] = {}

        def missing(bar):
            for i, batch in enumerate(doc_batches):
                vec_path, ids_path = self._shard(i)
                ids = [doc_id for doc_id, _ in batch]
                cached_ids = self._ids(ids_path) if vec_path.exists() else None
                if cached_ids is not None and checked(vec_path):
                    if cached_ids != ids:
                        raise BenchError(f"{ids_path}: cached shard does not match the collection's document "
                                         f"order; delete {self.folder} and rerun")
                    counts["reused_docs"] += len(ids)
                    skip(bar, len(ids))
                    continue
                pending_ids[i] = ids
                yield i, [text for _, text in batch]

        try:  # the encoder's loop advances the bar as it goes; worker processes' shards count when written
            with step(n_docs, "encode corpus", "passage", enabled=progress) as bar:
                for i, vecs in encode_shards(missing(bar)):
                    ids = pending_ids.pop(i)
                    vec_bytes, ids_text = self.payload(vecs, ids, storage_dtype)
                    vec_path, ids_path = self._shard(i)
                    write_checked(vec_path, vec_bytes)
                    write_checked_text(ids_path, ids_text)
                    counts["encoded_docs"] += len(ids)
                    catch_up(bar, counts["encoded_docs"] + counts["reused_docs"])
        except KeyboardInterrupt:
            raise Interrupted(kept_message(*self.kept(), n_docs, self.shard_size, str(self.folder))) from None
        total = counts["encoded_docs"] + counts["reused_docs"]
        if total != n_docs:
            raise BenchError(f"{self.folder}: the collection yielded {total} documents, expected {n_docs}")
        write_checked_json(self.folder / DONE, completion(total, self.shard_size, storage_dtype))
        return counts

    def shards(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """(doc ids, memory-mapped vectors) per shard, in corpus order."""
        for ids, vec_path in self._intact_shards():
            yield ids, self.load(vec_path)
