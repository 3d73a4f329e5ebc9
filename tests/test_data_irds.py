"""ir_datasets ids through ir_datasets' own code, offline.

ir_datasets reads IR_DATASETS_HOME when it is imported, so every check runs in a subprocess with a
temporary IR_DATASETS_HOME (and HOME), laid out the way ir_datasets' cache is (see
../shared/data/README.md); the user's own ~/.ir_datasets is never touched.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.config import CollectionSpec
from bench.data import load_collection


def run_irds(home: Path, code: str) -> dict:
    """Run `code` (which sets `out`) in a fresh interpreter with IR_DATASETS_HOME=home; return `out`."""
    env = {**os.environ, "IR_DATASETS_HOME": str(home), "HOME": str(home.parent / "home"),
           "IR_DATASETS_SKIP_DISK_FREE": "true", "IR_DATASETS_DL_DISABLE_PBAR": "true"}
    script = ("import json\nfrom bench.config import CollectionSpec\nfrom bench.data import load_collection\n"
              "from bench.errors import BenchError\nout = {}\n" + textwrap.dedent(code)
              + "\nprint('RESULT ' + json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def docs_digest(collection) -> str:
    h = hashlib.sha256()
    for batch in collection.iter_docs(batch_size=5000):
        for docid, text in batch:
            h.update(f"{docid}\t{text}\n".encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def miracl_home(shared_data, tmp_path_factory) -> Path:
    """../shared/data/miracl-yo-dev laid out as ir_datasets' cache for miracl/yo/dev."""
    home = tmp_path_factory.mktemp("irds") / "ir_datasets"
    base = home / "miracl" / "v1.0" / "yo"
    (base / "docs").mkdir(parents=True)
    (base / "dev").mkdir()
    src = shared_data / "miracl-yo-dev"
    with gzip.open(src / "corpus.jsonl.gz", "rt", encoding="utf-8") as fi, \
            gzip.open(base / "docs" / "docs-1.jsonl.gz", "wt", encoding="utf-8") as fo:
        for line in fi:
            d = json.loads(line)
            fo.write(json.dumps({"docid": d["_id"], "title": d["title"], "text": d["text"]}, ensure_ascii=False) + "\n")
    with open(src / "queries.jsonl", encoding="utf-8") as fi, open(base / "dev" / "topics.tsv", "w", encoding="utf-8") as fo:
        for line in fi:
            q = json.loads(line)
            fo.write(f"{q['_id']}\t{q['text']}\n")
    with open(src / "qrels" / "dev.tsv", encoding="utf-8") as fi, open(base / "dev" / "qrels.tsv", "w") as fo:
        next(fi)
        for line in fi:
            qid, docid, rel = line.rstrip("\n").split("\t")
            fo.write(f"{qid} Q0 {docid} {rel}\n")
    return home


