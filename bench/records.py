"""Result records: one JSON schema for every number the harness produces, written atomically.

A record holds what was measured (metrics, timings), what produced it (dataset, models with
revisions, every setting) and where (git sha, package versions, device, UTC date), so a number
never travels without its context. Tables and plots are made from records only.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


SCHEMA = "rerank-bench/record"
SCHEMA_VERSION = 1

#: Packages whose versions go into every record.
TRACKED_PACKAGES = (
    "rerank-bench", "torch", "transformers", "sentence-transformers", "tokenizers", "ir-datasets",
    "ranx", "numpy", "pandas", "bm25s", "pytrec-eval-terrier",
)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def git_sha(cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """The commit of the project checkout and whether it had uncommitted changes."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return {"sha": None, "dirty": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5)
        return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def package_versions(names=TRACKED_PACKAGES) -> dict[str, str | None]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict[str, Any]:
    """What ran the numbers: the CUDA device(s) if torch sees any, else the CPU."""
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    if "torch" in sys.modules or _importable("torch"):
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda"] = torch.version.cuda
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["device"] = info["gpus"][0]
        else:
            info["device"] = "cpu"
    return info


def _importable(name: str) -> bool:
    from importlib.util import find_spec

    return find_spec(name) is not None


def environment() -> dict[str, Any]:
    return {
        "git": git_sha(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "device": device_info(),
        "created_utc": utc_now(),
    }


def make_record(kind: str, **fields: Any) -> dict[str, Any]:
    """A record of `kind` ("quality", "throughput", "fidelity", "comparison", "reproduce") with the
    environment attached. `fields` are the kind's own content (dataset, system, settings, metrics...)."""
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "kind": kind, **fields,
            "environment": environment()}


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    from .errors import BenchError

    path = Path(path)
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"{path}: record file not found") from None
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); delete it and rerun the step that wrote it") from None
    if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
        raise BenchError(f"{path}: not a rerank-bench record (field 'schema' must be {SCHEMA!r})")
    if rec.get("schema_version") != SCHEMA_VERSION:
        raise BenchError(f"{path}: record schema_version {rec.get('schema_version')!r}, this version reads {SCHEMA_VERSION}")
    return rec


def find_records(folder: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """All records below `folder` (recursively), optionally of one kind, sorted by path."""
    out = []
    for p in sorted(Path(folder).rglob("*.json")):
        try:
            head = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(head, dict) and head.get("schema") == SCHEMA:
            rec = read_record(p)
            if kind is None or rec.get("kind") == kind:
                rec["_path"] = str(p)
                out.append(rec)
    return out
