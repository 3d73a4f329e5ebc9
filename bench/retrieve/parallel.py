"""Corpus encoding over several devices: one encoder process per device, whole shards each.

Large corpora (MIRACL English: 33M passages) are encoded in shards; with several GPUs visible, each
device runs its own encoder process and takes the next missing shard as soon as it is free, so all
devices stay busy and every finished shard is written (and resumable) at once. The same code runs
with several CPU worker processes, which is how the tests check that the embeddings are identical to
a single-process encoding.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np



def _worker(conn, device: str, cpu_threads: int | None, spec, cache_dir) -> None:
    """Worker: build the encoder on `device`, then answer ("docs"|"queries", key, texts) with (key, vectors)."""
    from ..engine.workers import prepare_device, serve

    def build():
        prepare_device(device, cpu_threads)
        from .encoder import build_encoder

        return build_encoder(spec, cache_dir=cache_dir, device=device)

    def handle(encoder, msg):
        what, key, texts = msg
        return key, (encoder.encode_docs(texts) if what == "docs" else encoder.encode_queries(texts))

    serve(conn, build, handle)


class ShardEncoderPool:
    """`imap(shards)` encodes (key, texts) items on whichever device is free; results come back as
    (key, vectors) in completion order."""

    def __init__(self, spec, devices: list[str], *, cache_dir=None):
        from ..engine.workers import DevicePool

        self.devices = list(devices)
        self._pool = DevicePool(_worker, self.devices, (spec, cache_dir), role="encoder")
        self._describes = self._pool.describes

    def imap(self, items: Iterator[tuple[object, list[str]]], what: str = "docs") -> Iterator[tuple[object, np.ndarray]]:
        from multiprocessing.connection import wait

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

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        ((_, vecs),) = list(self.imap(iter([(0, texts)]), what="queries"))
        return vecs

    def describe(self) -> dict:
        out = dict(self._describes[0])
        out["device"] = ",".join(self.devices)
        out["data_parallel"] = {"devices": self.devices, "processes": len(self.devices),
                                "sharding": "whole corpus shards, each to the next free device"}
        out.pop("devices_unused", None)
        return out

    def close(self) -> None:
        if getattr(self, "_pool", None) is not None:
            self._pool.close()

    def __del__(self):
        self.close()
