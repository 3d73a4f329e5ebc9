"""The driver's memory against the corpus size, on a Ray cluster and locally.

    PYTHONPATH=. python experiments/ray/streaming.py --out results/ray-streaming-cpu [--sizes 100000 500000 2000000] [--backends ray local]

For each size, the indexed synthetic collection (one language, 2 to 4 sentences a passage) is run
through a tiny random bi-encoder (`random:tiny-bge-m3`, dense, fp32), shards of 50,000 passages,
top-100 per query, by a fresh `bench run` process: once with `--backend ray` against a cluster of
`ray start` nodes on this machine (a head without CPUs and two worker nodes of 1 CPU: the encoding
and the search run on the workers), once with the local backend; each with an empty cache. Written:

* ``<backend>-<size>.json``: the run's first-stage record (the cluster's holds
  ``info.execution.driver_peak_rss_mib``: `resource.getrusage` in the driver when the step ended);
With ``--backends`` naming only some backends, the other backends' runs are taken from their
records already in ``--out`` (their process wall time and `os.wait4` peak were not kept: null).

* ``runs.json``: per run the wall time, the encoding time, passages/s (whole step; per worker: over
  the actors' own time per shard), the driver's peak RSS from the record and from `os.wait4` (the
  whole process, start to exit), and the machine;
* ``summary.json``: ``{"driver_peak_rss_mib": {size: ...}, "local_peak_rss_mib": {size: ...}}`` (the
  cluster driver's from its record, the local process's from `os.wait4`).

A table is printed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from conftest import experiment_text  # noqa: E402
from ray_helpers import ENV, Cluster  # noqa: E402

from bench.records import environment  # noqa: E402


def experiment(cache: Path, size: int, args) -> str:
    return experiment_text(
        name=f"ray-streaming-{size}", cache_dir=str(cache),
        first_stages={"tiny": {"kind": "dense", "model": "random:tiny-bge-m3", "depth": 100, "dtype": "fp32",
                               "max_length": args.max_length, "shard_size": args.shard_size}},
        datasets=[{"source": "synthetic", "synthetic": {"languages": ["en"], "docs_per_language": size,
                                                         "queries_per_language": args.queries, "generator": "indexed",
                                                         "sentences": [2, 4]}}],
        evaluation={"metrics": ["nDCG@10", "Recall@100"]},
        execution={"workers": args.workers})


def run(folder: Path, size: int, backend: str, address: str, args) -> dict:
    """One `bench run` process; its record, wall time and peak RSS (`os.wait4` of the process)."""
    cache, out = folder / "cache", folder / "out"
    path = folder / "exp.toml"
    folder.mkdir(parents=True)
    path.write_text(experiment(cache, size, args), encoding="utf-8")
    cmd = [sys.executable, "-m", "bench", "run", str(path), "--out", str(out), "--skip-preflight", "--no-progress"]
    if backend == "ray":
        cmd += ["--ray-address", address]
    t0 = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{backend} {size}: bench run failed; see {folder / 'log.txt'}")
    (record_path,) = (out / "records").glob("*.json")
    record = json.loads(record_path.read_text())
    (args.out / f"{backend}-{size}.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(cache)  # 2,000,000 vectors: 0.5 GB a run
    result = entry(record, backend, size, wall=round(wall, 1), wait4=round(usage.ru_maxrss / 1024, 1))
    print(f"{backend:5} {size:>9,}  wall {wall:7.1f} s  encode {result['encode_seconds']:7.1f} s"
          f"  {result['passages_per_s']:8.1f} passages/s"
          f"  driver peak {result['driver_peak_rss_mib_record'] or result['driver_peak_rss_mib_wait4']:7.1f} MiB",
          flush=True)
    return result


def entry(record: dict, backend: str, size: int, wall: float | None, wait4: float | None) -> dict:
    """One run's line in runs.json, from its record (and the process's wall time and peak where kept)."""
    execution = record["info"].get("execution") or {}
    per_shard = (execution.get("steps") or {}).get("encode_seconds_per_shard") or []
    encode = record["timings"]["encode_seconds"]
    return {"backend": backend, "passages": size, "wall_seconds": wall, "encode_seconds": round(encode, 1),
            "first_stage_seconds": round(record["timings"]["first_stage_seconds"], 1),
            "passages_per_s": round(size / encode, 1),
            "passages_per_s_per_worker": round(size / sum(per_shard), 1) if per_shard else None,
            "driver_peak_rss_mib_record": execution.get("driver_peak_rss_mib"),
            "driver_peak_rss_mib_wait4": wait4, "metrics": record["metrics"], "record": f"{backend}-{size}.json",
            "git": record["environment"]["git"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 500_000, 2_000_000])
    ap.add_argument("--shard-size", type=int, default=50_000)
    ap.add_argument("--backends", nargs="+", choices=("ray", "local"), default=["ray", "local"],
                    help="the backends to run; the others' runs are read from their records in --out")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--max-length", type=int, default=64)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="ray-streaming-"))
    load_before = os.getloadavg()
    runs = []
    workers = tuple(f"worker-{i + 1}" for i in range(args.workers))
    with contextlib.ExitStack() as stack:
        address = stack.enter_context(Cluster.started(workers, cpus={"head": 0})).address if "ray" in args.backends else None
        for size in args.sizes:
            for backend in ("ray", "local"):
                if backend in args.backends:
                    runs.append(run(folder / f"{backend}-{size}", size, backend, address, args))
                else:
                    record = json.loads((args.out / f"{backend}-{size}.json").read_text(encoding="utf-8"))
                    runs.append(entry(record, backend, size, wall=None, wait4=None))
    shutil.rmtree(folder, ignore_errors=True)
    by = {(r["backend"], r["passages"]): r for r in runs}
    summary = {"driver_peak_rss_mib": {str(s): by["ray", s]["driver_peak_rss_mib_record"] for s in args.sizes},
               "local_peak_rss_mib": {str(s): by["local", s]["driver_peak_rss_mib_wait4"] for s in args.sizes}}
    machine = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "load_average_before": load_before,
               "load_average_after": os.getloadavg(),
               "note": "2-core CPU box shared with other engineers' jobs (loaded), no GPU"}
    settings = {k: v for k, v in vars(args).items() if k != "out"}  # backends: the ones run by this invocation
    (args.out / "runs.json").write_text(json.dumps({"what": __doc__.split("\n\n")[0], "settings": settings,
                                                    "cluster": "head (0 CPUs) + " + ", ".join(workers) + " (1 CPU each), "
                                                               "`ray start` processes on this machine",
                                                    "machine": machine, "environment": environment(), "runs": runs},
                                                   indent=1, default=str) + "\n", encoding="utf-8")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"\n{'backend':8}{'passages':>11}{'wall s':>9}{'encode s':>10}{'passages/s':>12}{'per worker':>12}"
          f"{'peak MiB (record)':>19}{'peak MiB (wait4)':>18}")
    for r in runs:
        print(f"{r['backend']:8}{r['passages']:>11,}{r['wall_seconds'] or float('nan'):>9.1f}{r['encode_seconds']:>10.1f}"
              f"{r['passages_per_s']:>12.1f}{r['passages_per_s_per_worker'] or float('nan'):>12.1f}"
              f"{r['driver_peak_rss_mib_record'] or float('nan'):>19.1f}{r['driver_peak_rss_mib_wait4'] or float('nan'):>18.1f}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
