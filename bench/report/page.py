"""The results page: one self-contained HTML file from a run's records (`bench report DIR --html`,
and `bench run` writes it beside report.md).

In the spirit of Pyserini's two-click reproduction pages: per metric a table of pipelines ×
datasets with family averages and the significance letters of `bench.report.compare`; quality against
speed; per-language bars; each system's settings, records and the command that reproduces it; the
environment. Charts are inline SVG and there is no script at all, so the page opens offline, from
a shared folder, years later.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections import defaultdict
from pathlib import Path

from .compare import Settings, compare, scores_from_records
from ..errors import BenchError
from ..io import atomic_write_text
from ..metrics import by_metric
from ..records import QualityRecord, ThroughputRecord, find_records, utc_now
from .tables import latest_experiment, system_labels

#: One colour per pipeline, the same in every chart (matplotlib's tab10).
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]
#: The significance tests behind the letters: fewer swaps than `bench compare`'s default keep
#: `bench run` quick; the footnote states them.
PAGE_SETTINGS = Settings(permutations=2_000, bootstrap=200)

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ccc;padding:.25em .6em}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.avg{background:#f4f4f4}th{background:#eee}
th.system{text-align:left}sup{color:#a33}.note{color:#555;font-size:.9em}pre{background:#f7f7f7;padding:.5em;
overflow-x:auto;font-size:.85em}code{background:#f3f3f3;padding:0 .2em}details{margin:.3em 0}
svg text{font-size:11px;font-family:inherit}
"""


def write_html_report(folder: str | Path, path: str | Path | None = None, *,
                      throughput_folders: list[str | Path] = (), all_experiments: bool = False,
                      skipped: list[str] | None = None) -> Path:
    """report.html for the quality records under `folder` (default: `folder`/report.html). Speeds
    come from throughput records under `folder` and `throughput_folders` when one measured the same
    model on the same device."""
    folder = Path(folder)
    records = find_records(folder, kind="quality", skipped=skipped)
    if not all_experiments:  # as `bench report`: the latest experiment's records
        records = latest_experiment(records)[0]
    if not records:
        raise BenchError(f"{folder}: no quality records found (expected <out>/records/*.json written by `bench run`)")
    throughput = [r for f in [folder, *throughput_folders] for r in find_records(f, kind="throughput")]
    path = Path(path) if path else folder / "report.html"
    return atomic_write_text(path, html_page(records, throughput, page_dir=path.parent.resolve()))


def html_page(records: list[QualityRecord], throughput: list[ThroughputRecord] = (), *,
              page_dir: Path | None = None) -> str:
    """The page's text."""
    labels = system_labels(records)
    systems = list(dict.fromkeys(label for rec, label in sorted(zip(records, labels),
                                                                key=lambda p: p[0].system.stage != "first_stage")))
    colours = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(systems)}
    by_label: dict[str, list[QualityRecord]] = defaultdict(list)
    for rec, label in zip(records, labels):
        by_label[label].append(rec)
    metrics = list(dict.fromkeys(str(m) for rec in records for m in by_metric(rec.metrics)))
    datasets = list(dict.fromkeys(rec.dataset.label for rec in records))
    comparison, why_not = _comparison(records)
    name = records[0].experiment.get("name") or "rerank-bench"
    parts = [f"<h1>{_e(name)}: results</h1>"]
    if records[0].experiment.get("description"):
        parts.append(f"<p>{_e(records[0].experiment['description'])}</p>")
    parts.append(f"<p class='note'>{len(records)} quality records, {len(systems)} systems (a system is a pipeline: "
                 f"first stage » reranker), {len(datasets)} datasets. Made by <code>bench report --html</code> "
                 f"from the records only, {utc_now()}.</p>")
    for metric in metrics:
        parts.append(_metric_table(metric, records, labels, systems, datasets, comparison, why_not))
    if metrics:
        parts.append(_speed_section(metrics[0], records, labels, colours, throughput, page_dir))
        parts.append(_language_section(metrics[0], records, labels, systems, colours))
    parts.append(_systems_section(systems, by_label, colours, page_dir))
    parts.append(_environment_section(records))
    body = "\n".join(p for p in parts if p)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(name)}: results</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{STYLE}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


# -- tables ---------------------------------------------------------------------------------------
def _comparison(records):
    """Significance letters need per-query values and the same queries for every system; when the
    records do not allow it the tables still show the numbers, and the page says why no letters."""
    try:
        return compare(scores_from_records(records), PAGE_SETTINGS), None
    except BenchError as exc:
        return None, str(exc)


