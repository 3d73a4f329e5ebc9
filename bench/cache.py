"""Content-addressed cache folders, and cache files that are verified when read.

Keys hash a canonical JSON of their parts (model, revision, collection fingerprint, settings), so
changing any of them makes a new entry and a rerun with the same parts finds the old one. Each
entry keeps its parts in `key.json` beside the data, so a cache folder explains itself.

Every file a cache entry serves (embedding shards, candidate runs and their info, completion
markers, rerank blocks) is written with `write_checked` and read with `read_checked` / `checked`:
a truncated, overwritten or half-written file is never used; it is reported on stderr (one line
naming it) and the caller recomputes it.

Models the project builds into the cache (`random:`, `trained:`; `bench.models`) are folders with
the same treatment (`checked_folder`): a `files.check` inside lists every file's size and sha256,
each load verifies them, and a damaged model is rebuilt (said on stderr). Builds hold a lock, so a
second process waits for the first instead of building the same model twice, and folders a killed
build left behind are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Callable

from .errors import BenchError
from .io import (atomic_write_bytes, atomic_write_json, build_folder, check_output_folder, json_text, sha256_file,
                 slug)

try:
    import fcntl
except ImportError:  # not POSIX: builds are not serialised (two builders both build; the rename decides)
    fcntl = None


def default_cache_dir() -> Path:
    return Path(os.environ.get("RERANK_BENCH_CACHE", Path.home() / ".cache" / "rerank-bench"))


def cache_root(configured: str | os.PathLike | None = None) -> Path:
    """The experiment's `cache_dir`, else $RERANK_BENCH_CACHE, else ~/.cache/rerank-bench."""
    return Path(configured) if configured else default_cache_dir()


def check_cache_folder(configured: str | os.PathLike | None = None) -> Path:
    """Before any work: the cache folder (`cache_root`) must be a writable folder outside /proc, /sys
    and /dev, or one that can be made; a BenchError names the setting it came from otherwise."""
    setting = ("cache_dir =" if configured else "RERANK_BENCH_CACHE =" if os.environ.get("RERANK_BENCH_CACHE")
               else "the default cache folder")
    return check_output_folder(cache_root(configured), setting, purpose="the cache (embeddings, runs, models)")


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


# -- model folders built into the cache --------------------------------------------------------------
#: inside a model folder built into the cache: {"files": {relative path: {"size", "sha256"}}}
FOLDER_CHECK = "files.check"
#: the files that hold a model's weights (their digests go into every record that uses the model)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def write_folder_check(folder: str | os.PathLike) -> Path:
    """List every file of `folder` (but the check itself) with its size and sha256."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != FOLDER_CHECK}
    return atomic_write_json(folder / FOLDER_CHECK, {"files": files})


def folder_problem(folder: str | os.PathLike) -> str | None:
    """What is wrong with a built folder against its `files.check` (None: nothing). Each file is
    hashed once per process while its size, time and inode stay the same."""
    folder = Path(folder)
    try:
        listed = json.loads((folder / FOLDER_CHECK).read_text(encoding="utf-8"))["files"]
        listed = {str(k): (int(v["size"]), str(v["sha256"])) for k, v in listed.items()}
    except FileNotFoundError:
        return f"no {FOLDER_CHECK} inside (built by an older version, or the build was interrupted)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"its {FOLDER_CHECK} is unreadable"
    for name, (size, sha) in listed.items():
        path = folder / name
        try:
            st = path.stat()
        except OSError:
            return f"{name} is missing"
        if st.st_size != size:
            return f"{name}: {st.st_size:,} bytes, but {size:,} were written (truncated or overwritten)"
        stamp = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
        if stamp not in _verified:
            if sha256_file(path) != sha:
                return f"{name}: content differs from what was written (sha256 mismatch)"
            _verified.add(stamp)
    return None


def weights_digests(folder: str | os.PathLike) -> dict[str, str] | None:
    """{weight file: sha256} of a built folder, from its check (None: not a built folder)."""
    try:
        listed = json.loads((Path(folder) / FOLDER_CHECK).read_text(encoding="utf-8"))["files"]
        return {k: v["sha256"] for k, v in listed.items() if k.endswith(WEIGHT_SUFFIXES)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def checked_folder(folder: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """`folder`, a model built into the cache by `build(tmp)` (which saves it into an empty folder):
    used when it passes its check, else built, or rebuilt when damaged (said on stderr). Building
    holds a lock beside the folder; folders a killed build left (``.<name>.*.building``) are removed
    whenever the lock is free."""
    folder = Path(folder)
    if folder.is_dir() and folder_problem(folder) is None:
        with _build_lock(folder, wait=False) as held:
            if held:
                _remove_leftovers(folder)
        return folder
    with _build_lock(folder, wait=True):
        _remove_leftovers(folder)
        if folder.exists():
            problem = folder_problem(folder)
            if problem is None:  # another process built it while this one waited
                return folder
            print(f"cache: {folder}: {problem}; rebuilding it", file=sys.stderr, flush=True)
            aside = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.damaged")
            folder.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)

        def save(tmp: Path) -> None:
            build(tmp)
            write_folder_check(tmp)

        return build_folder(folder, save)


@contextlib.contextmanager
def _build_lock(folder: Path, *, wait: bool):
    """An exclusive lock on ``.<name>.lock`` beside `folder`; yields whether it is held (with
    ``wait=False`` it is not when another process builds now)."""
    if fcntl is None:
        yield True
        return
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        fh = open(folder.with_name(f".{folder.name}.lock"), "a+b")
    except OSError as exc:
        if not wait:  # a read-only cache can still serve a sound model
            yield False
            return
        raise BenchError(f"{folder.parent}: cannot build {folder.name} there ({exc.strerror or exc}); "
                         "point cache_dir or RERANK_BENCH_CACHE at a writable folder") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_leftovers(folder: Path) -> None:
    """Under the build lock: what killed builds of `folder` left beside it (no live build holds any)."""
    for leftover in [*folder.parent.glob(f".{folder.name}.*.building"), *folder.parent.glob(f".{folder.name}.*.damaged"),
                     folder.with_name(folder.name + ".partial")]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
