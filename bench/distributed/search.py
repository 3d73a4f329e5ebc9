"""Exact search on the cluster: one task per contiguous group of shards, merged on the driver.

Each task runs the local `exact_top_k` over its shards (the same chunking within each shard, so the
same float32 scores) and returns every query's top-k with corpus positions; the driver keeps the best
k by (score descending, corpus position ascending): the local search's tie rule, so the candidate run
equals the local one exactly.
"""

from __future__ import annotations

import io

import numpy as np

from .. import lazy
from ..engine.device import resolve_devices
from ..retrieve.embeddings import shard_files
from ..retrieve.search import exact_top_k
from .storage import Storage


def shard_groups(n_shards: int, groups: int) -> list[list[int]]:
    """Shard indices cut into at most `groups` contiguous, near-equal groups."""
    groups = max(1, min(groups, n_shards))
    bounds = [round(g * n_shards / groups) for g in range(groups + 1)]
    return [list(range(bounds[g], bounds[g + 1])) for g in range(groups) if bounds[g] < bounds[g + 1]]


def search_group(storage: Storage, folder: str, shards: list[int], base: int, queries: np.ndarray, k: int,
                 chunk: int, device: str) -> list[list[tuple[int, str, float]]]:
    """Every query's top-k over `shards` as (corpus position, doc id, score), best first."""
    loaded, ids_all = [], []
    for i in shards:
        vec_name, ids_name = shard_files(i)
        ids_data, vec_data = storage.read_checked(f"{folder}/{ids_name}"), storage.read_checked(f"{folder}/{vec_name}")
        if ids_data is None or vec_data is None:
            raise RuntimeError(f"{storage.path(folder)}: shard {i} is missing or damaged on storage; rerun to re-encode it")
        ids = ids_data.decode("utf-8").split("\n")
        vecs = np.load(io.BytesIO(vec_data))
        loaded.append((ids, vecs))
        ids_all.extend(ids)
    position = {doc_id: base + p for p, doc_id in enumerate(ids_all)}
    hits = exact_top_k(queries, loaded, k, chunk=chunk, device=resolve_devices(device)[0], progress=False)
    return [[(position[d], d, s) for d, s in row] for row in hits]


def merge_top_k(partials: list[list[list[tuple[int, str, float]]]], k: int) -> list[list[tuple[str, float]]]:
    """Per query, the best `k` of every group's hits by (score desc, corpus position asc)."""
    merged = []
    for rows in zip(*partials):
        hits = sorted((h for row in rows for h in row), key=lambda h: (-h[2], h[0]))[:k]
        merged.append([(d, s) for _, d, s in hits])
    return merged


def distributed_search(storage: Storage, folder: str, n_shards: int, shard_size: int, queries: np.ndarray,
                       spec, execution, depth: int) -> list[list[tuple[str, float]]]:
    """Top-`depth` per query row over all shards, by `execution.workers` tasks (retried if one dies)."""
    ray = lazy.ray
    task = ray.remote(search_group).options(num_cpus=execution.cpus_per_worker, num_gpus=execution.gpus_per_worker,
                                            max_retries=3)
    q_ref = ray.put(np.ascontiguousarray(queries, dtype=np.float32))
    refs = [task.remote(storage, folder, group, group[0] * shard_size, q_ref, depth, spec.search_chunk,
                        spec.device if execution.gpus_per_worker else "cpu")
            for group in shard_groups(n_shards, execution.workers)]
    return merge_top_k(ray.get(refs), depth)
