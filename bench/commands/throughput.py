"""`bench throughput EXPERIMENT.toml`: reranker engines side by side on the same real pairs.

Reads the experiment's ``[throughput]`` table (engines × dtypes × batch sizes / token budgets ×
max_lengths), its first dataset (or ``--dataset``) with its first stage, and each ``[[rerankers]]``
model. The pairs are each query with its first-stage top-k (the pipeline's own first stage, cached
like ``bench run`` caches it; a ``run`` first stage reads its TREC file), or with
``--candidates qrels`` relevant documents first, then judged and random ones (see
`bench.throughput.candidates_from_qrels`). Writes, under ``--out``:
``records/throughput-<model>.json`` (one record, all cells), ``records/fidelity-<model>.json``,
``throughput-<model>.md`` and ``plots/throughput-<model>.png``; a quality-vs-speed plot too when
the folder holds quality records from ``bench run``. Prints the tables. Exit status 1 when a cell
failed (its error is in the record and the table).
"""

from __future__ import annotations

import math
import time
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("experiment", help="experiment TOML with a [throughput] table (see experiments/throughput.toml)")
    parser.add_argument("--out", help="output folder (default: runs/<experiment name>-throughput)")
    parser.add_argument("--dataset", help="label of the dataset whose pairs to use (default: the first)")
    parser.add_argument("--engines", nargs="+", help="override [throughput].engines")
    parser.add_argument("--pairs", type=int, help="override [throughput].pairs")
    parser.add_argument("--candidates", choices=["first-stage", "qrels"], default=None,
                        help="override [throughput].candidates: the first stage's top-k or qrels-based")
    parser.add_argument("--slow-pairs", type=int, default=None,
                        help="override [throughput].slow_pairs: at most this many pairs (whole queries) for the "
                             "plain loop and sentence-transformers engines (recorded per cell)")
    parser.add_argument("--engine-dtypes", nargs="+", default=None, metavar="ENGINE=DTYPE[,DTYPE]",
                        help="override [throughput].engine_dtypes, e.g. transformers=fp32 flag=fp16")
    parser.add_argument("--attention", nargs="+", default=None,
                        help="fast-engine attention variants to sweep (e.g. varlen sdpa-padded); default: the engine's own")
    parser.add_argument("--latency-queries", type=int, default=None, help="override [throughput].latency_queries")
    parser.add_argument("--order", choices=["auto", "interleaved", "in-order"], default=None,
                        help="interleaved: all engines loaded, pass r of every cell before pass r+1 of any (fair "
                             "on a shared CPU; no per-cell peak memory); in-order: one cell after the other "
                             "(exact peak memory). auto: interleaved on CPU, in-order on GPU. Overrides [throughput].order")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="override [throughput].time_limit_s: cells not started by then are recorded as skipped")
    parser.add_argument("--quality-records", default=None,
                        help="folder of `bench run` output whose quality records to plot against speed "
                             "(default: --out); the plot is made when it holds any")
    parser.add_argument("--no-fidelity", action="store_true", help="skip the fidelity comparison against fp32")
    parser.add_argument("--cache-dir", help="models cache (default: the experiment's cache_dir or ~/.cache/rerank-bench)")


