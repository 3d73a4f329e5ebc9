"""Corpus encoding on the cluster: every shard checked on storage, the missing and damaged ones encoded
where their passages are read.

The driver plans shards from the collection's passage count alone (shard i is passages
[i x shard_size, (i + 1) x shard_size)) and hands each actor of a pool a shard's bounds, never its
texts: the actor reads the passages from the collection's source itself (`Collection.reader`: an
ir_datasets slice, a BEIR file from its recorded byte offset, the synthetic generator by index) and
builds its model once, on the first shard it must encode. Every shard is verified on storage first
(each file's size and sha256 against its check, as the local cache does), whether or not
`complete.json` lists it; a shard missing or damaged is encoded again, and one that `complete.json`
listed is named on stderr. So the driver's memory does not grow with the corpus.

What a shard holds depends on the first stage: a corpus encoder (`DenseCorpus`, `M3Corpus`,
`SpladeCorpus`) names the model an actor builds and the checked files one shard becomes, written in
order and followed by the shard's ids file. File names, shard boundaries and cache entries are the
local stores' (`bench.retrieve.embeddings`, `bench.retrieve.sparse`, `bench.retrieve.stage.embedding_entry`,
`bench.retrieve.bge_m3.corpus_entry`, `bench.retrieve.splade.weights_entry`), so a shard written by
either backend is reused by the other when the storage root is the cache folder.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .. import lazy
from ..engine.device import resolve_devices
from ..errors import BenchError, Interrupted
from ..retrieve import build_encoder, sparse
from ..retrieve.embeddings import DONE, completion, kept_message, shard_payload
from .storage import MISSING, Storage


@dataclass(frozen=True)
class DenseCorpus:
    """A dense first stage's shards: the bi-encoder's vectors (``shard-NNNNN.npy``)."""

    spec: Any
    storage_dtype: str
    suffixes: ClassVar[tuple[str, ...]] = (".npy",)

    def build(self, cache_dir: str):
        return build_encoder(self.spec, cache_dir=cache_dir)

    def encode(self, model, ids: list[str], texts: list[str]) -> list[bytes]:
        return [shard_payload(model.encode_docs(texts), ids, self.storage_dtype)[0]]


@dataclass(frozen=True)
class M3Corpus:
    """bge-m3's shards from one forward: lexical weights (``.sparse.npz``), then dense vectors
    (``.npy``): the local store's order, so a shard whose vectors exist has its weights."""

    spec: Any
    storage_dtype: str
    suffixes: ClassVar[tuple[str, ...]] = (".sparse.npz", ".npy")

    def build(self, cache_dir: str):
        from ..retrieve.bge_m3 import M3Encoder

        return M3Encoder(self.spec, cache_dir=cache_dir, device=resolve_devices(self.spec.device)[0])

    def encode(self, model, ids: list[str], texts: list[str]) -> list[bytes]:
        out = model.encode_docs(texts)
        if out.sparse.shape[0] != len(ids):
            raise RuntimeError(f"encoder returned {out.sparse.shape[0]} rows of weights for {len(ids)} texts")
        return [sparse.npz_bytes(out.sparse), shard_payload(out.dense, ids, self.storage_dtype)[0]]


@dataclass(frozen=True)
class SpladeCorpus:
    """A SPLADE first stage's shards: the masked-LM term weights, float32 and unquantised
    (``shard-NNNNN.sparse.npz``), as the local `sparse.SparseStore` writes them."""

    spec: Any
    storage_dtype: ClassVar[str] = "float32"
    suffixes: ClassVar[tuple[str, ...]] = (".sparse.npz",)

    def build(self, cache_dir: str):
        from ..retrieve.splade import SpladeEncoder

        return SpladeEncoder(self.spec, cache_dir=cache_dir, device=resolve_devices(self.spec.device)[0])

    def encode(self, model, ids: list[str], texts: list[str]) -> list[bytes]:
        ((_, weights),) = model.encode_shards([(0, texts)])  # the local store's entry point, one shard
        return [sparse.shard_payload(weights, ids)[0]]


