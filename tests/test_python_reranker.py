"""A reranker that is a Python class (`model = "python:package.module:ClassName"`, a file, or an
installed plug-in): it runs through the same rerank stage, checkpoints, records and tables as the
project's engines, and the record names the class, its version and its source digest.

The class is defined here; what the stage must return is computed here from the collection's own texts
(the class's formula applied directly, and the first stage's order below the reranked prefix)."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import RerankerSpec, load_experiment
from bench.data import load_collections
from bench.errors import BenchError
from bench.models.python import ENTRY_POINT_GROUP, find_class
from bench.rerank import build_reranker
from bench.rerank.engines import ENGINE_CLASSES
from bench.runs import read_run, sort_ranking

CALLS: list[int] = []  # pairs per score() call, across instances


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


class Overlap:
    """Words shared by query and passage, plus a constant from the experiment's options."""

    version = "2.1"

    def __init__(self, bonus: float = 0.0):
        self.bonus = bonus

    def score(self, pairs):
        CALLS.append(len(pairs))
        return [len(words(q) & words(p)) + self.bonus for q, p in pairs]

    def describe(self):
        return {"bonus": self.bonus, "tokenizer": r"\w+"}


class Broken(Overlap):
    mode = "nan"

    def score(self, pairs):
        out = super().score(pairs)
        if self.mode == "nan":
            out[0] = float("nan")
        return out[:-1] if self.mode == "short" else out


class NoDescribe:
    def score(self, pairs):
        return [0.0] * len(pairs)


MODEL = f"python:{__name__}:Overlap"
SYNTHETIC = {"languages": ["en"], "docs_per_language": 150, "queries_per_language": 12, "seed": 3}
TOP_K = 8


def experiment(experiment_toml, cache, **reranker):
    return experiment_toml(name="python-reranker", cache_dir=str(cache), first_stages={"bm25": {"kind": "bm25", "depth": 15}},
                           datasets=[{"source": "synthetic", "synthetic": SYNTHETIC}],
                           rerankers=[{"model": MODEL, "top_k": TOP_K, **reranker}],
                           evaluation={"metrics": ["nDCG@10"]})


def test_a_class_reranks_through_the_stage_with_its_identity_in_the_record(experiment_toml, tmp_path, monkeypatch):
    path = experiment(experiment_toml, tmp_path / "cache", options={"bonus": 0.5})  # its own cache: scored here
    out = tmp_path / "out"
    CALLS.clear()
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--skip-preflight"]) == 0
    (collection,) = load_collections(load_experiment(path).datasets[0])
    first = read_run(out / "runs" / "synthetic_en" / "bm25.trec")
    pairs = sum(min(TOP_K, len(ranking)) for ranking in first.values())  # BM25 may find fewer than TOP_K
    assert sum(CALLS) == pairs and len(first) == 12
    reranked = read_run(out / "runs" / "synthetic_en" / "bm25__Overlap.trec")
    for q, ranking in first.items():
        order = [d for d, _ in sort_ranking(ranking)]
        texts = collection.get_docs(order[:TOP_K])
        expected = {d: len(words(collection.queries[q]) & words(texts[d])) + 0.5 for d in order[:TOP_K]}
        assert {d: reranked[q][d] for d in order[:TOP_K]} == pytest.approx(expected)
        below = [d for d, _ in sort_ranking(reranked[q])][TOP_K:]
        assert below == order[TOP_K:]  # the rest keeps the first stage's order under the reranked prefix

    record = json.loads((out / "records" / "synthetic_en__bm25__Overlap.json").read_text())
    reranker = record["system"]["reranker"]
    assert reranker["engine"] == "python" and reranker["options"] == {"bonus": 0.5}
    assert reranker["settings"] == {"bonus": 0.5, "tokenizer": r"\w+"}
    assert reranker["python"]["class"] == f"{__name__}:Overlap" and reranker["python"]["version"] == "2.1"
    assert reranker["python"]["file"] == str(Path(__file__).resolve())
    assert reranker["python"]["source_sha256"] and "max_length" not in reranker and "dtype" not in reranker
    assert record["diagnostics"]["pairs"] == pairs and record["diagnostics"]["mean_tokens_per_pair"] is None
    assert "| Overlap" in (out / "report.md").read_text() or "Overlap |" in (out / "report.md").read_text()

    # a rerun reuses the checkpointed blocks; a new version of the class scores again
    CALLS.clear()
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--skip-preflight"]) == 0
    assert CALLS == []
    again = json.loads((out / "records" / "synthetic_en__bm25__Overlap.json").read_text())["system"]["reranker"]
    assert again["engine"] == "python" and again["python"] == reranker["python"]
    monkeypatch.setattr(Overlap, "version", "2.2")
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--skip-preflight"]) == 0
    assert sum(CALLS) == pairs


