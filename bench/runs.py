"""TREC run and qrels files in and out, parsed strictly.

A wrong number of fields, a non-numeric score, a duplicate (query, document) pair or an empty file
is an error that names the file and line: a silently skipped line changes every metric after it.

The one ordering rule of the project lives here (`sort_ranking`): score descending, ties broken by
document id descending (plain string comparison). This is the order trec_eval gives a run
(``comp_sim_docno`` in its ``form_res_rels.c``: ``strcmp(docno2, docno1)``, byte order of UTF-8,
which is Python's code-point order), so a ranking written by the harness, evaluated by the harness
and evaluated by trec_eval are the same ranking.
"""

from __future__ import annotations

import math
import operator
import os
import re
from pathlib import Path

from . import lazy
from .errors import BenchError, where
from .io import atomic_write_text, text_lines

Qrels = dict[str, dict[str, int]]  # qid -> docid -> relevance (may be 0 or negative)
Run = dict[str, dict[str, float]]  # qid -> docid -> score

BEIR_HEADER = ("query-id", "corpus-id", "score")
_SCORE_THEN_DOCID = operator.itemgetter(1, 0)  # sorted(..., reverse=True): score desc, then docid desc


def sort_ranking(docs: dict[str, float]) -> list[tuple[str, float]]:
    """The ranking of one query: score descending, equal scores by docid descending (trec_eval's order).

    A NaN score has no place in an order, so it is an error rather than a random position.
    """
    for doc_id, score in docs.items():
        if score != score:  # NaN
            raise BenchError(f"document {doc_id!r} has score NaN; a ranking needs comparable scores")
    return sorted(docs.items(), key=_SCORE_THEN_DOCID, reverse=True)


def _lines(path: Path):
    """(line number, fields) for every non-blank line."""
    for lineno, line in text_lines(path):
        fields = line.split()
        if fields:
            yield lineno, fields


# ---------------------------------------------------------------------------------------------- qrels
def read_qrels(path: str | os.PathLike) -> Qrels:
    """Relevance judgments from TREC qrels (``qid iter docid rel``) or BEIR tsv (``query-id corpus-id
    score``, header line optional); the form is detected from the first line. Relevance must be an
    integer; 0 and negative values are kept (judged non-relevant; trec_eval treats negative as
    "in the pool but unjudged")."""
    path = Path(path)
    qrels: Qrels = {}
    width = None
    for lineno, fields in _lines(path):
        if width is None:
            width = len(fields)
            if tuple(f.lower() for f in fields) == BEIR_HEADER:
                continue
            if width not in (3, 4):
                raise BenchError(
                    f"{where(path, lineno)}: {width} fields; qrels lines are 'qid iter docid relevance' (TREC) "
                    f"or 'query-id corpus-id score' (BEIR tsv)")
        if len(fields) != width:
            form = "TREC qrels (qid iter docid relevance)" if width == 4 else "BEIR tsv (query-id corpus-id score)"
            raise BenchError(f"{where(path, lineno)}: {len(fields)} fields, but this file is {form} with {width}")
        qid, doc_id, rel_text = (fields[0], fields[2], fields[3]) if width == 4 else fields
        try:
            rel = int(rel_text)
        except ValueError:
            raise BenchError(f"{where(path, lineno)}: relevance {rel_text!r} is not an integer") from None
        docs = qrels.setdefault(qid, {})
        if doc_id in docs:
            raise BenchError(f"{where(path, lineno)}: duplicate judgment for query {qid!r}, document {doc_id!r}")
        docs[doc_id] = rel
    if not qrels:
        raise BenchError(f"{path}: empty qrels file (no judgments)")
    return qrels


def write_qrels(qrels: Qrels, path: str | os.PathLike) -> Path:
    """Write `qrels` atomically as TREC qrels (``qid 0 docid relevance``), which `read_qrels` and
    trec_eval read back."""
    for qid, docs in qrels.items():
        _check_ids([qid], "query id")
        _check_ids(docs, f"document id (query {qid!r})")
    text = "".join(f"{qid} 0 {doc_id} {int(rel)}\n" for qid, docs in qrels.items() for doc_id, rel in docs.items())
    return atomic_write_text(path, text)