def shard_names(i: int, suffixes: tuple[str, ...]) -> list[str]:
    """Shard `i`'s files in the order they are written: the encoder's, then the ids file (last: a
    shard counts once its ids are there)."""
    return [f"shard-{i:05d}{suffix}" for suffix in (*suffixes, ".ids")]


class ShardWriter:
    """A Ray Data actor: verifies whole shards on storage and encodes those missing or damaged, reading
    their passages itself (``reader.docs_range``). The model is built on the first shard to encode,
    so a run whose shards are all intact loads none."""

    def __init__(self, reader, corpus, storage: Storage, folder: str, cache_dir: str, compare_ids: bool):
        self.reader, self.corpus, self.storage, self.folder = reader, corpus, storage, folder
        self.cache_dir, self.compare_ids = cache_dir, compare_ids
        self.model = None

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {"shard": [], "status": [], "docs": [], "seconds": [], "node": [], "problem": []}
        node = lazy.ray.get_runtime_context().get_node_id()
        for i, start, stop in zip(batch["shard"], batch["start"], batch["stop"]):
            t0 = time.perf_counter()
            status, docs, problem = self.shard(int(i), int(start), int(stop))
            for key, value in (("shard", int(i)), ("status", status), ("docs", docs), ("problem", problem or ""),
                               ("seconds", time.perf_counter() - t0), ("node", node)):
                out[key].append(value)
        return {k: np.array(v) for k, v in out.items()}

    def shard(self, i: int, start: int, stop: int) -> tuple[str, int, str | None]:
        """(``reused`` | ``encoded`` | ``mismatch``, passages, what was wrong with the stored shard)."""
        names = [f"{self.folder}/{name}" for name in shard_names(i, self.corpus.suffixes)]
        problem, stored_ids = self.verify(names, stop - start)
        if problem is None and not self.compare_ids:
            return "reused", len(stored_ids), None
        docs = self.reader.docs_range(start, stop)
        if problem is None:  # an entry still being built: its kept shards must be this collection's, in order
            if [d for d, _ in docs] != stored_ids:
                return "mismatch", len(stored_ids), self.storage.path(names[-1])
            return "reused", len(stored_ids), None
        if len(docs) != stop - start:
            raise RuntimeError(f"the collection gave {len(docs)} passages for shard {i} ({start}-{stop - 1})")
        if self.model is None:
            self.model = self.corpus.build(self.cache_dir)
        ids, texts = [d for d, _ in docs], [t for _, t in docs]
        for rel, data in zip(names, [*self.corpus.encode(self.model, ids, texts), "\n".join(ids).encode("utf-8")]):
            self.storage.write_checked(rel, data)
        return "encoded", len(ids), problem

    def verify(self, names: list[str], n: int) -> tuple[str | None, list[str] | None]:
        """(None, the stored ids) when every file of the shard matches its check and the ids number `n`;
        else (what is wrong, naming the file, None)."""
        for rel in names:
            data, wrong = self.storage.read_verified(rel)
            if wrong is not None:
                return f"{self.storage.path(rel)}: {wrong}", None
        ids = data.decode("utf-8").split("\n")
        if len(ids) != n:
            return f"{self.storage.path(names[-1])}: {len(ids):,} ids where the shard holds {n:,}", None
        return None, ids


def stored_shard_size(storage: Storage, folder: str) -> int | None:
    """The shard size an entry on storage was written with (as `EmbeddingStore.laid_out_shard_size`):
    its completion marker's, else its first shard's length, else None."""
    marker = storage.read_checked(f"{folder}/{DONE}")
    size = json.loads(marker).get("shard_size") if marker is not None else None
    if isinstance(size, int):
        return size
    first = storage.read_checked(f"{folder}/{shard_names(0, ())[0]}")
    return len(first.decode("utf-8").split("\n")) if first else None


