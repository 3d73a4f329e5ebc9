"""`bench run --backend ray` on a real multi-process Ray cluster: a head and two worker nodes, each
started by `ray start` (`--head --port` / `--address`, 1 CPU, an 80 MiB object store) as its own
process group, torn down at the end of the module. The three nodes share this machine, so each gets
its own temporary folder and ports (as three machines would have).

What each test proves:

* the MIRACL-yo full corpus (49,043 passages) through a tiny random bi-encoder and tiny random bge-m3
  in `all` mode (dense and sparse search, multi-vector rescoring), in one experiment: the records of a
  cluster run equal the local backend's exactly;
* a worker node stopped while shards are encoded (what `ray stop` does to it: its processes get
  SIGTERM): the run finishes on the other nodes, with the local records;
* a real SIGINT to a `bench run` driver while it iterates Ray Data's stream: the run stops within
  seconds with the local backend's "what was kept" message.

`ray stop` itself is not run: on this machine it would stop every Ray node, other users' included.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_helpers import (ENV, SHARD_FILES, Cluster, assert_same_records, processes_titled, run_bench,
                         torch_threads, watch, with_models)

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """Three nodes, this process their driver; torn down node by node (workers first) at the end."""
    if ray.is_initialized():
        ray.shutdown()
    with Cluster.started(("worker-1", "worker-2")) as c:
        ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
        try:
            c.wait_for(3)
            yield c
        finally:
            ray.shutdown()


def ensure_nodes(c: Cluster) -> None:
    """Both worker nodes up (a test that stopped one leaves it to the next to start it again)."""
    for name in ("worker-1", "worker-2"):
        if name not in c.nodes:
            c.start(name)
    c.wait_for(3)


def synthetic(cache: Path, docs: int, shard: int, **execution) -> dict:
    """A tiny random bi-encoder over one indexed synthetic language, cut into `shard`-passage shards."""
    return {"name": "ray-real", "cache_dir": str(with_models(cache, "random:tiny-bge-m3")),
            "first_stages": {"tiny": {"kind": "dense", "model": "random:tiny-bge-m3", "depth": 20, "dtype": "fp32",
                                      "max_length": 32, "shard_size": shard}},
            "datasets": [{"source": "synthetic", "synthetic": {"languages": ["yo"], "docs_per_language": docs,
                                                                "queries_per_language": 30, "generator": "indexed"}}],
            "evaluation": {"metrics": ["nDCG@10", "Recall@20"]},
            **({"execution": execution} if execution else {})}


@pytest.mark.shared_data
def test_miracl_yo_full_corpus_on_a_real_cluster_equals_local(cluster, shared_data, tmp_path):
    """Both first stages, one run per backend (2 workers, 2 shards of 25,000): records equal."""
    ensure_nodes(cluster)
    stage = {"model": "random:tiny-bge-m3", "depth": 20, "dtype": "fp32", "max_length": 32, "shard_size": 25_000}
    records, outs = {}, {}
    for backend in ("local", "ray"):
        folder = tmp_path / backend
        folder.mkdir()
        parts = {"name": "ray-miracl-yo", "cache_dir": str(with_models(folder / "cache", "random:tiny-bge-m3")),
                 "first_stages": {"tiny": {"kind": "dense", **stage},
                                  "m3": {"kind": "bge-m3", "mode": "all", "rescore_depth": 20, **stage}},
                 "datasets": [{"source": "beir", "path": str(shared_data / "miracl-yo-dev"), "split": "dev",
                               "name": "miracl-yo-dev", "language": "yo", "first_stage": ["tiny", "m3"]}],
                 "evaluation": {"metrics": ["nDCG@10", "Recall@20"]},
                 "execution": {"backend": backend, "workers": 2}}
        with torch_threads(1):  # as Ray's one-CPU workers run
            records[backend] = run_bench(folder, parts)
        outs[backend] = folder / "out"
    assert_same_records(records["ray"], outs["ray"], (records["local"], outs["local"]))
    dense, m3 = records["ray"]
    assert dense.dataset.n_docs == 49_043 and [r.system.first_stage["kind"] for r in records["ray"]] == ["dense", "bge-m3"]
    for rec in (dense, m3):
        ex = rec.info["execution"]
        assert (ex["nodes"], ex["encoded_shards"], ex["verified_shards"]) == (3, 2, 0)
        assert ex["driver_peak_rss_mib"] > 0  # this test process's lifetime peak; the bound per corpus size
        # is measured in fresh driver processes (experiments/ray/streaming.py, results/ray-streaming-cpu)
    assert m3.info["rescored_passages"] > 0 and m3.info["mode"] == "all"


def test_a_worker_node_stopped_while_shards_are_encoded(cluster, tmp_path):
    """The node running one of the two encoder actors is stopped once shards land on storage: Ray Data
    restarts the actor on the free node and retries its shard; the records equal the local ones."""
    ensure_nodes(cluster)
    with torch_threads(1):
        local = run_bench(tmp_path / "local", synthetic(tmp_path / "local" / "cache", 4000, 100))
    cache = tmp_path / "ray" / "cache"
    stopped = []

    def stop_a_node_with_an_actor():
        hosts = [cluster.node_of(pid) for pid in processes_titled("MapBatches(ShardWriter)")]
        name = next(n for n in hosts if n not in (None, "head"))
        stopped.append(name)
        cluster.stop(name)

    done = watch(cache, SHARD_FILES, stop_a_node_with_an_actor, count=2)
    records = run_bench(tmp_path / "ray", synthetic(cache, 4000, 100, backend="ray", workers=2))
    assert done.is_set() and stopped and cluster.alive() == 2
    assert_same_records(records, tmp_path / "ray" / "out", (local, tmp_path / "local" / "out"))
    ex = records[0].info["execution"]
    # every shard encoded in this run; the stopped node's actor may have stored one just before it died,
    # which its retry reads back instead of encoding it again
    assert ex["shards"] == 40 and ex["encoded_shards"] + ex["verified_shards"] == 40 and ex["encoded_shards"] >= 39
    assert ex["nodes"] == 2


def test_sigint_during_the_streaming_stops_the_driver_within_seconds(cluster, tmp_path):
    """SIGINT (Ctrl-C) to a `bench run` process once its first shards are on storage: it exits 130 within
    seconds, saying how many shards are kept, as the local backend says it; a rerun encodes the rest."""
    ensure_nodes(cluster)
    cache = tmp_path / "cache"
    path = tmp_path / "exp.toml"
    from conftest import experiment_text

    path.write_text(experiment_text(**synthetic(cache, 6000, 100, workers=2)), encoding="utf-8")
    cmd = [sys.executable, "-m", "bench", "run", str(path), "--ray-address", cluster.address, "--out",
           str(tmp_path / "out"), "--skip-preflight", "--no-progress"]
    # Ctrl-C's default action in the driver, as in a terminal: a test session started in the background
    # of a non-interactive shell (CI scripts, `cmd &`) inherits SIGINT ignored, and so would the driver
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t_end = time.monotonic() + 300
    while not list(cache.glob(SHARD_FILES)):
        assert proc.poll() is None and time.monotonic() < t_end, "no shard was written"
        time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    stopped_after = time.monotonic() - sent
    assert proc.returncode == 130, err[-3000:]
    assert stopped_after < 15, f"stopped {stopped_after:.1f} s after SIGINT"
    line = next(ln for ln in err.splitlines() if ln.startswith("interrupted:"))
    kept = int(line.split("corpus encoding stopped: ")[1].split(" of 60 shards")[0])
    assert 1 <= kept < 60 and "will be reused; rerun the same command to encode the rest" in line
    (record,) = run_bench(tmp_path, synthetic(cache, 6000, 100, backend="ray", workers=2), out="again")
    ex = record.info["execution"]
    assert ex["encoded_shards"] <= 60 - kept and ex["verified_shards"] >= kept  # only the rest is encoded
    assert json.loads((next(cache.glob("embeddings/*/complete.json"))).read_text())["n_docs"] == 6000
