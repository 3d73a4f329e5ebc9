"""`bench report DIR`: the comparison table again, from the records in DIR."""

from __future__ import annotations

import sys
from pathlib import Path

from ..io import atomic_write_text
from ..records import find_records
from ..report import quality_report, report_folder
from ..report_html import write_html_report


def add_arguments(parser) -> None:
    parser.add_argument("folder", type=Path, help="output folder of `bench run` (or any folder of records)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the long table as CSV here")
    parser.add_argument("--html", nargs="?", type=Path, const=True, default=None, metavar="PATH",
                        help="also write the results page (one self-contained HTML file; default FOLDER/report.html)")
    parser.add_argument("--throughput", type=Path, action="append", default=[], metavar="DIR",
                        help="folder of throughput records whose speeds the page's quality-vs-speed chart uses "
                             "(same model and device; default: those under FOLDER)")


def run(args) -> int:
    print(report_folder(args.folder))
    if args.csv:
        atomic_write_text(args.csv, quality_report(find_records(args.folder, kind="quality"))[1].to_csv(index=False))
    if args.html:
        path = write_html_report(args.folder, None if args.html is True else args.html,
                                 throughput_folders=args.throughput)
        print(f"results page: {path}", file=sys.stderr)
    return 0
