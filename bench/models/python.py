"""`python:` model names: a reranker that is a Python class, found without loading any weights.

Three spellings name the class:

* ``python:package.module:ClassName``: a module importable here (installed, or on ``PYTHONPATH``);
* ``python:path/to/file.py:ClassName``: a single file (in an experiment, relative to the experiment
  file's folder, as every relative path there is);
* ``python:NAME``: an installed plug-in, registered in the entry-point group ``rerank_bench.rerankers``
  (``[project.entry-points."rerank_bench.rerankers"] NAME = "package.module:ClassName"``).

The class implements the reranker interface (docs/rerankers.md, "A Python class"): ``score(pairs)``
returns one float per (query, passage) pair, higher = more relevant; ``describe()`` returns a JSON
object of its settings. What a record and a cache key say about it (`PythonClass.identity`): the
class's module path, its version (the class's ``version``, else its module's ``__version__``), the
distribution that installed it, and the sha256 of its source file, so that editing the class scores
again instead of reusing blocks it scored before.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import BenchError

PYTHON_PREFIX = "python:"
ENTRY_POINT_GROUP = "rerank_bench.rerankers"
#: What the class must offer (docs/rerankers.md, "A Python class").
INTERFACE = ("score", "describe")

_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
SPELLINGS = ("python:package.module:ClassName, python:path/to/file.py:ClassName, or python:NAME for a plug-in "
             f"in the entry-point group {ENTRY_POINT_GROUP}")


def is_python_reference(ref: str) -> bool:
    return ref.startswith(PYTHON_PREFIX)


def split_reference(ref: str) -> tuple[str, str | None]:
    """(module or file, class name) of ``python:TARGET:Class``, or (plug-in name, None) of ``python:NAME``;
    a malformed name is an error that shows the three spellings."""
    body = ref[len(PYTHON_PREFIX):]
    target, sep, name = body.rpartition(":")
    if not sep:
        if not _NAME.match(body):
            raise BenchError(f"{ref!r}: not a python: reranker name; use {SPELLINGS}")
        return body, None
    if not (_DOTTED.match(name) and (target.endswith(".py") or _DOTTED.match(target))):
        raise BenchError(f"{ref!r}: not a python: reranker name; use {SPELLINGS}")
    return target, name


def file_relative_to(ref: str, base: Path) -> str:
    """``python:file.py:Class`` with a relative file made absolute against `base` (an experiment's
    folder); any other name as it is."""
    if not is_python_reference(ref):
        return ref
    target, sep, name = ref[len(PYTHON_PREFIX):].rpartition(":")
    if not sep or not target.endswith(".py") or Path(target).is_absolute():
        return ref
    return f"{PYTHON_PREFIX}{(base / target).resolve()}:{name}"


@dataclass(frozen=True)
class PythonClass:
    """A found reranker class and where it came from."""

    ref: str
    cls: type
    origin: str                   # where it was found: "package.module", or the file's absolute path
    file: str | None              # its source file
    distribution: str | None      # "name==version" of the installed distribution that ships it

    @property
    def path(self) -> str:
        return f"{self.origin}:{self.cls.__qualname__}"

    @property
    def version(self) -> str | None:
        """The class's ``version`` attribute, else its module's ``__version__``."""
        module = sys.modules.get(getattr(self.cls, "__module__", ""))
        declared = getattr(self.cls, "version", None) or getattr(module, "__version__", None)
        return None if declared is None else str(declared)

    def identity(self) -> dict:
        """What a record states and a cache key holds: class path, version, distribution, source digest."""
        source = Path(self.file) if self.file else None
        digest = hashlib.sha256(source.read_bytes()).hexdigest() if source and source.is_file() else None
        return {"class": self.path, "file": self.file, "version": self.version, "distribution": self.distribution,
                "source_sha256": digest}


def find_class(ref: str) -> PythonClass:
    """Import the class a ``python:`` name names and check it offers the interface."""
    target, name = split_reference(ref)
    if name is None:
        found = _from_entry_point(ref, target)
    elif target.endswith(".py"):
        found = _from_file(ref, Path(target), name)
    else:
        found = _from_module(ref, target, name)
    if not isinstance(found.cls, type):
        raise BenchError(f"{ref!r}: {found.path} is a {type(found.cls).__name__}, not a class")
    missing = [m for m in INTERFACE if not callable(getattr(found.cls, m, None))]
    if missing:
        raise BenchError(f"{ref!r}: class {found.path} has no {' or '.join(f'{m}()' for m in missing)}; a reranker "
                         "class needs score(pairs) -> one float per pair and describe() -> dict (docs/rerankers.md)")
    return found


def problem(ref: str) -> str | None:
    """Why a ``python:`` name cannot be used (None: it can), for the experiment's load-time check."""
    try:
        find_class(ref)
    except BenchError as exc:
        return str(exc)
    return None


def _import_error(ref: str, what: str, exc: BaseException) -> BenchError:
    return BenchError(f"{ref!r}: cannot import {what} ({type(exc).__name__}: {exc}); install it, put its folder on "
                      "PYTHONPATH, or name the file: python:path/to/file.py:ClassName")


def _attribute(ref: str, module, name: str, where: str):
    obj = module
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            public = sorted(n for n, v in vars(module).items() if isinstance(v, type) and not n.startswith("_"))
            raise BenchError(f"{ref!r}: {where} has no class {name!r}; its classes: {', '.join(public) or 'none'}")
    return obj


def _from_module(ref: str, module_name: str, name: str) -> PythonClass:
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import runs the user's code: any error means "cannot be had"
        raise _import_error(ref, f"module {module_name!r}", exc) from None
    cls = _attribute(ref, module, name, f"module {module_name!r}")
    return PythonClass(ref, cls, module_name, _source_file(module), _distribution(module_name))


def _from_file(ref: str, path: Path, name: str) -> PythonClass:
    if not path.is_file():
        raise BenchError(f"{ref!r}: no such file {str(path)!r} (a relative path in an experiment is relative to "
                         "the experiment file's folder)")
    path = path.resolve()
    # One module name per file, so that two files with one stem do not replace each other.
    module_name = f"rerank_bench_user.{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise _import_error(ref, f"file {str(path)!r}", exc) from None
    cls = _attribute(ref, module, name, f"file {str(path)!r}")
    return PythonClass(ref, cls, str(path), str(path), None)


def _from_entry_point(ref: str, name: str) -> PythonClass:
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        known = sorted(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        raise BenchError(f"{ref!r}: no installed plug-in {name!r} in the entry-point group {ENTRY_POINT_GROUP} "
                         f"(installed: {', '.join(known) or 'none'}); or name the class: python:package.module:Class")
    ep = next(iter(found))
    try:
        cls = ep.load()
    except Exception as exc:
        raise _import_error(ref, f"plug-in {name!r} ({ep.value})", exc) from None
    module_name = ep.value.partition(":")[0].strip()
    dist = f"{ep.dist.name}=={ep.dist.version}" if ep.dist is not None else None
    return PythonClass(ref, cls, module_name, _source_file(sys.modules.get(module_name)), dist)


def _source_file(module) -> str | None:
    try:
        return inspect.getsourcefile(module) if module is not None else None
    except TypeError:  # a built-in or compiled module
        return None


def _distribution(module_name: str) -> str | None:
    """"name==version" of the installed distribution whose top-level package holds the module, if any."""
    names = importlib.metadata.packages_distributions().get(module_name.partition(".")[0], [])
    if not names:
        return None
    return f"{names[0]}=={importlib.metadata.version(names[0])}"
