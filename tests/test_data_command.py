"""`bench data`: what it prints for folders, synthetic collections and experiments, and its errors."""

from __future__ import annotations

import json

from bench.cli import main


def test_beir_folder_summary(shared_data, capsys):
    assert main(["data", "--source", "beir", "--path", str(shared_data / "vaswani"), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "vaswani/test  (beir, language unknown)" in out
    assert "queries 93   docs 11,429   qrels 2,083   relevance 1: 2,083" in out
    assert "sample query 1: MEASUREMENT OF DIELECTRIC CONSTANT" in out
    assert "relevance 1 doc 1239: broadband millimetre wave" in out  # first relevant doc in natural id order


def test_folder_target_and_unknown_split(shared_data, capsys):
    assert main(["data", str(shared_data / "vaswani"), "--split", "dev"]) == 2
    assert "split 'dev' not found; available splits: test" in capsys.readouterr().err


def test_synthetic_json_one_record_per_language(capsys):
    assert main(["data", "synthetic", "--languages", "en,sw", "--docs-per-language", "100",
                 "--queries-per-language", "5", "--format", "json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert [(d["name"], d["language"], d["n_docs"], d["n_queries"], d["n_qrels"]) for d in described] == [
        ("synthetic/en", "en", 100, 5, 25), ("synthetic/sw", "sw", 100, 5, 25)]


def test_synthetic_language_target(capsys):
    assert main(["data", "synthetic/yo", "--docs-per-language", "40", "--queries-per-language", "3"]) == 0
    out = capsys.readouterr().out
    assert "synthetic/yo  (synthetic, language yo)" in out and "relevance 2: 3, 1: 9" in out
    assert "sample query q00000:" in out and "relevance 2 doc" in out


def test_experiment_file_lists_every_dataset(shared_data, experiment_toml, capsys):
    exp = experiment_toml(name="t", first_stages={"bm25": {"kind": "bm25"}}, datasets=[
        {"source": "beir", "path": shared_data / "miracl-yo-dev", "split": "dev", "language": "yo", "max_queries": 10},
        {"source": "synthetic", "synthetic": {"languages": ["de", "fr"], "docs_per_language": 40, "queries_per_language": 4}}])
    assert main(["data", str(exp)]) == 0
    out = capsys.readouterr().out
    assert "miracl-yo-dev/dev  (beir, language yo)" in out and "queries 10   docs 49,043" in out
    assert "synthetic/de  (synthetic, language de)" in out and "synthetic/fr  (synthetic, language fr)" in out


def test_nothing_named(capsys):
    assert main(["data"]) == 2
    assert "name a collection" in capsys.readouterr().err
