"""The listwise rerankers rank_llm's tables run, and the settings its commands give each.

An experiment that names one of these models (or a ``random:`` stand-in of one) without a ``head``
gets the model's head and these settings under its ``listwise`` table; what the experiment sets wins.
Sources: the commands of rank_llm's two-click-reproduction pages (``src/rank_llm/2cr/msmarco-v1-passage.yaml``,
BM25 conditions) at the commit in ``templates.RANK_LLM_COMMIT``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...models.decoders import DECODER_ARCHITECTURES
from ...models.references import RANDOM_PREFIX

#: The heads of the listwise families (``RerankerSpec.head``): generated rankings, FIRST's first-token logits.
LISTWISE_HEADS = ("listwise", "first")


@dataclass(frozen=True)
class KnownListwise:
    head: str
    settings: dict = field(default_factory=dict)
    source: str = ""


_CMD = "rank_llm 2cr/msmarco-v1-passage.yaml, condition {}: run_rank_llm.py {}"
_ZEPHYR = {"prompt_template": "rank_zephyr", "variable_passages": True}
_ZEPHYR_ARGS = "--prompt_template_path=rank_zephyr_template.yaml --context_size=4096 --variable_passages"
KNOWN_LISTWISE: dict[str, KnownListwise] = {
    "castorini/rank_zephyr_7b_v1_full": KnownListwise(
        "listwise", _ZEPHYR, _CMD.format("rank_zephyr_7b_v1_full_bm25", _ZEPHYR_ARGS)),
    "castorini/rank_vicuna_7b_v1": KnownListwise(
        "listwise", _ZEPHYR, _CMD.format("rank_vicuna_7b_v1_bm25", _ZEPHYR_ARGS)),
    "castorini/first_mistral": KnownListwise(
        "first", {"prompt_template": "rank_zephyr_alpha", "variable_passages": True},
        _CMD.format("firstmistral", "--prompt_template_path=rank_zephyr_alpha_template.yaml --context_size=4096 "
                    "--variable_passages --use_alpha --use_logits")),
    "Qwen/Qwen2.5-7B-Instruct": KnownListwise(
        "listwise", _ZEPHYR, _CMD.format("qwen_2.5_7b_inst", _ZEPHYR_ARGS)),
    "meta-llama/Llama-3.1-8B-Instruct": KnownListwise(
        "listwise", _ZEPHYR, _CMD.format("llama_3.1_8b_inst", _ZEPHYR_ARGS)),
}


def known_listwise(model: str, known_as: str | None = None) -> tuple[str | None, KnownListwise | None]:
    """The table entry for ``model``, for the published model a ``random:`` stand-in has the shape of, or
    for ``known_as`` (a saved stand-in's ``config.rerank_bench.known_as``)."""
    keys = [model, known_as]
    if model.startswith(RANDOM_PREFIX):
        keys.append(DECODER_ARCHITECTURES.get(model[len(RANDOM_PREFIX):], {}).get("known_as"))
    for key in keys:
        if key in KNOWN_LISTWISE:
            return key, KNOWN_LISTWISE[key]
    return None, None
