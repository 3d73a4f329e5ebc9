"""A collection in BEIR's folder layout, read from local files.

Layout (as BEIR's `GenericDataLoader` and the files in ../shared/data)::

    corpus.jsonl or corpus.jsonl.gz   one JSON object a line: {"_id", "title" (optional), "text"}
    queries.jsonl                     one JSON object a line: {"_id", "text"}
    qrels/<split>.tsv                 header `query-id<TAB>corpus-id<TAB>score`, then one judgement a line

Queries and qrels are read at once (they are small). The corpus is streamed: on first use one pass
(`CorpusScan`) checks every line, that ids are unique and that every judged document exists, counts
the passages and records a byte offset every OFFSET_STRIDE passages, holding about 8 bytes a
passage; `iter_docs` and `docs_range` then read the file (a shard seeks to its offset), and only
`get_docs` reads the texts into a dict (once, for reranking here). A copy of the collection in
another process (a cluster's worker, `reader`) keeps the offsets and reads its own shards. The
fingerprint reads only queries, qrels and a sample of the corpus file, so it is cheap and does not
depend on where the folder lies.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .. import lazy
from ..errors import BenchError, closest, where
from ..io import text_lines
from .base import MemoryCollection, batched, doc_text, select_queries

#: A byte offset of the corpus file is recorded every this many passages (a shard's read starts there).
OFFSET_STRIDE = 1024
LAYOUT = ("corpus.jsonl[.gz] ({\"_id\", \"title\", \"text\"} a line), queries.jsonl ({\"_id\", \"text\"} a line) "
          "and qrels/<split>.tsv (header query-id, corpus-id, score; tab-separated)")
QRELS_HEADER = ("query-id", "corpus-id", "score")


def _jsonl(path: Path):
    """(line number, object) for each non-blank line; a malformed line is a BenchError at file:line."""
    for lineno, line in text_lines(path):
        if line.strip():
            yield lineno, _json_object(line, path, lineno)


def _json_object(line: str | bytes, path: Path, lineno: int) -> dict:
    try:
        obj = json.loads(line)
    except UnicodeDecodeError as exc:
        raise BenchError(f"{where(path, lineno)}: not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise BenchError(f"{where(path, lineno)}: not valid JSON ({exc.msg}); each line must be one "
                         "JSON object") from None
    if not isinstance(obj, dict):
        raise BenchError(f"{where(path, lineno)}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _corpus_lines(path: Path, offset: int = 0, lineno: int = 1) -> Iterator[tuple[int, int, bytes]]:
    """(byte offset, line number, line) of each non-blank line from ``offset`` (the start of line
    ``lineno``) on; a .gz file's offsets are those of its decompressed bytes. A leading byte-order mark
    is dropped, as `text_lines` does."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
            fh.seek(offset)
            for line in fh:
                if offset == 0 and line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]
                    offset = 3
                if line.strip():
                    yield offset, lineno, line
                offset += len(line)
                lineno += 1
    except (EOFError, gzip.BadGzipFile) as exc:
        raise BenchError(f"{where(path, lineno)}: cannot read ({exc}); the file is cut short or not gzip") from None


def _passage(line: bytes, path: Path, lineno: int) -> tuple[str, str]:
    """(docid, model text) of one corpus line (`doc_text` of its title and text)."""
    obj = _json_object(line, path, lineno)
    return (_field(obj, "_id", path, lineno),
            doc_text(_field(obj, "title", path, lineno, required=False), _field(obj, "text", path, lineno)))


@dataclass(frozen=True)
class CorpusScan:
    """What one pass over a corpus file leaves: its passage count, and (byte offset, line number) of
    passages 0, OFFSET_STRIDE, 2 x OFFSET_STRIDE, ..."""

    n_docs: int
    offsets: tuple[tuple[int, int], ...]


