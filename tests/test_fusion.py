"""`kind = "fusion"`: first stages fused through ranx.fuse, checked against ranx.fuse called here on the
member runs and against a hand computation; bad fusions refused when the experiment is read; and one
experiment (BM25, SPLADE, MiniLM, their RRF, each reranked) as eight rows everywhere tables are made."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import CollectionSpec, FirstStageSpec, load_experiment
from bench.data import load_collection
from bench.errors import BenchError
from bench.records import find_records
from bench.retrieve import fusion
from bench.retrieve.stage import FirstStage, build_stages
from bench.runs import sort_ranking


def fusion_spec(members, **extra) -> FirstStageSpec:
    return FirstStageSpec(kind="fusion", first_stages=list(members), **extra)


# -- the method, by hand ----------------------------------------------------------------------------------
def test_rrf_equals_a_hand_computation_on_three_documents():
    """Two lists over documents a, b, c; RRF with k = 60: score(d) = sum over lists of 1 / (60 + rank)."""
    runs = {"x": {"q": {"a": 9.0, "b": 5.0, "c": 1.0}},   # ranks a 1, b 2, c 3
            "y": {"q": {"c": 0.9, "a": 0.7}}}              # ranks c 1, a 2; b absent
    hand = {"a": 1 / 61 + 1 / 62, "b": 1 / 62, "c": 1 / 63 + 1 / 61}
    fused = fusion.fuse(runs, fusion.settings(fusion_spec(["x", "y"])), depth=3)["q"]
    assert [d for d, _ in fused] == ["a", "c", "b"]
    for doc, score in fused:
        assert score == pytest.approx(hand[doc], abs=1e-15)
    k10 = fusion.fuse(runs, fusion.settings(fusion_spec(["x", "y"], rrf_k=10)), depth=2)["q"]
    assert [d for d, _ in k10] == ["a", "c"]
    assert dict(k10) == pytest.approx({"a": 1 / 11 + 1 / 12, "c": 1 / 13 + 1 / 11}, abs=1e-15)


def test_ties_follow_the_harness_rule_in_members_and_in_the_fused_list():
    """A member's tied passages are ranked by the tie rule (document id descending) before ranx reads
    the ranks; equal fused scores are ordered and cut by the same rule."""
    runs = {"x": {"q": {"d1": 1.0, "d2": 1.0, "d3": 1.0}}, "y": {"q": {"d9": 2.0, "d8": 2.0}}}
    fused = fusion.fuse(runs, fusion.settings(fusion_spec(["x", "y"])), depth=4)["q"]
    # x ranks d3, d2, d1 (ids descending); y ranks d9, d8: d3 and d9 tie at 1/61, d2 and d8 at 1/62
    assert [d for d, _ in fused] == ["d9", "d3", "d8", "d2"]
    assert fused == sort_ranking(dict(fused))


# -- against ranx.fuse on real member runs -------------------------------------------------------------------
@pytest.fixture(scope="module")
def members(shared_data, minilm, cache_dir, tmp_path_factory):
    """BM25 and MiniLM top-30 runs over a Vaswani subset (real scores), and the queries where a list ties."""
    from test_systems import vaswani_subset

    folder = vaswani_subset(shared_data, tmp_path_factory.mktemp("fusion") / "vaswani")
    collection = load_collection(CollectionSpec(source="beir", path=str(folder), name="vaswani-sub", language="en"))
    specs = {"bm25": FirstStageSpec(kind="bm25", depth=30),
             "minilm": FirstStageSpec(kind="dense", model=minilm, dtype="fp32", depth=30, max_length=128, device="cpu")}
    runs = {name: FirstStage(name, s, cache_dir, progress=False).retrieve(collection).run for name, s in specs.items()}
    tied = {q for run in runs.values() for q, docs in run.items() if len(set(docs.values())) != len(docs)}
    return collection, specs, runs, tied


@pytest.mark.shared_data
@pytest.mark.parametrize("extra", [
    {"method": "rrf"}, {"method": "rrf", "rrf_k": 5},
    {"method": "combsum"}, {"method": "combsum", "norm": "zmuv"}, {"method": "combsum", "norm": "rank"},
    {"method": "combmnz", "norm": "sum"}, {"method": "combmnz", "norm": "max"},
    {"method": "wsum", "norm": "min-max", "fusion_weights": {"bm25": 0.3, "minilm": 1.0}},
    {"method": "wsum", "norm": "none", "fusion_weights": {"bm25": 0.05, "minilm": 1.0}},
])
def test_fusion_equals_ranx_fuse_called_directly(extra, members, cache_dir):
    import ranx

    collection, specs, runs, tied = members
    spec = fusion_spec(["bm25", "minilm"], depth=20, **extra)
    stages = build_stages({**specs, "fused": spec}, cache_dir, progress=False)
    result = stages["fused"].retrieve(collection)
    method = extra["method"]
    ranx_method = {"rrf": "rrf", "combsum": "sum", "combmnz": "mnz", "wsum": "wsum"}[method]
    norm = None if method == "rrf" or extra.get("norm") == "none" else extra.get("norm", "min-max")
    params = ({"k": extra.get("rrf_k", 60)} if method == "rrf" else
              {"weights": [extra["fusion_weights"][m] for m in ("bm25", "minilm")]} if method == "wsum" else {})
    direct = ranx.fuse([ranx.Run(runs["bm25"], name="bm25"), ranx.Run(runs["minilm"], name="minilm")],
                       norm=norm, method=ranx_method, params=params).to_dict()
    assert set(result.run) == set(direct)
    # ranx orders a list's tied scores by an unstable sort, the harness by its tie rule: a method that
    # reads ranks agrees with ranx on the queries whose member lists do not tie (the rest: the test above)
    compared = [q for q in direct if not (method == "rrf" or extra.get("norm") == "rank") or q not in tied]
    assert len(compared) >= len(direct) // 2
    for qid in compared:
        want = sort_ranking(direct[qid])[:20]
        got = list(result.run[qid].items())
        assert [d for d, _ in got] == [d for d, _ in want], (qid, extra)
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-12)
    info = result.info
    assert info["fusion"]["method"] == method and info["fusion"]["ranx_method"] == ranx_method
    assert info["fusion"]["norm"] == (None if method == "rrf" else extra.get("norm", "min-max"))
    assert [m["name"] for m in info["members"]] == ["bm25", "minilm"] and all(m["depth"] == 30 for m in info["members"])
    described = stages["fused"].describe()
    assert described["fusion"]["params"] == params and [m["name"] for m in described["members"]] == ["bm25", "minilm"]


@pytest.mark.shared_data
def test_a_changed_member_makes_a_new_fused_run(members, cache_dir):
    collection, specs, _, _ = members
    stages = build_stages({**specs, "rrf": fusion_spec(["bm25", "minilm"], depth=20)}, cache_dir, progress=False)
    first = stages["rrf"].retrieve(collection)
    assert stages["rrf"].retrieve(collection).cached
    changed = {**specs, "bm25": FirstStageSpec(kind="bm25", depth=30, k1=0.9, b=0.4)}
    other = build_stages({**changed, "rrf": fusion_spec(["bm25", "minilm"], depth=20)}, cache_dir, progress=False)
    assert other["rrf"].cache_folder(collection) != stages["rrf"].cache_folder(collection)
    assert not other["rrf"].retrieve(collection).cached and first.run


def test_a_fusion_is_described_by_its_members_settings_not_their_loaded_encoders(tmp_path):
    """A member's encoder is described only where this process loaded it (a fresh local run, not a
    cached rerun nor a cluster run): the fusion's description, hence its record key, leaves it out."""
    from types import SimpleNamespace

    stages = build_stages({"a": FirstStageSpec(kind="bm25"), "b": FirstStageSpec(kind="bm25", k1=0.9),
                           "f": fusion_spec(["a", "b"])}, tmp_path, progress=False)
    before = stages["f"].describe()
    stages["a"]._encoder = SimpleNamespace(describe=lambda: {"dtype": "fp32", "device": "cpu"})  # as after loading
    assert "encoder" in stages["a"].describe() and stages["f"].describe() == before


