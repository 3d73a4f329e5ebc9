"""Quality tables from records: rows are datasets, columns are systems, one table per metric;
with more than `WIDE` systems the table turns, systems as rows.

Datasets that share a family (the part of the label before the first '/', e.g. `miracl` or
`synthetic`) get an average row when there are several, as MIRACL papers report an average over
languages. Systems keep the experiment's order (`ordered`). Made from records only, so
`bench report DIR` reproduces the table of any run; one experiment version per table
(`bench.report.versions`).
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
from .formats import latex, markdown, render
from .versions import latest_version, left_out_line, version_of, version_tags, versions_in, written

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
    in front (`bm25 » tiny`), so no table shows one pipeline in place of another. Records of several
    experiment versions (``--all-versions``) carry their version: ``label [name@digest]``."""
    labels = [system_label(rec) for rec in records]
    seen = Counter((rec.dataset.label, label) for rec, label in zip(records, labels))
    tags = version_tags(records) if len(versions_in(records)) > 1 else {}
    out = []
    for rec, label in zip(records, labels):
        system = rec.system
        if seen[(rec.dataset.label, label)] > 1 and system.stage == "rerank":
            label = display_label(qualified(system.label, system.first_stage_label), first_stage_only=False,
                                  untrained=system.untrained, synthetic=trained_on_synthetic(rec))
        out.append(f"{label} [{tags[version_of(rec)]}]" if tags else label)
    return out


def ordered(records: list[QualityRecord], versions: list | None = None) -> list[QualityRecord]:
    """The records in the experiment's order of systems (``experiment.systems``, which `bench run`
    records: first stages, then each reranker over them); records that do not state that order put
    first stages first, then systems in the order they were written. Datasets in the order they were
    first written (the experiment's). Several versions: in the order `versions` gives, by default
    that in which they first appear in `records`."""
    versions = {v: i for i, v in enumerate(versions or dict.fromkeys(map(version_of, records)))}
    first_written: dict[tuple, tuple] = {}  # (version, system) and (version, dataset) -> earliest record
    for rec in records:
        for key in ((version_of(rec), "system", rec.system.label), (version_of(rec), "dataset", rec.dataset.label)):
            first_written[key] = min(first_written.get(key, written(rec)), written(rec))

    def key(rec: QualityRecord):
        version = version_of(rec)
        stated = list((rec.experiment or {}).get("systems") or [])
        place = stated.index(rec.system.label) if rec.system.label in stated else len(stated)
        return (versions[version], place, rec.system.stage != "first_stage",
                first_written[(version, "system", rec.system.label)], first_written[(version, "dataset", rec.dataset.label)])

    return sorted(records, key=key)


WIDE = 5  # more systems than this: systems as rows


def long_frame(records: list[QualityRecord]) -> pd.DataFrame:
    """One row per dataset × system × metric, systems in the experiment's order (`ordered`)."""
    rows = []
    records = ordered(records)
    for rec, system in zip(records, system_labels(records)):
        ds = rec.dataset
        for metric, value in by_metric(rec.metrics).items():  # keyed on the canonical form, whatever a record spelled
            rows.append({"dataset": ds.label, "language": ds.language, "system": system,
                         "stage": rec.system.stage, "metric": str(metric), "value": value, "queries": ds.n_queries,
                         "rerank_pairs_per_s": rec.timings.rerank_pairs_per_s})
    return lazy.pd.DataFrame(rows, columns=["dataset", "language", "system", "stage", "metric", "value", "queries",
                                            "rerank_pairs_per_s"])


