"""The registry of expected scores: the shipped entries are well formed and runnable, and bad
entries fail with messages that name the file, the entry and the field."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from bench import registry
from bench.config import load_experiment
from bench.data import expand
from bench.errors import BenchError

GOOD = """
[defaults]
description = "a first stage"
tolerance = 0.005
tolerance_reason = "rounding"
stage = "first_stage"
system = "minilm"
experiment = "experiments/reproduce-miracl-yo-minilm.toml"
first_stage = { kind = "dense", model = "offline:all-MiniLM-L6-v2", depth = 100 }
conventions = { depth = 100, trec_eval = "trec_eval -c -M 100 -m ndcg_cut.10" }

[defaults.source]
kind = "paper"
title = "A paper"
section = "Table 1"
url = "https://example.org/paper"
published = "61.0"

[[entries]]
name = "a/yo/nDCG@10"
metric = "nDCG@10"
value = 0.61
datasets = [{ label = "miracl-yo-dev" }]
"""


def write(tmp_path, text, name="reg.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def bad(tmp_path, old, new):
    assert old in GOOD
    return write(tmp_path, GOOD.replace(old, new, 1))


# -- the shipped registry ---------------------------------------------------------------------------
def test_shipped_registry_loads_with_unique_names_and_cited_sources():
    entries = registry.load_registry()
    assert len(entries) >= 40
    assert len({e.name for e in entries}) == len(entries)
    for e in entries:
        assert 0 < e.value < 1 and 0 < e.tolerance < 0.1, e.name
        if e.source.kind == "measured":
            assert e.source.command and e.source.machine and e.source.date, e.name
        else:
            assert e.source.url.startswith("https://") and e.source.section, e.name
    published = {e.name: e.value for e in entries}
    # Spot checks against the sources (see the comments in each registry file).
    assert published["pyserini-bm25/miracl-yo-dev/nDCG@10"] == 0.4059
    assert published["anserini-bge-base-en-v1.5/msmarco-passage-dev-small/MRR@10"] == 0.3583
    assert sum(n.startswith("pyserini-bm25/") for n in published) == 36  # 18 languages x 2 metrics
    # FlagEmbedding's two MIRACL tables (shared/published/*.tsv), each value under its protocol.
    by_name = {e.name: e for e in entries}
    corrected = by_name["flagembedding-bge-m3/miracl-yo-dev/nDCG@10"]
    assert corrected.value == 0.818 and corrected.first_stage.remove_query_id is False
    assert by_name["flagembedding-bge-m3-all/miracl-dev-18-languages/nDCG@10"].value == 0.715
    assert by_name["flagembedding-bge-m3-sparse/miracl-dev-18-languages/nDCG@10"].first_stage.mode == "sparse"
    removed = by_name["flagembedding-bge-m3-removed/miracl-yo-dev/nDCG@10"]
    assert removed.value == 0.607 and removed.first_stage.remove_query_id is True
    gemma = by_name["flagembedding-bge-reranker-v2-gemma/miracl-dev-18-languages/nDCG@10"]
    assert gemma.value == 0.7339 and gemma.first_stage.remove_query_id and gemma.reranker.max_length == 1024
    assert by_name["flagembedding-bge-reranker-v2-minicpm-layerwise-40/miracl-yo-dev/nDCG@10"].blocked
    for row in ("bge-m3", "bge-m3-sparse", "bge-m3-multivec", "bge-m3-dense+sparse", "bge-m3-all", "bge-m3-removed",
                "bge-reranker-v2-m3", "bge-reranker-v2-gemma"):
        assert sum(n.startswith(f"flagembedding-{row}/") for n in published) == 19, row  # 18 languages + average
    assert not any("transcribed from an image" in (e.source.note or "") for e in entries if "flagembedding" in e.name)


PUBLISHED = Path(__file__).resolve().parents[2] / "shared" / "published"


def read_table(path: Path) -> dict[str, dict[str, str]]:
    """A transcribed table (tab-separated, header first): {row name: {column: cell as printed}}."""
    header, *rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {row[0]: dict(zip(header[1:], row[1:], strict=True)) for row in rows}


def test_every_transcribed_entry_equals_its_cited_cell():
    """Each entry citing a table in ../shared/published (its source note names the file; its section the
    row and column) holds that cell: the printed number in `published`, value = cell / 100, the row's
    inference length, and the column's language as the entry's dataset (avg: all 18)."""
    if not PUBLISHED.is_dir():
        pytest.skip(f"published tables not found at {PUBLISHED}")
    checked = 0
    for e in registry.load_registry():
        cited = re.search(r"shared/published/([\w.-]+\.tsv)", e.source.note or "")
        if not cited or cited.group(1) == "rankllm-2cr-msmarco.tsv":  # rank_llm's table: test_listwise checks it
            continue
        table = read_table(PUBLISHED / cited.group(1))
        row = re.search(r"row '([^']+)'", e.source.section).group(1)
        column = re.search(r"column (\S+)$", e.source.section).group(1)
        cell = table[row][column]
        assert e.source.published == f"{cell} (nDCG@10 x 100)", (e.name, cell)
        assert e.value == pytest.approx(float(cell) / 100, abs=1e-12), (e.name, cell)
        length = re.search(r"inference length (\S+)\)", e.source.section)
        assert (length.group(1) if length else None) == table[row].get("inference_length"), e.name
        languages = [d.language for d in e.datasets]
        assert languages == ([column] if column != "avg" else [c for c in table[row] if len(c) == 2]), e.name
        checked += 1
    assert checked == 209  # 5 rows of the bge-m3 table and 6 of the reranker table, 18 languages + avg each


def test_every_other_cited_entry_holds_its_printed_value():
    """Entries citing a page on the 0-1 scale (Pyserini's 2CR, Anserini's regressions) hold the number
    their `published` quotes."""
    for e in registry.load_registry():
        if e.source.kind == "measured" or "shared/published/" in (e.source.note or ""):
            continue
        printed = re.search(r"(\d+\.\d+)", e.source.published).group(1)
        assert e.value == float(printed), (e.name, e.source.published)


def test_every_entry_points_at_an_experiment_that_produces_its_records():
    """Entry and experiment agree: the experiment defines the system label, the datasets and the metric,
    with the same first-stage depth and trec_eval depth, so running it can yield the record."""
    for e in registry.load_registry():
        if e.blocked:  # kept for the record (e.g. a scoring head the harness lacks); nothing runs it
            continue
        exp = load_experiment(e.experiment_path())
        labels = {s.label for ds in exp.datasets for s in expand(ds)}
        for ds in e.datasets:
            assert ds.label in labels, (e.name, ds.label)
        assert e.metric in exp.evaluation.metrics, e.name
        assert exp.evaluation.depth == e.conventions.depth, e.name
        if e.stage == "first_stage":
            fs = exp.first_stages[e.system]
        else:
            assert e.system in [r.label for r in exp.rerankers], e.name
            rr = next(r for r in exp.rerankers if r.label == e.system)
            assert (rr.model, rr.top_k) == (e.reranker.model, e.reranker.top_k), e.name
            if e.reranker.max_length is not None:  # listwise entries state listwise.context_size instead
                assert rr.max_length == e.reranker.max_length, e.name
            fs = exp.first_stages[e.first_stage_label]
        assert (fs.kind, fs.depth) == (e.first_stage.kind, e.first_stage.depth), e.name
        assert (fs.mode, fs.remove_query_id) == (e.first_stage.mode, e.first_stage.remove_query_id), e.name
        if e.first_stage.model:
            assert fs.model == e.first_stage.model, e.name


def test_a_good_file_loads_and_defaults_merge_field_by_field(tmp_path):
    (entry,) = registry.load_registry_file(write(tmp_path, GOOD))
    assert entry.name == "a/yo/nDCG@10" and entry.system == "minilm"
    assert entry.first_stage.model_fields_set == {"kind", "model", "depth"}
    assert entry.conventions.depth == 100 and entry.source.section == "Table 1"
    merged = write(tmp_path, GOOD + '\n[entries.source]\nsection = "Table 2"\n', "merged.toml")
    (entry,) = registry.load_registry_file(merged)
    assert entry.source.section == "Table 2" and entry.source.url == "https://example.org/paper"


@pytest.mark.parametrize("old,new,expected", [
    ('value = 0.61', 'value = 0.61\nvalu = 0.6', "entry 'a/yo/nDCG@10': valu: unknown field"),
    ('value = 0.61', 'value = 61.0', "not on the 0-1 scale"),
    ('tolerance = 0.005', 'tolerance = 0.0', "tolerance must be > 0"),
    ('tolerance = 0.005', 'tolerance = -0.01', "tolerance must be > 0"),
    ('tolerance = 0.005', 'tolerance = 0.5', "checks nothing"),
    ('url = "https://example.org/paper"', '', "needs 'url'"),
    ('section = "Table 1"', '', "needs 'section'"),
    ('metric = "nDCG@10"', 'metric = "nDCG@ten"', "unknown metric"),
    ('stage = "first_stage"', 'stage = "rerank"', "needs a [reranker] table"),
    ('kind = "paper"', 'kind = "measured"', "needs command, machine, date"),
    ('tolerance_reason = "rounding"\n', '', "tolerance_reason: Field required"),
])
def test_bad_entries_are_errors_naming_file_entry_and_field(tmp_path, old, new, expected):
    path = bad(tmp_path, old, new)
    with pytest.raises(BenchError) as err:
        registry.load_registry_file(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_missing_source_is_an_error(tmp_path):
    start = GOOD.index("[defaults.source]")
    path = write(tmp_path, GOOD[:start] + GOOD[GOOD.index("[[entries]]"):])
    with pytest.raises(BenchError, match=r"entry 'a/yo/nDCG@10': source: Field required"):
        registry.load_registry_file(path)


def test_file_level_mistakes(tmp_path):
    with pytest.raises(BenchError, match="unknown top-level field"):
        registry.load_registry_file(write(tmp_path, GOOD + "\n[extra]\nx = 1\n"))
    with pytest.raises(BenchError, match="no \\[\\[entries\\]\\]"):
        registry.load_registry_file(write(tmp_path, GOOD[: GOOD.index("[[entries]]")]))
    with pytest.raises(BenchError, match="not valid TOML"):
        registry.load_registry_file(write(tmp_path, "[[entries]\n"))
    with pytest.raises(BenchError, match="registry file not found"):
        registry.load_registry_file(tmp_path / "absent.toml")


def test_names_are_unique_across_files(tmp_path):
    a, b = write(tmp_path, GOOD, "a.toml"), write(tmp_path, GOOD, "b.toml")
    with pytest.raises(BenchError, match=r"b\.toml: entry 'a/yo/nDCG@10' is already defined in .*a\.toml"):
        registry.load_registry([a, b])


def test_select_by_name_and_pattern():
    entries = registry.load_registry()
    yo = registry.select(entries, ["pyserini-bm25/miracl-yo-dev/*"])
    assert [e.metric for e in yo] == ["nDCG@10", "Recall@100"]
    assert registry.select(entries, []) == entries
    with pytest.raises(BenchError, match="no registry entry matches 'nope/\\*'"):
        registry.select(entries, ["nope/*"])
