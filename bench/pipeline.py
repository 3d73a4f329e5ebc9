"""An experiment end to end: collections → first stage → rerankers → metrics → records → report.

The order of work keeps one model in memory at a time: every dataset's first stage first, then each
reranker over every dataset. Every step is cached or checkpointed (embeddings, candidate runs,
reranked blocks, records), so an interrupted `bench run` resumes where it stopped, and a finished
one reruns in seconds (records are rewritten from the caches; `timings.cached` says so).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from . import models
from .cache import cache_root, entry, key_of, read_checked_json, write_checked_json
from .config import PYTHON_FIELDS, Experiment, RerankerSpec
from .data import expand, load_collection
from .distributed import open_backend
from .engine.device import precision_for, release_memory
from .errors import BenchError
from .evaluate import Conventions, evaluate
from .io import atomic_write_text, json_text, sha256_file, slug
from .metrics import parse_metric
from .models.python import find_class, is_python_reference
from .records import QualityRecord, find_records, make_record
from .report.tables import quality_report
from .report.page import html_page
from .rerank import build_reranker
from .rerank.stage import RerankStage
from .retrieve.stage import build_stages
from .runs import write_qrels, write_run

#: The project checkout this code runs from (records state experiment files relative to it).
REPOSITORY = Path(__file__).resolve().parent.parent
#: holes in the judgements, a diagnostic every quality record carries
JUDGED_AT_10 = parse_metric("judged@10")
#: beside a reranker's checkpoints: its description as it scored them (`Pipeline.describe_reranker`)
DESCRIPTION_FILE = "reranker.json"
#: evaluated queries without a candidate named in a record's info (their count is in diagnostics)
UNRANKED_EXAMPLES = 20


class Pipeline:
    """Runs one experiment into one output folder (`records/`, `runs/`, `report.md`, `report.csv`)."""

    def __init__(self, experiment: Experiment, out_dir: str | Path, *, experiment_path: str | Path | None = None,
                 progress: bool = True, log=print):
        self.exp = experiment
        self.out = Path(out_dir)
        self.cache = cache_root(experiment.cache_dir)
        self.progress = progress
        self.log = log
        self._qrels_written: set[str] = set()  # datasets whose qrels.txt this run has written
        self._empty: dict[str, dict] = {}  # dataset label -> counts of empty queries and passages
        self.backend = None  # opened by run(): the local backend, or a connected cluster
        self.experiment_info = {"name": experiment.name, "description": experiment.description,
                                "systems": experiment_systems(experiment)}  # the order every table keeps
        if experiment_path is not None:
            self.experiment_info.update(experiment_file(experiment_path), sha256=sha256_file(experiment_path))

    # -- the whole experiment -------------------------------------------------------------------
    def run(self) -> list[QualityRecord]:
        records: list[QualityRecord] = []
        self.backend = open_backend(self.exp.execution, self.cache, log=self.log)  # fails before any work
        specs = [s for spec in self.exp.datasets for s in expand(spec)]
        prepared = []
        # one per name: datasets sharing it (and fusions fusing it) load its model once
        stages = build_stages(self.exp.first_stages, self.cache, progress=self.progress, backend=self.backend)
        try:
            for spec in specs:
                collection = load_collection(spec, cache_dir=self.cache)
                first_stages = self.exp.first_stages_for(spec)
                self.log(f"[{collection.name}] {len(collection.queries)} queries, {collection.n_docs():,} docs; "
                         f"first stage {', '.join(name for name, _ in first_stages)}")
                missing = collection.judged_docs_missing()
                if missing:
                    self.log(f"[{collection.name}] note: {len(missing):,} judged document(s) are not in the corpus "
                             f"(e.g. {missing[0]!r}); they stay in the qrels, as trec_eval keeps them, so Recall "
                             "cannot reach 1 for their queries (records: dataset.judged_docs_missing)")
                self._empty[collection.name] = self.check_empty(spec, collection)
                for fs_name, _ in first_stages:
                    run, rec = self.first_stage(collection, stages[fs_name])
                    records.append(rec)
                    prepared.append((collection, fs_name, run, rec))
        finally:
            for stage in stages.values():
                stage.close()
        release_memory()
        reranked: dict[tuple, tuple[dict, QualityRecord]] = {}  # (dataset, first stage, reranker) -> run, record
        for rspec in self.exp.rerankers:
            holder: dict[str, Any] = {}
            if rspec.trust_remote_code:
                self.log(f"warning: reranker {rspec.label}: trust_remote_code = true: the modelling code shipped with "
                         f"{rspec.model!r} runs wherever the model loads (records: system.reranker.trust_remote_code)")
            for collection, fs_name, run, fs_rec in prepared:
                # a chain (rerank_of) reranks the output of a reranker listed before it, for this first stage
                source_run, source = (run, fs_rec) if rspec.rerank_of is None else \
                    reranked[(collection.name, fs_name, rspec.rerank_of)]
                self.log(f"[{collection.name}] rerank top-{rspec.top_k} with {self.exp.system_label(fs_name, rspec)}")
                rec, out_run = self.rerank(collection, fs_name, source, source_run, rspec, holder)
                records.append(rec)
                reranked[(collection.name, fs_name, rspec.label)] = (out_run, rec)
            holder.clear()
            release_memory()
        self.write_report(records)
        return records

    def check_empty(self, spec, collection) -> dict:
        """Empty query texts and passages: counted (the corpus once per corpus fingerprint, cached),
        said, recorded as dataset.empty_queries / dataset.empty_docs; an error with on_empty = "error"."""
        folder = entry(self.cache, "corpus-checks", collection.name, corpus=collection.corpus_fingerprint())
        found = read_checked_json(folder / "empty_docs.json")
        if not isinstance(found, dict):
            docs = collection.empty_docs()
            found = {"empty_docs": len(docs), "examples": docs[:5]}
            write_checked_json(folder / "empty_docs.json", found)
        queries = collection.empty_queries()
        counts = {"empty_queries": len(queries), "empty_docs": found["empty_docs"]}
        if queries or found["empty_docs"]:
            what = (f"{len(queries):,} empty quer{'y' if len(queries) == 1 else 'ies'} (e.g. {queries[:3]}) and "
                    f"{found['empty_docs']:,} passage(s) with neither title nor text (e.g. {found['examples'][:3]})")
            if spec.on_empty == "error":
                raise BenchError(f"{collection.name}: {what}; on_empty = \"error\" (set on_empty = "
                                 "\"count\" to run anyway)")
            self.log(f"[{collection.name}] note: {what}; they are kept (records: dataset.empty_queries, "
                     "dataset.empty_docs; on_empty = \"error\" makes this an error)")
        return counts

    # -- stages ---------------------------------------------------------------------------------
    def first_stage(self, collection, stage) -> tuple[dict, QualityRecord]:
        result = stage.retrieve(collection)
        name = stage.name
        removal = result.info.get("remove_query_id")
        if removal:
            self.log(f"[{collection.name}] remove_query_id: removed {removal['removed']} candidate(s) whose id equals "
                     f"their query's id, over {removal['queries']} queries (records: info.remove_query_id)")
        system = {"label": self.exp.system_label(name), "stage": "first_stage", "first_stage": stage.describe(),
                  "reranker": None}
        if result.encoder:
            system["first_stage"]["encoder"] = result.encoder
        timings = {"first_stage_seconds": result.seconds, "cached": result.cached,
                   "encode_seconds": result.encode_seconds, "search_seconds": result.search_seconds,
                   "docs_per_second": result.docs_per_second, "backend": self.exp.execution.backend}
        info = {k: v for k, v in result.info.items() if k != "encoder"}  # stated once, in system.first_stage
        rec = self._quality_record(collection, system, result.run, name, timings, {}, info)
        return result.run, rec

    def rerank(self, collection, fs_name: str, source: QualityRecord, candidates: dict, spec: RerankerSpec,
               holder: dict) -> tuple[QualityRecord, dict]:
        """The reranked system's record and run. `source` is the record of the system whose run
        `candidates` is: the first stage's, or for a chain the reranker's that `spec.rerank_of` names."""
        spec_key = spec.model_dump(mode="json", exclude={"name", "device", "batch_size", "token_budget"})
        if spec.model.startswith(models.TRAINED_PREFIX):  # the project's own weights change with their version
            spec_key["trained_version"] = models.TRAINED_VERSION
        python = {}  # a python: class's scores change with its code and version: both in the key and the record
        if is_python_reference(spec.model):
            python = {"engine": "python", "python": find_class(spec.model).identity()}
        spec_key.update(python)
        checkpoints = entry(self.cache, "rerank", f"{collection.name}-{spec.label}", reranker=spec_key,
                            precision=self.backend.precision(spec) if self.backend else
                            precision_for(spec.dtype, spec.device, spec.engine), candidates=candidates_key(source))

        def factory():
            if "reranker" not in holder:
                holder["reranker"] = build_reranker(spec, cache_dir=self.cache)
            return holder["reranker"]

        if self.backend is not None:  # the same blocks, scored on the cluster
            stage = self.backend.rerank_stage(spec, spec.top_k, checkpoints, collection)  # its actors read passages
        else:
            stage = RerankStage(factory, spec.top_k, checkpoints, progress=self.progress)
        t0 = time.perf_counter()
        result = stage.rerank(collection.queries, candidates, collection.get_docs)
        described = self.describe_reranker(spec, checkpoints, holder.get("reranker") or getattr(stage, "described", None),
                                           factory if self.backend is None else None)
        settings = spec.model_dump(mode="json", include=PYTHON_FIELDS if python else None)  # a class: no engine fields
        system = {"label": self.exp.system_label(fs_name, spec), "stage": "rerank",
                  "first_stage": source.system.first_stage, "first_stage_label": self.exp.system_label(fs_name),
                  "reranker": {**settings, **described}}
        if spec.rerank_of is not None:  # a chain: what it reranks, and the whole pipeline
            system.update(reranks=source.system.label,
                          chain=[self.exp.first_stage_label(fs_name), *(r.label for r in self.exp.chain_of(spec))])
        timings = {"rerank_seconds": time.perf_counter() - t0, **result.speed(), "resumed_blocks": result.resumed_blocks,
                   "blocks": result.blocks, "backend": self.exp.execution.backend}
        info = {"checkpoints": str(checkpoints), **({"execution": stage.execution} if self.backend else {})}
        rec = self._quality_record(collection, system, result.run, f"{fs_name}__{spec.label}", timings,
                                   result.diagnostics(), info, parent=source.key)
        return rec, result.run

    def describe_reranker(self, spec: RerankerSpec, checkpoints: Path, engine, factory) -> dict:
        """The reranker as it scored the blocks in `checkpoints`: `engine`'s own description when this
        run built it (a reranker, or an actor's description), stored beside the blocks; else the one
        stored there by the run that scored them, so that a fully cached rerun writes the clean run's
        record. A cache from before descriptions were stored: the reranker is built once to describe
        itself (`factory`), or, on a cluster, the spec stands in and the record says so."""
        path = checkpoints / DESCRIPTION_FILE
        described = engine.describe() if engine is not None and hasattr(engine, "describe") else engine
        if described is None:
            stored = read_checked_json(path)
            if isinstance(stored, dict):
                return stored
            if factory is None:
                return {"engine": spec.engine, "model": models.describe(spec.model, spec.revision),
                        "note": "every block came from a cache written before descriptions were stored"}
            self.log(f"note: {path} is missing (a cache written before descriptions were stored); loading "
                     f"{spec.label} once to describe it")
            described = factory().describe()
        described = json.loads(json_text(described))  # as a record holds it (tuples as lists, numpy as numbers)
        if read_checked_json(path) != described:
            write_checked_json(path, described)
        return described

    # -- records --------------------------------------------------------------------------------
    def _quality_record(self, collection, system: dict, run: dict, run_name: str, timings: dict,
                        diagnostics: dict, info: dict, parent: str | None = None) -> QualityRecord:
        ev_spec = self.exp.evaluation
        conventions = Conventions(depth=ev_spec.depth, rel_level=ev_spec.rel_level, judged_only=ev_spec.judged_only)
        names = list(ev_spec.metrics)
        # judged@10 (holes in the judgements) is read on the plain top 10: no -J, and a -M under 10
        # would hide part of it. One pass serves both when the conventions allow.
        plain = Conventions(rel_level=ev_spec.rel_level)
        shared = JUDGED_AT_10 not in map(parse_metric, names) and not ev_spec.judged_only and (ev_spec.depth or 10) >= 10
        unranked = sorted(q for q in collection.qrels if not run.get(q))
        if len(unranked) == len(collection.qrels):
            self.log(f"[{collection.name}] warning: {run_name} ranked none of the {len(collection.qrels):,} evaluated "
                     "queries: every metric is 0 (do the run's query ids match the qrels'?)")
        elif unranked and system["stage"] == "first_stage":  # its rerankers inherit the holes: said once
            self.log(f"[{collection.name}] note: first stage {run_name} ranked no candidate for {len(unranked):,} of the "
                     f"{len(collection.qrels):,} evaluated queries (e.g. {unranked[:3]}); they count 0 in every "
                     "metric, as trec_eval -c counts them (records: diagnostics.unranked_queries, info.unranked_queries)")
        if unranked:
            info = {**info, "unranked_queries": unranked[:UNRANKED_EXAMPLES]}
        evaluation = evaluate(collection.qrels, run, names + (["judged@10"] if shared else []), conventions)
        if shared:
            judged = evaluation.means.pop("judged@10")
            evaluation.per_query.pop("judged@10")
        else:
            judged = evaluate(collection.qrels, run, ["judged@10"], plain).means["judged@10"]
        ds_slug = slug(collection.name)
        run_path = self.out / "runs" / ds_slug / f"{slug(run_name)}.trec"
        write_run(run, run_path, tag=slug(run_name))
        qrels_path = self.out / "runs" / ds_slug / "qrels.txt"  # beside the runs: re-evaluable without the dataset
        if ds_slug not in self._qrels_written:  # once per run (a rerun rewrites what an earlier run left)
            write_qrels(collection.qrels, qrels_path)
            self._qrels_written.add(ds_slug)
        rec = make_record(
            "quality",
            key=key_of(dataset=collection.fingerprint(), system=_stable(system), metrics=list(ev_spec.metrics),
                       conventions=conventions.describe(), parent=parent),
            experiment=self.experiment_info,
            dataset={"label": collection.name, **collection.describe(), **self._empty.get(collection.name, {})},
            system=system,
            evaluation={"metrics": list(ev_spec.metrics), "conventions": conventions.describe()},
            metrics=evaluation.means,
            per_query=evaluation.per_query,
            diagnostics={**diagnostics, "judged@10": judged, "unranked_queries": len(unranked)},
            run_file=str(run_path.relative_to(self.out)),
            qrels_file=str(qrels_path.relative_to(self.out)),
            timings=timings,
            info=info,
        )
        rec.to_disk(self.out / "records" / f"{ds_slug}__{slug(run_name)}.json")
        return rec

    def write_report(self, records: list[QualityRecord]) -> str:
        text, frame = quality_report(records)
        atomic_write_text(self.out / "report.md", text)
        atomic_write_text(self.out / "report.csv", frame.to_csv(index=False))
        atomic_write_text(self.out / "report.html", html_page(records, find_records(self.out, kind="throughput"),
                                                               page_dir=self.out.resolve()))
        return text


def experiment_file(path: str | Path) -> dict:
    """Where the experiment file is, for records read elsewhere: `file` absolute, and `repository_file`
    relative to the project checkout's root when it lies inside it (the form to use with the recorded
    git commit on another machine)."""
    path = Path(path).resolve()
    out = {"file": str(path)}
    if path.is_relative_to(REPOSITORY):
        out["repository_file"] = path.relative_to(REPOSITORY).as_posix()
    return out


def candidates_key(source: QualityRecord) -> str:
    """What a rerank's cache entry is keyed on for its candidates: the first stage's record key, or
    for a chain the checkpoint folder of the reranker it reranks (named by that reranker's settings and
    its own candidates; the same on a rerun, which that record's key is not once every block resumed)."""
    if source.system.stage == "rerank":
        return Path(source.info["checkpoints"]).name
    return source.key


def experiment_systems(exp: Experiment) -> list[str]:
    """The experiment's systems in its own order: its first stages, then each reranker over them."""
    return ([exp.system_label(f) for f in exp.first_stages]
            + [exp.system_label(f, r) for r in exp.rerankers for f in exp.first_stages])


def _stable(system: dict) -> dict:
    """The parts of a system description that define it (not run-dependent counters)."""
    drop = {"encoder", "note", "token_budget_used", "seconds"}
    return {k: (_stable(v) if isinstance(v, dict) else v) for k, v in system.items() if k not in drop}


def run_experiment(experiment: Experiment, out_dir: str | Path, *, experiment_path: str | Path | None = None,
                   progress: bool = True, log=print) -> list[QualityRecord]:
    """Run `experiment` into `out_dir` and return its quality records."""
    return Pipeline(experiment, out_dir, experiment_path=experiment_path, progress=progress, log=log).run()
