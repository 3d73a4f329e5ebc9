"""The registry of expected scores: one entry per published number, and the check of a measurement.

People reproduce a paper's table before they trust a new number, and each of them rediscovers the
conventions (full-corpus search, ``trec_eval -c -M 100``, max_length...). An entry writes them down
next to the number: the value (0-1 scale), the metric and its trec_eval conventions, the dataset and
split, the models with revisions, the settings, where the number was published (URL and section)
and an absolute tolerance. `check` compares an entry with the quality records of a run and says OK
or FAIL; a FAIL lists every setting of the record that differs from the entry's.

Entries live in TOML files in ``bench/registry_entries/`` (shipped with the package). A file holds
``[[entries]]`` tables and may hold one ``[defaults]`` table whose fields every entry of the file
starts from (tables merge field by field; the entry's own fields win)::

    [defaults]
    stage = "first_stage"
    system = "bm25-pyserini"
    experiment = "experiments/miracl-bm25-runfile.toml"
    [defaults.first_stage]
    kind = "run"
    depth = 100

    [[entries]]
    name = "pyserini-bm25/miracl-yo-dev/nDCG@10"
    metric = "nDCG@10"
    value = 0.4059
    ...

Only the settings an entry states are compared: leave a field out (e.g. a reranker's ``dtype``)
and any value in the record is accepted.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config import Dtype, format_validation_error, load_experiment, read_toml
from .data import expand
from .errors import BenchError
from .metrics import MetricName, by_metric, parse_metric
from .records import QualityRecord

#: The registry shipped with the package.
REGISTRY_DIR = Path(__file__).resolve().parent / "registry_entries"
#: Experiment paths in entries are relative to the project checkout (the folder holding `bench/`).
PROJECT_ROOT = Path(__file__).resolve().parent.parent

NAME_CHARS = "A-Za-z0-9@._/+-"


class Spec(BaseModel):
    """Unknown fields are errors; values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetExpect(Spec):
    """The collection a number was measured on, and how the record that checks it is labelled."""

    label: str = Field(description="dataset label of the records this entry reads (ir_datasets id, or the experiment's name)")
    id: str | None = Field(None, description="ir_datasets id of what the source evaluated, e.g. miracl/yo/dev")
    path: str | None = Field(None, description="BEIR folder, relative to the project checkout")
    split: str | None = None
    language: str | None = None
    n_queries: int | None = Field(None, gt=0, description="judged queries the source averaged over")
    n_docs: int | None = Field(None, gt=0, description="size of the full corpus the source searched")


class FirstStageExpect(Spec):
    kind: Literal["dense", "bge-m3", "bm25", "run", "scoreddocs", "splade", "fusion"]
    mode: str | None = Field(None, description="kind = 'bge-m3': dense, sparse, multivec, dense+sparse or all")
    quantize: float | None = Field(None, gt=0, description="kind = 'splade': documents' integer impact factor (Pyserini 100)")
    query_quantize: float | None = Field(None, gt=0, description="kind = 'splade': queries' factor")
    first_stages: list[str] | None = Field(None, description="kind = 'fusion': the members fused")
    method: str | None = Field(None, description="kind = 'fusion': rrf, combsum, combmnz or wsum")
    remove_query_id: bool = Field(False, description="the protocol: whether passages whose id equals the query id "
                                                     "were removed from the candidates (pyserini --remove-query)")
    model: str | None = None
    revision: str | None = None
    depth: int = Field(gt=0, description="candidates per query")
    max_length: int | None = Field(None, gt=0)
    query_instruction: str | None = None


class ListwiseExpect(Spec):
    """A listwise reranker's protocol (``RerankerSpec.listwise``): only the fields stated are compared."""

    window: int | None = Field(None, gt=1)
    stride: int | None = Field(None, gt=0)
    passes: int | None = Field(None, gt=0)
    variable_passages: bool | None = None
    context_size: int | None = Field(None, gt=0)
    prompt_template: str | None = None
    max_passage_words: int | None = Field(None, gt=0)


