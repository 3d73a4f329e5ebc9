"""Score fidelity: NaN/inf errors, rank agreement, top-10 identity and nDCG@10 deltas."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bench.errors import BenchError
from bench.records import CellResult
from bench.rerank.common import check_scores
from bench.throughput.fidelity import compare, ndcg_at_10, reference_for, sweep_fidelity
from bench.throughput.pairs import PairSet
from bench.throughput.tables import fidelity_table


def make_pairset(n_queries=5, k=20, seed=0):
    rng = np.random.default_rng(seed)
    qids = [f"q{i}" for i in range(n_queries) for _ in range(k)]
    dids = [f"d{j}" for _ in range(n_queries) for j in range(k)]
    pairs = [(f"query {q}", f"passage {d}") for q, d in zip(qids, dids)]
    qrels = {f"q{i}": {f"d{j}": int(r) for j, r in enumerate(rng.integers(0, 3, size=8))} for i in range(n_queries)}
    return PairSet(pairs, qids, dids, k, {"collection": "generated"}), qrels


def test_nan_and_inf_name_the_pair():
    ps, _ = make_pairset(2, 4)
    scores = np.arange(8, dtype=np.float32)
    scores[5] = np.nan
    with pytest.raises(BenchError, match=r"bf16: score of pair 5 is nan \(query 'q1' .*document 'd1'\)"):
        check_scores(scores, ps.pairs, "bf16", qids=ps.qids, doc_ids=ps.doc_ids)
    scores[5], scores[2] = 1.0, np.inf
    with pytest.raises(BenchError, match=r"pair 2 is inf"):
        compare(np.arange(8, dtype=np.float32), scores, ps)
    with pytest.raises(AssertionError, match="7 scores for 8 pairs"):  # an engine bug: a traceback, not a BenchError
        check_scores(scores[:7], ps.pairs, "bf16")


def test_identical_scores_agree_perfectly():
    ps, qrels = make_pairset()
    s = np.random.default_rng(1).normal(size=len(ps)).astype(np.float32)
    out = compare(s, s.copy(), ps, qrels=qrels, evaluator="builtin")
    assert out["max_abs_diff"] == 0 and out["top10_identical"] == 1.0
    assert out["kendall_tau"]["min"] == pytest.approx(1.0) and out["kendall_tau"]["n_queries"] == 5
    assert out["ndcg@10"]["delta"] == 0 and out["ndcg@10"]["reference"] > 0


def test_a_swap_in_one_top10_is_counted_and_kendall_matches_scipy():
    from scipy.stats import kendalltau

    ps, qrels = make_pairset()
    s = np.random.default_rng(2).normal(size=len(ps)).astype(np.float32)
    t = s.copy()
    sl = ps.query_slices()[3][1]
    order = np.argsort(-s[sl], kind="stable")
    a, b = sl.start + order[0], sl.start + order[1]
    t[a], t[b] = s[b], s[a]  # swap the top two of query q3
    t[sl.start + order[-1]] -= 0.5  # and move the last one further down (no rank change)
    out = compare(s, t, ps, qrels=qrels, evaluator="builtin")
    assert out["top10_identical"] == pytest.approx(4 / 5) and out["top10_identical_queries"] == 4
    assert out["max_abs_diff"] == pytest.approx(max(abs(s[a] - s[b]), 0.5), rel=1e-6)
    assert out["kendall_tau"]["min"] == pytest.approx(kendalltau(s[sl], t[sl]).statistic)
    assert out["kendall_tau"]["min"] < 1 and out["kendall_tau"]["median"] == pytest.approx(1.0)


def test_constant_scores_have_no_tau_and_ties_follow_the_project_rule():
    ps, qrels = make_pairset(2, 12)
    s = np.zeros(len(ps), dtype=np.float32)
    out = compare(s, s, ps, qrels=qrels, evaluator="builtin")
    assert out["kendall_tau"]["tau_undefined"] == 2 and out["kendall_tau"]["median"] is None
    assert out["top10_identical"] == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_builtin_ndcg_equals_pytrec_eval(seed):
    rng = np.random.default_rng(seed)
    qrels = {f"q{i}": {f"d{j}": int(rng.integers(-1, 4)) for j in rng.choice(30, size=10, replace=False)}
             for i in range(8)}
    qrels["q_empty"] = {"d1": 0}
    # ties (scores rounded to 1 decimal), a query the run misses, documents without judgements
    run = {f"q{i}": {f"d{j}": float(np.round(rng.normal(), 1)) for j in range(30)} for i in range(7)}
    (pt,), by_pt = ndcg_at_10(qrels, [run], "pytrec_eval")
    (bi,), by_bi = ndcg_at_10(qrels, [run], "builtin")
    assert by_pt.startswith("pytrec_eval") and by_bi.startswith("builtin")
    assert bi == pytest.approx(pt, abs=1e-12)
    with pytest.raises(BenchError, match="unknown evaluator"):
        ndcg_at_10(qrels, [run], "trec")


def test_duplicate_candidates_are_an_error():
    ps = PairSet([("q", "a"), ("q", "a")], ["q1", "q1"], ["d1", "d1"], 2)
    with pytest.raises(BenchError, match="appears twice"):
        compare(np.zeros(2, np.float32), np.ones(2, np.float32), ps)


def test_sweep_fidelity_references_and_subsets():
    ps, qrels = make_pairset(4, 10)
    rng = np.random.default_rng(3)
    ref = rng.normal(size=len(ps)).astype(np.float32)
    cells = [
        {"label": "plain fp32", "engine": "transformers", "variant": "transformers", "dtype": "fp32",
         "dtype_resolved": "fp32", "max_length": 512, "n_pairs": 20},
        {"label": "fast fp32", "engine": "fast", "variant": "fast", "dtype": "fp32", "dtype_resolved": "fp32",
         "max_length": 512, "n_pairs": 40},
        {"label": "fast bf16", "engine": "fast", "variant": "fast", "dtype": "bf16", "dtype_resolved": "bf16",
         "max_length": 512, "n_pairs": 40},
        {"label": "flag fp16", "engine": "flag", "variant": "flag", "dtype": "fp16", "dtype_resolved": "fp16",
         "max_length": 512, "n_pairs": 40},
        {"label": "broken", "engine": "fast", "variant": "fast", "dtype": "fp16", "max_length": 512, "error": "x"},
    ]
    cells = [CellResult.model_validate(c) for c in cells]
    assert reference_for(cells[2], cells).label == "fast fp32"
    assert reference_for(cells[3], cells).label == "plain fp32"
    scores = {"plain fp32": ref[:20], "fast fp32": ref, "fast bf16": ref + 1e-3, "flag fp16": ref[:40] * 2}
    out = sweep_fidelity(SimpleNamespace(cells=cells), scores, ps, qrels=qrels, evaluator="builtin")
    by = {c.cell: c for c in out}
    assert set(by) == {"fast bf16", "flag fp16"}
    assert by["fast bf16"].reference == "fast fp32" and by["fast bf16"].n_pairs == 40
    assert by["fast bf16"].max_abs_diff == pytest.approx(1e-3, rel=1e-3) and by["fast bf16"].top10_identical == 1
    assert by["flag fp16"].reference == "plain fp32" and by["flag fp16"].n_queries == 2
    assert by["flag fp16"].kendall_tau["min"] == pytest.approx(1.0)  # a positive scaling keeps every order
    with_fp32 = sweep_fidelity(SimpleNamespace(cells=cells), scores, ps, include_fp32=True)
    assert {(c.cell, c.reference) for c in with_fp32} == {
        ("fast bf16", "fast fp32"), ("flag fp16", "plain fp32"), ("fast fp32", "plain fp32")}
    table = fidelity_table(out)
    assert "fast bf16" in table and "100.0%" in table and table.count("\n") == 4


def test_real_bf16_against_fp32_on_shared_pairs(shared_data, tiny_reranker):
    """A real precision change on real Yoruba pairs: scores move a little, never to NaN, and the
    report computes every field (tiny random model: the numbers themselves mean nothing)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bench.config import CollectionSpec
    from bench.data import load_collection
    from bench.throughput.pairs import pairs_from_collection

    col = load_collection(CollectionSpec(source="beir", path=str(shared_data / "miracl-yo-dev"), split="dev"))
    ps = pairs_from_collection(col, k=16, max_queries=4, pool=3000)
    tok = AutoTokenizer.from_pretrained(tiny_reranker)
    enc = tok([q for q, _ in ps.pairs], [d for _, d in ps.pairs], padding=True, truncation="only_second",
              max_length=256, return_tensors="pt")
    scores = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = AutoModelForSequenceClassification.from_pretrained(tiny_reranker, dtype=dtype).eval()
        with torch.inference_mode():
            scores[name] = model(**enc).logits[:, 0].float().numpy()
    out = compare(scores["fp32"], scores["bf16"], ps, qrels=col.qrels)
    assert 0 < out["max_abs_diff"] < 1
    assert -1 <= out["kendall_tau"]["min"] <= out["kendall_tau"]["median"] <= 1
    assert 0 <= out["top10_identical"] <= 1 and out["n_queries"] == 4
    assert out["ndcg@10"]["n_queries"] == 4 and out["ndcg@10"]["computed_by"]


