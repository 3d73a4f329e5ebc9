"""The Ray backend: a connection to a cluster, its shared storage, and the dense first stage on it.

`RayBackend.connect` fails before any work on a missing Ray install, an unreachable address, or a
storage some node cannot read. `dense(stage, collection)` is what `FirstStage` calls in place of
its local encoding and search; `rerank_stage(...)` stands in for `RerankStage`.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

from .. import lazy
from ..engine.device import AUTO_CUDA, resolve_precision
from ..errors import BenchError
from ..retrieve import stage as retrieve_stage
from .encode import encode_corpus, stored_shard_size
from .rerank import RayRerankStage
from .search import distributed_search
from .storage import Storage

INSTALL_HINT = "pip install 'rerank-bench[ray]' (Ray 2.5x-2.6x with Ray Data)"


def require_ray():
    """Ray, or a BenchError saying how to install it."""
    try:
        lazy.ray_data  # noqa: B018  (Ray Data too: the actor pools use it)
        return lazy.ray
    except ImportError as exc:
        raise BenchError(f"--backend ray needs Ray, which is not installed ({exc}): {INSTALL_HINT}") from None


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """A BenchError unless `address` is auto/None or a host:port (optionally ray://) that accepts a TCP
    connection: Ray itself keeps retrying an unreachable address for minutes."""
    if address in (None, "auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise BenchError(f"Ray address {address!r}: expected auto, host:port (the head's GCS, 6379 by default) or "
                         "ray://host:port (Ray Client, 10001 by default)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise BenchError(f"Ray address {address!r}: nothing answers at {host}:{port} ({exc}); start the cluster with "
                         "`ray start --head` on that machine, or pass its address") from None


def quiet_ray_data(progress: bool) -> None:
    """Ray Data's per-job banners and progress bars off (they would drown the harness's own log)."""
    ctx = lazy.ray_data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # also its note that the bars are off


def encode_queries(spec, cache_dir: str, texts: list[str]):
    """A cluster task: the bi-encoder's description as it runs there, and the query embeddings."""
    from ..retrieve import build_encoder

    enc = build_encoder(spec, cache_dir=cache_dir)
    try:
        return enc.describe(), enc.encode_queries(texts)
    finally:
        enc.close()


def read_probe(storage: Storage, rel: str) -> str | None:
    """A cluster task: the probe file as this node sees it."""
    try:
        return storage.read_text(rel)
    except Exception as exc:  # reported by the driver, naming the node
        return f"error: {type(exc).__name__}: {exc}"


