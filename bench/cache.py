"""Content-addressed cache folders: a key is a hash of everything that changes the content.

Keys hash a canonical JSON of their parts (model, revision, collection fingerprint, settings), so
changing any of them makes a new entry and a rerun with the same parts finds the old one. Each
entry keeps its parts in `key.json` beside the data, so a cache folder explains itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .io import atomic_write_json, slug
from .models import default_cache_dir


def cache_root(configured: str | os.PathLike | None = None) -> Path:
    """The experiment's `cache_dir`, else $RERANK_BENCH_CACHE, else ~/.cache/rerank-bench."""
    return Path(configured) if configured else default_cache_dir()


def key_of(**parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def entry_path(root: str | os.PathLike, kind: str, label: str, **parts: Any) -> Path:
    """Folder `<root>/<kind>/<label>-<key>` for these parts, without creating it (`bench run --dry-run`)."""
    return Path(root) / kind / f"{slug(label, strip=False)[:60]}-{key_of(**parts)}"


def entry(root: str | os.PathLike, kind: str, label: str, **parts: Any) -> Path:
    """Folder `<root>/<kind>/<label>-<key>` for these parts, with `key.json` written once."""
    folder = entry_path(root, kind, label, **parts)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "key.json").exists():
        atomic_write_json(folder / "key.json", parts)
    return folder
