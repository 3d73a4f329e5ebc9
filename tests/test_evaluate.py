"""Agreement with trec_eval (pytrec_eval-terrier) on many generated cases, to 1e-9.

The reference side never uses the harness's own ordering: it hands pytrec_eval the raw scores
(trec_eval sorts them itself), and where a cut is needed before pytrec_eval (trec_eval -M, MRR@k)
it sorts with a transcription of trec_eval's comparator (score descending, then strcmp of the
UTF-8 doc ids, descending).
"""

from __future__ import annotations

import functools
import random

import pytest

from bench.errors import BenchError
from bench.config import EvaluationSpec
from bench.evaluate import Conventions, evaluate
from bench.metrics import Metric, parse_metric

pytrec_eval = pytest.importorskip("pytrec_eval")

CUTS = (1, 3, 5, 10)
TOL = 1e-9


@pytest.fixture(scope="session", autouse=True)
def ranx_warm():
    """Compile (or load) ranx's kernels once per session, not inside a timed test."""
    from bench.evaluate import warm_up

    warm_up()


def _trec_eval_cmp(a, b):
    """trec_eval's comp_sim_docno on (docid, score): higher score first, then strcmp(doc2, doc1)."""
    if a[1] > b[1]:
        return -1
    if a[1] < b[1]:
        return 1
    ab, bb = a[0].encode(), b[0].encode()
    return (ab < bb) - (ab > bb)


def _trec_sorted(docs):
    return sorted(docs.items(), key=functools.cmp_to_key(_trec_eval_cmp))


def _cut(run, k):
    return {q: dict(_trec_sorted(d)[:k]) for q, d in run.items()}


def _judged_filter(run, qrels):
    return {q: {d: s for d, s in docs.items() if qrels.get(q, {}).get(d, -1) >= 0} for q, docs in run.items()}


def _reference(qrels, run, measure, conventions, k_cut=None):
    """Per-query trec_eval value of `measure` over every qrels query (-c), optional extra cut at k."""
    if conventions.depth is not None:
        run = _cut(run, conventions.depth)
    if k_cut is not None:  # a cut after -M and -J: filter judged first so -J cannot see documents past k
        if conventions.judged_only:
            run = _judged_filter(run, qrels)
        run = _cut(run, k_cut)
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {measure}, relevance_level=conventions.rel_level,
                                               judged_docs_only_flag=conventions.judged_only)
    out = evaluator.evaluate(run)
    key = measure.replace(".", "_")
    values = {}
    for qid in qrels:
        if qid in out:
            values[qid] = out[qid][key]
        else:
            assert qid not in run, f"pytrec_eval dropped query {qid} that the run has"
            values[qid] = 0.0
    return values


def _reference_judged(qrels, run, k, conventions):
    """Judged@k from trec_eval: P@k with every judgment ≥ 0 shifted to ≥ 1 (pytrec_eval refuses level 0)."""
    shifted = {q: {d: (r + 1 if r >= 0 else r) for d, r in docs.items()} for q, docs in qrels.items()}
    return _reference(shifted, run, f"P.{k}", Conventions(conventions.depth, 1, conventions.judged_only))


def _metric_plan():
    """(our name, reference measure, extra cut) pairs; names in mixed spellings users write."""
    plan = [("ndcg", "ndcg", None), ("map", "map", None), ("MRR", "recip_rank", None),
            ("r-precision", "Rprec", None), ("RPrec", "Rprec", None)]
    for k in CUTS:
        plan += [(f"nDCG@{k}", f"ndcg_cut.{k}", None), (f"recall@{k}", f"recall.{k}", None),
                 (f"MAP@{k}", f"map_cut.{k}", None), (f"P@{k}", f"P.{k}", None),
                 (f"precision@{k}", f"P.{k}", None), (f"mrr@{k}", "recip_rank", k)]
    return plan


