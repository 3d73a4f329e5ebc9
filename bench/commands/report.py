"""`bench report FOLDER`: the tables again, from the records in a run folder (the current experiment
version's; see docs/reliability.md), in any format; with --out, the report files and the results page."""

from __future__ import annotations

import sys
from pathlib import Path

from ..io import atomic_write_text, check_output_folder
from ..records import find_records
from ..report.page import write_html_page
from ..report.tables import quality_report, read_folder, with_head
from .options import (add_all_versions_argument, add_format_argument, add_out_argument, add_skip_bad_argument,
                      warn_skipped)

EXAMPLES = """\
  bench report runs/offline                       # report.md's tables again, from the records
  bench report runs/offline --format latex        # the same tables for a paper
  bench report runs/offline --out runs/offline    # rewrite report.md, .csv, .tex and the results page
"""


def add_arguments(parser) -> None:
    parser.add_argument("folder", type=Path, help="output folder of `bench run` (or any folder of records)")
    add_format_argument(parser)
    add_out_argument(parser, "folder to write report.md, report.csv, report.tex and the results page report.html into")
    add_all_versions_argument(parser)
    parser.add_argument("--throughput", type=Path, action="append", default=[], metavar="DIR",
                        help="folder of throughput records whose speeds the page's quality-vs-speed chart uses "
                             "(same model and device; default: those under FOLDER)")
    add_skip_bad_argument(parser)


def run(args) -> int:
    if args.out:
        check_output_folder(args.out)
    skipped: list[str] | None = [] if args.skip_bad else None
    records, head = read_folder(args.folder, all_versions=args.all_versions, skipped=skipped)
    warn_skipped(skipped)
    text, frame = quality_report(records, args.format)
    if head and args.format in ("json", "csv"):
        print(f"note: {head}", file=sys.stderr)
    text = with_head(text, head, args.format)
    print(text, end="" if text.endswith("\n") else "\n")
    if args.out:
        throughput = [r for f in [args.folder, *args.throughput] for r in find_records(f, kind="throughput")]
        written = [atomic_write_text(args.out / "report.md", with_head(quality_report(records)[0], head, "table")),
                   atomic_write_text(args.out / "report.csv", frame.to_csv(index=False)),
                   atomic_write_text(args.out / "report.tex", with_head(quality_report(records, "latex")[0], head, "latex")),
                   write_html_page(records, args.out / "report.html", throughput)]
        print(f"wrote {', '.join(p.name for p in written)} to {args.out}", file=sys.stderr)
    return 0
