"""`bench reproduce`: expected vs measured, OK / FAIL by the tolerance, and why a FAIL differs.

The first tests judge records built here (the shape `bench.pipeline` writes); the last ones run the
registry's offline entry for real: all-MiniLM-L6-v2 over the full MIRACL Yoruba corpus
(../shared/data), OK as shipped and FAIL, with the setting named, when a setting is changed.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from bench import registry
from bench.cli import main
from bench.records import make_record

REGISTRY = """
[defaults]
description = "test entries"
tolerance = 0.005
tolerance_reason = "test"
experiment = "experiments/reproduce-miracl-yo-minilm.toml"
conventions = { depth = 100, trec_eval = "trec_eval -c -M 100 -m ndcg_cut.10" }
source = { kind = "paper", title = "A paper", section = "Table 1", url = "https://example.org/p", published = "x" }

[[entries]]
name = "dense/yo/nDCG@10"
stage = "first_stage"
system = "dense"
metric = "nDCG@10"
value = 0.500
first_stage = { kind = "dense", model = "BAAI/bge-m3", depth = 100 }
datasets = [{ label = "miracl/yo/dev", n_docs = 49043, n_queries = 119 }]

[[entries]]
name = "rerank/yo/nDCG@10"
stage = "rerank"
system = "bge-reranker-v2-m3"
first_stage_label = "dense"
metric = "nDCG@10"
value = 0.640
first_stage = { kind = "dense", model = "BAAI/bge-m3", depth = 100 }
reranker = { model = "BAAI/bge-reranker-v2-m3", top_k = 100, max_length = 1024 }
datasets = [{ label = "miracl/yo/dev" }]

