"""Content-addressed cache folders, and cache files that are verified when read.

Keys hash a canonical JSON of their parts (model, revision, collection fingerprint, settings), so
changing any of them makes a new entry and a rerun with the same parts finds the old one. Each
entry keeps its parts in `key.json` beside the data, so a cache folder explains itself.

Every file a cache entry serves (embedding shards, candidate runs and their info, completion
markers, rerank blocks) is written with `write_checked` and read with `read_checked` / `checked`:
a truncated, overwritten or half-written file is never used; it is reported on stderr (one line
naming it) and the caller recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from .io import atomic_write_bytes, atomic_write_json, json_text, sha256_file, slug
from .models.references import default_cache_dir


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


# -- checked entries: every file the cache serves is verified against what was written -------------
#: beside each cache file `F`, `F.check` holds {"size", "sha256"} of the bytes written to F
CHECK_SUFFIX = ".check"

#: files verified in this process, by (path, size, mtime, inode): a shard read twice is hashed once
_verified: set[tuple] = set()


def check_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + CHECK_SUFFIX)


def write_checked(path: str | os.PathLike, data: bytes) -> Path:
    """Write a cache file and then its check (size and sha256), each atomically. A crash between the
    two leaves a file whose check is missing or stale: it fails `checked` and is recomputed."""
    path = Path(path)
    check = check_path(path)
    check.unlink(missing_ok=True)
    for said in [s for s in _said if s[0] == str(path)]:  # a later fault of the new file is said again
        _said.discard(said)
    atomic_write_bytes(path, data)
    atomic_write_json(check, {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return path


def write_checked_text(path: str | os.PathLike, text: str) -> Path:
    return write_checked(path, text.encode("utf-8"))


def write_checked_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_checked(path, json_text(obj).encode("utf-8"))


def read_checked(path: str | os.PathLike) -> bytes | None:
    """The bytes of a cache file when they match its check; None when the file is absent or fails the
    check (which is said on stderr: the caller recomputes the entry)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _rejected(path, f"unreadable ({exc.strerror})")
    problem = _mismatch(path, len(data), lambda: hashlib.sha256(data).hexdigest())
    return _rejected(path, problem) if problem else data


def read_checked_json(path: str | os.PathLike) -> Any | None:
    """A cache file's JSON when it matches its check, else None (see `read_checked`)."""
    data = read_checked(path)
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:  # written so, or the check was rewritten with it
        return _rejected(Path(path), f"not JSON ({exc})")


def checked(path: str | os.PathLike) -> bool:
    """Whether a cache file exists and matches its check, without keeping its bytes (for files read
    through memory maps). A file that exists but fails is said on stderr; the caller recomputes it."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return False
    stamp = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if stamp in _verified:
        return True
    problem = _mismatch(path, st.st_size, lambda: sha256_file(path))
    if problem:
        _rejected(path, problem)
        return False
    _verified.add(stamp)
    return True


def _mismatch(path: Path, size: int, digest) -> str | None:
    """What is wrong with `path` against its check (None: nothing)."""
    try:
        check = json.loads(check_path(path).read_text(encoding="utf-8"))
        want_size, want_sha = int(check["size"]), str(check["sha256"])
    except FileNotFoundError:
        return f"no {CHECK_SUFFIX} file beside it (written by an older version or interrupted)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {CHECK_SUFFIX} file is unreadable"
    if size != want_size:
        return f"{size:,} bytes, but {want_size:,} were written (truncated or overwritten)"
    if digest() != want_sha:
        return "content differs from what was written (sha256 mismatch)"
    return None


#: problems already said (a file checked twice before it is recomputed is reported once)
_said: set[tuple[str, str]] = set()


def _rejected(path: Path, problem: str) -> None:
    if (str(path), problem) not in _said:
        _said.add((str(path), problem))
        print(f"cache: {path}: {problem}; recomputing it", file=sys.stderr, flush=True)
    return None
