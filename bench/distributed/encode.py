"""Corpus encoding on the cluster: missing shards only, a pool of actors each holding the encoder once.

Shard boundaries, file names and the cache entry are the local store's (`bench.retrieve.embeddings`,
`bench.retrieve.stage.embedding_entry`), so a shard encoded by either backend is reused by the other
when the storage root is the cache folder (or the cache lives on the shared storage).
"""

from __future__ import annotations

import json
import time

import numpy as np

from .. import lazy
from ..errors import BenchError, Interrupted
from ..retrieve import build_encoder
from ..retrieve.embeddings import DONE, completion, kept_message, shard_files, shard_payload
from .storage import Storage


class ShardEncoder:
    """A Ray Data actor: builds the bi-encoder once (on the GPU Ray gave it, else the CPU), then
    encodes whole shards with the same engine as the local stage and writes each to storage."""

    def __init__(self, spec, cache_dir: str, storage: Storage, folder: str, storage_dtype: str):
        self.encoder = build_encoder(spec, cache_dir=cache_dir)
        self.storage, self.folder, self.storage_dtype = storage, folder, storage_dtype

    def __call__(self, batch: dict) -> dict:
        out = {"shard": [], "docs": [], "seconds": [], "node": []}
        node = lazy.ray.get_runtime_context().get_node_id()
        for i, ids, texts in zip(batch["shard"], batch["ids"], batch["texts"]):
            ids, texts = [str(x) for x in ids], [str(t) for t in texts]
            t0 = time.perf_counter()
            ((_, vecs),) = list(self.encoder.encode_shards([(int(i), texts)]))
            vec_bytes, ids_text = shard_payload(vecs, ids, self.storage_dtype)
            vec_name, ids_name = shard_files(int(i))
            self.storage.write_checked(f"{self.folder}/{vec_name}", vec_bytes)
            self.storage.write_checked(f"{self.folder}/{ids_name}", ids_text.encode("utf-8"))  # last: the shard counts once both exist
            out["shard"].append(int(i))
            out["docs"].append(len(ids))
            out["seconds"].append(time.perf_counter() - t0)
            out["node"].append(node)
        return {k: np.array(v) for k, v in out.items()}


def stored_shard_ids(storage: Storage, folder: str, i: int) -> list[str] | None:
    """Shard `i`'s doc ids if both its files are on storage, else None."""
    vec_name, ids_name = shard_files(i)
    if not storage.exists(f"{folder}/{vec_name}"):  # its bytes are verified where they are read (search)
        return None
    data = storage.read_checked(f"{folder}/{ids_name}")
    return None if data is None else data.decode("utf-8").split("\n")


def stored_shard_size(storage: Storage, folder: str) -> int | None:
    """The shard size an entry on storage was written with (as `EmbeddingStore.laid_out_shard_size`):
    its completion marker's, else its first shard's length, else None."""
    marker = storage.read_checked(f"{folder}/{DONE}")
    size = json.loads(marker).get("shard_size") if marker is not None else None
    if isinstance(size, int):
        return size
    first = stored_shard_ids(storage, folder, 0)
    return len(first) if first else None


def encode_corpus(collection, spec, *, storage: Storage, folder: str, storage_dtype: str, shard_size: int,
                  execution, cache_dir: str, log=print) -> dict:
    """Encode every shard not yet on storage, then mark the entry complete. Returns the counts
    (encoded and reused documents, shards submitted) and the per-shard timings."""
    counts = {"encoded_docs": 0, "reused_docs": 0, "submitted_shards": 0, "shards": 0}
    if storage.exists(f"{folder}/{DONE}"):
        counts["reused_docs"] = collection.n_docs()
        return counts
    items = []
    for i, batch in enumerate(collection.iter_docs(batch_size=shard_size)):
        ids = [doc_id for doc_id, _ in batch]
        stored = stored_shard_ids(storage, folder, i)
        counts["shards"] += 1
        if stored is not None:
            if stored != ids:
                raise BenchError(f"{storage.path(folder)}: stored shard {i} does not match the collection's document "
                                 "order; delete that folder and rerun")
            counts["reused_docs"] += len(ids)
            continue
        items.append({"shard": i, "ids": ids, "texts": [text for _, text in batch]})
    if items:
        log(f"encoding {len(items)} of {counts['shards']} shard(s) on {execution.workers} actor(s)")
        try:
            done = run_actor_pool(items, ShardEncoder, dict(spec=spec, cache_dir=cache_dir, storage=storage,
                                                             folder=folder, storage_dtype=storage_dtype), execution)
        except KeyboardInterrupt:
            kept = [ids for ids in (stored_shard_ids(storage, folder, i) for i in range(counts["shards"])) if ids]
            raise Interrupted(kept_message(len(kept), sum(map(len, kept)), collection.n_docs(), shard_size,
                                           storage.path(folder))) from None
        counts["submitted_shards"] = len(items)
        counts["encoded_docs"] = int(sum(done["docs"]))
        counts["encode_seconds_per_shard"] = [float(s) for s in done["seconds"]]
    total = counts["encoded_docs"] + counts["reused_docs"]
    if total != collection.n_docs():
        raise BenchError(f"{storage.path(folder)}: the collection yielded {total} documents, expected {collection.n_docs()}")
    storage.write_checked_json(f"{folder}/{DONE}", completion(total, shard_size, storage_dtype))
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