def _field(obj: dict, key: str, path: Path, lineno: int, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise BenchError(f"{where(path, lineno)}: missing field {key!r} (BEIR layout: {LAYOUT})")
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "_id":
        return str(value)
    if not isinstance(value, str):
        raise BenchError(f"{where(path, lineno)}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def read_beir_qrels(path: Path) -> tuple[dict[str, dict[str, int]], dict[str, int], int]:
    """Qrels of one split: (qid -> docid -> relevance, docid -> first line, identical duplicate lines).

    BEIR's strict tab-separated form: a BEIR folder's own file is held to its layout, while
    `bench.runs.read_qrels` reads any qrels file (TREC or BEIR tsv) given on the command line.

    The header line is optional. A line with other than 3 tab-separated fields, a non-integer
    score, or the same (query, doc) judged twice with different scores is a BenchError at file:line.
    """
    qrels: dict[str, dict[str, int]] = {}
    doc_lines: dict[str, int] = {}
    first_line: dict[tuple[str, str], int] = {}
    duplicates = 0
    for lineno, line in text_lines(path):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("\t")
        if lineno == 1 and tuple(f.strip().lower() for f in fields) == QRELS_HEADER:
            continue
        if len(fields) != 3:
            raise BenchError(f"{where(path, lineno)}: expected 3 tab-separated fields (query-id, corpus-id, "
                             f"score), got {len(fields)}: {line[:80]!r}")
        qid, docid, score = (f.strip() for f in fields)
        try:
            rel = int(score)
        except ValueError:
            raise BenchError(f"{where(path, lineno)}: relevance {score!r} is not an integer "
                             "(BEIR qrels use 0, 1, 2...)") from None
        if not qid or not docid:
            raise BenchError(f"{where(path, lineno)}: empty query-id or corpus-id")
        judged = qrels.setdefault(qid, {})
        if docid in judged:
            if judged[docid] != rel:
                raise BenchError(f"{where(path, lineno)}: query {qid!r}, doc {docid!r} judged {rel} here but "
                                 f"{judged[docid]} on line {first_line[(qid, docid)]}; keep one judgement")
            duplicates += 1
            continue
        judged[docid] = rel
        first_line[(qid, docid)] = lineno
        doc_lines.setdefault(docid, lineno)
    return qrels, doc_lines, duplicates


def sampled_file_hash(path: Path, edge: int = 1 << 20, block: int = 1 << 16, n_blocks: int = 32) -> str:
    """sha256 of a file's size, first and last MiB and 32 evenly spaced 64 KiB blocks (whole file if small).

    Cheap on a 10 GB corpus (about 4 MiB read), and independent of the folder's path and mtimes.
    Any edit that changes the size, the ends or a sampled block changes it; an edit of the same
    length that falls between samples does not (recompressing a .gz file changes everything).
    """
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        if size <= 2 * edge + n_blocks * block:
            h.update(fh.read())
            return h.hexdigest()
        offsets = [0] + [edge + i * (size - 2 * edge - block) // (n_blocks - 1) for i in range(n_blocks)]
        for off in offsets:
            fh.seek(off)
            h.update(fh.read(edge if off == 0 else block))
        fh.seek(size - edge)
        h.update(fh.read(edge))
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class BeirCollection(MemoryCollection):
    """A BEIR-layout folder; only queries with qrels in the chosen split are kept."""

    source = "beir"

    def __init__(self, path: str | Path, split: str = "test", *, name: str | None = None,
                 language: str | None = None, max_queries: int | None = None):
        self.path = Path(path)
        self.split = split
        self.max_queries = max_queries
        self.name = name or f"{self.path.name}/{split}"
        self.language = language
        if not self.path.is_dir():
            parent = self.path.parent
            near = closest(self.path.name, [p.name for p in parent.iterdir() if p.is_dir()] if parent.is_dir() else [])
            raise BenchError(f"{self.path}: BEIR folder not found" + (f" (did you mean {str(parent / near)!r}?)" if near
                             else "") + f" (it must hold {LAYOUT})")
        self.corpus_path = self._corpus_file()
        self.queries_path = self.path / "queries.jsonl"
        if not self.queries_path.is_file():
            raise BenchError(f"{self.queries_path}: missing; a BEIR folder holds {LAYOUT}")
        self.qrels_path = self._qrels_file(split)

        all_qrels, self._qrels_doc_lines, self.qrels_duplicates = read_beir_qrels(self.qrels_path)
        all_queries: dict[str, str] = {}
        for lineno, obj in _jsonl(self.queries_path):
            qid = _field(obj, "_id", self.queries_path, lineno)
            if qid in all_queries:
                raise BenchError(f"{where(self.queries_path, lineno)}: query id {qid!r} appears twice")
            all_queries[qid] = _field(obj, "text", self.queries_path, lineno)
        missing = [q for q in all_qrels if q not in all_queries]
        if missing:
            raise BenchError(f"{self.qrels_path}: judges query id {missing[0]!r} (and {len(missing) - 1} more) that "
                             f"{self.queries_path.name} lacks; qrels and queries must come from the same collection")
        self.queries, self.qrels, self.selection_counts = select_queries(all_queries, all_qrels, max_queries)
        self._doc_dict: dict[str, str] | None = None
        self._corpus_scan: CorpusScan | None = None
        self._judged_seen = set(self._qrels_doc_lines)  # judged ids the scan has not met yet
        self._fingerprint_parts: dict[str, Any] | None = None

    # --- layout ------------------------------------------------------------------------------------
    def _corpus_file(self) -> Path:
        candidates = [self.path / "corpus.jsonl", self.path / "corpus.jsonl.gz"]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise BenchError(f"{self.path}: no corpus.jsonl or corpus.jsonl.gz; a BEIR folder holds {LAYOUT}")
        if len(found) > 1:
            raise BenchError(f"{self.path}: both corpus.jsonl and corpus.jsonl.gz exist; keep one so it is clear "
                             "which is read")
        return found[0]

    def available_splits(self) -> list[str]:
        return sorted(p.stem for p in (self.path / "qrels").glob("*.tsv"))

    def _qrels_file(self, split: str) -> Path:
        path = self.path / "qrels" / f"{split}.tsv"
        if not path.is_file():
            splits = self.available_splits()
            if not splits:
                raise BenchError(f"{self.path / 'qrels'}: no <split>.tsv files; a BEIR folder holds {LAYOUT}")
            raise BenchError(f"{path}: split {split!r} not found; available splits: {', '.join(splits)}")
        return path

    # --- documents ---------------------------------------------------------------------------------
    def _scan(self) -> CorpusScan:
        """One pass over the corpus file (once): every line checked (valid JSON, fields), ids unique,
        judged documents present; the count and the offsets recorded (`CorpusScan`)."""
        if self._corpus_scan is None:
            path, n, offsets = self.corpus_path, 0, []
            hashes = []  # 8 bytes of each id's hash: duplicates found without holding the ids
            for offset, lineno, line in lazy.tqdm.tqdm(_corpus_lines(path), desc=f"reading {self.path.name}/{path.name}",
                                                       unit=" docs", mininterval=2.0):
                if n % OFFSET_STRIDE == 0:
                    offsets.append((offset, lineno))
                docid, _ = _passage(line, path, lineno)
                hashes.append(int.from_bytes(hashlib.blake2b(docid.encode("utf-8"), digest_size=8).digest(), "big"))
                self._judged_seen.discard(docid)
                n += 1
            self._check_unique(np.array(hashes, dtype=np.uint64))
            for docid, lineno in self._qrels_doc_lines.items():
                if docid in self._judged_seen:
                    raise BenchError(f"{where(self.qrels_path, lineno)}: corpus-id {docid!r} is not in {path.name}; "
                                     "qrels and corpus must come from the same collection")
            self._corpus_scan = CorpusScan(n, tuple(offsets))
        return self._corpus_scan

    def _check_unique(self, hashes) -> None:
        """A BenchError at the second line of the first id that appears twice (hash collisions are
        told apart by reading the candidates' ids again)."""
        ordered = np.sort(hashes)
        twice = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
        if not twice:
            return
        first: dict[str, int] = {}
        for _, lineno, line in _corpus_lines(self.corpus_path):
            docid, _ = _passage(line, self.corpus_path, lineno)
            if int.from_bytes(hashlib.blake2b(docid.encode("utf-8"), digest_size=8).digest(), "big") in twice:
                if docid in first:
                    raise BenchError(f"{where(self.corpus_path, lineno)}: document id {docid!r} appears again (first "
                                     f"on line {first[docid]}); document ids must be unique")
                first[docid] = lineno

    def n_docs(self) -> int:
        return self._scan().n_docs

    def docs_range(self, start: int, stop: int) -> list[tuple[str, str]]:
        """Passages [start, stop), read from the offset recorded at or before ``start``."""
        scan = self._scan()
        stop = min(stop, scan.n_docs)
        if start >= stop:
            return []
        offset, lineno = scan.offsets[start // OFFSET_STRIDE]
        index, out = start // OFFSET_STRIDE * OFFSET_STRIDE, []
        for _, line_number, line in _corpus_lines(self.corpus_path, offset, lineno):
            if index >= start:
                out.append(_passage(line, self.corpus_path, line_number))
            index += 1
            if index >= stop:
                break
        return out

    def iter_docs(self, batch_size: int = 10_000) -> Iterator[list[tuple[str, str]]]:
        self._scan()  # the file is checked before the first batch
        lines = _corpus_lines(self.corpus_path)
        return batched((_passage(line, self.corpus_path, lineno) for _, lineno, line in lines), batch_size)

    def _docs(self) -> dict[str, str]:
        """docid -> text of the whole corpus, read on the first `get_docs` (reranking here)."""
        if self._doc_dict is None:
            self._doc_dict = dict(self.docs_range(0, self.n_docs()))
        return self._doc_dict

    def _absent(self, doc_ids: list[str]) -> list[str]:
        self._scan()  # a judged document the corpus lacks is an error here, so none is absent
        return []

    def __getstate__(self) -> dict:
        """Pickled without the texts `get_docs` read (`reader`): a copy reads them again from the file."""
        return {**self.__dict__, "_doc_dict": None}

    def reader(self) -> "BeirCollection":
        self._scan()  # the one pass happens here; the copies keep its offsets
        return self

    # --- identity ----------------------------------------------------------------------------------
    def _parts(self) -> dict[str, Any]:
        if self._fingerprint_parts is None:
            self._fingerprint_parts = {
                "corpus": {"format": "beir-folder", "file": self.corpus_path.name,
                           "sample_sha256": sampled_file_hash(self.corpus_path)},
                "selection": {"split": self.split, "max_queries": self.max_queries,
                              "queries_sha256": _sha256(self.queries_path), "qrels_sha256": _sha256(self.qrels_path)},
            }
        return self._fingerprint_parts

    def _identity(self) -> dict[str, Any]:
        return self._parts()["corpus"]

    def _selection(self) -> dict[str, Any]:
        return self._parts()["selection"]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.path), "split": self.split, "max_queries": self.max_queries,
                **self.selection_counts, "qrels_duplicate_lines": self.qrels_duplicates,
                "note": "only queries with qrels in this split are kept"}
