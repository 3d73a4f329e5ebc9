"""Exact search on the cluster: one task per contiguous group of shards, merged on the driver.

Each task runs the local search over its shards (`exact_top_k` for dense vectors, `sparse_top_k`
for lexical weights: the same chunking within each shard, so the same scores) and returns every
query's top-k with corpus positions; the driver keeps the best k by (score descending, corpus
position ascending): the local search's tie rule, so the candidate run equals the local one exactly.
"""

from __future__ import annotations

import io

import numpy as np

from .. import lazy
from ..engine.device import resolve_devices
from ..retrieve.search import exact_top_k
from ..retrieve.sparse import quantize as impacts
from ..retrieve.sparse import sparse_top_k
from .storage import Storage


def shard_groups(n_shards: int, groups: int) -> list[list[int]]:
    """Shard indices cut into at most `groups` contiguous, near-equal groups."""
    groups = max(1, min(groups, n_shards))
    bounds = [round(g * n_shards / groups) for g in range(groups + 1)]
    return [list(range(bounds[g], bounds[g + 1])) for g in range(groups) if bounds[g] < bounds[g + 1]]


def load_group(storage: Storage, folder: str, shards: list[int], suffix: str, load) -> tuple[list, list[str]]:
    """(ids, matrix) per shard of a group, read from storage and verified, and all their ids in order."""
    loaded, ids_all = [], []
    for i in shards:
        name = f"shard-{i:05d}"
        ids_data, data = storage.read_checked(f"{folder}/{name}.ids"), storage.read_checked(f"{folder}/{name}{suffix}")
        if ids_data is None or data is None:
            raise RuntimeError(f"{storage.path(folder)}: shard {i} is missing or damaged on storage; rerun to re-encode it")
        ids = ids_data.decode("utf-8").split("\n")
        loaded.append((ids, load(io.BytesIO(data))))
        ids_all.extend(ids)
    return loaded, ids_all


def with_positions(hits, ids_all: list[str], base: int) -> list[list[tuple[int, str, float]]]:
    position = {doc_id: base + p for p, doc_id in enumerate(ids_all)}
    return [[(position[d], d, s) for d, s in row] for row in hits]


def search_group(storage: Storage, folder: str, shards: list[int], base: int, queries: np.ndarray, k: int,
                 chunk: int, device: str) -> list[list[tuple[int, str, float]]]:
    """Every query's top-k over `shards` as (corpus position, doc id, score), best first."""
    loaded, ids_all = load_group(storage, folder, shards, ".npy", np.load)
    hits = exact_top_k(queries, loaded, k, chunk=chunk, device=resolve_devices(device)[0], progress=False)
    return with_positions(hits, ids_all, base)


def sparse_search_group(storage: Storage, folder: str, shards: list[int], base: int, queries, k: int,
                        quantize: float | None) -> tuple[list[list[tuple[int, str, float]]], int, int]:
    """As `search_group`, over lexical weights (``shard-NNNNN.sparse.npz``) with `sparse_top_k`, each
    shard as integer impacts when `quantize` is set (SPLADE's ``quantize``, as locally); also the
    passages and stored terms it searched (before quantisation)."""
    load = lambda f: lazy.scipy_sparse.load_npz(f).tocsr()  # noqa: E731
    loaded, ids_all = load_group(storage, folder, shards, ".sparse.npz", load)
    docs, terms = sum(w.shape[0] for _, w in loaded), sum(w.nnz for _, w in loaded)
    if quantize is not None:
        loaded = [(ids, impacts(w, quantize)) for ids, w in loaded]
    return with_positions(sparse_top_k(queries, loaded, k, progress=False), ids_all, base), docs, terms


def merge_top_k(partials: list[list[list[tuple[int, str, float]]]], k: int) -> list[list[tuple[str, float]]]:
    """Per query, the best `k` of every group's hits by (score desc, corpus position asc)."""
    merged = []
    for rows in zip(*partials):
        hits = sorted((h for row in rows for h in row), key=lambda h: (-h[2], h[0]))[:k]
        merged.append([(d, s) for _, d, s in hits])
    return merged


def distributed_search(storage: Storage, folder: str, n_shards: int, shard_size: int, queries: np.ndarray,
                       spec, execution, depth: int) -> list[list[tuple[str, float]]]:
    """Top-`depth` per query row over all dense shards, by `execution.workers` tasks (retried if one dies)."""
    q_ref = lazy.ray.put(np.ascontiguousarray(queries, dtype=np.float32))
    device = spec.device if execution.gpus_per_worker else "cpu"
    return merge_top_k(over_groups(search_group, n_shards, execution, lambda group: (
        storage, folder, group, group[0] * shard_size, q_ref, depth, spec.search_chunk, device)), depth)


def sparse_search(storage: Storage, folder: str, n_shards: int, shard_size: int, queries, execution, depth: int,
                  quantize: float | None = None) -> tuple[list[list[tuple[str, float]]], dict]:
    """Top-`depth` per query row (CSR weights) over all lexical-weight shards, as `distributed_search`,
    and the passages and stored terms searched (``{"docs": ..., "terms": ...}``)."""
    q_ref = lazy.ray.put(queries.tocsr())
    parts = over_groups(sparse_search_group, n_shards, execution,
                        lambda group: (storage, folder, group, group[0] * shard_size, q_ref, depth, quantize))
    return merge_top_k([p[0] for p in parts], depth), {"docs": sum(p[1] for p in parts), "terms": sum(p[2] for p in parts)}


def over_groups(fn, n_shards: int, execution, args) -> list:
    """`fn(*args(group))` as one task per group of shards: their results, in corpus order."""
    task = lazy.ray.remote(fn).options(num_cpus=execution.cpus_per_worker, num_gpus=execution.gpus_per_worker,
                                       max_retries=3)
    refs = [task.remote(*args(group)) for group in shard_groups(n_shards, execution.workers)]
    return lazy.ray.get(refs)
