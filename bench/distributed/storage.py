"""The cluster's shared storage: a folder every node reads and writes, as a path or a filesystem URI.

Files are addressed by paths relative to the storage root that mirror the local cache
(``embeddings/<entry>/shard-00003.npy``, ``rerank/<entry>/block-00007.json``), so a storage root equal
to the cache folder (the default) shares every shard and block with local runs. Each file is written
under a temporary name and moved into place, so a reader never sees half a file (on object stores a
single PUT is atomic already).
"""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from pathlib import Path

from .. import lazy
from ..errors import BenchError

#: beside a file F, F.check holds {"size", "sha256"} of the bytes written to F: the layout of the local
#: cache's checked entries, so each backend can verify what the other wrote
CHECK_SUFFIX = ".check"
#: what `Storage.read_verified` says of a file that is not there
MISSING = "missing"


def _filesystem(uri: str):
    """(pyarrow filesystem, root path) for a plain path, a pyarrow URI (file://, s3://, gs://, hdfs://)
    or, failing pyarrow, an fsspec URI (through pyarrow's fsspec handler)."""
    fs_mod = lazy.pyarrow_fs
    if "://" not in uri:
        return fs_mod.LocalFileSystem(), Path(uri).expanduser().resolve().as_posix()
    try:
        return fs_mod.FileSystem.from_uri(uri)
    except Exception as pyarrow_error:  # an scheme pyarrow does not know: try fsspec's registry
        try:
            import fsspec

            fs, root = fsspec.core.url_to_fs(uri)
        except Exception:
            raise BenchError(f"storage {uri!r}: not a filesystem pyarrow or fsspec can open: {pyarrow_error}") from None
        return fs_mod.PyFileSystem(fs_mod.FSSpecHandler(fs)), root


class Storage:
    """Reads and atomic writes of small files under one root (a path or a URI); picklable, so tasks
    and actors on other nodes get the same view."""

    def __init__(self, uri: str):
        self.uri = str(uri)
        self.fs, self.root = _filesystem(self.uri)

    def __reduce__(self):
        return Storage, (self.uri,)

    def path(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type == lazy.pyarrow_fs.FileType.File

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def read_text(self, rel: str) -> str | None:
        """The file's text, or None if it does not exist."""
        if not self.exists(rel):
            return None
        return self.read_bytes(rel).decode("utf-8")

    def write_bytes(self, rel: str, data: bytes) -> None:
        target = self.path(rel)
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        tmp = f"{target}.tmp-{uuid.uuid4().hex}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, target)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, obj) -> None:
        self.write_text(rel, json.dumps(obj, ensure_ascii=False))

    def write_checked(self, rel: str, data: bytes) -> None:
        """Write a file and then its check; a crash between the two leaves no check or a stale one."""
        if self.exists(rel + CHECK_SUFFIX):
            self.delete(rel + CHECK_SUFFIX)
        self.write_bytes(rel, data)
        self.write_json(rel + CHECK_SUFFIX, {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})

    def write_checked_json(self, rel: str, obj) -> None:
        self.write_checked(rel, json.dumps(obj, ensure_ascii=False).encode("utf-8"))

    def read_checked(self, rel: str) -> bytes | None:
        """The file's bytes; None when it is absent, has no check beside it, or its check says they are
        not what was written (said on stderr, as the local cache does: the caller recomputes it)."""
        data, problem = self.read_verified(rel)
        if problem is not None and problem != MISSING:
            print(f"storage: {self.path(rel)}: {problem}; recomputing it", file=sys.stderr, flush=True)
        return data

    def read_verified(self, rel: str) -> tuple[bytes | None, str | None]:
        """(the file's bytes, None) when it is there and matches its check, else (None, what is wrong:
        `MISSING`, no check, or a size or sha256 that differs from what was written). Says nothing: a
        worker returns the problem and the driver says it, where the user reads."""
        if not self.exists(rel):
            return None, MISSING
        data = self.read_bytes(rel)
        check = self.read_text(rel + CHECK_SUFFIX)
        if check is None:
            return None, f"no {CHECK_SUFFIX} file beside it (written by an older version or interrupted)"
        try:
            want = json.loads(check)
            size, sha = int(want["size"]), want["sha256"]
        except (ValueError, KeyError, TypeError):
            return None, f"its {CHECK_SUFFIX} file is unreadable"
        if size != len(data):
            return None, f"{len(data):,} bytes, but {size:,} were written (truncated or overwritten)"
        if sha != hashlib.sha256(data).hexdigest():
            return None, "content differs from what was written (sha256 mismatch)"
        return data, None

    def delete(self, rel: str) -> None:
        self.fs.delete_file(self.path(rel))

    def check_writable(self) -> str:
        """Write a probe file and read it back; return its relative path. A BenchError says what failed."""
        rel = f"probes/{uuid.uuid4().hex}"
        try:
            self.write_text(rel, rel)
            if self.read_text(rel) != rel:
                raise OSError("the probe read back differs from what was written")
        except BenchError:
            raise
        except Exception as exc:
            raise BenchError(f"storage {self.uri!r} is not writable from this machine ({type(exc).__name__}: {exc}); "
                             "set [execution] storage to a folder or URI every node can read and write") from None
        return rel