def _random_case(rng: random.Random):
    """Qrels and a run exercising the conventions: graded or binary judgments, judged non-relevant
    and negative judgments, ties (incl. all-equal scores), queries missing from the run, run-only
    queries, empty rankings, ids whose string order differs from numeric order, non-ASCII ids."""
    graded = rng.random() < 0.5
    n_queries = rng.randint(1, 7)
    pool = [f"d{i}" for i in range(rng.randint(3, 25))] + ["é1", "ß", "Z9", "a-b"]
    qrels, run = {}, {}
    for qi in range(n_queries):
        qid = f"q{qi}"
        judged = rng.sample(pool, rng.randint(1, min(len(pool), 12)))
        levels = [0, 1, 2, 3] if graded else [0, 1]
        qrels[qid] = {d: rng.choice(levels) for d in judged}
        if rng.random() < 0.15:
            qrels[qid][rng.choice(judged)] = -1  # trec_eval: "in the pool but unjudged"
        if all(r < 0 for r in qrels[qid].values()):
            qrels[qid][judged[0]] = 0  # trec_eval reads past an array with only negative judgments
        mode = rng.random()
        if mode < 0.1:
            continue  # missing from the run
        if mode < 0.15:
            run[qid] = {}  # empty ranking
            continue
        ranked = rng.sample(pool, rng.randint(1, len(pool)))
        tie_style = rng.random()
        if tie_style < 0.2:
            run[qid] = {d: 1.0 for d in ranked}
        elif tie_style < 0.6:
            run[qid] = {d: rng.choice([0.1, 0.2, 0.3, -1.5]) for d in ranked}
        else:
            run[qid] = {d: rng.random() for d in ranked}
    if rng.random() < 0.3:
        run["extra"] = {"d1": 1.0, "d2": 0.5}  # not in the qrels: ignored
    conventions = Conventions(depth=rng.choice([None, None, 1, 2, 5, 8]), rel_level=rng.choice([1, 1, 2]),
                              judged_only=rng.random() < 0.25)
    return qrels, run, conventions


def _check_case(qrels, run, conventions):
    plan = _metric_plan()
    names = [name for name, _, _ in plan] + [f"judged@{k}" for k in CUTS]
    # spellings of one metric (P@k and precision@k) are one metric: each is asked for once and
    # found under its canonical form
    ours = evaluate(qrels, run, list({str(parse_metric(n)): n for n in names}.values()), conventions)
    assert set(ours.means) == {str(parse_metric(n)) for n in names}
    for name, measure, k_cut in plan:
        ref = _reference(qrels, run, measure, conventions, k_cut)
        got = ours.per_query[str(parse_metric(name))]
        assert set(got) == set(qrels), name
        for qid in qrels:
            assert got[qid] == pytest.approx(ref[qid], abs=TOL), (name, qid, conventions, qrels[qid], run.get(qid))
        assert ours.means[str(parse_metric(name))] == pytest.approx(sum(ref.values()) / len(ref), abs=TOL)
    for k in CUTS:
        ref = _reference_judged(qrels, run, k, conventions)
        for qid in qrels:
            assert ours.per_query[f"judged@{k}"][qid] == pytest.approx(ref[qid], abs=TOL), (k, qid, conventions)


@pytest.mark.parametrize("seed", range(40))
def test_agrees_with_trec_eval_on_generated_cases(seed):
    rng = random.Random(seed)
    for _ in range(10):
        _check_case(*_random_case(rng))


def test_all_equal_scores_follow_trec_eval_order():
    """Ties only: the order is docid descending, which P@1 reveals directly."""
    qrels = {"q": {"d1": 1, "d10": 0, "d9": 0}}
    run = {"q": {"d1": 0.5, "d10": 0.5, "d9": 0.5}}
    ours = evaluate(qrels, run, ["P@1", "mrr"])
    assert ours.per_query["P@1"]["q"] == 0.0  # d9 ranks first ("d9" > "d10" > "d1")
    assert ours.per_query["MRR"]["q"] == pytest.approx(1 / 3)
    assert _reference(qrels, run, "recip_rank", Conventions()) == {"q": pytest.approx(1 / 3)}


def test_missing_and_run_only_queries_and_no_relevant():
    qrels = {"a": {"d1": 1}, "b": {"d2": 1}, "c": {"d3": 0}}
    run = {"a": {"d1": 1.0}, "c": {"d3": 1.0}, "zzz": {"d1": 1.0}}
    ours = evaluate(qrels, run, ["ndcg@10", "judged@1"])
    assert ours.per_query["nDCG@10"] == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert ours.means["nDCG@10"] == pytest.approx(1 / 3)  # b (missing) and c (no relevant) count as 0
    assert ours.per_query["judged@1"] == {"a": 1.0, "b": 0.0, "c": 1.0}
    assert ours.num_queries == 3


def test_ndcg_ignores_rel_level_like_trec_eval():
    qrels = {"q": {"a": 1, "b": 2}}
    run = {"q": {"a": 2.0, "b": 1.0}}
    lvl1 = evaluate(qrels, run, ["ndcg@2", "map"], Conventions(rel_level=1))
    lvl2 = evaluate(qrels, run, ["ndcg@2", "map"], Conventions(rel_level=2))
    assert lvl1.means["nDCG@2"] == lvl2.means["nDCG@2"] < 1.0
    assert lvl1.means["MAP"] == 1.0 and lvl2.means["MAP"] == 0.5


