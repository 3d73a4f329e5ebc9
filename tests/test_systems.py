"""A system is a pipeline: several first stages on one dataset, each reranked by every reranker,
each its own row in report.md, `bench report` and `bench compare`, under a label of its own."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bench.cli import main
from bench.report.compare import compare, scores_from_records, select_systems
from bench.config import load_experiment
from bench.errors import BenchError
from bench.records import QualityRecord, find_records
from bench.report.tables import quality_report
from bench.systems import pipeline_label, qualified

N_QUERIES = 12
N_OTHER_DOCS = 250


def vaswani_subset(shared_data: Path, folder: Path) -> Path:
    """A BEIR folder with Vaswani's first queries, their judged documents and a few hundred others:
    fast to encode, and still a real collection with real judgements."""
    src = shared_data / "vaswani"
    queries = [json.loads(line) for line in (src / "queries.jsonl").read_text(encoding="utf-8").splitlines()][:N_QUERIES]
    qids = {q["_id"] for q in queries}
    qrels = [line.split("\t") for line in (src / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    qrels = [row for row in qrels if row[0] in qids]
    judged = {row[1] for row in qrels}
    with gzip.open(src / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    kept = [d for i, d in enumerate(docs) if d["_id"] in judged or i < N_OTHER_DOCS]
    (folder / "qrels").mkdir(parents=True)
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in qrels),
                                               encoding="utf-8")
    with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(d) + "\n" for d in kept)
    return folder


def two_pipelines(folder: Path, minilm: str) -> dict:
    return {"name": "pipelines",
            "first_stages": {"bm25": {"kind": "bm25", "depth": 20},
                             "minilm": {"kind": "dense", "model": minilm, "dtype": "fp32", "depth": 20,
                                        "max_length": 128, "device": "cpu"}},
            "datasets": [{"source": "beir", "path": str(folder), "name": "vaswani", "first_stage": ["bm25", "minilm"]}],
            "rerankers": [{"model": "random:tiny-xlmr-reranker", "name": "tiny", "dtype": "fp32", "top_k": 10,
                           "max_length": 128, "device": "cpu"}],
            "evaluation": {"metrics": ["nDCG@10", "Recall@20"]}}


EXPECTED = ["first stage: bm25", "first stage: minilm", "bm25 » tiny (untrained)", "minilm » tiny (untrained)"]


@pytest.fixture(scope="module")
def pipelines_run(shared_data, minilm, tmp_path_factory):
    """`bench run` of BM25 and MiniLM first stages on a Vaswani subset, one reranker: four systems."""
    base = tmp_path_factory.mktemp("pipelines")
    folder = vaswani_subset(shared_data, base / "vaswani")
    from conftest import experiment_text

    path = base / "pipelines.toml"
    path.write_text(experiment_text(**two_pipelines(folder, minilm)), encoding="utf-8")
    out = base / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--skip-preflight"]) == 0
    return path, out


def report_cells(text: str, metric: str) -> dict[tuple[str, str], float]:
    """(dataset row, system column) -> number from report.md's Markdown table of `metric`."""
    block = text.split(f"### {metric}\n", 1)[1].split("###", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.splitlines() if line.startswith("|")]
    header, body = rows[0], rows[2:]
    cells = {(row[0], col): float(cell) for row in body for col, cell in zip(header[1:], row[1:])}
    if header[0] == "system":  # more systems than fit as columns: the table is turned (systems × datasets)
        return {(dataset, system): value for (system, dataset), value in cells.items()}
    return cells


