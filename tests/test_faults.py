"""Fault injection: every cache, record and output fault either recomputes to a clean run's exact
result (and says so on stderr) or stops with one message and status 2 (docs/reliability.md).

Small real data: 300 Vaswani abstracts (the judged ones of its first ten queries, then others) in a
BEIR folder, all-MiniLM-L6-v2 over it in 100-passage shards, the untrained tiny reranker in blocks of
30 pairs. Disk-full and read-only cases mount a small tmpfs (root on Linux) and skip elsewhere.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import experiment_text

import bench.rerank.stage
import bench.retrieve.stage
from bench import models
from bench.cli import main
from bench.data.beir import BeirCollection
from bench.errors import BenchError
from bench.retrieve.embeddings import EmbeddingStore
from bench.runs import read_qrels, read_run

REPO = Path(__file__).resolve().parents[1]
N_QUERIES, N_DOCS = 10, 300


# -- material --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vaswani(shared_data, tmp_path_factory) -> Path:
    """A 300-passage Vaswani folder in BEIR layout: the first ten judged queries with all their judgements."""
    src = shared_data / "vaswani"
    qrels = read_qrels(src / "qrels" / "test.tsv")
    qids = sorted(qrels, key=int)[:N_QUERIES]
    judged = {d for q in qids for d in qrels[q]}
    with gzip.open(src / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        lines = [(json.loads(line)["_id"], line) for line in fh]
    keep = [line for d, line in lines if d in judged]
    keep += [line for d, line in lines if d not in judged][: N_DOCS - len(keep)]
    out = tmp_path_factory.mktemp("vaswani-300")
    (out / "qrels").mkdir()
    (out / "corpus.jsonl").write_text("".join(keep), encoding="utf-8")
    queries = [json.loads(line) for line in (src / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    (out / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries if q["_id"] in qids))
    (out / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{r}\n" for q in qids for d, r in qrels[q].items()))
    return out


@pytest.fixture()
def small_units(monkeypatch):
    """Several shards and blocks on 300 passages and 100 pairs."""
    monkeypatch.setattr(bench.retrieve.stage, "SHARD_SIZE", 100)
    monkeypatch.setattr(bench.rerank.stage, "BLOCK_PAIRS", 30)


def write_experiment(experiment_toml, vaswani, cache: Path, first_stage: dict, *, reranker: str | None = None,
                     name: str = "faults", file: str = "exp.toml", **dataset) -> Path:
    parts = {"name": name, "cache_dir": str(cache), "first_stages": {"fs": {"depth": 20, **first_stage}},
             "datasets": [{"source": "beir", "path": str(vaswani), "name": "vaswani300", **dataset}],
             "evaluation": {"metrics": ["nDCG@10", "Recall@20"]}}
    if reranker:
        parts["rerankers"] = [{"model": reranker, "name": "tiny", "dtype": "fp32", "top_k": 10, "max_length": 64}]
    return experiment_toml(file, **parts)


def dense(minilm) -> dict:
    return {"kind": "dense", "model": minilm, "dtype": "fp32", "max_length": 64, "device": "cpu"}


def bench_run(path: Path, out: Path) -> int:
    return main(["run", str(path), "--out", str(out), "--no-progress", "--skip-preflight"])


def outcome(out: Path) -> dict:
    """What a run measured: per record file, its metrics, per-query values and run file text."""
    result = {}
    for p in sorted((out / "records").glob("*.json")):
        rec = json.loads(p.read_text(encoding="utf-8"))
        result[p.name] = (rec["metrics"], rec["per_query"], rec["dataset"], (out / rec["run_file"]).read_text())
    return result


def one(folder: Path, pattern: str) -> Path:
    (found,) = folder.glob(pattern)
    return found


# -- silent wrong numbers --------------------------------------------------------------------------
def test_damaged_cache_entries_are_recomputed_to_the_clean_result(experiment_toml, vaswani, minilm, tiny_reranker,
                                                                  tmp_path, small_units, capsys):
    cache = tmp_path / "cache"
    path = write_experiment(experiment_toml, vaswani, cache, dense(minilm), reranker=tiny_reranker)
    assert bench_run(path, tmp_path / "clean") == 0
    clean = outcome(tmp_path / "clean")
    capsys.readouterr()

    emb = one(cache / "embeddings", "*")
    zeroed, cut_shard, marker = emb / "shard-00000.npy", emb / "shard-00001.npy", emb / "complete.json"
    zeroed.write_bytes(b"\0" * zeroed.stat().st_size)                     # same length, all zeros
    cut_shard.write_bytes(cut_shard.read_bytes()[:1000])                  # mmap would fail
    marker.write_text("")                                                 # an empty complete.json
    runs = one(cache / "runs", "*")
    lines = (runs / "run.trec").read_text().splitlines(keepends=True)
    (runs / "run.trec").write_text("".join(lines[: len(lines) // 3]))    # cut at a line boundary
    (runs / "info.json").write_text((runs / "info.json").read_text()[:40])
    blocks = one(cache / "rerank", "*")
    (blocks / "block-00001.json").write_text((blocks / "block-00001.json").read_text()[:100])
    text = (blocks / "block-00002.json").read_text()  # one score's last digit changed: same length
    tampered = re.sub(r'(": -?[0-9.e-]+)([0-9])(,?\n)', lambda m: m[1] + str((int(m[2]) + 1) % 10) + m[3], text, count=1)
    assert len(tampered) == len(text) and tampered != text
    (blocks / "block-00002.json").write_text(tampered)

    assert bench_run(path, tmp_path / "again") == 0
    err = capsys.readouterr().err
    assert outcome(tmp_path / "again") == clean
    for damaged in (zeroed, cut_shard, marker, runs / "run.trec", runs / "info.json",
                    blocks / "block-00001.json", blocks / "block-00002.json"):
        line = next((x for x in err.splitlines() if x.startswith(f"cache: {damaged}:")), None)
        assert line and line.endswith("recomputing it"), (damaged, err)
    assert "sha256 mismatch" in err and "truncated or overwritten" in err


def test_an_edited_run_file_is_a_new_first_stage_and_its_blocks_are_rescored(experiment_toml, vaswani, tiny_reranker,
                                                                             tmp_path, small_units, capsys):
    collection = BeirCollection(vaswani, "test")
    doc_ids = [d for batch in collection.iter_docs() for d, _ in batch]

    def write_run_file(seed: str):
        def score(q, d):
            return int(hashlib.sha256(f"{seed}{q}{d}".encode()).hexdigest()[:8], 16)
        lines = [f"{q} Q0 {d} {r} {s} x\n" for q in collection.queries
                 for r, (s, d) in enumerate(sorted(((score(q, d), d) for d in doc_ids), reverse=True)[:20], 1)]
        (tmp_path / "cand.trec").write_text("".join(lines))

    write_run_file("one")
    cache = tmp_path / "cache"
    run_stage = {"kind": "run", "path": str(tmp_path / "cand.trec")}
    path = write_experiment(experiment_toml, vaswani, cache, run_stage, reranker=tiny_reranker)
    assert bench_run(path, tmp_path / "one") == 0
    write_run_file("two")  # same name, other candidates
    assert bench_run(path, tmp_path / "two") == 0
    err = capsys.readouterr().err
    assert "scored for other candidates" in err
    fs = json.loads((tmp_path / "two" / "records" / "vaswani300__fs.json").read_text())
    assert fs["timings"]["cached"] is False

    fresh = write_experiment(experiment_toml, vaswani, tmp_path / "fresh-cache", run_stage, reranker=tiny_reranker,
                             file="fresh.toml")
    assert bench_run(fresh, tmp_path / "fresh") == 0
    assert outcome(tmp_path / "two") == outcome(tmp_path / "fresh") != outcome(tmp_path / "one")
    candidates, reranked = (read_run(tmp_path / "two" / "runs" / "vaswani300" / f) for f in ("fs.trec", "fs__tiny.trec"))
    for qid, docs in reranked.items():
        top10 = sorted(docs, key=docs.get, reverse=True)[:10]
        assert set(top10) <= set(sorted(candidates[qid], key=candidates[qid].get, reverse=True)[:10])


def test_a_byte_order_mark_is_not_part_of_the_first_id(vaswani, tmp_path):
    run_text = "".join(f"{q} Q0 {d} {r} {1 / r} x\n" for q in ("1", "2") for r, d in enumerate(("1239", "1502", "3"), 1))
    (tmp_path / "run.trec").write_text(run_text)
    (tmp_path / "bom.trec").write_text("\ufeff" + run_text)
    assert read_run(tmp_path / "bom.trec") == read_run(tmp_path / "run.trec")
    (tmp_path / "qrels.txt").write_text("1 0 1239 1\n2 0 3 1\n")
    (tmp_path / "bom-qrels.txt").write_text("\ufeff1 0 1239 1\n2 0 3 1\n")
    assert read_qrels(tmp_path / "bom-qrels.txt") == read_qrels(tmp_path / "qrels.txt")
    bom = tmp_path / "bom-beir"
    shutil.copytree(vaswani, bom)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        (bom / name).write_text("\ufeff" + (bom / name).read_text(encoding="utf-8"), encoding="utf-8")
    a, b = BeirCollection(vaswani, "test"), BeirCollection(bom, "test")
    assert (a.queries, a.qrels, list(a.iter_docs())) == (b.queries, b.qrels, list(b.iter_docs()))


@pytest.fixture(scope="module")
def bm25_out(vaswani, tiny_reranker, tmp_path_factory) -> Path:
    """An output folder of BM25 and the tiny reranker over it (two systems)."""
    folder = tmp_path_factory.mktemp("bm25-out")
    (folder / "exp.toml").write_text(experiment_text(
        name="bm25", cache_dir=str(folder / "cache"), first_stages={"fs": {"kind": "bm25", "depth": 20}},
        datasets=[{"source": "beir", "path": str(vaswani), "name": "vaswani300"}],
        rerankers=[{"model": tiny_reranker, "name": "tiny", "dtype": "fp32", "top_k": 10, "max_length": 64}],
        evaluation={"metrics": ["nDCG@10"]}))
    assert bench_run(folder / "exp.toml", folder / "out") == 0
    return folder / "out"


def test_unreadable_records_are_an_error_in_report_and_compare(bm25_out, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(bm25_out, out)
    bad = out / "records" / "vaswani300__fs__tiny.json"
    bad.write_text(bad.read_text()[:500])
    capsys.readouterr()
    for command in (["report", str(out)], ["compare", str(out / "records")]):
        assert main(command) == 2
        assert f"{bad}: unreadable JSON" in capsys.readouterr().err
    assert main(["report", str(out), "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert f"warning: skipped {bad}" in captured.err and "1 unreadable record file(s) skipped" in captured.err
    assert "first stage: fs" in captured.out and "tiny" not in captured.out
    # what is left is one system: nothing to compare, not "Holm correction over the 0 comparisons"
    assert main(["compare", str(out / "records"), "--skip-bad"]) == 2
    assert "nothing to compare: the inputs hold one system (first stage: fs)" in capsys.readouterr().err


def test_report_shows_the_latest_experiment_and_names_the_others(bm25_out, vaswani, experiment_toml, tmp_path, capsys):
    """Another experiment run into the same folder sets the first one's records aside (superseded/):
    the report shows the folder's experiment and names the other; --all-experiments shows both."""
    out = tmp_path / "out"
    shutil.copytree(bm25_out, out)
    later = experiment_toml("later.toml", name="later", cache_dir=str(tmp_path / "cache"),
                            first_stages={"bm25-k1": {"kind": "bm25", "depth": 20, "k1": 1.2}},
                            datasets=[{"source": "beir", "path": str(vaswani), "name": "vaswani300"}],
                            evaluation={"metrics": ["nDCG@10"]})
    assert bench_run(later, out) == 0
    assert [p.name for p in (out / "records").iterdir()] == ["vaswani300__bm25-k1.json"]
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Experiment: later (version ") and "left out: 2 records of experiment bm25 (" in text
    assert "first stage: bm25-k1" in text and "tiny" not in text
    assert main(["report", str(out), "--all-experiments"]) == 0
    text = capsys.readouterr().out
    assert "first stage: bm25-k1 [later]" in text and "first stage: fs [bm25]" in text and "tiny (untrained) [bm25]" in text


# -- clear errors before work ----------------------------------------------------------------------
def test_bad_out_and_bad_experiment_stop_before_any_work(experiment_toml, vaswani, tmp_path, capsys):
    path = write_experiment(experiment_toml, vaswani, tmp_path / "cache", {"kind": "bm25"})
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "file", "exists and is a file"), (Path("/proc/bench-out"), "under /proc"),
                         (tmp_path / "file" / "sub", "lies under the file")):
        assert bench_run(path, out) == 2
        assert f"--out {out}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists(), "nothing may run before --out is checked"
    deep = write_experiment(experiment_toml, vaswani, tmp_path / "cache", {"kind": "bm25", "depth": 5},
                            reranker="random:tiny-xlmr-reranker", file="deep.toml")
    assert bench_run(deep, tmp_path / "o") == 2
    assert "rerankers[0].top_k = 10 exceeds first_stages.fs.depth = 5" in capsys.readouterr().err
    for name in ("../escape", "a/b"):
        escape = write_experiment(experiment_toml, vaswani, tmp_path / "cache", {"kind": "bm25"}, name=name)
        assert main(["run", str(escape), "--no-progress"]) == 2
        assert "the experiment name is the folder runs/<name>" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (REPO / "escape").exists()


