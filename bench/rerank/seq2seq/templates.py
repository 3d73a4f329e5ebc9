"""monoT5's and duoT5's prompts: the authors' templates, the known models, and the token ids of every
prompt built once for both engines, truncated as rank_llm truncates them.

Templates (rank_llm ``prompt_templates/monot5_template.yaml`` and ``duot5_template.yaml``; pygaggle
``T5BatchTokenizer`` and ``T5DuoBatchTokenizer``)::

    monot5: Query: {query} Document: {passage} Relevant:
    duot5:  Query: {query} Document0: {passage0} Document1: {passage1} Relevant:

Truncation (rank_llm ``MonoT5.create_prompt`` / ``DuoT5.create_prompt`` and their inference
handlers): 64 tokens of the ``max_length`` (rank_llm's context size, 512) are reserved for the output;
the passage gets what the template with the query leaves, less one for the ``</s>`` its own
``encode`` counts (duoT5: half of it for each passage), so ``Relevant:`` is always kept. rank_llm
sends every passage through an encode/decode round trip and drops ``<unk>``; here a cut passage
makes that round trip (its cut ids decoded, then tokenized again, as rank_llm's prompt is), and an
uncut one keeps its ids less ``<unk>`` (the same, but for decode's own clean-ups). ``[n]`` in texts becomes ``(n)`` (rank_llm ``_replace_number``). pygaggle
cuts the whole prompt at 512 tokens instead (dropping ``Relevant:`` from long inputs).

The template's text between the slots, the query and each passage are tokenized separately and
joined: T5's sentencepiece splits at spaces, so for a template with spaces around its slots the ids
equal the tokenizer's own encoding of the whole prompt (tests check it on real text).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The authors' templates by head.
TEMPLATES = {
    "monot5": "Query: {query} Document: {passage} Relevant:",
    "duot5": "Query: {query} Document0: {passage0} Document1: {passage1} Relevant:",
}
#: Each head's slots, in the order they must appear.
SLOTS = {"monot5": ("{query}", "{passage}"), "duot5": ("{query}", "{passage0}", "{passage1}")}
#: Tokens rank_llm keeps free for the output within the context size (MonoT5/DuoT5.create_prompt).
RESERVED_FOR_OUTPUT = 64
#: rank_llm's recommended k for duoT5 (rank_llm's own README, section DuoT5: "we recommend reranking top 50 candidates").
DUOT5_TOP_K = 50
#: duoT5 pairs per query allowed without raising ``max_pairs_per_query``: 50 · 49.
DUOT5_MAX_PAIRS = DUOT5_TOP_K * (DUOT5_TOP_K - 1)
#: How duoT5's pair probabilities become a score per candidate: ``sym-sum`` over every ordered pair (the
#: paper and pygaggle), or ``rank_llm`` (each unordered pair i < j once: p to i, 1 - p to j; rank_llm's
#: ``PairwiseRankLLM.rerank_batch``, whose 2CR rows the registry cites).
DUOT5_AGGREGATIONS = ("sym-sum", "rank_llm")


def duo_pairs(k: int, aggregation: str | None) -> int:
    """The pairs duoT5 scores per query of k candidates under `aggregation`."""
    return k * (k - 1) // (2 if aggregation == "rank_llm" else 1)


@dataclass(frozen=True)
class KnownSeq2Seq:
    """How the authors score a published T5 reranker: head, the two answer words, context size."""

    head: str
    true: str
    false: str
    max_length: int
    source: str


_CASTORINI = "pygaggle rerank/transformer.py prediction_tokens ('▁false', '▁true'); rank_llm {cls} (context_size 512)"
_MONO = KnownSeq2Seq("monot5", "true", "false", 512, _CASTORINI.format(cls="MonoT5"))
_DUO = KnownSeq2Seq("duot5", "true", "false", 512, _CASTORINI.format(cls="DuoT5"))
#: hub id -> how its authors score it.
KNOWN_SEQ2SEQ: dict[str, KnownSeq2Seq] = {
    "castorini/monot5-base-msmarco": _MONO,
    "castorini/monot5-base-msmarco-10k": _MONO,
    "castorini/monot5-large-msmarco": _MONO,
    "castorini/monot5-large-msmarco-10k": _MONO,
    "castorini/monot5-3b-msmarco": _MONO,
    "castorini/monot5-3b-msmarco-10k": _MONO,
    "castorini/duot5-base-msmarco": _DUO,
    "castorini/duot5-base-msmarco-10k": _DUO,
    "castorini/duot5-3b-msmarco": _DUO,
    "castorini/duot5-3b-msmarco-10k": _DUO,
}


def known_head(model: str) -> str | None:
    """The head of a known T5 reranker, by hub id or by the ``random:`` model that stands for it."""
    if model in KNOWN_SEQ2SEQ:
        return KNOWN_SEQ2SEQ[model].head
    name = model.partition("random:")[2]
    return KNOWN_SEQ2SEQ[f"castorini/{name}"].head if f"castorini/{name}" in KNOWN_SEQ2SEQ else None


def check_template(template: str | None, head: str) -> None:
    """A template for ``head``: its name, or a string with each of the head's slots once, in order
    (a ValueError naming the field otherwise)."""
    if template is None or template == head:
        return
    slots = SLOTS[head]
    missing = [s for s in slots if template.count(s) != 1]
    if missing:
        raise ValueError(f"template {template[:80]!r}: head = {head!r} needs exactly one each of "
                         f"{', '.join(slots)} (missing or repeated: {', '.join(missing)}), or template = {head!r}")
    if [template.index(s) for s in slots] != sorted(template.index(s) for s in slots):
        raise ValueError(f"template {template[:80]!r}: the slots must come in the order {', '.join(slots)}")


def replace_numbers(text: str) -> str:
    """rank_llm's ``_replace_number``: ``[12]`` becomes ``(12)``."""
    return re.sub(r"\[(\d+)\]", r"(\1)", text)


