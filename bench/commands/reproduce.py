"""`bench reproduce [NAME ...]`: measured scores against the registry of published ones.

For each selected registry entry, the command looks for quality records of the entry's system and
dataset (below ``--records``, default ``runs/``; of each run folder the current experiment version's,
never those set aside in a ``superseded/`` folder), runs the entry's experiment when none exists
(into ``--out``), and prints expected, measured, delta, tolerance and OK / FAIL, with the record
paths and, for a FAIL, every setting of the record that differs from the entry's.

Named entries (or patterns such as ``'pyserini-bm25/*'``) are run when their records are missing;
without names every entry is checked against the existing records only (``--run`` to run them all:
that is days of GPU time for all of MIRACL). Exit status: 0 when every check is OK (or, without
names, only missing), 1 on any FAIL or on a named entry left unmeasured.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .. import lazy, registry
from ..config import load_experiment
from ..errors import BenchError
from ..io import check_output_folder, sha256_file, slug
from ..pipeline import run_experiment
from ..plan.preflight import check_fetchable
from ..records import QualityRecord, find_records, make_record
from ..report.formats import render
from ..report.versions import Version, current_records, set_aside
from .options import add_cache_dir_argument, add_format_argument, with_cache_dir

EXAMPLES = """\
  bench reproduce --list                                   # the registry's entries
  bench reproduce 'measured-miracl-yo-minilm/*'            # run what is missing, then check
  bench reproduce --no-run --records runs --format json    # check existing records only
"""


def add_arguments(parser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="registry entries or shell-style patterns (default: all; see --list)")
    parser.add_argument("--list", action="store_true", help="list the entries (name, expected value, protocol, source) and stop")
    parser.add_argument("--records", type=Path, action="append", default=None,
                        help="folder searched (recursively) for existing records; repeatable (default: runs)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where experiments run by this command write, DIR/<experiment name>, and, when given, "
                             "the checks as a 'reproduce' record, DIR/reproduce.json (default: runs/reproduce, "
                             "no record)")
    run = parser.add_mutually_exclusive_group()
    run.add_argument("--run", action="store_true", help="run the experiments of entries without records, even when no NAME is given")
    run.add_argument("--no-run", action="store_true", help="never run anything; only read existing records")
    parser.add_argument("--registry", type=Path, action="append", default=None,
                        help="registry TOML file(s) to use instead of the shipped bench/registry_entries/*.toml")
    parser.add_argument("--skip-preflight", action="store_true",
                        help="do not check up front that hub models can be fetched")
    add_cache_dir_argument(parser)
    add_format_argument(parser)


def run(args) -> int:
    entries = registry.select(registry.load_registry(args.registry), args.names)
    if args.list:
        for e in entries:
            print(f"{e.name}\t{e.metric} {e.value:.4f} ±{e.tolerance:g}\t{registry.protocol(e)}\t{e.source.title}"
                  + (f", {e.source.section}" if e.source.section else ""))
        return 0

    folders = args.records or [Path("runs")]
    records = [r for folder in folders if folder.exists()
               for r in current_records(find_records(folder, kind="quality"), folder)]
    checks = {e.name: registry.check(e, records) for e in entries}
    out = args.out or Path("runs") / "reproduce"

    should_run = (args.run or bool(args.names)) and not args.no_run
    missing = [e for e in entries if checks[e.name].status == "MISSING" and not e.blocked]
    if args.out or (should_run and missing):
        check_output_folder(out)  # before any work
    if should_run and missing:
        log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
        for path in dict.fromkeys(e.experiment_path() for e in missing):
            records += run_experiment_file(path, out, preflight=not args.skip_preflight,
                                           progress=not args.no_progress, log=log, cache_dir=args.cache_dir)
        for e in missing:
            checks[e.name] = registry.check(e, records)

    results = [checks[e.name] for e in entries]
    if args.format == "table":
        print(registry.format_checks(results))
    else:
        frame = lazy.pd.DataFrame([c.as_dict() for c in results])
        if args.format != "json":
            frame = frame[["name", "metric", "expected", "measured", "delta", "tolerance", "status"]]
        print(render(frame, args.format, index=False, caption="Published against measured scores"), end="")
    if args.out:
        make_record("reproduce", checks=[c.as_dict() for c in results]).to_disk(out / "reproduce.json")
    failed = any(c.status == "FAIL" for c in results)
    unmeasured = bool(args.names) and any(c.status == "MISSING" and not c.entry.blocked for c in results)
    return 1 if failed or unmeasured else 0


def run_experiment_file(path: Path, out: Path, *, preflight: bool, progress: bool, log,
                        cache_dir: Path | None = None) -> list[QualityRecord]:
    """Run one experiment file into `<out>/<experiment name>` (records of its other versions set aside
    first, as `bench run` does) and return its records with their paths."""
    if not path.is_file():
        raise BenchError(f"{path}: experiment file of a registry entry not found; run bench reproduce from a "
                         "source checkout of rerank-bench (experiments/ is not installed with the package)")
    exp = with_cache_dir(load_experiment(path), cache_dir)
    if preflight:
        check_fetchable(exp, path)
    target = out / slug(exp.name)
    log(f"running {path} into {target}")
    set_aside(target, Version(exp.name, sha256_file(path)), log=log)
    run_experiment(exp, target, experiment_path=path, progress=progress, log=log)
    return find_records(target / "records", kind="quality")