def metric_table(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Datasets × systems for one metric, systems in the frame's order, with family averages
    appended; with more than `WIDE` systems, turned: systems × datasets."""
    sub = frame[frame.metric == metric]
    systems = list(dict.fromkeys(sub.system))
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
    table = table.loc[rows]
    table.columns.name = None
    if len(systems) > WIDE:
        table = table.T
        table.index.name = "system"
    return table


def quality_report(records: list[QualityRecord], fmt: str = "table") -> tuple[str, pd.DataFrame]:
    """(text in `fmt` — Markdown tables with their notes, LaTeX, JSON or CSV —, long frame) for a set
    of quality records."""
    frame = long_frame(records)
    if frame.empty:
        return "No quality records.\n", frame
    twice = frame[frame.duplicated(["dataset", "system", "metric"])]
    if not twice.empty:
        row = twice.iloc[0]
        paths = [str(r.path) for r, label in zip(ordered(records), system_labels(ordered(records)))
                 if label == row.system and r.dataset.label == row.dataset]
        raise BenchError(f"system {row.system!r} appears more than once for dataset {row.dataset!r} "
                         f"({', '.join(paths)}): report one run folder at a time")
    if fmt in ("json", "csv"):
        return render(frame, fmt, index=False), frame
    metrics = list(dict.fromkeys(frame.metric))
    notes = _notes(records, frame)
    if fmt == "latex":
        tables = [f"% {metric}\n" + latex(metric_table(frame, metric), caption=metric) for metric in metrics]
        return "\n".join(tables) + "".join(f"% {n}\n" for n in notes), frame
    parts = [f"### {metric}\n\n" + markdown(metric_table(frame, metric)) + "\n" for metric in metrics]
    return "\n".join(parts) + ("\n" + "\n".join(f"- {n}" for n in notes) + "\n" if notes else ""), frame


def _notes(records: list[QualityRecord], frame: pd.DataFrame) -> list[str]:
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
    speeds = frame.dropna(subset=["rerank_pairs_per_s"]).groupby("system", sort=False).rerank_pairs_per_s.median()
    if not speeds.empty:
        notes.append("Rerank speed (median pairs/s over datasets, this machine): " +
                     ", ".join(f"{s} {v:,.0f}" for s, v in speeds.items()) + ".")
    return notes


def select_version(records: list[QualityRecord], folder: str | Path | None, *, all_versions: bool = False
                   ) -> tuple[list[QualityRecord], str]:
    """(the records a table shows, a line saying which version that is and what was left out; empty
    when the folder holds one version): the current version (`latest_version`), or every one."""
    shown, others = (records, []) if all_versions else latest_version(records, folder)
    versions = versions_in(shown)  # newest first
    shown = ordered(shown, versions)
    if not others and len(versions) == 1:
        return shown, ""
    names = ", ".join(f"{v.name} (version {v.short()})" for v in versions)
    head = f"Experiment{'s' if len(versions) > 1 else ''}: {names}, {len(shown)} records"
    if others:
        head += f"; left out: {left_out_line(others, versions[0])} (--all-versions shows them)"
    return shown, head


def read_folder(folder: str | Path, *, all_versions: bool = False, skipped: list[str] | None = None
                ) -> tuple[list[QualityRecord], str]:
    """(the quality records in `folder` a table shows, the line naming what was left out): by default
    the current experiment version's only (`select_version`). `skipped`: see `find_records`."""
    records = find_records(folder, kind="quality", skipped=skipped)
    if not records:
        raise BenchError(f"{folder}: no quality records found (expected <out>/records/*.json written by `bench run`)")
    return select_version(records, folder, all_versions=all_versions)


def with_head(text: str, head: str, fmt: str) -> str:
    """The text of a report with its version line first (Markdown and LaTeX; JSON and CSV have no room)."""
    if head and fmt == "table":
        return f"{head}\n\n{text}"
    if head and fmt == "latex":
        return f"% {head}\n{text}"
    return text


def report_folder(folder: str | Path, *, all_versions: bool = False, skipped: list[str] | None = None,
                  fmt: str = "table") -> tuple[str, pd.DataFrame]:
    """(text in `fmt`, long frame) of the quality records in `folder` (`read_folder`), headed by the
    line naming what was left out when there is one."""
    shown, head = read_folder(folder, all_versions=all_versions, skipped=skipped)
    text, frame = quality_report(shown, fmt)
    return with_head(text, head, fmt), frame
