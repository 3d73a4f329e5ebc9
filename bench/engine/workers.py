"""One worker process per device, answering messages over a pipe: the data-parallel machinery that
reranking (`bench.rerank.parallel`) and corpus encoding (`bench.retrieve.parallel`) share, and the
base both of their engines build on (`PooledEngine`).

A worker builds its engine once (the model loads once per device), says ("ready", describe()), then
answers each message with ("ok", result) until ("stop",). Any failure travels back as ("error",
is_bench_error, text) and is raised in the parent: a `BenchError` as such, anything else with the
worker's traceback. Processes are spawned (CUDA cannot be forked) and closed with the pool.
"""

from __future__ import annotations

import os
import traceback
from typing import Any, Callable, Sequence

from .. import lazy
from ..errors import BenchError


def prepare_device(device: str, threads: int | None) -> None:
    """In a worker: its CPU thread share, or its CUDA device as the current one."""
    if threads:
        lazy.torch.set_num_threads(threads)
    if device.startswith("cuda"):
        lazy.torch.cuda.set_device(device)


def serve(conn, build: Callable[[], Any], handle: Callable[[Any, tuple], Any]) -> None:
    """The worker's loop: `build()` the engine, then `handle(engine, message)` for each message."""
    try:
        engine = build()
        conn.send(("ready", engine.describe()))
    except BaseException as exc:  # reported to the parent, which raises it
        conn.send(("error", isinstance(exc, BenchError), f"{exc}\n{traceback.format_exc()}"))
        return
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        try:
            conn.send(("ok", handle(engine, msg)))
        except BaseException as exc:
            conn.send(("error", isinstance(exc, BenchError), f"{exc}\n{traceback.format_exc()}"))


class DevicePool:
    """Worker processes, one per device: `target(conn, device, cpu_threads, *args)` each."""

    def __init__(self, target: Callable, devices: Sequence[str], args: tuple, *, role: str):
        self.devices = list(devices)
        self.role = role
        cpu_workers = sum(d == "cpu" for d in self.devices)
        threads = max(1, (os.cpu_count() or 1) // cpu_workers) if cpu_workers else None
        ctx = lazy.torch.multiprocessing.get_context("spawn")
        self._workers = []
        for dev in self.devices:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=target, args=(child, dev, threads if dev == "cpu" else None, *args), daemon=True)
            proc.start()
            child.close()
            self._workers.append((proc, parent))
        self.describes = [self.receive(i) for i in range(len(self.devices))]

    @property
    def connections(self) -> list:
        return [conn for _, conn in self._workers]

    def send(self, i: int, msg: tuple) -> None:
        self._workers[i][1].send(msg)

    def receive(self, i: int):
        device = self.devices[i]
        try:
            msg = self._workers[i][1].recv()
        except EOFError:
            self.close()
            raise BenchError(f"{self.role} worker on {device} exited without answering (out of host memory?)") from None
        if msg[0] == "error":
            self.close()
            if msg[1]:
                raise BenchError(f"{self.role} worker on {device}: {msg[2].splitlines()[0]}")
            raise RuntimeError(f"{self.role} worker on {device} failed:\n{msg[2]}")
        return msg[1]

    def ask(self, messages: Sequence[tuple]) -> list:
        """One message to each worker, all at once; their answers in device order."""
        for i, msg in enumerate(messages):
            self.send(i, msg)
        return [self.receive(i) for i in range(len(messages))]

    def close(self) -> None:
        for proc, conn in getattr(self, "_workers", []):
            try:
                conn.send(("stop",))
            except (OSError, BrokenPipeError):
                pass
        for proc, conn in getattr(self, "_workers", []):
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
            conn.close()
        self._workers = []

    def __del__(self):
        self.close()


class PooledEngine:
    """Base of an engine spread over a `DevicePool` (`bench.rerank.parallel.DataParallelReranker`,
    `bench.retrieve.parallel.ShardEncoderPool`): it describes itself as its first worker's engine
    with the devices and the sharding named, and closes its workers with itself."""

    #: how the work is split over the devices, as describe() records it
    sharding = ""

    def __init__(self, target: Callable, devices: Sequence[str], args: tuple, *, role: str):
        self.devices = list(devices)
        self._pool = DevicePool(target, self.devices, args, role=role)

    def _describe(self, **data_parallel) -> dict:
        out = dict(self._pool.describes[0])
        out["device"] = ",".join(self.devices)
        out["data_parallel"] = {"devices": self.devices, "processes": len(self.devices), "sharding": self.sharding,
                                **data_parallel}
        return out

    def close(self) -> None:
        if getattr(self, "_pool", None) is not None:
            self._pool.close()

    def __del__(self):
        self.close()
