"""Decoder rerankers' prompts: (query, passage) pairs -> token ids, built as each model's authors build them.

A decoder reranker reads one prompt per pair and is scored at its last position. Each template here
reproduces its authors' code token for token, including how a long pair is cut:

* ``qwen3`` (Qwen/Qwen3-Reranker model card): ``prefix + tokenizer("<Instruct>: {instruction}\\n<Query>:
  {query}\\n<Document>: {doc}", truncation, max_length = max_length - len(prefix) - len(suffix)) + suffix``,
  prefix = system prompt and user turn start, suffix = assistant turn with the empty think block. The
  middle is one text cut at its end: the document first, the query only when nothing of it is left.
* ``bge-gemma`` (FlagEmbedding ``inference/reranker/decoder_only/base.py``, ``BaseLLMReranker``):
  ``tokenizer("A: {query}")`` cut to ``query_max_length`` (default ``max_length * 3 // 4``),
  ``tokenizer("B: {passage}")`` cut to ``max_length``, then ``[bos] + query`` and ``sep + passage`` joined
  by ``prepare_for_model(truncation="only_second", max_length = max_length + len(sep) + len(prompt))``, then
  ``sep + prompt`` appended.
* ``mxbai-v2`` (mixedbread-ai/mxbai-rerank ``mxbai_rerank_v2.py``, ``MxbaiRerankV2.prepare_inputs``):
  ``"query: {query}"`` (after ``"instruction: {instruction}\\n"`` when given) cut to ``max_length * 3 // 4``,
  ``"document: {passage}"`` cut to ``min(model_max_length - len(query), max_length)``, joined with ``sep``
  by ``only_second`` truncation to ``max_length``, wrapped in the chat prefix, ``sep + task prompt`` and
  the chat suffix.
* a custom template: a string with ``{query}`` and ``{passage}`` (and optionally ``{instruction}``);
  the text before ``{passage}`` (cut to ``query_max_length`` when given), the passage and the text after
  it are tokenized separately without special tokens (write BOS or chat tokens literally), and the
  passage is cut to fit ``max_length``.

Every sequence also says how many of its leading tokens depend on the query only (``shared``): the
prefix that the fast engine computes once per query (``bench.engine.decoder``).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Sequence

from ..errors import BenchError

QWEN3_PREFIX = ('<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the '
                'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n')
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
GEMMA_PROMPT = ("Given a query A and a passage B, determine whether the passage contains an answer to the query by "
                "providing a prediction of either 'Yes' or 'No'.")
MXBAI_PREFIX = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\n")
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
MXBAI_TASK = ("You are a search relevance expert who evaluates how well documents match search queries. For each "
              "query-document pair, carefully analyze the semantic relationship between them, then provide your "
              "binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:")
TEMPLATES = ("qwen3", "bge-gemma", "mxbai-v2")


#: The placeholders a custom template may hold; any other ``{word}`` is a typo, not text for the model.
PLACEHOLDERS = ("query", "passage", "instruction")
#: ``{word}``: what a placeholder looks like (other braces, e.g. JSON in a prompt, are text)
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
#: `template_kind` of a custom template that holds ``{instruction}``
CUSTOM, CUSTOM_WITH_INSTRUCTION = "custom", "custom {instruction}"


def template_kind(template: str) -> str:
    """A known template's name, else `CUSTOM` or `CUSTOM_WITH_INSTRUCTION` (which fields act depends on it)."""
    if template in TEMPLATES:
        return template
    return CUSTOM_WITH_INSTRUCTION if "{instruction}" in template else CUSTOM


def check_custom_template(template: str) -> None:
    """A custom template must hold one ``{query}`` and one ``{passage}`` slot, the query first, and no
    other ``{word}`` than the valid placeholders."""
    if template in TEMPLATES:
        return
    unknown = sorted({m for m in _PLACEHOLDER.findall(template) if m not in PLACEHOLDERS})
    if unknown:
        close = {u: difflib.get_close_matches(u, PLACEHOLDERS, n=1) for u in unknown}
        hints = "".join(f" ({{{u}}}: did you mean {{{c[0]}}}?)" for u, c in close.items() if c)
        raise ValueError(f"template {template[:60]!r}: unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}"
                         f"{hints}; the valid placeholders are {', '.join('{' + v + '}' for v in PLACEHOLDERS)}")
    missing = [slot for slot in ("{query}", "{passage}") if template.count(slot) != 1]
    if missing:
        raise ValueError(f"template {template[:60]!r}: needs exactly one {' and one '.join(missing)} "
                         f"(or one of the known templates: {', '.join(TEMPLATES)})")
    if template.index("{query}") > template.index("{passage}"):
        raise ValueError("template: {query} must come before {passage} (the query is the shared prefix)")


