"""The heavy libraries, imported on first use: ``from . import lazy`` then ``lazy.torch.cuda...``.

Why: ``bench --help``, ``bench report`` and the experiment checks must start in a fraction of a
second, while torch, transformers, sentence-transformers, ranx (numba), ir_datasets, matplotlib,
pandas and scipy take seconds to import. Project modules import each other at the top (so a file
says what it uses) and reach these libraries only through this module: the import happens the first
time an attribute is read, once per process, and nothing is imported when a command never needs it.
No import hooks and no entries in ``sys.modules`` are faked: each name is a plain
``importlib.import_module`` on first access, cached in this module's globals.

Submodules that a library's own ``__init__`` imports are reached through it
(``lazy.torch.nn.functional``, ``lazy.ranx.io``); one it does not import gets its own name here
(``scipy_stats``, ``matplotlib_figure``). numpy is cheap and is imported at the top where used.
"""

from __future__ import annotations

import importlib
from typing import Any

#: attribute -> module it imports on first access
MODULES = {
    "torch": "torch",
    "transformers": "transformers",
    "transformers_convert": "transformers.convert_slow_tokenizer",
    "tokenizers": "tokenizers",
    "sentence_transformers": "sentence_transformers",
    "ranx": "ranx",
    "numba": "numba",
    "ir_datasets": "ir_datasets",
    "matplotlib": "matplotlib",
    "matplotlib_figure": "matplotlib.figure",
    "matplotlib_agg": "matplotlib.backends.backend_agg",
    "matplotlib_ticker": "matplotlib.ticker",
    "pd": "pandas",
    "scipy_stats": "scipy.stats",
    "scipy_sparse": "scipy.sparse",
    "huggingface_hub": "huggingface_hub",
    "huggingface_hub_utils": "huggingface_hub.utils",
    "bm25s": "bm25s",
    "tqdm": "tqdm.auto",
    "ray": "ray",
    "ray_data": "ray.data",
    "pyarrow_fs": "pyarrow.fs",
    "ftfy": "ftfy",
    "yaml": "yaml",
}

__all__ = sorted(MODULES)


def __getattr__(name: str) -> Any:
    try:
        target = MODULES[name]
    except KeyError:
        raise AttributeError(f"module 'bench.lazy' has no attribute {name!r}; known: {', '.join(MODULES)}") from None
    module = importlib.import_module(target)
    globals()[name] = module  # later reads are plain attribute lookups
    return module


def loaded(name: str) -> bool:
    """Whether ``name`` has been imported through this module already (tests check start-up cost with it)."""
    return name in MODULES and name in globals()
