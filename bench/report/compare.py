"""Comparing systems on the same queries: the per-query score table, the comparison built from
it, and that comparison's tables and plots.

Everything starts from one long table of per-query scores (dataset × system × metric × query), so a
comparison can be built from run files plus qrels (`scores_from_runs`) or from the quality records
the pipeline writes (`scores_from_records`) alike. Metrics are named by their canonical form
(`bench.metrics`), whatever spelling asked for them or wrote the records.

`compare` computes, for each dataset and metric, the paired t-test, seeded randomization test and
bootstrap interval (`bench.stats`) of each system against a baseline (k − 1 tests: the table a
reranking paper prints) or of every pair of systems, then Holm's correction over every comparison
in the same table (all datasets of one metric), for the test that sets the marks. `SIGNIFICANCE`
is the one set of settings: `bench compare` and the results page both call `compare_records` with
it, so they print the same letters. The `Comparison` it returns only renders: Markdown, LaTeX,
CSV, JSON, a PNG, a record.
"""

from __future__ import annotations

import math
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .. import lazy
from ..errors import BenchError
from ..evaluate import Conventions, evaluate
from ..metrics import Metric, by_metric, parse_metric
from .formats import json_text, latex, latex_escape, markdown, rows
from .plots import new_figure, save_png
from ..records import ComparisonRecord, QualityRecord, find_records, make_record, read_record
from .tables import ordered, select_version, system_labels
from ..runs import read_qrels, read_run
from ..stats import bootstrap_ci, holm, paired_randomization_test, paired_t_test

if TYPE_CHECKING:  # annotations only; pandas itself is imported on first use, through lazy
    import pandas as pd

SCORE_COLUMNS = ["dataset", "language", "system", "metric", "query", "value"]
TESTS = {"randomization": "paired randomization test", "t-test": "paired t-test"}


# ----------------------------------------------------------------------------------- score tables
def scores_from_evaluation(evaluation, dataset: str, system: str, language: str | None = None) -> pd.DataFrame:
    """Long per-query table of one `bench.evaluate.Evaluation`."""
    return _long_rows(evaluation.per_query, dataset, system, language)


def _long_rows(per_query: dict[str, dict[str, float]], dataset: str, system: str, language: str | None) -> pd.DataFrame:
    rows = [(dataset, language, system, metric, qid, float(v)) for metric, values in per_query.items()
            for qid, v in values.items()]
    return lazy.pd.DataFrame(rows, columns=SCORE_COLUMNS)


def scores_from_runs(qrels, runs: dict[str, dict], metrics: Sequence[str | Metric], conventions=None,
                     dataset: str = "dataset", language: str | None = None) -> pd.DataFrame:
    """Evaluate each named run against `qrels` and stack the per-query scores."""
    conventions = conventions or Conventions()
    frames = [scores_from_evaluation(evaluate(qrels, run, metrics, conventions), dataset, name, language)
              for name, run in runs.items()]
    return lazy.pd.concat(frames, ignore_index=True)


def load_records(paths: Sequence[str | Path], *, skipped: list[str] | None = None, all_versions: bool = False,
                 notes: list[str] | None = None) -> list[QualityRecord]:
    """Quality records from files or folders (searched recursively), in the order given. Of a folder,
    the current experiment version's records only (`bench.report.versions`; `all_versions`: every
    one), with a line in `notes` naming what was left out; a file named is read as it is. An
    unreadable record is an error naming it; with a `skipped` list, its message goes there instead."""
    out = []
    for path in map(Path, paths):
        if path.is_dir():
            found = find_records(path, kind="quality", skipped=skipped)
            if not found:
                raise BenchError(f"{path}: no quality records in this folder (files *.json with kind 'quality')")
            found, head = select_version(found, path, all_versions=all_versions)
            if head and notes is not None:
                notes.append(f"{path}: {head}")
            out.extend(found)
        else:
            try:
                rec = read_record(path)
            except BenchError as exc:
                if skipped is None:
                    raise
                skipped.append(str(exc))
                continue
            if rec.kind != "quality":
                raise BenchError(f"{path}: a {rec.kind!r} record; compare reads 'quality' records")
            out.append(rec)
    return out


