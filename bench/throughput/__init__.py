"""Throughput: reranker engines side by side on the same real pairs, with their fidelity against fp32.

`run_throughput(experiment, out_dir)` is the library entry point (`bench throughput` is a thin command
over it): pairs from the experiment's first dataset and its first stage, one sweep per reranker,
fidelity of each precision against fp32, records, tables and plots. The parts, in the order a
sweep uses them:

* `pairs`: real (query, passage) pairs grouped by query, and their token lengths;
* `flops`: matmul FLOPs on real tokens and the device's measured matrix ceiling;
* `timing`: timed passes, per-query latency, peak memory;
* `sweep`: cells (engine × dtype × batching × max_length), timed into one ``throughput`` record;
* `fidelity`: each precision's scores and rankings against fp32, one ``fidelity`` record;
* `tables`: the Markdown tables and the throughput plot, made from records only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import models
from ..cache import cache_root
from ..config import CollectionSpec, Experiment, RerankerSpec, ThroughputSpec
from ..data import expand, load_collection, select_datasets
from ..errors import BenchError
from ..io import atomic_write_text
from ..models.python import is_python_reference
from ..report.plots import plot_quality_speed
from ..records import FidelityComparison, FidelityRecord, ThroughputRecord, find_records
from ..rerank.engines import family_of
from ..rerank.scoring import DECODER_FIELDS, load_config
from ..retrieve.stage import build_stages
from .fidelity import fidelity_record, sweep_fidelity
from .flops import tokenizer_and_shape
from .listwise import is_listwise, listwise_table, run_listwise_sweep
from .pairs import PairSet, pairs_from_collection
from .sweep import Sweep, cells_from_spec, reranker_factory, resolve_device
from .tables import fidelity_table, plot_throughput, throughput_table


@dataclass(frozen=True)
class ModelSweep:
    """One reranker's sweep: its records as written, and the Markdown written beside them."""

    label: str
    throughput: ThroughputRecord
    fidelity: FidelityRecord | None  # None when the experiment turns fidelity off
    text: str

    @property
    def failed_cells(self) -> int:
        return sum(1 for c in self.throughput.cells if c.error)


@dataclass(frozen=True)
class ThroughputResult:
    """What `run_throughput` measured and where it wrote it."""

    out_dir: Path
    pairs: PairSet
    sweeps: list[ModelSweep]
    quality_plot: Path | None

    @property
    def failed_cells(self) -> int:
        return sum(s.failed_cells for s in self.sweeps)


