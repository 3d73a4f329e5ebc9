"""Corpus encoding over several devices: one encoder process per device, whole shards each.

Large corpora (MIRACL English: 33M passages) are encoded in shards; with several GPUs visible, each
device runs its own encoder process and takes the next missing shard as soon as it is free, so all
devices stay busy and every finished shard is written (and resumable) at once. The same code runs
with several CPU worker processes, which is how the tests check that the embeddings are identical to
a single-process encoding.
"""

from __future__ import annotations

import traceback
from typing import Iterator

import numpy as np

from ..errors import BenchError


def _worker(conn, spec, device: str, cache_dir, threads: int | None) -> None:
    """Build the encoder on `device`, then answer ("docs"|"queries", key, texts) until ("stop",)."""
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        from ..encode import build_encoder

        encoder = build_encoder(spec, cache_dir=cache_dir, device=device)
        conn.send(("ready", encoder.describe()))
    except BaseException as exc:
        conn.send(("error", isinstance(exc, BenchError), f"{exc}\n{traceback.format_exc()}"))
        return
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        try:
            what, key, texts = msg
            vecs = encoder.encode_docs(texts) if what == "docs" else encoder.encode_queries(texts)
            conn.send(("ok", key, vecs))
        except BaseException as exc:
            conn.send(("error", isinstance(exc, BenchError), f"{exc}\n{traceback.format_exc()}"))


class ShardEncoderPool:
    """`imap(shards)` encodes (key, texts) items on whichever device is free; results come back as
    (key, vectors) in completion order."""

    def __init__(self, spec, devices: list[str], *, cache_dir=None):
        import os

        import torch.multiprocessing as mp

        self.devices = list(devices)
        cpu_workers = sum(d == "cpu" for d in self.devices)
        threads = max(1, (os.cpu_count() or 1) // cpu_workers) if cpu_workers else None
        ctx = mp.get_context("spawn")
        self._workers = []
        for dev in self.devices:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, spec, dev, cache_dir, threads if dev == "cpu" else None),
                               daemon=True)
            proc.start()
            child.close()
            self._workers.append((proc, parent, dev))
        self._describes = [self._answer(conn, dev) for _, conn, dev in self._workers]

    def _answer(self, conn, device):
        try:
            msg = conn.recv()
        except EOFError:
            self.close()
            raise BenchError(f"encoder worker on {device} exited without answering (out of host memory?)") from None
        if msg[0] == "error":
            self.close()
            if msg[1]:
                raise BenchError(f"encoder worker on {device}: {msg[2].splitlines()[0]}")
            raise RuntimeError(f"encoder worker on {device} failed:\n{msg[2]}")
        return msg[1] if msg[0] == "ready" else msg[1:]

    def imap(self, items: Iterator[tuple[object, list[str]]], what: str = "docs") -> Iterator[tuple[object, np.ndarray]]:
        from multiprocessing.connection import wait

        items = iter(items)
        busy: dict = {}
        for _, conn, dev in self._workers:
            nxt = next(items, None)
            if nxt is None:
                break
            conn.send((what, nxt[0], nxt[1]))
            busy[conn] = dev
        while busy:
            for conn in wait(list(busy)):
                key, vecs = self._answer(conn, busy[conn])
                nxt = next(items, None)
                if nxt is None:
                    del busy[conn]
                else:
                    conn.send((what, nxt[0], nxt[1]))
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
        for proc, conn, _ in getattr(self, "_workers", []):
            try:
                conn.send(("stop",))
            except (OSError, BrokenPipeError):
                pass
        for proc, conn, _ in getattr(self, "_workers", []):
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
            conn.close()
        self._workers = []

    def __del__(self):
        self.close()