def test_a_file_beside_the_experiment_and_an_installed_plugin(tmp_path, monkeypatch):
    # python:file.py:Class, relative to the experiment file's folder whatever the working directory
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "my_scores.py").write_text(textwrap.dedent("""
        class Length:
            def score(self, pairs):
                return [float(len(p)) for _, p in pairs]
            def describe(self):
                return {}
    """), encoding="utf-8")
    (folder / "exp.toml").write_text(textwrap.dedent("""
        name = "t"
        [first_stages.bm25]
        kind = "bm25"
        [[datasets]]
        source = "synthetic"
        [[rerankers]]
        model = "python:my_scores.py:Length"
    """), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    (spec,) = load_experiment(folder / "exp.toml").rerankers
    assert spec.model == f"python:{folder / 'my_scores.py'}:Length" and spec.label == "Length"
    assert list(build_reranker(spec).score([("q", "ab"), ("q", "abcd")])) == [2.0, 4.0]

    # an installed plug-in: a distribution whose entry point in rerank_bench.rerankers names the class
    site = tmp_path / "site"
    (site / "acme_rerank").mkdir(parents=True)
    (site / "acme_rerank" / "__init__.py").write_text(textwrap.dedent("""
        __version__ = "0.3"
        class ApiReranker:
            def __init__(self, endpoint="http://localhost"):
                self.endpoint = endpoint
            def score(self, pairs):
                return [1.0 / (1 + i) for i, _ in enumerate(pairs)]
            def describe(self):
                return {"endpoint": self.endpoint}
    """), encoding="utf-8")
    dist = site / "acme_rerank-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-rerank\nVersion: 0.3\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nacme = acme_rerank:ApiReranker\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    found = find_class("python:acme")
    assert found.identity()["class"] == "acme_rerank:ApiReranker"
    assert found.identity()["version"] == "0.3" and found.identity()["distribution"] == "acme-rerank==0.3"
    reranker = build_reranker(RerankerSpec(model="python:acme", options={"endpoint": "http://x"}))
    assert isinstance(reranker, ENGINE_CLASSES[("python", "python")])
    assert reranker.describe()["settings"] == {"endpoint": "http://x"}
    assert list(reranker.score([("q", "a"), ("q", "b")])) == [1.0, 0.5]


@pytest.mark.parametrize("fields, message", [
    ({"model": "python:no_such_module_xyz:C"}, "cannot import module 'no_such_module_xyz'"),
    ({"model": f"python:{__name__}:Missing"}, "has no class 'Missing'; its classes: .*Overlap"),
    ({"model": f"python:{__name__}:NoDescribe"}, r"has no describe\(\)"),
    ({"model": "python:not a name"}, "python:package.module:ClassName"),
    ({"model": "python:nobody-registered-this"}, f"no installed plug-in 'nobody-registered-this' in .*{ENTRY_POINT_GROUP}"),
    ({"model": f"python:{__name__}:Overlap", "dtype": "fp16"}, "dtype: not for a python: reranker"),
    ({"model": "random:tiny-xlmr-reranker", "options": {"a": 1}}, "options: only for a python: reranker"),
])
def test_bad_python_rerankers_are_load_time_errors_naming_the_field(experiment_toml, fields, message):
    path = experiment_toml(name="t", first_stages={"bm25": {"kind": "bm25"}}, datasets=[{"source": "synthetic"}],
                           rerankers=[fields])
    with pytest.raises(BenchError, match=r"rerankers\[0\]") as err:
        load_experiment(path)
    assert re.search(message, str(err.value)), str(err.value)


def test_a_first_stage_cannot_be_a_python_class(experiment_toml):
    path = experiment_toml(name="t", first_stages={"d": {"kind": "dense", "model": MODEL}},
                           datasets=[{"source": "synthetic"}])
    with pytest.raises(BenchError, match="a python: class can be a reranker only"):
        load_experiment(path)


@pytest.mark.parametrize("mode, options, message", [
    ("nan", {}, "score of pair 0 is nan"),
    ("short", {}, "returned 1 scores for 2 pairs"),
    ("nan", {"unknown": 1}, r"Broken\(\*\*options\) failed"),
])
def test_what_a_class_returns_is_checked(monkeypatch, mode, options, message):
    monkeypatch.setattr(Broken, "mode", mode)
    with pytest.raises(BenchError, match=message):
        build_reranker(RerankerSpec(model=f"python:{__name__}:Broken", options=options)).score([("a", "a"), ("b", "b")])


def test_throughput_says_a_class_has_no_engines_to_compare(experiment_toml, capsys):
    path = experiment_toml(name="t", first_stages={"bm25": {"kind": "bm25"}}, datasets=[{"source": "synthetic"}],
                           rerankers=[{"model": MODEL}], throughput={"pairs": 10})
    assert main(["throughput", str(path), "--no-progress"]) == 2
    assert "a python: reranker has no engines to compare" in capsys.readouterr().err