def scores_from_records(records: list[QualityRecord], metrics: Sequence[str | Metric] | None = None,
                        notes: list[str] | None = None) -> pd.DataFrame:
    """Per-query scores from quality records (`dataset.label`, `dataset.language`, `system.label`,
    `per_query`). `metrics` are matched by meaning, whatever spelling a record was written with
    (``RR@10`` finds ``MRR@10``, ``ndcg@10`` finds ``nDCG@10``), and named by their canonical form; by
    default, the metrics every record holds. A metric a record lacks is computed from the run and
    qrels files beside it (`reevaluate`); `notes` collects a line for each."""
    if not records:
        raise BenchError("no records to compare")
    if metrics is None:
        held = [by_metric(r.per_query) for r in records]
        wanted = [m for m in held[0] if all(m in h for h in held)]
        if not wanted:
            raise BenchError("the records share no metric with per-query values; name one with --metric")
    else:
        wanted = list(dict.fromkeys(parse_metric(m) for m in metrics))
    shared_conventions(records)
    frames = []
    records = ordered(records)  # the experiment's order: first stages (the baseline, letter a) first
    for rec, system in zip(records, system_labels(records)):  # labels distinct per dataset, untrained models marked
        where = rec.path or "record"
        dataset = rec.dataset.label
        per_query = by_metric(rec.per_query)
        chosen = {metric: per_query[metric] for metric in wanted if metric in per_query}
        missing = [metric for metric in wanted if metric not in chosen]
        if missing:
            chosen.update(reevaluate(rec, missing, probe=next(iter(per_query), None)))
            if notes is not None:
                notes.append(f"{where}: {', '.join(map(str, missing))} computed from its run file {rec.run_file} "
                             f"and qrels {rec.qrels_file} under the record's conventions")
        frames.append(_long_rows({str(metric): chosen[metric] for metric in wanted}, dataset, system,
                                 rec.dataset.language))
    return lazy.pd.concat(frames, ignore_index=True)