def test_empty_queries_and_passages_are_counted_and_can_fail(vaswani, experiment_toml, tmp_path, capsys):
    folder = tmp_path / "holes"
    shutil.copytree(vaswani, folder)
    lines = (folder / "queries.jsonl").read_text().splitlines(keepends=True)
    first = json.loads(lines[0])
    (folder / "queries.jsonl").write_text(json.dumps({**first, "text": " "}) + "\n" + "".join(lines[1:]))
    with open(folder / "corpus.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"_id": "empty-doc", "title": "", "text": ""}) + "\n")
    path = write_experiment(experiment_toml, folder, tmp_path / "cache", {"kind": "bm25"})
    assert bench_run(path, tmp_path / "out") == 0
    assert "1 empty query" in capsys.readouterr().err
    rec = json.loads((tmp_path / "out" / "records" / "vaswani300__fs.json").read_text())
    assert (rec["dataset"]["empty_queries"], rec["dataset"]["empty_docs"]) == (1, 1)
    strict = write_experiment(experiment_toml, folder, tmp_path / "cache", {"kind": "bm25"}, file="strict.toml",
                              on_empty="error")
    assert bench_run(strict, tmp_path / "out2") == 2
    assert "passage(s) with neither title nor text (e.g. ['empty-doc'])" in capsys.readouterr().err


def test_eval_warns_when_no_evaluated_query_is_ranked(tmp_path, capsys):
    (tmp_path / "qrels.txt").write_text("1 0 a 1\n")
    (tmp_path / "run.trec").write_text("9 Q0 a 1 1.0 x\n")
    assert main(["eval", "--qrels", str(tmp_path / "qrels.txt"), "--run", str(tmp_path / "run.trec"), "-m", "ndcg@10"]) == 0
    assert "warning: the run ranks none of the 1 queries" in capsys.readouterr().err


# -- disk full, read-only, concurrent builds ---------------------------------------------------------
@pytest.fixture()
def small_fs(tmp_path):
    """`small_fs(size, *options) -> folder`: a tmpfs of `size` mounted for this test (root on Linux)."""
    mounted = []

    def mount(size: str, *options: str) -> Path:
        folder = tmp_path / f"fs{len(mounted)}"
        folder.mkdir()
        opts = ",".join((f"size={size}", *options))
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); needs root on Linux")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.endswith((".tmp", ".partial", ".building")) or ".building" in p.name)


