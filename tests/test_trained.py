"""The demo's trained reranker: trained once from the synthetic collection's training split (never
its evaluation queries), cached, and marked 'trained on synthetic data' in every table.

Training is shortened here (fewer steps, one language); the full training and its gain on the six
languages are measured by `make demo` (results/demo-cpu/)."""

from __future__ import annotations

import functools
import json

import pytest

from bench import models
from bench.config import load_experiment
from bench.data import load_collections
from bench.data.synthetic import parse_options, plan
from bench.pipeline import run_experiment
from bench.models import trained

REF = "trained:synthetic-minilm-ce"
STEPS_IN_TEST = 70


@pytest.fixture(scope="module")
def trained_cache(tmp_path_factory):
    """A cache holding the demo model trained once for this module: fewer steps and Spanish only."""
    cache = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(trained.SETTINGS, "steps", STEPS_IN_TEST)
        patch.setattr(trained, "training_groups", functools.partial(trained.training_groups, ["es"]))
        trained.ensure(REF, cache, log=lambda m: None)
    return cache


def test_training_split_is_not_the_evaluation_collection():
    groups = trained.training_groups(["en"])
    evaluation = load_collections(load_experiment("experiments/offline.toml").datasets[0])[0]
    eval_docs = {text for batch in evaluation.iter_docs() for _, text in batch}
    assert not {q for q, _, _ in groups} & set(evaluation.queries.values())
    assert not {d for _, docs, _ in groups for d in docs} & eval_docs
    train_world = {e.name for e in plan(parse_options({"seed": trained.TRAIN_SEED, "languages": ["en"],
                                                       "docs_per_language": trained.SETTINGS["docs_per_language"],
                                                       "queries_per_language": 1})).world}
    eval_world = {e.name for e in plan(parse_options({"seed": 0, "languages": ["en"]})).world}
    assert len(train_world & eval_world) <= 1  # invented names: at most a chance coincidence
    for _, docs, grades in groups:  # the answer, the entity's other passages, then what looks like them
        assert len(set(docs)) == len(docs) in (8, 10) and grades[:4] == [2, 1, 1, 1] and set(grades[4:]) == {0}


def test_trained_once_cached_and_marked_in_tables(trained_cache, experiment_toml, tmp_path, monkeypatch):
    folder = models.trained_folder("synthetic-minilm-ce", trained_cache)
    meta = json.loads((folder / "config.json").read_text())["rerank_bench"]
    assert meta["trained_on"] == "synthetic data" and meta["train_seed"] == trained.TRAIN_SEED
    assert models.describe(REF)["trained_on"] == "synthetic data"
    monkeypatch.setattr(trained, "train_demo", lambda *a, **k: pytest.fail("trained twice"))
    trained.ensure(REF, trained_cache, log=lambda m: None)  # cached: no second training

    path = experiment_toml(name="demo", cache_dir=str(trained_cache), first_stages={"bm25": {"kind": "bm25", "depth": 10}},
                           datasets=[{"source": "synthetic", "synthetic": {"languages": ["en"], "docs_per_language": 40,
                                                                           "queries_per_language": 4}}],
                           rerankers=[{"model": REF, "name": "demo-ce", "dtype": "fp32", "top_k": 10, "max_length": 64,
                                       "device": "cpu"}])
    records = run_experiment(load_experiment(path), tmp_path / "out", progress=False, log=lambda m: None)
    assert records[-1].system.reranker["model"]["trained_on"] == "synthetic data"
    report = (tmp_path / "out" / "report.md").read_text()
    assert "demo-ce (trained on synthetic data)" in report and "training split" in report
    assert "demo-ce (trained on synthetic data)" in (tmp_path / "out" / "report.html").read_text()


def test_trained_reranker_beats_the_first_stage(trained_cache, experiment_toml, tmp_path):
    """The point of the demo: reranking the MiniLM top-20 with the trained model raises nDCG@10 on
    unseen synthetic questions (Spanish, where MiniLM is weaker than in English). Trained here on
    Spanish only and for fewer steps, to stay quick."""
    path = experiment_toml(name="demo", cache_dir=str(trained_cache),
                           first_stages={"minilm": {"kind": "dense", "model": "offline:all-MiniLM-L6-v2", "depth": 20,
                                                    "dtype": "fp32"}},
                           datasets=[{"source": "synthetic", "synthetic": {"languages": ["es"], "docs_per_language": 400,
                                                                           "queries_per_language": 60, "seed": 0}}],
                           rerankers=[{"model": REF, "name": "demo-ce", "dtype": "fp32", "top_k": 20, "device": "cpu"}])
    records = run_experiment(load_experiment(path), tmp_path / "out", progress=False, log=lambda m: None)
    ndcg = {r.system.stage: r.metrics["nDCG@10"] for r in records}
    assert ndcg["rerank"] > ndcg["first_stage"] + 0.02, ndcg