# -- bad input --------------------------------------------------------------------------------------------
def bad_fusion(experiment_toml, **stages):
    base = {"a": {"kind": "bm25"}, "b": {"kind": "bm25", "k1": 0.9}}
    return experiment_toml(name="t", first_stages={**base, **stages}, datasets=[{"source": "synthetic", "first_stage": "a"}])


@pytest.mark.parametrize("stages,expected", [
    ({"f": {"kind": "fusion", "first_stages": ["a", "nope"]}},
     r"first_stages\.f\.first_stages: 'nope' is not defined; defined: \['a', 'b', 'f'\]"),
    ({"f": {"kind": "fusion", "first_stages": ["a", "f"]}}, r"first_stages\.f\.first_stages: 'f' names itself"),
    ({"f": {"kind": "fusion", "first_stages": ["a", "g"]}, "g": {"kind": "fusion", "first_stages": ["b", "f"]}},
     r"in a cycle \(f -> g -> f\)"),
    ({"f": {"kind": "fusion", "first_stages": ["a", "b"], "depth": 150}},
     r"first_stages\.f\.first_stages: 'a' has depth 100, below the fusion's depth 150"),
    ({"f": {"kind": "fusion", "first_stages": ["a", "b"], "method": "borda"}},
     r"first_stages\.f\.method: Input should be 'rrf', 'combsum', 'combmnz' or 'wsum'"),
    ({"f": {"kind": "fusion", "first_stages": ["a", "b"], "method": "combsum", "norm": "l2"}},
     r"first_stages\.f\.norm: Input should be 'min-max', 'max', 'sum', 'zmuv', 'rank' or 'none'"),
    ({"f": {"kind": "fusion", "first_stages": ["a", "b"], "norm": "zmuv"}}, r"method 'rrf' reads ranks only"),
    ({"f": {"kind": "fusion", "first_stages": ["a", "b"], "method": "wsum"}}, r"needs fusion_weights with one weight per member"),
    ({"f": {"kind": "fusion", "first_stages": ["a"]}}, r"two or more distinct first stages"),
    ({"f": {"kind": "fusion", "first_stages": ["a", "b"], "model": "x"}}, r"model does nothing for kind = 'fusion' \(only kind 'dense', 'bge-m3' or 'splade' read it\)"),
    ({"f": {"kind": "bm25", "method": "rrf"}}, r"method does nothing for kind = 'bm25' \(only kind 'fusion' read it\)"),
])
def test_bad_fusions_are_one_message_naming_the_field_at_load_time(stages, expected, experiment_toml, capsys):
    path = bad_fusion(experiment_toml, **stages)
    with pytest.raises(BenchError) as err:
        load_experiment(path)
    assert str(path) in str(err.value) and re.search(expected, str(err.value)), str(err.value)
    assert len(str(err.value).splitlines()) == 1
    assert main(["run", str(path), "--no-progress"]) == 2
    assert re.search(expected, capsys.readouterr().err)


