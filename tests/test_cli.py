"""Start-up cost, checked as behaviour: `bench --help`, the commands' own `--help` and the import of
any module of the package load none of the heavy libraries (they go through `bench.lazy` and are
imported on first use). Each check runs in a fresh interpreter, since the test session itself has
imported them all long before."""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import bench

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "sentence_transformers", "ranx", "ir_datasets", "matplotlib", "scipy", "pandas",
         "numba", "bm25s", "tqdm")

#: What `bench <command> --help` must leave unimported: `bench run --help` imports the pipeline, and
#: with it every stage and every output of the package.
COMMAND_PATH = ("bench.cli", "bench.config", "bench.commands.run", "bench.commands.report", "bench.commands.compare",
                "bench.commands.eval", "bench.commands.reproduce", "bench.commands.data", "bench.pipeline")


def probe(code: str):
    """What `code`, run in a fresh interpreter, prints last (as JSON)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


def heavy_after(code: str) -> list[str]:
    """The heavy libraries in `sys.modules` after `code` runs in a fresh interpreter."""
    return probe(f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")


def help_of(*argv: str) -> str:
    """Code that runs `bench ARGV` (a --help: argparse prints and exits) with its output swallowed."""
    return ("import contextlib, io\nfrom bench.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            f"    main({list(argv)!r})")


def test_bench_help_imports_no_heavy_library():
    assert heavy_after(help_of("--help")) == []


@pytest.mark.parametrize("command", ["run", "report", "compare", "eval", "reproduce", "data", "throughput"])
def test_command_help_imports_no_heavy_library(command):
    assert heavy_after(help_of(command, "--help")) == []


def test_command_modules_and_pipeline_import_no_heavy_library():
    assert heavy_after("\n".join(f"import {m}" for m in COMMAND_PATH)) == []


def test_no_module_imports_a_heavy_library_at_its_top():
    """Every module of the package, imported one after another: none pulls a heavy library in (the
    answer names the first that does)."""
    modules = sorted(m.name for m in pkgutil.walk_packages(bench.__path__, "bench.") if m.name != "bench.__main__")
    assert len(modules) > 40
    code = (f"import importlib, json, sys\nfirst = None\nfor name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            f"    found = [m for m in {HEAVY!r} if m in sys.modules]\n"
            "    if found:\n        first = [name, found]\n        break\n"
            "print(json.dumps(first))")
    assert probe(code) is None


def test_lazy_imports_a_library_on_first_use_only():
    code = ("import json, sys\nfrom bench import lazy\nbefore = lazy.loaded('pd')\n"
            "frame = lazy.pd.DataFrame({'a': [1]})\n"
            "try:\n    lazy.nothing\n    unknown = 'no error'\nexcept AttributeError as exc:\n    unknown = str(exc)\n"
            "print(json.dumps([before, lazy.loaded('pd'), lazy.pd is sys.modules['pandas'], unknown]))")
    before, after, same, unknown = probe(code)
    assert (before, after, same) == (False, True, True)
    assert "no attribute 'nothing'" in unknown and "known: torch" in unknown
