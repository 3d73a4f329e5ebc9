"""`bench throughput EXPERIMENT.toml`: reranker engines side by side on the same real pairs.

Reads the experiment's ``[throughput]`` table (engines × dtypes × batch sizes / token budgets ×
max_lengths), its first dataset (or ``--dataset``) with its first stage, and each ``[[rerankers]]``
model. The pairs are each query with its first-stage top-k (the pipeline's own first stage, cached
like ``bench run`` caches it; a ``run`` first stage reads its TREC file), or with
``--candidates qrels`` relevant documents first, then judged and random ones (see
`bench.throughput.pairs.candidates_from_qrels`). Writes, under ``--out``:
``records/throughput-<model>.json`` (one record, all cells), ``records/fidelity-<model>.json``,
``throughput-<model>.md`` and ``plots/throughput-<model>.png``; a quality-vs-speed plot too when
the folder holds quality records from ``bench run``. Prints the tables. Exit status 1 when a cell
failed (its error is in the record and the table).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .. import lazy
from ..config import DTYPE_HELP, Experiment, load_experiment
from ..engine.device import DTYPES, ENGINES
from ..errors import BenchError
from ..io import check_output_folder
from ..report.formats import render
from ..throughput import run_throughput
from ..throughput.tables import throughput_frame
from .options import add_cache_dir_argument, add_format_argument, add_out_argument, with_cache_dir

EXAMPLES = """\
  bench throughput experiments/throughput.toml                    # CPU-sized sweep: fast engine vs baselines
  bench throughput experiments/throughput.toml --engines fast flag --pairs 256 --out runs/tp
  bench throughput experiments/throughput-gpu.toml --format csv > throughput.csv
"""


def add_arguments(parser) -> None:
    parser.add_argument("experiment", help="experiment TOML with a [throughput] table (see experiments/throughput.toml)")
    add_out_argument(parser, "output folder: records/, throughput-<model>.md, plots/",
                     "runs/<experiment name>-throughput")
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
    add_cache_dir_argument(parser)
    add_format_argument(parser)


def run(args) -> int:
    exp = with_cache_dir(with_overrides(load_experiment(args.experiment), args), args.cache_dir)
    out = check_output_folder(Path(args.out or Path("runs") / f"{exp.name}-throughput"))  # before any work
    table = args.format == "table"
    say = print if table else (lambda m: print(m, file=sys.stderr))
    result = run_throughput(exp, out, experiment_path=args.experiment, dataset=args.dataset, pairs=args.pairs,
                            attention=args.attention, quality_records=args.quality_records,
                            progress=not args.no_progress, log=say)
    if not table:  # the cells of every sweep as one table in the asked format
        frame = lazy.pd.concat([throughput_frame(s.throughput) for s in result.sweeps], ignore_index=True)
        print(render(frame, args.format, index=False, caption=f"Throughput: {exp.name}"), end="")
    say(f"records, tables and plots in {out}")
    if result.failed_cells:
        say(f"{result.failed_cells} cell(s) failed; their errors are in the table and the record")
    return 1 if result.failed_cells else 0


def with_overrides(exp: Experiment, args) -> Experiment:
    """The experiment with the command line's overrides of its ``[throughput]`` table (recorded in
    each record's settings, as the file's own values are)."""
    if exp.throughput is None:
        return exp  # run_throughput says what is missing
    overrides = {"engines": args.engines, "candidates": args.candidates, "slow_pairs": args.slow_pairs,
                 "engine_dtypes": parse_engine_dtypes(args.engine_dtypes) if args.engine_dtypes else None,
                 "latency_queries": args.latency_queries, "order": args.order, "time_limit_s": args.time_limit,
                 "fidelity": False if args.no_fidelity else None}
    tp = exp.throughput.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    return exp.model_copy(update={"throughput": tp})


def parse_engine_dtypes(items: list[str]) -> dict[str, list[str]]:
    """``["flag=fp16", "fast=bf16,fp32"]`` → ``{"flag": ["fp16"], "fast": ["bf16", "fp32"]}``."""
    out: dict[str, list[str]] = {}
    for item in items:
        engine, sep, values = item.partition("=")
        if not sep or engine not in ENGINES:
            raise BenchError(f"--engine-dtypes {item!r}: expected ENGINE=DTYPE[,DTYPE] with ENGINE one of "
                             f"{', '.join(ENGINES)}")
        out[engine] = [v for v in values.split(",") if v]
        bad = [v for v in out[engine] if v not in DTYPES]
        if bad or not out[engine]:
            raise BenchError(f"--engine-dtypes {item!r}: dtype {bad or values!r}: {DTYPE_HELP}")
    return out