def _families(datasets: list[str]) -> dict[str, list[str]]:
    """Datasets grouped by the part of their label before '/' (as report.md averages them)."""
    families: dict[str, list[str]] = {}
    for ds in datasets:
        families.setdefault(ds.split("/")[0], []).append(ds)
    return families


def _metric_table(metric, records, labels, systems, datasets, comparison, why_not) -> str:
    values = {(label, rec.dataset.label): by_metric(rec.metrics).get(_metric_key(rec, metric))
              for rec, label in zip(records, labels)}
    letters = comparison.letters() if comparison else {}
    better = {}
    if comparison is not None:
        sub = comparison.means[comparison.means.metric == metric]
        better = {(row.system, row.dataset): row.better_than for row in sub.itertuples()}
    averaged = {fam: members for fam, members in _families(datasets).items() if len(members) > 1}
    head = "".join(f"<th>{_e(ds)}</th>" for ds in datasets)
    head += "".join(f"<th>{_e(fam)} average ({len(m)})</th>" for fam, m in averaged.items())
    rows = []
    for system in systems:
        tag = f"({letters[system]}) " if system in letters else ""
        cells = [f"<th class='system'>{_e(tag + system)}</th>"]
        for ds in datasets:
            v = values.get((system, ds))
            marks = better.get((system, ds), "")
            cells.append(_num(v, metric, ds, system, f"<sup>{_e(marks)}</sup>" if marks else ""))
        for fam, members in averaged.items():
            vs = [values.get((system, ds)) for ds in members]
            mean = None if any(v is None for v in vs) else sum(vs) / len(vs)
            cells.append(_num(mean, metric, f"{fam} average ({len(members)})", system, cls="num avg"))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    # compare's own Avg column is not on this page: its sentence goes, the family averages get theirs
    note = (re.sub(r" Avg: [^.]*\(not tested\)\.", "", comparison.footnote(metric)) if comparison
            else f"No significance letters: {why_not}")
    if averaged:
        note += (" Averages: unweighted mean over one family's datasets, each row one pipeline "
                 "(never two pipelines in one average).")
    return (f"<h2 id='metric-{_id(metric)}'>{_e(metric)}</h2>\n<table class='metric' data-metric='{_e(metric)}'>"
            f"<thead><tr><th>system</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            f"<p class='note'>{_e(note)}</p>")


def _metric_key(rec: QualityRecord, metric: str):
    for key in by_metric(rec.metrics):
        if str(key) == metric:
            return key
    return None


def _num(value, metric, dataset, system, marks="", cls="num") -> str:
    attrs = f"class='{cls}' data-metric='{_e(metric)}' data-dataset='{_e(dataset)}' data-system='{_e(system)}'"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"<td {attrs}>–</td>"
    return f"<td {attrs} data-value='{value!r}'>{value:.4f}{marks}</td>"


# -- quality against speed --------------------------------------------------------------------------
def _speed_of(rec: QualityRecord, throughput: list[ThroughputRecord]) -> tuple[float | None, str]:
    """Pairs/s of a reranked system: a throughput record's cell for the same model, engine, precision
    and max_length on the same device when there is one, else the quality run's own timing."""
    reranker = rec.system.reranker or {}
    model = (reranker.get("model") or {}).get("ref") if isinstance(reranker.get("model"), dict) else reranker.get("model")
    device = rec.environment.device.get("device")
    for tp in throughput:
        if tp.model.ref != model or tp.environment.device.get("device") != device:
            continue
        cells = [c for c in tp.cells if not c.error and c.pairs_per_s and c.engine == reranker.get("engine")
                 and (c.dtype_resolved or c.dtype) == reranker.get("dtype") and c.max_length == reranker.get("max_length")]
        if cells:
            best = max(cells, key=lambda c: c.pairs_per_s)
            return best.pairs_per_s, f"throughput record {tp.path.name if tp.path else ''} ({best.label})"
    own = rec.timings.rerank_pairs_per_s
    return own, "this run's own timing"


def _speed_section(metric, records, labels, colours, throughput, page_dir) -> str:
    points = []
    for rec, label in zip(records, labels):
        if rec.system.stage != "rerank":
            continue
        speed, source = _speed_of(rec, throughput)
        value = by_metric(rec.metrics).get(_metric_key(rec, metric))
        if speed and value is not None:
            points.append((label, rec.dataset.label, float(speed), float(value), source))
    if not points:
        return ""
    sources = sorted({f"{label}: {source}" for label, _, _, _, source in points})
    return (f"<h2 id='speed'>{_e(metric)} against reranking speed</h2>\n" + _scatter(points, colours, metric)
            + "<p class='note'>Speed in pairs per second on the device that ran each record, taken from: "
            + "; ".join(_e(s) for s in sources) + ". One point per pipeline and dataset.</p>")


def _scatter(points, colours, metric, width=720, height=380) -> str:
    left, right, top, bottom = 60, 230, 20, 45
    xs = [math.log10(p[2]) for p in points]
    ys = [p[3] for p in points]
    x0, x1 = math.floor(min(xs) - 0.05), math.ceil(max(xs) + 0.05)
    y0, y1 = max(0.0, math.floor(min(ys) * 10 - 0.5) / 10), min(1.0, math.ceil(max(ys) * 10 + 0.5) / 10)
    y1 = y1 if y1 > y0 else y0 + 0.1
    pw, ph = width - left - right, height - top - bottom

    def px(x):
        return left + (x - x0) / (x1 - x0) * pw

    def py(y):
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
           f"aria-label='{_e(metric)} against pairs per second'>",
           f"<rect x='{left}' y='{top}' width='{pw}' height='{ph}' fill='none' stroke='#888'/>"]
    for k in range(x0, x1 + 1):
        out.append(f"<line x1='{px(k):.1f}' x2='{px(k):.1f}' y1='{top}' y2='{top + ph}' stroke='#ddd'/>"
                   f"<text x='{px(k):.1f}' y='{top + ph + 15}' text-anchor='middle'>{10 ** k:,}</text>")
    for i in range(6):
        y = y0 + (y1 - y0) * i / 5
        out.append(f"<line x1='{left}' x2='{left + pw}' y1='{py(y):.1f}' y2='{py(y):.1f}' stroke='#eee'/>"
                   f"<text x='{left - 5}' y='{py(y) + 4:.1f}' text-anchor='end'>{y:.2f}</text>")
    out.append(f"<text x='{left + pw / 2}' y='{height - 8}' text-anchor='middle'>reranking speed (pairs/s, log scale)</text>"
               f"<text transform='translate(14 {top + ph / 2}) rotate(-90)' text-anchor='middle'>{_e(metric)}</text>")
    for label, dataset, speed, value, source in points:
        x, y = px(math.log10(speed)), py(value)
        out.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='5' fill='{colours[label]}'>"
                   f"<title>{_e(label)} on {_e(dataset)}: {value:.4f} at {speed:,.0f} pairs/s ({_e(source)})</title></circle>"
                   f"<text x='{x + 7:.1f}' y='{y + 4:.1f}' fill='#555'>{_e(dataset.split('/')[-1])}</text>")
    out += _legend(list(dict.fromkeys(p[0] for p in points)), colours, left + pw + 12, top)
    return "".join(out) + "</svg>"