def kept_shards(storage: Storage, folder: str, n_shards: int, suffixes: tuple[str, ...]) -> list[int]:
    """Passages per shard whose files are all on storage (what an interrupted run keeps)."""
    kept = []
    for i in range(n_shards):
        *payload, ids_name = shard_names(i, suffixes)
        ids = storage.read_checked(f"{folder}/{ids_name}")
        if ids is not None and all(storage.exists(f"{folder}/{name}") for name in payload):
            kept.append(len(ids.decode("utf-8").split("\n")))
    return kept


def encode_corpus(reader, corpus, *, storage: Storage, folder: str, n_docs: int, shard_size: int, execution,
                  cache_dir: str, log=print) -> dict:
    """Every shard of the entry intact on storage when it returns, then the entry marked complete.
    Returns the counts (passages encoded now and reused, shards encoded and verified) and the
    actors' time per shard encoded."""
    listed = storage.read_checked(f"{folder}/{DONE}") is not None
    n_shards = -(-n_docs // shard_size)
    items = [{"shard": i, "start": i * shard_size, "stop": min(n_docs, (i + 1) * shard_size)} for i in range(n_shards)]
    log(f"checking {n_shards} shard(s) on storage ({'listed in' if listed else 'no'} {DONE}) on {execution.workers} "
        "actor(s); missing or damaged ones are encoded there")
    try:
        done = run_actor_pool(items, ShardWriter, dict(reader=reader, corpus=corpus, storage=storage, folder=folder,
                                                        cache_dir=cache_dir, compare_ids=not listed), execution)
    except KeyboardInterrupt:
        kept = kept_shards(storage, folder, n_shards, corpus.suffixes)
        raise Interrupted(kept_message(len(kept), sum(kept), n_docs, shard_size, storage.path(folder))) from None
    rows = sorted(zip(done["shard"], done["status"], done["docs"], done["seconds"], done["problem"]))
    for i, status, _, _, where in rows:
        if status == "mismatch":
            raise BenchError(f"{where}: stored shard {i} does not match the collection's document order; delete "
                             f"{storage.path(folder)} and rerun")
    for i, status, _, _, problem in rows:
        if problem and (listed or not problem.endswith(f": {MISSING}")):
            print(f"storage: {problem}{f' (shard {i}, listed in {DONE})' if listed else ''}; re-encoded on the cluster",
                  file=sys.stderr, flush=True)
    encoded = [r for r in rows if r[1] == "encoded"]
    counts = {"encoded_docs": sum(r[2] for r in encoded), "reused_docs": sum(r[2] for r in rows if r[1] == "reused"),
              "encoded_shards": len(encoded), "verified_shards": len(rows) - len(encoded),
              "encode_seconds_per_shard": [float(r[3]) for r in encoded] or None}
    total = counts["encoded_docs"] + counts["reused_docs"]
    if total != n_docs:
        raise BenchError(f"{storage.path(folder)}: the collection yielded {total} documents, expected {n_docs}")
    if encoded or not listed:
        storage.write_checked_json(f"{folder}/{DONE}", completion(total, shard_size, corpus.storage_dtype))
    return counts


def run_actor_pool(items: list[dict], actor_class, constructor_kwargs: dict, execution) -> dict:
    """One row per item through a pool of `execution.workers` actors of `actor_class` (Ray Data's
    map_batches with an ActorPoolStrategy, one item per call); a dead actor is restarted and its item
    retried (Ray Data's defaults for actor pools: max_restarts=-1, max_task_retries=-1). Returns the actors' output columns, concatenated."""
    ray_data = lazy.ray_data
    ds = ray_data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(actor_class, fn_constructor_kwargs=constructor_kwargs, batch_size=1,
                        compute=ray_data.ActorPoolStrategy(size=min(execution.workers, len(items))),
                        num_cpus=execution.cpus_per_worker, num_gpus=execution.gpus_per_worker)
    out: dict[str, list] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for k, v in batch.items():
            out.setdefault(k, []).extend(v.tolist())
    return out
