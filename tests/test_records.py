"""Records: atomic writes, the environment block, reading back with clear errors."""

import json
import os

import pytest

from bench.errors import BenchError
from bench.io import atomic_write_json, atomic_write_text
from bench.records import (SCHEMA, find_records, make_record,
                           read_record)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "first")
    real_replace = os.replace

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "second")
    monkeypatch.setattr(os, "replace", real_replace)
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"], "temp file was not cleaned up"


def test_record_carries_environment_and_round_trips(tmp_path):
    rec = make_record("quality", metrics={"nDCG@10": 0.5})
    env = rec["environment"]
    assert rec["schema"] == SCHEMA and rec["kind"] == "quality"
    assert env["packages"]["torch"] and env["packages"]["ranx"]
    assert env["device"]["device"] in ("cpu",) or env["device"]["device"]
    assert env["created_utc"].endswith("Z")
    assert "sha" in env["git"]
    path = atomic_write_json(tmp_path / "r" / "x.json", rec)
    assert read_record(path)["metrics"] == {"nDCG@10": 0.5}
    assert [r["_path"] for r in find_records(tmp_path, kind="quality")] == [str(path)]
    assert find_records(tmp_path, kind="throughput") == []


def test_bad_records_are_named(tmp_path):
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(BenchError, match="bad.json:1: not valid JSON"):
        read_record(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"schema": "x"}))
    with pytest.raises(BenchError, match="not a rerank-bench record"):
        read_record(tmp_path / "other.json")