def test_several_first_stages_make_four_distinct_systems(pipelines_run, capsys):
    path, out = pipelines_run
    capsys.readouterr()
    records = find_records(out, kind="quality")
    labels = sorted(r.system.label for r in records)
    assert labels == ["bm25", "bm25 » tiny", "minilm", "minilm » tiny"]
    reranked = {r.system.label: r for r in records if r.system.stage == "rerank"}
    assert reranked["minilm » tiny"].system.first_stage_label == "minilm"
    assert reranked["minilm » tiny"].system.first_stage["kind"] == "dense"
    assert reranked["bm25 » tiny"].system.first_stage["kind"] == "bm25"
    # each record states each block once, and only the settings its first stage's kind reads
    first = {r.system.label: r for r in records if r.system.stage == "first_stage"}
    dense, bm25 = first["minilm"], first["bm25"]
    assert "encoder" in dense.system.first_stage and "encoder" not in dense.info
    assert not {"k1", "b", "path"} & set(dense.system.first_stage)
    assert {"k1", "b"} <= set(bm25.system.first_stage) and not {"model", "dtype", "max_length"} & set(bm25.system.first_stage)
    assert Path(dense.experiment["file"]).is_absolute() and dense.experiment["file"] == str(path.resolve())
    # report.md: one column per pipeline, each holding its own record's numbers
    report = (out / "report.md").read_text(encoding="utf-8")
    for metric in ("nDCG@10", "Recall@20"):
        cells = report_cells(report, metric)
        assert sorted(col for _, col in cells) == sorted(EXPECTED)
        by_label = {r.system.label: r.metrics[metric] for r in records}
        for (_, col), value in cells.items():
            label = col.removeprefix("first stage: ").removesuffix(" (untrained)")
            assert value == pytest.approx(by_label[label], abs=5e-5)
    # the first stages differ, so the two reranked pipelines differ too (here: their candidates)
    assert records and reranked["bm25 » tiny"].metrics != reranked["minilm » tiny"].metrics
    # bench report prints the same table
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.strip() == report.strip()
    # bench compare on the records: four systems, four letters, the records' means
    assert main(["compare", str(out / "records"), "--metric", "nDCG@10", "--permutations", "200",
                 "--bootstrap", "200"]) == 0
    printed = capsys.readouterr().out
    for letter, label in zip("abcd", EXPECTED):
        row = next(line for line in printed.splitlines() if line.startswith(f"| ({letter}) {label}"))
        rec = next(r for r in records if label.removeprefix("first stage: ").removesuffix(" (untrained)") == r.system.label)
        assert re.search(rf"\|\s*{rec.metrics['nDCG@10']:.4f}", row)


def test_compare_selects_and_renames_systems(pipelines_run, capsys):
    _, out = pipelines_run
    records = find_records(out, kind="quality")
    scores = scores_from_records(records, ["nDCG@10"])
    picked = select_systems(scores, ["minilm » tiny (untrained)=dense+ce", "first stage: minilm"])
    assert list(dict.fromkeys(picked.system)) == ["dense+ce", "first stage: minilm"]
    assert compare(picked).systems == ["dense+ce", "first stage: minilm"]
    with pytest.raises(BenchError, match="no system labelled 'nope'"):
        select_systems(scores, ["nope"])
    capsys.readouterr()
    assert main(["compare", str(out / "records"), "--systems", "first stage: bm25,bm25 » tiny (untrained)=ce",
                 "--metric", "nDCG@10", "--permutations", "50", "--bootstrap", "50"]) == 0
    printed = capsys.readouterr().out
    assert "| (a) first stage: bm25" in printed and "| (b) ce " in printed and "minilm" not in printed
    # run files: --labels a,b as one list, the same as --label twice
    runs = sorted((out / "runs" / "vaswani").glob("*.trec"))
    qrels = out / "runs" / "vaswani" / "qrels.txt"
    assert main(["compare", *map(str, runs[:2]), "--qrels", str(qrels), "--labels", "one,two", "--permutations", "50",
                 "--bootstrap", "50"]) == 0
    assert "| (a) one" in capsys.readouterr().out
    assert main(["compare", *map(str, runs[:2]), "--qrels", str(qrels), "--labels", "one,two", "--label", "x"]) == 2


def test_records_of_one_reranker_over_two_first_stages_stay_apart_in_old_records(pipelines_run):
    """Records written before labels named pipelines call both reranked systems 'tiny': the report
    and compare tell them apart by the first stage they state, and never show one for both."""
    _, out = pipelines_run
    records = []
    for rec in find_records(out, kind="quality"):
        data = rec.model_dump()
        if data["system"]["stage"] == "rerank":
            data["system"]["label"] = "tiny"
        records.append(QualityRecord.model_validate(data))
    text, frame = quality_report(records)
    assert set(frame.system) == set(EXPECTED)
    assert set(scores_from_records(records, ["nDCG@10"]).system) == set(EXPECTED)


