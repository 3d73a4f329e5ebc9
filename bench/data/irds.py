"""A collection named by an ir_datasets id, read through ir_datasets' own API.

Documents stay on disk: `iter_docs` streams `docs_iter()`, `get_docs` asks the docstore
(`docs_store().get_many`), so MS MARCO's 8.8M passages or MIRACL en's 32.9M never sit in a dict.
Queries and qrels (small) are read into memory.

ir_datasets downloads what its cache (``$IR_DATASETS_HOME``, default ``~/.ir_datasets``) lacks.
Before it does, `missing_downloads` walks the dataset's components to list the files still
missing; without them and without a network, loading fails at once with a message that lists the
files and the offline alternatives, instead of retrying downloads. With a network the download is
announced (files, sizes, target folder) and then left to ir_datasets.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .. import lazy
from ..errors import BenchError
from .base import Collection, batched, doc_text, select_queries

#: The 18 MIRACL languages (ISO 639-1), as ir_datasets registers them.
MIRACL_LANGUAGES = ("ar", "bn", "de", "en", "es", "fa", "fi", "fr", "hi", "id", "ja", "ko", "ru", "sw", "te", "th",
                    "yo", "zh")

OFFLINE_ALTERNATIVES = ("offline alternatives: put the files listed above at those paths (ir_datasets' "
                        "etc/downloads.json says where each comes from), or use a local folder in BEIR layout "
                        "(source = \"beir\", path = \"...\"; e.g. ../shared/data/miracl-yo-dev), or the project's "
                        "generated collection (source = \"synthetic\")")


@dataclass(frozen=True)
class MissingFile:
    """A file ir_datasets would have to fetch: where it goes, where from, how big (bytes; 0 if unknown)."""

    path: str
    urls: tuple[str, ...]
    instructions: str | None
    size: int

    def line(self) -> str:
        src = ", ".join(self.urls) or (self.instructions or "no source known")
        size = f" ({_size(self.size)})" if self.size else ""
        return f"  {self.path}{size} <- {src}"


def _size(n: int) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e9 else f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n / 1e3:,.0f} kB"


def _irds():
    try:
        return lazy.ir_datasets
    except ImportError:  # pragma: no cover
        raise BenchError("the ir_datasets package is not installed: pip install ir_datasets") from None


def missing_downloads(handler: Any) -> list[MissingFile]:
    """The downloads a dataset component still needs, found by walking its parts.

    A `Cache` or `Download` whose file exists is complete (its sources are not needed); a
    `Download` without one is missing, with its mirrors as sources. Only ir_datasets' own objects
    are walked.
    """
    util = _irds().util
    Cache, Download, LocalDownload = util.Cache, util.Download, util.LocalDownload
    found: dict[str, MissingFile] = {}
    seen: set[int] = set()

    def walk(obj: Any, target: Path | None) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Cache):
            if Path(obj._path).exists():
                return
            walk(obj._streamer, Path(obj._path))
        elif isinstance(obj, Download):
            path = obj._cache_path
            if path is not None and os.path.exists(path):
                return
            if any(isinstance(m, LocalDownload) and m._path.exists() for m in obj.mirrors):
                return
            urls = tuple(m.url for m in obj.mirrors if hasattr(m, "url"))
            notes = [m._message for m in obj.mirrors if isinstance(m, LocalDownload) and m._message]
            where_to = str(path if path is not None else target or "(a temporary file: ir_datasets does not keep it)")
            found.setdefault(where_to, MissingFile(where_to, urls, None if urls else (notes or [None])[0],
                                                   int(obj._size_hint or 0)))
        elif isinstance(obj, (list, tuple, set)):
            for x in obj:
                walk(x, target)
        elif isinstance(obj, dict):
            for x in obj.values():
                walk(x, target)
        elif type(obj).__module__.startswith("ir_datasets") and hasattr(obj, "__dict__"):
            for x in vars(obj).values():
                walk(x, target)

    walk(handler, None)
    return list(found.values())


def _reachable(url: str, timeout: float = 5.0) -> str | None:
    """None if a TCP connection to the URL's host (or the HTTPS proxy) opens, else why not."""
    from urllib.request import getproxies  # here: 40 ms to import, needed only before a download

    proxy = getproxies().get(urlparse(url).scheme or "https")
    target = urlparse(proxy if proxy else url)
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return None
    except OSError as exc:
        return f"{host}:{port}: {exc}"