class RerankerExpect(Spec):
    model: str
    revision: str | None = None
    head: str | None = Field(None, description="the scoring head / family (listwise, first, monot5, duot5, ...)")
    top_k: int = Field(gt=0)
    max_length: int | None = Field(None, gt=0, description="listwise heads state listwise.context_size instead")
    query_max_length: int | None = Field(None, gt=0)
    dtype: Dtype | None = None
    listwise: ListwiseExpect | None = None
    duo_aggregation: Literal["sym-sum", "rank_llm"] | None = Field(
        None, description="duot5: how the pairs were aggregated (rank_llm's 2CR rows: each pair once)")


class ConventionsExpect(Spec):
    depth: int | None = Field(None, gt=0, description="trec_eval -M; leave out for the whole ranking")
    rel_level: int = Field(1, ge=1, description="trec_eval -l")
    judged_only: bool = Field(False, description="trec_eval -J")
    trec_eval: str = Field(description="the evaluation command the source states, e.g. 'trec_eval -c -M 100 -m ndcg_cut.10'")


class Source(Spec):
    """Where the number comes from. Published numbers cite a URL and a section; numbers this project
    measured itself say the command, the machine and the date."""

    kind: Literal["paper", "model card", "readme", "reproduction page", "measured"]
    title: str
    section: str | None = None
    url: str | None = None
    published: str = Field(description="the figure exactly as the source prints it, with its unit")
    note: str | None = None
    command: str | None = None
    machine: str | None = None
    date: str | None = None

    @model_validator(mode="after")
    def _cited(self):
        if self.kind == "measured":
            missing = [f for f in ("command", "machine", "date") if not getattr(self, f)]
            if missing:
                raise ValueError(f"a measured value needs {', '.join(missing)} (how, where and when it was measured)")
        else:
            if not self.url or not self.url.startswith(("https://", "http://")):
                raise ValueError(f"a {self.kind} source needs 'url' (https://...) where the number is printed")
            if not self.section:
                raise ValueError(f"a {self.kind} source needs 'section': where on that page the number stands")
        return self


class Entry(Spec):
    """One expected score."""

    name: str = Field(pattern=rf"^[{NAME_CHARS}]+$", description="unique; used on the command line")
    description: str
    metric: MetricName = Field(description="as the experiment's [evaluation].metrics writes it: nDCG@10, Recall@100, MRR@10")
    value: float = Field(description="expected score on the 0-1 scale (a published 64.03 is 0.6403)")
    tolerance: float = Field(description="absolute, on the 0-1 scale: |measured - value| <= tolerance is OK")
    tolerance_reason: str = Field(description="why this tolerance (rounding of the source, known noise...)")
    stage: Literal["first_stage", "rerank"]
    system: str = Field(description="system label of the records: the first stage's name, or the reranker's label")
    first_stage_label: str | None = Field(None, description="for rerank entries: the first stage the reranker read")
    datasets: list[DatasetExpect] = Field(min_length=1, description="one, or several whose mean is the value")
    first_stage: FirstStageExpect
    reranker: RerankerExpect | None = None
    conventions: ConventionsExpect
    experiment: str = Field(description="experiment file that produces the records, relative to the project checkout")
    source: Source
    blocked: str | None = Field(None, description="why the harness cannot produce this number (e.g. a scoring head "
                                                  "it does not have): the entry is kept for the record, never run")

    @field_validator("value")
    @classmethod
    def _unit_scale(cls, v):
        if not math.isfinite(v) or not 0.0 <= v <= 1.0:
            raise ValueError(f"{v} is not on the 0-1 scale; write a published percentage like 67.9 as 0.679 "
                             "and keep the printed figure in source.published")
        return v

    @field_validator("tolerance")
    @classmethod
    def _tolerance(cls, v):
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"tolerance must be > 0 (absolute, 0-1 scale), got {v}")
        if v >= 0.1:
            raise ValueError(f"tolerance {v} is 10 points or more on the 0-1 scale: that checks nothing; "
                             "write it on the 0-1 scale (half a point is 0.005)")
        return v

    @model_validator(mode="after")
    def _stage(self):
        if self.stage == "rerank" and self.reranker is None:
            raise ValueError("stage = 'rerank' needs a [reranker] table (model, top_k, max_length)")
        if self.stage == "first_stage" and self.reranker is not None:
            raise ValueError("stage = 'first_stage' takes no [reranker] table")
        labels = [d.label for d in self.datasets]
        if len(set(labels)) != len(labels):
            raise ValueError(f"datasets repeat a label: {labels}")
        named = _metric_named(self.name.rsplit("/", 1)[-1])
        if named is not None and named != parse_metric(self.metric):
            raise ValueError(f"the name ends with {self.name.rsplit('/', 1)[-1]!r} but metric is {self.metric!r}: "
                             "make the two agree (the name is what `bench reproduce` lists)")
        return self

    @property
    def aggregate(self) -> bool:
        return len(self.datasets) > 1

    def experiment_path(self) -> Path:
        path = Path(self.experiment)
        return path if path.is_absolute() else PROJECT_ROOT / path


