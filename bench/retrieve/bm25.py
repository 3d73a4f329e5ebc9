"""BM25 with bm25s: the lexical baseline every reranker paper reports.

Tokenisation is bm25s' own (lower-case, regex `\\w\\w+`, English stop words for English collections,
none otherwise, no stemming) and goes into the record, since BM25 numbers depend on it. Scoring is
bm25s' "lucene" variant with the given k1 and b.
"""

from __future__ import annotations

from typing import Iterable

from .. import lazy
from ..progress import verbose


def bm25_settings(language: str | None, k1: float, b: float) -> dict:
    return {"library": "bm25s", "method": "lucene", "k1": k1, "b": b, "lower": True,
            "token_pattern": r"(?u)\b\w\w+\b", "stopwords": "en" if language == "en" else None,
            "stemmer": None}


def bm25_top_k(doc_batches: Iterable[list[tuple[str, str]]], queries: dict[str, str], k: int, *,
               language: str | None, k1: float = 1.5, b: float = 0.75, progress: bool = True
               ) -> dict[str, list[tuple[str, float]]]:
    bm25s = lazy.bm25s
    settings = bm25_settings(language, k1, b)
    progress = progress and verbose()  # bm25s' own bars (tokenise, index, retrieve): only under --verbose
    ids: list[str] = []
    texts: list[str] = []
    for batch in doc_batches:
        for doc_id, text in batch:
            ids.append(doc_id)
            texts.append(text)
    stop = settings["stopwords"]
    corpus_tokens = bm25s.tokenize(texts, stopwords=stop, show_progress=progress)
    del texts
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index(corpus_tokens, show_progress=progress)
    qids = list(queries)
    query_tokens = bm25s.tokenize([queries[q] for q in qids], stopwords=stop, show_progress=False,
                                  return_ids=False)
    depth = min(k, len(ids))
    docs, scores = retriever.retrieve(query_tokens, k=depth, show_progress=progress)
    out = {}
    for row, qid in enumerate(qids):
        # Queries with no known term score 0 everywhere; keep only documents that matched.
        out[qid] = [(ids[int(d)], float(s)) for d, s in zip(docs[row], scores[row]) if s > 0]
    return out