@dataclass
class Prompts:
    """Token ids of prompts in input order, with the truncation counts of the pairs they hold."""

    seqs: list[list[int]]
    hit_max: int = 0
    hit_query_max: int = 0


class Seq2SeqPrompts:
    """Builds monoT5 or duoT5 inputs as token ids (module docstring: template, truncation)."""

    def __init__(self, tokenizer, head: str, template: str | None, max_length: int,
                 query_max_length: int | None = None):
        self.tokenizer = tokenizer
        self.head = head
        self.template = TEMPLATES[head] if template in (None, head) else template
        check_template(self.template, head)
        self.max_length = max_length
        self.query_max_length = query_max_length
        self.eos = tokenizer.eos_token_id
        self.unk = tokenizer.unk_token_id
        pieces = re.split("(" + "|".join(re.escape(s) for s in SLOTS[head]) + ")", self.template)
        self.literals = [self._ids([p.strip()])[0] if p.strip() else [] for p in pieces[::2]]
        self.fixed = sum(map(len, self.literals)) + 1  # the template's own tokens and </s>
        if self.fixed + 2 * len(SLOTS[head]) > max_length - RESERVED_FOR_OUTPUT:
            raise ValueError(f"template {self.template[:80]!r} takes {self.fixed} tokens; with {RESERVED_FOR_OUTPUT} "
                             f"reserved for the output, max_length = {max_length} leaves no room for the texts")

    @property
    def truncation(self) -> dict:
        return {"max_length": self.max_length, "reserved_for_output": RESERVED_FOR_OUTPUT,
                "rule": "rank_llm: passage(s) cut to what the template and query leave (duoT5: half each), "
                        "'Relevant:' always kept; <unk> ids dropped from passages; [n] -> (n)",
                "query_max_length": self.query_max_length}

    def _ids(self, texts: list[str], limit: int | None = None) -> list[list[int]]:
        """Ids without special tokens; with `limit`, at most limit + 1 (enough to tell that a text was cut)."""
        if not texts:
            return []
        cut = {"truncation": True, "max_length": limit + 1} if limit is not None else {}
        return self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False, **cut)["input_ids"]

    def query(self, text: str) -> tuple[list[int], bool]:
        """The query's ids (cut to ``query_max_length``, and to half of the room the template leaves so
        the passages keep the other half), and whether it was cut."""
        room = (self.max_length - RESERVED_FOR_OUTPUT - self.fixed) // 2
        limit = min(self.query_max_length or room, room)
        ids = self._ids([replace_numbers(text)], limit)[0]
        return ids[:limit], len(ids) > limit

    def passages(self, texts: list[str], query_ids: list[int]) -> tuple[list[list[int]], list[bool]]:
        """Each passage's ids cut to its share of the budget (rank_llm: ``encode(doc, truncation=True,
        max_length=share)`` counts ``</s>``, so ``share - 1`` tokens stay), ``<unk>`` dropped, and
        whether each was cut."""
        budget = self.max_length - RESERVED_FOR_OUTPUT - self.fixed - len(query_ids)
        share = budget // (len(SLOTS[self.head]) - 1)
        keep = max(share - 1, 1)
        out = self._ids([replace_numbers(t) for t in texts], keep)
        cut = [len(ids) > keep for ids in out]
        cut_at = [i for i, c in enumerate(cut) if c]
        # a cut passage goes through rank_llm's round trip: decoded (special tokens skipped), tokenized again
        decoded = self.tokenizer.batch_decode([out[i][:keep] for i in cut_at], skip_special_tokens=True)
        for i, ids in zip(cut_at, self._ids([t.replace("<unk>", "") for t in decoded])):
            out[i] = ids
        return [[i for i in ids if i != self.unk] for ids in out], cut

    def join(self, query_ids: list[int], passage_ids: list[list[int]]) -> list[int]:
        """Template literals, query and passage(s) in slot order, then ``</s>``."""
        parts = [query_ids, *passage_ids]
        ids = list(self.literals[0])
        for part, literal in zip(parts, self.literals[1:]):
            ids += part + literal
        return ids + [self.eos]

    def mono(self, pairs: list[tuple[str, str]]) -> Prompts:
        """monoT5 inputs of (query, passage) pairs, in input order (each query tokenized once)."""
        out = Prompts([])
        queries: dict[str, tuple[list[int], bool]] = {}
        for q in dict.fromkeys(q for q, _ in pairs):
            queries[q] = self.query(q)
        by_query: dict[str, list[int]] = {}
        for i, (q, _) in enumerate(pairs):
            by_query.setdefault(q, []).append(i)
        seqs: list[list[int] | None] = [None] * len(pairs)
        for q, idx in by_query.items():
            q_ids, q_cut = queries[q]
            passages, cut = self.passages([pairs[i][1] for i in idx], q_ids)
            for i, p_ids, was_cut in zip(idx, passages, cut):
                seqs[i] = self.join(q_ids, [p_ids])
                out.hit_max += was_cut
                out.hit_query_max += q_cut
        out.seqs = seqs
        return out

    def duo(self, query: str, passages: list[str], *, once: bool = False) -> tuple[Prompts, list[tuple[int, int]]]:
        """duoT5 inputs of every ordered pair (i, j), i != j, of one query's passages, and the pairs,
        in the order (0, 1), (0, 2) ... (1, 0) ... (pygaggle's ``permutations``); with ``once``, each
        unordered pair once as (i, j), i < j (rank_llm's ``PairwiseRankLLM``). Each passage is
        tokenized once; a pair counts as truncated when either passage was cut."""
        q_ids, q_cut = self.query(query)
        ids, cut = self.passages(list(passages), q_ids)
        order = [(i, j) for i in range(len(ids)) for j in range(len(ids)) if (i < j if once else i != j)]
        out = Prompts([self.join(q_ids, [ids[i], ids[j]]) for i, j in order])
        out.hit_max = sum(cut[i] or cut[j] for i, j in order)
        out.hit_query_max = len(order) if q_cut else 0
        return out, order