def ensure_available(dataset_id: str, handlers: list[Any], *, download: bool) -> None:
    """Fail fast, listing the missing files, when ir_datasets would need a download it cannot make."""
    missing = [m for h in handlers for m in missing_downloads(h)]
    if not missing:
        return
    home = _irds().util.home_path()
    listing = "\n".join(m.line() for m in missing)
    head = f"ir_datasets id {dataset_id!r}: {len(missing)} file(s) are not in ir_datasets' cache ({home}):\n{listing}\n"
    if not download:
        raise BenchError(head + "downloads are switched off; " + OFFLINE_ALTERNATIVES)
    manual = [m for m in missing if not m.urls]
    if manual:
        raise BenchError(head + "these files cannot be downloaded automatically: "
                         + "; ".join(m.instructions or m.path for m in manual) + "\n" + OFFLINE_ALTERNATIVES)
    unreachable = {}
    for m in missing:
        why = [_reachable(u) for u in m.urls]
        if all(why):
            unreachable[m.path] = why[0]
    if unreachable:
        first = next(iter(unreachable.values()))
        raise BenchError(head + f"no network: cannot reach the download host ({first}), so they cannot be "
                         "downloaded; " + OFFLINE_ALTERNATIVES)
    total = sum(m.size for m in missing)
    print(f"ir_datasets will download {len(missing)} file(s) for {dataset_id!r}"
          f"{f' ({_size(total)})' if total else ''} into {home}", file=sys.stderr)


def check_id(dataset_id: str) -> None:
    """A BenchError listing what is known when an id is not registered in ir_datasets."""
    irds = _irds()
    parts = dataset_id.strip("/").split("/")
    if parts[0] == "miracl":
        if len(parts) < 2 or parts[1] not in MIRACL_LANGUAGES:
            lang = parts[1] if len(parts) > 1 else ""
            raise BenchError(f"ir_datasets id {dataset_id!r}: unknown MIRACL language {lang!r}; the 18 languages are "
                             f"{', '.join(MIRACL_LANGUAGES)} (ids look like miracl/yo/dev)")
    try:
        irds.registry[dataset_id]
        return
    except KeyError:
        pass
    known = sorted(irds.registry)
    family = [k for k in known if k.split("/")[0] == parts[0]]
    siblings = [k for k in family if k.startswith("/".join(parts[:-1]) + "/")] if len(parts) > 1 else []
    if siblings:
        listing = f"known ids under {'/'.join(parts[:-1])!r}: {', '.join(siblings)}"
    elif family:
        listing = f"known {parts[0]!r} ids: {', '.join(family[:60])}{' ...' if len(family) > 60 else ''}"
    else:
        families = sorted({k.split('/')[0] for k in known})
        listing = f"known dataset families: {', '.join(families)}"
    raise BenchError(f"unknown ir_datasets id {dataset_id!r}; {listing} (see https://ir-datasets.com)")


def _with_qrels_near(dataset_id: str) -> list[str]:
    """Registered ids below `dataset_id` that have qrels, else those beside it (same parent)."""
    below = _with_qrels_under(dataset_id)
    parent = dataset_id.rstrip("/").rpartition("/")[0]
    return below or (_with_qrels_under(parent) if parent else [])


def _with_qrels_under(prefix: str) -> list[str]:
    irds = _irds()
    out = []
    for k in sorted(irds.registry):
        if k.startswith(prefix.rstrip("/") + "/"):
            try:
                if irds.registry[k].has_qrels():
                    out.append(k)
            except Exception:  # noqa: BLE001 - a broken sibling must not hide the real message
                continue
    return out


def _doc_text_of(doc: Any) -> str:
    """doc_text for an ir_datasets document: its `title` and `text` fields, else its default_text()."""
    text = getattr(doc, "text", None)
    if text is None:
        return doc.default_text()
    return doc_text(getattr(doc, "title", None), text)