def _metric_named(text: str):
    """The metric `text` spells, or None when it spells none."""
    try:
        return parse_metric(text)
    except BenchError:
        return None


def production_problems(entry: Entry, experiment) -> list[str]:
    """Why `bench run <entry.experiment>` cannot make the record that `check` reads (empty: it can):
    the metric among its evaluation metrics, each of the entry's datasets among its datasets, the
    entry's system (and first stage) among its pipelines. A blocked entry is never run: not checked."""
    if entry.blocked:
        return []
    out = []
    metrics = [m for m in map(_metric_named, experiment.evaluation.metrics) if m is not None]
    if parse_metric(entry.metric) not in metrics:
        out.append(f"it evaluates {', '.join(experiment.evaluation.metrics)}, not {entry.metric}")
    labels = [s.label for spec in experiment.datasets for s in expand(spec)]
    missing = [d.label for d in entry.datasets if d.label not in labels]
    if missing:
        out.append(f"it has no dataset labelled {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''} "
                   f"(its datasets: {', '.join(labels[:6])}{', ...' if len(labels) > 6 else ''})")
    if entry.stage == "first_stage":
        systems = [experiment.system_label(name) for name in experiment.first_stages]
    else:
        systems = [experiment.system_label(name, r) for name in experiment.first_stages for r in experiment.rerankers]
    if entry.system not in systems:
        out.append(f"it has no {entry.stage.replace('_', ' ')} system {entry.system!r} (its systems: "
                   f"{', '.join(systems) or 'none'})")
    if entry.first_stage_label is not None and entry.first_stage_label not in map(
            experiment.first_stage_label, experiment.first_stages):
        out.append(f"it has no first stage {entry.first_stage_label!r}")
    return out


# -- loading --------------------------------------------------------------------------------------
def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_registry_file(path: str | Path) -> list[Entry]:
    """Entries of one registry TOML; every problem is a BenchError naming the file and the entry."""
    path = Path(path)
    raw = read_toml(path, "registry file")
    unknown = sorted(set(raw) - {"defaults", "entries"})
    if unknown:
        raise BenchError(f"{path}: unknown top-level field(s) {unknown}; a registry file holds [defaults] and [[entries]]")
    defaults = raw.get("defaults", {})
    items = raw.get("entries")
    if not isinstance(defaults, dict):
        raise BenchError(f"{path}: [defaults] must be a table")
    if not isinstance(items, list) or not items:
        raise BenchError(f"{path}: no [[entries]]; each entry is one expected score")
    entries, problems = [], []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"{path}: entries[{i}]: must be a table")
            continue
        where = f"{path} entry {item.get('name', f'#{i + 1}')!r}"
        try:
            entries.append(Entry.model_validate(_merge(defaults, item)))
        except ValidationError as exc:
            text = format_validation_error(exc, where).replace("Value error, ", "")
            problems.append(text.replace("see bench/config.py for the fields", "see bench/registry.py for the fields"))
    experiments: dict[Path, Any] = {}  # each experiment file read once
    for e in entries:  # the MISSING hint names the experiment: it must produce the number
        file = e.experiment_path()
        if file not in experiments:
            try:
                experiments[file] = load_experiment(file)
            except BenchError as exc:
                experiments[file] = exc
        found = experiments[file]
        reasons = [f"it does not load ({found})"] if isinstance(found, BenchError) else production_problems(e, found)
        if reasons and not e.blocked:
            problems.append(f"{path} entry {e.name!r}: experiment = {e.experiment!r} cannot produce this number: "
                            + "; ".join(reasons))
    if problems:
        raise BenchError("\n".join(problems))
    return entries