def _legend(labels, colours, x, y) -> list[str]:
    return [f"<rect x='{x}' y='{y + 16 * i}' width='10' height='10' fill='{colours[label]}'/>"
            f"<text x='{x + 15}' y='{y + 16 * i + 9}'>{_e(label)}</text>" for i, label in enumerate(labels)]


# -- per language ---------------------------------------------------------------------------------
def _language_section(metric, records, labels, systems, colours) -> str:
    """Grouped bars per language for each family of datasets with several languages (MIRACL)."""
    parts = []
    datasets = list(dict.fromkeys(rec.dataset.label for rec in records))
    language = {rec.dataset.label: rec.dataset.language for rec in records}
    values = {(label, rec.dataset.label): by_metric(rec.metrics).get(_metric_key(rec, metric))
              for rec, label in zip(records, labels)}
    for family, members in _families(datasets).items():
        if len(members) < 2 or not all(language.get(ds) for ds in members):
            continue
        parts.append(f"<h3>{_e(family)}: {_e(metric)} per language</h3>"
                     + _bars(members, language, systems, values, colours, metric))
    return ("<h2 id='languages'>Per language</h2>\n" + "\n".join(parts)) if parts else ""


def _bars(datasets, language, systems, values, colours, metric, height=300) -> str:
    left, top, bottom, right = 50, 15, 40, 230
    group = max(60, 14 * len(systems) + 20)
    pw, ph = group * len(datasets), height - top - bottom
    width = left + pw + right
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
           f"aria-label='{_e(metric)} per language'>"]
    for i in range(6):
        y = top + ph * (1 - i / 5)
        out.append(f"<line x1='{left}' x2='{left + pw}' y1='{y:.1f}' y2='{y:.1f}' stroke='#eee'/>"
                   f"<text x='{left - 5}' y='{y + 4:.1f}' text-anchor='end'>{i / 5:.1f}</text>")
    bar = (group - 20) / max(1, len(systems))
    for g, ds in enumerate(datasets):
        x = left + g * group + 10
        for s, system in enumerate(systems):
            v = values.get((system, ds))
            if v is None:
                continue
            h = max(0.0, min(1.0, v)) * ph
            out.append(f"<rect x='{x + s * bar:.1f}' y='{top + ph - h:.1f}' width='{bar - 1:.1f}' height='{h:.1f}' "
                       f"fill='{colours[system]}'><title>{_e(system)} on {_e(ds)}: {v:.4f}</title></rect>")
        out.append(f"<text x='{x + (group - 20) / 2:.1f}' y='{top + ph + 15}' text-anchor='middle'>"
                   f"{_e(language[ds])}</text>")
    out += _legend(systems, colours, left + pw + 12, top)
    return "".join(out) + "</svg>"