def test_miracl_yo_dev_by_id_matches_the_beir_folder(miracl_home, shared_data):
    out = run_irds(miracl_home, """
        import hashlib
        c = load_collection(CollectionSpec(source="ir_datasets", id="miracl/yo/dev"), download=False)
        out["describe"] = c.describe()
        out["query"] = c.queries["10020#0"]
        out["qrels"] = c.qrels["10020#0"]
        out["docs"] = c.get_docs(["598#1", "71570#11"])
        h, every = hashlib.sha256(), []
        for batch in c.iter_docs(batch_size=5000):
            for docid, text in batch:
                h.update(f"{docid}\\t{text}\\n".encode())
                every.append([docid, text])
        out["digest"] = h.hexdigest()
        import pickle
        copy = pickle.loads(pickle.dumps(c.reader()))  # as a cluster worker gets it: by id, read there
        out["ranges"] = [[list(p) for p in copy.docs_range(30000, 30004)], every[30000:30004],
                         [list(p) for p in c.docs_range(49040, 49100)], every[49040:],
                         copy.get_docs(["598#1"])]
        try:
            c.get_docs(["598#1", "no-such-doc"])
        except BenchError as e:
            out["unknown_doc"] = str(e)
        try:
            c.scoreddocs(100)
        except BenchError as e:
            out["scoreddocs"] = str(e)
        out["missing"] = c.judged_docs_missing()
        out["describe_after"] = c.describe()
        small = load_collection(CollectionSpec(source="ir_datasets", id="miracl/yo/dev", max_queries=5), download=False)
        out["small"] = [list(small.queries), small.fingerprint(), small.corpus_fingerprint()]
    """)
    d = out["describe"]
    assert (d["n_queries"], d["n_qrels"], d["n_docs"]) == (119, 1188, 49043)
    assert d["language"] == "yo" and d["id"] == "miracl/yo/dev" and d["source"] == "ir_datasets"
    assert out["query"] == "Odun wo ni wọn ṣe idije Olympiiki akọkọ?"
    assert len(out["qrels"]) == 10 and out["qrels"]["10020#1"] == 1 and out["qrels"]["68760#255"] == 0
    assert out["docs"] == {"598#1": "A a (1A) kan: I gave him a dog. (Mo fun un ní ajá kan).",
                           "71570#11": "Federal University of Technology • Uche Jombo Rodriguez"}
    assert "'no-such-doc'" in out["unknown_doc"]
    assert "judged_docs_missing" not in d  # not checked yet: no docstore opened by describe()
    assert out["missing"] == [] and out["describe_after"]["judged_docs_missing"] == 0
    assert "has no scoreddocs" in out["scoreddocs"]
    copy_range, expected, tail, expected_tail, copy_doc = out["ranges"]  # docs_range: a shard read by itself
    assert copy_range == expected and tail == expected_tail and len(tail) == 3
    assert copy_doc == {"598#1": out["docs"]["598#1"]}
    # The same texts, in the same order, as the BEIR-folder path: one doc_text rule for both.
    folder = load_collection(CollectionSpec(source="beir", path=str(shared_data / "miracl-yo-dev"), split="dev"))
    assert out["digest"] == docs_digest(folder)
    assert folder.qrels["10020#0"] == out["qrels"]
    queries, fp, corpus_fp = out["small"]
    assert len(queries) == 5 and queries == list(folder.queries)[:5]
    assert fp != d["fingerprint"] and corpus_fp == d["corpus_fingerprint"]
    assert not (miracl_home.parent / "home" / ".ir_datasets").exists()


def test_judged_documents_missing_from_the_corpus_are_counted(miracl_home, tmp_path):
    """A qrels line judging a document the corpus lacks: kept (trec_eval keeps it), counted and named."""
    import shutil

    home = tmp_path / "ir_datasets"
    shutil.copytree(miracl_home, home)
    qrels = home / "miracl" / "v1.0" / "yo" / "dev" / "qrels.tsv"
    qrels.write_text(qrels.read_text() + "10020#0 Q0 not-in-corpus#7 1\n")
    out = run_irds(home, """
        c = load_collection(CollectionSpec(source="ir_datasets", id="miracl/yo/dev"), download=False)
        out["missing"] = c.judged_docs_missing()
        out["describe"] = c.describe()
        out["judged"] = c.qrels["10020#0"].get("not-in-corpus#7")
    """)
    assert out["missing"] == ["not-in-corpus#7"] and out["judged"] == 1
    assert out["describe"]["judged_docs_missing"] == 1
    assert out["describe"]["judged_docs_missing_examples"] == ["not-in-corpus#7"]


def test_missing_files_fail_fast_and_name_them(tmp_path):
    home = tmp_path / "ir_datasets"
    out = run_irds(home, """
        import time
        for key, download in (("off", False), ("on", True)):
            t = time.time()
            try:
                load_collection(CollectionSpec(source="ir_datasets", id="miracl/yo/dev"), download=download)
            except BenchError as e:
                out[key] = str(e)
            out[key + "_s"] = time.time() - t
    """)
    msg = out["off"]
    for name in ("dev/topics.tsv", "dev/qrels.tsv", "docs/docs-1.jsonl.gz"):
        assert f"{home}/miracl/v1.0/yo/{name}" in msg
    assert "downloads are switched off" in msg and "source = \"beir\"" in msg and "synthetic" in msg
    assert not list(home.rglob("*.tsv"))
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        online = True
    except OSError:
        online = False
    if not online:
        assert "no network" in out["on"] and "offline alternatives" in out["on"]


