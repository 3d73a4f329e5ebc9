"""What every collection offers, and the rules all sources share.

A `Collection` serves one collection's texts and judgements to the pipeline: queries and qrels as
small dicts, documents by streaming (`iter_docs`, to encode a corpus) and by id (`get_docs`, to
rerank candidates). The sources differ only in where documents live (a docstore on disk, a dict in
memory), so each source is one subclass.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import BenchError


def doc_text(title: str | None, text: str) -> str:
    """The project's one rule for turning a passage into the text models see.

    With a title: ``f"{title} {text}".strip()`` (so an empty title adds nothing); without one (None):
    the text as is. This is exactly what FlagEmbedding's evaluation does for bge-m3 and the BGE
    rerankers (``FlagEmbedding/abc/evaluation/searcher.py``, dense search and reranking alike) and
    what ir_datasets' ``MiraclDoc.default_text`` gives, so published MIRACL and BEIR numbers are
    comparable with ours.
    """
    if title is None:
        return text
    return f"{title} {text}".strip()


#: Bumped whenever `doc_text` changes, so caches of encoded documents are rebuilt.
TEXT_RULE_VERSION = 1

_DIGITS = re.compile(r"(\d+)")


def natural_key(qid: str) -> tuple:
    """Sort key that orders ids the way people count: "2" < "10", "q9" < "q10", "10020#0" < "10020#1".

    Digit runs compare as numbers, the rest as text; the original string breaks any remaining tie.
    `max_queries` keeps the first N queries in this order.
    """
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in _DIGITS.split(qid) if p)
    return parts, qid


def select_queries(queries: dict[str, str], qrels: dict[str, dict[str, int]],
                   max_queries: int | None) -> tuple[dict[str, str], dict[str, dict[str, int]], dict[str, int]]:
    """Keep the queries that have qrels, sorted by `natural_key`, then the first `max_queries`.

    Queries without judgements cannot be scored, and trec_eval ignores them too; keeping them would
    only cost reranking time. Returns (queries, qrels, counts) where counts says how many queries
    each step dropped, for `describe()`.
    """
    judged = sorted((q for q in queries if q in qrels), key=natural_key)
    counts = {"queries_in_source": len(queries), "queries_without_qrels": len(queries) - len(judged)}
    kept = judged[:max_queries] if max_queries else judged
    counts["queries_cut_by_max_queries"] = len(judged) - len(kept)
    return {q: queries[q] for q in kept}, {q: qrels[q] for q in kept}, counts


def stable_hash(obj: Any) -> str:
    """sha256 of a JSON value with sorted keys: the same content gives the same hex digest anywhere."""
    data = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def batched(pairs: Iterable[tuple[str, str]], batch_size: int) -> Iterator[list[tuple[str, str]]]:
    """Lists of `batch_size` (docid, text) pairs (the last one shorter), in the input's order."""
    if batch_size <= 0:
        raise BenchError(f"iter_docs: batch_size must be positive, got {batch_size}")
    batch: list[tuple[str, str]] = []
    for item in pairs:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