def test_shipped_first_stage_experiments_load():
    repo = Path(__file__).resolve().parents[1] / "experiments"
    for name in ("msmarco-first-stages", "msmarco-first-stages-dl-recall", "offline-first-stages"):
        exp = load_experiment(repo / f"{name}.toml")
        kinds = {s.kind for s in exp.first_stages.values()}
        assert {"splade", "fusion"} <= kinds, name
    exp = load_experiment(repo / "msmarco-first-stages.toml")
    assert exp.first_stages["splade-pp-ed"].quantize == 100 and exp.first_stages["rrf-splade-bge"].first_stages == [
        "splade-pp-ed", "bge-base-en"]


# -- one experiment, eight rows ---------------------------------------------------------------------------
EIGHT = ["first stage: bm25", "first stage: splade (untrained)", "first stage: minilm", "first stage: rrf (untrained)",
         "bm25 » tiny (untrained)", "splade » tiny (untrained)", "minilm » tiny (untrained)", "rrf » tiny (untrained)"]


@pytest.fixture(scope="module")
def eight_rows(shared_data, minilm, tmp_path_factory):
    """`bench run` of BM25, SPLADE (tiny), MiniLM and their RRF on a Vaswani subset, each reranked."""
    from conftest import experiment_text
    from test_systems import vaswani_subset

    base = tmp_path_factory.mktemp("eight")
    folder = vaswani_subset(shared_data, base / "vaswani")
    parts = {"name": "first-stages",
             "first_stages": {"bm25": {"kind": "bm25", "depth": 20},
                              "splade": {"kind": "splade", "model": "random:tiny-splade", "dtype": "fp32",
                                         "depth": 20, "max_length": 64, "device": "cpu", "quantize": 100},
                              "minilm": {"kind": "dense", "model": minilm, "dtype": "fp32", "depth": 20,
                                         "max_length": 128, "device": "cpu"},
                              "rrf": {"kind": "fusion", "first_stages": ["bm25", "splade", "minilm"], "depth": 20}},
             "datasets": [{"source": "beir", "path": str(folder), "name": "vaswani",
                           "first_stage": ["bm25", "splade", "minilm", "rrf"]}],
             "rerankers": [{"model": "random:tiny-xlmr-reranker", "name": "tiny", "dtype": "fp32", "top_k": 10,
                            "max_length": 128, "device": "cpu"}],
             "evaluation": {"metrics": ["nDCG@10", "Recall@20"]}}
    path = base / "first-stages.toml"
    path.write_text(experiment_text(**parts), encoding="utf-8")
    out = base / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--skip-preflight"]) == 0
    return out


