"""Speeds and token counts that mean something (issue 19, items 12 to 14): a quality record's rate
times the scoring calls only, after an untimed warm-up, and says so; token diagnostics mean the same
for every engine and a share stays in [0, 1] (the decoder's prefix reuse made padding_share -0.85);
`bench run` on a machine without a GPU stops before any work when even its lower-bound estimate
there exceeds an hour, unless told --allow-slow."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import bench.rerank.stage as stage_module
from bench.cli import main
from bench.records import QualityTimings
from bench.rerank.stage import RerankStage

REPO = Path(__file__).resolve().parents[1]


# -- item 12: the rate times scoring only -------------------------------------------------------------
class ClockedReranker:
    """Scores on a fake clock: every call costs 0.01 s per pair, the first call 100 s more (what a
    first call costs: kernel selection, allocations, lazy initialisation), as building cost 1000 s."""

    def __init__(self, clock):
        self.clock, self.calls = clock, 0

    def score(self, pairs):
        self.calls += 1
        self.clock["t"] += 0.01 * len(pairs) + (100.0 if self.calls == 1 else 0.0)
        return np.array([float(p.split()[1]) for _, p in pairs], dtype=np.float32)

    def stats(self):
        return {"pairs": 0, "tokens": None, "padded_tokens": None, "truncated_pairs": None,
                "truncated_queries": None, "seconds": 0.0}

    def reset_stats(self):
        pass


def test_the_rate_times_scoring_calls_only_after_a_warm_up(tmp_path, monkeypatch):
    clock = {"t": 0.0}
    monkeypatch.setattr(stage_module, "time", SimpleNamespace(perf_counter=lambda: clock["t"]))
    monkeypatch.setattr(stage_module, "BLOCK_PAIRS", 6)  # 3 pairs a query: blocks of two queries

    def build():
        clock["t"] += 1000.0  # building, loading or training the model
        return ClockedReranker(clock)

    queries = {f"q{i}": f"query {i}" for i in range(6)}
    texts = {f"d{j}": f"passage {j}" for j in range(5)}
    candidates = {q: {f"d{j}": -float(j) for j in range(5)} for q in queries}
    result = RerankStage(build, 3, tmp_path / "ck", progress=False).rerank(
        queries, candidates, lambda ids: {i: texts[i] for i in ids})
    assert result.blocks == 3 and result.pairs == 18
    assert result.pairs_per_second == pytest.approx(100.0)  # 0.01 s a pair: neither the build nor the first call
    speed = result.speed()
    assert speed["rerank_block_pairs_per_s"] == pytest.approx([100.0] * 3)
    assert speed["rerank_warmup_pairs"] == 6  # the first block, whole (it is smaller than WARMUP_PAIRS)
    assert speed["rerank_timed"].startswith("scoring calls only") and "warm-up" in speed["rerank_timed"]
    assert speed["rerank_speed_source"].startswith("this run's own timing: one pass over each block")


def test_old_records_rates_are_read_and_named_for_what_they_are():
    old = QualityTimings.model_validate({"rerank_pairs_per_s": 129.0, "rerank_scoring_seconds": 10.0})
    rate, what = old.speed()
    assert rate == 129.0 and "warm-up included" in what
    new = QualityTimings.model_validate({"rerank_pairs_per_s": 400.0, "rerank_timed": "scoring calls only",
                                         "rerank_speed_source": "this run's own timing",
                                         "rerank_block_pairs_per_s": [380.0, 420.0]})
    assert new.speed() == (400.0, "this run's own timing; 2 blocks, 380 to 420 pairs/s")


# -- item 13: token diagnostics mean the same for every engine --------------------------------------
@pytest.mark.parametrize("reuse", [True, False])
def test_decoder_prefix_reuse_diagnostics_stay_shares(cache_dir, tmp_path, reuse):
    """The tiny Qwen3 reranker, fast engine, on 4 queries × 5 passages: the prompt tokens, the share
    saved by computing each query's prefix once, and padding among the positions computed, against
    a count made here from the prompts' own ids."""
    from bench.config import RerankerSpec
    from bench.engine.prompts import PromptTokenizer
    from bench.rerank import build_reranker

    spec = RerankerSpec(model="random:tiny-qwen3-reranker", engine="fast", dtype="fp32", device="cpu",
                        max_length=96, prefix_reuse=reuse)
    reranker = build_reranker(spec, cache_dir=cache_dir)
    queries = {f"q{i}": f"what is the {word} of the river" for i, word in enumerate(["length", "source", "mouth", "age"])}
    texts = {f"d{j}": " ".join(["the river runs"] * (j + 1)) + f" passage {j}" for j in range(5)}
    candidates = {q: {d: -float(j) for j, d in enumerate(texts)} for q in queries}
    result = RerankStage(lambda: reranker, 5, tmp_path / "ck", progress=False).rerank(
        queries, candidates, lambda ids: {i: texts[i] for i in ids})
    diagnostics = result.diagnostics()

    enc = PromptTokenizer(reranker.tokenizer, "qwen3", 96)([(queries[q], texts[d]) for q in sorted(queries) for d in texts])
    prompt = sum(len(s) for s in enc.seqs)
    shared = [min(n, len(s) - 1) if reuse else 0 for s, n in zip(enc.seqs, enc.shared)]
    prefixes = {tuple(s[:n]) for s, n in zip(enc.seqs, shared) if n > 0}
    computed = sum(map(len, prefixes)) + sum(len(s) - n for s, n in zip(enc.seqs, shared))
    assert diagnostics["mean_tokens_per_pair"] == pytest.approx(prompt / 20)
    assert diagnostics["prefix_saved_share"] == pytest.approx(1 - computed / prompt)
    assert (diagnostics["prefix_saved_share"] > 0.3) is reuse
    assert 0.0 <= diagnostics["padding_share"] <= 1.0
    assert diagnostics["mean_computed_tokens_per_pair"] * 20 >= computed  # positions computed: real ones and padding
    assert "computed_tokens" not in diagnostics.get("counters", {})  # a standard counter now, not a family's own