def load_registry(paths: list[str | Path] | None = None) -> list[Entry]:
    """All entries of the given files (default: every ``*.toml`` in the shipped registry); names must be unique."""
    files = [Path(p) for p in paths] if paths else sorted(REGISTRY_DIR.glob("*.toml"))
    if not files:
        raise BenchError(f"{REGISTRY_DIR}: no registry files (*.toml)")
    entries: list[Entry] = []
    seen: dict[str, Path] = {}
    for file in files:
        for e in load_registry_file(file):
            if e.name in seen:
                raise BenchError(f"{file}: entry {e.name!r} is already defined in {seen[e.name]}; names must be unique")
            seen[e.name] = file
            entries.append(e)
    return entries


def select(entries: list[Entry], patterns: list[str]) -> list[Entry]:
    """Entries whose name matches any pattern (exact or shell-style: 'pyserini-bm25/*'); none given: all."""
    if not patterns:
        return list(entries)
    chosen, unmatched = [], []
    for pattern in patterns:
        hits = [e for e in entries if e.name == pattern or fnmatch.fnmatchcase(e.name, pattern)]
        if not hits:
            unmatched.append(pattern)
        chosen += [e for e in hits if e not in chosen]
    if unmatched:
        names = "\n  ".join(e.name for e in entries)
        raise BenchError(f"no registry entry matches {', '.join(map(repr, unmatched))}; the entries are:\n  {names}")
    return chosen


def protocol(entry: Entry) -> str:
    """The entry's candidate protocol in words, for listings: which first stage, how deep, and
    whether passages whose id equals the query id were removed."""
    fs = entry.first_stage
    kind = f"{fs.kind}:{fs.mode}" if fs.mode else fs.kind
    removal = "remove_query_id=true" if fs.remove_query_id else "remove_query_id=false"
    impacts = f", quantize={fs.quantize:g}" if fs.quantize else ""
    text = f"{kind} top-{fs.depth}{impacts}, {removal}"
    r = entry.reranker
    if r is not None and r.listwise is not None:
        lw = r.listwise.model_dump(exclude_none=True)
        text += f"; {r.head or 'listwise'} " + ", ".join(f"{k}={v}" for k, v in lw.items())
    elif r is not None and r.head:
        text += f"; {r.head} top-{r.top_k}"
    return text + (" [blocked]" if entry.blocked else "")


# -- comparing a record with an entry -------------------------------------------------------------
def _model_ref(value: Any) -> str | None:
    return value.get("ref") if isinstance(value, dict) else value


def _model_revision(section: dict) -> str | None:
    model = section.get("model")
    if isinstance(model, dict) and model.get("revision"):
        return model["revision"]
    return section.get("revision")


def _differ(out: list[str], what: str, expected: Any, actual: Any) -> None:
    if expected != actual:
        out.append(f"{what}: expected {expected!r}, record has {actual!r}")