def run(args) -> int:
    from .. import models
    from ..config import load_experiment
    from ..data import load_collection
    from ..errors import BenchError
    from ..fidelity import fidelity_record, markdown_table as fidelity_table, sweep_fidelity
    from ..plots import plot_quality_speed, plot_throughput
    from ..io import atomic_write_json, atomic_write_text
    from ..records import find_records
    from ..cache import cache_root
    from ..retrieve.stage import FirstStage
    from ..throughput import ModelShape, Sweep, cells_from_spec, markdown_table, pairs_from_collection, reranker_factory

    exp = load_experiment(args.experiment)
    tp = exp.throughput
    if tp is None:
        raise BenchError(f"{args.experiment}: no [throughput] table; add one (see experiments/throughput.toml)")
    if not exp.rerankers:
        raise BenchError(f"{args.experiment}: no [[rerankers]]; name at least one model to measure")
    overrides = {"engines": args.engines, "candidates": args.candidates, "slow_pairs": args.slow_pairs,
                 "engine_dtypes": parse_engine_dtypes(args.engine_dtypes) if args.engine_dtypes else None,
                 "latency_queries": args.latency_queries, "order": args.order, "time_limit_s": args.time_limit,
                 "fidelity": False if args.no_fidelity else None}
    tp = tp.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    n_pairs = args.pairs or tp.pairs
    ds = exp.datasets[0]
    if args.dataset:
        found = [d for d in exp.datasets if d.label == args.dataset]
        if not found:
            raise BenchError(f"--dataset {args.dataset!r}: not in {args.experiment}; known: "
                             f"{', '.join(d.label for d in exp.datasets)}")
        ds = found[0]
    cache_dir = args.cache_dir or exp.cache_dir
    out = Path(args.out or Path("runs") / f"{exp.name}-throughput")

    collection = load_collection(ds, cache_dir=cache_root(cache_dir))
    n_queries = math.ceil(n_pairs / tp.k)
    if tp.candidates == "first-stage":
        fs_name, fs = exp.first_stage_for(ds)
        if fs.depth < tp.k:
            raise BenchError(f"{args.experiment}: first stage {fs_name!r} keeps depth = {fs.depth} candidates, "
                             f"fewer than [throughput].k = {tp.k}; raise its depth or lower k")
        candidates = FirstStage(fs_name, fs, cache_root(cache_dir)).retrieve(collection)
        pairset = pairs_from_collection(collection, k=tp.k, max_queries=n_queries, run=candidates.run,
                                        run_source=f"first stage {fs_name!r} ({fs.kind}"
                                                   f"{', cached' if candidates.cached else ''})")
    else:
        pairset = pairs_from_collection(collection, k=tp.k, max_queries=n_queries, seed=exp.seed)
    pairset = pairset.head(n_pairs)
    print(f"{len(pairset)} pairs: {pairset.n_queries} queries × k={tp.k} from {collection.name} "
          f"({pairset.source['candidates']})")

    options = {k: [dict(o) for o in v] for k, v in tp.variants.items()} or None
    if args.attention:  # each attention path crossed with the file's fast variants
        options = dict(options or {})
        options["fast"] = [{**o, "attention": a} for o in options.get("fast") or [{}] for a in args.attention]
    engine_dtypes = {k: list(v) for k, v in tp.engine_dtypes.items()}
    slow = {"transformers": tp.slow_pairs, "sentence-transformers": tp.slow_pairs} if tp.slow_pairs else None
    deadline = time.monotonic() + tp.time_limit_s if tp.time_limit_s else None
    failed = 0
    for spec in exp.rerankers:
        from transformers import AutoConfig, AutoTokenizer

        from ..throughput import resolve_device

        path = models.resolve(spec.model, cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(path, revision=spec.revision)
        shape = ModelShape.from_config(AutoConfig.from_pretrained(path, revision=spec.revision))
        sweep = Sweep(pairset, cells_from_spec(tp, options=options, max_pairs=slow, engine_dtypes=engine_dtypes),
                      reranker_factory(spec.model, cache_dir=cache_dir, device=spec.device,
                                       query_max_length=spec.query_max_length, revision=spec.revision),
                      model=spec.model, device=spec.device, warmup=tp.warmup, repeats=tp.repeats,
                      latency_queries=tp.latency_queries, tokenizer=tokenizer, shape=shape,
                      query_max_length=spec.query_max_length, name=exp.name, deadline=deadline,
                      interleave=(tp.order == "interleaved" or
                                  (tp.order == "auto" and resolve_device(spec.device).startswith("cpu"))),
                      settings={"experiment": str(args.experiment), "throughput": tp.model_dump(mode="json"),
                                "reranker": spec.model_dump(mode="json")})
        record, scores = sweep.run()
        tag = spec.label
        atomic_write_json(out / "records" / f"throughput-{tag}.json", record)
        table = markdown_table(record)
        text = f"## Throughput: {tag}\n\n{table}"
        failed += sum(1 for c in record["cells"] if c.get("error"))
        if tp.fidelity:
            comparisons = sweep_fidelity(record, scores, pairset, qrels=collection.qrels)
            atomic_write_json(out / "records" / f"fidelity-{tag}.json",
                              fidelity_record(comparisons, throughput_record=record))
            if comparisons:
                text += f"\n## Fidelity against fp32: {tag}\n\n{fidelity_table(comparisons)}"
            else:
                text += "\nFidelity: no cell ran a precision other than fp32 (nothing to compare).\n"
        atomic_write_text(out / f"throughput-{tag}.md", text)
        if any(not c.get("error") for c in record["cells"]):
            plot_throughput(record, out / "plots" / f"throughput-{tag}.png")
        print(text)
    qfolder = Path(args.quality_records) if args.quality_records else out
    if args.quality_records and not qfolder.is_dir():
        raise BenchError(f"--quality-records {qfolder}: no such folder (give the --out of a `bench run`)")
    quality = find_records(qfolder, kind="quality") if qfolder.exists() else []
    if any((r.get("timings") or {}).get("rerank_pairs_per_s") for r in quality):
        metric = exp.evaluation.metrics[0]
        path = plot_quality_speed(quality, out / "plots" / "quality-vs-speed.png", metric=metric)
        print(f"quality against speed ({metric}, {len(quality)} quality records from {qfolder}): {path}")
    print(f"records, tables and plots in {out}")
    if failed:
        print(f"{failed} cell(s) failed; their errors are in the table and the record")
    return 1 if failed else 0


def parse_engine_dtypes(items: list[str]) -> dict[str, list[str]]:
    """``["flag=fp16", "fast=bf16,fp32"]`` → ``{"flag": ["fp16"], "fast": ["bf16", "fp32"]}``."""
    from typing import get_args

    from ..config import DTYPE_HELP, Dtype
    from ..errors import BenchError
    from ..engine.device import ENGINES as engines

    dtypes = get_args(Dtype)
    out: dict[str, list[str]] = {}
    for item in items:
        engine, sep, values = item.partition("=")
        if not sep or engine not in engines:
            raise BenchError(f"--engine-dtypes {item!r}: expected ENGINE=DTYPE[,DTYPE] with ENGINE one of "
                             f"{', '.join(engines)}")
        out[engine] = [v for v in values.split(",") if v]
        bad = [v for v in out[engine] if v not in dtypes]
        if bad or not out[engine]:
            raise BenchError(f"--engine-dtypes {item!r}: dtype {bad or values!r}: {DTYPE_HELP}")
    return out
