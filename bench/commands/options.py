"""The options several commands share, each defined once so that every command spells it the same
way (docs/experiments.md, 'Command line'): `--out`, `--format`, `--cache-dir`, `--skip-bad`,
`--all-versions`. `--no-progress` and `--verbose` are added to every command by `bench.cli`."""

from __future__ import annotations

import sys
from pathlib import Path

from ..report.formats import add_format_argument  # noqa: F401  (re-exported: one place to import options from)


def add_out_argument(parser, what: str, default: str | None = None) -> None:
    """`--out PATH`: where the command writes; `what` says what lands there."""
    parser.add_argument("--out", type=Path, default=None, metavar="PATH",
                        help=f"{what}" + (f" (default: {default})" if default else ""))


def add_cache_dir_argument(parser) -> None:
    parser.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                        help="the cache of embeddings, runs, reranked blocks and models (default: the experiment's "
                             "cache_dir, else $RERANK_BENCH_CACHE, else ~/.cache/rerank-bench)")


def with_cache_dir(exp, cache_dir: Path | None):
    """The experiment with `--cache-dir` in place of its own cache_dir (the command line wins)."""
    return exp.model_copy(update={"cache_dir": str(cache_dir)}) if cache_dir is not None else exp


def add_skip_bad_argument(parser) -> None:
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out record files that cannot be read, or JSON in records/ that is not a record, "
                             "with a warning each (default: an error naming the file)")


def warn_skipped(skipped: list[str] | None) -> None:
    """One warning per record file left out by --skip-bad, then their count."""
    for problem in skipped or []:
        print(f"warning: skipped {problem}", file=sys.stderr)
    if skipped:
        print(f"warning: {len(skipped)} unreadable record file(s) skipped (--skip-bad)", file=sys.stderr)


def add_all_versions_argument(parser) -> None:
    parser.add_argument("--all-versions", "--all-experiments", dest="all_versions", action="store_true",
                        help="every experiment version the folder holds (set aside ones in superseded/ too), each "
                             "system's name saying its version (default: the current version's records only)")


def note(line: str) -> None:
    print(f"note: {line}", file=sys.stderr)
