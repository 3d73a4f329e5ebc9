"""`bench report DIR`: the comparison table again, from the records in DIR."""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_write_text
from ..records import find_records
from ..report import quality_report, report_folder


def add_arguments(parser) -> None:
    parser.add_argument("folder", type=Path, help="output folder of `bench run` (or any folder of records)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the long table as CSV here")


def run(args) -> int:
    print(report_folder(args.folder))
    if args.csv:
        atomic_write_text(args.csv, quality_report(find_records(args.folder, kind="quality"))[1].to_csv(index=False))
    return 0