@dataclass
class DecoderEncoded:
    """Prompts of a list of pairs, in input order: ids, how many leading ids depend on the query only,
    and truncation counts (as ``bench.engine.tokens.Encoded``)."""

    seqs: list[list[int]]
    shared: list[int]
    hit_max: int = 0
    hit_query_max: int = 0
    types = None


def _ids(tokenizer, texts, limit=None, special=False):
    if not texts:
        return []
    kw = dict(truncation=True, max_length=limit) if limit is not None else {}
    return tokenizer(list(texts), add_special_tokens=special, return_attention_mask=False,
                     return_token_type_ids=False, **kw)["input_ids"]


def _only_second(first: list[int], second: list[int], max_length: int) -> tuple[list[int], bool]:
    """``prepare_for_model(first, second, truncation="only_second", max_length)``'s second part: cut at its
    end; when even all of it cannot make room, transformers logs an error and cuts nothing (so here)."""
    over = len(first) + len(second) - max_length
    if over <= 0:
        return second, False
    if over >= len(second):
        return second, True
    return second[:-over], True


class PromptTokenizer:
    """(query, passage) pairs -> ``DecoderEncoded`` with ``template``; ``max_length``,
    ``query_max_length`` and ``instruction`` as the template's authors use them (see module doc)."""

    def __init__(self, tokenizer, template: str, max_length: int, *, query_max_length: int | None = None,
                 instruction: str | None = None):
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.query_max_length = query_max_length
        self.instruction = instruction
        enc = lambda text: _ids(tokenizer, [text])[0]  # noqa: E731
        if query_max_length is not None and template in ("qwen3", "mxbai-v2"):
            raise BenchError(f"query_max_length: the {template!r} template cuts queries as its authors do "
                             "(qwen3: the whole text at its end; mxbai-v2: to max_length * 3 // 4); remove the field")
        if template == "qwen3":
            self.prefix, self.suffix = enc(QWEN3_PREFIX), enc(QWEN3_SUFFIX)
            self.room = max_length - len(self.prefix) - len(self.suffix)
            self.instruction = instruction if instruction is not None else QWEN3_INSTRUCTION
        elif template == "bge-gemma":
            self.sep, self.prompt = enc("\n"), enc(instruction if instruction is not None else GEMMA_PROMPT)
            self.query_limit = query_max_length or max_length * 3 // 4
            self.encode_max = max_length + len(self.sep) + len(self.prompt)
            bos = tokenizer.bos_token_id
            self.bos = [bos] if bos is not None and bos != tokenizer.pad_token_id else []
            self.room = max_length
        elif template == "mxbai-v2":
            self.prefix, self.suffix = enc(MXBAI_PREFIX), enc(MXBAI_SUFFIX)
            self.sep, self.task = enc("\n"), enc(MXBAI_TASK)
            fixed = len(self.prefix) + len(self.task) + len(self.suffix) + len(self.sep)
            self.model_max = int(tokenizer.model_max_length)
            self.room = min(max_length, self.model_max - fixed)  # mxbai shrinks max_length to fit the model
            self.query_limit = self.room * 3 // 4
        else:
            check_custom_template(template)
            head, tail = template.split("{passage}")
            self.head, self.tail = head, enc(tail.replace("{instruction}", instruction or ""))
            self.room = max_length - len(self.tail)
        if self.room < 2:
            raise BenchError(f"max_length = {max_length} leaves no room for a query and a passage in the "
                             f"{template!r} template; raise max_length")

    @property
    def truncation(self) -> str:
        """How a long pair is cut, in words, for the record."""
        return {"qwen3": "the <Instruct>/<Query>/<Document> text cut at its end to max_length minus the "
                         "system prefix and assistant suffix (passage first, then query)",
                "bge-gemma": f"query to {getattr(self, 'query_limit', 0)} tokens, passage to max_length, then "
                             "only_second to max_length + sep + prompt",
                "mxbai-v2": f"query to {getattr(self, 'query_limit', 0)} tokens, then only_second to "
                            f"{self.room} tokens inside the chat wrapper"}.get(
            self.template, "passage cut to fit max_length beside the template's other tokens")

    def __call__(self, pairs: Sequence[tuple[str, str]]) -> DecoderEncoded:
        build = {"qwen3": self._qwen3, "bge-gemma": self._gemma, "mxbai-v2": self._mxbai}.get(self.template,
                                                                                             self._custom)
        return build(list(pairs))

    def _qwen3(self, pairs) -> DecoderEncoded:
        texts, starts = [], []
        for q, p in pairs:
            head = f"<Instruct>: {self.instruction}\n<Query>: {q}\n<Document>:"
            texts.append(f"{head} {p}")
            starts.append(len(head))
        enc = self.tokenizer(texts, add_special_tokens=True, return_offsets_mapping=True, return_attention_mask=False,
                             return_token_type_ids=False)
        seqs, shared, hit = [], [], 0
        for ids, offsets, start in zip(enc["input_ids"], enc["offset_mapping"], starts):
            if len(ids) > self.room:
                hit += 1
                ids, offsets = ids[:self.room], offsets[:self.room]
            n = 0
            while n < len(ids) and offsets[n][1] <= start:
                n += 1
            seqs.append(self.prefix + ids + self.suffix)
            shared.append(len(self.prefix) + n)
        return DecoderEncoded(seqs, shared, hit, 0)

    def _gemma(self, pairs) -> DecoderEncoded:
        queries = list(dict.fromkeys(q for q, _ in pairs))
        passages = list(dict.fromkeys(p for _, p in pairs))
        q_ids = dict(zip(queries, _ids(self.tokenizer, [f"A: {q}" for q in queries], self.query_limit)))
        p_ids = dict(zip(passages, _ids(self.tokenizer, [f"B: {p}" for p in passages], self.max_length)))
        seqs, shared, hit, hit_q = [], [], 0, 0
        for q, p in pairs:
            first = self.bos + q_ids[q]
            hit_q += len(q_ids[q]) >= self.query_limit
            second, cut = _only_second(first, self.sep + p_ids[p], self.encode_max)
            hit += cut or len(p_ids[p]) >= self.max_length
            seqs.append(first + second + self.sep + self.prompt)
            shared.append(len(first) + min(len(self.sep), len(second)))
        return DecoderEncoded(seqs, shared, hit, hit_q)

    def _mxbai(self, pairs) -> DecoderEncoded:
        lead = f"instruction: {self.instruction}\n" if self.instruction else ""
        queries = list(dict.fromkeys(q for q, _ in pairs))
        q_ids = dict(zip(queries, _ids(self.tokenizer, [f"{lead}query: {q}" for q in queries], self.query_limit)))
        seqs, shared, hit, hit_q = [], [], 0, 0
        for q, p in pairs:
            qi = q_ids[q]
            hit_q += len(qi) >= self.query_limit
            limit = min(self.model_max - len(qi), self.room)
            di = _ids(self.tokenizer, [f"document: {p}"], limit)[0]
            second, cut = _only_second(qi, self.sep + di, self.room)
            hit += cut or len(di) >= limit
            seqs.append(self.prefix + qi + second + self.sep + self.task + self.suffix)
            shared.append(len(self.prefix) + len(qi) + min(len(self.sep), len(second)))
        return DecoderEncoded(seqs, shared, hit, hit_q)

    def _custom(self, pairs) -> DecoderEncoded:
        queries = list(dict.fromkeys(q for q, _ in pairs))
        passages = list(dict.fromkeys(p for _, p in pairs))
        heads = [self.head.replace("{instruction}", self.instruction or "").replace("{query}", q) for q in queries]
        limit = min(self.query_max_length or self.room - 1, self.room - 1)
        h_ids = dict(zip(queries, _ids(self.tokenizer, heads, limit)))
        p_ids = dict(zip(passages, _ids(self.tokenizer, passages)))
        seqs, shared, hit, hit_q = [], [], 0, 0
        for q, p in pairs:
            head = h_ids[q]
            hit_q += len(head) >= limit
            keep = self.room - len(head)
            passage = p_ids[p]
            if len(passage) > keep:
                hit += 1
                passage = passage[:keep]
            seqs.append(head + passage + self.tail)
            shared.append(len(head))
        return DecoderEncoded(seqs, shared, hit, hit_q)
