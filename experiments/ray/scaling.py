"""Corpus encoding on a local Ray cluster, 1 vs 2 workers, and the full-corpus ray == local check.

    PYTHONPATH=. python experiments/ray/scaling.py --out results/ray-scaling-cpu [--model random:tiny-bge-m3]

Builds a local cluster (`ray.cluster_utils.Cluster`, one node per worker, 1 CPU each), runs the
MIRACL-yo full-corpus experiment's dense first stage (49,043 passages, ../shared/data) with the
given bi-encoder once locally and once on the cluster per worker count (fresh caches each time),
and writes `scaling.json`: passages/s per run (whole encode step, actor start-up included, and the
actors' own encode time), and whether each cluster run's metrics, per-query values and run file
equal the local run's. Shards are cut at `--shard-size` passages (the harness's default of 100,000
would make the whole corpus one shard, leaving a second worker nothing to do).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["RAY_AUTH_MODE"] = "disabled"

from bench.config import load_experiment  # noqa: E402
from bench.pipeline import run_experiment  # noqa: E402
from bench.retrieve import stage as retrieve_stage  # noqa: E402

EXPERIMENT = REPO / "experiments" / "reproduce-miracl-yo-minilm.toml"


def experiment(folder: Path, model: str, cache: Path, execution: dict | None) -> Path:
    text = EXPERIMENT.read_text(encoding="utf-8")
    text = text.replace('model = "offline:all-MiniLM-L6-v2"', f'model = "{model}"')
    text = text.replace('path = "../../shared/data/miracl-yo-dev"', f'path = "{(REPO.parent / "shared" / "data" / "miracl-yo-dev").as_posix()}"')
    text = f'cache_dir = "{cache.as_posix()}"\n' + text
    if execution:
        text += "\n[execution]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in execution.items())
    path = folder / f"{cache.name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def run(folder: Path, name: str, model: str, execution: dict | None) -> dict:
    path = experiment(folder, model, folder / f"cache-{name}", execution)
    t0 = time.perf_counter()
    (rec,) = run_experiment(load_experiment(path), folder / f"out-{name}", experiment_path=path, progress=False,
                            log=lambda m: print(f"  [{name}] {m}", flush=True))
    wall = time.perf_counter() - t0
    steps = (rec.info.get("execution") or {}).get("steps") or {}
    per_shard = steps.get("encode_seconds_per_shard") or []
    n = rec.dataset.n_docs
    out = {"name": name, "wall_seconds": wall, "encode_seconds": rec.timings.encode_seconds,
           "passages_per_s": n / rec.timings.encode_seconds,
           "actor_encode_seconds_sum": sum(per_shard) or None,
           "passages_per_s_per_actor": n / sum(per_shard) if per_shard else None,
           "metrics": rec.metrics, "execution": rec.info.get("execution")}
    out["_record"], out["_run"] = rec, (folder / f"out-{name}" / rec.run_file).read_bytes()
    print(f"{name}: encode {out['encode_seconds']:.1f} s = {out['passages_per_s']:.0f} passages/s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="random:tiny-bge-m3")
    ap.add_argument("--shard-size", type=int, default=5000)
    args = ap.parse_args()
    import ray
    from ray.cluster_utils import Cluster

    retrieve_stage.SHARD_SIZE = args.shard_size
    folder = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 400 * 2**20})
    cluster.add_node(num_cpus=1, object_store_memory=400 * 2**20)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    runs = [run(folder, "local", args.model, None)]
    for workers in (1, 2):
        runs.append(run(folder, f"ray-{workers}-worker", args.model, {"backend": "ray", "workers": workers}))
    ref = runs[0]["_record"]
    for r in runs[1:]:
        rec = r.pop("_record")
        r["equal_to_local"] = {"metrics": rec.metrics == ref.metrics, "per_query": rec.per_query == ref.per_query,
                               "run_file": r.pop("_run") == runs[0]["_run"], "key": rec.key == ref.key}
    runs[0].pop("_record"), runs[0].pop("_run")
    ray.shutdown()
    cluster.shutdown()
    result = {"what": "MIRACL-yo dev full corpus (49,043 passages) encoded locally and on a local Ray cluster "
                      "(1 CPU per node, one actor per node) with 1 and 2 workers",
              "model": args.model, "shard_size": args.shard_size,
              "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                          "note": "2-core CPU box shared with other jobs, no GPU"},
              "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(json.dumps([{k: v for k, v in r.items() if k not in ("execution",)} for r in runs], indent=1, default=str))


if __name__ == "__main__":
    main()
