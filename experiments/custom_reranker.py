"""A reranker that is a Python class (docs/rerankers.md, "A Python class"): the share of the
query's words that the passage contains. An API client or any scoring function plugs in the same
way: `score(pairs)` and `describe()`; `experiments/custom-rerankers.toml` runs it."""

import re


class TermOverlap:
    version = "1"  # goes into every record; change it (or the file) and cached scores are not reused

    def __init__(self, min_length: int = 2):  # the experiment's `options` are its keyword arguments
        self.min_length = min_length

    def words(self, text: str) -> set[str]:
        return {w for w in re.findall(r"\w+", text.lower()) if len(w) >= self.min_length}

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        """One float per (query, passage) pair, in the order given; higher = more relevant."""
        scores = []
        for query, passage in pairs:
            asked = self.words(query)
            scores.append(len(asked & self.words(passage)) / max(len(asked), 1))
        return scores

    def describe(self) -> dict:
        """Its settings, as the record states them."""
        return {"min_length": self.min_length}