class RayBackend:
    """A connected Ray cluster plus the storage its workers share."""

    def __init__(self, execution, cache_root: Path, storage: Storage, *, log=print):
        self.execution = execution
        self.cache_root = Path(cache_root)
        self.cache_dir = str(self.cache_root)
        self.storage = storage
        self.log = log

    @classmethod
    def connect(cls, execution, cache_root: Path, *, log=print) -> "RayBackend":
        ray = require_ray()
        if not ray.is_initialized():
            check_address(execution.address)
            try:
                ray.init(address=execution.address, logging_level="ERROR", log_to_driver=False)
            except Exception as exc:  # ConnectionError, a timeout, a malformed address ...
                raise BenchError(f"cannot connect to the Ray cluster at {execution.address or '(default)'!r}: "
                                 f"{type(exc).__name__}: {exc}. Start one with `ray start --head` and pass its "
                                 "address (--ray-address auto | host:6379 | ray://host:10001)") from None
        quiet_ray_data(progress=False)
        storage = Storage(execution.storage or str(cache_root))
        cls._check_storage(ray, storage)
        backend = cls(execution, cache_root, storage, log=log)
        info = backend.describe()
        log(f"ray backend: {info['nodes']} node(s), {info['gpus']:g} GPU(s), {info['cpus']:g} CPU(s); "
            f"storage {storage.uri}")
        return backend

    @staticmethod
    def _check_storage(ray, storage: Storage) -> None:
        """The driver writes a probe; a task on every alive node reads it back."""
        rel = storage.check_writable()
        try:
            strategy = lazy.ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy
            nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
            task = ray.remote(num_cpus=0, max_retries=1)(read_probe)
            refs = [task.options(scheduling_strategy=strategy(node, soft=False)).remote(storage, rel) for node in nodes]
            seen = {}
            for node, ref in zip(nodes, refs):
                try:
                    seen[node] = ray.get(ref, timeout=120)
                except lazy.ray.exceptions.TaskUnschedulableError:  # the node left since ray.nodes(): not ours to check
                    continue
        finally:
            storage.delete(rel)
        bad = [(node, got) for node, got in seen.items() if got != rel]
        if bad:
            node, got = bad[0]
            raise BenchError(f"storage {storage.uri!r}: {len(bad)} of {len(nodes)} node(s) cannot read what the driver "
                             f"wrote (node {node[:12]}: {got or 'file not found'}); set [execution] storage to a path "
                             "or URI every node shares (NFS, a mounted bucket, s3://...)")

    # -- what records state -------------------------------------------------------------------------
    def describe(self, **extra) -> dict:
        ray = lazy.ray
        resources = ray.cluster_resources()
        return {"backend": "ray", "address": self.execution.address, "storage": self.storage.uri,
                "nodes": sum(1 for n in ray.nodes() if n["Alive"]), "gpus": resources.get("GPU", 0.0),
                "cpus": resources.get("CPU", 0.0), "workers": self.execution.workers,
                "gpus_per_worker": self.execution.gpus_per_worker, **extra}

    def relative(self, folder: Path) -> str:
        """A cache entry's path under the storage root (the same relative path as in the cache)."""
        return Path(folder).relative_to(self.cache_root).as_posix()

    def precision(self, spec) -> str:
        """The precision the workers run `spec` in (what cache keys hold): decided by the GPUs the
        actors get, not by the driver's own devices (`auto` is fp16 on a GPU, fp32 on the CPU)."""
        if not self.execution.gpus_per_worker or spec.device == "cpu":
            device = "cpu"
        else:
            device = spec.device if spec.device.startswith("cuda") else "cuda"
        return resolve_precision(spec.dtype, device, AUTO_CUDA[spec.engine]).name

    def worker_spec(self, spec):
        """The spec as workers run it: on the CPU when actors hold no GPU."""
        return spec if self.execution.gpus_per_worker else spec.model_copy(update={"device": "cpu"})

    # -- stages ---------------------------------------------------------------------------------------
    def dense(self, stage, collection):
        """Dense retrieval for `stage` (a FirstStage): (ranked per query id, info), as its local `_dense`."""
        ray, ex = lazy.ray, self.execution
        spec = self.worker_spec(stage.spec)
        qids = sorted(collection.queries)
        t0 = time.perf_counter()
        task = ray.remote(encode_queries).options(num_cpus=ex.cpus_per_worker, num_gpus=ex.gpus_per_worker, max_retries=3)
        described, q = ray.get(task.remote(spec, self.cache_dir, [collection.queries[qid] for qid in qids]))
        t_queries = time.perf_counter() - t0
        entry_folder, storage_dtype = retrieve_stage.embedding_entry(stage.cache_root, stage.spec, collection, described)
        folder = self.relative(entry_folder)
        shard_size = retrieve_stage.shard_size(stage.spec, collection.n_docs(), stored_shard_size(self.storage, folder))
        t0 = time.perf_counter()
        counts = encode_corpus(collection, spec, storage=self.storage, folder=folder, storage_dtype=storage_dtype,
                               shard_size=shard_size, execution=ex, cache_dir=self.cache_dir, log=self.log)
        t_encode = time.perf_counter() - t0
        t0 = time.perf_counter()
        n_shards = -(-collection.n_docs() // shard_size)
        hits = distributed_search(self.storage, folder, n_shards, shard_size, q, spec, ex, stage.fetch_depth)
        t_search = time.perf_counter() - t0
        per_shard = counts.pop("encode_seconds_per_shard", None)
        submitted = counts.pop("submitted_shards")
        counts.pop("shards")
        info = {"method": "dense exact inner product over L2-normalised embeddings", "encoder": described,
                "embeddings": {"folder": self.storage.path(folder), "storage_dtype": storage_dtype, **counts},
                "encode_seconds": t_encode, "search_seconds": t_search + t_queries,
                "docs_per_second": counts["encoded_docs"] / t_encode if counts["encoded_docs"] else None,
                "execution": self.describe(steps={"query_encode_seconds": t_queries, "encode_seconds": t_encode,
                                                  "search_seconds": t_search, "encode_seconds_per_shard": per_shard},
                                           submitted_shards=submitted, shards=n_shards)}
        return dict(zip(qids, hits)), info

    def rerank_stage(self, spec, top_k: int, checkpoints: Path) -> RayRerankStage:
        return RayRerankStage(spec, top_k, checkpoints, backend=self)
