"""Outputs that cannot mislead (issues 19 and 20): one experiment version per table, one set of
significance letters for the results page and `bench compare`, escaped Markdown, records/ holding
records only, one command-line grammar, the baseline table, the results page, the throughput plot.

Material: the synthetic collection (six languages, 60 passages and 12 queries each) with BM25 and two
untrained tiny rerankers (about 40 s on a loaded 2-core box, once per module), smaller one-language
runs for the versions, and records written by hand where no model is needed.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from conftest import experiment_text

from bench.cli import COMMANDS, build_parser, command_parser, main
from bench.errors import BenchError
from bench.records import QualityRecord, find_records, make_record

LANGUAGES = ["en", "de", "fr", "es", "sw", "yo"]
TINY = {"model": "random:tiny-xlmr-reranker", "dtype": "fp32", "max_length": 64, "device": "cpu"}


def three_systems(**changes) -> dict:
    """BM25 and two untrained rerankers (one called `tiny|a`, a label with a pipe) on the synthetic
    collection's six languages."""
    parts = {"name": "three",
             "first_stages": {"bm25": {"kind": "bm25", "depth": 20}},
             "datasets": [{"source": "synthetic", "synthetic": {"docs_per_language": 60, "queries_per_language": 12}}],
             "rerankers": [{**TINY, "name": "tiny|a", "top_k": 10}, {**TINY, "name": "tiny-b", "top_k": 5}],
             "evaluation": {"metrics": ["nDCG@10", "MRR@10"]}}
    return {**parts, **changes}


@pytest.fixture(scope="module")
def three_run(tmp_path_factory):
    """`bench run` of three systems × six datasets: the folder and the experiment file."""
    base = tmp_path_factory.mktemp("three")
    path = base / "three.toml"
    path.write_text(experiment_text(**three_systems()), encoding="utf-8")
    assert main(["run", str(path), "--out", str(base / "out"), "--no-progress", "--skip-preflight"]) == 0
    return base / "out", path


# -- the results page and bench compare: one computation, the same letters ------------------------------
class PageCells(HTMLParser):
    """(metric, dataset, system) -> (number, significance letters, difference to the first stage, bold)
    from the page's metric tables."""

    def __init__(self):
        super().__init__()
        self.cells, self._at, self._in = {}, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and "data-metric" in attrs:
            self._at = (attrs["data-metric"], attrs["data-dataset"], attrs["data-system"])
            self.cells[self._at] = {"text": "", "sup": "", "small": "", "strong": False}
        elif self._at and tag in ("sup", "small", "strong"):
            self._in = tag
            if tag == "strong":
                self.cells[self._at]["strong"] = True

    def handle_endtag(self, tag):
        if tag == "td":
            self._at = None
        if tag in ("sup", "small", "strong"):
            self._in = None

    def handle_data(self, data):
        if self._at is not None:
            cell = self.cells[self._at]
            cell[self._in if self._in in ("sup", "small") else "text"] += data


def page_cells(path: Path) -> dict:
    parser = PageCells()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.cells


def test_page_and_compare_give_the_same_letters(three_run, capsys):
    out, _ = three_run
    capsys.readouterr()
    assert main(["compare", str(out / "records"), "--format", "json"]) == 0
    compared = json.loads(capsys.readouterr().out)
    letters = {(m["metric"], m["dataset"], m["system"]): m["better_than"] for m in compared["means"]}
    cells = page_cells(out / "report.html")
    on_page = {key: cell["sup"] for key, cell in cells.items() if key[1] in {k[1] for k in letters}}
    assert len(letters) == 2 * 6 * 3 and on_page == letters  # 2 metrics × 6 datasets × 3 systems, letter for letter
    assert any(letters.values())  # the test has teeth: some letters are set
    # one computation: each system against the first stage (k − 1 = 2 tests per dataset), Holm over them
    assert compared["baseline"] == "first stage: bm25" and len(compared["pairs"]) == 2 * 6 * 2
    # stated once where the letters appear, with the settings and the seed
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("Superscript letters") == 1
    assert "10,000 random swaps" in page and "seed 42" in page and "Holm correction over the 12 comparisons" in page
    assert compared["settings"]["permutations"] == 10_000 and compared["settings"]["seed"] == 42


