"""One reranker engine on one device: the one place that maps (family, engine) to a class
(`bench.rerank.build_reranker` and the data-parallel workers both build through it).

A reranker's *family* says how it scores (a cross-encoder's classification head, a causal LM's
yes/no tokens, monoT5's true/false step, duoT5's pairs, ...): a family-selecting head decides it
(`HEAD_FAMILIES`), else the model's config; its *engine* says how the forward runs
(the project's `fast` engine or a faithful baseline). Adding a family or an engine is one row in
`ENGINE_CLASSES`; nothing else in the package names the classes.
"""

from __future__ import annotations

from ..engine.common import FAST_OPTIONS
from ..engine.device import ENGINES
from ..errors import BenchError
from ..models.python import is_python_reference
from .baselines import CrossEncoderReranker, FlagStyleReranker, TransformersReranker
from .common import Reranker
from .decoder_baselines import DecoderCrossEncoderReranker, DecoderFlagReranker
from .decoder_fast import FastDecoderReranker
from .decoder_hf import DecoderTransformersReranker
from .fast import FastReranker
from .python import PythonReranker
from .listwise import known_listwise
from .listwise.engines import FirstFast, FirstReference, GenerationListwise
from .scoring import is_causal_lm, load_config, resolve_scoring
from .seq2seq.duot5 import DuoT5Fast, DuoT5Transformers
from .seq2seq.monot5 import MonoT5Fast, MonoT5Transformers
from .seq2seq.t5 import is_seq2seq

#: (family, engine) -> the class that scores it. Only the `fast` engines take keyword options
#: (the variants a throughput sweep compares, `FAST_OPTIONS`).
ENGINE_CLASSES: dict[tuple[str, str], type[Reranker]] = {
    ("cross-encoder", "fast"): FastReranker,
    ("cross-encoder", "transformers"): TransformersReranker,
    ("cross-encoder", "sentence-transformers"): CrossEncoderReranker,
    ("cross-encoder", "flag"): FlagStyleReranker,
    ("decoder", "fast"): FastDecoderReranker,
    ("decoder", "transformers"): DecoderTransformersReranker,
    ("decoder", "sentence-transformers"): DecoderCrossEncoderReranker,
    ("decoder", "flag"): DecoderFlagReranker,
    ("monot5", "fast"): MonoT5Fast,
    ("monot5", "transformers"): MonoT5Transformers,
    ("duot5", "fast"): DuoT5Fast,
    ("duot5", "transformers"): DuoT5Transformers,
    ("python", "python"): PythonReranker,  # python:module:Class, its own engine (bench.models.python)
    ("listwise", "transformers"): GenerationListwise,
    ("first", "fast"): FirstFast,
    ("first", "transformers"): FirstReference,
}
#: Heads that choose their family whatever the model's config says (the config decides the others).
HEAD_FAMILIES = {"monot5": "monot5", "duot5": "duot5", "listwise": "listwise", "first": "first"}
#: Families whose rerankers score whole queries (`rerank_queries`): one device each (a data-parallel
#: split of a block's pairs would cut a query in two).
QUERY_LEVEL_FAMILIES = {"duot5", "listwise", "first"}
#: The families that take the model's config as a keyword (read once here, not again in the class).
TAKES_CONFIG = {"decoder", "monot5", "duot5", "listwise", "first"}
#: Options that mean something to one family only, dropped for the others (a throughput variant
#: list may hold them for every model it sweeps).
FAMILY_ONLY_OPTIONS = {"prefix_reuse": {"decoder", "first"}}


def family_of(spec, config) -> str:
    """The reranker family: the one a family-selecting head names (the experiment's, or a known model's),
    else from the config (a causal LM is a decoder reranker, anything else a cross-encoder)."""
    head = spec.head
    if head is None:
        _, known = known_listwise(spec.model, (getattr(config, "rerank_bench", None) or {}).get("known_as"))
        head = known.head if known else None
    if head in HEAD_FAMILIES:
        return HEAD_FAMILIES[head]
    if is_seq2seq(config):
        raise BenchError(f"reranker {spec.model!r} is a sequence-to-sequence model ({config.architectures}): set "
                         f"head = 'monot5' (each pair on its own) or 'duot5' (pairs of candidates)")
    return "decoder" if is_causal_lm(config) else "cross-encoder"


def build_single(spec, device: str, *, cache_dir=None, options: dict | None = None) -> Reranker:
    """One engine on one device."""
    options = dict(options or {})
    if is_python_reference(spec.model):  # no config to read: the class is the model and the engine
        return ENGINE_CLASSES[("python", "python")](spec, device=device, cache_dir=cache_dir)
    config = load_config(spec, cache_dir)
    family = family_of(spec, config)
    if family == "cross-encoder":
        resolve_scoring(spec, config)  # a decoder head or template on a classifier is an error here
    if spec.trust_remote_code and spec.engine != "transformers":
        raise BenchError(f"reranker {spec.model!r}: trust_remote_code models run only through the Hugging Face "
                         "forward: set engine = 'transformers'")
    for name, families in FAMILY_ONLY_OPTIONS.items():
        if family not in families:
            options.pop(name, None)
    cls = ENGINE_CLASSES.get((family, spec.engine))
    if cls is None:
        engines = [e for f, e in ENGINE_CLASSES if f == family]
        raise BenchError(f"reranker engine {spec.engine!r} does not run a {family} ({spec.model!r}): "
                         f"use one of {', '.join(engines or ENGINES)}")
    if spec.engine == "fast":
        unknown = sorted(set(options) - set(FAST_OPTIONS))
        if unknown:
            raise BenchError(f"fast engine: unknown option(s) {unknown}; known: {', '.join(FAST_OPTIONS)}")
    elif options:
        raise BenchError(f"reranker engine {spec.engine!r} takes no options (got {sorted(options)})")
    if family in TAKES_CONFIG:
        return cls(spec, device=device, cache_dir=cache_dir, config=config, **options)
    return cls(spec, device=device, cache_dir=cache_dir, **options)
