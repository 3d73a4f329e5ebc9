"""`bench compare`: paired significance tests, bootstrap intervals and tables over runs or records.

Inputs are TREC run files (with --qrels; one dataset) or quality records / folders of records
written by `bench run` (any number of datasets; of a folder, the current experiment version's). When
the records hold one first stage and rerankers, each system is tested against that first stage only
(k − 1 tests; `--baseline LABEL` picks another, `--all-pairs` tests every pair). Prints the table in
`--format`; with --out also writes comparison.md, comparison.tex, pairs.csv, means.csv, a PNG of
per-query differences per metric and a comparison record (comparison.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import lazy
from ..errors import BenchError
from ..evaluate import Conventions, notify_if_cold
from ..io import atomic_write_text, check_output_folder, slug
from ..records import SCHEMA
from ..report.compare import (SIGNIFICANCE, Settings, compare, default_baseline, load_records, scores_from_records,
                              scores_from_runs, select_systems, shared_conventions)
from ..report.tables import ordered
from ..runs import read_qrels, read_run
from .eval import add_conventions_arguments
from .options import (add_all_versions_argument, add_format_argument, add_out_argument, add_skip_bad_argument, note,
                      warn_skipped)

EXAMPLES = """\
  bench compare runs/offline/records                          # each reranker against the first stage
  bench compare runs/offline/records --all-pairs --format latex --out cmp
  bench compare bm25.trec ce.trec --qrels qrels.txt -m ndcg@10 mrr@10
