"""The results page: one self-contained HTML file from a run's records (`bench run` writes it beside
report.md; `bench report DIR --out DIR` writes it again from the records alone).

In the spirit of Pyserini's two-click reproduction pages: per metric a table of pipelines ×
datasets, in the experiment's order, with the best value of each column in bold, each reranked
value's difference to its first stage beside it, family averages, the average over all datasets
and a rank by it, and the significance letters of `bench.report.compare.compare_records` (the very
comparison `bench compare OUT/records` prints, same settings and seed); quality against speed;
per-language bars; each system's settings, records and the command that reproduces its row; the
environment as a table. Charts are inline SVG with HTML legends and there is no script at all, so
the page opens offline, from a shared folder, years later.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections import defaultdict
from pathlib import Path

from .compare import compare_records
from ..errors import BenchError
from ..io import atomic_write_text
from ..metrics import by_metric
from ..records import QualityRecord, ThroughputRecord, utc_now
from .tables import ordered, system_labels
from .versions import versions_in

#: One colour per pipeline, the same in every chart (matplotlib's tab10).
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ccc;padding:.25em .6em}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}td.avg{background:#f4f4f4}th{background:#eee}
th.system{text-align:left}sup{color:#a33}small.delta{color:#666;margin-left:.3em}.note{color:#555;font-size:.9em}
pre{background:#f7f7f7;padding:.5em;overflow-x:auto;font-size:.85em;margin:0}code{background:#f3f3f3;padding:0 .2em}
details{margin:.3em 0}svg text{font-size:11px;font-family:inherit}
ul.legend{list-style:none;padding:0;margin:.2em 0 1em;display:flex;flex-wrap:wrap;gap:.3em 1.2em;font-size:.9em}
ul.legend span.swatch{display:inline-block;width:.8em;height:.8em;margin-right:.35em;vertical-align:-.05em}
table.env th{text-align:left;font-weight:normal;background:#f4f4f4}
"""


def write_html_page(records: list[QualityRecord], path: str | Path, throughput: list[ThroughputRecord] = ()) -> Path:
    """report.html at `path` for `records` (as `bench report` selects them: one experiment version);
    speeds from `throughput` records that measured the same model on the same device."""
    path = Path(path)
    if not records:
        raise BenchError(f"{path}: no quality records to make a results page from")
    return atomic_write_text(path, html_page(records, throughput, page_dir=path.parent.resolve()))


def html_page(records: list[QualityRecord], throughput: list[ThroughputRecord] = (), *,
              page_dir: Path | None = None) -> str:
    """The page's text."""
    records = ordered(records)
    labels = system_labels(records)
    systems = list(dict.fromkeys(labels))
    colours = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(systems)}
    by_label: dict[str, list[QualityRecord]] = defaultdict(list)
    for rec, label in zip(records, labels):
        by_label[label].append(rec)
    metrics = list(dict.fromkeys(str(m) for rec in records for m in by_metric(rec.metrics)))
    datasets = list(dict.fromkeys(rec.dataset.label for rec in records))
    names = collection_names(records)
    comparison, why_not = _comparison(records)
    view = _View(records, labels, systems, datasets, names, comparison)
    name = records[0].experiment.get("name") or "rerank-bench"
    versions = ", ".join(str(v) for v in versions_in(records))
    parts = [f"<h1>{_e(name)}: results</h1>"]
    if records[0].experiment.get("description"):
        parts.append(f"<p>{_e(records[0].experiment['description'])}</p>")
    parts.append(f"<p class='note'>{len(records)} quality records of {_e(versions)}: {len(systems)} systems (a "
                 f"system is a pipeline: first stage » reranker), {len(datasets)} datasets. Made from the records "
                 f"only, {utc_now()}.</p>")
    for metric in metrics:
        parts.append(view.metric_table(metric))
    if metrics:
        parts.append(f"<p class='note' id='footnote'>{_e(view.footnote(why_not))}</p>")
        parts.append(_speed_section(metrics[0], records, labels, colours, throughput, short_names(records, names)))
        parts.append(_language_section(metrics[0], records, labels, systems, colours))
    parts.append(_systems_section(systems, by_label, colours, page_dir))
    parts.append(_environment_section(records))
    body = "\n".join(p for p in parts if p)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(name)}: results</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{STYLE}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