def test_half_precision_script_on_trained_weights(shared_data, tmp_path, capsys):
    """The trained-weights fidelity script (results/half-precision-fidelity-minilm), on 5 Vaswani
    queries: it writes its record, and fp16's score error is well under bf16's, as measured at scale.
    Run in this process, as `python experiments/fidelity/half_precision_trained_weights.py` would."""
    import json
    from pathlib import Path

    from conftest import run_script

    script = Path(__file__).resolve().parents[1] / "experiments" / "fidelity" / "half_precision_trained_weights.py"
    assert run_script(script, "--out", str(tmp_path), "--data", str(shared_data), "--collections", "vaswani",
                      "--max-docs", "100", "--max-queries", "5") == 0
    stdout = capsys.readouterr().out
    rec = json.loads((tmp_path / "fidelity-minilm.json").read_text())
    by = {c["cell"]: c for c in rec["comparisons"]}
    assert set(by) == {"bf16", "fp16"} and all(c["n_queries"] == 5 for c in by.values())
    assert by["fp16"]["max_abs_diff"] < by["bf16"]["max_abs_diff"] / 3
    assert by["fp16"]["top10_identical"] >= by["bf16"]["top10_identical"]
    assert rec["retrieval"][0]["docs"] > 100 and "| vaswani |" in stdout
