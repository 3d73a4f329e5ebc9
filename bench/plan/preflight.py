"""Before a long run: can every model be had? Stop in seconds, not after an hour, if not.

A hub model counts as available when its config is in the local Hugging Face cache or the hub
answers for it (a few seconds at most). Local folders, `offline:`, `random:`, `trained:` and `python:`
models always are (a `python:` class is imported when the experiment loads).
When one is missing, the error names the offline experiment that runs anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub  # cheap: the library loads its parts on first use

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
