"""Quality tables from records: rows are datasets, columns are systems, one table per metric.

Datasets that share a family (the part of the label before the first '/', e.g. `miracl` or
`synthetic`) get an average row when there are several, as MIRACL papers report an average over
languages. Made from records only, so `bench report DIR` reproduces the table of any run.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from .. import lazy
from ..errors import BenchError
from ..metrics import by_metric
from ..records import QualityRecord, find_records
from ..systems import SYNTHETIC_MARK, display_label, qualified

if TYPE_CHECKING:  # annotations only; pandas itself is imported on first use, through lazy
    import pandas as pd


def system_label(rec: QualityRecord) -> str:
    """A system's column name (`bench.systems`): first stages say so, untrained models are marked."""
    system = rec.system
    return display_label(system.label, first_stage_only=system.stage == "first_stage", untrained=system.untrained,
                         synthetic=trained_on_synthetic(rec))


def trained_on_synthetic(rec: QualityRecord) -> bool:
    """Whether the system's reranker is one the project trained on its synthetic collection."""
    model = (rec.system.reranker or {}).get("model")
    return isinstance(model, dict) and model.get("trained_on") == "synthetic data"


def system_labels(records: list[QualityRecord]) -> list[str]:
    """Each record's `system_label`, made distinct per dataset: records written before labels named
    their pipeline call two reranked systems by the reranker alone; those get their first stage
    in front (`bm25 » tiny`), so no table shows one pipeline in place of another."""
    labels = [system_label(rec) for rec in records]
    seen = Counter((rec.dataset.label, label) for rec, label in zip(records, labels))
    out = []
    for rec, label in zip(records, labels):
        system = rec.system
        if seen[(rec.dataset.label, label)] > 1 and system.stage == "rerank":
            label = display_label(qualified(system.label, system.first_stage_label), first_stage_only=False,
                                  untrained=system.untrained, synthetic=trained_on_synthetic(rec))
        out.append(label)
    return out


def experiment_name(rec: QualityRecord) -> str:
    return str(rec.experiment.get("name") or "(unnamed)")


def latest_experiment(records: list[QualityRecord]) -> tuple[list[QualityRecord], list[QualityRecord]]:
    """(records of the experiment that wrote the newest record, the records of other experiments):
    an output folder reused by another experiment keeps the earlier one's records."""
    if not records:
        return [], []
    def written(rec: QualityRecord) -> tuple:  # created_utc has whole seconds: the file's mtime breaks ties
        return rec.environment.created_utc, rec.path.stat().st_mtime_ns if rec.path and rec.path.exists() else 0

    latest = experiment_name(max(records, key=written))
    return ([r for r in records if experiment_name(r) == latest], [r for r in records if experiment_name(r) != latest])


def long_frame(records: list[QualityRecord]) -> pd.DataFrame:
    """One row per dataset × system × metric; with records of several experiments, each system's name
    says its experiment (``label [experiment]``)."""
    rows = []
    several = len({experiment_name(r) for r in records}) > 1
    for rec, label in zip(records, system_labels(records)):
        ds = rec.dataset
        system = f"{label} [{experiment_name(rec)}]" if several else label
        for metric, value in by_metric(rec.metrics).items():  # keyed on the canonical form, whatever a record spelled
            rows.append({"dataset": ds.label, "language": ds.language, "system": system,
                         "stage": rec.system.stage, "metric": str(metric), "value": value, "queries": ds.n_queries,
                         "rerank_pairs_per_s": rec.timings.rerank_pairs_per_s})
    return lazy.pd.DataFrame(rows, columns=["dataset", "language", "system", "stage", "metric", "value", "queries",
                                            "rerank_pairs_per_s"])