def collection_names(records: list[QualityRecord]) -> dict[str, str]:
    """Dataset label -> the name its column shows: a BEIR folder's name without its split
    (`vaswani/test` -> `vaswani`), unless two datasets would then share one; other labels as they are."""
    names = {}
    for rec in records:
        ds = rec.dataset
        extra = ds.model_extra or {}
        path, split = extra.get("path"), ds.split
        short = ds.label
        if extra.get("source") == "beir" and path and split and ds.label == f"{Path(path).name}/{split}":
            short = Path(path).name
        names[ds.label] = short
    shorts = list(names.values())
    return {label: short if shorts.count(short) == 1 else label for label, short in names.items()}


def short_names(records: list[QualityRecord], names: dict[str, str]) -> dict[str, str]:
    """What a point in a chart is labelled by: its language when each dataset has its own (MIRACL, the
    synthetic collection), else its collection name."""
    languages = {rec.dataset.label: rec.dataset.language for rec in records}
    if all(languages.values()) and len(set(languages.values())) == len(languages):
        return languages
    return names


# -- tables ---------------------------------------------------------------------------------------
def _comparison(records):
    """Significance letters need per-query values and the same queries for every system; when the
    records do not allow it the tables still show the numbers, and the page says why no letters."""
    try:
        return compare_records(records), None
    except BenchError as exc:
        return None, str(exc)


def _families(datasets: list[str]) -> dict[str, list[str]]:
    """Datasets grouped by the part of their label before '/' (as report.md averages them)."""
    families: dict[str, list[str]] = {}
    for ds in datasets:
        families.setdefault(ds.split("/")[0], []).append(ds)
    return families


class _View:
    """The metric tables of one page: values, bold bests, differences to first stages, averages, ranks."""

    def __init__(self, records, labels, systems, datasets, names, comparison):
        self.records, self.labels, self.systems, self.datasets = records, labels, systems, datasets
        self.names, self.comparison = names, comparison
        self.averaged = {fam: members for fam, members in _families(datasets).items() if len(members) > 1}
        # the first stage each reranked system reranks, by label (differences are taken against it)
        label_of = {(rec.system.label, rec.dataset.label): label for rec, label in zip(records, labels)}
        self.first_stage = {}
        for rec, label in zip(records, labels):
            if rec.system.stage == "rerank" and rec.system.first_stage_label:
                fs = label_of.get((rec.system.first_stage_label, rec.dataset.label))
                if fs:
                    self.first_stage[label] = fs

    def values(self, metric: str) -> dict[tuple[str, str], float | None]:
        return {(label, rec.dataset.label): by_metric(rec.metrics).get(_metric_key(rec, metric))
                for rec, label in zip(self.records, self.labels)}

    def columns(self, metric: str) -> tuple[list[tuple[str, str, list[str]]], dict[tuple[str, str], float | None]]:
        """[(column key, header, datasets averaged)], and (system, column key) -> value."""
        values = self.values(metric)
        cols = [(ds, self.names[ds], [ds]) for ds in self.datasets]
        cols += [(f"{fam} average ({len(m)})", f"{fam} average ({len(m)})", m) for fam, m in self.averaged.items()]
        if len(self.datasets) > 1 and list(self.averaged.values()) != [self.datasets]:  # one family: its average
            cols.append(("average", f"average ({len(self.datasets)})", list(self.datasets)))
        table = {}
        for system in self.systems:
            for key, _, members in cols:
                vs = [values.get((system, ds)) for ds in members]
                table[(system, key)] = None if any(v is None for v in vs) else sum(vs) / len(vs)
        return cols, table

    def metric_table(self, metric: str) -> str:
        cols, table = self.columns(metric)
        letters = self.comparison.letters() if self.comparison else {}
        better = self.comparison.better(metric) if self.comparison else {}
        best = {key: max((v for s in self.systems if (v := table[(s, key)]) is not None), default=None)
                for key, _, _ in cols}
        rank_key = cols[-1][0]  # the average over every dataset, or the one dataset
        ranks = _ranks({s: table[(s, rank_key)] for s in self.systems})
        head = "".join(f"<th>{_e(header)}</th>" for _, header, _ in cols) + "<th>rank</th>"
        rows = []
        for system in self.systems:
            tag = f"({letters[system]}) " if system in letters else ""
            cells = [f"<th class='system'>{_e(tag + system)}</th>"]
            for key, _, members in cols:
                v = table[(system, key)]
                fs = self.first_stage.get(system)
                base = table.get((fs, key)) if fs else None
                delta = None if v is None or base is None else v - base
                marks = better.get((system, key), "") if len(members) == 1 and key in self.datasets else ""
                cells.append(_num(v, metric, key, system, marks=marks, bold=v is not None and v == best[key],
                                  delta=delta, cls="num" if key in self.datasets else "num avg"))
            cells.append(f"<td class='num rank'>{ranks.get(system, '–')}</td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        return (f"<h2 id='metric-{_id(metric)}'>{_e(metric)}</h2>\n<table class='metric' data-metric='{_e(metric)}'>"
                f"<thead><tr><th>system</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")

    def footnote(self, why_not: str | None) -> str:
        """Stated once, under the metric tables."""
        parts = []
        if self.comparison is not None:
            parts.append(self.comparison.footnote(avg=False))
        else:
            parts.append(f"No significance letters: {why_not}.")
        parts.append("Bold: the best value of each column. Small signed numbers: the difference to the system's "
                     "first stage on the same dataset.")
        if self.averaged:
            parts.append("Family averages: unweighted mean over one family's datasets, each row one pipeline "
                         "(never two pipelines in one average).")
        if len(self.datasets) > 1:
            parts.append(f"Average: unweighted mean over all {len(self.datasets)} datasets (not tested); rank: by "
                         "that average, 1 the best (equal averages share a rank).")
        else:
            parts.append("Rank: by the value, 1 the best.")
        return " ".join(p.strip() for p in parts)


