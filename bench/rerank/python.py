"""A reranker that is a Python class (``model = "python:package.module:ClassName"``), behind the
engines' interface, so that it runs through the same rerank stage, checkpoints, records and tables.

The class is the user's (an API client, a scoring function, a model the project has no engine for);
it is built once with the experiment's ``options`` as keyword arguments. This wrapper checks what goes
in and what comes out as every engine's output is checked (one finite float per pair), counts pairs
and time, and states in the record the class's module path, version and source digest
(`bench.models.python.PythonClass.identity`) beside the class's own ``describe()``.
"""

from __future__ import annotations

import json
import time
from typing import Sequence

import numpy as np

from .. import models
from ..errors import BenchError
from ..models.python import find_class
from .common import check_pairs, check_scores


class PythonReranker:
    """The user's class, scored pair by pair as the class itself batches them."""

    engine = "python"
    #: No untimed warm-up call before the first block (`bench.rerank.stage.score_block`): the class may
    #: call a paid API, and each pair is sent once.
    warm_up = False

    def __init__(self, spec, device: str | None = None, cache_dir=None):
        self.spec = spec
        self.label = spec.label
        self.found = find_class(spec.model)
        try:
            self.impl = self.found.cls(**spec.options)
        except TypeError as exc:  # the options do not match the constructor
            raise BenchError(f"reranker {spec.model!r}: {self.found.path}(**options) failed: {exc}; `options` in the "
                             "experiment are the class's keyword arguments") from None
        self.reset_stats()

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        pairs = check_pairs(pairs)
        t0 = time.perf_counter()
        raw = self.impl.score(pairs)
        seconds = time.perf_counter() - t0
        try:
            scores = np.asarray(raw, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise BenchError(f"reranker {self.found.path}: score() returned {type(raw).__name__}; it must return one "
                             "number per pair (a list or array of floats)") from None
        if len(scores) != len(pairs):
            raise BenchError(f"reranker {self.found.path}: score() returned {len(scores)} scores for {len(pairs)} pairs; "
                             "it must return one per pair, in the order given")
        self._pairs, self._seconds, self._calls = self._pairs + len(pairs), self._seconds + seconds, self._calls + 1
        return check_scores(scores, pairs, self.label)

    def describe(self) -> dict:
        own = self.impl.describe()
        try:
            own = json.loads(json.dumps(own))
        except (TypeError, ValueError) as exc:
            raise BenchError(f"reranker {self.found.path}: describe() must return JSON-serialisable settings ({exc})") from None
        if not isinstance(own, dict):
            raise BenchError(f"reranker {self.found.path}: describe() returned {type(own).__name__}; it must return a dict")
        return {"engine": self.engine, "label": self.label, "model": models.describe(self.spec.model),
                "python": self.found.identity(), "settings": own, "scoring": {"head": "python"}}

    def stats(self) -> dict:
        """Pairs, seconds and calls; tokens and truncation are the class's business (None). Numeric
        counters of the class's own ``stats()``, if it has one, are summed into the record's
        ``diagnostics.counters``."""
        own = self.impl.stats() if callable(getattr(self.impl, "stats", None)) else {}
        return {**{k: v for k, v in (own or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
                "pairs": self._pairs, "tokens": None, "padded_tokens": None, "truncated_pairs": None,
                "truncated_queries": None, "seconds": self._seconds, "calls": self._calls}

    def reset_stats(self) -> None:
        self._pairs, self._seconds, self._calls = 0, 0.0, 0
        if callable(getattr(self.impl, "reset_stats", None)):
            self.impl.reset_stats()
