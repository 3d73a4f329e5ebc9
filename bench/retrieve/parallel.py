"""Corpus encoding over several devices: one encoder process per device, whole shards each.

Large corpora (MIRACL English: 33M passages) are encoded in shards; with several GPUs visible, each
device runs its own encoder process and takes the next missing shard as soon as it is free, so all
devices stay busy and every finished shard is written (and resumable) at once. `ShardEncoderPool`
offers the single `Encoder`'s interface, as `bench.rerank.parallel.DataParallelReranker` does for
rerankers, so the first stage does not care how many devices there are. The same code runs with
several CPU worker processes, which is how the tests check that the embeddings are identical to a
single-process encoding.
"""

from __future__ import annotations

from multiprocessing.connection import wait
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..engine.workers import PooledEngine, prepare_device, serve
from .encoder import build_single


def _worker(conn, device: str, cpu_threads: int | None, spec, cache_dir, options: dict) -> None:
    """Worker: build the encoder on `device`, then answer ("docs"|"queries", key, texts) with (key, vectors)."""

    def build():
        prepare_device(device, cpu_threads)
        return build_single(spec, device, cache_dir=cache_dir, options=options)

    def handle(encoder, msg):
        what, key, texts = msg
        return key, (encoder.encode_docs(texts) if what == "docs" else encoder.encode_queries(texts))

    serve(conn, build, handle)


class ShardEncoderPool(PooledEngine):
    """The `Encoder` interface over several devices: `encode_shards` hands each (key, texts) item to
    whichever device is free; a single call (`encode_docs`, `encode_queries`) runs on one of them."""

    sharding = "whole corpus shards, each to the next free device"

    def __init__(self, spec, devices: Sequence[str], *, cache_dir=None, options: dict | None = None):
        self.spec = spec
        super().__init__(_worker, devices, (spec, cache_dir, dict(options or {})), role="encoder")

    def encode_shards(self, items: Iterable[tuple[object, list[str]]], what: str = "docs"
                      ) -> Iterator[tuple[object, np.ndarray]]:
        """(key, vectors) per (key, texts) item, in completion order."""
        items = iter(items)
        pool = self._pool
        index = {id(conn): i for i, conn in enumerate(pool.connections)}
        busy = []
        for i, conn in enumerate(pool.connections):
            nxt = next(items, None)
            if nxt is None:
                break
            pool.send(i, (what, nxt[0], nxt[1]))
            busy.append(conn)
        while busy:
            for conn in wait(busy):
                i = index[id(conn)]
                key, vecs = pool.receive(i)
                nxt = next(items, None)
                if nxt is None:
                    busy.remove(conn)
                else:
                    pool.send(i, (what, nxt[0], nxt[1]))
                yield key, vecs

    def encode_docs(self, texts: Sequence[str]) -> np.ndarray:
        ((_, vecs),) = list(self.encode_shards([(0, list(texts))]))
        return vecs

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        ((_, vecs),) = list(self.encode_shards([(0, list(texts))], what="queries"))
        return vecs

    def describe(self) -> dict:
        return self._describe()
