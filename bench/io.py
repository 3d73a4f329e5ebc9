"""Files the harness writes: atomically (a temp file in the same folder, then a rename), so a reader
never sees half a file and an interrupted run never leaves one behind; and the one rule that turns a
label into a file name (`slug`)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
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


def _file_mode() -> int:
    """0666 less the umask in force now: Linux states it in /proc/self/status (read without changing
    it, so safe beside other threads); elsewhere the umask at import."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o666 & ~_IMPORT_UMASK


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write via a temp file in the same folder and rename: readers never see half a file. The file
    gets the mode a plain open() would give it (0666 less the umask), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False, default=_json_default) + "\n")


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
    """(line number, line) of a UTF-8 text file, plain or gzip (by its .gz suffix), line endings kept.

    The one reader of the text files people give the harness (qrels, runs, BEIR JSON lines): a
    missing file, a folder, bad UTF-8 or a truncated gzip is a BenchError naming the file (and line)."""
    path = Path(path)
    if not path.exists():
        raise BenchError(f"{path}: file not found")
    if path.is_dir():
        raise BenchError(f"{path}: is a folder, expected a file")
    lineno = 0
    try:
        with (gzip.open(path, "rt", encoding="utf-8", newline="") if path.suffix == ".gz"
              else open(path, encoding="utf-8", newline="")) as fh:
            for lineno, line in enumerate(fh, start=1):
                yield lineno, line
    except UnicodeDecodeError as exc:
        raise BenchError(f"{where(path, lineno + 1)}: not UTF-8 text ({exc.reason})") from None
    except (EOFError, gzip.BadGzipFile) as exc:
        raise BenchError(f"{where(path, lineno + 1)}: cannot read ({exc}); the file is cut short or not gzip") from None