def select_systems(scores: pd.DataFrame, wanted: Sequence[str]) -> pd.DataFrame:
    """The rows of the systems in `wanted`, in that order; an entry `LABEL=NEW` also renames one
    (records keep their labels; this is how two run folders' same-named systems are compared)."""
    pairs = [item.split("=", 1) if "=" in item else (item, item) for item in wanted]
    present = list(dict.fromkeys(scores["system"]))
    unknown = [old for old, _ in pairs if old not in present]
    if unknown:
        raise BenchError(f"--systems: no system labelled {', '.join(map(repr, unknown))}; the inputs hold: "
                         f"{', '.join(map(repr, present))}")
    names = [new for _, new in pairs]
    if len(set(names)) != len(names):
        raise BenchError(f"--systems: labels repeat in {names}; give each its own (LABEL=NEW renames)")
    rename = dict(pairs)
    out = scores[scores["system"].isin(rename)].copy()
    out["system"] = out["system"].map(rename)
    order = {name: i for i, name in enumerate(names)}
    return out.sort_values("system", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def reevaluate(rec: QualityRecord, metrics: Sequence[Metric], *, probe: Metric | None) -> dict[Metric, dict[str, float]]:
    """Per-query values of `metrics` for a record that lacks them, from the run and qrels files the
    pipeline writes beside its records, under the record's own conventions. The files must first
    reproduce `probe`, a metric the record holds (to 1e-9 per query), or they are not the record's."""
    where = rec.path or "record"
    held = sorted(rec.per_query)
    asked = ", ".join(repr(str(m)) for m in metrics)
    files = {"run_file": rec.run_file, "qrels_file": rec.qrels_file}
    if not all(files.values()) or rec.path is None:
        lacking = [k for k, v in files.items() if not v] or ["its path"]
        raise BenchError(f"{where}: no per-query values for {asked}; it holds {held}, and "
                         f"it names no {' or '.join(lacking)} to compute them from (records of an older bench run): "
                         "run `bench eval --qrels QRELS --run RUN` or `bench run` again with the metric")
    base = rec.path.resolve().parent.parent  # records/ sits beside runs/ in a bench run's folder
    paths = {k: base / v for k, v in files.items()}
    for key, path in paths.items():
        if not path.is_file():
            raise BenchError(f"{where}: no per-query values for {asked}, and its {key} "
                             f"{path} is missing; keep the run folder whole (records/ beside runs/)")
    conv = rec.evaluation.conventions  # a field the record does not state is None
    conventions = Conventions(depth=conv.depth, rel_level=1 if conv.rel_level is None else conv.rel_level,
                              judged_only=bool(conv.judged_only))
    qrels, run = read_qrels(paths["qrels_file"]), read_run(paths["run_file"])
    evaluation = evaluate(qrels, run, list(metrics) + ([probe] if probe else []), conventions)
    if probe:
        stored, again = by_metric(rec.per_query)[probe], evaluation.per_query[str(probe)]
        worst = max((abs(stored[q] - again.get(q, float("nan"))) for q in stored), default=0.0)
        if set(stored) != set(again) or not worst <= 1e-9:
            raise BenchError(f"{where}: its run file {paths['run_file']} and qrels {paths['qrels_file']} do not "
                             f"reproduce its own {probe} (largest per-query difference {worst:.3g}); they are not "
                             "this record's files, so nothing is computed from them")
    return {metric: evaluation.per_query[str(metric)] for metric in metrics}


def shared_conventions(records: list[QualityRecord], runs: str | None = None) -> str | None:
    """The trec_eval flags every input was evaluated under: the records' own and, when run files are
    compared too, `runs` (the flags they are scored with). Numbers under different conventions are
    not comparable, so mixing them is a BenchError; None when no input states its conventions."""
    seen: dict[str, str] = {}
    for rec in records:
        flags = rec.evaluation.conventions.trec_eval_flags
        if flags is not None:
            seen.setdefault(flags, str(rec.path or "record"))
    if len(seen) > 1:
        listed = "; ".join(f"{flags!r} ({path})" for flags, path in seen.items())
        raise BenchError(f"records were evaluated under different conventions: {listed}; compare like with like")
    if runs is not None and seen and set(seen) != {runs}:
        raise BenchError(f"the records were evaluated with trec_eval {sorted(seen)}, the run files with "
                         f"{runs}; pass the same --depth/--rel-level/--judged-only")
    return runs or next(iter(seen), None)


# ------------------------------------------------------------------------------------- comparison
@dataclass(frozen=True)
class Settings:
    """How systems are compared; every field is stated under the tables."""

    test: str = "randomization"  # which test sets the marks: "randomization" or "t-test"
    alpha: float = 0.05
    correction: str = "holm"  # "holm" or "none"
    permutations: int = 10_000
    bootstrap: int = 10_000
    confidence: float = 0.95
    seed: int = 42

    def __post_init__(self):
        if self.test not in TESTS:
            raise BenchError(f"test {self.test!r}: one of {', '.join(TESTS)}")
        if self.correction not in ("holm", "none"):
            raise BenchError(f"correction {self.correction!r}: 'holm' or 'none'")
        if not 0 < self.alpha < 1 or not 0 < self.confidence < 1:
            raise BenchError("alpha and confidence must lie strictly between 0 and 1")
        if self.permutations < 1 or self.bootstrap < 1:
            raise BenchError("permutations and bootstrap resamples must be at least 1")


#: The one set of significance settings: `bench compare`'s defaults and the results page's letters.
SIGNIFICANCE = Settings()


def default_baseline(records: list[QualityRecord]) -> str | None:
    """The system every other is tested against by default: the first stage, when the records hold
    exactly one first stage and at least one reranked system (the table a reranking paper prints);
    None otherwise (every pair is tested)."""
    labels = system_labels(records)
    first = list(dict.fromkeys(label for rec, label in zip(records, labels) if rec.system.stage == "first_stage"))
    reranked = any(rec.system.stage == "rerank" for rec in records)
    return first[0] if len(first) == 1 and reranked else None


def compare_records(records: list[QualityRecord], metrics: Sequence[str | Metric] | None = None,
                    settings: Settings = SIGNIFICANCE, notes: list[str] | None = None) -> Comparison:
    """The default comparison of a run's records, as `bench compare OUT/records` makes it and the
    results page shows it: `SIGNIFICANCE`, the experiment's order, against the first stage when there
    is one (`default_baseline`)."""
    return compare(scores_from_records(records, metrics, notes=notes), settings,
                   conventions=shared_conventions(records), baseline=default_baseline(ordered(records)))


def compare(scores: pd.DataFrame, settings: Settings = SIGNIFICANCE, systems: Sequence[str] | None = None,
            conventions: str | None = None, baseline: str | None = None) -> Comparison:
    """Systems on every dataset and metric of `scores` (columns `SCORE_COLUMNS`): each against
    `baseline` (k − 1 tests per dataset), or, without one, every pair.

    `systems` fixes the order (and hence the letters); by default the order of first appearance."""
    missing = set(SCORE_COLUMNS) - set(scores.columns)
    if missing:
        raise BenchError(f"score table lacks columns {sorted(missing)}")
    if scores.empty:
        raise BenchError("no per-query scores to compare")
    dupes = scores.duplicated(["dataset", "system", "metric", "query"])
    if dupes.any():
        row = scores[dupes].iloc[0]
        raise BenchError(f"system {row.system!r} appears twice for dataset {row.dataset!r} (metric {row.metric!r}); "
                         f"give each input its own label (run files: --label/--labels; records: --systems "
                         f"LABEL=NEW to rename, or compare one run folder's records)")
    order = list(systems) if systems is not None else list(dict.fromkeys(scores["system"]))
    unknown = set(scores["system"]) - set(order)
    if unknown:
        raise BenchError(f"systems {sorted(unknown)} are not in the given order {order}")
    if baseline is not None and baseline not in order:
        raise BenchError(f"baseline {baseline!r} is not one of the systems {order}")

    mean_rows, pair_rows = [], []
    for (metric, dataset), group in scores.groupby(["metric", "dataset"], sort=False):
        language = group["language"].iloc[0]
        table = group.pivot(index="query", columns="system", values="value")
        present = [s for s in order if s in table.columns]
        _check_same_queries(table, present, dataset, metric)
        for s in present:
            mean_rows.append({"dataset": dataset, "language": language, "metric": metric, "system": s,
                              "mean": float(table[s].mean()), "queries": int(table[s].size)})
        for a, b in _tested_pairs(present, baseline):
            x, y = table[a].to_numpy(), table[b].to_numpy()
            low, high = bootstrap_ci(x, y, settings.bootstrap, settings.confidence, settings.seed)
            pair_rows.append({"dataset": dataset, "language": language, "metric": metric, "system_a": a,
                              "system_b": b, "mean_a": float(x.mean()), "mean_b": float(y.mean()),
                              "diff": float((y - x).mean()), "ci_low": low, "ci_high": high,
                              "p_t_test": paired_t_test(x, y),
                              "p_randomization": paired_randomization_test(x, y, settings.permutations, settings.seed)})
    means = lazy.pd.DataFrame(mean_rows)
    pairs = lazy.pd.DataFrame(pair_rows, columns=["dataset", "language", "metric", "system_a", "system_b", "mean_a",
                                                  "mean_b", "diff", "ci_low", "ci_high", "p_t_test", "p_randomization"])
    _adjust_and_mark(means, pairs, settings, order)
    return Comparison(means=means, pairs=pairs, scores=scores, settings=settings, systems=order,
                      conventions=conventions, baseline=baseline)


def _tested_pairs(present: list[str], baseline: str | None) -> list[tuple[str, str]]:
    """(A, B) pairs to test, differences B − A: the baseline against each other system, or every pair."""
    if baseline is not None:
        return [(baseline, s) for s in present if s != baseline] if baseline in present else []
    return [(a, b) for i, a in enumerate(present) for b in present[i + 1:]]


def _check_same_queries(table: pd.DataFrame, systems: list[str], dataset: str, metric: str) -> None:
    """A paired test needs each query scored by both systems."""
    holes = table[systems].isna()
    if holes.any().any():
        system = holes.any()[lambda s: s].index[0]
        missing = list(table.index[holes[system]])[:3]
        raise BenchError(f"dataset {dataset!r}, {metric}: system {system!r} has no score for queries {missing} that "
                         f"others have; evaluate every system against the same qrels")


def _adjust_and_mark(means: pd.DataFrame, pairs: pd.DataFrame, settings: Settings, order: list[str]) -> None:
    """Holm per metric (all datasets × pairs of one table), then each system's 'better than' letters."""
    for test in ("t_test", "randomization"):
        pairs[f"p_{test}_adjusted"] = np.nan
        for _, index in pairs.groupby("metric", sort=False).groups.items():
            raw = pairs.loc[index, f"p_{test}"].to_numpy()
            pairs.loc[index, f"p_{test}_adjusted"] = holm(raw) if settings.correction == "holm" else raw
    pairs["significant"] = pairs[_adjusted_column(settings)] <= settings.alpha
    letters = {s: _letter(i) for i, s in enumerate(order)}
    means["letter"] = means["system"].map(letters)
    means["better_than"] = ""
    for row in pairs[pairs.significant].itertuples():
        winner, loser = (row.system_b, row.system_a) if row.diff > 0 else (row.system_a, row.system_b)
        mask = (means.dataset == row.dataset) & (means.metric == row.metric) & (means.system == winner)
        means.loc[mask, "better_than"] += letters[loser]
    means["better_than"] = means["better_than"].map(lambda marks: "".join(sorted(marks)))


def _adjusted_column(settings: Settings) -> str:
    return "p_randomization_adjusted" if settings.test == "randomization" else "p_t_test_adjusted"


def significance_note(settings: Settings, tests_per_table: dict[str, int], baseline: str | None,
                      letters: dict[str, str]) -> str:
    """What the superscript letters mean and how they were computed: stated once, wherever letters
    appear (`bench compare`'s tables, the results page)."""
    test = TESTS[settings.test]
    detail = f"{settings.permutations:,} random swaps, " if settings.test == "randomization" else ""
    counts = sorted(set(tests_per_table.values()))
    if len(counts) == 1:
        n = f"the {counts[0]} comparisons of each metric's table"
    else:
        n = "each metric's comparisons (" + ", ".join(f"{k}: {v}" for k, v in tests_per_table.items()) + ")"
    correction = f"Holm correction over {n}" if settings.correction == "holm" else "no correction for multiple comparisons"
    tested = (f"each system tested against the baseline ({letters.get(baseline, '?')}) {baseline} only"
              if baseline is not None else "every pair of systems tested")
    return (f"Superscript letters: significantly better than the system with that letter on that dataset "
            f"({tested}; {test}, {detail}two-sided, α = {settings.alpha:g}, seed {settings.seed}; {correction}).")


@dataclass
class Comparison:
    """Means with significance marks and the tests behind them, for each metric, as `compare`
    computed them; it only renders them (Markdown, LaTeX, CSV, JSON, PNG, record)."""

    means: pd.DataFrame  # dataset, language, metric, system, letter, mean, queries, better_than
    pairs: pd.DataFrame  # dataset, language, metric, system_a, system_b, mean_a, mean_b, diff, ci_low, ci_high, p_*
    scores: pd.DataFrame = field(repr=False)
    settings: Settings = field(default_factory=Settings)
    systems: list[str] = field(default_factory=list)
    conventions: str | None = None
    baseline: str | None = None  # None: every pair was tested

    # -- tables -----------------------------------------------------------------------------------
    def columns(self) -> tuple[list[str], dict[str, str]]:
        """Datasets in order and their column headers: the language code when every dataset has its
        own (the MIRACL per-language table), else the dataset label."""
        datasets = list(dict.fromkeys(self.means["dataset"]))
        langs = {d: self.means.loc[self.means.dataset == d, "language"].iloc[0] for d in datasets}
        if all(isinstance(v, str) and v for v in langs.values()) and len(set(langs.values())) == len(datasets):
            return datasets, langs
        return datasets, {d: d for d in datasets}

    def metrics(self) -> list[str]:
        return list(dict.fromkeys(self.means.metric))

    def wide(self, metric: str) -> pd.DataFrame:
        """Systems × datasets of one metric (numbers), with the unweighted average over datasets."""
        sub = self.means[self.means.metric == metric]
        datasets, headers = self.columns()
        table = sub.pivot(index="system", columns="dataset", values="mean").reindex(index=self._systems(metric), columns=datasets)
        if len(datasets) > 1:
            table["Avg"] = table[datasets].mean(axis=1, skipna=False)
        return table.rename(columns=headers)

    def _systems(self, metric: str) -> list[str]:
        present = set(self.means.loc[self.means.metric == metric, "system"])
        return [s for s in self.systems if s in present]

    def better(self, metric: str) -> dict[tuple[str, str], str]:
        """(system, dataset) -> the letters of the systems it is significantly better than."""
        sub = self.means[self.means.metric == metric]
        return {(row.system, row.dataset): row.better_than for row in sub.itertuples()}

    def _cells(self, metric: str, mark) -> pd.DataFrame:
        """The wide table as text: 4 decimals plus the marks `mark(letters)` renders."""
        better = self.better(metric)
        datasets, headers = self.columns()
        numbers = self.wide(metric)
        letters = self.letters()
        rows = []
        for system, values in numbers.iterrows():
            row = {}
            for dataset in datasets:
                value = values[headers[dataset]]
                marks = better.get((system, dataset), "")
                row[headers[dataset]] = "–" if lazy.pd.isna(value) else f"{value:.4f}" + (mark(marks) if marks else "")
            if "Avg" in numbers.columns:
                row["Avg"] = "–" if lazy.pd.isna(values["Avg"]) else f"{values['Avg']:.4f}"
            rows.append(row)
        out = lazy.pd.DataFrame(rows, index=[f"({letters[s]}) {s}" for s in numbers.index],
                                columns=list(numbers.columns))
        out.index.name = "system"
        return out

    def letters(self) -> dict[str, str]:
        return {s: _letter(i) for i, s in enumerate(self.systems)}

    def tests_per_table(self) -> dict[str, int]:
        return {metric: int((self.pairs.metric == metric).sum()) for metric in self.metrics()}

    def footnote(self, avg: bool = True) -> str:
        """The letters' meaning and settings, the Avg column (`avg`) and the conventions: once per output."""
        text = significance_note(self.settings, self.tests_per_table(), self.baseline, self.letters())
        datasets, _ = self.columns()
        if avg and len(datasets) > 1:
            text += f" Avg: unweighted mean over the {len(datasets)} datasets (not tested)."
        if self.conventions:
            text += f" Metrics under trec_eval {self.conventions}."
        return text

    def _pairs_heading(self, metric: str) -> str:
        what = (f"{metric}, each system against the baseline ({self.letters()[self.baseline]}) {self.baseline}: "
                "Δ = system − baseline" if self.baseline is not None else f"{metric}, every pair: Δ = B − A")
        return (f"{what}, with its {int(self.settings.confidence * 100)}% bootstrap interval "
                f"({self.settings.bootstrap:,} resamples, seed {self.settings.seed}); p-values raw and adjusted")

    def markdown(self) -> str:
        parts = []
        for metric in self.metrics():
            parts.append(f"### {metric}\n\n" + markdown(self._cells(metric, lambda s: f"<sup>{s}</sup>")) + "\n")
        parts.append(self.footnote() + "\n")
        for metric in self.metrics():
            pairs = self.pairs[self.pairs.metric == metric]
            if len(pairs):
                parts.append(f"#### {self._pairs_heading(metric)}\n\n"
                             + markdown(_pairs_text(pairs, self.settings, self.baseline), index=False) + "\n")
        return "\n".join(parts)

    def latex(self) -> str:
        parts = []
        for metric in self.metrics():
            cells = self._cells(metric, lambda s: f"$^{{{s}}}$")
            cells.index = [latex_escape(i) for i in cells.index]
            cells.columns = [latex_escape(str(c)) for c in cells.columns]
            cells.index.name = "System"
            parts.append(f"% {metric}\n" + latex(cells, caption=f"{metric}. {self.footnote()}", escaped_cells=True))
        return "\n".join(parts)

    def as_json(self) -> str:
        return json_text({"settings": asdict(self.settings), "baseline": self.baseline, "systems": self.systems,
                          "letters": self.letters(), "conventions": self.conventions, "note": self.footnote(),
                          "means": rows(self.means), "pairs": rows(self.pairs)})

    def render(self, fmt: str) -> str:
        """The comparison in one of `bench.report.formats.FORMATS` (csv: the means with their letters)."""
        return {"table": self.markdown, "latex": self.latex, "json": self.as_json, "csv": self.means_csv}[fmt]()

    def pairs_csv(self) -> str:
        return self.pairs.to_csv(index=False)

    def means_csv(self) -> str:
        return self.means.to_csv(index=False)

    # -- plot ---------------------------------------------------------------------------------------
    def plot(self, metric: str, path: str | Path, baseline: str | None = None) -> Path:
        """PNG of per-query differences (system − baseline), sorted, one panel per dataset."""
        baseline = baseline or self.baseline or self.systems[0]
        datasets, headers = self.columns()
        others = [s for s in self._systems(metric) if s != baseline]
        if not others:
            raise BenchError(f"nothing to plot for {metric}: only the baseline {baseline!r} has scores")
        ncols = min(len(datasets), 3)
        nrows = math.ceil(len(datasets) / ncols)
        fig = new_figure(figsize=(4.2 * ncols, 3.0 * nrows), layout="constrained")
        sub = self.scores[self.scores.metric == metric]
        for i, dataset in enumerate(datasets):
            ax = fig.add_subplot(nrows, ncols, i + 1)
            table = sub[sub.dataset == dataset].pivot(index="query", columns="system", values="value")
            if baseline not in table.columns:
                ax.set_title(f"{headers[dataset]} (no {baseline})", fontsize=9)
                continue
            for system in others:
                if system in table.columns:
                    diff = np.sort((table[system] - table[baseline]).to_numpy())[::-1]
                    label = f"{system}: mean {diff.mean():+.3f}, {int((diff > 0).sum())} up / {int((diff < 0).sum())} down"
                    ax.plot(np.arange(1, diff.size + 1), diff, drawstyle="steps-mid", label=label)
            ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_title(headers[dataset], fontsize=9)
            ax.set_xlabel("queries (sorted)", fontsize=8)
            ax.set_ylabel(f"Δ {metric}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6, title=f"minus {baseline}", title_fontsize=6)
        fig.suptitle(f"Per-query {metric} differences against {baseline}", fontsize=10)
        return save_png(fig, path)

    def to_record(self, inputs: list[str]) -> ComparisonRecord:
        return make_record("comparison", inputs=inputs, settings=asdict(self.settings), systems=self.systems,
                           baseline=self.baseline, conventions=self.conventions,
                           means=self.means.to_dict(orient="records"), pairs=self.pairs.to_dict(orient="records"))


def _letter(i: int) -> str:
    return string.ascii_lowercase[i] if i < 26 else f"s{i}"


def _pairs_text(pairs: pd.DataFrame, settings: Settings, baseline: str | None) -> pd.DataFrame:
    a, b = ("baseline", "system") if baseline is not None else ("A", "B")
    return lazy.pd.DataFrame({
        "dataset": pairs.dataset,
        a: pairs.system_a,
        b: pairs.system_b,
        f"mean {a}": pairs.mean_a.map("{:.4f}".format),
        f"mean {b}": pairs.mean_b.map("{:.4f}".format),
        f"Δ ({b} − {a})": pairs["diff"].map("{:+.4f}".format),
        "CI": [f"[{lo:+.4f}, {hi:+.4f}]" for lo, hi in zip(pairs.ci_low, pairs.ci_high)],
        "p t-test": pairs.p_t_test.map(_p),
        "p rand.": pairs.p_randomization.map(_p),
        f"p adj. ({settings.test})": pairs[_adjusted_column(settings)].map(_p),
    })


def _p(value: float) -> str:
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"
