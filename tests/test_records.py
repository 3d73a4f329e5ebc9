"""Records: atomic writes, the environment block, typed models per kind, reading back with clear
errors, and schema-1 records written before the typed models (tests/fixtures/records-v1)."""

import errno
import json
import os
import stat
import shutil
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.io import atomic_write_json, atomic_write_text
from bench.records import (SCHEMA, ComparisonRecord, FidelityRecord, QualityRecord, Record, ReproduceRecord,
                           ThroughputRecord, find_records, make_record, read_record)

V1 = Path(__file__).resolve().parent / "fixtures" / "records-v1"


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "first")
    real_replace = os.replace

    def boom(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(BenchError, match=r"a\.txt: no space left on the device \(6 bytes needed, [\d,]+ free\)"):
        atomic_write_text(target, "second")
    monkeypatch.setattr(os, "replace", real_replace)
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"], "temp file was not cleaned up"


def test_atomic_write_honours_the_umask(tmp_path):
    """Records and reports are for others to read: not mkstemp's 0600, but what open() would give."""
    mask = os.umask(0o022)
    os.umask(mask)
    target = atomic_write_text(tmp_path / "r.txt", "x")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~mask


def test_record_carries_environment_and_round_trips(tmp_path):
    rec = make_record("quality", dataset={"label": "d"}, system={"label": "s"}, metrics={"nDCG@10": 0.5})
    env = rec.environment
    assert rec.schema_name == SCHEMA and rec.kind == "quality" and isinstance(rec, QualityRecord)
    assert env.packages["torch"] and env.packages["ranx"]
    import os

    import torch

    gpu = torch.cuda.is_available()
    assert env.device["device"] == (torch.cuda.get_device_name(0) if gpu else "cpu")
    assert env.device["cpu_count"] == os.cpu_count() and env.device["torch_threads"] == torch.get_num_threads()
    assert ("gpus" in env.device) is gpu
    assert env.created_utc.endswith("Z")
    assert "sha" in env.git
    path = rec.to_disk(tmp_path / "r" / "x.json")
    assert rec.path == path
    assert read_record(path).metrics == {"nDCG@10": 0.5}
    assert [r.path for r in find_records(tmp_path, kind="quality")] == [path]
    assert find_records(tmp_path, kind="throughput") == []
    # Fields the record was not given stay out of the file; their defaults only serve readers.
    written = json.loads(path.read_text())
    assert list(written) == ["schema", "schema_version", "kind", "dataset", "system", "metrics", "environment"]
    assert "path" not in written and "_path" not in written
    assert rec.per_query == {} and rec.timings.rerank_pairs_per_s is None and rec.system.stage is None


def test_bad_records_are_named(tmp_path):
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(BenchError, match="bad.json:1: not valid JSON"):
        read_record(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"schema": "x"}))
    with pytest.raises(BenchError, match="not a rerank-bench record"):
        read_record(tmp_path / "other.json")


def test_wrong_version_kind_or_field_is_a_clear_error(tmp_path):
    raw = json.loads((V1 / "quality-minilm.json").read_text())
    atomic_write_json(tmp_path / "v2.json", {**raw, "schema_version": 2})
    with pytest.raises(BenchError, match=r"v2\.json: record schema_version 2, this version reads 1"):
        read_record(tmp_path / "v2.json")
    with pytest.raises(BenchError, match="schema_version 2"):  # a folder holding it cannot be read either
        find_records(tmp_path)
    atomic_write_json(tmp_path / "kind" / "k.json", {**raw, "kind": "speed"})
    with pytest.raises(BenchError, match=r"k\.json: record kind 'speed' unknown; the kinds are quality, throughput"):
        read_record(tmp_path / "kind" / "k.json")
    atomic_write_json(tmp_path / "field" / "f.json", {**raw, "dataset": {"name": "no label"}})
    with pytest.raises(BenchError, match=r"f\.json \(quality record\): dataset\.label: Field required"):
        read_record(tmp_path / "field" / "f.json")
    with pytest.raises(BenchError, match=r"quality-minilm\.json: a 'quality' record, not a ThroughputRecord"):
        ThroughputRecord.from_disk(V1 / "quality-minilm.json")


FIXTURES = {
    "quality-minilm.json": QualityRecord,
    "quality-minilm__tiny-xlmr.json": QualityRecord,
    "throughput-gpu-checks.json": ThroughputRecord,
    "fidelity-gpu-checks.json": FidelityRecord,
    "fidelity-half-precision.json": FidelityRecord,
    "comparison.json": ComparisonRecord,
    "reproduce.json": ReproduceRecord,
}


