"""What the two Ray test modules (and experiments/ray/streaming.py) share: a cluster of `ray start`
nodes on this machine, running an experiment in this process, comparing its records with the local
backend's, and acting on the run's progress on storage (a file count reached)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import lazy
from bench.config import load_experiment
from bench.pipeline import run_experiment

REPO = Path(__file__).resolve().parents[1]
SHARD_FILES, BLOCK_FILES = "embeddings/*/shard-*.ids", "rerank/*/block-*.json"


RAY = Path(sys.executable).with_name("ray")
NODE = ["--num-gpus=0", f"--object-store-memory={80 * 2**20}", "--disable-usage-stats", "--block",
        "--min-worker-port=0", "--max-worker-port=0"]
#: the nodes' and drivers' environment: this checkout importable, offline, Ray's token auth off, and a
#: node stopped at once on SIGTERM (as `ray stop` stops it) rather than drained for up to 30 s first
ENV = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class Cluster:
    """A head and worker nodes on this machine, each a `ray start --block` process in its own session
    with its own temporary folder and ports (as separate machines would have). `ray stop` is never
    run: it would stop every Ray node on the machine, other users' included."""

    def __init__(self, root: Path, cpus: dict[str, int] | None = None):
        self.root = root
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.cpus = cpus or {}  # CPUs per node name (default 1)
        self.nodes: dict[str, subprocess.Popen] = {}

    @classmethod
    @contextlib.contextmanager
    def started(cls, workers=("worker-1", "worker-2"), cpus: dict[str, int] | None = None):
        """A head and `workers` started (the head's GCS answering), stopped at the end, workers first."""
        root = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # short: Ray's unix sockets live under it (108 bytes)
        c = cls(root, cpus)
        try:
            c.start("head")
            t_end = time.monotonic() + 120
            while True:  # the GCS answers once its port is open
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", c.port), timeout=1):
                    break
                if time.monotonic() > t_end:
                    raise TimeoutError(f"the head did not open port {c.port}; see {root / 'head.log'}")
                time.sleep(0.3)
            for name in workers:
                c.start(name)
            yield c
        finally:
            for name in [n for n in c.nodes if n != "head"] + ["head"] * ("head" in c.nodes):
                c.stop(name, group=False)
            shutil.rmtree(root, ignore_errors=True)

    def start(self, name: str) -> None:
        """`ray start` for node `name` ("head" or a worker), with its own temporary folder and ports."""
        ports = [f"--{flag}={free_port()}" for flag in ("node-manager-port", "object-manager-port", "metrics-export-port",
                                                        "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                        "runtime-env-agent-port")]
        where = ["--head", f"--port={self.port}", "--include-dashboard=false"] if name == "head" else [
            f"--address={self.address}"]
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 - the node's process writes it until it stops
        self.nodes[name] = subprocess.Popen([str(RAY), "start", *where, *ports, f"--temp-dir={self.root / name[0]}{name[-1]}",
                                             f"--num-cpus={self.cpus.get(name, 1)}", *NODE],
                                            env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> int:
        return sum(1 for n in lazy.ray.nodes() if n["Alive"])

    def wait_for(self, n: int, timeout: float = 180) -> None:
        t_end = time.monotonic() + timeout
        while self.alive() != n:
            if time.monotonic() > t_end:
                raise TimeoutError(f"{self.alive()} Ray node(s) alive after {timeout} s, expected {n}; logs in {self.root}")
            time.sleep(0.5)

    def stop(self, name: str, group: bool = True) -> None:
        """Stop one node: what `ray stop` does on its machine (SIGTERM to every process of the node's
        process group), or with ``group=False`` SIGTERM to its `ray start --block` process alone, which
        drains the node and then stops its processes (the quick way at the end, the GCS still up)."""
        node = self.nodes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGTERM) if group else node.send_signal(signal.SIGTERM)
        try:
            node.wait(60)
        finally:  # whatever of the node's process group is left
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait(10)

    def node_of(self, pid: int) -> str | None:
        """The node (by name) whose raylet started process `pid`: its parent's process group."""
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        group = os.getpgid(ppid)
        return next((name for name, p in self.nodes.items() if p.pid == group), None)


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
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(experiment_text(**exp_parts), encoding="utf-8")
    return run_experiment(load_experiment(path), folder / out, experiment_path=path, progress=False, log=lambda m: None)


def with_models(cache: Path, *refs: str) -> Path:
    """`cache` with the session's `random:` models linked in: built once per test session, not once per
    fresh cache (each build costs seconds to tens of seconds on a busy machine)."""
    from bench import models
    from conftest import SESSION_CACHE

    for ref in refs:
        built = Path(models.resolve(ref, SESSION_CACHE))
        link = cache / "models" / built.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(built, target_is_directory=True)
    return cache


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
