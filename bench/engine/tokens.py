"""Tokenize once with the fast tokenizer, then flatten and sort longest first.

The special tokens a tokenizer adds around one or two texts are learnt once from a probe
(``learn_template``), so texts are tokenized without special tokens (each distinct text once) and
sequences are assembled as lists of ids, exactly as ``tokenizer(query, passage)`` would build them.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Sequence

import numpy as np

from ..errors import BenchError


@dataclass(frozen=True)
class Template:
    """Where a tokenizer puts special tokens: ``specials[i]`` comes before text i, the last after all
    texts; token type ids likewise (None when the model takes no token type ids)."""

    specials: tuple[tuple[int, ...], ...]
    special_types: tuple[tuple[int, ...], ...] | None
    text_types: tuple[int, ...] | None

    @property
    def n_special(self) -> int:
        return sum(len(s) for s in self.specials)

    def assemble(self, texts: Sequence[list[int]]) -> tuple[list[int], list[int] | None]:
        ids: list[int] = list(self.specials[0])
        for text, after in zip(texts, self.specials[1:]):
            ids += text
            ids += after
        if self.special_types is None:
            return ids, None
        types: list[int] = list(self.special_types[0])
        for text, t, after in zip(texts, self.text_types, self.special_types[1:]):
            types += [t] * len(text)
            types += after
        return ids, types


def learn_template(tokenizer, n_texts: int) -> Template:
    """Find the special tokens around 1 or 2 texts by tokenizing a probe with and without them."""
    probes = ["hello world", "second text"][:n_texts]
    parts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in probes]
    uses_types = "token_type_ids" in tokenizer.model_input_names
    enc = tokenizer(*probes, return_token_type_ids=uses_types)
    ids = list(enc["input_ids"])
    types = list(enc["token_type_ids"]) if uses_types else None
    special = tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)
    text_pos = [i for i, s in enumerate(special) if not s]
    if [ids[i] for i in text_pos] != [x for p in parts for x in p]:
        raise BenchError(f"tokenizer {type(tokenizer).__name__}: cannot learn where it puts special tokens "
                         "(its output for a probe is not text tokens between special tokens); "
                         "use engine = 'transformers' for this model")
    bounds, k = [], 0
    for p in parts:
        span = text_pos[k:k + len(p)]
        if span != list(range(span[0], span[0] + len(p))):
            raise BenchError(f"tokenizer {type(tokenizer).__name__}: special tokens inside a text; unsupported")
        bounds.append((span[0], span[0] + len(p)))
        k += len(p)
    cuts = [0] + [x for b in bounds for x in b] + [len(ids)]
    specials = tuple(tuple(ids[cuts[2 * i]:cuts[2 * i + 1]]) for i in range(n_texts + 1))
    if types is None:
        return Template(specials, None, None)
    special_types = tuple(tuple(types[cuts[2 * i]:cuts[2 * i + 1]]) for i in range(n_texts + 1))
    text_types = tuple(types[b[0]] for b in bounds)
    return Template(specials, special_types, text_types)


@dataclass
class Encoded:
    """Token id lists of a list of inputs, in input order, with truncation counts."""

    seqs: list[list[int]]
    types: list[list[int]] | None
    hit_max: int = 0          # sequences whose length reached max_length
    hit_query_max: int = 0    # queries whose length reached query_max_length


def _ids(tokenizer, texts: list[str], limit: int) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, truncation=True, max_length=limit,
                     return_attention_mask=False, return_token_type_ids=False)["input_ids"]


class PairTokenizer:
    """(query, passage) pairs -> the id sequences a cross-encoder sees.

    Queries are cut to ``query_max_length``; then the pair is cut to ``max_length`` by shortening
    the passage only (FlagEmbedding's rule). With no ``query_max_length`` a query keeps all its
    tokens except that at least one passage token must fit. Each distinct text is tokenized once.
    """

    def __init__(self, tokenizer, max_length: int, query_max_length: int | None = None):
        self.tokenizer = tokenizer
        self.template = learn_template(tokenizer, 2)
        self.max_length = max_length
        self.room = max_length - self.template.n_special
        if self.room < 2:
            raise BenchError(f"max_length = {max_length} leaves no room for a query and a passage "
                             f"beside {self.template.n_special} special tokens; raise max_length")
        self.query_limit = min(query_max_length or self.room - 1, self.room - 1)

    def __call__(self, pairs: Sequence[tuple[str, str]]) -> Encoded:
        queries = list(dict.fromkeys(q for q, _ in pairs))
        passages = list(dict.fromkeys(p for _, p in pairs))
        q_ids = dict(zip(queries, _ids(self.tokenizer, queries, self.query_limit)))
        p_ids = dict(zip(passages, _ids(self.tokenizer, passages, self.room)))
        hit_q = sum(len(q_ids[q]) >= self.query_limit for q, _ in pairs)
        seqs, types, hit_max = [], [] if self.template.special_types is not None else None, 0
        for q, p in pairs:
            qi, pi = q_ids[q], p_ids[p]
            keep = self.room - len(qi)
            if len(pi) >= keep:
                hit_max += 1
                pi = pi[:keep]
            ids, tt = self.template.assemble((qi, pi))
            seqs.append(ids)
            if types is not None:
                types.append(tt)
        return Encoded(seqs, types, hit_max, hit_q)


class TextTokenizer:
    """Texts -> id sequences with the model's special tokens, cut to ``max_length`` (as
    ``tokenizer(texts, truncation=True, max_length=...)`` does)."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.template = learn_template(tokenizer, 1)
        self.max_length = max_length
        self.room = max_length - self.template.n_special
        if self.room < 1:
            raise BenchError(f"max_length = {max_length} leaves no room for text beside the special tokens")

    def __call__(self, texts: Sequence[str]) -> Encoded:
        texts = list(texts)
        ids = _ids(self.tokenizer, texts, self.room)
        seqs, types = [], [] if self.template.special_types is not None else None
        for x in ids:
            s, t = self.template.assemble((x,))
            seqs.append(s)
            if types is not None:
                types.append(t)
        return Encoded(seqs, types, sum(len(x) >= self.room for x in ids), 0)


