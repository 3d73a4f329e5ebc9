"""What a record says is what ran (issue 19, items 5 to 9): a fully cached rerun writes the clean
run's record, a first stage that ranks only some queries says so, fields that do nothing and
misspelled template placeholders are refused at load, registry entries agree with their names and
experiments. Small real data: the 300-passage Vaswani folder of the fault tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_faults import bench_run, dense, small_units, vaswani, write_experiment  # noqa: F401 (fixtures)


def records(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / "records").glob("*.json"))}


def differences(a, b, where="") -> list[str]:
    """Every path where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in dict.fromkeys([*a, *b]) for d in differences(a.get(k, "<absent>"), b.get(k, "<absent>"),
                                                                          f"{where}.{k}")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def test_a_fully_cached_rerun_writes_the_clean_runs_record(experiment_toml, vaswani, minilm, tiny_reranker, tmp_path,
                                                           small_units, capsys):
    path = write_experiment(experiment_toml, vaswani, tmp_path / "cache", dense(minilm), reranker=tiny_reranker)
    assert bench_run(path, tmp_path / "clean") == 0
    assert bench_run(path, tmp_path / "cached") == 0
    clean, cached = records(tmp_path / "clean"), records(tmp_path / "cached")
    assert sorted(clean) == sorted(cached) == ["vaswani300__fs.json", "vaswani300__fs__tiny.json"]
    rerank = cached["vaswani300__fs__tiny.json"]
    assert rerank["timings"]["resumed_blocks"] == rerank["timings"]["blocks"] > 1  # nothing was scored again
    for name in clean:
        for rec in (clean[name], cached[name]):
            rec.pop("timings")
            rec["environment"].pop("created_utc")
            rec["info"].pop("cached", None)
        assert differences(clean[name], cached[name]) == [], name
    assert rerank["system"]["reranker"]["device"] == "cpu" and rerank["system"]["reranker"]["query_max_length"] is not None
