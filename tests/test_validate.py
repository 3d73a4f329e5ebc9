"""Validate before work: an experiment's mistakes are found when it loads, and `bench run --dry-run`
says what a run would do without loading a model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import load_experiment
from bench.errors import BenchError

REPO = Path(__file__).resolve().parents[1]


def parts(**changes) -> dict:
    base = {"name": "v", "first_stages": {"bm25": {"kind": "bm25"}}, "datasets": [{"source": "synthetic"}],
            "rerankers": [{"model": "random:tiny-xlmr-reranker"}]}
    return {**base, **changes}


@pytest.mark.parametrize("changes, message", [
    ({"rerankers": [{"model": "random:tiny-xlmr-reranker", "topk": 10}]},
     "rerankers[0].topk: unknown field; did you mean 'top_k'?"),
    ({"first_stages": {"bm25": {"kind": "bm25", "dpeth": 10}}}, "first_stages.bm25.dpeth: unknown field; did you mean 'depth'?"),
    ({"datasets": [{"source": "synthetic", "first_stages": "bm25"}]}, "did you mean 'first_stage'?"),
    ({"evaluation": {"metric": ["nDCG@10"]}}, "evaluation.metric: unknown field; did you mean 'metrics'?"),
    ({"nmae": "x"}, "nmae: unknown field; did you mean 'name'?"),
    ({"evaluation": {"metrics": ["nDCG@10", "ndgc@10"]}}, "evaluation.metrics[1]"),
    ({"rerankers": [{"model": "hf:BAAI/bge-reranker-large"}]}, "unknown model prefix 'hf:'"),
    ({"rerankers": [{"model": "random:tiny-xlmr"}]}, "unknown random architecture 'random:tiny-xlmr' (did you mean 'random:tiny-xlmr-reranker'?); known: random:"),
    ({"first_stages": {"d": {"kind": "dense", "model": "offline:MiniLM"}}}, "unknown offline model 'offline:MiniLM'"),
    ({"datasets": [{"source": "synthetic", "first_stage": "bm52"}]}, "first_stage = 'bm52' is not defined"),
])
def test_mistakes_are_found_when_the_experiment_loads(experiment_toml, changes, message):
    with pytest.raises(BenchError) as err:
        load_experiment(experiment_toml(**parts(**changes)))
    assert message in str(err.value)


def test_hub_ids_and_folders_pass_the_model_check(experiment_toml, tmp_path):
    exp = load_experiment(experiment_toml(**parts(rerankers=[{"model": "BAAI/bge-reranker-large"},
                                                             {"model": str(tmp_path), "name": "local"}])))
    assert [r.model for r in exp.rerankers] == ["BAAI/bge-reranker-large", str(tmp_path)]


def test_dry_run_of_the_default_experiment_offline_loads_no_model(tmp_path):
    """`bench run experiments/default.toml --dry-run` without network, hub cache or ir_datasets data:
    the plan and the missing downloads, exit 0, and neither torch nor transformers imported."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "IR_DATASETS_HOME": str(tmp_path / "irds"), "RERANK_BENCH_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": str(REPO)}
    code = ("import sys; from bench.cli import main; rc = main(sys.argv[1:]); "
            "print('IMPORTED', [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]); "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "run", str(REPO / "experiments" / "default.toml"), "--dry-run",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "IMPORTED []" in out
    # counts as published (MS MARCO passage: 8,841,823 passages, 6,980 dev/small queries; MIRACL yo dev:
    # 119 queries over 49,043 passages), read from ir_datasets' metadata without any download
    assert "- dataset msmarco-passage/dev/small: not downloaded yet; 6,980 queries, 8,841,823 documents" in out
    assert "- dataset miracl/yo/dev: not downloaded yet; 119 queries, 49,043 documents" in out
    assert "  - first stage bge-m3 (dense BAAI/bge-m3, depth 100): to run, about " in out
    assert "rerank bge-m3 » bge-reranker-large: up to 11,900 pairs" in out and "bge-base-en » bge-reranker-v2-m3" in out
    # the MS MARCO corpus is encoded once for its three query sets, and its archive listed once
    assert out.count("its corpus is encoded once, for msmarco-passage/dev/small") == 2
    assert out.count("collectionandqueries.tar.gz") == 1 and "missing: " in out
    assert re.search(r"files to download: \d+, [\d.]+ GB in all", out)
    assert "models to download (not in the local Hugging Face cache): BAAI/bge-base-en-v1.5 (about " in out
    assert re.search(r"time estimate: about \d+ min for encoding and reranking on NVIDIA H100", out)
    assert "no measured rate for" not in out
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_dry_run_counts_cached_data_and_estimates_from_measured_rates(experiment_toml, tmp_path, capsys):
    """A collection at hand is counted; a first stage already run is 'cached'; a rate measured by an
    earlier run's records gives the time estimate, naming the device and record."""
    path = experiment_toml(**parts(
        first_stages={"bm25": {"kind": "bm25", "depth": 20}},
        datasets=[{"source": "synthetic", "synthetic": {"languages": ["en"], "docs_per_language": 60,
                                                        "queries_per_language": 5}}],
        rerankers=[{"model": "random:tiny-xlmr-reranker", "name": "tiny", "dtype": "fp32", "top_k": 10,
                    "max_length": 64, "device": "cpu"}]))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--dry-run"]) == 0
    before = capsys.readouterr().out
    assert "- dataset synthetic/en: 5 queries, 60 documents" in before
    assert "first stage bm25 (bm25, depth 20): to run" in before
    assert "rerank tiny: up to 50 pairs" in before
    # no rate of its own yet: the committed H100 rate of random:bge-reranker-large, scaled by FLOPs per token
    assert "scaled from random:bge-reranker-large by FLOPs per token" in before and "measured on NVIDIA H100" in before
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--skip-preflight"]) == 0
    capsys.readouterr()
    assert main(["run", str(path), "--out", str(out), "--dry-run"]) == 0
    after = capsys.readouterr().out
    assert "first stage bm25 (bm25, depth 20): cached" in after
    assert "pairs/s (measured on cpu: " in after and "synthetic_en__bm25__tiny.json" in after


def test_bm25_pyserini_preset_sets_k1_and_b_unless_given(experiment_toml):
    exp = load_experiment(experiment_toml(**parts(first_stages={
        "p": {"kind": "bm25", "preset": "pyserini"}, "q": {"kind": "bm25", "preset": "pyserini", "k1": 1.2}},
        datasets=[{"source": "synthetic", "first_stage": ["p", "q"]}])))
    assert (exp.first_stages["p"].k1, exp.first_stages["p"].b) == (0.9, 0.4)
    assert (exp.first_stages["q"].k1, exp.first_stages["q"].b) == (1.2, 0.4)
    with pytest.raises(BenchError, match="is a BM25 preset"):
        load_experiment(experiment_toml("d.toml", **parts(first_stages={
            "d": {"kind": "dense", "model": "offline:all-MiniLM-L6-v2", "preset": "pyserini"}})))


@pytest.mark.parametrize("command", ["report", "compare", "throughput", "data", "eval", "reproduce", "run"])
def test_every_command_takes_no_progress(command, monkeypatch):
    """`--no-progress` is accepted by every command and silences tqdm's and huggingface_hub's bars (the
    variables main sets are restored after each test by conftest's `progress_variables_restored`)."""
    import bench.cli

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setattr(bench.cli.importlib.import_module(bench.cli.COMMANDS[command][0]), "run", lambda args: 0)
    assert main([command, "--no-progress"] + {"report": ["x"], "compare": ["x"], "throughput": ["x"], "data": ["x"],
                                              "eval": ["--qrels", "q", "--run", "r", "-m", "ndcg@10"], "reproduce": [],
                                              "run": ["x.toml"]}[command]) == 0
    assert os.environ["TQDM_DISABLE"] == "1" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"


def test_a_real_run_with_no_progress_draws_no_bar(experiment_toml, tmp_path, capfd):
    """`bench run` of a BM25 experiment (bm25s draws its own tqdm bars while indexing and retrieving):
    with `--verbose`, stderr holds them; with `--no-progress`, none, bm25s' included."""
    def run(flag: str) -> str:
        folder = tmp_path / flag.strip("-")  # its own cache: the index is built, and its bars drawn, each time
        exp = experiment_toml(f"{folder.name}.toml", name="np", cache_dir=folder / "cache",
                              first_stages={"bm25": {"kind": "bm25"}},
                              datasets=[{"source": "synthetic", "synthetic": {"languages": ["en"]}}])
        capfd.readouterr()
        assert main(["run", str(exp), "--out", str(folder / "out"), flag]) == 0
        return capfd.readouterr().err

    def bars(err: str) -> list[str]:
        return [line for line in err.replace("\r", "\n").splitlines() if "it/s" in line or "%|" in line]

    drawn = bars(run("--verbose"))
    assert any(line.startswith("BM25S") for line in drawn), drawn  # the check below can fail
    err = run("--no-progress")
    assert not bars(err) and "\r" not in err, err
