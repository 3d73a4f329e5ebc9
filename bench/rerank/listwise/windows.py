"""Sliding windows as rank_llm runs them, and a window's new order applied to a query's ranking.

rank_llm (``ListwiseRankLLM._sliding_windows_batched_async``, the path ``rerank_batch`` takes) reranks
a query's candidates from the bottom up: the first window is the last ``window`` candidates, each
next one ``stride`` higher, the last one cut at the top of the list. Each window reads the order the
previous one left, so a query's windows run one after the other; different queries' windows at the
same step are independent (the engines batch those). Several passes run the whole slide again on
the order the previous pass left.
"""

from __future__ import annotations


def window_spans(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` positions a query of ``n`` candidates is reranked in, in rank_llm's order."""
    end = n
    start = max(end - window, 0)
    spans = []
    if end <= start:
        return spans
    while True:
        spans.append((start, end))
        next_end, next_start = end - stride, max(start - stride, 0)
        if not (next_end > next_start and start != 0):
            return spans
        start, end = next_start, next_end


def apply_window(order: list, start: int, end: int, permutation: list[int]) -> None:
    """``order[start:end]`` rearranged in place: position j gets the window's ``permutation[j]``-th item
    (rank_llm's ``receive_permutation``; the permutation is complete, as ``parsing`` repairs it)."""
    cut = order[start:end]
    order[start:end] = [cut[i] for i in permutation]
