"""Before a long run: can every model be had, and is this the machine for it? Stop in seconds, not
after an hour (or a week), if not.

A hub model counts as available when its config is in the local Hugging Face cache or the hub
answers for it (a few seconds at most). Local folders, `offline:`, `random:`, `trained:` and `python:`
models always are (a `python:` class is imported when the experiment loads).
When one is missing, the error names the offline experiment that runs anywhere.

On a machine without a GPU, `check_duration` bounds the run's time from below (the dry run's plan:
its FLOPs at the CPU's measured matrix rate) and stops when even that exceeds `SLOW_RUN_SECONDS`,
unless the user passes `--allow-slow`.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import huggingface_hub  # cheap: the library loads its parts on first use

from .. import lazy
from ..config import Experiment
from ..errors import BenchError
from ..models.python import PYTHON_PREFIX
from ..models.references import OFFLINE_PREFIX, RANDOM_PREFIX, TRAINED_PREFIX
from ..retrieve.splade import query_side

OFFLINE_HINT = ("Without network (or hub access), run the offline experiment instead: "
                "`make demo` (bench run experiments/offline.toml).")


def hub_models(exp: Experiment) -> list[tuple[str, str | None]]:
    refs = [(fs.model, fs.revision) for fs in exp.first_stages.values()
            if fs.kind in ("dense", "bge-m3", "splade") and fs.model]
    refs += [(query_side(fs)[0], None) for fs in exp.first_stages.values()  # a SPLADE query model of its own
             if fs.kind == "splade" and query_side(fs)[0] not in ("model", "idf")]
    refs += [(r.model, r.revision) for r in exp.rerankers]
    out = []
    for ref, rev in refs:
        if ref.startswith((OFFLINE_PREFIX, RANDOM_PREFIX, TRAINED_PREFIX, PYTHON_PREFIX)) or Path(ref).exists():
            continue
        if (ref, rev) not in out:
            out.append((ref, rev))
    return out


def uncached_models(exp: Experiment) -> list[tuple[str, str | None]]:
    """The hub models (reference, revision) whose config is not in the local Hugging Face cache."""
    return [(ref, rev) for ref, rev in hub_models(exp)
            if not isinstance(huggingface_hub.try_to_load_from_cache(ref, "config.json", revision=rev), str)]


def check_fetchable(exp: Experiment, source: str | Path = "experiment", timeout: float = 5.0) -> None:
    missing = missing_models(exp, timeout)
    if missing:
        raise BenchError(f"{source}: models cannot be fetched:\n  " + "\n  ".join(missing) + f"\n{OFFLINE_HINT}")


def missing_models(exp: Experiment, timeout: float = 5.0) -> list[str]:
    """One line per hub model that is neither in the local Hugging Face cache nor fetchable now."""
    missing = []
    for ref, rev in uncached_models(exp):
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            missing.append(f"{ref}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
            continue
        try:
            huggingface_hub.HfApi().model_info(ref, revision=rev, timeout=timeout)
        except Exception as exc:  # network errors come in many types; all mean "cannot fetch"
            missing.append(f"{ref}: cannot reach the Hugging Face hub ({type(exc).__name__}: {str(exc)[:120]})")
            if "Connect" in type(exc).__name__ or "Timeout" in type(exc).__name__ or "resolve" in str(exc):
                break  # the network is down: one probe says it for every model
    return missing


#: Above this estimate on a CPU, `bench run` stops unless told --allow-slow.
SLOW_RUN_SECONDS = 3600
ALLOW_SLOW = "--allow-slow"


def check_duration(exp: Experiment, out: Path, results: Path | None, source: str | Path = "experiment") -> None:
    """On a machine without a GPU: a BenchError, before any work, when the run would take more than
    an hour even at the CPU's full matrix rate, with the estimate and the offline alternative. A plan
    that cannot be made (e.g. an unreadable record in `out`) is left to the run itself."""
    from .dry_run import estimate_here, plan, _duration  # the dry run imports this module

    if exp.execution.backend != "local" or lazy.torch.cuda.is_available():  # a cluster's devices are not this machine's
        return
    try:
        p = plan(exp, out, results=results)
    except BenchError:
        return
    if not any(step.flops or (step.rate and step.rate.device == "cpu") for step in p.steps):
        return  # nothing to bound it with: the run says how it goes
    cpu = cpu_flop_rate()
    seconds, unbounded = estimate_here(p, cpu)
    if seconds <= SLOW_RUN_SECONDS:
        return
    flops = sum(step.flops or 0.0 for step in p.steps)
    elsewhere = f"; about {_duration(p.seconds)} on {' and '.join(p.devices())}" if p.seconds else ""
    raise BenchError(
        f"{source}: this machine has no GPU, and the run would take at least {_duration(seconds)} on its CPU "
        f"(encoding and reranking: {flops:.1e} FLOPs at the {cpu / 1e9:,.0f} GFLOP/s this CPU multiplies fp32 "
        f"matrices{'; ' + ', '.join(unbounded) + ' not counted' if unbounded else ''}){elsewhere}; "
        f"`bench run {source} --dry-run` shows each step. Run it on a GPU machine, or run the offline "
        f"demo here: `make demo` (bench run experiments/offline.toml). To run it on this CPU anyway, pass {ALLOW_SLOW}.")


@functools.lru_cache(maxsize=1)
def cpu_flop_rate(n: int = 1024, repeats: int = 3) -> float:
    """FLOP/s of an fp32 n×n matrix product on this CPU with torch's threads (the best of `repeats`,
    after one warm-up): the most any engine can reach here, so times from it are lower bounds."""
    torch = lazy.torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best
