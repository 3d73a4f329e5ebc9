"""Listwise LLM rerankers as castorini/rank_llm runs them: sliding windows over each query's candidates,
each window ordered by a causal LM, by generating the ranking (RankZephyr, RankVicuna, instruction-tuned
LLMs prompted listwise: head ``listwise``) or from the first generated token's logits (FIRST: head
``first``).

Laid out as rank_llm lays out ``rerank/listwise/``: ``windows`` (the slide), ``templates`` (the
prompt templates), ``prompts`` (a window's token ids: chat template, truncation), ``parsing`` (an
answer read and repaired; FIRST's order from logits), ``engines`` (the model runs), ``known``
(the published models and their settings).
"""

from .known import KNOWN_LISTWISE, LISTWISE_HEADS, known_listwise

__all__ = ["KNOWN_LISTWISE", "LISTWISE_HEADS", "known_listwise"]
