"""`bench run` end to end on local material: records, runs, report, resume, and fast failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import load_experiment
from bench.evaluate import evaluate
from bench.pipeline import run_experiment
from bench.runs import read_qrels, read_run

REPO = Path(__file__).resolve().parents[1]

def small(budget=512) -> dict:
    """The parts of the small experiment: BM25 then an untrained tiny reranker on two synthetic languages."""
    return {"name": "small",
            "first_stages": {"bm25": {"kind": "bm25", "depth": 30}},
            "datasets": [{"source": "synthetic",
                          "synthetic": {"languages": ["en", "yo"], "docs_per_language": 200, "queries_per_language": 12}}],
            "rerankers": [{"model": "random:tiny-xlmr-reranker", "name": "tiny", "dtype": "fp32", "top_k": 10,
                           "max_length": 128, "token_budget": budget}],
            "evaluation": {"metrics": ["nDCG@10", "Recall@30"]}}


def small_experiment(experiment_toml, budget=512):
    path = experiment_toml("small.toml", **small(budget))
    return load_experiment(path), path


def test_end_to_end_records_runs_report(experiment_toml, tmp_path):
    exp, path = small_experiment(experiment_toml)
    out = tmp_path / "out"
    records = run_experiment(exp, out, experiment_path=path, progress=False, log=lambda m: None)
    assert [(r.dataset.label, r.system.label) for r in records] == [
        ("synthetic/en", "bm25"), ("synthetic/yo", "bm25"), ("synthetic/en", "tiny"), ("synthetic/yo", "tiny")]
    from bench.data import load_collections

    qrels = {c.name: c.qrels for c in load_collections(exp.datasets[0])}
    for rec in records:
        # The saved run reproduces the recorded metrics, and every number has its context.
        run = read_run(out / rec.run_file)
        assert read_qrels(out / rec.qrels_file) == qrels[rec.dataset.label]  # beside the run
        ev = evaluate(qrels[rec.dataset.label], run, ["nDCG@10", "Recall@30"])
        assert ev.means == pytest.approx(rec.metrics, abs=1e-12)
        assert set(rec.per_query["nDCG@10"]) == set(qrels[rec.dataset.label])
        assert rec.experiment["sha256"] and rec.environment.packages["torch"]
        assert rec.dataset.fingerprint and rec.dataset.judged_docs_missing == 0
        assert 0 <= rec.diagnostics["judged@10"] <= 1
    rr = records[2]
    assert rr.system.reranker["model"]["untrained"] is True
    # rerank checkpoints are keyed on the precision that ran (dtype "auto" differs by device)
    key = json.loads((Path(rr.info["checkpoints"]) / "key.json").read_text())
    assert key["precision"] == "fp32" == rr.system.reranker["dtype"]
    first_run = read_run(out / records[0].run_file)
    assert rr.diagnostics["pairs"] == sum(min(10, len(docs)) for docs in first_run.values())
    assert rr.diagnostics["mean_tokens_per_pair"] > 5
    assert rr.diagnostics["padding_share"] == 0.0  # the packed forward computes real tokens only
    assert 0 <= rr.diagnostics["truncated_pairs_share"] <= 1
    # Reranking the top 10 of 30 leaves the candidate set, hence Recall@30, unchanged.
    assert rr.metrics["Recall@30"] == pytest.approx(records[0].metrics["Recall@30"])
    report = (out / "report.md").read_text()
    assert "synthetic average (2)" in report and "tiny (untrained)" in report
    assert "first stage: bm25" in (out / "report.csv").read_text()


def test_rerun_resumes_from_cache_without_loading_models(experiment_toml, tmp_path, monkeypatch):
    exp, path = small_experiment(experiment_toml, budget=256)
    first = run_experiment(exp, tmp_path / "a", progress=False, log=lambda m: None)
    import bench.pipeline

    def no_model(*a, **k):
        raise AssertionError("a cached rerun must not load the reranker")

    monkeypatch.setattr(bench.pipeline, "build_reranker", no_model)
    again = run_experiment(exp, tmp_path / "b", progress=False, log=lambda m: None)
    assert [r.metrics for r in again] == [r.metrics for r in first]
    assert all(r.timings.cached for r in again if r.system.stage == "first_stage")
    assert all(r.timings.resumed_blocks == r.timings.blocks for r in again if r.system.stage == "rerank")


def test_interrupted_rerank_resumes_with_identical_results(experiment_toml, tmp_path, monkeypatch):
    import bench.pipeline
    import bench.rerank.stage

    monkeypatch.setattr(bench.rerank.stage, "BLOCK_PAIRS", 25)
    exp, path = small_experiment(experiment_toml, budget=300)
    real = bench.pipeline.build_reranker
    calls = {"n": 0}

    class Interrupting:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def score(self, pairs):
            calls["n"] += 1
            if calls["n"] == 4:  # an untimed warm-up call, two blocks, then the interruption
                raise KeyboardInterrupt
            return self.inner.score(pairs)

    monkeypatch.setattr(bench.pipeline, "build_reranker", lambda *a, **k: Interrupting(real(*a, **k)))
    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, tmp_path / "x", progress=False, log=lambda m: None)
    resumed = run_experiment(exp, tmp_path / "x", progress=False, log=lambda m: None)
    rr = [r for r in resumed if r.system.stage == "rerank"]
    assert sum(r.timings.resumed_blocks for r in rr) == 2
    # Same numbers as a clean run in a fresh cache.
    monkeypatch.setattr(bench.pipeline, "build_reranker", real)
    fresh_exp = exp.model_copy(update={"cache_dir": str(tmp_path / "fresh-cache")})
    clean = run_experiment(fresh_exp, tmp_path / "y", progress=False, log=lambda m: None)
    assert len(resumed) == len(clean)
    for a, b in zip(resumed, clean):
        assert a.metrics == pytest.approx(b.metrics, abs=1e-9)
        assert a.per_query["nDCG@10"] == pytest.approx(b.per_query["nDCG@10"], abs=1e-9)


def test_cli_run_and_report(experiment_toml, tmp_path, capsys):
    _, path = small_experiment(experiment_toml)
    out = tmp_path / "cli"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "### nDCG@10" in printed and "records in" in printed
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.strip() == (out / "report.md").read_text().strip()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no quality records" in capsys.readouterr().err


def test_cli_runs_the_datasets_asked_for(experiment_toml, tmp_path, capsys):
    path = experiment_toml("bm25.toml", **{k: v for k, v in small().items() if k in ("name", "first_stages", "datasets")})
    out = tmp_path / "only"
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--only", "synthetic/yo"]) == 0
    assert sorted(p.name for p in (out / "records").iterdir()) == ["synthetic_yo__bm25.json"]
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--datasets", "synthetic/yo,synthetic/xx"]) == 2
    assert "no dataset labelled 'synthetic/xx'; its datasets are: synthetic/en, synthetic/yo" in capsys.readouterr().err


def test_unknown_dataset_id_is_a_clear_error(experiment_toml, tmp_path, capsys):
    path = experiment_toml("bad.toml", **{**small(), "datasets": [{"source": "ir_datasets", "id": "miracl/xx/dev"}]})
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "miracl/xx/dev" in err and "yo" in err


def test_make_bench_without_network_names_the_offline_experiment(tmp_path):
    """`make bench` runs `bench run experiments/default.toml`; offline it must stop at once."""
    import torch

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    command = [sys.executable, "-m", "bench", "run", str(REPO / "experiments" / "default.toml"), "--out", str(tmp_path / "o")]
    if not torch.cuda.is_available():  # first: days on a CPU, said with the alternative (tests/test_faults_speeds.py)
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 2 and "this machine has no GPU" in proc.stderr and "make demo" in proc.stderr
        command.append("--allow-slow")
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "BAAI/bge-reranker-large" in proc.stderr
    assert "experiments/offline.toml" in proc.stderr and "make demo" in proc.stderr
    assert not (tmp_path / "o").exists(), "nothing may be started before the check"


def test_datasets_sharing_a_first_stage_load_its_encoder_once(experiment_toml, tmp_path, minilm, monkeypatch):
    import bench.retrieve.stage

    real = bench.retrieve.stage.build_encoder
    built = []
    monkeypatch.setattr(bench.retrieve.stage, "build_encoder", lambda *a, **k: built.append(1) or real(*a, **k))
    path = experiment_toml("dense.toml", name="dense", first_stages={"minilm": {
        "kind": "dense", "model": minilm, "dtype": "fp32", "depth": 10, "max_length": 64, "device": "cpu"}},
        datasets=[{"source": "synthetic",
                   "synthetic": {"languages": ["en", "de"], "docs_per_language": 40, "queries_per_language": 4}}])
    records = run_experiment(load_experiment(path), tmp_path / "out", progress=False, log=lambda m: None)
    assert [r.dataset.label for r in records] == ["synthetic/en", "synthetic/de"]
    assert len(built) == 1


def test_cache_keys_hold_the_precision_auto_resolves_to(monkeypatch):
    """`auto` is fp16 for the fast engines on a GPU and fp32 on the CPU: a cache made on one must
    not serve the other, so keys hold `precision_for`, computed without loading a model."""
    import bench.engine.device as device

    assert device.precision_for("auto", "cpu", "fast") == "fp32"
    monkeypatch.setattr(device, "resolve_devices", lambda d=None, devices=None: ["cuda:0"])
    assert device.precision_for("auto", "auto", "fast") == "fp16"
    assert device.precision_for("auto", "auto", "transformers") == "fp32"
    assert device.precision_for("auto", "auto", "flag") == "fp16"
    assert device.precision_for("bf16", "auto", "fast") == "bf16"