def _ranks(values: dict[str, float | None]) -> dict[str, int]:
    """Competition ranking (1, 2, 2, 4), highest first; systems without a value have none."""
    present = sorted((v for v in values.values() if v is not None), reverse=True)
    return {s: 1 + sum(1 for w in present if w > v) for s, v in values.items() if v is not None}


def _metric_key(rec: QualityRecord, metric: str):
    for key in by_metric(rec.metrics):
        if str(key) == metric:
            return key
    return None


def _num(value, metric, dataset, system, *, marks="", bold=False, delta=None, cls="num") -> str:
    attrs = f"class='{cls}' data-metric='{_e(metric)}' data-dataset='{_e(dataset)}' data-system='{_e(system)}'"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"<td {attrs}>–</td>"
    text = f"{value:.4f}"
    text = f"<strong>{text}</strong>" if bold else text
    text += f"<sup>{_e(marks)}</sup>" if marks else ""
    text += f"<small class='delta'>{delta:+.4f}</small>" if delta is not None else ""
    return f"<td {attrs} data-value='{value!r}'>{text}</td>"


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


def _speed_section(metric, records, labels, colours, throughput, names) -> str:
    points = []
    for rec, label in zip(records, labels):
        if rec.system.stage != "rerank":
            continue
        speed, source = _speed_of(rec, throughput)
        value = by_metric(rec.metrics).get(_metric_key(rec, metric))
        if speed and value is not None:
            points.append((label, names[rec.dataset.label], float(speed), float(value), source))
    if not points:
        return ""
    sources = sorted({f"{label}: {source}" for label, _, _, _, source in points})
    return (f"<h2 id='speed'>{_e(metric)} against reranking speed</h2>\n" + _scatter(points, colours, metric)
            + "<p class='note'>Speed in pairs per second on the device that ran each record, taken from: "
            + "; ".join(_e(s) for s in sources) + ". One point per pipeline and dataset.</p>")


def _scatter(points, colours, metric, width=620, height=380) -> str:
    left, right, top, bottom = 60, 20, 20, 45
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
                   f"<text x='{x + 7:.1f}' y='{y + 4:.1f}' fill='#555'>{_e(dataset)}</text>")
    return "".join(out) + "</svg>" + _legend(list(dict.fromkeys(p[0] for p in points)), colours)


def _legend(labels, colours) -> str:
    """An HTML legend under a chart: it wraps, so no label is ever cut short."""
    items = "".join(f"<li><span class='swatch' style='background:{colours[label]}'></span>{_e(label)}</li>"
                    for label in labels)
    return f"<ul class='legend'>{items}</ul>"


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
    left, top, bottom, right = 50, 15, 40, 20
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
    return "".join(out) + "</svg>" + _legend(systems, colours)


