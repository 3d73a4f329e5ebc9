"""`remove_query_id`: the protocol switch behind FlagEmbedding's two MIRACL tables.

MIRACL's query ids are also passage ids (in the Yoruba dev set all 119 of them), so removing the
passage whose id equals the query id changes the candidates; the count removed is printed and
recorded, and `bench reproduce` names the setting when an entry and a record disagree on it.
"""

from __future__ import annotations

import gzip
import json

import pytest

from bench import registry
from bench.config import load_experiment
from bench.pipeline import run_experiment
from bench.retrieve.stage import drop_query_ids


def test_drop_query_ids_keeps_exactly_depth():
    ranked = {"q1": [("q1", 9.0), ("a", 8.0), ("b", 7.0)], "q2": [("a", 9.0), ("b", 8.0), ("q2", 7.0)],
              "q3": [("a", 9.0), ("b", 8.0), ("c", 7.0)]}
    out, removed = drop_query_ids(ranked, depth=2)
    assert removed == 2
    assert out == {"q1": [("a", 8.0), ("b", 7.0)], "q2": [("a", 9.0), ("b", 8.0)], "q3": [("a", 9.0), ("b", 8.0)]}


ENTRY = """
[[entries]]
name = "protocol/yo/nDCG@10"
description = "test entry"
tolerance = 0.005
tolerance_reason = "test"
experiment = {experiment}
conventions = {{ depth = 100, trec_eval = "trec_eval -c -M 100 -m ndcg_cut.10" }}
source = {{ kind = "paper", title = "A paper", section = "Table 1", url = "https://example.org/p", published = "x" }}
stage = "first_stage"
system = "fs"
metric = "nDCG@10"
value = {value}
first_stage = {{ kind = "run", depth = 100, remove_query_id = {removal} }}
datasets = [{{ label = "miracl/yo/dev" }}]
"""


@pytest.fixture(scope="module")
def yo_queries(shared_data):
    folder = shared_data / "miracl-yo-dev"
    with open(folder / "queries.jsonl", encoding="utf-8") as f:
        qids = [json.loads(line)["_id"] for line in f if line.strip()]
    with gzip.open(folder / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        first_docs = [json.loads(next(f))["_id"] for _ in range(101)]
    return qids, first_docs


@pytest.mark.shared_data
def test_removal_on_miracl_yo_is_printed_recorded_and_checked(shared_data, yo_queries, experiment_toml, tmp_path):
    qids, first_docs = yo_queries
    assert len(qids) == 119
    qrels: dict[str, dict[str, int]] = {}
    for line in (shared_data / "miracl-yo-dev" / "qrels" / "dev.tsv").read_text().splitlines()[1:]:
        q, d, rel = line.split("\t")
        qrels.setdefault(q, {})[d] = int(rel)
    # Each query's list: its own id (also a passage id in MIRACL) first, then its judged passages (by id),
    # then other passages: 102 in all.
    lists = {q: list(dict.fromkeys([q, *sorted(qrels.get(q, {})), *first_docs]))[:102] for q in qids}
    lines = [f"{q} Q0 {d} {r + 1} {200 - r} t" for q in qids for r, d in enumerate(lists[q])]
    run_file = tmp_path / "yo.run"
    run_file.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def run(removal: bool, out: str):
        path = experiment_toml(f"{out}.toml", name=out, cache_dir=tmp_path / "cache",
                               first_stages={"fs": {"kind": "run", "path": run_file, "depth": 100,
                                                    "remove_query_id": removal}},
                               datasets=[{"source": "beir", "path": shared_data / "miracl-yo-dev", "split": "dev",
                                          "name": "miracl/yo/dev", "language": "yo"}],
                               evaluation={"metrics": ["nDCG@10"], "depth": 100})
        logs: list[str] = []
        (rec,) = run_experiment(load_experiment(path), tmp_path / out, progress=False, log=logs.append)
        return rec, logs

    removed, logs = run(True, "removed")
    assert any("remove_query_id: removed 119 " in m for m in logs)
    assert removed.info["remove_query_id"] == {"removed": 119, "queries": 119}
    assert removed.system.first_stage["remove_query_id"] is True
    trec = (tmp_path / "removed" / removed.run_file).read_text().splitlines()
    per_query: dict[str, list[str]] = {}
    for line in trec:
        q, _, d, *_ = line.split()
        per_query.setdefault(q, []).append(d)
    assert len(per_query) == 119 and all(len(d) == 100 and q not in d for q, d in per_query.items())

    kept, logs = run(False, "kept")
    assert not any("remove_query_id" in m for m in logs) and "remove_query_id" not in kept.info

    # The entry's value from an independent count: pytrec_eval's nDCG@10 of the list as removal leaves it
    # (the query's own id gone, the next 100 kept), over every judged query.
    import pytrec_eval

    def counted(run) -> float:
        per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
        return sum(v["ndcg_cut_10"] for v in per_query.values()) / len(qrels)

    left = {q: {d: float(200 - r) for r, d in enumerate(docs) if d != q and r <= 100} for q, docs in lists.items()}
    value = counted(left)
    assert abs(value - removed.metrics["nDCG@10"]) <= 1e-9
    assert abs(counted({q: {d: float(200 - r) for r, d in enumerate(docs[:100])} for q, docs in lists.items()})
               - kept.metrics["nDCG@10"]) <= 1e-9
    # The query's own passage is judged relevant to it in MIRACL-yo: kept first, it lifts the kept list.
    assert kept.metrics["nDCG@10"] > value + 0.1
    # An entry that removed, checked against the record that kept them: FAIL naming the setting.
    reg = tmp_path / "reg.toml"
    # the entry's experiment must produce it (the registry checks): the one run here
    reg.write_text(ENTRY.format(value=value, removal="true", experiment=json.dumps(str(tmp_path / "removed.toml"))),
                   encoding="utf-8")
    (entry,) = registry.load_registry_file(reg)
    assert registry.check(entry, [removed]).status == "OK"
    fail = registry.check(entry, [kept])
    assert fail.status == "FAIL", (value, kept.metrics)
    assert any(r.startswith("first_stage.remove_query_id: expected True, record has False") for r in fail.reasons)
    assert "remove_query_id=true" in registry.protocol(entry)


def test_reproduce_list_shows_each_entry_protocol(capsys):
    from bench.cli import main

    assert main(["reproduce", "--list", "flagembedding-*/miracl-yo-dev/*"]) == 0
    lines = {line.split("\t")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "\tdense top-100, remove_query_id=false\t" in lines["flagembedding-bge-m3/miracl-yo-dev/nDCG@10"]
    assert "\tbge-m3:all top-100, remove_query_id=false\t" in lines["flagembedding-bge-m3-all/miracl-yo-dev/nDCG@10"]
    assert "\tdense top-100, remove_query_id=true\t" in lines["flagembedding-bge-reranker-v2-gemma/miracl-yo-dev/nDCG@10"]
    assert "remove_query_id=true [blocked]" in lines["flagembedding-bge-reranker-v2-minicpm-layerwise-20/miracl-yo-dev/nDCG@10"]
