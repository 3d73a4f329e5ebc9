"""The Ray backend: a connection to a cluster, its shared storage, and the first stages on it.

`RayBackend.connect` fails before any work on a missing Ray install, an address where no Ray cluster
answers (nothing listening, or another service: an HTTP server, the dashboard's port), or a storage
some node cannot read. `dense`, `bge_m3` and `splade` (each `(stage, collection)`) are what
`FirstStage` calls in place of its local encoding and search; `rerank_stage(...)` stands in for
`RerankStage`. BM25, run files, scoreddocs and fusion stay in the driver's process (they encode
nothing; a fusion reads its members' runs, made on the cluster where they encode).
Every step's record states the driver's peak memory (`driver_peak_rss_mib`), which does not grow
with the corpus: passages are read on the workers (`Collection.reader`).
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import sys
import time
from pathlib import Path

from .. import lazy
from ..engine.device import AUTO_CUDA, resolve_precision
from ..errors import BenchError
from ..retrieve import bge_m3, splade
from ..retrieve import stage as retrieve_stage
from . import m3
from .encode import DenseCorpus, M3Corpus, SpladeCorpus, encode_corpus, stored_shard_size
from .rerank import RayRerankStage
from .search import distributed_search, sparse_search
from .storage import Storage

INSTALL_HINT = "pip install 'rerank-bench[ray]' (Ray 2.5x-2.6x with Ray Data)"


def require_ray():
    """Ray, or a BenchError saying how to install it."""
    try:
        lazy.ray_data  # noqa: B018  (Ray Data too: the actor pools use it)
        return lazy.ray
    except ImportError as exc:
        raise BenchError(f"--backend ray needs Ray, which is not installed ({exc}): {INSTALL_HINT}") from None


#: seconds Ray's cluster-id request may take per try in `gcs_answers` (Ray's client tries three times)
GCS_PROBE_SECONDS = 3


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """A BenchError unless `address` is auto/None, a ray:// address that accepts a TCP connection, or a
    host:port where a Ray cluster's GCS answers: Ray itself keeps retrying for minutes where nothing
    or something else (an HTTP server, the dashboard's port) answers. Decided within about 15 s."""
    if address in (None, "auto", "local"):
        return
    if address.startswith(("http://", "https://")):
        raise BenchError(f"Ray address {address!r} is an HTTP URL (the dashboard and the Jobs API answer there, port 8265 "
                         "by default); bench run joins the cluster as a driver: pass the head's address as "
                         "host:6379 (what `ray start --head` prints) or ray://host:10001 (Ray Client)")
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise BenchError(f"Ray address {address!r}: expected auto, host:port (the head's GCS, 6379 by default) or "
                         "ray://host:port (Ray Client, 10001 by default)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise BenchError(f"Ray address {address!r}: nothing answers at {host}:{port} ({exc}); start the cluster with "
                         "`ray start --head` on that machine, or pass its address") from None
    if not address.startswith("ray://") and not gcs_answers(f"{host}:{port}", GCS_PROBE_SECONDS):
        raise BenchError(f"Ray address {address!r}: {host}:{port} accepts connections but no Ray cluster answers there "
                         f"(no reply to Ray's cluster-id request within {3 * GCS_PROBE_SECONDS} s: an HTTP server, the "
                         "dashboard's port 8265, or another service?); pass the address `ray start --head` printed "
                         "(host:6379 by default), or ray://host:10001 for Ray Client")


def gcs_answers(host_port: str, seconds: float) -> bool:
    """Whether a Ray cluster's GCS answers at `host_port`: the cluster-id request `ray.init` sends first,
    through Ray's own client (three tries of `seconds` each). Its retries are logged on stderr by Ray's
    C++ core: silenced meanwhile (the caller says what failed, once)."""
    client = lazy.ray._raylet.InnerGcsClient
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    sys.stderr.flush()
    os.dup2(devnull, 2)
    try:
        client.standalone(host_port, None, int(seconds * 1000))
        return True
    except Exception:  # RpcError: timed out waiting for a GCS
        return False
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (`resource.getrusage`: KiB on Linux, bytes
    on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


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


def encode_splade_queries(spec, cache_dir: str, texts: list[str], where: str):
    """A cluster task: the SPLADE encoder's description and its document model's (what the corpus
    entry is keyed by) as they run there, and the queries' weights."""
    enc = splade.SpladeEncoder(spec, cache_dir=cache_dir, where=where)
    try:
        return enc.describe(), enc.docs.describe(), enc.encode_queries(texts)
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
                "gpus_per_worker": self.execution.gpus_per_worker, "driver_peak_rss_mib": peak_rss_mib(), **extra}

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
        spec, ex = self.worker_spec(stage.spec), self.execution
        qids = sorted(collection.queries)
        t0 = time.perf_counter()
        task = lazy.ray.remote(encode_queries).options(num_cpus=ex.cpus_per_worker, num_gpus=ex.gpus_per_worker,
                                                       max_retries=3)
        described, q = lazy.ray.get(task.remote(spec, self.cache_dir, [collection.queries[qid] for qid in qids]))
        t_queries = time.perf_counter() - t0
        entry_folder, storage_dtype = retrieve_stage.embedding_entry(stage.cache_root, stage.spec, collection, described)
        corpus = self.corpus(stage, collection, DenseCorpus(spec, storage_dtype), entry_folder)
        t0 = time.perf_counter()
        hits = distributed_search(self.storage, corpus.folder, corpus.n_shards, corpus.shard_size, q, spec, ex,
                                  stage.fetch_depth)
        t_search = time.perf_counter() - t0
        info = {"method": "dense exact inner product over L2-normalised embeddings", "encoder": described,
                **corpus.info(t_search + t_queries),
                "execution": self.describe(steps={"query_encode_seconds": t_queries, **corpus.steps,
                                                  "search_seconds": t_search}, **corpus.shards)}
        return dict(zip(qids, hits)), info

    def bge_m3(self, stage, collection):
        """bge-m3 retrieval for `stage` in its mode (dense, sparse, dense+sparse, multivec, all): (ranked per
        query id, info), as its local `_bge_m3`; the searches and the rescoring run on the cluster."""
        spec, ex, k = self.worker_spec(stage.spec), self.execution, stage.fetch_depth
        qids = sorted(collection.queries)
        t0 = time.perf_counter()
        task = lazy.ray.remote(m3.encode_queries).options(num_cpus=ex.cpus_per_worker, num_gpus=ex.gpus_per_worker,
                                                          max_retries=3)
        described, dtype, q = lazy.ray.get(task.remote(spec, self.cache_dir, [collection.queries[qid] for qid in qids],
                                                       spec.mode in ("multivec", "all")))
        t_queries = time.perf_counter() - t0
        entry_folder, storage_dtype = bge_m3.corpus_entry(stage.cache_root, stage.spec, collection, dtype)
        corpus = self.corpus(stage, collection, M3Corpus(spec, storage_dtype), entry_folder)
        where = (self.storage, corpus.folder, corpus.n_shards, corpus.shard_size)
        t0 = time.perf_counter()
        hits, mode_info = bge_m3.rank(
            stage.spec, k, lambda depth: distributed_search(*where, q.dense, spec, ex, depth),
            lambda depth: sparse_search(*where, q.sparse, ex, depth)[0],
            lambda candidates, mode, w: m3.rescore(corpus.reader, spec, self.cache_dir, q, candidates, mode, w, k, ex))
        t_search = time.perf_counter() - t0
        info = {"method": f"bge-m3 {spec.mode}", "mode": spec.mode, "encoder": described, **corpus.info(t_search + t_queries),
                **mode_info, "execution": self.describe(steps={"query_encode_seconds": t_queries, **corpus.steps,
                                                                "search_seconds": t_search}, **corpus.shards)}
        return dict(zip(qids, hits)), info

    def splade(self, stage, collection):
        """SPLADE retrieval for `stage`: (ranked per query id, info), as its local `_splade`; the query
        and corpus encoding and the search (integer impacts with ``quantize``) run on the cluster."""
        spec, ex = self.worker_spec(stage.spec), self.execution
        qids = sorted(collection.queries)
        t0 = time.perf_counter()
        task = lazy.ray.remote(encode_splade_queries).options(num_cpus=ex.cpus_per_worker,
                                                              num_gpus=ex.gpus_per_worker, max_retries=3)
        described, docs_described, q = lazy.ray.get(task.remote(spec, self.cache_dir, [collection.queries[qid] for qid in qids],
                                                                f"first_stages.{stage.name}"))
        t_queries = time.perf_counter() - t0
        entry_folder = splade.weights_entry(stage.cache_root, stage.spec, collection, docs_described)
        corpus = self.corpus(stage, collection, SpladeCorpus(spec), entry_folder)
        t0 = time.perf_counter()
        q, quantized = splade.searched_queries(spec, q)
        hits, counted = sparse_search(self.storage, corpus.folder, corpus.n_shards, corpus.shard_size, q, ex,
                                      stage.fetch_depth, quantize=spec.quantize)
        t_search = time.perf_counter() - t0
        info = {**splade.search_info(q, quantized, counted), "encoder": described, **corpus.info(t_search + t_queries),
                "execution": self.describe(steps={"query_encode_seconds": t_queries, **corpus.steps,
                                                  "search_seconds": t_search}, **corpus.shards)}
        return dict(zip(qids, hits)), info

    def corpus(self, stage, collection, encoder, entry_folder: Path) -> "EncodedCorpus":
        """The collection's shards under `entry_folder`, every one verified on storage and the missing or
        damaged ones encoded on the cluster (`encode_corpus`)."""
        folder = self.relative(entry_folder)
        n_docs = collection.n_docs()
        shard_size = retrieve_stage.shard_size(stage.spec, n_docs, stored_shard_size(self.storage, folder))
        reader = collection.reader()
        t0 = time.perf_counter()
        counts = encode_corpus(reader, encoder, storage=self.storage, folder=folder, n_docs=n_docs,
                               shard_size=shard_size, execution=self.execution, cache_dir=self.cache_dir, log=self.log)
        return EncodedCorpus(self.storage.path(folder), folder, reader, -(-n_docs // shard_size), shard_size,
                             encoder.storage_dtype, counts, time.perf_counter() - t0)

    def rerank_stage(self, spec, top_k: int, checkpoints: Path, collection) -> RayRerankStage:
        return RayRerankStage(spec, top_k, checkpoints, backend=self, reader=collection.reader())


class EncodedCorpus:
    """A corpus's shards on storage after `RayBackend.corpus`, and what records say about them."""

    def __init__(self, path: str, folder: str, reader, n_shards: int, shard_size: int, storage_dtype: str,
                 counts: dict, seconds: float):
        self.path, self.folder, self.reader = path, folder, reader
        self.n_shards, self.shard_size, self.storage_dtype, self.seconds = n_shards, shard_size, storage_dtype, seconds
        self.counts = dict(counts)
        self.per_shard = self.counts.pop("encode_seconds_per_shard")
        self.shards = {"encoded_shards": self.counts.pop("encoded_shards"),
                       "verified_shards": self.counts.pop("verified_shards"), "shards": n_shards}
        self.steps = {"encode_seconds": seconds, "encode_seconds_per_shard": self.per_shard}

    def info(self, search_seconds: float) -> dict:
        encoded = self.counts["encoded_docs"]
        return {"embeddings": {"folder": self.path, "storage_dtype": self.storage_dtype, "shard_size": self.shard_size,
                               **self.counts},
                "encode_seconds": self.seconds, "search_seconds": search_seconds,
                "docs_per_second": encoded / self.seconds if encoded else None}