[[entries]]
name = "dense/two-languages/nDCG@10"
stage = "first_stage"
system = "dense"
metric = "nDCG@10"
value = 0.550
first_stage = { kind = "dense", model = "BAAI/bge-m3", depth = 100 }
datasets = [{ label = "miracl/yo/dev" }, { label = "miracl/sw/dev" }]
"""


def quality(label, system_label, value, *, stage="first_stage", fs_depth=100, eval_depth=100, n_docs=49043,
            max_length=1024, created="2026-01-01T00:00:00Z"):
    """A quality record in the shape bench.pipeline writes."""
    fs = {"name": "dense", "kind": "dense", "depth": fs_depth, "max_length": 512,
          "model": {"ref": "BAAI/bge-m3", "revision": None, "untrained": False}}
    reranker = None
    if stage == "rerank":
        reranker = {"model": {"ref": "BAAI/bge-reranker-v2-m3", "revision": None, "untrained": False},
                    "top_k": 100, "max_length": max_length, "query_max_length": None, "dtype": "bf16", "engine": "fast"}
    rec = make_record(
        "quality",
        dataset={"label": label, "name": label, "n_queries": 119, "n_docs": n_docs, "max_queries": None},
        system={"label": system_label, "stage": stage, "first_stage": fs, "reranker": reranker,
                **({"first_stage_label": "dense"} if stage == "rerank" else {})},
        evaluation={"metrics": ["nDCG@10"], "conventions": {"depth": eval_depth, "rel_level": 1, "judged_only": False}},
        metrics={"nDCG@10": value},
        diagnostics={"judged@10": 0.4, **({"truncated_pairs_share": 0.02} if stage == "rerank" else {})},
    )
    rec.environment.created_utc = created
    return rec


#: An experiment that produces the entries above (the registry refuses an experiment that cannot).
EXPERIMENT = """
name = "entries"
[first_stages.dense]
kind = "dense"
model = "BAAI/bge-m3"
depth = 100
[[datasets]]
source = "ir_datasets"
id = "miracl/{lang}/dev"
languages = ["yo", "sw"]
[[rerankers]]
model = "BAAI/bge-reranker-v2-m3"
max_length = 1024
[evaluation]
metrics = ["nDCG@10"]
depth = 100
"""


@pytest.fixture()
def entries(tmp_path):
    (tmp_path / "exp.toml").write_text(EXPERIMENT, encoding="utf-8")
    path = tmp_path / "registry.toml"
    path.write_text(REGISTRY.replace('"experiments/reproduce-miracl-yo-minilm.toml"', json.dumps(str(tmp_path / "exp.toml"))),
                    encoding="utf-8")
    return {e.name: e for e in registry.load_registry_file(path)}


def test_ok_within_tolerance_and_fail_outside_it(entries):
    e = entries["dense/yo/nDCG@10"]
    ok = registry.check(e, [quality("miracl/yo/dev", "dense", 0.504)])
    assert ok.status == "OK" and ok.reasons == [] and ok.delta == pytest.approx(0.004)
    edge = registry.check(e, [quality("miracl/yo/dev", "dense", 0.495)])
    assert edge.status == "OK"  # exactly at the tolerance
    fail = registry.check(e, [quality("miracl/yo/dev", "dense", 0.490)])
    assert fail.status == "FAIL"
    assert "no stated setting differs" in fail.reasons[0]


def test_fail_names_every_setting_that_differs(entries):
    e = entries["dense/yo/nDCG@10"]
    rec = quality("miracl/yo/dev", "dense", 0.41, fs_depth=10, eval_depth=None, n_docs=1188)
    c = registry.check(e, [rec])
    assert c.status == "FAIL"
    text = "\n".join(c.reasons)
    assert "first_stage.depth: expected 100, record has 10" in text
    assert "conventions.depth (trec_eval -M): expected 100, record has None" in text
    assert "full corpus of 49,043 documents, the record searched 1,188" in text

    rr = registry.check(entries["rerank/yo/nDCG@10"], [quality("miracl/yo/dev", "bge-reranker-v2-m3", 0.60,
                                                               stage="rerank", max_length=512)])
    assert rr.status == "FAIL" and rr.reasons == ["reranker.max_length: expected 1024, record has 512"]
    assert rr.diagnostics == {"judged@10": 0.4, "truncated_pairs_share": 0.02}


def test_missing_when_no_record_matches_label_stage_and_metric(entries, tmp_path):
    e = entries["rerank/yo/nDCG@10"]
    pool = [quality("miracl/yo/dev", "dense", 0.64),                     # right label, wrong stage
            quality("miracl/sw/dev", "bge-reranker-v2-m3", 0.64, stage="rerank")]  # wrong dataset
    c = registry.check(e, pool)
    assert c.status == "MISSING" and c.measured is None
    assert f"bench run {tmp_path / 'exp.toml'}" in c.reasons[0]


def test_aggregate_entry_is_the_mean_over_its_datasets(entries):
    e = entries["dense/two-languages/nDCG@10"]
    c = registry.check(e, [quality("miracl/yo/dev", "dense", 0.50), quality("miracl/sw/dev", "dense", 0.60)])
    assert c.status == "OK" and c.measured == pytest.approx(0.55) and len(c.records) == 2
    half = registry.check(e, [quality("miracl/yo/dev", "dense", 0.50)])
    assert half.status == "MISSING" and "miracl/sw/dev" in half.reasons[0]


def test_prefers_the_record_whose_settings_agree_then_the_newest(entries):
    e = entries["dense/yo/nDCG@10"]
    agreeing = quality("miracl/yo/dev", "dense", 0.50, created="2026-01-01T00:00:00Z")
    newer_but_cut = quality("miracl/yo/dev", "dense", 0.20, fs_depth=10, created="2026-02-01T00:00:00Z")
    newest = quality("miracl/yo/dev", "dense", 0.501, created="2026-03-01T00:00:00Z")
    assert registry.best_record(e, e.datasets[0], [agreeing, newer_but_cut]) is agreeing
    assert registry.best_record(e, e.datasets[0], [agreeing, newer_but_cut, newest]) is newest


def test_table_lists_expected_measured_delta_status_and_record_paths(entries):
    rec = quality("miracl/yo/dev", "dense", 0.41, fs_depth=10)
    rec.path = "runs/x/records/yo.json"
    checks = [registry.check(entries["dense/yo/nDCG@10"], [rec]), registry.check(entries["rerank/yo/nDCG@10"], [])]
    text = registry.format_checks(checks)
    assert "| dense/yo/nDCG@10 | nDCG@10 | 0.5000 | 0.4100 | -0.0900 | ±0.005 | FAIL |" in text
    assert "| rerank/yo/nDCG@10 | nDCG@10 | 0.6400 | - | - | ±0.005 | MISSING |" in text
    assert "record: runs/x/records/yo.json" in text
    assert "why: first_stage.depth: expected 100, record has 10" in text
    assert text.rstrip().endswith("0 OK, 1 FAIL, 1 MISSING (tolerances are absolute, on the 0-1 scale)")


def test_command_reads_existing_records_and_exits_by_the_verdict(entries, tmp_path, capsys):
    reg = tmp_path / "registry.toml"
    quality("miracl/yo/dev", "dense", 0.502).to_disk(tmp_path / "runs" / "a" / "records" / "yo.json")
    args = ["reproduce", "dense/yo/*", "--registry", str(reg), "--records", str(tmp_path / "runs"), "--no-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| dense/yo/nDCG@10 | nDCG@10 | 0.5000 | 0.5020 | +0.0020 | ±0.005 | OK |" in out
    assert str(tmp_path / "runs" / "a" / "records" / "yo.json") in out

    quality("miracl/yo/dev", "dense", 0.3, eval_depth=10).to_disk(tmp_path / "runs" / "a" / "records" / "yo.json")
    assert main(args + ["--out", str(tmp_path / "checks")]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "why: conventions.depth (trec_eval -M): expected 100, record has 10" in out
    saved = json.loads((tmp_path / "checks" / "reproduce.json").read_text())
    assert saved["kind"] == "reproduce" and saved["checks"][0]["status"] == "FAIL"

    # Without names nothing runs: entries without records are MISSING, and that alone is no failure.
    assert main(["reproduce", "--registry", str(reg), "--records", str(tmp_path / "nothing")]) == 0
    assert "0 OK, 0 FAIL, 3 MISSING" in capsys.readouterr().out
    assert main(["reproduce", "--list", "--registry", str(reg)]) == 0
    listing = capsys.readouterr().out
    assert "rerank/yo/nDCG@10\tnDCG@10 0.6400 ±0.005\tdense top-100, remove_query_id=false\tA paper, Table 1" in listing
    assert main(["reproduce", "nope", "--registry", str(reg)]) == 2
    assert "no registry entry matches 'nope'" in capsys.readouterr().err


# -- the real thing: the registry's offline entry on ../shared/data ---------------------------------
CI_ENTRIES = "measured/miracl-yo-dev/minilm/*"


def registry_copy(folder: Path, experiment: Path) -> Path:
    """The shipped entries of CI_ENTRIES, pointing at `experiment`."""
    src = registry.REGISTRY_DIR / "measured-miracl-yo-minilm.toml"
    text = src.read_text(encoding="utf-8").replace('"experiments/reproduce-miracl-yo-minilm.toml"',
                                                   json.dumps(str(experiment)))
    path = folder / src.name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def yo_minilm_run(miracl_yo_full_run, miracl_yo_experiment, tmp_path_factory):
    """`bench reproduce` of the shipped offline entries, run once. The session's full-corpus run
    (conftest) encoded the 49,043 passages into the session cache; reproduce's own run of the same
    experiment finds them there."""
    folder = tmp_path_factory.mktemp("reproduce")
    exp = miracl_yo_experiment(folder / "exp")
    reg = registry_copy(folder, exp)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["reproduce", CI_ENTRIES, "--registry", str(reg), "--records", str(folder / "out"),
                     "--out", str(folder / "out"), "--no-progress"])
    return code, printed.getvalue(), folder, reg


@pytest.mark.slow
@pytest.mark.shared_data
def test_offline_entry_reproduces_ok(yo_minilm_run):
    code, out, folder, reg = yo_minilm_run
    assert code == 0, out
    rows = [line for line in out.splitlines() if line.startswith("| measured/")]
    assert len(rows) == 2 and all(row.endswith("| OK |") for row in rows), out
    assert str(folder / "out") in out  # record paths are printed
    # Reading the records again, without running, gives the same verdict.
    assert main(["reproduce", CI_ENTRIES, "--registry", str(reg), "--records", str(folder / "out"), "--no-run"]) == 0


@pytest.mark.slow
@pytest.mark.shared_data
def test_offline_entry_fails_with_the_reason_when_a_setting_changes(yo_minilm_run, miracl_yo_experiment,
                                                                   full_corpus_encodings, tmp_path, capsys):
    assert yo_minilm_run[0] == 0  # the corpus embeddings are cached by then: only search and scoring run here
    capsys.readouterr()
    exp = miracl_yo_experiment(tmp_path / "exp", **{"depth = 100                          # trec_eval":
                                                     "depth = 5                            # trec_eval",
                                                     "depth = 100\nmax_length": "depth = 20\nmax_length"})
    reg = registry_copy(tmp_path, exp)
    code = main(["reproduce", CI_ENTRIES, "--registry", str(reg), "--records", str(tmp_path / "out"),
                 "--out", str(tmp_path / "out"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1, out
    rows = [line for line in out.splitlines() if line.startswith("| measured/")]
    assert all(row.endswith("| FAIL |") for row in rows), out
    assert "why: first_stage.depth: expected 100, record has 20" in out
    assert "why: conventions.depth (trec_eval -M): expected 100, record has 5" in out
    # Every full-corpus run of this session searched one set of embeddings: the corpus was encoded at most once.
    assert len(full_corpus_encodings()) <= 1
