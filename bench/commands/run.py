"""`bench run EXPERIMENT.toml [--out DIR] [--datasets LABEL,...]`: run an experiment and print its table.

A run folder holds one experiment version: records another version (or experiment) left in
`--out` are first moved to `--out`/superseded/ (`bench.report.versions`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..cache import check_cache_folder
from ..config import load_experiment
from ..data import select_datasets
from ..io import check_output_folder, sha256_file
from ..pipeline import run_experiment
from ..plan.dry_run import plan
from ..plan.preflight import check_duration, check_fetchable
from ..report.tables import quality_report
from ..report.versions import Version, set_aside
from .options import add_cache_dir_argument, add_format_argument, add_out_argument, with_cache_dir

#: The project's committed reference records: their measured rates feed --dry-run's time estimate.
RESULTS = Path(__file__).resolve().parents[2] / "results"

EXAMPLES = """\
  bench run experiments/offline.toml                         # the demo: runs/offline/
  bench run experiments/default.toml --dry-run               # what would run, what is cached, how long
  bench run experiments/miracl-yo.toml --datasets miracl/yo/dev --out runs/yo --cache-dir /data/cache
"""


def add_arguments(parser) -> None:
    parser.add_argument("experiment", type=Path, help="experiment file (TOML), e.g. experiments/offline.toml")
    add_out_argument(parser, "output folder: records/, runs/, report.md, report.csv, report.html",
                     "runs/<experiment name>")
    parser.add_argument("--datasets", "--only", dest="datasets", action="append", metavar="LABELS", default=None,
                        help="run only these datasets, by label (repeatable or comma-separated), e.g. "
                             "--datasets miracl/yo/dev")
    add_cache_dir_argument(parser)
    add_format_argument(parser)
    parser.add_argument("--backend", choices=["local", "ray"], default=None,
                        help="where the expensive steps run (default: the experiment's [execution] backend, else local)")
    parser.add_argument("--ray-address", default=None, metavar="ADDRESS",
                        help="the Ray cluster (auto | host:6379 | ray://host:10001); implies --backend ray")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would run (datasets, first stages, rerankers, pairs, what is cached, missing "
                             "downloads, a time estimate from measured rates) and exit, loading no model")
    parser.add_argument("--skip-preflight", action="store_true",
                        help="do not check up front that hub models can be fetched")
    parser.add_argument("--allow-slow", action="store_true",
                        help="run on a machine without a GPU even when the estimate exceeds an hour there")


def run(args) -> int:
    exp = with_cache_dir(load_experiment(args.experiment), args.cache_dir)
    if args.datasets:
        labels = [label.strip() for arg in args.datasets for label in arg.split(",") if label.strip()]
        exp = select_datasets(exp, labels, str(args.experiment))
    exp = with_execution(exp, args.backend, args.ray_address)
    out = args.out or Path("runs") / exp.name
    if args.dry_run:
        print(plan(exp, out, results=RESULTS).text(), end="")
        return 0
    out = check_output_folder(out)  # before any work
    check_cache_folder(exp.cache_dir)
    if not args.allow_slow:
        check_duration(exp, out, RESULTS, args.experiment)
    if not args.skip_preflight:
        check_fetchable(exp, args.experiment)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    set_aside(out, Version(exp.name, sha256_file(args.experiment)), log=log)
    t0 = time.perf_counter()
    records = run_experiment(exp, out, experiment_path=args.experiment, progress=not args.no_progress, log=log)
    elapsed = time.perf_counter() - t0
    text = (out / "report.md").read_text() if args.format == "table" else quality_report(records, args.format)[0]
    print(text, end="" if text.endswith("\n") else "\n")
    summary = (f"{len(records)} records in {out / 'records'}; report: {out / 'report.md'}, {out / 'report.csv'}, "
               f"{out / 'report.html'}; {elapsed:.1f} s")
    print(summary, file=sys.stdout if args.format == "table" else sys.stderr)
    return 0


def with_execution(exp, backend: str | None, address: str | None):
    """The experiment with its [execution] backend and address overridden from the command line."""
    update = {k: v for k, v in (("backend", backend or ("ray" if address else None)), ("address", address)) if v}
    return exp.model_copy(update={"execution": exp.execution.model_copy(update=update)}) if update else exp
