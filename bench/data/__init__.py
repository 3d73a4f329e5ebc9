"""Collections: where queries, documents and judgements come from.

`load_collection(spec)` turns a `CollectionSpec` into a `Collection` (see `base.py` for what every
collection offers). Sources: a local BEIR-layout folder (`beir.py`), an ir_datasets id
(`irds.py`), or the project's synthetic generator with known answers (`synthetic.py`). A
synthetic spec, or an ir_datasets spec with ``languages``, may name several languages: `expand(spec)`
turns it into one spec per language, and `load_collections(spec)` loads them all. `select_datasets`
keeps the datasets of an experiment that a run asks for by label (`bench run --datasets`).
"""

from __future__ import annotations

from pathlib import Path

from ..config import LANG, CollectionSpec, Experiment
from ..errors import BenchError
from .base import Collection, MemoryCollection, doc_text, natural_key
from .beir import BeirCollection
from .irds import IrDatasetsCollection
from .synthetic import expand_synthetic, load_synthetic

__all__ = ["Collection", "MemoryCollection", "doc_text", "natural_key", "load_collection", "load_collections",
           "expand", "select_datasets"]


def expand(spec: CollectionSpec) -> list[CollectionSpec]:
    """One spec per collection: a synthetic spec with several languages becomes one per language
    (``synthetic/<lang>``), an ir_datasets spec with ``languages`` one per language (its id with
    ``{lang}`` filled in; a ``name`` becomes ``<name>/<lang>``); every other spec is returned as is."""
    if spec.source == "synthetic":
        return expand_synthetic(spec)
    if spec.languages:
        return [spec.model_copy(update={"id": spec.id.replace(LANG, lang), "languages": None,
                                        "name": f"{spec.name}/{lang}" if spec.name else None})
                for lang in spec.languages]
    return [spec]


def select_datasets(exp: Experiment, labels: list[str], source: str = "experiment") -> Experiment:
    """``exp`` with only the datasets (expanded, in the experiment's order) whose label is in
    ``labels``; a label that matches none is an error listing the labels there are."""
    specs = [s for spec in exp.datasets for s in expand(spec)]
    available = [s.label for s in specs]
    unknown = [label for label in dict.fromkeys(labels) if label not in available]
    if unknown:
        raise BenchError(f"{source}: no dataset labelled {', '.join(map(repr, unknown))}; "
                         f"its datasets are: {', '.join(available)}")
    return exp.model_copy(update={"datasets": [s for s in specs if s.label in labels]})


def load_collection(spec: CollectionSpec, *, cache_dir: str | Path | None = None, download: bool = True) -> Collection:
    """The collection a spec names. A synthetic spec must name one language (see `expand`).

    `download=False` forbids ir_datasets downloads: data missing from its cache is then an error
    that lists the files. `cache_dir` is accepted for symmetry with the other stages; no source
    caches anything there today (ir_datasets keeps its own cache, the generator is fast).
    """
    if spec.source == "beir":
        return BeirCollection(spec.path, spec.split, name=spec.name, language=spec.language,
                              max_queries=spec.max_queries)
    if spec.source == "ir_datasets":
        return IrDatasetsCollection(spec.id, name=spec.name, language=spec.language, max_queries=spec.max_queries,
                                    download=download)
    if spec.source == "synthetic":
        return load_synthetic(spec)
    raise BenchError(f"unknown collection source {spec.source!r}; use ir_datasets, beir or synthetic")  # pragma: no cover


def load_collections(spec: CollectionSpec, *, cache_dir: str | Path | None = None,
                     download: bool = True) -> list[Collection]:
    """All collections a spec stands for (several for a multi-language synthetic spec)."""
    return [load_collection(s, cache_dir=cache_dir, download=download) for s in expand(spec)]
