"""Files the harness writes: atomically (a temp file in the same folder, then a rename), so a reader
never sees half a file and an interrupted run never leaves one behind; and the one rule that turns a
label into a file name (`slug`)."""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import BenchError, where

import numpy as np


def slug(text: str, *, strip: bool = True) -> str:
    """``text`` as a file name: every character but letters, digits, ``-``, ``_`` and ``.`` becomes ``_``;
    underscores at the ends go unless ``strip`` is False (cache folders keep them, so that folders
    made before stay found)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    return safe.strip("_") if strip else safe


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: read once at import: os.umask can only be read by setting it (which races with other threads)
_IMPORT_UMASK = _process_umask()


def _umask_now() -> int:
    """The umask in force now: Linux states it in /proc/self/status (read without changing it, so
    safe beside other threads); elsewhere the umask at import."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _IMPORT_UMASK


def _file_mode() -> int:
    """The mode open() would give a new file: 0666 less the umask."""
    return 0o666 & ~_umask_now()


def folder_mode() -> int:
    """The mode mkdir would give a new folder (for folders made private by mkdtemp, then published by
    a rename): 0777 less the umask."""
    return 0o777 & ~_umask_now()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write via a temp file in the same folder and rename: readers never see half a file. The file
    gets the mode a plain open() would give it (0666 less the umask), not mkstemp's private 0600."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc, len(data)) from None
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise write_error(path, exc, len(data)) from None
        raise
    return path


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT, also when a library reports it only in its message (safetensors, torch)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc)


def write_error(path: str | os.PathLike, exc: BaseException, needed: int | None = None) -> BenchError:
    """A failed write as one message naming the path (and, when the disk is full, the bytes needed and free)."""
    path = Path(path)
    if is_disk_full(exc):
        need = f"{needed:,} bytes needed, " if needed is not None else ""
        return BenchError(f"{path}: no space left on the device ({need}{_free_bytes(path):,} free); "
                          "free some space or point the output / cache_dir elsewhere, then rerun (finished work is kept)")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return BenchError(f"{path}: cannot write ({reason}); choose a writable location")


def _free_bytes(path: Path) -> int:
    for folder in (path, *path.parents):
        try:
            st = os.statvfs(folder)
            return st.f_bavail * st.f_frsize
        except OSError:
            continue
    return 0


def check_output_folder(folder: str | os.PathLike, option: str = "--out", *, purpose: str = "results") -> Path:
    """Before any work: `folder` must be a writable folder outside /proc, /sys and /dev, or one that
    can be made (nothing is created here); a BenchError names the option and the problem otherwise."""
    folder = Path(folder)
    resolved = folder.resolve()
    if resolved.parts[1:2] and resolved.parts[1] in ("proc", "sys", "dev"):
        raise BenchError(f"{option} {folder}: under /{resolved.parts[1]}, a system folder; choose a folder for {purpose}")
    existing = next(p for p in (resolved, *resolved.parents) if p.exists())
    if not existing.is_dir():
        what = "exists and is a file" if existing == resolved else f"lies under the file {existing}"
        raise BenchError(f"{option} {folder}: {what}, not a folder; give a folder")
    if existing == resolved:  # ours to write in: try it
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=resolved)
            os.close(fd)
            os.unlink(probe)
            return folder
        except OSError as exc:
            raise BenchError(f"{option} {folder}: not writable ({exc.strerror or exc}); choose another folder") from None
    if not os.access(existing, os.W_OK | os.X_OK) or os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise BenchError(f"{option} {folder}: cannot be made, {existing} is not writable; choose another folder")
    return folder


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any) -> str:
    """The JSON text the harness writes (indented, UTF-8 as is, numpy values and paths converted)."""
    return json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False, default=_json_default) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json_text(obj))


def _json_default(obj: Any):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "model_dump"):  # a record or one of its parts; json.dumps converts what it holds
        return obj.model_dump()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file, plain or gzip (by its .gz suffix), line endings kept;
    a leading byte-order mark is dropped (else it would become part of the first id).

    The one reader of the text files people give the harness (qrels, runs, BEIR JSON lines): a
    missing file, a folder, bad UTF-8 or a truncated gzip is a BenchError naming the file (and line)."""
    path = Path(path)
    if not path.exists():
        raise BenchError(f"{path}: file not found")
    if path.is_dir():
        raise BenchError(f"{path}: is a folder, expected a file")
    lineno = 0
    try:
        with (gzip.open(path, "rt", encoding="utf-8-sig", newline="") if path.suffix == ".gz"
              else open(path, encoding="utf-8-sig", newline="")) as fh:
            for lineno, line in enumerate(fh, start=1):
                yield lineno, line
    except UnicodeDecodeError as exc:
        raise BenchError(f"{where(path, lineno + 1)}: not UTF-8 text ({exc.reason})") from None
    except (EOFError, gzip.BadGzipFile) as exc:
        raise BenchError(f"{where(path, lineno + 1)}: cannot read ({exc}); the file is cut short or not gzip") from None


def publish_modes(folder: Path) -> None:
    """Every file and folder under `folder` as open() and mkdir() would make them (0666 / 0777 less
    the umask): libraries that save through private temp files leave them 0600, unreadable to the
    others who share a cache."""
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, folder_mode() if path.is_dir() else _file_mode())


def build_folder(folder: str | os.PathLike, save) -> Path:
    """Make `folder` by `save(tmp)` into a private temporary folder beside it, then one rename.

    Readers never see half a model; a failed build (disk full included) leaves nothing behind; two
    processes building the same model at once both succeed: the second rename finds the folder made
    and the loser's copy is dropped."""
    folder = Path(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".building", dir=folder.parent))
        os.chmod(tmp, folder_mode())  # a shared cache: others read the model too
    except OSError as exc:
        raise write_error(folder, exc) from None
    try:
        save(tmp)
        publish_modes(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "config.json").exists():  # not another process's finished build
                raise
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and (isinstance(exc, OSError) or is_disk_full(exc)):
            raise write_error(folder, exc) from None
        raise
    shutil.rmtree(tmp, ignore_errors=True)  # the loser's copy, when another build won
    return folder
