"""What a system is called: a system is a pipeline, first stage » reranker.

One place decides every label a table, a record or a comparison shows, so that two pipelines never
share a name. A reranked system is named after its reranker alone while the experiment has one
first stage (nothing to tell apart), and `first stage » reranker` as soon as it has several
(`bm25 » bge-reranker-large`, `bge-m3 » bge-reranker-large`). First stages are named by their key in
``[first_stages]`` (or their ``name``), rerankers by their ``name`` (or the last part of the model):
both are unique within an experiment, so the pipeline labels are too. A reranker that reranks another
reranker's output (`rerank_of`) names the chain: `monot5 » duot5`, and `bm25 » monot5 » duot5` with
several first stages.

Plain strings in, plain strings out: config, pipeline, report and compare all use it.
"""

from __future__ import annotations

#: Between the first stage and the reranker of a pipeline's label.
ARROW = " » "
#: Before a first stage's label in tables, where it stands beside reranked systems.
FIRST_STAGE_PREFIX = "first stage: "
#: After the label of a system whose model has random weights.
UNTRAINED_MARK = " (untrained)"
#: After the label of a system whose reranker the project trained on its own synthetic collection.
SYNTHETIC_MARK = " (trained on synthetic data)"


def pipeline_label(first_stage: str | None, reranker: str | None, *, qualify: bool, via: list[str] = ()) -> str:
    """The label of a system: the first stage alone, or its reranker after the rerankers it reranks
    (`via`, first to last), prefixed by the first stage when `qualify` (several first stages)."""
    if reranker is None:
        if first_stage is None:
            raise ValueError("a system needs a first stage or a reranker")
        return first_stage
    return ARROW.join([*([first_stage] if qualify and first_stage else []), *via, reranker])


def display_label(label: str, *, first_stage_only: bool, untrained: bool, synthetic: bool = False) -> str:
    """A system's name in tables: first stages say so, random-weight models and models trained on
    the synthetic collection are marked."""
    text = f"{FIRST_STAGE_PREFIX}{label}" if first_stage_only else label
    return text + (UNTRAINED_MARK if untrained else SYNTHETIC_MARK if synthetic else "")


def qualified(label: str, first_stage: str | None) -> str:
    """`label` with the first stage in front, unless it already names it (records written before
    labels were pipelines carry the reranker's name alone)."""
    if not first_stage or label == first_stage or label.startswith(f"{first_stage}{ARROW}"):
        return label
    return f"{first_stage}{ARROW}{label}"