def test_labels_are_pipelines_only_when_first_stages_differ(tmp_path, experiment_toml):
    assert pipeline_label("bm25", "ce", qualify=True) == "bm25 » ce"
    assert pipeline_label("bm25", "ce", qualify=False) == "ce"
    assert pipeline_label("bm25", None, qualify=True) == "bm25"
    assert qualified("bm25 » ce", "bm25") == "bm25 » ce" and qualified("ce", "bm25") == "bm25 » ce"
    parts = two_pipelines(tmp_path, "offline:all-MiniLM-L6-v2")
    parts["first_stages"]["minilm"]["name"] = "MiniLM"
    exp = load_experiment(experiment_toml(**parts))
    assert [exp.system_label(n, exp.rerankers[0]) for n, _ in exp.first_stages_for(exp.datasets[0])] == [
        "bm25 » tiny", "MiniLM » tiny"]
    single = load_experiment(experiment_toml("one.toml", **{**parts, "first_stages": {"bm25": {"kind": "bm25"}},
                                                            "datasets": [{"source": "synthetic"}]}))
    assert single.system_label("bm25", single.rerankers[0]) == "tiny"
    bad = {**parts, "datasets": [{"source": "synthetic", "first_stage": ["bm25", "bm25"]}]}
    with pytest.raises(BenchError, match="list each first stage once"):
        load_experiment(experiment_toml("bad.toml", **bad))
    bad = {**parts, "datasets": [{"source": "synthetic", "first_stage": ["bm25", "nope"]}]}
    with pytest.raises(BenchError, match="'nope' is not defined"):
        load_experiment(experiment_toml("bad2.toml", **bad))


# -- the results page, in a real browser ------------------------------------------------------------
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def chromium() -> str:
    """Debian's chromium (CI installs it, see .ci/run), or a skip that says why."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium on PATH (Debian: apt-get install chromium); the results page is not opened")


def browse(page: Path, *flags: str) -> subprocess.CompletedProcess:
    """Headless chromium on `page`; stderr holds the page's console (`CONSOLE` lines)."""
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", f"--user-data-dir={page.parent / '.chromium'}", *flags, page.as_uri()],
                          capture_output=True, text=True, timeout=120)


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


class Cells(HTMLParser):
    """The numbers of the page's metric tables, as the browser's DOM holds them: (metric, dataset,
    system) -> the cell's text without its significance letters."""

    def __init__(self):
        super().__init__()
        self.cells, self._at, self._sup = {}, None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and "data-metric" in attrs:
            self._at = (attrs["data-metric"], attrs["data-dataset"], attrs["data-system"])
            self.cells[self._at] = ""
        self._sup = self._sup or tag in ("sup", "small")  # letters, and the difference to the first stage

    def handle_endtag(self, tag):
        self._at = None if tag == "td" else self._at
        self._sup = self._sup and tag not in ("sup", "small")

    def handle_data(self, data):
        if self._at is not None and not self._sup:
            self.cells[self._at] += data


def test_results_page_in_headless_chromium_shows_report_md_numbers(pipelines_run, capsys):
    _, out = pipelines_run
    page = out / "report.html"
    assert page.is_file(), "bench run writes report.html beside report.md"
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text and " src=" not in text and "<link" not in text  # nothing fetched at view time
    # the console check does see a page's errors (a control page with one)
    bad = out / "bad.html"
    bad.write_text("<html><body><script>console.error('control-error')</script></body></html>", encoding="utf-8")
    assert any("control-error" in line for line in console_lines(browse(bad, "--dump-dom").stderr))

    shown = browse(page, "--dump-dom")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert console_lines(shown.stderr) == []
    parser = Cells()
    parser.feed(shown.stdout)
    report = (out / "report.md").read_text(encoding="utf-8")
    for metric in ("nDCG@10", "Recall@20"):
        expected = {col: value for (_, col), value in report_cells(report, metric).items()}
        in_dom = {system: float(v) for (m, ds, system), v in parser.cells.items() if m == metric and ds == "vaswani"}
        assert sorted(in_dom) == sorted(EXPECTED) and in_dom == expected
    assert re.search(r"class=.systems.", shown.stdout) and all(text in shown.stdout for text in ("bm25 » tiny", "bench run "))

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-html.png"
    shot.unlink(missing_ok=True)
    taken = browse(page, f"--screenshot={shot}", "--window-size=1280,2000")
    assert taken.returncode == 0 and console_lines(taken.stderr) == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # bench report --out writes the same page from the records alone
    again = out / "again"
    assert main(["report", str(out), "--out", str(again)]) == 0
    parser2 = Cells()
    parser2.feed((again / "report.html").read_text(encoding="utf-8"))
    assert parser2.cells == parser.cells