def _section_differences(prefix: str, expect: Spec, section: dict) -> list[str]:
    """The fields `expect` states that the record's first-stage or reranker `section` does not share."""
    out: list[str] = []
    for f in sorted(expect.model_fields_set):
        if isinstance(getattr(expect, f), Spec):  # a stated sub-table (listwise): field by field
            sub = section.get(f)
            out += _section_differences(f"{prefix}.{f}", getattr(expect, f), sub if isinstance(sub, dict) else {})
            continue
        if f == "model":
            actual = _model_ref(section.get("model"))
        elif f == "revision":
            actual = _model_revision(section)
        elif f == "remove_query_id":  # records made before the setting existed did not remove
            actual = section.get(f, False)
        else:
            actual = section.get(f)
        _differ(out, f"{prefix}.{f}", getattr(expect, f), actual)
    if isinstance(section.get("model"), dict) and section["model"].get("untrained"):
        out.append(f"{prefix}.model: the record's model has random (untrained) weights")
    return out


def setting_differences(entry: Entry, record: QualityRecord, dataset: DatasetExpect) -> list[str]:
    """Every setting the entry states that the record does not share, in words."""
    out: list[str] = []
    ds = record.dataset
    for f in sorted(dataset.model_fields_set & {"id", "split", "language"}):
        if ds.has(f):
            _differ(out, f"dataset.{f}", getattr(dataset, f), getattr(ds, f))
    if dataset.n_docs is not None and ds.n_docs is not None and ds.n_docs != dataset.n_docs:
        out.append(f"dataset.n_docs: the source searched the full corpus of {dataset.n_docs:,} documents, "
                   f"the record searched {ds.n_docs:,}")
    if dataset.n_queries is not None and ds.n_queries is not None and ds.n_queries != dataset.n_queries:
        out.append(f"dataset.n_queries: the source averaged over {dataset.n_queries} queries, the record over {ds.n_queries}")
    if ds.max_queries:
        out.append(f"dataset.max_queries: the record kept only the first {ds.max_queries} queries")

    system = record.system
    fs = system.first_stage
    # The encoder's own account (query instruction, effective max_length) wins over the requested spec.
    used = {k: v for k, v in (fs.get("encoder") or {}).items() if k in ("query_instruction", "max_length")}
    out += _section_differences("first_stage", entry.first_stage, {**fs, **used})
    if entry.reranker is not None:
        out += _section_differences("reranker", entry.reranker, system.reranker or {})
        if entry.first_stage_label is not None:
            _differ(out, "first_stage_label", entry.first_stage_label, system.first_stage_label)

    conv = record.evaluation.conventions
    for f, flag in (("depth", "-M"), ("rel_level", "-l"), ("judged_only", "-J")):
        if conv.has(f) or f in entry.conventions.model_fields_set:
            _differ(out, f"conventions.{f} (trec_eval {flag})", getattr(entry.conventions, f), getattr(conv, f))
    return out


def matching_records(entry: Entry, dataset: DatasetExpect, records: list[QualityRecord]) -> list[QualityRecord]:
    """Quality records of this entry's system on this dataset that hold the entry's metric."""
    return [rec for rec in records
            if rec.dataset.label == dataset.label and rec.system.label == entry.system
            and rec.system.stage == entry.stage and parse_metric(entry.metric) in by_metric(rec.metrics)]


def best_record(entry: Entry, dataset: DatasetExpect, records: list[QualityRecord]) -> QualityRecord | None:
    """The record to judge by: one whose settings agree with the entry if any, newest first."""
    found = matching_records(entry, dataset, records)
    if not found:
        return None
    newest = sorted(found, key=lambda r: r.environment.created_utc, reverse=True)
    return min(newest, key=lambda r: len(setting_differences(entry, r, dataset)))


@dataclass
class Check:
    """The verdict on one entry: OK / FAIL by the tolerance, or MISSING when no record measures it."""

    entry: Entry
    status: Literal["OK", "FAIL", "MISSING"]
    measured: float | None = None
    records: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    diagnostics: dict[str, float] = field(default_factory=dict)

    @property
    def delta(self) -> float | None:
        return None if self.measured is None else self.measured - self.entry.value

    def as_dict(self) -> dict:
        e = self.entry
        return {"name": e.name, "metric": e.metric, "expected": e.value, "tolerance": e.tolerance,
                "measured": self.measured, "delta": self.delta, "status": self.status, "reasons": self.reasons,
                "records": self.records, "diagnostics": self.diagnostics, "source": e.source.model_dump(),
                "experiment": e.experiment}


