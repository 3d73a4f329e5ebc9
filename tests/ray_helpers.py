"""What the two Ray test modules share: running an experiment in this process, comparing its records
with the local backend's, and acting on the run's progress on storage (a file count reached)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

from bench import lazy
from bench.config import load_experiment
from bench.pipeline import run_experiment

REPO = Path(__file__).resolve().parents[1]
SHARD_FILES, BLOCK_FILES = "embeddings/*/shard-*.ids", "rerank/*/block-*.json"


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
    """`bench run` of an experiment written from its parts, in this process (its driver), into folder/out."""
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


def watch(root: Path, pattern: str, action, *, count: int = 1, timeout: float = 600):
    """Run `action()` on a thread once `count` files under `root` match `pattern` (the run's progress
    on storage); the returned event is set once it has run."""
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


def processes_titled(title: str) -> list[int]:
    """Process ids whose command line (Ray's process title) holds `title`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and title in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def kill_processes(title: str) -> list[int]:
    """SIGKILL the processes titled `title`: actors this test's run started."""
    pids = processes_titled(title)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert pids, f"no process titled {title!r}"
    return pids