# -- item 14: days on a CPU are said before any work --------------------------------------------------
def big_rerank(experiment_toml, tmp_path):
    """100 synthetic queries, BM25 top-100, reranked by bge-reranker-large's shape: 10,000 pairs."""
    return experiment_toml("big.toml", name="big", cache_dir=str(tmp_path / "cache"),
                           first_stages={"bm25": {"kind": "bm25", "depth": 100}},
                           datasets=[{"source": "synthetic", "synthetic": {"languages": ["en"], "docs_per_language": 400,
                                                                           "queries_per_language": 100}}],
                           rerankers=[{"model": "random:bge-reranker-large", "name": "large", "top_k": 100}])


class Started(Exception):
    """Raised where the run would start its work."""


def test_a_run_of_days_on_a_cpu_stops_before_any_work(experiment_toml, tmp_path, monkeypatch, capsys):
    import torch

    import bench.commands.run
    import bench.plan.preflight

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench.plan.preflight, "cpu_flop_rate", lambda: 1e11)  # 100 GFLOP/s: the test's own CPU
    monkeypatch.setattr(bench.commands.run, "run_experiment", lambda *a, **k: (_ for _ in ()).throw(Started()))
    path = big_rerank(experiment_toml, tmp_path)
    # the committed H100 throughput record of random:bge-reranker-large: FLOPs per pair at its lengths
    record = json.loads((REPO / "results" / "gpu-checks-h100" / "results.json").read_text())["records"]["throughput"]
    best = max((c for c in record["cells"] if c.get("pairs_per_s")), key=lambda c: c["pairs_per_s"])
    flops = 10_000 * best["useful_flop"] / best["n_pairs"]
    assert flops / 1e11 > 3600  # the case: more than an hour at this CPU's full matrix rate

    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress", "--skip-preflight"]) == 2
    err = capsys.readouterr().err
    assert f"this machine has no GPU, and the run would take at least {flops / 1e11 / 3600:.1f} h on its CPU" in err
    assert f"{flops:.1e} FLOPs at the 100 GFLOP/s" in err and "on NVIDIA H100 80GB HBM3" in err
    assert "`make demo` (bench run experiments/offline.toml)" in err and "pass --allow-slow" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    with pytest.raises(Started):  # told so, it runs
        main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress", "--skip-preflight", "--allow-slow"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(Started):  # on a GPU machine the guard says nothing
        main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress", "--skip-preflight"])