def test_baseline_table_holm_over_k_minus_1_tests_and_all_pairs(three_run, capsys):
    out, _ = three_run
    capsys.readouterr()
    assert main(["compare", str(out / "records"), "-m", "nDCG@10", "--format", "json"]) == 0
    captured = capsys.readouterr()
    base = json.loads(captured.out)
    assert "each system is tested against the first stage 'first stage: bm25' only" in captured.err
    pairs = base["pairs"]
    assert {p["system_a"] for p in pairs} == {"first stage: bm25"} and len(pairs) == 6 * 2
    raw = np.array([p["p_randomization"] for p in pairs])
    assert np.allclose([p["p_randomization_adjusted"] for p in pairs], holm_by_hand(raw))
    for p in pairs:  # the difference and its interval, system minus baseline
        assert p["diff"] == pytest.approx(p["mean_b"] - p["mean_a"], abs=1e-12) and p["ci_low"] <= p["diff"] <= p["ci_high"]
    assert main(["compare", str(out / "records"), "-m", "nDCG@10", "--all-pairs", "--format", "json"]) == 0
    every = json.loads(capsys.readouterr().out)
    assert every["baseline"] is None and len(every["pairs"]) == 6 * 3
    # the systems keep the experiment's order (tiny|a before tiny-b, which sorts first by name)
    assert base["systems"] == ["first stage: bm25", "tiny|a (untrained)", "tiny-b (untrained)"] == every["systems"]
    assert main(["compare", str(out / "records"), "-m", "nDCG@10", "--baseline", "tiny-b (untrained)",
                 "--format", "json"]) == 0
    other = json.loads(capsys.readouterr().out)
    assert {p["system_a"] for p in other["pairs"]} == {"tiny-b (untrained)"} and len(other["pairs"]) == 12


