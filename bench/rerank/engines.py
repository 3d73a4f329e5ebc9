"""One reranker engine on one device, chosen by ``spec.engine``: the one place that maps engine
names to classes (`bench.rerank.build_reranker` and the data-parallel workers both build through it)."""

from __future__ import annotations

from ..engine.common import FAST_OPTIONS
from ..engine.device import ENGINES
from ..errors import BenchError
from .baselines import CrossEncoderReranker, FlagStyleReranker, TransformersReranker
from .common import Reranker
from .decoder_baselines import DecoderCrossEncoderReranker, DecoderFlagReranker
from .decoder_fast import FastDecoderReranker
from .decoder_hf import DecoderTransformersReranker
from .fast import FastReranker
from .scoring import is_causal_lm, load_config, resolve_scoring


def build_single(spec, device: str, *, cache_dir=None, options: dict | None = None) -> Reranker:
    """One engine on one device."""
    options = dict(options or {})
    config = load_config(spec, cache_dir)
    if is_causal_lm(config):
        return _build_decoder(spec, device, cache_dir, options, config)
    resolve_scoring(spec, config)  # a decoder head or template on a classifier is an error here
    if spec.trust_remote_code and spec.engine != "transformers":
        raise BenchError(f"reranker {spec.model!r}: trust_remote_code models run only through the Hugging Face "
                         "forward: set engine = 'transformers'")
    options.pop("prefix_reuse", None)  # a throughput variant for decoders; nothing to reuse in a cross-encoder
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


def _build_decoder(spec, device: str, cache_dir, options: dict, config) -> Reranker:
    """A causal-LM reranker (``bench.rerank.scoring``) on the engine ``spec.engine``."""
    if spec.engine == "fast":
        return FastDecoderReranker(spec, device=device, cache_dir=cache_dir, config=config, **options)
    if options:
        raise BenchError(f"reranker engine {spec.engine!r} takes no options (got {sorted(options)})")
    if spec.trust_remote_code and spec.engine != "transformers":
        raise BenchError(f"reranker {spec.model!r}: trust_remote_code models run only through the Hugging Face "
                         "forward: set engine = 'transformers'")
    engines = {"transformers": DecoderTransformersReranker, "sentence-transformers": DecoderCrossEncoderReranker,
               "flag": DecoderFlagReranker}
    if spec.engine not in engines:
        raise BenchError(f"reranker engine {spec.engine!r}: use one of {', '.join(ENGINES)}")
    return engines[spec.engine](spec, device=device, cache_dir=cache_dir, config=config)
