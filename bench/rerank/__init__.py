"""Cross-encoder rerankers: engines behind one ``score(pairs)`` interface.

Engines (``RerankerSpec.engine``):

* ``fast``: the project's engine (``bench.rerank.fast``): tokenizes once, sorts by length, forms
  batches by a token budget, runs a padding-free packed forward for the BERT family, keeps the
  device fed, searches the largest budget that fits in memory;
* ``transformers``: the plain loop users write (input order, pad to longest, fixed batch size);
* ``sentence-transformers``: ``CrossEncoder.predict`` (length-sorted, batch 32);
* ``flag``: FlagEmbedding's ``FlagReranker.compute_score`` logic (fp16, length-sorted, batch 128).

All return float32 logits (no sigmoid) in input order; several devices run data-parallel
(``bench.rerank.parallel``). Nothing here imports torch at import time.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from ..engine.common import FAST_OPTIONS
from ..engine.device import ENGINES
from ..errors import BenchError


@runtime_checkable
class Reranker(Protocol):
    """What every engine offers."""

    label: str

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """float32 logits, one per (query, passage) pair, in input order."""

    def describe(self) -> dict:
        """Engine, model, resolved dtype and device, batching actually used, attention path, lengths."""

    def stats(self) -> dict:
        """Counters since construction or ``reset_stats``: pairs, tokens, padded_tokens,
        truncated_pairs, truncated_queries, seconds."""

    def reset_stats(self) -> None: ...


def build_reranker(spec, *, cache_dir=None, devices=None, **options) -> Reranker:
    """The engine ``spec.engine`` on ``spec.device`` (or the ``devices`` list), data-parallel when
    there are several devices.

    ``options``: engine keywords for the variants a throughput sweep compares (fast engine:
    ``attention``, ``forward``, ``compile``, ``token_budget``, ``largest_chunk``); the baselines take none."""
    from ..engine.device import resolve_devices

    devs = resolve_devices(spec.device, devices)
    if len(devs) > 1:
        from .parallel import DataParallelReranker

        return DataParallelReranker(spec, devs, cache_dir=cache_dir, options=options)
    return build_single(spec, devs[0], cache_dir=cache_dir, options=options)


def build_single(spec, device: str, *, cache_dir=None, options: dict | None = None) -> Reranker:
    """One engine on one device."""
    options = dict(options or {})
    if spec.engine == "fast":
        from .fast import FastReranker

        unknown = sorted(set(options) - set(FAST_OPTIONS))
        if unknown:
            raise BenchError(f"fast engine: unknown option(s) {unknown}; known: {', '.join(FAST_OPTIONS)}")
        return FastReranker(spec, device=device, cache_dir=cache_dir, **options)
    if options:
        raise BenchError(f"reranker engine {spec.engine!r} takes no options (got {sorted(options)})")
    if spec.engine == "transformers":
        from .baselines import TransformersReranker

        return TransformersReranker(spec, device=device, cache_dir=cache_dir)
    if spec.engine == "sentence-transformers":
        from .baselines import CrossEncoderReranker

        return CrossEncoderReranker(spec, device=device, cache_dir=cache_dir)
    if spec.engine == "flag":
        from .baselines import FlagStyleReranker

        return FlagStyleReranker(spec, device=device, cache_dir=cache_dir)
    raise BenchError(f"reranker engine {spec.engine!r}: use one of {', '.join(ENGINES)}")