DIAGNOSTICS = ("judged@10", "truncated_pairs_share", "truncated_queries_share", "mean_tokens_per_pair")


def check(entry: Entry, records: list[QualityRecord]) -> Check:
    """Judge one entry against a pool of records (from any number of runs)."""
    values, paths, reasons, missing = [], [], [], []
    diag: dict[str, list[float]] = {}
    if entry.blocked:
        return Check(entry, "MISSING", reasons=[f"blocked: {entry.blocked}"])
    for dataset in entry.datasets:
        rec = best_record(entry, dataset, records)
        if rec is None:
            missing.append(dataset.label)
            continue
        values.append(float(by_metric(rec.metrics)[parse_metric(entry.metric)]))
        paths.append(str(rec.path) if rec.path else "(in memory)")
        prefix = f"{dataset.label}: " if entry.aggregate else ""
        reasons += [prefix + r for r in setting_differences(entry, rec, dataset)]
        for k in DIAGNOSTICS:
            v = rec.diagnostics.get(k)
            if isinstance(v, (int, float)):
                diag.setdefault(k, []).append(float(v))
    if missing:
        where = ", ".join(missing) if len(missing) <= 3 else f"{len(missing)} of its {len(entry.datasets)} datasets " \
            f"({', '.join(missing[:3])}, ...)"
        what = (f"no record of system {entry.system!r} ({entry.stage}) with {entry.metric} on {where}; "
                f"produce it with: bench run {entry.experiment}")
        return Check(entry, "MISSING", records=paths, reasons=[what])
    measured = sum(values) / len(values)
    diagnostics = {k: sum(v) / len(v) for k, v in diag.items()}
    # Round away float noise so a value exactly at the tolerance counts as inside it.
    ok = round(abs(measured - entry.value), 9) <= entry.tolerance
    if not ok and not reasons:
        reasons = ["no stated setting differs from the record's; look at what the entry does not pin "
                   "(model revision, dtype, library versions, document text)"]
    return Check(entry, "OK" if ok else "FAIL", measured, paths, reasons, diagnostics)


# -- the table --------------------------------------------------------------------------------------
def _fmt(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def format_checks(checks: list[Check]) -> str:
    """A markdown table (expected, measured, delta, tolerance, status) and, under it, each entry's
    record paths, differing settings and diagnostics."""
    head = "| entry | metric | expected | measured | delta | tolerance | status |"
    lines = [head, "|---|---|---:|---:|---:|---:|---|"]
    for c in checks:
        e = c.entry
        lines.append(f"| {e.name} | {e.metric} | {_fmt(e.value)} | {_fmt(c.measured)} | {_fmt(c.delta, True)} "
                     f"| ±{e.tolerance:g} | {c.status} |")
    lines.append("")
    for c in checks:
        e = c.entry
        lines.append(f"{c.status} {e.name}: expected {e.value:.4f} from {e.source.title}"
                     + (f", {e.source.section}" if e.source.section else "")
                     + (f" ({e.source.url})" if e.source.url else "") + f"; published as {e.source.published}")
        if e.source.note:
            lines.append(f"    note: {e.source.note}")
        for path in c.records:
            lines.append(f"    record: {path}")
        if c.diagnostics:
            lines.append("    diagnostics: " + ", ".join(f"{k} {v:.3g}" for k, v in c.diagnostics.items()))
        label = "why" if c.status == "FAIL" else ("missing" if c.status == "MISSING" else "settings differ")
        for reason in c.reasons:
            lines.append(f"    {label}: {reason}")
    counts = {s: sum(c.status == s for c in checks) for s in ("OK", "FAIL", "MISSING")}
    lines.append("")
    lines.append(f"{counts['OK']} OK, {counts['FAIL']} FAIL, {counts['MISSING']} MISSING "
                 "(tolerances are absolute, on the 0-1 scale)")
    return "\n".join(lines)