def test_every_fixture_is_listed():
    assert sorted(p.name for p in V1.glob("*.json")) == sorted(FIXTURES)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_v1_record_loads_as_its_kind_and_writes_back_unchanged(name, tmp_path):
    model = FIXTURES[name]
    rec = model.from_disk(V1 / name)
    assert type(rec) is model and rec.path == V1 / name and rec.schema_version == 1
    assert type(read_record(V1 / name)) is model
    copy = rec.to_disk(tmp_path / name)
    assert copy.read_text(encoding="utf-8") == (V1 / name).read_text(encoding="utf-8")


def test_v1_quality_records_hold_known_values():
    first = QualityRecord.from_disk(V1 / "quality-minilm.json")
    assert first.dataset.label == "synthetic/yo" and first.dataset.language == "yo" and first.dataset.n_queries == 100
    assert first.system.label == "minilm" and first.system.stage == "first_stage" and not first.system.untrained
    assert first.system.reranker is None and first.system.first_stage["model"]["ref"] == "offline:all-MiniLM-L6-v2"
    assert first.evaluation.metrics == ["nDCG@10", "MRR@10", "Recall@100"]
    assert first.evaluation.conventions.trec_eval_flags == "-c" and first.evaluation.conventions.depth is None
    assert set(first.metrics) == {"nDCG@10", "MRR@10", "Recall@100"} and 0 < first.metrics["nDCG@10"] < 1
    assert len(first.per_query["nDCG@10"]) == 5
    assert first.run_file == "runs/synthetic_yo/minilm.trec" and first.qrels_file == "runs/synthetic_yo/qrels.txt"
    assert first.timings.cached is False and first.timings.rerank_pairs_per_s is None
    assert first.environment.packages["torch"] and first.key

    rerank = QualityRecord.from_disk(V1 / "quality-minilm__tiny-xlmr.json")
    assert rerank.system.stage == "rerank" and rerank.system.first_stage_label == "minilm" and rerank.system.untrained
    assert rerank.diagnostics["pairs"] == 10000 and rerank.timings.blocks == 1 and rerank.timings.rerank_pairs_per_s > 0


def test_v1_throughput_fidelity_comparison_reproduce_hold_known_values():
    tp = ThroughputRecord.from_disk(V1 / "throughput-gpu-checks.json")
    assert tp.model.ref == "random:bge-reranker-large" and tp.model.untrained and tp.device == "cuda"
    assert tp.pairs.n_pairs == 4000 and tp.settings.repeats == 3 and tp.ceiling.dtype == "bf16"
    assert [c.engine for c in tp.cells] == ["transformers", "sentence-transformers", "flag", "fast"]
    assert all(c.error is None and c.pairs_per_s > 0 for c in tp.cells) and tp.cells[0].speedup_vs_plain == 1.0

    fid = FidelityRecord.from_disk(V1 / "fidelity-gpu-checks.json")
    assert fid.pairs.n_queries == 119 and fid.model.untrained
    assert fid.comparisons[0].ndcg_at_10["computed_by"].startswith("builtin") and fid.comparisons[0].pairs_set == "sweep pairs"
    half = FidelityRecord.from_disk(V1 / "fidelity-half-precision.json")
    assert half.model == "offline:all-MiniLM-L6-v2" and half.comparisons[0].top10_identical == pytest.approx(0.602, abs=1e-3)

    cmp = ComparisonRecord.from_disk(V1 / "comparison.json")
    assert cmp.settings.test == "randomization" and cmp.conventions == "-c" and len(cmp.inputs) == 4
    assert cmp.plots == ["differences_nDCG_10.png"] and cmp.pairs[0]["significant"] is True

    rep = ReproduceRecord.from_disk(V1 / "reproduce.json")
    assert [c.status for c in rep.checks] == ["OK", "FAIL", "MISSING"]
    assert rep.checks[1].reasons == ["first_stage.depth: expected 50, record has 100"] and rep.checks[2].measured is None


def test_find_records_returns_each_kind_typed(tmp_path):
    shutil.copytree(V1, tmp_path / "v1")
    (tmp_path / "v1" / "not-a-record.json").write_text('{"run": 1}')
    found = find_records(tmp_path)
    assert [type(r) for r in found] == [FIXTURES[r.path.name] for r in found] and len(found) == len(FIXTURES)
    quality = find_records(tmp_path, kind="quality")
    assert [r.path.name for r in quality] == ["quality-minilm.json", "quality-minilm__tiny-xlmr.json"]
    assert all(isinstance(r, Record) for r in found)


def test_a_key_set_later_is_written_last_as_in_a_dict(tmp_path):
    """`bench compare` adds the plots to its comparison record after making it."""
    raw = json.loads((V1 / "comparison.json").read_text())
    fields = {k: v for k, v in raw.items() if k not in ("schema", "schema_version", "kind", "environment", "plots")}
    rec = make_record("comparison", **fields)
    rec.plots = ["differences_nDCG_10.png"]
    assert list(rec.model_dump()) == list(raw)
