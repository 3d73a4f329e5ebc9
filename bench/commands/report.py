"""`bench report DIR`: the comparison table again, from the records in DIR."""

from __future__ import annotations

import sys
from pathlib import Path

from ..io import atomic_write_text
from ..report.tables import report_folder
from ..report.page import write_html_report


def add_arguments(parser) -> None:
    parser.add_argument("folder", type=Path, help="output folder of `bench run` (or any folder of records)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the long table as CSV here")
    parser.add_argument("--all-experiments", action="store_true",
                        help="also the records earlier experiments left in the folder (default: the latest experiment's)")
    parser.add_argument("--html", nargs="?", type=Path, const=True, default=None, metavar="PATH",
                        help="also write the results page (one self-contained HTML file; default FOLDER/report.html)")
    parser.add_argument("--throughput", type=Path, action="append", default=[], metavar="DIR",
                        help="folder of throughput records whose speeds the page's quality-vs-speed chart uses "
                             "(same model and device; default: those under FOLDER)")
    add_skip_bad_argument(parser)


def add_skip_bad_argument(parser) -> None:
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out unreadable record files with a warning each (default: an error naming the file)")


def warn_skipped(skipped: list[str] | None) -> None:
    """One warning per record file left out by --skip-bad, then their count."""
    for problem in skipped or []:
        print(f"warning: skipped {problem}", file=sys.stderr)
    if skipped:
        print(f"warning: {len(skipped)} unreadable record file(s) skipped (--skip-bad)", file=sys.stderr)


def run(args) -> int:
    skipped: list[str] | None = [] if args.skip_bad else None
    text, frame = report_folder(args.folder, all_experiments=args.all_experiments, skipped=skipped)
    warn_skipped(skipped)
    print(text)
    if args.csv:
        atomic_write_text(args.csv, frame.to_csv(index=False))
    if args.html:
        path = write_html_report(args.folder, None if args.html is True else args.html,
                                 throughput_folders=args.throughput, all_experiments=args.all_experiments,
                                 skipped=[] if args.skip_bad else None)
        print(f"results page: {path}", file=sys.stderr)
    return 0