# ------------------------------------------------------------------------------------------------ runs
def read_run(path: str | os.PathLike) -> Run:
    """A run from a TREC run file (``qid Q0 docid rank score tag``, optionally .gz), or from ranx's
    JSON / LZ4 / Parquet run files (chosen by extension: .json, .lz4, .parquet/.parq).

    The rank column is ignored, as trec_eval ignores it: the order comes from the scores (and
    `sort_ranking` for ties)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".json", ".lz4", ".parquet", ".parq"):
        return _read_ranx_run(path, suffix)
    run: Run = {}
    for lineno, fields in _lines(path):
        if len(fields) != 6:
            raise BenchError(f"{where(path, lineno)}: {len(fields)} fields; a TREC run line is "
                             f"'qid Q0 docid rank score tag' (6 fields separated by whitespace)")
        try:
            score = float(fields[4])
        except ValueError:
            raise BenchError(f"{where(path, lineno)}: score {fields[4]!r} is not a number") from None
        if score != score:
            raise BenchError(f"{where(path, lineno)}: score is NaN; a ranking needs comparable scores")
        docs = run.get(fields[0])
        if docs is None:
            docs = run[fields[0]] = {}
        if fields[2] in docs:
            first = next(n for n, f in _lines(path) if f[0] == fields[0] and f[2] == fields[2])
            raise BenchError(f"{where(path, lineno)}: duplicate document {fields[2]!r} for query {fields[0]!r} "
                             f"(first at line {first})")
        docs[fields[2]] = score
    if not run:
        raise BenchError(f"{path}: empty run file (no ranked documents)")
    return run


def _read_ranx_run(path: Path, suffix: str) -> Run:
    """ranx's own run files: JSON or LZ4 ``{qid: {docid: score}}``, Parquet with columns q_id, doc_id, score."""
    if not path.exists():
        raise BenchError(f"{path}: file not found")
    if suffix in (".json", ".lz4"):
        try:
            raw = lazy.ranx.io.load_json(str(path)) if suffix == ".json" else lazy.ranx.io.load_lz4(str(path))
        except Exception as exc:  # orjson / lz4 errors have no common base class
            raise BenchError(f"{path}: cannot read as a ranx {suffix[1:]} run ({exc})") from None
        if not isinstance(raw, dict):
            raise BenchError(f"{path}: a ranx run file holds an object {{qid: {{docid: score}}}}")
        run: Run = {}
        for qid, docs in raw.items():
            if not isinstance(docs, dict):
                raise BenchError(f"{path}: query {qid!r}: expected an object {{docid: score}}")
            run[str(qid)] = {str(d): _checked_score(s, path, f"query {qid!r}, document {d!r}") for d, s in docs.items()}
    else:
        try:
            df = lazy.pd.read_parquet(path)
        except Exception as exc:  # pyarrow / fastparquet raise their own types
            raise BenchError(f"{path}: cannot read as Parquet ({exc})") from None
        missing = {"q_id", "doc_id", "score"} - set(df.columns)
        if missing:
            raise BenchError(f"{path}: Parquet run needs columns q_id, doc_id, score (ranx's layout); missing {sorted(missing)}")
        run = {}
        for row, (qid, doc_id, score) in enumerate(zip(df["q_id"], df["doc_id"], df["score"]), start=1):
            docs = run.setdefault(str(qid), {})
            if str(doc_id) in docs:
                raise BenchError(f"{path}: row {row}: duplicate document {doc_id!r} for query {qid!r}")
            docs[str(doc_id)] = _checked_score(score, path, f"row {row}")
    if not any(run.values()):
        raise BenchError(f"{path}: empty run (no ranked documents)")
    return run


def _checked_score(value, path, place: str) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise BenchError(f"{path}: {place}: score {value!r} is not a number") from None
    if math.isnan(score):
        raise BenchError(f"{path}: {place}: score is NaN; a ranking needs comparable scores")
    return score


def format_run(run: Run, tag: str) -> str:
    """TREC run text: queries in the run's order, each ranked by `sort_ranking`, ranks 1..n.

    Scores are written as Python's shortest round-trip repr of the (float64 view of the) score, so
    reading the file back gives exactly the same numbers and hence the same order. A query with no
    documents has no line (TREC files cannot say "empty"); trec_eval -c scores it 0 either way."""
    if not tag or _WHITESPACE.search(tag):
        raise BenchError(f"run tag {tag!r}: must be non-empty without whitespace")
    out = []
    for qid, docs in run.items():
        _check_ids([qid], "query id")
        _check_ids(docs, f"document id (query {qid!r})")
        out.extend(f"{qid} Q0 {doc_id} {rank} {float(score)!r} {tag}\n"
                   for rank, (doc_id, score) in enumerate(sort_ranking(docs), start=1))
    return "".join(out)


def write_run(run: Run, path: str | os.PathLike, tag: str) -> Path:
    """Write `run` atomically as a TREC run file (see `format_run`)."""
    return atomic_write_text(path, format_run(run, tag))


_WHITESPACE = re.compile(r"\s")


def _check_ids(ids, what: str) -> None:
    """Ids must be non-empty strings without whitespace to survive a TREC file (checked in bulk: fast)."""
    try:
        if "" not in ids and not _WHITESPACE.search("".join(ids)):
            return
    except TypeError:  # an id that is not a string
        pass
    bad = next(i for i in ids if not isinstance(i, str) or not i or _WHITESPACE.search(i))
    raise BenchError(f"{what} {bad!r}: must be a non-empty string without whitespace to fit a TREC file")