@dataclass
class TokenChunk:
    """A slice of the input, tokenized, flattened and sorted longest first.

    Item ``i`` of the sorted order is input ``start + order[i]``; its tokens are
    ``ids[offsets[i]:offsets[i+1]]``. Batches are contiguous ranges of the sorted order.
    """

    start: int
    order: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray
    ids: np.ndarray
    types: np.ndarray | None
    positions: np.ndarray
    hit_max: int = 0
    hit_query_max: int = 0

    @property
    def n(self) -> int:
        return len(self.order)

    @property
    def tokens(self) -> int:
        return int(self.offsets[-1])


def flatten(encoded: Encoded, start: int, position_offset: int = 0) -> TokenChunk:
    """Sort ``encoded`` longest first (stable) and lay its ids out flat.

    ``position_offset`` is the first position id of every sequence (0 for BERT; padding_idx + 1 for
    RoBERTa and XLM-R, whose position ids start after the padding index)."""
    lengths = np.fromiter((len(s) for s in encoded.seqs), dtype=np.int64, count=len(encoded.seqs))
    order = np.argsort(-lengths, kind="stable")
    lengths = lengths[order]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    ids = np.fromiter(chain.from_iterable(encoded.seqs[i] for i in order), dtype=np.int64, count=total)
    types = None
    if encoded.types is not None:
        types = np.fromiter(chain.from_iterable(encoded.types[i] for i in order), dtype=np.int64, count=total)
    positions = np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1], lengths) + position_offset
    return TokenChunk(start, order, lengths, offsets, ids, types, positions,
                      encoded.hit_max, encoded.hit_query_max)
