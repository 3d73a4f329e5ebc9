"""`bench run --backend ray` on a local 3-node Ray cluster: records equal to the local backend's,
faults survived (a worker node lost mid-run), an interrupted driver resumed from storage, and clear
errors before any work (Ray missing, a bad address, storage that cannot be written).

One cluster for the whole session (3 nodes of 1 CPU each, small object stores, Ray's token auth off);
the corpus is cut into small shards and the rerank into small blocks so that a few hundred documents
make several of each."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench import lazy
from bench.cli import main
from bench.config import load_experiment
from bench.errors import BenchError
from bench.pipeline import run_experiment
from bench.rerank import stage as rerank_stage
from bench.retrieve import stage as retrieve_stage

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")

REPO = Path(__file__).resolve().parents[1]
SHARD, BLOCK = 20, 10  # 400 docs: 20 shards; 30 queries x top-10: 30 blocks (an interrupted run leaves many)
SHARDS, BLOCKS = 20, 30


def parts(cache: Path, **execution) -> dict:
    """The offline demo's shape (MiniLM dense first stage, untrained tiny XLM-R reranker) on one small
    synthetic language, with its own cache."""
    return {"name": "ray-small", "cache_dir": str(cache),
            "first_stages": {"minilm": {"kind": "dense", "model": "offline:all-MiniLM-L6-v2", "depth": 20,
                                        "dtype": "fp32", "max_length": 128}},
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


@pytest.fixture(scope="session")
def ray_cluster():
    """A 3-node local cluster (1 CPU and a 80 MiB object store each), this process its driver."""
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


@pytest.fixture(scope="session")
def local_run(tmp_path_factory):
    """The local backend's records and output folder for the small experiment (the reference)."""
    folder = tmp_path_factory.mktemp("local")
    with pytest.MonkeyPatch.context() as mp, torch_threads(1):
        mp.setattr(retrieve_stage, "SHARD_SIZE", SHARD)
        mp.setattr(rerank_stage, "BLOCK_PAIRS", BLOCK)
        records = run_bench(folder, parts(folder / "cache"))
    return records, folder / "out"


@contextlib.contextmanager
def torch_threads(n: int):
    """Torch on `n` intra-op threads meanwhile. Ray's workers here hold 1 CPU, so Ray runs their torch
    on one thread; the local reference must too: on the CPU a matmul's sums are split by thread, so
    the last bits of embeddings and scores depend on the thread count (on a GPU they do not)."""
    torch = lazy.torch
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_bench(folder: Path, exp_parts: dict, out: str = "out"):
    from conftest import experiment_text

    path = folder / f"{out}.toml"
    path.write_text(experiment_text(**exp_parts), encoding="utf-8")
    return run_experiment(load_experiment(path), folder / out, experiment_path=path, progress=False, log=lambda m: None)


def assert_same_records(records, out: Path, reference) -> None:
    """Metrics, per-query values, record keys and run files equal the local backend's, exactly."""
    ref_records, ref_out = reference
    assert [r.key for r in records] == [r.key for r in ref_records]
    for rec, ref in zip(records, ref_records):
        assert rec.metrics == ref.metrics
        assert rec.per_query == ref.per_query
        assert rec.run_file == ref.run_file
        assert (out / rec.run_file).read_bytes() == (ref_out / ref.run_file).read_bytes()
        assert rec.timings.backend == "ray" and ref.timings.backend == "local"


SHARD_FILES, BLOCK_FILES = "embeddings/*/shard-*.ids", "rerank/*/block-*.json"


def watch(root: Path, pattern: str, action, *, count: int = 1, timeout: float = 300):
    """Run `action()` on a thread once `count` files under `root` match `pattern` (the run's progress
    on storage)."""
    done = threading.Event()

    def loop():
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end and not done.is_set():
            if len(list(root.glob(pattern))) >= count:
                action()
                done.set()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return done