def metric_table(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Datasets × systems for one metric, first stages first, with family averages appended."""
    sub = frame[frame.metric == metric]
    systems = list(dict.fromkeys(list(sub[sub.stage == "first_stage"].system) + list(sub[sub.stage == "rerank"].system)))
    datasets = list(dict.fromkeys(sub.dataset))
    table = sub.pivot_table(index="dataset", columns="system", values="value", aggfunc="first")
    table = table.reindex(index=datasets, columns=systems)
    families: dict[str, list[str]] = {}
    for ds in datasets:
        families.setdefault(ds.split("/")[0], []).append(ds)
    rows = []
    for fam, members in families.items():
        rows.extend(members)
        if len(members) > 1:
            table.loc[f"{fam} average ({len(members)})"] = table.loc[members].mean(axis=0, skipna=False)
            rows.append(f"{fam} average ({len(members)})")
    return table.loc[rows]


def quality_report(records: list[QualityRecord]) -> tuple[str, pd.DataFrame]:
    """(Markdown text, long CSV frame) for a set of quality records."""
    frame = long_frame(records)
    if frame.empty:
        return "No quality records.\n", frame
    twice = frame[frame.duplicated(["dataset", "system", "metric"])]
    if not twice.empty:
        row = twice.iloc[0]
        paths = [str(r.path) for r, label in zip(records, system_labels(records))
                 if label == row.system and r.dataset.label == row.dataset]
        raise BenchError(f"system {row.system!r} appears more than once for dataset {row.dataset!r} "
                         f"({', '.join(paths)}): report one run folder at a time")
    metrics = list(dict.fromkeys(frame.metric))
    parts = []
    for metric in metrics:
        table = metric_table(frame, metric)
        parts.append(f"### {metric}\n\n" + table.to_markdown(floatfmt=".4f") + "\n")
    notes = []
    if frame.system.str.contains(SYNTHETIC_MARK, regex=False).any():
        notes.append("Systems marked (trained on synthetic data) rerank with a small model the project trains on its "
                     "synthetic collection's training split (other entities and questions than the ones evaluated): "
                     "a demonstration, not a model for real text.")
    if frame.system.str.contains("(untrained)", regex=False).any():
        notes.append("Systems marked (untrained) have random weights: they exercise the code path, their scores "
                     "say nothing about quality.")
    conv = records[0].evaluation.conventions
    if conv.trec_eval_flags is not None:
        notes.append(f"Evaluation: trec_eval {conv.trec_eval_flags} conventions "
                     f"({conv.ties or 'ties as trec_eval'}); see docs/evaluation.md, 'Evaluation conventions'.")
    speeds = frame.dropna(subset=["rerank_pairs_per_s"]).groupby("system").rerank_pairs_per_s.median()
    if not speeds.empty:
        notes.append("Rerank speed (median pairs/s over datasets, this machine): " +
                     ", ".join(f"{s} {v:,.0f}" for s, v in speeds.items()) + ".")
    return "\n".join(parts) + ("\n" + "\n".join(f"- {n}" for n in notes) + "\n" if notes else ""), frame


def report_folder(folder: str | Path, *, all_experiments: bool = False,
                  skipped: list[str] | None = None) -> tuple[str, pd.DataFrame]:
    """(Markdown, long frame) of the quality records in `folder`: by default the latest experiment's
    only. When the folder holds records of several experiments, a first line names the experiments
    shown and those left out (with all of them, each system's name says its experiment).
    `skipped`: see `find_records`."""
    records = find_records(folder, kind="quality", skipped=skipped)
    if not records:
        raise BenchError(f"{folder}: no quality records found (expected <out>/records/*.json written by `bench run`)")
    shown, others = (records, []) if all_experiments else latest_experiment(records)
    names = list(dict.fromkeys(experiment_name(r) for r in shown))
    text, frame = quality_report(shown)
    if not others and len(names) == 1:  # one experiment: the table `bench run` wrote
        return text, frame
    head = f"Experiment{'s' if len(names) > 1 else ''}: {', '.join(names)} ({len(shown)} records)"
    if others:
        left = ", ".join(dict.fromkeys(experiment_name(r) for r in others))
        head += f"; {len(others)} records of other experiments ({left}) left out: --all-experiments shows them"
    return f"{head}\n\n{text}", frame
