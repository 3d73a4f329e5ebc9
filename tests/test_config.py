"""Experiment files: valid ones load, every kind of mistake is an error naming file and field."""

from pathlib import Path

import pytest

from bench.config import CollectionSpec, load_experiment
from bench.data import expand, select_datasets
from bench.errors import BenchError

REPO = Path(__file__).resolve().parents[1]

GOOD = {
    "name": "t",
    "first_stages": {"dense": {"kind": "dense", "model": "offline:all-MiniLM-L6-v2"}},
    "datasets": [{"source": "beir", "path": "data/x", "split": "dev"}],
    "rerankers": [{"model": "random:tiny-xlmr-reranker", "dtype": "fp32"}],
}


def edited(path, old, new):
    """`path` with one line of its text edited (the mistake a person makes in the file)."""
    path.write_text(path.read_text().replace(old, new))
    return path


def test_good_experiment_resolves_relative_paths(experiment_toml, tmp_path):
    exp = load_experiment(experiment_toml(**GOOD))
    assert exp.datasets[0].path == str((tmp_path / "data" / "x").resolve())
    assert exp.rerankers[0].label == "tiny-xlmr-reranker"
    assert exp.first_stage_for(exp.datasets[0])[0] == "dense"


@pytest.mark.parametrize("edit, expected", [
    (('dtype = "fp32"', 'dtype = "fp8"'), "rerankers[0].dtype"),
    (('dtype = "fp32"', 'dtpye = "fp32"'), "rerankers[0].dtpye: unknown field"),
    (('split = "dev"', 'split = "dev"\nfirst_stage = "bm25"'), "first_stage = 'bm25' is not defined"),
    (('kind = "dense"', 'kind = "sparse"'), "first_stages.dense.kind"),
    (('model = "offline:all-MiniLM-L6-v2"', ''), "needs field 'model'"),
    (('path = "data/x"', ''), "needs field 'path'"),
    (('name = "t"', ''), "name: Field required"),
])
def test_mistakes_name_the_field(experiment_toml, edit, expected):
    path = edited(experiment_toml(**GOOD), *edit)
    with pytest.raises(BenchError) as err:
        load_experiment(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


LANGUAGES = {
    "name": "t",
    "first_stages": {"bm25": {"kind": "bm25"}},
    "datasets": [{"source": "ir_datasets", "id": "miracl/{lang}/dev", "languages": ["yo", "sw"]},
                 {"source": "synthetic", "synthetic": {"languages": ["en", "de"]}}],
}


def test_one_dataset_entry_expands_over_languages_and_a_run_selects_by_label(experiment_toml):
    exp = load_experiment(experiment_toml(**LANGUAGES))
    specs = [s for ds in exp.datasets for s in expand(ds)]
    assert [s.label for s in specs] == ["miracl/yo/dev", "miracl/sw/dev", "synthetic/en", "synthetic/de"]
    assert specs[0] == CollectionSpec(source="ir_datasets", id="miracl/yo/dev")  # as if written out
    picked = select_datasets(exp, ["synthetic/de", "miracl/sw/dev"])
    assert [d.label for d in picked.datasets] == ["miracl/sw/dev", "synthetic/de"]  # the experiment's order
    with pytest.raises(BenchError) as err:
        select_datasets(exp, ["miracl/sw/dev", "miracl/xx/dev"], "exp.toml")
    assert str(err.value) == ("exp.toml: no dataset labelled 'miracl/xx/dev'; its datasets are: "
                              "miracl/yo/dev, miracl/sw/dev, synthetic/en, synthetic/de")


@pytest.mark.parametrize("edit, expected", [
    (('languages = ["yo", "sw"]', ''), "holds {lang}: list the languages"),
    (('id = "miracl/{lang}/dev"', 'id = "miracl/yo/dev"'), "needs {lang} in id"),
    (('languages = ["yo", "sw"]', 'languages = ["yo", "yo"]'), "list each language once"),
    (('languages = ["yo", "sw"]', 'languages = ["yo"]\nlanguage = "yo"'), "not both"),
    (('synthetic = { languages = ["en", "de"] }', 'languages = ["en"]'), "synthetic.languages"),
])
def test_language_expansion_mistakes_name_the_field(experiment_toml, edit, expected):
    path = edited(experiment_toml(**LANGUAGES), *edit)
    with pytest.raises(BenchError) as err:
        load_experiment(path)
    assert "datasets[" in str(err.value) and expected in str(err.value)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(BenchError, match="experiment file not found"):
        load_experiment(tmp_path / "nope.toml")
    bad = tmp_path / "exp.toml"
    bad.write_text("name = ")
    with pytest.raises(BenchError, match="not valid TOML"):
        load_experiment(bad)


def test_duplicate_reranker_labels_are_rejected(experiment_toml):
    path = experiment_toml(**{**GOOD, "rerankers": GOOD["rerankers"] + [{"model": "random:tiny-xlmr-reranker"}]})
    with pytest.raises(BenchError, match="distinct 'name'"):
        load_experiment(path)


SHIPPED = sorted((REPO / "experiments").rglob("*.toml"))


def test_every_shipped_experiment_is_checked():
    """The list below is the folder's: a new experiment file is loaded without anyone adding it."""
    assert {p.name for p in SHIPPED} >= {"default.toml", "offline.toml", "throughput.toml", "throughput-gpu.toml",
                                        "throughput-decoder.toml", "reproduce-miracl-yo-minilm.toml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_shipped_experiments_load_and_plan(path, tmp_path):
    """Every shipped file, `make throughput`'s included: it loads, each dataset entry expands and has its
    first stage, and `bench run --dry-run`'s plan (offline: no download) names every dataset and system."""
    from bench.plan.dry_run import plan

    exp = load_experiment(path)
    assert exp.name
    specs = [s for entry in exp.datasets for s in expand(entry)]
    assert specs and all(exp.first_stages_for(s) for s in specs)
    text = "\n".join(plan(exp, tmp_path / "out").lines)
    for spec in specs:
        for name, _ in exp.first_stages_for(spec):
            assert f"first stage {exp.first_stage_label(name)} (" in text
            for reranker in exp.rerankers:
                assert f"rerank {exp.system_label(name, reranker)}:" in text


@pytest.mark.parametrize("path", [p for p in SHIPPED if "[throughput]" in p.read_text(encoding="utf-8")],
                         ids=lambda p: p.name)
def test_shipped_throughput_experiments_make_their_sweeps(path):
    """What `bench throughput FILE` reads before any work: the [throughput] table with the command's
    (empty) overrides, rerankers, the first stage deep enough for k, every variant for an engine that
    runs, and the cells of the sweep."""
    import argparse

    from bench.commands import throughput as command
    from bench.throughput.sweep import cells_from_spec

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    exp = command.with_overrides(load_experiment(path), parser.parse_args([str(path)]))
    tp = exp.throughput
    assert tp is not None and exp.rerankers
    if tp.candidates == "first-stage":
        assert exp.first_stage_for(expand(exp.datasets[0])[0])[1].depth >= tp.k
    assert set(tp.variants) <= set(tp.engines) and set(tp.engine_dtypes) <= set(tp.engines)
    cells = cells_from_spec(tp, options={k: [dict(o) for o in v] for k, v in tp.variants.items()} or None,
                            engine_dtypes={k: list(v) for k, v in tp.engine_dtypes.items()})
    assert {c.engine for c in cells} == set(tp.engines)
