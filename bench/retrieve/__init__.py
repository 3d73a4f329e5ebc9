"""First-stage retrieval: bi-encoder embeddings (cached), exact search, BM25, run files as candidates.

Laid out as `bench.rerank` is: `stage.py` runs the stage over a collection, `encoder.py` is the model
on one device, `parallel.py` the same interface over several, and `build_encoder` picks between them
as `bench.rerank.build_reranker` does. `search.py` and `bm25.py` are the other ways to candidates;
`bge_m3.py` runs bge-m3's dense, sparse and multi-vector heads (`kind = "bge-m3"`) and `splade.py` any
masked-LM SPLADE model (`kind = "splade"`), both with `sparse.py`'s weight shards and exact sparse
search; `fusion.py` fuses named first stages through ranx (`kind = "fusion"`).
"""

from __future__ import annotations

from ..engine.device import resolve_devices
from .encoder import Encoder, build_single
from .parallel import ShardEncoderPool


def build_encoder(spec, *, cache_dir=None, devices=None, **options) -> Encoder | ShardEncoderPool:
    """The bi-encoder of a dense first stage on ``spec.device`` (or the ``devices`` list): one
    process per device, whole corpus shards each, when there are several.

    ``options``: fast-engine keywords (``attention``, ``compile``, ``token_budget``, ``first_chunk``,
    ``largest_chunk``, and the packed forward's ``gelu_epilogue`` and ``fused_add_norm``)."""
    devs = resolve_devices(spec.device, devices)
    if len(devs) > 1:
        return ShardEncoderPool(spec, devs, cache_dir=cache_dir, options=options)
    return build_single(spec, devs[0], cache_dir=cache_dir, options=options)
