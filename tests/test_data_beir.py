"""BEIR-layout folders: the real shared collections, and every kind of bad input."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from bench.config import CollectionSpec
from bench.data import doc_text, load_collection, natural_key
from bench.data.beir import BeirCollection, sampled_file_hash
from bench.errors import BenchError


def beir(path, split="test", **kw):
    return load_collection(CollectionSpec(source="beir", path=str(path), split=split, **kw))


@pytest.fixture(scope="module")
def yo(shared_data):
    return beir(shared_data / "miracl-yo-dev", "dev", language="yo")


def test_miracl_yo_counts_and_items(yo):
    assert (len(yo.queries), yo.n_qrels(), yo.n_docs()) == (119, 1188, 49043)
    assert yo.name == "miracl-yo-dev/dev" and yo.language == "yo"
    assert yo.queries["10020#0"] == "Odun wo ni wọn ṣe idije Olympiiki akọkọ?"
    assert yo.qrels["10020#0"]["10020#1"] == 1 and yo.qrels["10020#0"]["10020#0"] == 0
    # title "A" + text, joined by one space (doc_text)
    assert yo.get_docs(["598#1"]) == {"598#1": "A a (1A) kan: I gave him a dog. (Mo fun un ní ajá kan)."}
    d = yo.describe()
    assert d["n_docs"] == 49043 and d["n_queries"] == 119 and d["split"] == "dev" and d["queries_without_qrels"] == 0


def test_miracl_yo_iter_docs_order_and_batches(yo):
    batches = list(yo.iter_docs(batch_size=10_000))
    assert [len(b) for b in batches] == [10_000] * 4 + [9043]
    ids = [d for b in batches for d, _ in b]
    assert ids[:2] == ["598#0", "598#1"] and ids[-1] == "71570#11"
    assert len(set(ids)) == 49043
    assert [d for b in yo.iter_docs(batch_size=7000) for d, _ in b] == ids  # repeatable, batch-size independent
    assert batches[-1][-1] == ("71570#11", "Federal University of Technology • Uche Jombo Rodriguez")


def test_vaswani_counts_and_items(shared_data):
    c = beir(shared_data / "vaswani", "test")
    assert (len(c.queries), c.n_qrels(), c.n_docs()) == (93, 2083, 11429)
    assert list(c.queries)[:3] == ["1", "2", "3"]  # natural order, not "1", "10", "11"
    assert c.queries["1"] == "MEASUREMENT OF DIELECTRIC CONSTANT OF LIQUIDS BY THE USE OF MICROWAVE TECHNIQUES"
    assert c.qrels["1"]["1239"] == 1 and len(c.qrels["1"]) == 19
    # empty title: the text alone, no leading space
    assert c.get_docs(["1"])["1"].startswith("compact memories have flexible capacities")
    with pytest.raises(BenchError, match="'nope'"):
        c.get_docs(["1", "nope"])


def test_max_queries_keeps_first_in_natural_order(shared_data):
    c = beir(shared_data / "vaswani", "test", max_queries=10)
    assert list(c.queries) == [str(i) for i in range(1, 11)]
    assert set(c.qrels) == set(c.queries)
    assert c.describe()["queries_cut_by_max_queries"] == 83
    full = beir(shared_data / "vaswani", "test")
    assert c.fingerprint() != full.fingerprint() and c.corpus_fingerprint() == full.corpus_fingerprint()


def test_doc_text_rule():
    assert doc_text("Title", "body") == "Title body"
    assert doc_text("", "body") == "body"
    assert doc_text(None, " body ") == " body "
    assert sorted(["10", "9", "2#1", "2#0", "q10", "q9"], key=natural_key) == ["2#0", "2#1", "9", "10", "q9", "q10"]


# --- fingerprints -------------------------------------------------------------------------------------


def test_fingerprint_survives_a_move_and_sees_edits(shared_data, tmp_path):
    src = shared_data / "vaswani"
    moved = tmp_path / "elsewhere" / "vaswani"
    shutil.copytree(src, moved)
    a, b = beir(src), beir(moved)
    assert a.fingerprint() == b.fingerprint() and a.corpus_fingerprint() == b.corpus_fingerprint()

    (moved / "qrels" / "test.tsv").chmod(0o644)
    with open(moved / "qrels" / "test.tsv", "a") as fh:
        fh.write("1\t2\t1\n")
    c = beir(moved)
    assert c.fingerprint() != a.fingerprint() and c.corpus_fingerprint() == a.corpus_fingerprint()

    corpus = moved / "corpus.jsonl.gz"
    corpus.chmod(0o644)
    lines = gzip.open(corpus, "rt", encoding="utf-8").read().splitlines()
    lines[5000] = lines[5000].replace("the", "teh", 1)  # same length, middle of the file
    with gzip.open(corpus, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    assert beir(moved).corpus_fingerprint() != a.corpus_fingerprint()


def test_sampled_hash_sees_a_sampled_block(tmp_path):
    big = tmp_path / "big.bin"
    data = bytearray(b"x" * (8 << 20))
    big.write_bytes(data)
    h0 = sampled_file_hash(big)
    data[-5] = ord("y")  # inside the last MiB
    big.write_bytes(data)
    assert sampled_file_hash(big) != h0



@pytest.mark.parametrize("gz", [False, True])
def test_a_shard_is_read_from_its_recorded_offset(tmp_path, monkeypatch, gz):
    """`docs_range` seeks to the byte offset the one scan recorded at or before its start (every 4
    passages here) and reads what a whole pass reads: blank lines, a byte-order mark and non-ASCII
    text included, plain or gzip. A pickled copy (a cluster worker's) keeps the offsets, not the texts."""
    import pickle

    from bench.data import beir as beir_mod

    monkeypatch.setattr(beir_mod, "OFFSET_STRIDE", 4)
    corpus = [{"_id": f"d{i}", "title": f"Títle {i}", "text": "ọ̀rọ̀ " * (i % 5)} for i in range(23)]
    corpus[5:5] = ["", "   "]  # blank lines are not passages
    root = make_folder(tmp_path / "f", corpus=corpus, gz=gz)
    path = root / ("corpus.jsonl.gz" if gz else "corpus.jsonl")
    data = (gzip.decompress(path.read_bytes()) if gz else path.read_bytes())
    data = b"\xef\xbb\xbf" + data
    path.write_bytes(gzip.compress(data) if gz else data)
    c = beir(root)
    expected = [(f"d{i}", doc_text(f"Títle {i}", "ọ̀rọ̀ " * (i % 5))) for i in range(23)]
    assert [pair for batch in c.iter_docs(batch_size=5) for pair in batch] == expected and c.n_docs() == 23
    assert len(c._scan().offsets) == 6 and c._doc_dict is None  # counting and iterating hold no texts
    for start, stop in ((0, 23), (3, 9), (4, 8), (7, 30), (22, 23), (23, 30)):
        assert c.docs_range(start, stop) == expected[start:stop], (start, stop)
    copy = pickle.loads(pickle.dumps(c.reader()))
    assert copy._doc_dict is None and copy.docs_range(9, 17) == expected[9:17]
    assert copy.get_docs(["d22", "d0"]) == {"d22": expected[22][1], "d0": expected[0][1]}


# --- bad input ---------------------------------------------------------------------------------------


def make_folder(root: Path, corpus=None, queries=None, qrels=None, split="test", gz=False) -> Path:
    corpus = corpus if corpus is not None else [{"_id": "d1", "title": "T", "text": "one"},
                                                 {"_id": "d2", "title": "", "text": "two"}]
    queries = queries if queries is not None else [{"_id": "q1", "text": "first?"}, {"_id": "q2", "text": "other?"}]
    qrels = qrels if qrels is not None else "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n"
    root.mkdir(parents=True, exist_ok=True)
    text = "".join((c if isinstance(c, str) else json.dumps(c)) + "\n" for c in corpus)
    if gz:
        with gzip.open(root / "corpus.jsonl.gz", "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        (root / "corpus.jsonl").write_text(text, encoding="utf-8")
    (root / "queries.jsonl").write_text("".join((q if isinstance(q, str) else json.dumps(q)) + "\n" for q in queries),
                                        encoding="utf-8")
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / f"{split}.tsv").write_text(qrels, encoding="utf-8")
    return root


def test_small_folder_drops_unjudged_queries(tmp_path):
    c = beir(make_folder(tmp_path / "f", gz=True))
    assert c.queries == {"q1": "first?"} and c.qrels == {"q1": {"d1": 1, "d2": 0}}
    assert c.get_docs(["d1", "d2"]) == {"d1": "T one", "d2": "two"}
    assert c.describe()["queries_without_qrels"] == 1


@pytest.mark.parametrize("kw, expected", [
    (dict(corpus=["{\"_id\": \"d1\", \"text\": \"one\"}", "{not json"]), r"corpus.jsonl:2: not valid JSON"),
    (dict(corpus=[{"_id": "d1", "text": "a"}, {"_id": "d2", "text": "b"}, {"_id": "d1", "text": "c"}]),
     r"corpus.jsonl:3: document id 'd1' appears again \(first on line 1\)"),
    (dict(corpus=[{"_id": "d1", "text": "a"}, {"title": "x", "text": "b"}]), r"corpus.jsonl:2: missing field '_id'"),
    (dict(qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td9\t1\n"),
     r"qrels/test.tsv:3: corpus-id 'd9' is not in corpus.jsonl"),
])
def test_corpus_errors_name_file_and_line(tmp_path, kw, expected):
    c = beir(make_folder(tmp_path / "f", **kw))
    with pytest.raises(BenchError, match=expected):
        c.n_docs()


@pytest.mark.parametrize("kw, expected", [
    (dict(qrels="query-id\tcorpus-id\tscore\nq1 d1 1\n"), r"test.tsv:2: expected 3 tab-separated fields"),
    (dict(qrels="query-id\tcorpus-id\tscore\nq1\td1\thigh\n"), r"test.tsv:2: relevance 'high' is not an integer"),
    (dict(qrels="q1\td1\t1\nq1\td1\t2\n"), r"test.tsv:2: query 'q1', doc 'd1' judged 2 here but 1 on line 1"),
    (dict(qrels="q7\td1\t1\n"), r"judges query id 'q7'"),
    (dict(queries=[{"_id": "q1", "text": "a"}, "[1, 2]"]), r"queries.jsonl:2: expected a JSON object"),
    (dict(queries=[{"_id": "q1", "text": 5}]), r"queries.jsonl:1: field 'text' must be a string"),
])
def test_queries_and_qrels_errors_name_file_and_line(tmp_path, kw, expected):
    with pytest.raises(BenchError, match=expected):
        beir(make_folder(tmp_path / "f", **kw))


def test_missing_files_and_unknown_split(tmp_path):
    with pytest.raises(BenchError, match="BEIR folder not found"):
        beir(tmp_path / "nowhere")
    folder = make_folder(tmp_path / "f", split="dev")
    with pytest.raises(BenchError, match=r"split 'test' not found; available splits: dev"):
        beir(folder, "test")
    (folder / "queries.jsonl").unlink()
    with pytest.raises(BenchError, match=r"queries.jsonl: missing; a BEIR folder holds"):
        beir(folder, "dev")
    folder = make_folder(tmp_path / "g")
    (folder / "corpus.jsonl").unlink()
    with pytest.raises(BenchError, match=r"no corpus.jsonl or corpus.jsonl.gz"):
        beir(folder)


def test_identical_duplicate_qrels_are_counted(tmp_path):
    c = BeirCollection(make_folder(tmp_path / "f", qrels="q1\td1\t1\nq1\td1\t1\n"))
    assert c.qrels == {"q1": {"d1": 1}} and c.qrels_duplicates == 1
