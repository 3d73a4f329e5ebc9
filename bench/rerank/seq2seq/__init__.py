"""Sequence-to-sequence rerankers (T5): monoT5 (pointwise) and duoT5 (pairwise), scored as their
authors score them (castorini's pygaggle and rank_llm).

* ``templates``: the authors' templates, the known models (``KNOWN_SEQ2SEQ``), prompt token ids with
  rank_llm's truncation (no heavy imports: ``bench.config`` reads the known heads from here);
* ``t5``: loading a T5 reranker, and the two forwards (the reference and the fast one);
* ``monot5``, ``duot5``: the engine classes that ``bench.rerank.engines.ENGINE_CLASSES`` lists.
"""

from .templates import (DUOT5_AGGREGATIONS, DUOT5_MAX_PAIRS, DUOT5_TOP_K, KNOWN_SEQ2SEQ, TEMPLATES, check_template,
                        duo_pairs, known_head)

__all__ = ["DUOT5_AGGREGATIONS", "DUOT5_MAX_PAIRS", "duo_pairs", "DUOT5_TOP_K", "KNOWN_SEQ2SEQ", "TEMPLATES", "check_template", "known_head"]
