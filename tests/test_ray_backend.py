"""`bench run --backend ray` on a local 3-node Ray cluster (`ray.cluster_utils`, one process tree:
faster to start than `ray start` nodes, see test_ray_cluster.py for those): one run, interrupted
twice and hit by a lost node and a killed actor, ends with records equal to the local backend's, and
so does a SPLADE first stage; shards damaged or deleted on storage are verified and encoded again; clear errors before any work
(Ray missing, an address where no Ray cluster answers, storage that cannot be written or seen).

One cluster for the module (3 nodes of 1 CPU each, small object stores, Ray's token auth off); the
corpus is cut into small shards and the rerank into small blocks so that a few hundred documents make
several of each."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench import lazy
from bench.cli import main
from bench.errors import BenchError
from bench.rerank import stage as rerank_stage
from bench.retrieve import stage as retrieve_stage
from ray_helpers import (BLOCK_FILES, REPO, SHARD_FILES, assert_same_records, kill_processes, run_bench, torch_threads,
                         watch, with_models)

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")

SHARD, BLOCK = 20, 10  # 400 docs: 20 shards; 30 queries x top-10: 30 blocks (an interrupted run leaves many)
SHARDS, BLOCKS = 20, 30


def parts(cache: Path, depth: int = 20, **execution) -> dict:
    """The offline demo's shape (a dense first stage, an untrained tiny XLM-R reranker) with a tiny
    random bi-encoder, on one small synthetic language, with its own cache."""
    return {"name": "ray-small", "cache_dir": str(with_models(cache, "random:tiny-bge-m3", "random:tiny-xlmr-reranker")),
            "first_stages": {"tiny": {"kind": "dense", "model": "random:tiny-bge-m3", "depth": depth,
                                      "dtype": "fp32", "max_length": 64}},
            "datasets": [{"source": "synthetic", "synthetic": {"languages": ["yo"], "docs_per_language": 400,
                                                                "queries_per_language": 30, "seed": 0}}],
            "rerankers": [{"model": "random:tiny-xlmr-reranker", "name": "tiny", "engine": "fast", "dtype": "fp32",
                           "top_k": 10, "max_length": 128}],
            "evaluation": {"metrics": ["nDCG@10", "MRR@10", "Recall@20"]},
            **({"execution": execution} if execution else {})}


@pytest.fixture(autouse=True)
def small_units(monkeypatch):
    monkeypatch.setattr(retrieve_stage, "SHARD_SIZE", SHARD)
    monkeypatch.setattr(rerank_stage, "BLOCK_PAIRS", BLOCK)


@pytest.fixture(scope="module")
def ray_cluster():
    """A 3-node local cluster (1 CPU and a 80 MiB object store each), this process its driver; gone at
    the end of the module (test_ray_cluster.py connects this process to another)."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.setdefault("PYTHONPATH", str(REPO))  # the workers import bench as this process does
    node = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    for _ in range(2):
        cluster.add_node(**node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    yield cluster, node
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The local backend's records and output folder for the small experiment (the reference)."""
    folder = tmp_path_factory.mktemp("local")
    with pytest.MonkeyPatch.context() as mp, torch_threads(1):
        mp.setattr(retrieve_stage, "SHARD_SIZE", SHARD)
        mp.setattr(rerank_stage, "BLOCK_PAIRS", BLOCK)
        records = run_bench(folder, parts(folder / "cache"))
    return records, folder / "out"


def stop_after_half(monkeypatch, module) -> None:
    """Make the driver stop like an interrupted one: `module`'s actor pool runs the first half of
    the items it is given (they land on storage as in a real run), then a KeyboardInterrupt (the
    driver's Ctrl-C) is raised. Deterministic, where a signal's moment is not (test_ray_cluster.py
    sends a real one)."""
    real = module.run_actor_pool

    def half_then_interrupt(items, *args, **kwargs):
        real(items[: len(items) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "run_actor_pool", half_then_interrupt)


@pytest.mark.slow
def test_one_run_interrupted_twice_with_a_node_lost_and_an_actor_killed_equals_local(
        ray_cluster, local_run, tmp_path, monkeypatch, capfd):
    """One cluster run in three starts, every fault on the way, and the local backend's records at
    the end:

    1. the driver stops after half of the shards are encoded (nothing marked complete);
    2. restarted, it encodes only the rest, losing a worker node meanwhile (its actor is restarted and
       its shard retried), and stops after half of the blocks are scored;
    3. restarted, it scores only the rest, an actor killed meanwhile; records equal the local ones;
    4. a shard deleted and another damaged on storage after `complete.json` listed them: the next run
       that searches (another depth) verifies every shard, names those two on stderr and re-encodes
       them, to the same bytes;
    5. a local run over the same cache reuses every shard and block the cluster wrote."""
    from bench.distributed import encode as encode_mod
    from bench.distributed import rerank as rerank_mod

    cluster, node = ray_cluster
    cache = tmp_path / "cache"
    exp = parts(cache, backend="ray", workers=2)

    with monkeypatch.context() as m:  # 1
        stop_after_half(m, encode_mod)
        with pytest.raises(KeyboardInterrupt):
            run_bench(tmp_path, exp, out="first")
    held = len(list(cache.glob(SHARD_FILES)))
    assert held == SHARDS // 2 and not list(cache.glob("embeddings/*/complete.json"))

    lost_node = watch(cache, SHARD_FILES, lambda: cluster.remove_node(next(iter(cluster.worker_nodes)),
                                                                      allow_graceful=False), count=held + 1)
    try:
        with monkeypatch.context() as m:  # 2
            stop_after_half(m, rerank_mod)
            with pytest.raises(KeyboardInterrupt):
                run_bench(tmp_path, exp, out="second")
    finally:
        cluster.add_node(**node)  # back to three nodes
        cluster.wait_for_nodes()
    assert lost_node.is_set()
    (fs_file,) = (tmp_path / "second" / "records").glob("*.json")  # the first stage finished this time
    fs_exec = json.loads(fs_file.read_text())["info"]["execution"]
    # only the rest is encoded (the lost node's actor may have stored its shard before it died: read back)
    assert SHARDS - held - 1 <= fs_exec["encoded_shards"] <= SHARDS - held and fs_exec["shards"] == SHARDS
    assert fs_exec["verified_shards"] == SHARDS - fs_exec["encoded_shards"]
    held_blocks = len(list(cache.glob(BLOCK_FILES)))
    assert held_blocks == BLOCKS // 2

    killed_actor = watch(cache, BLOCK_FILES, lambda: kill_processes("MapBatches(BlockScorer)"), count=held_blocks + 1)
    records = run_bench(tmp_path, exp, out="third")  # 3
    assert killed_actor.is_set()
    assert records[0].timings.cached is True
    # only the rest is scored; an actor killed after it stored its block but before it answered leaves that
    # block on storage, and the retry reads it back (resumed): at most one such block per killed actor
    scored = records[1].info["execution"]["scored_blocks"]
    assert BLOCKS - held_blocks - 2 <= scored <= BLOCKS - held_blocks
    assert records[1].timings.resumed_blocks == BLOCKS - scored
    assert_same_records(records, tmp_path / "third", local_run)
    fs, rr = records
    assert (fs.info["execution"]["backend"], fs.info["execution"]["gpus"]) == ("ray", 0.0)
    assert set(fs.info["execution"]["steps"]) >= {"encode_seconds", "search_seconds", "query_encode_seconds"}
    assert rr.system.reranker["model"]["untrained"] is True and "note" not in rr.system.reranker

    (folder,) = {p.parent for p in cache.glob(SHARD_FILES)}  # 4
    intact = {p.name: p.read_bytes() for p in folder.glob("shard-0000[37].*") if not p.name.endswith(".check")}
    (folder / "shard-00003.npy").unlink()
    damaged = folder / "shard-00007.ids"
    damaged.write_bytes(damaged.read_bytes().replace(b"d", b"x", 1))
    capfd.readouterr()
    first_stage_only = {k: v for k, v in parts(cache, depth=19, backend="ray", workers=2).items() if k != "rerankers"}
    again = run_bench(tmp_path, first_stage_only, out="fourth")
    err = capfd.readouterr().err
    assert f"storage: {folder / 'shard-00003.npy'}: missing (shard 3, listed in complete.json); re-encoded" in err
    assert f"storage: {folder / 'shard-00007.ids'}: content differs from what was written (sha256 mismatch) " \
           "(shard 7, listed in complete.json); re-encoded" in err
    ex = again[0].info["execution"]
    assert (ex["encoded_shards"], ex["verified_shards"]) == (2, SHARDS - 2)
    assert {name: (folder / name).read_bytes() for name in intact} == intact

    local_again = run_bench(tmp_path, parts(cache), out="local")  # 5
    assert local_again[0].timings.cached and local_again[1].timings.resumed_blocks == BLOCKS
    assert local_again[1].metrics == rr.metrics


@pytest.mark.slow
def test_a_splade_first_stage_on_the_cluster_equals_local(ray_cluster, tmp_path):
    """`kind = "splade"` under `--backend ray`: queries and corpus encoded on the workers (4 shards),
    the search there too, over integer impacts (`quantize`: each shard quantised where it is searched;
    without it the search is bge-m3's sparse one). Its record and run file equal the local backend's,
    and the shards land in the same cache entry as locally."""
    splade = {"kind": "splade", "model": "random:tiny-splade", "depth": 20, "dtype": "fp32", "max_length": 64,
              "shard_size": 100, "quantize": 100}
    exp = {k: v for k, v in parts(tmp_path / "local" / "cache").items() if k != "rerankers"}
    exp.update(name="ray-splade", first_stages={"splade": splade})
    with_models(tmp_path / "local" / "cache", "random:tiny-splade")
    with torch_threads(1):
        local = run_bench(tmp_path / "local", exp)
    cache = with_models(tmp_path / "ray" / "cache", "random:tiny-splade")
    records = run_bench(tmp_path / "ray", {**exp, "cache_dir": str(cache), "execution": {"backend": "ray", "workers": 2}})
    assert_same_records(records, tmp_path / "ray" / "out", (local, tmp_path / "local" / "out"))
    (rec,), (ref,) = records, local
    assert (rec.info["execution"]["backend"], rec.info["execution"]["encoded_shards"]) == ("ray", 4)
    assert rec.info["method"].endswith("over integer impacts") and rec.info["quantize"] == ref.info["quantize"]
    assert rec.info["terms_per_passage"] == ref.info["terms_per_passage"] > 0
    assert rec.info["embeddings"]["folder"].replace(str(tmp_path / "ray"), "") == \
        ref.info["embeddings"]["folder"].replace(str(tmp_path / "local"), "")  # the same cache entry


def test_unwritable_storage_fails_before_any_work(ray_cluster, tmp_path, experiment_toml, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = experiment_toml(**parts(tmp_path / "cache", backend="ray", storage=str(blocker / "storage")))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--skip-preflight", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is not writable" in err and str(blocker / "storage") in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "embeddings").exists()


def test_without_ray_the_backend_is_one_clear_error(monkeypatch, tmp_path, experiment_toml, capsys):
    for name in ("ray", "ray_data"):
        monkeypatch.delitem(vars(lazy), name, raising=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "ray.data", None)
    path = experiment_toml(**parts(tmp_path / "cache"))
    assert main(["run", str(path), "--backend", "ray", "--out", str(tmp_path / "out"), "--skip-preflight"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "pip install 'rerank-bench[ray]'" in err
    assert not (tmp_path / "out").exists()


class Silent(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # noqa: D102 - no request log on the test's stderr
        pass


def serve(handle) -> int:
    """A port on this machine where `handle(connection)` answers each TCP connection (on threads)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def loop():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return listener.getsockname()[1]


def test_addresses_where_no_ray_cluster_answers_fail_within_30_s(tmp_path, experiment_toml):
    """`bench run --ray-address` in fresh processes (this one is connected already), all at once: where
    nothing listens, where an HTTP server answers (as on the dashboard's port 8265, the usual mistake;
    the dashboard is not installed here: the `ray` extra has no `ray[default]`), its URL as the Jobs API
    takes it, and a port that accepts the connection and closes it. Each: exit 2 within 30 s, one error
    naming the address, nothing written."""
    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Silent)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    http_port = http_server.server_address[1]
    closing_port = serve(lambda conn: conn.close())
    path = experiment_toml(**parts(tmp_path / "cache"))
    cases = {f"127.0.0.1:{http_port}": "accepts connections but no Ray cluster answers there",
             f"http://127.0.0.1:{http_port}": "is an HTTP URL (the dashboard and the Jobs API answer there",
             f"127.0.0.1:{closing_port}": "accepts connections but no Ray cluster answers there",
             "127.0.0.1:9": "nothing answers at 127.0.0.1:9"}
    t0 = time.monotonic()
    procs = {address: subprocess.Popen([sys.executable, "-m", "bench", "run", str(path), "--ray-address", address,
                                        "--out", str(tmp_path / f"out{i}"), "--skip-preflight"],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       env={**os.environ, "PYTHONPATH": str(REPO)})
             for i, address in enumerate(cases)}
    for address, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        seconds = time.monotonic() - t0
        assert proc.returncode == 2 and seconds < 30, (address, seconds, err[-2000:])
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and repr(address) in errors[0] and cases[address] in errors[0], err[-2000:]
        assert "ray start --head" in errors[0] or "host:6379" in errors[0]
    assert not list(tmp_path.glob("out*")) and not (tmp_path / "cache" / "embeddings").exists()
    with pytest.raises(BenchError, match="expected auto, host:port"):
        from bench.distributed.backend import check_address

        check_address("head-without-port")


def test_storage_the_workers_cannot_see_fails_before_any_work(ray_cluster, tmp_path, experiment_toml, capsys):
    """fsspec's memory:// filesystem lives in one process: the driver can write it, no worker can
    read it, as with a local folder on a multi-machine cluster."""
    path = experiment_toml(**parts(tmp_path / "cache", backend="ray", storage="memory://rerank-bench-probe"))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--skip-preflight", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "3 of 3 node(s) cannot read what the driver wrote" in err and "every node shares" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "embeddings").exists()


def test_cache_keys_hold_the_precision_the_workers_run():
    """`auto` is fp16 on the actors' GPUs even when the driver has none; fp32 on CPU actors."""
    from bench.config import ExecutionSpec, RerankerSpec
    from bench.distributed.backend import RayBackend

    spec = RerankerSpec(model="random:tiny-xlmr-reranker")
    on = lambda **ex: RayBackend(ExecutionSpec(backend="ray", **ex), Path("."), storage=None)  # noqa: E731
    assert on(gpus_per_worker=1).precision(spec) == "fp16"
    assert on(gpus_per_worker=0).precision(spec) == "fp32"
    assert on(gpus_per_worker=1).precision(spec.model_copy(update={"device": "cpu"})) == "fp32"
    assert on(gpus_per_worker=1).precision(spec.model_copy(update={"dtype": "bf16"})) == "bf16"


def test_partial_top_k_merge_keeps_the_local_tie_rule(tmp_path):
    """Shards full of equal scores (duplicated vectors, or lexical weights, across shard groups):
    searching groups apart and merging gives exactly the local search's list, ties broken by corpus
    order."""
    import numpy as np

    from bench.distributed.search import merge_top_k, search_group, shard_groups
    from bench.distributed.storage import Storage
    from bench.retrieve.embeddings import shard_files, shard_payload
    from bench.retrieve.search import exact_top_k

    rng = np.random.default_rng(0)
    base = rng.standard_normal((6, 8)).astype(np.float32)
    vecs = base[rng.integers(0, 6, size=70)]  # 70 docs, 6 distinct vectors: ties everywhere
    ids = [f"d{i:03d}" for i in range(70)]
    queries = rng.standard_normal((5, 8)).astype(np.float32)
    storage, size = Storage(str(tmp_path)), 16
    shards = [(ids[s:s + size], vecs[s:s + size]) for s in range(0, 70, size)]
    for i, (shard_ids, shard_vecs) in enumerate(shards):
        vec_bytes, ids_text = shard_payload(shard_vecs, shard_ids, "float32")
        storage.write_checked(f"e/{shard_files(i)[0]}", vec_bytes)
        storage.write_checked(f"e/{shard_files(i)[1]}", ids_text.encode("utf-8"))
    groups = shard_groups(len(shards), 3)
    assert groups == [[0, 1], [2], [3, 4]]
    partials = [search_group(storage, "e", g, g[0] * size, queries, 25, 7, "cpu") for g in groups]
    assert merge_top_k(partials, 25) == exact_top_k(queries, shards, 25, chunk=7, progress=False)
    # lexical weights the same way: sparse shards with repeated rows, searched in groups and merged
    from scipy import sparse as sp

    from bench.distributed.search import sparse_search_group
    from bench.retrieve.sparse import npz_bytes, quantize, sparse_top_k

    rows = sp.random(6, 40, density=0.2, random_state=1, format="csr", dtype=np.float32)
    weights = rows[rng.integers(0, 6, size=70)]
    q = sp.random(5, 40, density=0.3, random_state=2, format="csr", dtype=np.float32)
    lexical = [(ids[s:s + size], weights[s:s + size]) for s in range(0, 70, size)]
    for i, (_, shard_weights) in enumerate(lexical):
        storage.write_checked(f"e/shard-{i:05d}.sparse.npz", npz_bytes(shard_weights))
    partials = [sparse_search_group(storage, "e", g, g[0] * size, q, 25, None) for g in groups]
    assert merge_top_k([p[0] for p in partials], 25) == sparse_top_k(q, lexical, 25, progress=False)
    assert (sum(p[1] for p in partials), sum(p[2] for p in partials)) == (70, weights.nnz)
    # SPLADE's integer impacts: each group's shards quantised where they are searched, as locally
    partials = [sparse_search_group(storage, "e", g, g[0] * size, quantize(q, 10), 25, 10) for g in groups]
    impacts = [(shard_ids, quantize(w, 10)) for shard_ids, w in lexical]
    assert merge_top_k([p[0] for p in partials], 25) == sparse_top_k(quantize(q, 10), impacts, 25, progress=False)


def test_storage_writes_whole_files_with_checks_and_refuses_damaged_ones(tmp_path, capsys):
    """Each file lands whole (temporary name, then a move) with a `.check` beside it in the local
    cache's layout; a file changed after writing reads as missing, so it is computed again: said on
    stderr by `read_checked` (the driver), returned as the problem by `read_verified` (a worker's)."""
    from bench.distributed.storage import CHECK_SUFFIX, MISSING, Storage

    storage = Storage(str(tmp_path / "store"))
    storage.write_checked_json("rerank/x/block-00000.json", {"qids": ["q1"]})
    assert json.loads(storage.read_checked("rerank/x/block-00000.json")) == {"qids": ["q1"]}
    assert sorted(p.name for p in (tmp_path / "store" / "rerank" / "x").iterdir()) == [
        "block-00000.json", "block-00000.json" + CHECK_SUFFIX]  # no temporary file left
    (tmp_path / "store" / "rerank" / "x" / "block-00000.json").write_text('{"qids": ["q2"]}')
    assert storage.read_checked("rerank/x/block-00000.json") is None
    assert storage.read_checked("rerank/x/block-00001.json") is None
    storage.write_text("rerank/x/block-00002.json", '{"qids": ["q3"]}')  # no check beside it: not trusted
    assert storage.read_checked("rerank/x/block-00002.json") is None
    assert "block-00000.json: content differs from what was written (sha256 mismatch); recomputing it" in \
        capsys.readouterr().err
    (tmp_path / "store" / "rerank" / "x" / "block-00000.json").write_text('{"qids": ["q10"]}')
    assert storage.read_verified("rerank/x/block-00000.json") == (None, "17 bytes, but 16 were written (truncated or "
                                                                        "overwritten)")
    assert storage.read_verified("rerank/x/block-00001.json") == (None, MISSING)
    assert storage.read_verified("rerank/x/block-00002.json")[1].startswith("no .check file beside it")
    storage.write_checked("rerank/x/block-00003.json", b"{}")
    assert storage.read_verified("rerank/x/block-00003.json") == (b"{}", None)
    assert capsys.readouterr().err == ""
