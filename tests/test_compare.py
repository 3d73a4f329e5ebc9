"""Comparisons: the tests' statistics, Holm, marks, and `bench compare` over runs and records."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pandas as pd
import pytest

from bench.report.compare import SCORE_COLUMNS, Settings, compare, scores_from_records, scores_from_runs
from bench.errors import BenchError
from bench.evaluate import Conventions, evaluate
from bench.records import make_record, read_record
from bench.runs import read_qrels, read_run, write_qrels, write_run
from bench.stats import bootstrap_ci, holm, paired_randomization_test, paired_t_test


@pytest.fixture(scope="module", autouse=True)
def ranx_warm():
    from bench.evaluate import warm_up

    warm_up()


# ----------------------------------------------------------------------------------- statistics
def test_randomization_test_exact_small_case_and_determinism():
    # diffs (1, 1, 1): of the 8 equally likely sign patterns, 2 reach |mean| >= 1 -> exact p = 0.25
    a, b = np.zeros(3), np.ones(3)
    p = paired_randomization_test(a, b, permutations=40_000, seed=1)
    assert p == pytest.approx(0.25, abs=0.01)
    assert paired_randomization_test(a, b, 40_000, seed=1) == p  # same seed, same p
    assert paired_randomization_test(a, a, 1000) == 1.0


def test_randomization_test_agrees_with_ranx_fisher():
    from ranx.statistical_tests import fisher_randomization_test

    rng = np.random.default_rng(0)
    a = rng.random(119)
    b = np.clip(a + rng.normal(0.02, 0.1, 119), 0, 1)
    ours = paired_randomization_test(a, b, permutations=20_000, seed=3)
    theirs, _ = fisher_randomization_test(a, b, 20_000, 0.05, 42)
    assert 0.01 < ours < 0.9
    assert ours == pytest.approx(theirs, abs=0.02)  # Monte Carlo error of 20k swaps is about 0.003


def test_t_test_is_scipys_paired_test():
    from scipy.stats import ttest_rel

    rng = np.random.default_rng(1)
    a, b = rng.random(50), rng.random(50)
    assert paired_t_test(a, b) == pytest.approx(ttest_rel(a, b).pvalue, abs=1e-12)
    assert paired_t_test(a, a) == 1.0


def test_bootstrap_interval():
    rng = np.random.default_rng(2)
    a = rng.random(200)
    b = a + 0.1 + rng.normal(0, 0.05, 200)
    low, high = bootstrap_ci(a, b, resamples=5000, seed=0)
    assert low < (b - a).mean() < high
    assert 0.09 < low < high < 0.11
    assert bootstrap_ci(a, a + 0.25, resamples=100) == pytest.approx((0.25, 0.25))
    assert bootstrap_ci(a, b, resamples=5000, seed=0) == (low, high)


def test_holm_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, max(0.04*1, 0.06) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


# --------------------------------------------------------------------------------- comparisons
def _systems_on(qrels, seed=0, n_random=30):
    """A weak first stage (relevant documents somewhere in 40 candidates) and a 'reranker' that
    lifts most relevant documents to the top; a third system identical to the first stage."""
    rng = random.Random(seed)
    pool = sorted({d for docs in qrels.values() for d in docs})
    first, reranked = {}, {}
    for qid, docs in qrels.items():
        candidates = list(dict.fromkeys(list(docs) + rng.sample(pool, min(n_random, len(pool)))))
        first[qid] = {d: rng.random() for d in candidates}
        reranked[qid] = {d: s + (1.0 if docs.get(d, 0) > 0 and rng.random() < 0.8 else 0.0) for d, s in first[qid].items()}
    return {"bm25": first, "reranker": reranked, "bm25-copy": dict(first)}


def test_compare_runs_marks_and_holm():
    rng = random.Random(5)
    qrels = {f"q{i}": {f"d{j}": int(rng.random() < 0.3) for j in range(20)} for i in range(60)}
    runs = _systems_on(qrels)
    scores = scores_from_runs(qrels, runs, ["ndcg@10", "MRR@10"], dataset="toy")
    assert list(scores.columns) == SCORE_COLUMNS
    result = compare(scores, Settings(permutations=2000, bootstrap=2000))
    assert result.systems == ["bm25", "reranker", "bm25-copy"]
    means = result.means.set_index(["metric", "system"])
    assert means.loc[("nDCG@10", "bm25"), "mean"] == pytest.approx(evaluate(qrels, runs["bm25"], ["ndcg@10"]).means["nDCG@10"])
    assert means.loc[("nDCG@10", "reranker"), "better_than"] == "ac"
    assert means.loc[("nDCG@10", "bm25"), "better_than"] == ""
    same = result.pairs[(result.pairs.system_a == "bm25") & (result.pairs.system_b == "bm25-copy")]
    assert (same.p_t_test == 1.0).all() and (same.p_randomization == 1.0).all() and (same["diff"] == 0).all()
    # Holm family = the 3 pairs of one metric's table
    ndcg = result.pairs[result.pairs.metric == "nDCG@10"]
    assert list(ndcg.p_randomization_adjusted) == pytest.approx(list(holm(ndcg.p_randomization)))
    text = result.markdown()
    assert "(b) reranker" in text and "<sup>ac</sup>" in text and "Holm correction over the 3 comparisons" in text


def test_compare_refuses_unpaired_queries():
    frame = pd.DataFrame([("d", None, "A", "m", "q1", 0.1), ("d", None, "A", "m", "q2", 0.2),
                          ("d", None, "B", "m", "q1", 0.3)], columns=SCORE_COLUMNS)
    with pytest.raises(BenchError, match=r"system 'B' has no score for queries \['q2'\]"):
        compare(frame)
    twice = pd.concat([frame, frame.iloc[:1]])
    with pytest.raises(BenchError, match="appears twice"):
        compare(twice)


def _quality_record(out, dataset, language, system, stage, qrels, run, metrics, conventions, **system_fields):
    """A record in the shape the pipeline writes (bench/pipeline.py `_quality_record`)."""
    evaluation = evaluate(qrels, run, metrics, conventions)
    run_path = out / "runs" / dataset.replace("/", "_") / f"{system}.trec"
    write_run(run, run_path, tag=system)
    qrels_path = write_qrels(qrels, run_path.parent / "qrels.txt")
    rec = make_record("quality", dataset={"label": dataset, "language": language, "n_queries": len(qrels)},
                      system={"label": system, "stage": stage, **system_fields},
                      evaluation={"metrics": metrics, "conventions": conventions.describe()},
                      metrics=evaluation.means, per_query=evaluation.per_query,
                      run_file=str(run_path.relative_to(out)), qrels_file=str(qrels_path.relative_to(out)))
    rec.to_disk(out / "records" / f"{dataset.replace('/', '_')}__{system}.json")


@pytest.fixture(scope="module")
def shared_records(shared_data, tmp_path_factory):
    """Quality records for first stage vs reranker over both shared collections."""
    out = tmp_path_factory.mktemp("records")
    conventions = Conventions(depth=100)
    for dataset, language, folder in (("miracl/yo/dev", "yo", "miracl-yo-dev"), ("vaswani", "en", "vaswani")):
        qrels_file = next((shared_data / folder / "qrels").glob("*.tsv"))
        qrels = read_qrels(qrels_file)
        runs = _systems_on(qrels, seed=len(dataset), n_random=120)
        for system, stage in (("bm25", "first_stage"), ("reranker", "rerank")):
            _quality_record(out, dataset, language, system, stage, qrels, runs[system], ["nDCG@10", "Recall@100"],
                            conventions)
    return out


def test_bench_compare_records_over_both_shared_collections(shared_records, tmp_path, capsys):
    from bench.cli import main

    out = tmp_path / "cmp"
    code = main(["compare", str(shared_records / "records"), "--metric", "ndcg@10", "--out", str(out),
                 "--permutations", "2000", "--bootstrap", "2000"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "| system" in captured.out and re.search(r"\|\s+yo \|\s+en \|\s+Avg \|", captured.out)
    assert "<sup>a</sup>" in captured.out  # the reranker beats the first stage
    assert "Metrics under trec_eval -c -M 100" in captured.out
    for name in ("comparison.md", "comparison.tex", "pairs.csv", "means.csv", "differences_nDCG_10.png", "comparison.json"):
        assert (out / name).is_file(), name
    assert (out / "differences_nDCG_10.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "\\begin{tabular}" in (out / "comparison.tex").read_text() and "$^{a}$" in (out / "comparison.tex").read_text()
    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs) == 2 and set(pairs.dataset) == {"miracl/yo/dev", "vaswani"}
    assert (pairs.ci_low > 0).all() and (pairs.significant).all()
    rec = read_record(out / "comparison.json")
    assert rec.kind == "comparison" and rec.plots == ["differences_nDCG_10.png"]
    # record means equal the records' own means
    yo = json.loads((shared_records / "records" / "miracl_yo_dev__reranker.json").read_text())
    means = pd.read_csv(out / "means.csv").set_index(["dataset", "system"])
    assert means.loc[("miracl/yo/dev", "reranker"), "mean"] == pytest.approx(yo["metrics"]["nDCG@10"])


def test_a_metric_the_records_lack_comes_from_their_run_files(shared_records, shared_data, tmp_path, capsys):
    """MRR@10 is in no record: compare computes it from the run and qrels files beside each record,
    under the record's conventions (-M 100), says so, and gets what evaluating those files gives."""
    import shutil

    from bench.cli import main
    from bench.report.compare import load_records, scores_from_records

    folder = tmp_path / "copy"
    shutil.copytree(shared_records, folder)
    code = main(["compare", str(folder / "records"), "-m", "mrr@10", "ndcg@10", "--permutations", "500",
                 "--bootstrap", "500"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err.count("note:") == 4 and "MRR@10 computed from its run file runs/" in captured.err
    assert "MRR@10" in captured.out or "mrr@10" in captured.out
    rec = json.loads((folder / "records" / "vaswani__reranker.json").read_text())
    qrels = read_qrels(folder / rec["qrels_file"])
    assert qrels == read_qrels(next((shared_data / "vaswani" / "qrels").glob("*.tsv")))
    expect = evaluate(qrels, read_run(folder / rec["run_file"]), ["mrr@10"], Conventions(depth=100))
    scores = scores_from_records(load_records([folder / "records" / "vaswani__reranker.json"]), ["mrr@10"])
    got = scores.set_index("query")["value"].to_dict()
    assert got == pytest.approx(expect.per_query["MRR@10"], abs=1e-12) and len(got) == len(qrels)

    # files that do not reproduce the record's own nDCG@10 are refused, by name
    run_path = folder / rec["run_file"]
    reversed_run = {q: {d: -s for d, s in docs.items()} for q, docs in read_run(run_path).items()}
    write_run(reversed_run, run_path, tag="reversed")
    with pytest.raises(BenchError, match="do not reproduce its own nDCG@10"):
        scores_from_records(load_records([folder / "records" / "vaswani__reranker.json"]), ["mrr@10"])
    # a record without the files says what to do instead
    del rec["qrels_file"]
    (folder / "old.json").write_text(json.dumps(rec))
    with pytest.raises(BenchError, match="names no qrels_file.*bench eval"):
        scores_from_records(load_records([folder / "old.json"]), ["mrr@10"])


def test_bench_compare_run_files(shared_data, tmp_path, capsys):
    from bench.cli import main

    qrels_path = shared_data / "vaswani" / "qrels" / "test.tsv"
    runs = _systems_on(read_qrels(qrels_path), seed=9)
    paths = [write_run(run, tmp_path / f"{name}.trec", tag=name) for name, run in runs.items() if name != "bm25-copy"]
    code = main(["compare", *map(str, paths), "--qrels", str(qrels_path), "-m", "ndcg@10", "map", "--depth", "100",
                 "--test", "t-test", "--permutations", "500", "--bootstrap", "500"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "### nDCG@10" in captured.out and "### MAP" in captured.out and "paired t-test" in captured.out
    assert main(["compare", *map(str, paths)]) == 2
    assert "need --qrels" in capsys.readouterr().err
    assert main(["compare", *map(str, paths), "--qrels", str(qrels_path), "--label", "x", "--label", "x"]) == 2
    assert "labels repeat" in capsys.readouterr().err


def test_records_metric_matching_and_mixed_conventions(tmp_path):
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    run = {"q1": {"d1": 1.0}, "q2": {"d3": 1.0}}
    _quality_record(tmp_path, "toy", None, "A", "first_stage", qrels, run, ["nDCG@10"], Conventions())
    _quality_record(tmp_path, "toy", None, "B", "rerank", qrels, run, ["nDCG@10"], Conventions(depth=5))
    from bench.report.compare import load_records

    records = load_records([tmp_path / "records"])
    with pytest.raises(BenchError, match="different conventions"):
        scores_from_records(records, ["ndcg@10"])
    scores = scores_from_records(records[:1], ["ndcg@10"])
    assert set(scores.metric) == {"nDCG@10"} and len(scores) == 2
    notes = []
    mapped = scores_from_records(records[:1], ["map"], notes=notes)  # not in the record: from its files
    assert mapped.set_index("query")["value"].to_dict() == {"q1": 1.0, "q2": 0.0} and len(notes) == 1


def test_run_files_and_records_must_share_conventions(tmp_path, capsys):
    """One check, in the library, serves records among themselves and records beside run files."""
    from bench.cli import main
    from bench.report.compare import load_records, shared_conventions

    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    run = {"q1": {"d1": 1.0}, "q2": {"d3": 1.0}}
    _quality_record(tmp_path, "toy", None, "A", "first_stage", qrels, run, ["nDCG@10"], Conventions())
    records = load_records([tmp_path / "records"])
    assert shared_conventions(records) == "-c" and shared_conventions(records, "-c") == "-c"
    assert shared_conventions([], "-c -M 5") == "-c -M 5"
    with pytest.raises(BenchError, match=r"the run files with -c -M 5; pass the same --depth"):
        shared_conventions(records, "-c -M 5")
    run_file, qrels_file = tmp_path / "runs" / "toy" / "A.trec", tmp_path / "runs" / "toy" / "qrels.txt"
    assert main(["compare", str(run_file), str(tmp_path / "records"), "--qrels", str(qrels_file), "--label", "B",
                 "--dataset", "toy", "--depth", "5"]) == 2
    assert "pass the same --depth/--rel-level/--judged-only" in capsys.readouterr().err


def test_untrained_systems_are_marked(tmp_path):
    from bench.report.compare import load_records

    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    run = {"q1": {"d1": 1.0}, "q2": {"d3": 1.0}}
    _quality_record(tmp_path, "toy", None, "rnd", "rerank", qrels, run, ["nDCG@10"], Conventions(),
                    reranker={"model": {"id": "random:tiny-xlmr-reranker", "untrained": True}})
    _quality_record(tmp_path, "toy", None, "bm25", "first_stage", qrels, run, ["nDCG@10"], Conventions())
    scores = scores_from_records(load_records([tmp_path / "records"]))
    assert list(dict.fromkeys(scores.system)) == ["first stage: bm25", "rnd (untrained)"]  # first stage first


def test_rr_at_10_finds_records_evaluated_for_mrr_at_10(tmp_path, capsys):
    """`-m RR@10` (ir_measures' spelling) finds per-query values a record holds as MRR@10, and those of
    a record written before metrics had one form, keyed on the spelling its user typed (mrr@10):
    nothing is recomputed (the run files are gone), and the table is headed by the canonical form."""
    import shutil

    from bench.cli import main
    from bench.report.compare import load_records

    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}}
    first = {"q1": {"d9": 2.0, "d1": 1.0}, "q2": {"d2": 1.0}, "q3": {"d8": 1.0}}
    better = {"q1": {"d1": 2.0, "d9": 1.0}, "q2": {"d2": 1.0}, "q3": {"d3": 1.0}}
    _quality_record(tmp_path, "toy", None, "A", "first_stage", qrels, first, ["MRR@10"], Conventions())
    _quality_record(tmp_path, "toy", None, "B", "rerank", qrels, better, ["mrr@10"], Conventions())
    old = tmp_path / "records" / "toy__B.json"
    rec = json.loads(old.read_text())
    rec["metrics"], rec["per_query"] = {"mrr@10": rec["metrics"]["MRR@10"]}, {"mrr@10": rec["per_query"]["MRR@10"]}
    old.write_text(json.dumps(rec))
    shutil.rmtree(tmp_path / "runs")

    records = load_records([tmp_path / "records"])
    for asked in (["RR@10"], ["recip_rank.10"], None):
        scores = scores_from_records(records, asked)
        assert set(scores.metric) == {"MRR@10"}
        assert scores.set_index(["system", "query"])["value"].to_dict() == {
            ("first stage: A", "q1"): 0.5, ("first stage: A", "q2"): 1.0, ("first stage: A", "q3"): 0.0,
            ("B", "q1"): 1.0, ("B", "q2"): 1.0, ("B", "q3"): 1.0}
    code = main(["compare", str(tmp_path / "records"), "-m", "RR@10", "--permutations", "200", "--bootstrap", "200"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "note:" not in captured.err and "### MRR@10" in captured.out and "RR@10" not in captured.out.replace("MRR@10", "")
