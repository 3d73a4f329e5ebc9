"""`bench`: a thin command line over the library.

Each subcommand lives in `bench/commands/<name>.py` with `add_arguments(parser)` and `run(args) -> int`,
imported only when chosen, so `bench --help` is instant. A `BenchError` prints its message (which
names the file, line or field and what to do) and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from .errors import BenchError, Interrupted

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("bench.commands.run", "run an experiment: collection → first stage → rerank → metrics → records"),
    "report": ("bench.commands.report", "print the comparison table again from the records in a folder"),
    "eval": ("bench.commands.eval", "evaluate a TREC run against qrels with trec_eval's conventions"),
    "compare": ("bench.commands.compare", "compare runs or records: significance tests, tables, plots"),
    "throughput": ("bench.commands.throughput", "sweep reranker engines × batch × dtype × max_length on real pairs"),
    "reproduce": ("bench.commands.reproduce", "check measured scores against the registry of published ones"),
    "data": ("bench.commands.data", "inspect a collection: counts, languages, a sample"),
}


#: The end of `bench --help`: where a newcomer starts.
START_HERE = """\
examples:
  make demo                              # the offline demo: a few minutes on a CPU, no network
  bench run experiments/offline.toml     # the same, by hand; then open runs/offline/report.html
  bench compare runs/offline/records     # significance of each reranker against the first stage

documentation: docs/index.md (a site: mkdocs serve); `bench COMMAND --help` for each command's options.
"""

#: The options every command takes, described here once.
COMMON_OPTIONS = {
    "--no-progress": "no progress bars at all (ours, tqdm's, Hugging Face's, bm25s')",
    "--verbose": "the libraries' own bars and messages too (Hugging Face's loading and download bars, "
                 "bm25s' indexing bars); also RERANK_BENCH_VERBOSE=1",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0], epilog=START_HERE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"rerank-bench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def command_parser(name: str, module) -> argparse.ArgumentParser:
    """`bench NAME`'s parser: the command's own arguments, the common options, its examples last."""
    sub = argparse.ArgumentParser(prog=f"bench {name}", description=COMMANDS[name][1],
                                  epilog="examples:\n" + module.EXAMPLES,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(sub)
    common = sub.add_argument_group("common options (every command)")
    for option, text in COMMON_OPTIONS.items():  # every command takes them, whether it draws bars or not
        common.add_argument(option, action="store_true", help=text)
    return sub


def silence_progress() -> None:
    """No progress bar from here on: tqdm (ours, and the libraries' that use it) and huggingface_hub
    read these variables when they draw."""
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    args = command_parser(name, module).parse_args(rest)
    if args.no_progress:
        silence_progress()
    if args.verbose:
        os.environ["RERANK_BENCH_VERBOSE"] = "1"  # read where models load (bench.progress.quiet_hub_bars)
    try:
        return int(module.run(args) or 0)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # a step that knows what it kept says so
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted: everything finished so far is cached; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
