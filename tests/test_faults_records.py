"""What a record says is what ran (issue 19, items 5 to 9): a fully cached rerun writes the clean
run's record, a first stage that ranks only some queries says so, fields that do nothing and
misspelled template placeholders are refused at load, registry entries agree with their names and
experiments. Small real data: the 300-passage Vaswani folder of the fault tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.cli import main
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
    timings = rerank["timings"]
    assert timings["resumed_blocks"] == timings["blocks"] > 1  # nothing was scored again
    # what the rate is: said in the record, with where its times come from and their spread
    assert timings["rerank_timed"].startswith("scoring calls only")
    assert timings["rerank_speed_source"].startswith("checkpoints of an earlier run")
    assert len(timings["rerank_block_pairs_per_s"]) == timings["blocks"]
    assert timings["rerank_pairs_per_s"] == clean["vaswani300__fs__tiny.json"]["timings"]["rerank_pairs_per_s"]
    for name in clean:
        for rec in (clean[name], cached[name]):
            rec.pop("timings")
            rec["environment"].pop("created_utc")
            rec["info"].pop("cached", None)
        assert differences(clean[name], cached[name]) == [], name
    assert rerank["system"]["reranker"]["device"] == "cpu" and rerank["system"]["reranker"]["query_max_length"] is not None


def test_queries_a_first_stage_did_not_rank_are_counted_said_and_recorded(experiment_toml, vaswani, tiny_reranker,
                                                                           tmp_path, capsys):
    """A run file with candidates for 6 of the 10 queries: the other 4 count 0 in every metric, as
    trec_eval -c counts them, and `bench run` says so and records them (first stage and reranker)."""
    queries = [json.loads(line)["_id"] for line in (vaswani / "queries.jsonl").read_text().splitlines()]
    ranked, unranked = sorted(queries)[:6], sorted(queries)[6:]
    corpus = [json.loads(line)["_id"] for line in (vaswani / "corpus.jsonl").read_text().splitlines()]
    (tmp_path / "part.trec").write_text("".join(f"{q} Q0 {d} {r} {100 - r} x\n" for q in ranked
                                                for r, d in enumerate(corpus[:20], 1)))
    path = write_experiment(experiment_toml, vaswani, tmp_path / "cache", {"kind": "run", "path": str(tmp_path / "part.trec")},
                            reranker=tiny_reranker)
    assert bench_run(path, tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert f"first stage fs ranked no candidate for 4 of the 10 evaluated queries (e.g. {unranked[:3]})" in err
    for rec in records(tmp_path / "out").values():
        assert rec["diagnostics"]["unranked_queries"] == 4 and rec["info"]["unranked_queries"] == unranked
        assert all(rec["per_query"]["nDCG@10"][q] == 0 for q in unranked)


def load_error(experiment_toml, **reranker) -> str:
    from bench.config import load_experiment
    from bench.errors import BenchError

    path = experiment_toml("fields.toml", name="f", first_stages={"fs": {"kind": "bm25"}},
                           datasets=[{"source": "synthetic"}], rerankers=[reranker])
    with pytest.raises(BenchError) as err:
        load_experiment(path)
    return str(err.value)


def test_fields_that_do_nothing_are_refused_at_load(experiment_toml, capsys):
    from bench.config import FIRST_STAGE_FIELDS, RERANKER_FIELDS, FirstStageSpec, RerankerSpec, load_experiment
    from bench.rerank.scoring import HEADS
    from typing import get_args

    # one row per first-stage kind and per scoring head: a new kind or head must say what it reads
    assert set(FIRST_STAGE_FIELDS) == set(get_args(FirstStageSpec.model_fields["kind"].annotation))
    assert set(RERANKER_FIELDS) == set(HEADS) | set(get_args(get_args(RerankerSpec.model_fields["head"].annotation)[0]))
    path = experiment_toml("bm25.toml", name="f", first_stages={"fs": {"kind": "bm25", "model": "BAAI/bge-m3"}},
                           datasets=[{"source": "synthetic"}])
    assert main(["run", str(path), "--dry-run"]) == 2
    assert ("first_stages.fs: model does nothing for kind = 'bm25' (only kind 'dense', 'bge-m3' or 'splade' read it): remove it"
            in capsys.readouterr().err)
    cases = {  # reranker fields -> the message naming the field
        (("model", "random:tiny-xlmr-reranker"), ("instruction", "Find it")):
            "instruction does nothing for a reranker with head 'classification' (only head 'yes_no' or 'token_logit'",
        (("model", "random:tiny-xlmr-reranker"), ("engine", "transformers"), ("query_max_length", 32)):
            "query_max_length does nothing for a reranker with head 'classification' with engine = 'transformers'",
        (("model", "random:tiny-xlmr-reranker"), ("token_budget", 4096), ("engine", "flag")):
            "token_budget does nothing for a reranker with head 'classification' with engine = 'flag'",
        (("model", "random:tiny-qwen3-reranker"), ("engine", "transformers"), ("prefix_reuse", False)):
            "prefix_reuse does nothing for a reranker with head 'yes_no' with engine = 'transformers'",
        (("model", "random:tiny-gemma-reranker"), ("no_token", "No")):
            "no_token does nothing for a reranker with head 'token_logit' (only head 'yes_no', 'monot5' or 'duot5' read it)",
        (("model", "random:tiny-qwen3-reranker"), ("query_max_length", 64)):
            "query_max_length does nothing for a reranker with head 'yes_no' with template = 'qwen3'",
        (("model", "random:tiny-qwen3-reranker"), ("template", "Q: {query} D: {passage}"), ("instruction", "x")):
            "instruction does nothing for a reranker with head 'yes_no' with template = 'custom'",
        (("model", "random:tiny-qwen3-reranker"), ("batch_size", 8)):
            "batch_size does nothing for a reranker with head 'yes_no' with engine = 'fast'",
    }
    for fields, message in cases.items():
        assert message in load_error(experiment_toml, **dict(fields)), fields
    for fields in ({"model": "random:tiny-xlmr-reranker", "query_max_length": 32, "token_budget": 4096},
                   {"model": "random:tiny-qwen3-reranker", "instruction": "Find it", "prefix_reuse": False},
                   {"model": "random:tiny-gemma-reranker", "query_max_length": 64, "engine": "flag", "batch_size": 8},
                   {"model": "random:tiny-qwen3-reranker", "template": "{instruction} Q: {query} D: {passage}",
                    "instruction": "x", "query_max_length": 16}):
        path = experiment_toml("ok.toml", name="f", first_stages={"fs": {"kind": "bm25"}},
                               datasets=[{"source": "synthetic"}], rerankers=[fields])
        assert load_experiment(path).rerankers[0].model == fields["model"]


def test_unknown_template_placeholders_are_refused(experiment_toml):
    message = load_error(experiment_toml, model="random:tiny-qwen3-reranker",
                         template="{instrucion} Q: {query} D: {passage}")
    assert "unknown placeholder(s) {instrucion} ({instrucion}: did you mean {instruction}?)" in message
    assert "the valid placeholders are {query}, {passage}, {instruction}" in message


def test_trust_remote_code_is_said_and_recorded(experiment_toml, vaswani, tiny_reranker, tmp_path, capsys):
    path = experiment_toml("remote.toml", name="remote", cache_dir=str(tmp_path / "cache"),
                           first_stages={"fs": {"kind": "bm25", "depth": 10}},
                           datasets=[{"source": "beir", "path": str(vaswani), "name": "vaswani300"}],
                           rerankers=[{"model": tiny_reranker, "name": "tiny", "engine": "transformers",
                                       "trust_remote_code": True, "dtype": "fp32", "top_k": 10, "max_length": 64}],
                           evaluation={"metrics": ["nDCG@10"]})
    assert bench_run(path, tmp_path / "out") == 0
    assert "warning: reranker tiny: trust_remote_code = true: the modelling code shipped with" in capsys.readouterr().err
    assert records(tmp_path / "out")["vaswani300__fs__tiny.json"]["system"]["reranker"]["trust_remote_code"] is True


# -- the registry agrees with its names and its experiments --------------------------------------------
def registry_file(tmp_path: Path, exp_file: Path, **changes) -> Path:
    """A registry file with one entry that `exp_file` (bm25 over the Vaswani folder) produces, and `changes`."""
    from conftest import toml_value

    entry = {"name": "mine/miracl-yo-dev/nDCG@10", "description": "d", "metric": "nDCG@10", "value": 0.5,
             "tolerance": 0.01, "tolerance_reason": "r", "stage": "first_stage", "system": "fs",
             "datasets": [{"label": "vaswani300"}], "experiment": str(exp_file),
             **changes}
    tables = {"first_stage": {"kind": "bm25", "depth": 20}, "conventions": {"trec_eval": "trec_eval -c"},
              "source": {"kind": "measured", "title": "t", "published": "0.5", "command": "c", "machine": "m",
                         "date": "d"}}
    lines = ["[[entries]]", *(f"{k} = {toml_value(v)}" for k, v in entry.items())]
    for name, fields in tables.items():
        lines += [f"[entries.{name}]", *(f"{k} = {toml_value(v)}" for k, v in fields.items())]
    path = tmp_path / "entries.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_registry_entries_agree_with_their_name_and_experiment(experiment_toml, vaswani, tmp_path):
    from bench.errors import BenchError
    from bench.registry import load_registry, load_registry_file, production_problems
    from bench.config import load_experiment

    experiment = write_experiment(experiment_toml, vaswani, tmp_path / "cache", {"kind": "bm25"})  # nDCG@10, Recall@20
    assert [e.name for e in load_registry_file(registry_file(tmp_path, experiment))] == ["mine/miracl-yo-dev/nDCG@10"]
    for changes, message in (
            ({"metric": "MRR@10"}, "the name ends with 'nDCG@10' but metric is 'MRR@10'"),
            ({"name": "mine/x/MRR@10", "metric": "MRR@10"}, "cannot produce this number: it evaluates nDCG@10, "
                                                           "Recall@20, not MRR@10"),
            ({"system": "bm25"}, "it has no first stage system 'bm25' (its systems: fs)"),
            ({"datasets": [{"label": "miracl/yo/dev"}]}, "it has no dataset labelled miracl/yo/dev"),
            ({"experiment": str(tmp_path / "nowhere.toml")}, "cannot produce this number: it does not load")):
        with pytest.raises(BenchError, match=re.escape(message)):
            load_registry_file(registry_file(tmp_path, experiment, **changes))
    # every shipped entry: its name's metric is its metric, its experiment produces it (blocked ones never run)
    for entry in load_registry():
        assert production_problems(entry, load_experiment(entry.experiment_path())) == [] or entry.blocked, entry.name