def run_throughput(experiment: Experiment, out_dir: str | Path, *, experiment_path: str | Path | None = None,
                   dataset: str | None = None, pairs: int | None = None, attention: Sequence[str] | None = None,
                   cache_dir: str | None = None, quality_records: str | Path | None = None, progress: bool = True,
                   log: Callable[[str], None] = print) -> ThroughputResult:
    """Sweep every reranker of `experiment` over its ``[throughput]`` table on the same real pairs.

    `dataset`: the label of the dataset whose pairs to use (default: the first); `pairs`: how many
    (default ``[throughput].pairs``); `attention`: fast-engine attention paths, each crossed with the
    file's fast variants; `quality_records`: a `bench run` output folder whose quality records to
    plot against speed (default: `out_dir`). Writes under `out_dir`: ``records/throughput-<label>.json``,
    ``records/fidelity-<label>.json``, ``throughput-<label>.md``, ``plots/throughput-<label>.png`` and,
    when quality records with a reranking speed are found, ``plots/quality-vs-speed.png``. Each
    table is passed to `log` as its sweep finishes. A failed cell is recorded, not raised.
    """
    where = experiment_path if experiment_path is not None else experiment.name
    tp = experiment.throughput
    if tp is None:
        raise BenchError(f"{where}: no [throughput] table; add one (see experiments/throughput.toml)")
    if not experiment.rerankers:
        raise BenchError(f"{where}: no [[rerankers]]; name at least one model to measure")
    classes = [r.model for r in experiment.rerankers if is_python_reference(r.model)]
    if classes:  # a class is its own engine: nothing to sweep (bench run records its pairs/s)
        raise BenchError(f"{where}: {', '.join(classes)}: a python: reranker has no engines to compare; "
                         "bench run records its speed (timings.rerank_pairs_per_s)")
    ds = _dataset(experiment, dataset, where)
    cache_dir = cache_dir or experiment.cache_dir
    out = Path(out_dir)

    collection = load_collection(ds, cache_dir=cache_root(cache_dir))
    pairset = _pairs(experiment, ds, collection, pairs or tp.pairs, cache_dir, where)
    log(f"{len(pairset)} pairs: {pairset.n_queries} queries × k={tp.k} from {collection.name} "
        f"({pairset.source['candidates']})")

    options = {k: [dict(o) for o in v] for k, v in tp.variants.items()} or None
    if attention:  # each attention path crossed with the file's fast variants
        options = dict(options or {})
        options["fast"] = [{**o, "attention": a} for o in options.get("fast") or [{}] for a in attention]
    engine_dtypes = {k: list(v) for k, v in tp.engine_dtypes.items()}
    slow = {"transformers": tp.slow_pairs, "sentence-transformers": tp.slow_pairs} if tp.slow_pairs else None
    cells = cells_from_spec(tp, options=options, max_pairs=slow, engine_dtypes=engine_dtypes)
    deadline = time.monotonic() + tp.time_limit_s if tp.time_limit_s else None
    sweeps = []
    listwise = [spec for spec in experiment.rerankers if is_listwise(spec)]
    if listwise:  # one sweep for all listwise rerankers: FIRST and generation side by side on the same queries
        record = run_listwise_sweep(listwise, tp, pairset, cache_dir=cache_dir, name=experiment.name, options=options,
                                    engine_dtypes=engine_dtypes, progress=progress,
                                    settings={"experiment": None if experiment_path is None else str(experiment_path),
                                              "throughput": tp.model_dump(mode="json")})
        record.to_disk(out / "records" / "throughput-listwise.json")
        text = f"## Throughput: listwise rerankers\n\n{listwise_table(record)}"
        atomic_write_text(out / "throughput-listwise.md", text)
        log(text)
        sweeps.append(ModelSweep(label="listwise", throughput=record, fidelity=None, text=text))
    for spec in [s for s in experiment.rerankers if not is_listwise(s)]:
        sweep = _sweep(spec, tp, pairset, cells, cache_dir=cache_dir, name=experiment.name, deadline=deadline,
                       settings={"experiment": None if experiment_path is None else str(experiment_path),
                                 "throughput": tp.model_dump(mode="json"), "reranker": spec.model_dump(mode="json")})
        record, scores = sweep.run(progress=progress)
        result = _write(out, spec.label, record,
                        sweep_fidelity(record, scores, pairset, qrels=collection.qrels) if tp.fidelity else None)
        log(result.text)
        sweeps.append(result)
    quality_plot = _quality_plot(experiment, out, quality_records, log)
    return ThroughputResult(out_dir=out, pairs=pairset, sweeps=sweeps, quality_plot=quality_plot)


def _dataset(experiment: Experiment, label: str | None, where) -> CollectionSpec:
    """The dataset whose pairs a sweep uses, by label among the expanded datasets (one per language
    of a `languages` entry), as `bench run --datasets` selects; default: the first."""
    if not label:
        return expand(experiment.datasets[0])[0]
    return select_datasets(experiment, [label], f"--dataset in {where}").datasets[0]


