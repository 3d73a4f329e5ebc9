"""Collections: where queries, documents and judgements come from.

`load_collection(spec)` turns a `CollectionSpec` into a `Collection` (see `base.py` for what every
collection offers). Sources: a local BEIR-layout folder (`beir.py`), an ir_datasets id
(`irds.py`), or the project's synthetic generator with known answers (`synthetic.py`). A
synthetic spec may name several languages: `expand(spec)` turns it into one spec per language, and
`load_collections(spec)` loads them all.
"""

from __future__ import annotations

from pathlib import Path

from ..config import CollectionSpec
from ..errors import BenchError
from .base import Collection, MemoryCollection, doc_text, natural_key

__all__ = ["Collection", "MemoryCollection", "doc_text", "natural_key", "load_collection", "load_collections",
           "expand"]


def expand(spec: CollectionSpec) -> list[CollectionSpec]:
    """One spec per collection: a synthetic spec with several languages becomes one per language
    (``synthetic/<lang>``); every other spec is returned as is."""
    if spec.source != "synthetic":
        return [spec]
    from .synthetic import expand_synthetic

    return expand_synthetic(spec)


def load_collection(spec: CollectionSpec, *, cache_dir: str | Path | None = None, download: bool = True) -> Collection:
    """The collection a spec names. A synthetic spec must name one language (see `expand`).

    `download=False` forbids ir_datasets downloads: data missing from its cache is then an error
    that lists the files. `cache_dir` is accepted for symmetry with the other stages; no source
    caches anything there today (ir_datasets keeps its own cache, the generator is fast).
    """
    if spec.source == "beir":
        from .beir import BeirCollection

        return BeirCollection(spec.path, spec.split, name=spec.name, language=spec.language,
                              max_queries=spec.max_queries)
    if spec.source == "ir_datasets":
        from .irds import IrDatasetsCollection

        return IrDatasetsCollection(spec.id, name=spec.name, language=spec.language, max_queries=spec.max_queries,
                                    download=download)
    if spec.source == "synthetic":
        from .synthetic import load_synthetic

        return load_synthetic(spec)
    raise BenchError(f"unknown collection source {spec.source!r}; use ir_datasets, beir or synthetic")  # pragma: no cover


def load_collections(spec: CollectionSpec, *, cache_dir: str | Path | None = None,
                     download: bool = True) -> list[Collection]:
    """All collections a spec stands for (several for a multi-language synthetic spec)."""
    return [load_collection(s, cache_dir=cache_dir, download=download) for s in expand(spec)]