def holm_by_hand(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment, written out: sort, multiply the i-th smallest by (m − i), keep monotone."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = np.empty(len(p)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out


# -- a label with | in every Markdown table ----------------------------------------------------------------
def cells_of(line: str) -> list[str]:
    """A Markdown table row's cells: split on | not escaped by a backslash."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def assert_tables_whole(text: str) -> int:
    """Every row of every Markdown table has as many cells as its header; returns the tables' count."""
    tables, header = 0, None
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if header is None:
                header, tables = len(cells_of(line)), tables + 1
            assert len(cells_of(line)) == header, line
        else:
            header = None
    return tables


def test_a_label_with_a_pipe_stays_in_its_column(three_run, tmp_path, capsys):
    out, _ = three_run
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "tiny\\|a (untrained)" in report and assert_tables_whole(report) == 2
    assert main(["compare", str(out / "records"), "--out", str(tmp_path / "cmp")]) == 0
    comparison = (tmp_path / "cmp" / "comparison.md").read_text(encoding="utf-8")
    assert "tiny\\|a (untrained)" in comparison and assert_tables_whole(comparison) == 4  # 2 metrics × (means, pairs)
    from bench.records import FidelityComparison
    from bench.throughput.tables import fidelity_table

    fidelity = fidelity_table([FidelityComparison(cell="fast|x bf16", reference="fast fp32", n_pairs=4, n_queries=1,
                                                  max_abs_diff=0.1, mean_abs_diff=0.05, kendall_tau={"median": 1.0, "min": 1.0})])
    assert assert_tables_whole(fidelity) == 1 and "fast\\|x bf16" in fidelity


# -- records/ holds records only ---------------------------------------------------------------------
def hand_record(folder: Path, system: str, stage: str, values: dict[str, float], *, name="exp", sha="a" * 64,
                created=None, **experiment) -> QualityRecord:
    """A quality record written by hand: per-query nDCG@10 `values`, dataset `toy`."""
    rec = make_record("quality", experiment={"name": name, "sha256": sha, **experiment},
                      dataset={"label": "toy", "language": "en", "n_queries": len(values)},
                      system={"label": system, "stage": stage},
                      evaluation={"metrics": ["nDCG@10"], "conventions": {"trec_eval_flags": "-c"}},
                      metrics={"nDCG@10": float(np.mean(list(values.values())))}, per_query={"nDCG@10": values})
    if created:
        rec.environment.created_utc = created
    rec.to_disk(folder / "records" / f"toy__{system}.json")
    return rec


@pytest.mark.parametrize("content, what", [("{}", "an empty object"), ("null", "null"), ("[1, 2]", "a list"),
                                           ('{"schema": "other/record"}', "'schema' is 'other/record'")])
def test_json_in_records_that_is_not_a_record_is_an_error(tmp_path, capsys, content, what):
    hand_record(tmp_path, "bm25", "first_stage", {"q1": 0.5, "q2": 1.0})
    hand_record(tmp_path, "ce", "rerank", {"q1": 1.0, "q2": 1.0})
    stray = tmp_path / "records" / "stray.json"
    stray.write_text(content)
    for command in (["report", str(tmp_path)], ["compare", str(tmp_path / "records")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"{stray}: valid JSON, but not a rerank-bench record ({what}" in err and "--skip-bad" in err
    assert main(["report", str(tmp_path), "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert f"warning: skipped {stray}" in captured.err and "ce" in captured.out
    (tmp_path / "elsewhere.json").write_text(content)  # outside records/: not a record folder, not read
    stray.unlink()
    assert main(["report", str(tmp_path)]) == 0


# -- one experiment version per run folder ----------------------------------------------------------------
def small_versioned(folder: Path, *, rerankers: int, max_queries: int | None = None) -> Path:
    dataset = {"source": "synthetic", "synthetic": {"languages": ["en"], "docs_per_language": 40,
                                                    "queries_per_language": 8}}
    if max_queries:
        dataset["max_queries"] = max_queries
    parts = {"name": "versions", "first_stages": {"bm25": {"kind": "bm25", "depth": 20}}, "datasets": [dataset],
             "rerankers": [{**TINY, "name": f"tiny{i}", "top_k": 10} for i in range(rerankers)],
             "evaluation": {"metrics": ["nDCG@10", "Recall@20"]}}
    path = folder / "versions.toml"
    path.write_text(experiment_text(**parts), encoding="utf-8")
    return path


def test_a_changed_experiment_rerun_shows_only_its_own_version(tmp_path, monkeypatch, capsys):
    """Rerun without --out (both times runs/<name>) after dropping a reranker and changing
    max_queries: the folder holds the new version; the old one is set aside under superseded/ with a
    note; report, compare, the page and reproduce's record search all show the new version only."""
    monkeypatch.chdir(tmp_path)
    path = small_versioned(tmp_path, rerankers=2)
    run = ["run", str(path), "--no-progress", "--skip-preflight"]
    assert main(run) == 0
    out = tmp_path / "runs" / "versions"
    assert sorted(p.name for p in (out / "records").iterdir()) == [
        "synthetic_en__bm25.json", "synthetic_en__bm25__tiny0.json", "synthetic_en__bm25__tiny1.json"]
    small_versioned(tmp_path, rerankers=1, max_queries=5)
    capsys.readouterr()
    assert main(run) == 0
    captured = capsys.readouterr()
    assert "a run folder holds one experiment version" in captured.err
    records = find_records(out / "records", kind="quality")
    assert sorted(r.system.label for r in records) == ["bm25", "tiny0"] and {r.dataset.n_queries for r in records} == {5}
    (aside,) = (out / "superseded").iterdir()
    assert sorted(p.name for p in (aside / "records").iterdir()) == [
        "synthetic_en__bm25.json", "synthetic_en__bm25__tiny0.json", "synthetic_en__bm25__tiny1.json"]
    assert (aside / "runs" / "synthetic_en" / "bm25__tiny1.trec").is_file() and (aside / "runs" / "synthetic_en" / "qrels.txt").is_file()
    assert not (out / "runs" / "synthetic_en" / "bm25__tiny1.trec").exists()
    note = (aside / "NOTE.md").read_text()
    assert "another version of experiment versions" in note and "tiny1" in note
    # bench report: the new version, and a line naming what was left out
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tiny1" not in text and "tiny0" in text
    assert text.startswith("Experiment: versions (version ") and "left out: 3 records of an earlier version of versions" in text
    assert "set aside in superseded/" in text
    assert main(["report", str(out), "--all-versions"]) == 0
    every = capsys.readouterr().out
    assert re.search(r"tiny1 \(untrained\) \[versions@[0-9a-f]{8}\]", every)
    # bench report of the folder set aside: the old version, whole
    assert main(["report", str(aside)]) == 0
    assert "tiny1" in capsys.readouterr().out
    # bench compare of the run folder or its records: the new version's two systems
    for folder in (out, out / "records"):
        assert main(["compare", str(folder), "-m", "nDCG@10", "--format", "json"]) == 0
        assert json.loads(capsys.readouterr().out)["systems"] == ["first stage: bm25", "tiny0 (untrained)"]
    # the results page bench run wrote, and the one bench report writes again
    assert main(["report", str(out), "--out", str(tmp_path / "again")]) == 0
    for page in (out / "report.html", tmp_path / "again" / "report.html"):
        systems = {key[2] for key in page_cells(page)}
        assert systems == {"first stage: bm25", "tiny0 (untrained)"}
    # bench reproduce's pool of records: none set aside
    from bench.report.versions import current_records

    pool = current_records(find_records(tmp_path / "runs", kind="quality"), tmp_path / "runs")
    assert sorted(str(r.path.relative_to(out)) for r in pool) == ["records/synthetic_en__bm25.json",
                                                                  "records/synthetic_en__bm25__tiny0.json"]


def test_versions_mixed_by_older_code_are_told_apart(tmp_path, capsys):
    """A folder where two versions' records lie side by side (written before runs set them aside):
    tables show the newest version, compare too, and say what they left out."""
    hand_record(tmp_path, "bm25", "first_stage", {"q1": 0.5, "q2": 0.2}, sha="1" * 64, created="2026-01-01T00:00:00Z")
    hand_record(tmp_path, "old-ce", "rerank", {"q1": 0.9, "q2": 0.9}, sha="1" * 64, created="2026-01-01T00:00:00Z")
    hand_record(tmp_path, "new-ce", "rerank", {"q1": 0.7, "q2": 0.8}, sha="2" * 64, created="2026-02-01T00:00:00Z")
    assert main(["report", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "new-ce" in text and "old-ce" not in text and "left out: 2 records of an earlier version of exp (111111111111)" in text
    assert main(["compare", str(tmp_path / "records"), "--all-pairs"]) == 2  # one system left: nothing to compare
    assert "nothing to compare" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "records"), "--all-versions", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["systems"]) == 3


# -- one command-line grammar ---------------------------------------------------------------------------
def help_of(name: str) -> str:
    import importlib

    return command_parser(name, importlib.import_module(COMMANDS[name][0])).format_help()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_help_ends_with_examples_and_shares_the_grammar(name):
    import importlib

    text = help_of(name)
    tail = text.rstrip().split("\nexamples:\n")[-1].splitlines()
    assert "\nexamples:\n" in text and 2 <= len(tail) <= 3 and all(line.startswith(f"  bench {name} ") for line in tail)
    options = command_parser(name, importlib.import_module(COMMANDS[name][0]))._option_string_actions
    assert {"--no-progress", "--verbose"} <= set(options)
    assert "--output" not in options and "--json" not in options and "--csv" not in options and "--html" not in options
    if name != "data":  # every command that writes files writes them with --out
        assert "--out" in options
    assert "--format" in options
    formats = set(options["--format"].choices)
    assert formats == ({"table", "json"} if name == "data" else {"table", "json", "csv", "latex"})
    if name in ("run", "throughput", "reproduce"):  # the commands that use the cache
        assert "--cache-dir" in options


def test_common_options_are_described_once_and_bench_help_points_to_the_demo_and_docs():
    texts = {name: help_of(name) for name in COMMANDS}
    lines = {re.search(r"--no-progress\s+(.*)", t).group(1) for t in texts.values()}
    assert len(lines) == 1  # the same words everywhere, from one place
    top = build_parser().format_help()
    assert "make demo" in top and "docs/index.md" in top


def test_metric_names_in_pytrec_eval_form_and_spellings_merged(tmp_path, capsys):
    import pytrec_eval

    from bench.runs import write_qrels, write_run

    qrels = {"q1": {"d1": 1, "d2": 2}, "q2": {"d3": 1}}
    run = {"q1": {"d2": 3.0, "d9": 2.0, "d1": 1.0}, "q2": {"d8": 2.0, "d3": 1.0}}
    write_qrels(qrels, tmp_path / "q.txt")
    write_run(run, tmp_path / "r.trec", tag="t")
    assert main(["eval", "--qrels", str(tmp_path / "q.txt"), "--run", str(tmp_path / "r.trec"),
                 "-m", "ndcg_cut_10", "P_10", "recall_100", "nDCG@10", "--format", "json"]) == 0
    captured = capsys.readouterr()
    means = json.loads(captured.out)
    assert list(means) == ["nDCG@10", "P@10", "Recall@100"]  # nDCG@10 named twice: counted once, with a note
    assert "note: metric 'nDCG@10' is 'ndcg_cut_10' again (nDCG@10): counted once" in captured.err
    expected = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "P_10", "recall_100"}).evaluate(run)
    for ours, theirs in (("nDCG@10", "ndcg_cut_10"), ("P@10", "P_10"), ("Recall@100", "recall_100")):
        assert means[ours] == pytest.approx(np.mean([v[theirs] for v in expected.values()]), abs=1e-9)


def test_experiment_metrics_merged_with_a_note_and_errors_say_did_you_mean(experiment_toml, tmp_path, capsys):
    from bench.config import load_experiment

    parts = {"name": "m", "first_stages": {"bm25": {"kind": "bm25"}}, "datasets": [{"source": "synthetic"}]}
    exp = load_experiment(experiment_toml(**parts, evaluation={"metrics": ["nDCG@10", "ndcg_cut_10", "mrr@10"]}))
    assert exp.evaluation.metrics == ["nDCG@10", "mrr@10"] and "counted once" in capsys.readouterr().err
    bad = experiment_toml("bad.toml", **parts, evaluation={"metrics": ["ndgc@10"]})
    with pytest.raises(BenchError) as caught:
        load_experiment(bad)
    assert "did you mean 'ndcg@10'?" in str(caught.value) and "Value error" not in str(caught.value)
    rnd = experiment_toml("rnd.toml", **{**parts, "rerankers": [{"model": "random:tiny-xlmr-rerankr"}]})
    with pytest.raises(BenchError) as caught:
        load_experiment(rnd)
    assert "did you mean 'random:tiny-xlmr-reranker'?" in str(caught.value) and "Value error" not in str(caught.value)
    (tmp_path / "vaswani").mkdir()
    assert main(["data", str(tmp_path / "vaswanni"), "--source", "beir"]) == 2
    assert f"did you mean '{tmp_path / 'vaswani'}'?" in capsys.readouterr().err


def test_bm25s_bars_only_under_verbose(monkeypatch, capsys):
    from bench.retrieve.bm25 import bm25_top_k

    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # earlier --no-progress calls set it for the process
    docs = [[(f"d{i}", f"passage number {i} about topic {i % 3}") for i in range(30)]]
    monkeypatch.delenv("RERANK_BENCH_VERBOSE", raising=False)
    quiet = bm25_top_k(docs, {"q": "topic 1"}, 5, language="en", progress=True)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RERANK_BENCH_VERBOSE", "1")
    loud = bm25_top_k(docs, {"q": "topic 1"}, 5, language="en", progress=True)
    assert capsys.readouterr().err != "" and loud == quiet


# -- report: LaTeX, wide tables, the experiment's order ----------------------------------------------
def test_report_formats_and_experiment_order(three_run, capsys):
    out, _ = three_run
    capsys.readouterr()
    assert main(["report", str(out), "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    assert latex.count("\\begin{table}") == 2 and "tiny\\textbar{}a (untrained)" in latex
    assert main(["report", str(out), "--format", "csv"]) == 0
    csv = capsys.readouterr().out
    assert csv.splitlines()[0].startswith("dataset,language,system,stage,metric,value")
    order = list(dict.fromkeys(line.split(",")[2] for line in csv.splitlines()[1:]))
    assert order == ["first stage: bm25", "tiny|a (untrained)", "tiny-b (untrained)"]
    datasets = list(dict.fromkeys(line.split(",")[0] for line in csv.splitlines()[1:]))
    assert datasets == [f"synthetic/{lang}" for lang in LANGUAGES]


def test_more_than_five_systems_print_as_rows(tmp_path):
    from bench.report.tables import WIDE, long_frame, metric_table

    for i in range(WIDE + 1):
        hand_record(tmp_path, f"s{i}", "first_stage" if i == 0 else "rerank", {"q1": i / 10, "q2": 0.5})
    frame = long_frame(find_records(tmp_path, kind="quality"))
    table = metric_table(frame, "nDCG@10")
    assert table.index.name == "system" and list(table.index)[0] == "first stage: s0" and list(table.columns) == ["toy"]
    narrow = metric_table(frame[frame.system.isin(["first stage: s0", "s1"])], "nDCG@10")
    assert list(narrow.columns) == ["first stage: s0", "s1"]


# -- the results page ---------------------------------------------------------------------------------
def test_page_bold_best_differences_ranks_and_order(three_run):
    out, _ = three_run
    records = find_records(out, kind="quality")
    cells = page_cells(out / "report.html")
    def label(r):
        return "first stage: bm25" if r.system.stage == "first_stage" else f"{r.system.label} (untrained)"

    values = {(m, r.dataset.label, label(r)): v for r in records for m, v in r.metrics.items()}
    for (metric, dataset, system), value in values.items():
        cell = cells[(metric, dataset, system)]
        assert float(cell["text"]) == pytest.approx(value, abs=5e-5)
        best = max(v for (m, d, _), v in values.items() if m == metric and d == dataset)
        assert cell["strong"] == (round(value, 12) == round(best, 12))
        if system != "first stage: bm25":  # the difference to the first stage, beside the value
            assert float(cell["small"]) == pytest.approx(value - values[(metric, dataset, "first stage: bm25")], abs=5e-5)
        else:
            assert cell["small"] == ""
    html = (out / "report.html").read_text(encoding="utf-8")
    table = html.split("data-metric='nDCG@10'>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><th class='system'>\((\w)\) ([^<]+)</th>(.*?)</tr>", table)
    assert [(letter, name) for letter, name, _ in rows] == [
        ("a", "first stage: bm25"), ("b", "tiny|a (untrained)"), ("c", "tiny-b (untrained)")]
    averages = {name: np.mean([values[("nDCG@10", f"synthetic/{lang}", name)] for lang in LANGUAGES])
                for _, name, _ in rows}
    ranks = {name: int(re.search(r"<td class='num rank'>(\d+)</td>", rest).group(1)) for _, name, rest in rows}
    assert ranks == {name: 1 + sum(other > avg for other in averages.values()) for name, avg in averages.items()}
    assert "synthetic average (6)" in table and "<ul class='legend'>" in html
    assert html.count("Superscript letters") == 1


def test_page_names_collections_and_says_where_the_experiment_file_lies(tmp_path):
    from bench.report.page import html_page

    recs = []
    for system, stage, exp in (("bm25", "first_stage", {"file": "/elsewhere/x.toml"}),
                               ("a-very-long-reranker-name-that-a-legend-must-not-cut-short", "rerank",
                                {"file": "/elsewhere/x.toml"})):
        rec = make_record("quality", experiment={"name": "x", "sha256": "b" * 64, **exp},
                          dataset={"label": "vaswani/test", "source": "beir", "path": "/data/vaswani", "split": "test",
                                   "language": "en", "n_queries": 2},
                          system={"label": system, "stage": stage, **({"first_stage_label": "bm25"} if stage == "rerank" else {})},
                          metrics={"nDCG@10": 0.5 if stage == "first_stage" else 0.6},
                          timings={"rerank_pairs_per_s": 100.0} if stage == "rerank" else {})
        recs.append(rec)
    html = html_page(recs)
    assert "<th>vaswani</th>" in html and "<th>vaswani/test</th>" not in html  # the folder's name, not its split
    assert "the experiment file lies outside the checkout" in html and "bench run /elsewhere/x.toml" in html
    assert "a-very-long-reranker-name-that-a-legend-must-not-cut-short</li>" in html  # the legend in full
    env = html.split("id='environment'", 1)[1]
    assert "<th>git commit</th>" in env and "<th>Python</th>" in env and "<th>numpy</th>" in env
    inside = recs[0].model_copy(deep=True)
    inside.experiment = {"name": "x", "sha256": "b" * 64, "file": "/repo/experiments/x.toml",
                         "repository_file": "experiments/x.toml"}
    html = html_page([inside])
    assert "bench run experiments/x.toml --datasets vaswani/test" in html and "outside the checkout" not in html


# -- the throughput plot and table -----------------------------------------------------------------
def matplotlib_rgb(colour) -> tuple:
    from matplotlib.colors import to_rgb

    return to_rgb(colour)


def test_throughput_plot_colours_error_bars_ticks_and_table_legend(monkeypatch, tmp_path):
    import bench.report.plots as plots
    from bench.records import ThroughputRecord
    from bench.throughput.tables import plot_throughput, throughput_table

    results = json.loads((Path(__file__).resolve().parents[1] / "results" / "gpu-checks-h100" / "results.json").read_text())
    data = results["records"]["throughput"]
    fast_batch = {**data["cells"][3], "token_budget": None, "batch_size": 64, "label": "fast fp32 b64"}
    data = {**data, "cells": data["cells"] + [fast_batch]}  # the fast engine in both panels
    record = ThroughputRecord.model_validate(data)
    seen = {}
    monkeypatch.setattr(plots, "save_png", lambda fig, path: seen.setdefault("fig", fig) and Path(path))
    plot_throughput(record, tmp_path / "t.png")
    axes = seen["fig"].axes
    colours = {}
    for ax in axes:
        for container in ax.containers:  # one per series: its data line, its error bars
            engine = container.get_label().split()[0]
            line, _, (bars,) = container.lines
            colours.setdefault(engine, set()).add(line.get_color())
            assert tuple(bars.get_colors()[0][:3]) == pytest.approx(matplotlib_rgb(line.get_color()))
    assert all(len(c) == 1 for c in colours.values()) and len({next(iter(c)) for c in colours.values()}) == len(colours)
    assert {"fast", "transformers", "flag"} <= set(colours)
    # error bars: each cell's min–max over its repeats
    cells = [c for c in record.cells if not c.error]
    spans = sorted(round(float(seg[1][1] - seg[0][1]), 6) for ax in axes for coll in ax.collections
                   for seg in coll.get_segments())
    expected = sorted(round(max(c.n_pairs / s for s in c.seconds) - min(c.n_pairs / s for s in c.seconds), 6)
                      for c in cells)
    assert len(spans) == len(expected) and spans == pytest.approx(expected, rel=1e-6)
    for ax in axes:  # integer ticks: the batch sizes and budgets measured
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels and all(re.fullmatch(r"[\d,]+", t) for t in labels)
    table = throughput_table(record)
    assert "Columns: engine" in table and "peak mem:" in table
    cpu = record.model_copy(deep=True)
    for c in cpu.cells:
        c.peak_memory = {"bytes": None, "what": "interleaved cells share the process: per-cell peak not measured"}
    assert "– where it was not measured (interleaved cells share the process" in throughput_table(cpu)
