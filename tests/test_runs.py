"""TREC run/qrels IO: strict parsing with errors that name file and line, exact round trips."""

from __future__ import annotations

import gzip
import random

import pytest

from bench.errors import BenchError
from bench.runs import format_run, read_qrels, read_run, sort_ranking, write_run


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_sort_ranking_breaks_ties_by_docid_descending():
    docs = {"d1": 0.5, "d10": 0.5, "d2": 0.5, "a": 0.9, "z": 0.1}
    assert [d for d, _ in sort_ranking(docs)] == ["a", "d2", "d10", "d1", "z"]


def test_sort_ranking_rejects_nan():
    with pytest.raises(BenchError, match="NaN"):
        sort_ranking({"d1": float("nan")})


def test_write_then_read_run_round_trips_scores_and_order(tmp_path):
    import numpy as np

    rng = random.Random(3)
    run = {f"q{i}": {f"d{j}": float(np.float32(rng.choice([0.1, 0.2, rng.random()]))) for j in range(30)} for i in range(5)}
    run["q9"] = {}  # no documents: no line
    path = write_run(run, tmp_path / "out" / "run.trec", tag="sys-a")
    back = read_run(path)
    assert back == {q: d for q, d in run.items() if d}
    lines = path.read_text().splitlines()
    q0 = [line.split() for line in lines if line.startswith("q0 ")]
    assert [int(f[3]) for f in q0] == list(range(1, 31))
    assert [f[2] for f in q0] == [d for d, _ in sort_ranking(run["q0"])]
    assert {f[5] for f in q0} == {"sys-a"}


def test_write_run_rejects_whitespace_in_ids_and_tag(tmp_path):
    with pytest.raises(BenchError, match="tag"):
        write_run({"q1": {"d1": 1.0}}, tmp_path / "r.trec", tag="my tag")
    with pytest.raises(BenchError, match="document id"):
        format_run({"q1": {"d 1": 1.0}}, tag="t")


@pytest.mark.parametrize("text, message", [
    ("q1 Q0 d1 1 0.5 tag\nq1 Q0 d2 2 0.4\n", r"run\.trec:2: 5 fields"),
    ("q1 Q0 d1 1 0.5 tag\nq1 Q0 d2 2 high tag\n", r"run\.trec:2: score 'high' is not a number"),
    ("q1 Q0 d1 1 0.5 tag\nq2 Q0 d1 1 0.5 tag\nq1 Q0 d1 3 0.1 tag\n", r"run\.trec:3: duplicate document 'd1' for query 'q1' \(first at line 1\)"),
    ("", r"run\.trec: empty run file"),
    ("\n\n", r"run\.trec: empty run file"),
    ("q1 Q0 d1 1 nan tag\n", r"run\.trec:1: score is NaN"),
])
def test_read_run_errors_name_file_and_line(tmp_path, text, message):
    path = _write(tmp_path, "run.trec", text)
    with pytest.raises(BenchError, match=message):
        read_run(path)


def test_read_run_missing_file(tmp_path):
    with pytest.raises(BenchError, match="file not found"):
        read_run(tmp_path / "nope.trec")


def test_read_run_gzip_and_rank_column_ignored(tmp_path):
    path = tmp_path / "run.trec.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("q1 Q0 d1 7 0.5 t\nq1 Q0 d2 1 0.9 t\n")
    assert read_run(path) == {"q1": {"d1": 0.5, "d2": 0.9}}


def test_read_run_ranx_json_and_parquet(tmp_path):
    from ranx.io import save_json  # what ranx's Run.save uses for .json (building a ranx.Run is slow)

    run = {"q1": {"d1": 0.5, "d2": 0.25}, "q2": {"d3": 1.0}}
    save_json(run, str(tmp_path / "run.json"))
    assert read_run(tmp_path / "run.json") == run
    import pandas as pd

    pd.DataFrame({"q_id": ["q1", "q1", "q2"], "doc_id": ["d1", "d2", "d3"], "score": [0.5, 0.25, 1.0]}).to_parquet(tmp_path / "run.parquet")
    assert read_run(tmp_path / "run.parquet") == run
    pd.DataFrame({"qid": ["q1"], "docno": ["d1"], "score": [0.5]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(BenchError, match="needs columns q_id, doc_id, score"):
        read_run(tmp_path / "bad.parquet")


def test_read_qrels_trec_and_beir_give_the_same(tmp_path):
    trec = _write(tmp_path, "qrels.txt", "q1 0 d1 2\nq1 0 d2 0\nq2 Q0 d3 -1\nq2 0 d4 1\n")
    beir = _write(tmp_path, "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq2\td3\t-1\nq2\td4\t1\n")
    expected = {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": -1, "d4": 1}}
    assert read_qrels(trec) == expected
    assert read_qrels(beir) == expected


@pytest.mark.parametrize("text, message", [
    ("q1 0 d1 1\nq1 0 d2\n", r"qrels\.txt:2: 3 fields, but this file is TREC qrels"),
    ("q1 0 d1 1\nq1 0 d2 yes\n", r"qrels\.txt:2: relevance 'yes' is not an integer"),
    ("q1 0 d1 1\nq1 0 d1 2\n", r"qrels\.txt:2: duplicate judgment for query 'q1', document 'd1'"),
    ("q1 d1\n", r"qrels\.txt:1: 2 fields"),
    ("", r"qrels\.txt: empty qrels file"),
    ("query-id\tcorpus-id\tscore\n", r"qrels\.txt: empty qrels file"),
])
def test_read_qrels_errors_name_file_and_line(tmp_path, text, message):
    path = _write(tmp_path, "qrels.txt", text)
    with pytest.raises(BenchError, match=message):
        read_qrels(path)


def test_read_shared_miracl_qrels(shared_data):
    qrels = read_qrels(shared_data / "miracl-yo-dev" / "qrels" / "dev.tsv")
    assert len(qrels) == 119
    assert sum(len(d) for d in qrels.values()) == 1188
    assert {r for d in qrels.values() for r in d.values()} == {0, 1}
