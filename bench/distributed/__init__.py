"""Execution backends: where the expensive steps of `bench run` run.

``local`` (the default) is this process and its devices. ``ray`` runs corpus encoding, exact search,
bge-m3's rescoring and reranking on a Ray cluster (the ``ray`` extra: ``pip install
'rerank-bench[ray]'``) while the driver keeps the light work (queries and qrels, planning shards and
blocks, merging, evaluating, writing records): the workers read the passages they need from the
collection's source themselves, so the driver's memory does not grow with the corpus. Both backends
read and write the same shards and blocks under the same cache keys, so their records are equal.
"""

from __future__ import annotations

from pathlib import Path

from ..config import ExecutionSpec
from .backend import RayBackend


def open_backend(execution: ExecutionSpec, cache_root: str | Path, *, log=print):
    """None for the local backend; else the connected cluster backend, its storage checked from every
    node (a bad address or unreachable storage fails here, before any work)."""
    if execution.backend == "local":
        return None
    return RayBackend.connect(execution, Path(cache_root), log=log)