@pytest.mark.shared_data
@pytest.mark.slow
def test_four_first_stages_and_their_reranking_are_eight_rows_in_report_compare_and_page(eight_rows, capsys):
    from test_systems import Cells, report_cells

    out = eight_rows
    records = find_records(out, kind="quality")
    assert len(records) == 8 and len({r.system.label for r in records}) == 8
    by_label = {r.system.label: r for r in records}
    rrf = by_label["rrf"]
    assert rrf.system.first_stage["fusion"]["method"] == "rrf" and rrf.system.first_stage["fusion"]["params"] == {"k": 60}
    assert [m["name"] for m in rrf.system.first_stage["members"]] == ["bm25", "splade", "minilm"]
    assert by_label["splade"].info["quantize"]["documents"] == 100
    assert by_label["rrf » tiny"].system.first_stage_label == "rrf"
    # the fused list is RRF of the three members' recorded runs (ranx.fuse on the run files)
    import ranx

    from bench.runs import read_run

    member_runs = [ranx.Run(read_run(out / by_label[m].run_file), name=m) for m in ("bm25", "splade", "minilm")]
    direct = ranx.fuse(member_runs, norm=None, method="rrf", params={"k": 60}).to_dict()
    fused = read_run(out / rrf.run_file)
    for qid, docs in fused.items():
        assert list(docs) == [d for d, _ in sort_ranking(direct[qid])[:20]] or docs == pytest.approx(
            dict(sort_ranking(direct[qid])[:20]))
    # report.md: eight columns, each holding its record's number
    report = (out / "report.md").read_text(encoding="utf-8")
    cells = report_cells(report, "nDCG@10")
    assert sorted(col for _, col in cells) == sorted(EIGHT)
    for (_, col), value in cells.items():
        label = col.removeprefix("first stage: ").removesuffix(" (untrained)")
        assert value == pytest.approx(by_label[label].metrics["nDCG@10"], abs=5e-5)
    # bench compare: eight systems, one letter each
    capsys.readouterr()
    assert main(["compare", str(out / "records"), "--metric", "nDCG@10", "--permutations", "100",
                 "--bootstrap", "100"]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if re.match(r"\| \([a-h]\) ", line)]
    assert sorted(re.sub(r"^\| \([a-h]\) ", "", r).split("|")[0].strip() for r in rows) == sorted(EIGHT)
    # the results page: eight systems in its metric table, the same numbers
    parser = Cells()
    parser.feed((out / "report.html").read_text(encoding="utf-8"))
    shown = {system: float(v) for (metric, ds, system), v in parser.cells.items() if metric == "nDCG@10"}
    assert shown == {col: value for (_, col), value in cells.items()}
