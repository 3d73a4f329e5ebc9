"""`bench eval`: score one TREC run against qrels with trec_eval's conventions (see bench.evaluate)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import lazy
from ..evaluate import Conventions, evaluate, notify_if_cold
from ..io import atomic_write_text
from ..metrics import unique_metrics
from ..report.formats import render
from ..runs import read_qrels, read_run
from .options import add_format_argument

EXAMPLES = """\
  bench eval --qrels runs/offline/runs/synthetic_en/qrels.txt --run runs/offline/runs/synthetic_en/minilm.trec -m ndcg@10
  bench eval --qrels qrels.txt --run run.trec -m ndcg_cut_10 P_10 recall_100 --depth 100 --format json
  bench eval --qrels qrels.txt --run run.trec -m map --rel-level 2 --per-query --out map.md
"""


def add_conventions_arguments(parser) -> None:
    """--depth / --rel-level / --judged-only, shared with `bench compare`."""
    parser.add_argument("--depth", type=int, default=None, metavar="N",
                        help="trec_eval -M: only the top N of each ranking count (default: all)")
    parser.add_argument("--rel-level", type=int, default=1, metavar="L",
                        help="trec_eval -l: judgments >= L are relevant (default 1; nDCG always uses every grade >= 1)")
    parser.add_argument("--judged-only", action="store_true",
                        help="trec_eval -J: drop unjudged documents from each ranking (after --depth)")


def add_arguments(parser) -> None:
    parser.add_argument("--qrels", type=Path, required=True, help="TREC qrels or BEIR qrels tsv")
    parser.add_argument("--run", type=Path, required=True, help="TREC run (also .gz), or ranx .json/.lz4/.parquet")
    parser.add_argument("--metric", "-m", dest="metrics", action="extend", nargs="+", required=True, metavar="M",
                        help="metrics as written in papers, ir_measures, trec_eval or pytrec_eval, in any case: "
                             "ndcg@10 (ndcg_cut.10, ndcg_cut_10) mrr@10 (RR@10) recall@100 (R@100, recall.100, "
                             "recall_100) map (AP) map@100 precision@10 (P@10, P.10, P_10) r-precision (Rprec) "
                             "judged@10 (repeat or list several; one metric named twice is counted once); printed "
                             "in one canonical form (nDCG@10, MRR@10, Recall@100, ...)")
    add_conventions_arguments(parser)
    add_format_argument(parser)
    parser.add_argument("--per-query", action="store_true", help="also print every query's value")
    parser.add_argument("--out", "-o", type=Path, default=None, metavar="FILE",
                        help="write the output to this file instead of stdout")


def run(args) -> int:
    metrics, merged = unique_metrics(args.metrics)  # unknown names fail before any file is read
    for line in merged:
        print(f"note: {line}", file=sys.stderr)
    conventions = Conventions(depth=args.depth, rel_level=args.rel_level, judged_only=args.judged_only)
    qrels = read_qrels(args.qrels)
    run_ = read_run(args.run)
    notify_if_cold(metrics)
    evaluation = evaluate(qrels, run_, metrics, conventions)
    print(coverage_line(qrels, run_, conventions), file=sys.stderr)
    if not any(run_.get(q) for q in qrels):
        print(f"warning: the run ranks none of the {len(qrels)} queries of {args.qrels}: every metric is 0 "
              f"(do the query ids of {args.run} match the qrels'?)", file=sys.stderr)

    if args.format == "json":
        out = dict(evaluation.means)
        if args.per_query:
            out["per_query"] = evaluation.per_query
        text = json.dumps(out, indent=2, ensure_ascii=False) + "\n"
    else:
        text = _table(evaluation, args.per_query, args.format)
    if args.out:
        atomic_write_text(args.out, text)
    else:
        sys.stdout.write(text)
    return 0


def coverage_line(qrels, run, conventions) -> str:
    """Which queries counted: the numbers that make two evaluations comparable."""
    ranked = sum(1 for q in qrels if run.get(q))
    run_only = sum(1 for q in run if q not in qrels)
    return (f"queries: {len(qrels)} in qrels, {ranked} ranked, {len(qrels) - ranked} missing from the run (scored 0), "
            f"{run_only} only in the run (ignored); conventions: trec_eval {conventions.trec_eval_flags()}")


def _table(evaluation, per_query: bool, fmt: str) -> str:
    """The means (and each query's values) in `fmt`: table (Markdown), csv or latex."""
    means = lazy.pd.DataFrame({"metric": list(evaluation.means), "mean": list(evaluation.means.values())})
    text = render(means, fmt, index=False, caption="Means over the qrels' queries")
    if per_query:
        frame = lazy.pd.DataFrame(evaluation.per_query)
        frame.index.name = "query"
        text += ("\n" if fmt != "csv" else "") + render(frame, fmt, caption="Per query")
    return text