# -- systems, commands, environment ---------------------------------------------------------------
def _systems_section(systems, by_label, colours, page_dir) -> str:
    parts = ["<h2 id='systems'>Systems: settings, records, reproduction</h2>"]
    for system in systems:
        recs = by_label[system]
        rec = recs[0]
        settings = {"stage": rec.system.stage, "first_stage": _lean(rec.system.first_stage)}
        if rec.system.reranker:
            settings["reranker"] = _lean(rec.system.reranker)
        links = ", ".join(f"<a href='{_e(_href(r.path, page_dir))}'>{_e(r.dataset.label)}</a>" for r in recs if r.path)
        parts.append(f"<h3 style='border-left:6px solid {colours[system]};padding-left:.4em'>{_e(system)}</h3>"
                     f"<p>Records: {links or '–'}</p><p>Reproduce:</p><pre class='command'>{_e(_command(recs))}</pre>"
                     f"<details><summary>settings</summary><pre>{_e(json.dumps(settings, indent=1, default=str))}</pre>"
                     "</details>")
    return "\n".join(parts)


def _lean(part: dict | None) -> dict:
    """A component's settings without run-time counters and per-call detail."""
    return {k: v for k, v in (part or {}).items() if k not in ("encoder", "note", "token_budget_used", "seconds")}


def _href(path: Path, page_dir: Path | None) -> str:
    path = Path(path).resolve()
    return os.path.relpath(path, page_dir).replace(os.sep, "/") if page_dir else path.as_uri()


def _command(recs: list[QualityRecord]) -> str:
    """The command that reruns this system's row: the experiment at the recorded commit, on its datasets."""
    rec = recs[0]
    exp = rec.experiment.get("repository_file") or rec.experiment.get("file")
    git = rec.environment.git
    datasets = ",".join(dict.fromkeys(r.dataset.label for r in recs))
    lines = []
    if git.get("sha"):
        lines.append(f"git checkout {git['sha']}" + ("   # the records were made with uncommitted changes"
                                                     if git.get("dirty") else ""))
    if exp:
        lines.append(f"bench run {_quote(exp)} --datasets {_quote(datasets)}")
    else:
        lines.append("# the records do not name their experiment file")
    return "\n".join(lines)


def _quote(text: str) -> str:
    return text if all(c.isalnum() or c in "/._-,:@" for c in text) else "'" + text.replace("'", "'\\''") + "'"


def _environment_section(records) -> str:
    seen = {}
    for rec in records:
        env = rec.environment
        key = json.dumps([env.git, env.python, env.platform, env.device, env.packages], sort_keys=True, default=str)
        seen.setdefault(key, env)
    rows = []
    for env in seen.values():
        packages = ", ".join(f"{k} {v}" for k, v in env.packages.items() if v)
        sha = env.git.get("sha") or "unknown"
        rows.append(f"<tr><td>{_e(sha[:12])}{' (dirty)' if env.git.get('dirty') else ''}</td><td>{_e(env.python)}</td>"
                    f"<td>{_e(env.platform)}</td><td>{_e(json.dumps(env.device, default=str))}</td>"
                    f"<td class='note'>{_e(packages)}</td></tr>")
    return ("<h2 id='environment'>Environment</h2><table><thead><tr><th>git</th><th>python</th><th>platform</th>"
            f"<th>device</th><th>packages</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _id(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text)