def test_metric_names_as_given_and_errors():
    assert parse_metric("nDCG@10").measure == "ndcg" and parse_metric("nDCG@10").cutoff == 10
    assert parse_metric("MAP@100").trec_eval == "map_cut.100"
    assert parse_metric("r-precision").trec_eval == "Rprec"
    for bad, message in [("bleu@4", "unknown metric 'bleu@4'; known: ndcg@10"), ("recall", "needs a cutoff"),
                         ("r-precision@5", "takes no cutoff"), ("ndcg@0", "at least 1"), ("ndcg@x", "unknown metric")]:
        with pytest.raises(BenchError, match=message):
            parse_metric(bad)
    with pytest.raises(BenchError, match="repeat"):
        evaluate({"q": {"d": 1}}, {}, ["ndcg@10", "ndcg@10"])


#: Spellings people type (ours, ir_measures', trec_eval's, any case) -> the one canonical form.
SPELLINGS = {
    "nDCG@10": ["nDCG@10", "ndcg@10", "NDCG@10", "ndcg_cut.10", " nDCG @ 10 "],
    "nDCG": ["ndcg", "nDCG"],
    "MRR@10": ["MRR@10", "mrr@10", "RR@10", "rr@10", "recip_rank@10"],
    "MRR": ["mrr", "RR", "recip_rank"],
    "Recall@100": ["Recall@100", "recall@100", "R@100", "recall.100"],
    "P@10": ["P@10", "p@10", "P.10", "precision@10"],
    "MAP": ["AP", "map", "MAP"],
    "MAP@100": ["AP@100", "map@100", "MAP@100", "map_cut.100"],
    "Rprec": ["Rprec", "RPREC", "r-precision", "R_precision"],
    "judged@10": ["Judged@10", "judged@10"],
}


@pytest.mark.parametrize("canonical", list(SPELLINGS))
def test_every_spelling_is_one_canonical_metric(canonical):
    metrics = {parse_metric(name) for name in SPELLINGS[canonical]}
    assert len(metrics) == 1, metrics
    metric = metrics.pop()
    assert str(metric) == canonical and parse_metric(canonical) == metric and parse_metric(metric) is metric
    qrels, run = {"q": {"a": 1, "b": 0}}, {"q": {"a": 1.0, "b": 0.5}}
    assert list(evaluate(qrels, run, SPELLINGS[canonical][:1]).means) == [canonical]


def test_trec_eval_spellings_name_their_trec_eval_measure():
    for name in ("ndcg_cut.10", "recall.100", "P.10", "map_cut.100", "map", "ndcg", "Rprec", "recip_rank"):
        assert parse_metric(name).trec_eval == name
    assert isinstance(parse_metric("RR@10"), Metric) and parse_metric("RR@10") == Metric("mrr", 10)


def test_default_metrics_print_as_records_show_them():
    """No change of behaviour: the experiments' default metrics are their own canonical forms."""
    assert [str(parse_metric(m)) for m in EvaluationSpec().metrics] == ["nDCG@10", "MRR@10", "Recall@100"]


def test_unknown_spelling_lists_the_known_names_and_spellings_of_one_metric_repeat():
    with pytest.raises(BenchError, match=r"unknown metric 'bleu@4'; known: ndcg@10 .*rr@10.*recall\.100.*rprec"):
        parse_metric("bleu@4")
    for bad in ("ndcg_cut", "map_cut", "P"):
        with pytest.raises(BenchError, match="needs a cutoff"):
            parse_metric(bad)
    with pytest.raises(BenchError, match="repeat"):
        evaluate({"q": {"d": 1}}, {}, ["ndcg@10", "ndcg_cut.10"])


def test_conventions_validate_and_describe():
    assert Conventions(depth=100, rel_level=2, judged_only=True).describe()["trec_eval_flags"] == "-c -M 100 -l 2 -J"
    assert Conventions().describe()["trec_eval_flags"] == "-c"
    for kwargs, message in (({"depth": 0}, r"^depth 0: must be a positive integer"),
                            ({"depth": True}, r"^depth True: must be a positive integer"),
                            ({"rel_level": 0}, r"^rel_level 0: must be an integer"),
                            ({"judged_only": "yes"}, r"^judged_only 'yes': must be true or false")):
        with pytest.raises(BenchError, match=message):
            Conventions(**kwargs)