# -- systems, commands, environment ---------------------------------------------------------------
def _systems_section(systems, by_label, colours, page_dir) -> str:
    """One row per system: the command that reproduces it, its records and its settings."""
    rows = []
    for system in systems:
        recs = by_label[system]
        rec = recs[0]
        settings = {"stage": rec.system.stage, "first_stage": _lean(rec.system.first_stage)}
        if rec.system.reranker:
            settings["reranker"] = _lean(rec.system.reranker)
        links = ", ".join(f"<a href='{_e(_href(r.path, page_dir))}'>{_e(r.dataset.label)}</a>" for r in recs if r.path)
        rows.append(f"<tr><th class='system' style='border-left:6px solid {colours[system]}'>{_e(system)}</th>"
                    f"<td><pre class='command'>{_e(_command(recs))}</pre></td><td>{links or '–'}</td>"
                    f"<td><details><summary>settings</summary><pre>{_e(json.dumps(settings, indent=1, default=str))}"
                    "</pre></details></td></tr>")
    return ("<h2 id='systems'>Systems: reproduction, records, settings</h2>\n<table class='systems'><thead><tr>"
            "<th>system</th><th>the command that reproduces its row</th><th>records</th><th>settings</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _lean(part: dict | None) -> dict:
    """A component's settings without run-time counters and per-call detail."""
    return {k: v for k, v in (part or {}).items() if k not in ("encoder", "note", "token_budget_used", "seconds")}


def _href(path: Path, page_dir: Path | None) -> str:
    path = Path(path).resolve()
    return os.path.relpath(path, page_dir).replace(os.sep, "/") if page_dir else path.as_uri()


def _command(recs: list[QualityRecord]) -> str:
    """The command that reruns this system's row: the experiment file at the recorded commit when it
    lies inside the checkout; else a note that it lies outside (and must travel with the records)."""
    rec = recs[0]
    inside, anywhere = rec.experiment.get("repository_file"), rec.experiment.get("file")
    git = rec.environment.git
    datasets = ",".join(dict.fromkeys(r.dataset.label for r in recs))
    lines = []
    if inside and git.get("sha"):
        lines.append(f"git checkout {git['sha']}" + ("   # the records were made with uncommitted changes"
                                                     if git.get("dirty") else ""))
    if inside:
        lines.append(f"bench run {_quote(inside)} --datasets {_quote(datasets)}")
    elif anywhere:
        lines += ["# the experiment file lies outside the checkout: keep it with the records",
                  f"bench run {_quote(anywhere)} --datasets {_quote(datasets)}"]
    else:
        lines.append("# the records do not name their experiment file")
    return "\n".join(lines)


def _quote(text: str) -> str:
    return text if all(c.isalnum() or c in "/._-,:@" for c in text) else "'" + text.replace("'", "'\\''") + "'"


def _environment_section(records) -> str:
    """Where the records were made, one column per distinct environment, one row per fact."""
    seen: dict[str, list] = {}
    for rec in records:
        env = rec.environment
        key = json.dumps([env.git, env.python, env.platform, env.device, env.packages], sort_keys=True, default=str)
        seen.setdefault(key, [env, 0])[1] += 1
    envs = list(seen.values())
    facts: dict[str, list[str]] = {}

    def put(name: str, i: int, value) -> None:
        facts.setdefault(name, [""] * len(envs))[i] = "" if value is None else str(value)

    for i, (env, _) in enumerate(envs):
        sha = env.git.get("sha")
        put("git commit", i, (sha[:12] if sha else "unknown") + (" (uncommitted changes)" if env.git.get("dirty") else ""))
        put("Python", i, env.python)
        put("platform", i, env.platform)
        device = env.device or {}
        put("device", i, device.get("device"))
        put("CPU", i, f"{device.get('cpu') or '?'}, {device.get('cpu_count') or '?'} cores")
        if device.get("torch_threads") is not None:
            put("torch threads", i, device.get("torch_threads"))
        if device.get("gpus"):
            put("GPUs", i, ", ".join(device["gpus"]) + (f" (CUDA {device['cuda']})" if device.get("cuda") else ""))
        for package, version in env.packages.items():
            put(package, i, version or "not installed")
    head = "".join(f"<th>{len(envs) > 1 and f'environment {i + 1} ' or ''}({n} records)</th>"
                   for i, (_, n) in enumerate(envs))
    rows = "".join(f"<tr><th>{_e(name)}</th>" + "".join(f"<td>{_e(v)}</td>" for v in values) + "</tr>"
                   for name, values in facts.items())
    return (f"<h2 id='environment'>Environment</h2><table class='env'><thead><tr><th></th>{head}</tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _id(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text)
