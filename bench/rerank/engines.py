"""One reranker engine on one device, chosen by ``spec.engine``: the one place that maps engine
names to classes (`bench.rerank.build_reranker` and the data-parallel workers both build through it)."""

from __future__ import annotations

from ..engine.common import FAST_OPTIONS
from ..engine.device import ENGINES
from ..errors import BenchError
from .baselines import CrossEncoderReranker, FlagStyleReranker, TransformersReranker
from .common import Reranker
from .fast import FastReranker


def build_single(spec, device: str, *, cache_dir=None, options: dict | None = None) -> Reranker:
    """One engine on one device."""
    options = dict(options or {})
    if spec.engine == "fast":
        unknown = sorted(set(options) - set(FAST_OPTIONS))
        if unknown:
            raise BenchError(f"fast engine: unknown option(s) {unknown}; known: {', '.join(FAST_OPTIONS)}")
        return FastReranker(spec, device=device, cache_dir=cache_dir, **options)
    if options:
        raise BenchError(f"reranker engine {spec.engine!r} takes no options (got {sorted(options)})")
    if spec.engine == "transformers":
        return TransformersReranker(spec, device=device, cache_dir=cache_dir)
    if spec.engine == "sentence-transformers":
        return CrossEncoderReranker(spec, device=device, cache_dir=cache_dir)
    if spec.engine == "flag":
        return FlagStyleReranker(spec, device=device, cache_dir=cache_dir)
    raise BenchError(f"reranker engine {spec.engine!r}: use one of {', '.join(ENGINES)}")