# ------------------------------------------------------------------------------------- bench eval
def _miracl_like_run(qrels, seed=0):
    """A run over real MIRACL qrels: judged documents mixed with unjudged ones, coarse scores (many
    ties), some queries left out, 150 documents per query so that -M 100 matters."""
    rng = random.Random(seed)
    pool = sorted({d for docs in qrels.values() for d in docs})
    run = {}
    for i, (qid, docs) in enumerate(qrels.items()):
        if i % 17 == 0:
            continue
        ranked = list(docs) + rng.sample(pool, 40)
        ranked += [f"unjudged-{qid}-{j}" for j in range(150 - len(set(ranked)))]
        run[qid] = {d: round(rng.random(), 1) for d in ranked}
    return run


def test_bench_eval_matches_trec_eval_on_shared_miracl(shared_data, tmp_path, capsys):
    """`bench eval -M 100 -m ndcg@10` == trec_eval -c -M 100 -m ndcg_cut.10 (pytrec_eval) on MIRACL yo."""
    import json

    from bench.cli import main
    from bench.runs import read_qrels, write_run

    qrels_path = shared_data / "miracl-yo-dev" / "qrels" / "dev.tsv"
    qrels = read_qrels(qrels_path)
    run = _miracl_like_run(qrels)
    run_path = write_run(run, tmp_path / "run.trec", tag="test")
    code = main(["eval", "--qrels", str(qrels_path), "--run", str(run_path), "-m", "ndcg@10", "Recall@100",
                 "--depth", "100", "--format", "json", "--per-query"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = json.loads(captured.out)
    conventions = Conventions(depth=100)
    for name, measure in (("nDCG@10", "ndcg_cut.10"), ("Recall@100", "recall.100")):  # keyed by canonical form
        ref = _reference(qrels, run, measure, conventions)
        assert out[name] == pytest.approx(sum(ref.values()) / 119, abs=TOL)
        assert out["per_query"][name] == pytest.approx(ref, abs=TOL)
    assert "119 in qrels, 112 ranked, 7 missing from the run (scored 0)" in captured.err
    assert "trec_eval -c -M 100" in captured.err
    # without -M the extra 50 documents change recall: the depth really is applied
    code = main(["eval", "--qrels", str(qrels_path), "--run", str(run_path), "-m", "Recall@150", "--format", "json"])
    assert json.loads(capsys.readouterr().out)["Recall@150"] > out["Recall@100"]


def test_bench_eval_table_and_errors(tmp_path, capsys):
    from bench.cli import main

    (tmp_path / "qrels.txt").write_text("q1 0 d1 1\nq2 0 d2 1\n")
    (tmp_path / "run.trec").write_text("q1 Q0 d1 1 0.9 t\nq1 Q0 d3 2 0.5 t\n")
    assert main(["eval", "--qrels", str(tmp_path / "qrels.txt"), "--run", str(tmp_path / "run.trec"),
                 "-m", "mrr@10", "-m", "P@1", "--per-query"]) == 0
    out = capsys.readouterr().out
    assert "| MRR@10   | 0.5000 |" in out and "| q2      |" in out
    (tmp_path / "bad.trec").write_text("q1 Q0 d1 1 0.9 t\nq1 Q0 d3 2 zero t\n")
    assert main(["eval", "--qrels", str(tmp_path / "qrels.txt"), "--run", str(tmp_path / "bad.trec"), "-m", "map"]) == 2
    assert "bad.trec:2: score 'zero' is not a number" in capsys.readouterr().err
    assert main(["eval", "--qrels", str(tmp_path / "qrels.txt"), "--run", str(tmp_path / "run.trec"), "-m", "ndcg@ten"]) == 2
    assert "unknown metric 'ndcg@ten'" in capsys.readouterr().err


def test_cold_notice(monkeypatch, capsys):
    import bench.evaluate as ev

    assert ev.kernels_cached()  # the session warm-up filled numba's cache
    assert not ev.notify_if_cold()
    monkeypatch.setattr(ev, "kernels_cached", lambda metrics=None: False)
    assert ev.notify_if_cold()
    assert "compiling ranx's metric kernels" in capsys.readouterr().err


@pytest.mark.slow
def test_fresh_numba_cache_says_it_compiles_then_is_quiet(tmp_path):
    """A fresh install (empty numba cache): the first `bench eval` says it compiles; the second does not."""
    import os
    import subprocess
    import sys

    (tmp_path / "qrels.txt").write_text("q1 0 d1 1\n")
    (tmp_path / "run.trec").write_text("q1 Q0 d1 1 0.9 t\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    cmd = [sys.executable, "-m", "bench", "eval", "--qrels", str(tmp_path / "qrels.txt"), "--run",
           str(tmp_path / "run.trec"), "-m", "ndcg@10", "--format", "json"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "compiling ranx's metric kernels" in first.stderr
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "compiling" not in second.stderr
    assert second.stdout == first.stdout