def _pairs(experiment: Experiment, ds: CollectionSpec, collection, n_pairs: int, cache_dir, where) -> PairSet:
    """The first `n_pairs` pairs (whole queries): each query with the first stage's top-k, or with
    qrels-based candidates (``candidates = "qrels"``)."""
    tp = experiment.throughput
    n_queries = math.ceil(n_pairs / tp.k)
    if tp.candidates == "first-stage":
        fs_name, fs = experiment.first_stage_for(ds)
        if fs.depth < tp.k:
            raise BenchError(f"{where}: first stage {fs_name!r} keeps depth = {fs.depth} candidates, "
                             f"fewer than [throughput].k = {tp.k}; raise its depth or lower k")
        stage = build_stages(experiment.first_stages, cache_root(cache_dir))[fs_name]  # a fusion: with its members
        candidates = stage.retrieve(collection)
        pairset = pairs_from_collection(collection, k=tp.k, max_queries=n_queries, run=candidates.run,
                                        run_source=f"first stage {fs_name!r} ({fs.kind}"
                                                   f"{', cached' if candidates.cached else ''})")
    else:
        pairset = pairs_from_collection(collection, k=tp.k, max_queries=n_queries, seed=experiment.seed)
    return pairset.head(n_pairs)


def _sweep(spec: RerankerSpec, tp: ThroughputSpec, pairset: PairSet, cells, *, cache_dir, name: str,
           deadline: float | None, settings: dict) -> Sweep:
    """The sweep of one reranker: the model's tokenizer and shape count its FLOPs; ``order = "auto"``
    interleaves the cells on a CPU."""
    tokenizer, shape = None, None  # FLOPs are counted for BERT-family cross-encoders only
    if family_of(spec, load_config(spec, cache_dir)) == "cross-encoder":
        tokenizer, shape = tokenizer_and_shape(models.resolve(spec.model, cache_dir), revision=spec.revision)
    interleave = tp.order == "interleaved" or (tp.order == "auto" and resolve_device(spec.device).startswith("cpu"))
    return Sweep(pairset, cells,
                 reranker_factory(spec.model, cache_dir=cache_dir, device=spec.device,
                                  query_max_length=spec.query_max_length, revision=spec.revision,
                                  scoring=spec.model_dump(include=DECODER_FIELDS | {"max_pairs_per_query", "duo_aggregation"},
                                                          exclude_unset=True)),
                 model=spec.model, device=spec.device, warmup=tp.warmup, repeats=tp.repeats,
                 latency_queries=tp.latency_queries, tokenizer=tokenizer, shape=shape,
                 query_max_length=spec.query_max_length, name=name, deadline=deadline, interleave=interleave,
                 settings=settings)


def _write(out: Path, label: str, record: ThroughputRecord, comparisons: list[FidelityComparison] | None
           ) -> ModelSweep:
    """One reranker's records, its Markdown tables and its plot (when a cell succeeded)."""
    record.to_disk(out / "records" / f"throughput-{label}.json")
    text = f"## Throughput: {label}\n\n{throughput_table(record)}"
    fidelity = None
    if comparisons is not None:
        fidelity = fidelity_record(comparisons, throughput_record=record)
        fidelity.to_disk(out / "records" / f"fidelity-{label}.json")
        if comparisons:
            text += f"\n## Fidelity against fp32: {label}\n\n{fidelity_table(comparisons)}"
        else:
            text += "\nFidelity: no cell ran a precision other than fp32 (nothing to compare).\n"
    atomic_write_text(out / f"throughput-{label}.md", text)
    if any(not c.error for c in record.cells):
        plot_throughput(record, out / "plots" / f"throughput-{label}.png")
    return ModelSweep(label=label, throughput=record, fidelity=fidelity, text=text)


def _quality_plot(experiment: Experiment, out: Path, quality_records, log) -> Path | None:
    """Quality against speed, when the folder holds quality records that measured a reranking speed."""
    folder = Path(quality_records) if quality_records else out
    if quality_records and not folder.is_dir():
        raise BenchError(f"--quality-records {folder}: no such folder (give the --out of a `bench run`)")
    quality = find_records(folder, kind="quality") if folder.exists() else []
    if not any(r.timings.rerank_pairs_per_s for r in quality):
        return None
    metric = experiment.evaluation.metrics[0]
    path = plot_quality_speed(quality, out / "plots" / "quality-vs-speed.png", metric=metric)
    log(f"quality against speed ({metric}, {len(quality)} quality records from {folder}): {path}")
    return path
