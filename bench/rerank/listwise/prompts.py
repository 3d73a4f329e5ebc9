"""One window's prompt as token ids, built as rank_llm's ``RankListwiseOSLLM.create_prompt`` builds it.

The template's messages (``templates``) go through the model's own chat template
(``apply_chat_template(..., add_generation_prompt=True)``) and ``ftfy.fix_text``; the string is
tokenized as vLLM tokenizes a text prompt (the tokenizer's special tokens added, so a chat template
that writes BOS itself gets a second one, as in rank_llm). It must leave room for the answer: while
its tokens exceed ``context_size`` minus the answer's (``output_tokens``), every passage is cut to
fewer words (from ``max_passage_words`` down by ``max(1, excess // (4 n))``). rank_llm keeps cutting
past zero words (a negative slice then keeps all but the last words); here a window that does not
fit with empty passages is an error naming ``listwise.context_size``. FIRST appends ``[`` to the
string before tokenizing (the first generated token is then the identifier).

``shared``: how many leading ids depend on the query only (system message, the prefix with the
query): the prefix the fast FIRST engine computes once per query. Found as the ids two probe
windows of the same size (passages "a" and "b") have in common, and the window's own agreement with
them, so a prefix is only reused where the ids are identical.
"""

from __future__ import annotations

from dataclasses import dataclass

from ... import lazy
from ...errors import BenchError
from .templates import ListwiseTemplate


@dataclass(frozen=True)
class WindowPrompt:
    """One window's prompt: ids, the leading ids that depend on the query only, the words per passage
    rank_llm's cut settled on, which passages lost words, and the answer's token count."""

    ids: list[int]
    shared: int
    max_words: int
    cut: tuple[int, ...]
    output_tokens: int


def common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class ListwisePrompter:
    """(query, passages) of a window -> ``WindowPrompt``, with rank_llm's template, truncation and chat template."""

    def __init__(self, tokenizer, template: ListwiseTemplate, *, context_size: int, max_passage_words: int,
                 variable_passages: bool, first: bool):
        self.tokenizer = tokenizer
        self.template = template
        self.context_size = context_size
        self.max_passage_words = max_passage_words
        self.variable_passages = variable_passages
        self.first = first
        self._output: dict[int, int] = {}
        self._probes: dict[tuple[str, int], tuple[list[int], int]] = {}
        if not getattr(tokenizer, "chat_template", None):
            raise BenchError("listwise reranker: the model's tokenizer has no chat template; rank_llm writes every "
                             "prompt through the model's own chat template (apply_chat_template)")

    def output_tokens(self, n: int) -> int:
        """Tokens of the complete answer ``[1] > [2] > ... > [n]`` (rank_llm's ``num_output_tokens``): the
        answer's room in the context, and the tokens generation runs for."""
        if n not in self._output:
            text = " > ".join(f"[{i}]" for i in self.template.identifiers(n))
            self._output[n] = len(self.tokenizer.encode(text, add_special_tokens=False))
        return self._output[n]

    def text(self, query: str, passages, max_words: int) -> str:
        messages = self.template.messages(query, passages, max_words, variable_passages=self.variable_passages)
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      enable_thinking=False)
        return lazy.ftfy.fix_text(rendered)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text + ("[" if self.first else ""))["input_ids"]

    def fixed_tokens(self, n: int) -> int:
        """Tokens of a window of ``n`` empty passages with an empty query: what no cut can remove."""
        return len(self.tokenizer.encode(self.text("", [""] * n, 0)))

    def build(self, query: str, passages) -> WindowPrompt:
        n = len(passages)
        room = self.context_size - self.output_tokens(n)
        words = self.max_passage_words
        while True:
            text = self.text(query, passages, words)
            tokens = len(self.tokenizer.encode(text))
            if tokens <= room:
                break
            if words <= 0:
                raise BenchError(f"listwise.context_size = {self.context_size}: a window of {n} empty passages for "
                                 f"query {query[:80]!r} takes {tokens} tokens, and the answer {self.output_tokens(n)}; "
                                 "raise context_size or lower window")
            words = max(0, words - max(1, (tokens - room) // (n * 4)))
        ids = self.encode(text)
        cut = tuple(i for i, p in enumerate(passages) if len(lazy.ftfy.fix_text(p.strip()).split()) > words)
        return WindowPrompt(ids, self.shared(query, n, ids), words, cut, self.output_tokens(n))

    def shared(self, query: str, n: int, ids: list[int]) -> int:
        """Leading ids of ``ids`` that depend on the query only (at least one id is left to run)."""
        if (query, n) not in self._probes:
            a = self.encode(self.text(query, ["a"] * n, 1))
            b = self.encode(self.text(query, ["b"] * n, 1))
            self._probes[(query, n)] = (a, common_prefix(a, b))
        probe, stable = self._probes[(query, n)]
        return min(stable, common_prefix(ids, probe), len(ids) - 1)

    def forget_queries(self) -> None:
        """Drop the probes of past queries (they are per query; kept only while its windows run)."""
        self._probes.clear()
