"""Cross-encoder rerankers: engines behind one ``score(pairs)`` interface.

Engines (``RerankerSpec.engine``):

* ``fast``: the project's engine (``bench.rerank.fast``): tokenizes once, sorts by length, forms
  batches by a token budget, runs a padding-free packed forward for the BERT family, keeps the
  device fed, searches the largest budget that fits in memory;
* ``transformers``: the plain loop users write (input order, pad to longest, fixed batch size);
* ``sentence-transformers``: ``CrossEncoder.predict`` (length-sorted, batch 32);
* ``flag``: FlagEmbedding's ``FlagReranker.compute_score`` logic (fp16, length-sorted, batch 128).

All return float32 logits (no sigmoid) in input order. Laid out as `bench.retrieve` is: `stage.py`
runs the stage over a collection, `engines.py` builds one engine on one device, `parallel.py` offers
the same interface over several, and `build_reranker` picks between them. Nothing here imports torch
at import time.
"""

from __future__ import annotations

from ..engine.device import resolve_devices
from ..errors import BenchError
from .common import Reranker
from .engines import HEAD_FAMILIES, QUERY_LEVEL_FAMILIES, build_single
from .parallel import DataParallelReranker
from ..models.python import is_python_reference
from ..models.trained import ensure as ensure_trained


def build_reranker(spec, *, cache_dir=None, devices=None, **options) -> Reranker:
    """The engine ``spec.engine`` on ``spec.device`` (or the ``devices`` list), data-parallel when
    there are several devices.

    ``options``: engine keywords for the variants a throughput sweep compares (fast engine:
    ``attention``, ``forward``, ``compile``, ``token_budget``, ``largest_chunk``); the baselines take none."""
    ensure_trained(spec.model, cache_dir)  # the project's own trained models are built once, here
    devs = resolve_devices(spec.device, devices)
    if len(devs) > 1 and HEAD_FAMILIES.get(spec.head) in QUERY_LEVEL_FAMILIES:
        raise BenchError(f"reranker {spec.label}: head = {spec.head!r} scores whole queries on one device; set "
                         f"device to one of {', '.join(devs)} (or spread blocks over workers with --backend ray)")
    if len(devs) > 1 and not is_python_reference(spec.model):  # a python: class is built once; it picks its devices
        return DataParallelReranker(spec, devs, cache_dir=cache_dir, options=options)
    return build_single(spec, devs[0], cache_dir=cache_dir, options=options)