class IrDatasetsCollection(Collection):
    """A collection named by an ir_datasets id (``miracl/yo/dev``, ``msmarco-passage/dev/small``...)."""

    source = "ir_datasets"

    def __init__(self, dataset_id: str, *, name: str | None = None, language: str | None = None,
                 max_queries: int | None = None, download: bool = True):
        irds = _irds()
        check_id(dataset_id)
        self.id = dataset_id
        self.max_queries = max_queries
        self.download = download
        self.dataset = ds = irds.load(dataset_id)
        if not ds.has_docs():
            raise BenchError(f"ir_datasets id {dataset_id!r} has no documents; pick an id that has docs, queries "
                             "and qrels (see https://ir-datasets.com)")
        if not (ds.has_queries() and ds.has_qrels()):
            near = _with_qrels_near(dataset_id)
            hint = f"; ids with qrels: {', '.join(near)}" if near else ""
            raise BenchError(f"ir_datasets id {dataset_id!r} has no {'queries' if not ds.has_queries() else 'qrels'}"
                             f", so it cannot be scored{hint}")
        self.name = name or dataset_id
        self.docs_language = ds.docs_lang()
        self.queries_language = ds.queries_lang()
        own = self.queries_language or self.docs_language
        if language and own and language != own:
            raise BenchError(f"ir_datasets id {dataset_id!r} is in language {own!r} but the spec sets language = "
                             f"{language!r}; remove the field or set it to {own!r}")
        self.language = language or own

        ensure_available(dataset_id, [ds.queries_handler(), ds.qrels_handler(), ds.docs_handler()], download=download)
        queries = {}
        for q in ds.queries_iter():
            text = getattr(q, "text", None)
            queries[q.query_id] = text if text is not None else q.default_text()
        qrels: dict[str, dict[str, int]] = {}
        self.qrels_duplicates = 0
        for r in ds.qrels_iter():
            judged = qrels.setdefault(r.query_id, {})
            if r.doc_id in judged:
                if judged[r.doc_id] != r.relevance:
                    raise BenchError(f"ir_datasets id {dataset_id!r}: qrels judge query {r.query_id!r}, doc "
                                     f"{r.doc_id!r} twice ({judged[r.doc_id]} and {r.relevance}); cannot tell which holds")
                self.qrels_duplicates += 1
            judged[r.doc_id] = int(r.relevance)
        self.queries, self.qrels, self.selection_counts = select_queries(queries, qrels, max_queries)
        self._store = None
        self._n_docs: int | None = None

    # --- documents ---------------------------------------------------------------------------------
    def n_docs(self) -> int:
        if self._n_docs is None:
            n = self.dataset.docs_count()
            if n is None:  # no metadata for this corpus: count it once
                n = sum(1 for _ in self.dataset.docs_iter())
            self._n_docs = int(n)
        return self._n_docs

    def iter_docs(self, batch_size: int = 10_000) -> Iterator[list[tuple[str, str]]]:
        docs = lazy.tqdm.tqdm(self.dataset.docs_iter(), total=self.n_docs(), desc=f"reading {self.id} docs",
                              unit=" docs", mininterval=2.0)
        return batched(((doc.doc_id, _doc_text_of(doc)) for doc in docs), batch_size)

    def docs_range(self, start: int, stop: int) -> list[tuple[str, str]]:
        """ir_datasets' own slicing (``docs_iter()[start:stop]``: a docstore lookup by position where the
        dataset has one, built on first use)."""
        return [(doc.doc_id, _doc_text_of(doc)) for doc in self.dataset.docs_iter()[start:stop]]

    def _docstore(self):
        if self._store is None:  # ir_datasets builds it on first use (once, on disk)
            self._store = self.dataset.docs_store()
        return self._store

    def __getstate__(self) -> dict:
        """Pickled by id (`reader`): a copy in another process opens the dataset again there, from that
        machine's ir_datasets cache (``IR_DATASETS_HOME``)."""
        return {**self.__dict__, "dataset": None, "_store": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.dataset = _irds().load(self.id)

    def _absent(self, doc_ids: list[str]) -> list[str]:
        found = self._docstore().get_many(doc_ids)
        return [d for d in doc_ids if d not in found]

    def get_docs(self, doc_ids: Iterable[str]) -> dict[str, str]:
        ids = list(doc_ids)
        found = self._docstore().get_many(ids)
        missing = [d for d in ids if d not in found]
        if missing:
            raise BenchError(f"collection {self.name!r}: document id {missing[0]!r} is not in {self.id}'s corpus "
                             f"({len(missing)} unknown id(s)); a run file or cache from another collection?")
        return {d: _doc_text_of(found[d]) for d in ids}

    def scoreddocs(self, depth: int) -> dict[str, dict[str, float]]:
        """The dataset's own candidates (e.g. MS MARCO's official BM25 top-1000), top `depth` per kept query.

        Ranked by score, ties by doc id descending (trec_eval's order). MS MARCO's top-1000 files carry
        no scores (ir_datasets gives each 0.0), so cutting them below their full size would pick an
        arbitrary subset: that is an error, not a guess.
        """
        ds = self.dataset
        if not ds.has_scoreddocs():
            return super().scoreddocs(depth)
        ensure_available(self.id, [ds.scoreddocs_handler()], download=self.download)
        per_query: dict[str, list[tuple[float, str]]] = {q: [] for q in self.queries}
        for sd in ds.scoreddocs_iter():
            if sd.query_id in per_query:
                per_query[sd.query_id].append((float(sd.score), sd.doc_id))
        out: dict[str, dict[str, float]] = {}
        for qid, cands in per_query.items():
            cands.sort(key=lambda x: (x[0], x[1]), reverse=True)
            if len(cands) > depth and cands[0][0] == cands[-1][0]:
                raise BenchError(f"{self.id}: scoreddocs for query {qid!r} all have the same score ({cands[0][0]}), "
                                 f"so its top {depth} of {len(cands)} is undefined (MS MARCO's official top-1000 is "
                                 f"unranked); set the first stage's depth >= {len(cands)} to take every candidate")
            out[qid] = {d: s for s, d in cands[:depth]}
        return out

    # --- identity ----------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        irds = _irds()
        return {"ir_datasets_docs": irds.docs_parent_id(self.id), "ir_datasets_version": irds.__version__}

    def _selection(self) -> dict[str, Any]:
        return {"id": self.id, "max_queries": self.max_queries}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "id": self.id, "max_queries": self.max_queries,
                "docs_language": self.docs_language, "queries_language": self.queries_language,
                **self.selection_counts, "qrels_duplicates": self.qrels_duplicates,
                "note": "only queries with qrels are kept"}