def stop_after_half(monkeypatch, module) -> None:
    """Make the driver stop like an interrupted one: `module`'s actor pool runs the first half of
    the items it is given (they land on storage as in a real run), then a KeyboardInterrupt (the
    driver's Ctrl-C) is raised. Deterministic, where a signal's moment is not."""
    real = module.run_actor_pool

    def half_then_interrupt(items, *args, **kwargs):
        real(items[: len(items) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "run_actor_pool", half_then_interrupt)


@pytest.mark.slow
def test_ray_backend_records_equal_local_even_when_a_node_and_an_actor_die(ray_cluster, local_run, tmp_path):
    """The offline demo's shape run on the 3-node cluster with a worker node lost while shards are
    encoded and a reranker actor killed while blocks are scored: Ray restarts the actors and retries
    their shard or block, and the records equal the local backend's."""
    cluster, node = ray_cluster
    cache = tmp_path / "cache"
    lost_node = watch(cache, SHARD_FILES, lambda: cluster.remove_node(next(iter(cluster.worker_nodes)), allow_graceful=False))
    killed_actor = watch(cache, BLOCK_FILES, lambda: kill_processes("MapBatches(BlockScorer)"))
    try:
        records = run_bench(tmp_path, parts(cache, backend="ray", workers=2))
    finally:
        cluster.add_node(**node)  # back to three nodes for the next test
        cluster.wait_for_nodes()
    assert lost_node.is_set() and killed_actor.is_set()
    assert_same_records(records, tmp_path / "out", local_run)
    fs, rr = records
    ex = fs.info["execution"]
    assert (ex["backend"], ex["gpus"], ex["submitted_shards"], ex["shards"]) == ("ray", 0.0, SHARDS, SHARDS)
    assert ex["nodes"] >= 2 and set(ex["steps"]) >= {"encode_seconds", "search_seconds", "query_encode_seconds"}
    assert rr.info["execution"]["submitted_blocks"] == rr.info["execution"]["blocks"] == BLOCKS
    assert rr.system.reranker["model"]["untrained"] is True and "note" not in rr.system.reranker
    # the shards and blocks on storage are the local store's files: a local run over this cache reuses them
    again = run_bench(tmp_path, parts(cache), out="again")
    assert again[1].timings.resumed_blocks == BLOCKS and again[1].metrics == rr.metrics


def kill_processes(title: str) -> list[int]:
    """SIGKILL the processes whose command line (Ray's process title) holds `title`: those are actors
    this test's run started."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and title in (proc / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
                pids.append(int(proc.name))
        except OSError:
            continue
    assert pids, f"no process titled {title!r}"
    return pids


@pytest.mark.slow
def test_interrupted_driver_resumes_with_only_the_missing_work(ray_cluster, local_run, tmp_path, monkeypatch):
    """The driver stopped after half of the shards were encoded, then after half of the blocks were
    scored: each restart submits only what storage does not hold, and the final records equal the
    local ones."""
    from bench.distributed import encode as encode_mod
    from bench.distributed import rerank as rerank_mod

    cache = tmp_path / "cache"
    exp = parts(cache, backend="ray", workers=1)

    with monkeypatch.context() as m:
        stop_after_half(m, encode_mod)
        with pytest.raises(KeyboardInterrupt):
            run_bench(tmp_path, exp, out="first")
    held = len(list(cache.glob(SHARD_FILES)))
    assert held == SHARDS // 2 and not list(cache.glob("embeddings/*/complete.json"))

    with monkeypatch.context() as m:
        stop_after_half(m, rerank_mod)
        with pytest.raises(KeyboardInterrupt):
            run_bench(tmp_path, exp, out="second")
    (fs_file,) = (tmp_path / "second" / "records").glob("*.json")  # the first stage finished this time
    fs_exec = json.loads(fs_file.read_text())["info"]["execution"]
    assert fs_exec["submitted_shards"] == SHARDS - held
    held_blocks = len(list(cache.glob(BLOCK_FILES)))
    assert held_blocks == BLOCKS // 2

    records = run_bench(tmp_path, exp, out="third")
    assert records[0].timings.cached is True
    assert records[1].info["execution"]["submitted_blocks"] == BLOCKS - held_blocks
    assert records[1].timings.resumed_blocks == held_blocks
    assert_same_records(records, tmp_path / "third", local_run)


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


def test_unreachable_address_fails_fast(tmp_path, experiment_toml):
    """In a fresh process (this one is connected already): an address where nothing listens."""
    path = experiment_toml(**parts(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(path), "--ray-address", "127.0.0.1:9",
                           "--out", str(tmp_path / "out"), "--skip-preflight"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr
    assert "nothing answers at 127.0.0.1:9" in proc.stderr and "ray start --head" in proc.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(BenchError, match="expected auto, host:port"):
        from bench.distributed.backend import check_address

        check_address("head-without-port")


@pytest.mark.slow
@pytest.mark.shared_data
def test_miracl_yo_full_corpus_on_the_cluster_equals_local(ray_cluster, miracl_yo_experiment, tmp_path, monkeypatch):
    """The MIRACL-yo full-corpus experiment (49,043 passages) with a tiny random bi-encoder in place
    of MiniLM (MiniLM takes minutes per full encoding here): cluster records equal local ones."""
    tiny = {'model = "offline:all-MiniLM-L6-v2"': 'model = "random:tiny-bge-m3"',
            'dtype = "fp32"': 'dtype = "fp32"\nshard_size = 25000'}  # two shards, one per worker
    records = {}
    for backend in ("local", "ray"):
        folder = tmp_path / backend
        path = miracl_yo_experiment(folder, **tiny)
        path.write_text(f'cache_dir = "{(folder / "cache").as_posix()}"\n' + path.read_text(encoding="utf-8")
                        + f'\n[execution]\nbackend = "{backend}"\nworkers = 2\n', encoding="utf-8")
        with torch_threads(1):  # as Ray's one-CPU workers run
            (records[backend],) = run_experiment(load_experiment(path), folder / "out", experiment_path=path,
                                                 progress=False, log=lambda m: None)
    local, cluster = records["local"], records["ray"]
    assert cluster.info["execution"]["submitted_shards"] == 2 and cluster.dataset.n_docs == 49_043
    assert (cluster.key, cluster.metrics, cluster.per_query) == (local.key, local.metrics, local.per_query)
    assert (tmp_path / "ray" / "out" / cluster.run_file).read_bytes() == \
        (tmp_path / "local" / "out" / local.run_file).read_bytes()


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
    """Shards full of equal scores (duplicated vectors across shard groups): searching groups apart
    and merging gives exactly the local search's list, ties broken by corpus order."""
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


def test_storage_writes_whole_files_with_checks_and_refuses_damaged_ones(tmp_path):
    """Each file lands whole (temporary name, then a move) with a `.check` beside it in the local
    cache's layout; a file changed after writing reads as missing, so it is computed again."""
    from bench.distributed.storage import CHECK_SUFFIX, Storage

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