def test_disk_full_is_one_message_and_leaves_nothing_half_written(vaswani, experiment_toml, tmp_path, small_fs, capsys):
    out = small_fs("12k")
    path = write_experiment(experiment_toml, vaswani, tmp_path / "cache", {"kind": "bm25"})
    assert bench_run(path, out) == 2
    err = capsys.readouterr().err
    assert f"{out}/" in err and "no space left on the device (" in err and "bytes needed" in err
    assert leftovers(out) == []

    store_dir = small_fs("64k")
    store = EmbeddingStore(store_dir / "emb", shard_size=100)
    with pytest.raises(BenchError, match=r"shard-00000\.npy: no space left on the device \(204,928 bytes needed"):
        store.build(iter([[(f"d{i}", "x") for i in range(100)]]), lambda texts: np.ones((len(texts), 512), np.float32),
                    n_docs=100, progress=False)
    assert leftovers(store_dir) == [] and not store.complete()

    cache = small_fs("4m")
    with pytest.raises(BenchError, match=r"random-tiny-xlmr-reranker-seed0: no space left on the device"):
        models.resolve("random:tiny-xlmr-reranker", cache)
    assert leftovers(cache) == [] and [p.name for p in (cache / "models").iterdir()] == [
        ".random-tiny-xlmr-reranker-seed0.lock"]  # the build lock stays: nothing of the model does


def test_read_only_out_is_an_error_before_work(vaswani, experiment_toml, tmp_path, small_fs, capsys):
    read_only = small_fs("1m", "ro")
    path = write_experiment(experiment_toml, vaswani, tmp_path / "cache", {"kind": "bm25"})
    assert bench_run(path, read_only) == 2
    assert "not writable" in capsys.readouterr().err
    assert bench_run(path, read_only / "sub") == 2
    assert "is not writable" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def _build_model(cache: str) -> None:
    models.resolve("random:tiny-xlmr-reranker", cache)


def test_two_processes_build_the_same_model_into_one_cache(tiny_reranker, tmp_path):
    """Forked (the libraries are loaded already): both build, both rename, the loser's copy goes."""
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=_build_model, args=(str(tmp_path),)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        ".random-tiny-xlmr-reranker-seed0.lock", "random-tiny-xlmr-reranker-seed0"]
    assert (tmp_path / "models" / "random-tiny-xlmr-reranker-seed0" / "config.json").exists()