"""


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path,
                        help="TREC run files (need --qrels) and/or quality records (.json) or folders of records")
    parser.add_argument("--qrels", type=Path, default=None, help="qrels for run-file inputs (TREC or BEIR tsv)")
    parser.add_argument("--label", action="append", default=None, metavar="NAME",
                        help="system name of a run file: once per run file, in order (default: the file name "
                             "without suffix)")
    parser.add_argument("--labels", default=None, metavar="A,B,...",
                        help="the run files' system names as one comma-separated list (instead of --label)")
    parser.add_argument("--systems", action="append", default=None, metavar="LABEL[=NEW],...",
                        help="compare only these systems, in this order (letters follow it); LABEL=NEW also "
                             "renames one (repeatable or comma-separated; labels as the tables show them, "
                             "e.g. 'bm25 » bge-reranker-large')")
    parser.add_argument("--dataset", default=None, help="dataset label of the run files (default: the qrels file name)")
    parser.add_argument("--language", default=None, help="language code of the run files' dataset")
    parser.add_argument("--metric", "-m", dest="metrics", action="extend", nargs="+", default=None, metavar="M",
                        help="metrics to compare, in any spelling `bench eval` takes (nDCG@10, ndcg_cut_10, RR@10, ...): "
                             "records are matched by meaning (runs: default nDCG@10; records: default every metric "
                             "they share; one a record lacks is computed from the run and qrels files beside it)")
    add_conventions_arguments(parser)
    tests = parser.add_mutually_exclusive_group()
    tests.add_argument("--baseline", default=None, metavar="LABEL",
                       help="test each system against this one only (k − 1 tests, Holm over those), with the "
                            "difference and its interval (default: the first stage, when the records hold one "
                            "first stage and rerankers)")
    tests.add_argument("--all-pairs", action="store_true", help="test every pair of systems instead")
    parser.add_argument("--test", choices=("randomization", "t-test"), default=SIGNIFICANCE.test,
                        help="test that sets the significance marks (both are computed; default randomization)")
    parser.add_argument("--alpha", type=float, default=SIGNIFICANCE.alpha, help="significance level (default 0.05)")
    parser.add_argument("--correction", choices=("holm", "none"), default=SIGNIFICANCE.correction,
                        help="multiple-comparison correction over each table (default holm)")
    parser.add_argument("--permutations", type=int, default=SIGNIFICANCE.permutations,
                        help=f"randomization test swaps (default {SIGNIFICANCE.permutations}, as the results page)")
    parser.add_argument("--bootstrap", type=int, default=SIGNIFICANCE.bootstrap,
                        help=f"bootstrap resamples (default {SIGNIFICANCE.bootstrap})")
    parser.add_argument("--seed", type=int, default=SIGNIFICANCE.seed,
                        help=f"seed of the randomization test and bootstrap (default {SIGNIFICANCE.seed})")
    add_format_argument(parser)
    add_out_argument(parser, "folder for the tables (md, tex), CSVs, plots and the comparison record")
    add_all_versions_argument(parser)
    add_skip_bad_argument(parser)


def run(args) -> int:
    settings = Settings(test=args.test, alpha=args.alpha, correction=args.correction,
                        permutations=args.permutations, bootstrap=args.bootstrap, seed=args.seed)
    for p in args.inputs:
        if not p.exists():
            raise BenchError(f"{p}: not found (give run files, record files or folders of records)")
    if args.out:
        check_output_folder(args.out)
    run_files = [p for p in args.inputs if p.is_file() and not _is_record(p)]
    record_inputs = [p for p in args.inputs if p not in run_files]

    frames, records, run_conventions = [], [], None
    if run_files:
        frames.append(_run_scores(args, run_files))
        run_conventions = Conventions(depth=args.depth, rel_level=args.rel_level,
                                      judged_only=args.judged_only).trec_eval_flags()
    elif args.label or args.labels or args.qrels:
        raise BenchError("--label, --labels and --qrels apply to run files; no run file was given")
    notes: list[str] = []
    if record_inputs:
        skipped: list[str] | None = [] if args.skip_bad else None
        records = ordered(load_records(record_inputs, skipped=skipped, all_versions=args.all_versions, notes=notes))
        warn_skipped(skipped)
        frames.append(scores_from_records(records, args.metrics, notes=notes))
    for line in notes:
        note(line)
    conventions = shared_conventions(records, run_conventions)

    scores = lazy.pd.concat(frames, ignore_index=True)
    renamed = None
    if args.systems:
        wanted = [x.strip() for arg in args.systems for x in arg.split(",") if x.strip()]
        scores = select_systems(scores, wanted)
        renamed = dict(item.split("=", 1) if "=" in item else (item, item) for item in wanted)
    systems = list(dict.fromkeys(scores.system))
    if len(systems) < 2:
        raise BenchError(f"nothing to compare: the inputs hold one system ({systems[0] if systems else 'none'}); "
                         "give at least two runs, records or folders of records")
    baseline = _baseline(args, records, run_files, renamed, systems)
    comparison = compare(scores, settings, conventions=conventions, baseline=baseline)
    text = comparison.render(args.format)
    print(text, end="" if text.endswith("\n") else "\n")
    if args.out:
        written = _write_outputs(comparison, args)
        print(f"wrote {', '.join(written)} to {args.out}", file=sys.stderr)
    return 0


def _baseline(args, records, run_files, renamed: dict | None, systems: list[str]) -> str | None:
    """--baseline as given; none with --all-pairs; else the records' one first stage (`default_baseline`),
    when only records are compared and it is among the systems kept."""
    if args.baseline is not None:
        if args.baseline not in systems:
            raise BenchError(f"--baseline {args.baseline!r} is not one of the systems {systems}")
        return args.baseline
    if args.all_pairs or run_files or not records:
        return None
    found = default_baseline(records)
    if found is not None and renamed is not None:
        found = renamed.get(found)
    if found in systems and len(systems) > 2:  # with two systems both ways are the same one test
        note(f"each system is tested against the first stage {found!r} only ({len(systems) - 1} test(s) per dataset "
             "and metric); --all-pairs tests every pair")
    return found if found in systems else None


def _is_record(path: Path) -> bool:
    """A .json file holding a rerank-bench record (other .json files are ranx runs). One that is not
    JSON at all counts as a record, so that reading it names it as an unreadable record."""
    if path.suffix.lower() != ".json":
        return False
    try:
        head = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return True
    return isinstance(head, dict) and head.get("schema") == SCHEMA


def _run_scores(args, run_files: list[Path]):
    if args.qrels is None:
        raise BenchError(f"run files {[str(p) for p in run_files]} need --qrels to be scored")
    if args.label and args.labels:
        raise BenchError("give the run files' names with --label (once per file) or --labels a,b,c, not both")
    labels = args.label or ([x.strip() for x in args.labels.split(",")] if args.labels else [_stem(p) for p in run_files])
    if len(labels) != len(run_files):
        raise BenchError(f"{len(labels)} --label for {len(run_files)} run files; give one label per run file")
    if len(set(labels)) != len(labels):
        raise BenchError(f"system labels repeat: {labels}; name each run with --label")
    metrics = args.metrics or ["ndcg@10"]
    conventions = Conventions(depth=args.depth, rel_level=args.rel_level, judged_only=args.judged_only)
    qrels = read_qrels(args.qrels)
    runs = {label: read_run(path) for label, path in zip(labels, run_files)}
    notify_if_cold(metrics)
    return scores_from_runs(qrels, runs, metrics, conventions, dataset=args.dataset or _stem(args.qrels),
                            language=args.language)


def _stem(path: Path) -> str:
    """File name without .gz and its format suffix: runs/bm25.trec.gz -> bm25."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return Path(name).stem or name


def _write_outputs(comparison, args) -> list[str]:
    out = args.out
    written = [atomic_write_text(out / "comparison.md", comparison.markdown()),
               atomic_write_text(out / "comparison.tex", comparison.latex()),
               atomic_write_text(out / "pairs.csv", comparison.pairs_csv()),
               atomic_write_text(out / "means.csv", comparison.means_csv())]
    plots = []
    if len(comparison.systems) > 1:
        for metric in comparison.metrics():
            plots.append(comparison.plot(metric, out / f"differences_{slug(metric, strip=False)}.png"))
    record = comparison.to_record([str(p) for p in args.inputs])
    record.plots = [p.name for p in plots]
    written += plots + [record.to_disk(out / "comparison.json")]
    return [p.name for p in written]