class Collection:
    """One collection: queries and qrels in memory, documents behind `iter_docs` / `get_docs`.

    Subclasses set the four attributes in their constructor and implement the document access and
    `_identity()` (what the fingerprints hash). ``queries`` holds only judged queries, in
    `natural_key` order, after ``max_queries``; ``qrels`` only theirs.
    """

    source: str = "?"
    name: str
    language: str | None
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    _judged_missing: list[str] | None = None  # set by judged_docs_missing()

    # --- documents -------------------------------------------------------------------------------
    def n_docs(self) -> int:
        raise NotImplementedError

    def iter_docs(self, batch_size: int = 10_000) -> Iterator[list[tuple[str, str]]]:
        """Batches of (docid, text) in a fixed, repeatable order (the source's own order)."""
        raise NotImplementedError

    def get_docs(self, doc_ids: Iterable[str]) -> dict[str, str]:
        """docid -> text for reranking; an id the corpus lacks is a BenchError naming it."""
        raise NotImplementedError

    def docs_range(self, start: int, stop: int) -> list[tuple[str, str]]:
        """(docid, text) of passages ``start`` to ``stop - 1`` in corpus order (`iter_docs`'s order):
        one shard of the corpus, read by itself."""
        out: list[tuple[str, str]] = []
        seen = 0
        for batch in self.iter_docs():
            if seen + len(batch) > start:
                out.extend(batch[max(0, start - seen):stop - seen])
            seen += len(batch)
            if seen >= stop:
                break
        return out

    def reader(self) -> "Collection":
        """This collection as another process reads its passages (a cluster's workers: `docs_range` for a
        shard to encode, `get_docs` for a block to rerank). It is the collection itself: each source
        pickles without what it read into memory (`__getstate__`) and reads it again, from the source,
        where it is unpickled; call this in the process that loaded the collection, where any one-time
        pass over the source happens (the BEIR folder's offsets)."""
        return self

    def judged_docs_missing(self) -> list[str]:
        """Judged document ids the corpus lacks, in qrels order (computed once). They stay in the
        evaluation, as trec_eval keeps them: a relevant one no system can retrieve caps Recall below 1.
        ``describe()`` reports their count once this has run."""
        if self._judged_missing is None:
            judged = list(dict.fromkeys(d for docs in self.qrels.values() for d in docs))
            self._judged_missing = self._absent(judged)
        return self._judged_missing

    def _absent(self, doc_ids: list[str]) -> list[str]:
        """Which of ``doc_ids`` the corpus lacks."""
        raise NotImplementedError

    def empty_queries(self) -> list[str]:
        """Ids of queries whose text is empty (or only white space)."""
        return [qid for qid, text in self.queries.items() if not text.strip()]

    def empty_docs(self) -> list[str]:
        """Ids of passages with neither title nor text (one pass over the corpus)."""
        return [doc_id for batch in self.iter_docs() for doc_id, text in batch if not text.strip()]

    def scoreddocs(self, depth: int) -> dict[str, dict[str, float]]:
        """A source's own first-stage ranking (ir_datasets scoreddocs); most sources have none."""
        raise BenchError(f"collection {self.name!r} ({self.source}) has no scoreddocs; use a first stage of "
                         "kind 'dense', 'bm25' or 'run' for it")

    # --- identity ----------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        """Everything that decides the corpus content (cheap to compute; no full corpus read)."""
        raise NotImplementedError

    def _selection(self) -> dict[str, Any]:
        """Everything else that decides queries and qrels (split, max_queries, content hashes)."""
        raise NotImplementedError

    def corpus_fingerprint(self) -> str:
        """Stable hash of the corpus alone: the key for corpus embeddings and indexes, which do not
        change when the split or ``max_queries`` does."""
        return stable_hash({"corpus": self._identity(), "text_rule": TEXT_RULE_VERSION})[:16]

    def fingerprint(self) -> str:
        """Stable hash of corpus, queries and qrels: the key for runs and results."""
        return stable_hash({"corpus": self._identity(), "text_rule": TEXT_RULE_VERSION,
                            "selection": self._selection()})[:16]

    def n_qrels(self) -> int:
        return sum(len(d) for d in self.qrels.values())

    def describe(self) -> dict[str, Any]:
        """What a result record says about its collection."""
        out = {"name": self.name, "source": self.source, "language": self.language,
               "n_queries": len(self.queries), "n_docs": self.n_docs(), "n_qrels": self.n_qrels(),
               "fingerprint": self.fingerprint(), "corpus_fingerprint": self.corpus_fingerprint()}
        missing = self._judged_missing
        if missing is not None:
            out["judged_docs_missing"] = len(missing)
            if missing:
                out["judged_docs_missing_examples"] = missing[:5]
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, language={self.language!r}, n_queries={len(self.queries)})"


class MemoryCollection(Collection):
    """A collection whose documents sit in a dict (docid -> model text), in corpus order.

    Used for BEIR folders (loaded on first use) and the synthetic generator. Fine up to a few
    million passages (MS MARCO's 8.8M as a folder needs ~6 GB of RAM; use its ir_datasets id).
    """

    def _docs(self) -> dict[str, str]:
        raise NotImplementedError

    def n_docs(self) -> int:
        return len(self._docs())

    def iter_docs(self, batch_size: int = 10_000) -> Iterator[list[tuple[str, str]]]:
        return batched(self._docs().items(), batch_size)

    def docs_range(self, start: int, stop: int) -> list[tuple[str, str]]:
        return list(itertools.islice(self._docs().items(), start, stop))

    def _absent(self, doc_ids: list[str]) -> list[str]:
        docs = self._docs()
        return [d for d in doc_ids if d not in docs]

    def get_docs(self, doc_ids: Iterable[str]) -> dict[str, str]:
        docs = self._docs()
        out = {}
        for d in doc_ids:
            try:
                out[d] = docs[d]
            except KeyError:
                raise BenchError(f"collection {self.name!r}: document id {d!r} is not in the corpus "
                                 "(a run file or cache from another collection?)") from None
        return out