def test_unknown_ids_list_what_is_known(tmp_path):
    out = run_irds(tmp_path / "ir_datasets", """
        for i in ("miracl/xx/dev", "miracl/yo/train", "miracl/yo/test-b", "beir/scifact", "nope/x"):
            try:
                load_collection(CollectionSpec(source="ir_datasets", id=i), download=False)
            except BenchError as e:
                out[i] = str(e)
        try:
            load_collection(CollectionSpec(source="ir_datasets", id="miracl/yo/dev", language="en"), download=False)
        except BenchError as e:
            out["lang"] = str(e)
    """)
    assert "ar, bn, de, en, es, fa, fi, fr, hi, id, ja, ko, ru, sw, te, th, yo, zh" in out["miracl/xx/dev"]
    assert "miracl/yo/dev, miracl/yo/test-b" in out["miracl/yo/train"]
    assert "has no qrels" in out["miracl/yo/test-b"] and "miracl/yo/dev" in out["miracl/yo/test-b"]
    assert "beir/scifact/test" in out["beir/scifact"]
    assert "known dataset families" in out["nope/x"] and "msmarco-passage" in out["nope/x"]
    assert "'yo'" in out["lang"]


@pytest.fixture
def msmarco_home(tmp_path) -> Path:
    """A tiny stand-in for MS MARCO passage and TREC DL 2019 in ir_datasets' cache layout (the files
    ir_datasets extracts and keeps), so the real id and its scoreddocs run offline."""
    base = tmp_path / "ir_datasets" / "msmarco-passage"
    (base / "trec-dl-2019").mkdir(parents=True)
    (base / "irds_version.txt").write_text("v2")
    (base / "collection.tsv").write_text("".join(f"{i}\tpassage number {i} about topic {i % 3}\n" for i in range(20)))
    (base / "trec-dl-2019" / "queries.tsv").write_text("100\ttopic zero?\n200\ttopic one?\n300\tunjudged?\n")
    (base / "trec-dl-2019" / "qrels").write_text("100 0 0 3\n100 0 3 1\n100 0 1 0\n200 0 4 2\n")
    (base / "trec-dl-2019" / "ms.run").write_text("".join(f"{q}\t{d}\n" for q in (100, 200, 300) for d in range(10)))
    return base.parent


def test_msmarco_trec_dl_2019_judged_and_its_unranked_scoreddocs(msmarco_home):
    out = run_irds(msmarco_home, """
        c = load_collection(CollectionSpec(source="ir_datasets", id="msmarco-passage/trec-dl-2019/judged"), download=False)
        out["queries"] = c.queries
        out["qrels"] = c.qrels
        out["language"] = c.language
        out["docs"] = c.get_docs(["3", "4"])
        out["all"] = c.scoreddocs(1000)
        try:
            c.scoreddocs(5)
        except BenchError as e:
            out["cut"] = str(e)
    """)
    assert out["queries"] == {"100": "topic zero?", "200": "topic one?"}  # judged only
    assert out["qrels"] == {"100": {"0": 3, "3": 1, "1": 0}, "200": {"4": 2}}
    assert out["language"] == "en"
    assert out["docs"] == {"3": "passage number 3 about topic 0", "4": "passage number 4 about topic 1"}
    assert set(out["all"]) == {"100", "200"} and len(out["all"]["100"]) == 10
    assert set(out["all"]["100"].values()) == {0.0}
    assert "unranked" in out["cut"] and "depth >= 10" in out["cut"]


def test_bench_data_command_on_an_ir_datasets_id(miracl_home):
    env = {**os.environ, "IR_DATASETS_HOME": str(miracl_home), "HOME": str(miracl_home.parent / "home")}
    proc = subprocess.run([sys.executable, "-m", "bench", "data", "miracl/yo/dev", "--no-download", "--max-queries", "3"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "miracl/yo/dev  (ir_datasets, language yo)" in proc.stdout
    assert "queries 3   docs 49,043   qrels 30" in proc.stdout
    assert "sample query 2596#0: Ki ni oluilu orile ede Albania?" in proc.stdout
    assert "relevance 1 doc 2596#1: Albáníà Albáníà je" in proc.stdout
