"""The synthetic collection at any size: every passage, query and judgement computed from its index.

Why: the world generator (`synthetic.py`) builds its whole world in memory, one entity after the
other, and its invented names run out near 400,000 passages. This one (``generator = "indexed"``)
writes the same kind of collection (the same templates, entities with four attributes each,
look-alike twins, graded judgements) so that passage ``p`` is computed from ``p`` alone: a process
that needs passages 1,000,000 to 1,049,999 renders just those, and the collection object holds only
its queries and judgements whatever ``docs_per_language`` is (how a cluster's workers read their own
shards, `bench.distributed`, while the driver's memory stays flat).

How (deterministic given ``seed``):

* Entity ``e`` (``docs_per_language / 4`` of them) and its pair ``e // 2`` take their numbers from
  blake2b hashes of (seed, "pair", j) and (seed, "entity", e) (`Draws`), so nothing depends on the
  entities before them. A pair is a look-alike twin pair with probability ``twin_rate``: the same
  kind, names that differ in one vowel.
* Names are unique by construction: each name (the entity's, and those among its values) has its own
  code, five per entity, spelled as the consonants of its syllables (base 14, at least four
  syllables); the vowels are drawn. Names with different codes differ in a consonant; a twin differs
  from its partner in one vowel; a person's name is two words, other names one.
* Fact ``f = 4e + k`` (the entity's k-th attribute) is passage ``p = (a·f + b) mod N``, ``a`` coprime
  to ``N``: a permutation computed both ways, so ids (``d{p:06d}``) say nothing about entities.
* A passage is the fact's sentence and then ``s - 1`` of the language's three neutral sentences, ``s``
  drawn between the ``sentences`` bounds (default 2 to 4), under the entity's name as title.
* Queries: ``queries_per_language`` facts sampled without replacement; judgements as in the world
  generator (2 the answer, 1 the entity's other passages, 0 the twin's passage on the same attribute).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from math import gcd
from typing import Any

from ..errors import BenchError
from .base import Collection, doc_text
from .synthetic import _CONSONANTS, _ENDINGS, _VOWELS, Options, _fields, keep_queries, set_identity
from .synthetic_templates import ATTRIBUTES, N_OCCUPATIONS, N_PRODUCTS, TEMPLATES

#: Bumped whenever this generator changes what it produces (part of the fingerprint).
VERSION = 1
KINDS = tuple(ATTRIBUTES)
#: Name codes per entity: its own name, then up to four names among its values.
CODES_PER_ENTITY = 5
MIN_SYLLABLES = 4
_DOC_ID = re.compile(r"d(\d{6,})")


class Draws:
    """Numbers drawn from one 512-bit hash of a key: each draw takes the next digit of the hash in the
    base it asks for (a mixed-radix reading), so a draw costs a division, not a generator's seeding.
    An entity uses about 200 of the 512 bits."""

    def __init__(self, *key: Any):
        digest = hashlib.blake2b("/".join(map(str, ("rerank-bench/synthetic-indexed", VERSION, *key))).encode(),
                                 digest_size=64).digest()
        self.x = int.from_bytes(digest, "big")

    def below(self, n: int) -> int:
        self.x, r = divmod(self.x, n)
        return r

    def between(self, low: int, high: int) -> int:
        return low + self.below(high - low + 1)

    def choice(self, seq):
        return seq[self.below(len(seq))]

    def chance(self, p: float) -> bool:
        return self.below(1 << 20) < p * (1 << 20)


@functools.cache
def vowel_patterns(syllables: int) -> list[tuple[str, ...]]:
    """Every vowel sequence a name of ``syllables`` syllables can have, so that its vowels are one draw."""
    return list(itertools.product(_VOWELS, repeat=syllables))


@dataclass(frozen=True)
class IndexedEntity:
    kind: str
    name: str
    values: dict[str, dict]                 # attribute -> template fields, as the world generator's
    twin: int | None                        # the look-alike's index
    fillers: tuple[tuple[int, ...], ...]    # per attribute: the neutral sentences after the fact, in order


class IndexedWorld:
    """The collection's content by index: entities, passage positions, texts, queries."""

    def __init__(self, opts: Options):
        self.opts = opts
        self.n_docs = opts.docs_per_language
        self.n_entities = self.n_docs // 4
        self.syllables = MIN_SYLLABLES
        while len(_CONSONANTS) ** self.syllables < CODES_PER_ENTITY * self.n_entities:
            self.syllables += 1
        d = Draws(opts.seed, "order", self.n_docs)
        mult = 1 + d.below(self.n_docs - 1)
        while gcd(mult, self.n_docs) != 1:
            mult += 1
        self.mult, self.add = mult, d.below(self.n_docs)
        self.inverse = pow(mult, -1, self.n_docs)

    # -- positions ------------------------------------------------------------------------------------
    def position(self, fact: int) -> int:
        return (self.mult * fact + self.add) % self.n_docs

    def fact(self, position: int) -> int:
        return (self.inverse * (position - self.add)) % self.n_docs

    # -- names ----------------------------------------------------------------------------------------
    def spell(self, code: int, kind: str, vowels, ending: str = "") -> str:
        """A name from its code (the consonants, last syllable first) and its vowels: two words for a
        person, else one."""
        syl = []
        for v in reversed(vowels):
            code, digit = divmod(code, 14)
            syl.append(_CONSONANTS[digit] + v)
        syl.reverse()
        if kind == "person":
            half = self.syllables // 2
            return f"{''.join(syl[:half]).capitalize()} {''.join(syl[half:]).capitalize()}"
        return ("".join(syl) + ending).capitalize()

    def new_name(self, code: int, kind: str, d: Draws) -> str:
        vowels = d.choice(vowel_patterns(self.syllables))
        return self.spell(code, kind, vowels, d.choice(_ENDINGS[kind]) if kind in _ENDINGS else "")

    # -- entities -------------------------------------------------------------------------------------
    def pair(self, j: int) -> tuple[bool, tuple[str, str], tuple[str, str]]:
        """(twins, kinds, names) of entities 2j and 2j + 1 (a lone last entity is never a twin)."""
        d = Draws(self.opts.seed, "pair", j)
        twins = 2 * j + 1 < self.n_entities and d.chance(self.opts.twin_rate)
        first = d.choice(KINDS)
        second = first if twins else d.choice(KINDS)
        vowels = list(d.choice(vowel_patterns(self.syllables)))
        ending = d.choice(_ENDINGS[first]) if first in _ENDINGS else ""
        name = self.spell(CODES_PER_ENTITY * 2 * j, first, vowels, ending)
        if twins:  # the same consonants, one vowel changed
            i = d.below(self.syllables)
            vowels[i] = _VOWELS[(_VOWELS.index(vowels[i]) + 1 + d.below(4)) % 5]
            other = self.spell(CODES_PER_ENTITY * 2 * j, first, vowels, ending)
        else:
            other = self.new_name(CODES_PER_ENTITY * (2 * j + 1), second, d)
        return twins, (first, second), (name, other)

    def entity(self, e: int) -> IndexedEntity:
        twins, kinds, names = self.pair(e // 2)
        kind, name = kinds[e % 2], names[e % 2]
        d = Draws(self.opts.seed, "entity", e)
        slots = iter(range(CODES_PER_ENTITY * e + 1, CODES_PER_ENTITY * (e + 1)))
        value_name = lambda k: self.new_name(next(slots), k, d)  # noqa: E731 - local shorthand
        year = lambda: d.between(1850, 1990)  # noqa: E731
        if kind == "person":
            values = {"birth": {"year": year(), "place": value_name("place")},
                      "occupation": {"occupation": d.below(N_OCCUPATIONS)},
                      "hometown": {"place": value_name("place")},
                      "award": {"year": year(), "award": value_name("award")}}
        elif kind == "company":
            values = {"founded": {"year": year(), "founder": value_name("person")},
                      "headquarters": {"place": value_name("place")},
                      "product": {"product": d.below(N_PRODUCTS)},
                      "employees": {"number": d.between(50, 20000)}}
        else:
            values = {"population": {"number": d.between(2000, 900000)},
                      "river": {"river": value_name("river")},
                      "region": {"region": value_name("region")},
                      "festival": {"month": d.below(12)}}
        least, most = self.opts.sentences
        fillers = []
        for _ in ATTRIBUTES[kind]:
            order = [0, 1, 2]
            for i in range(2, 0, -1):  # a drawn permutation of the three neutral sentences
                k = d.below(i + 1)
                order[i], order[k] = order[k], order[i]
            fillers.append(tuple(order[:d.between(least, most) - 1]))
        return IndexedEntity(kind, name, values, (e ^ 1) if twins else None, tuple(fillers))

    # -- passages and queries -------------------------------------------------------------------------
    def passage(self, position: int, lang: dict) -> str:
        e, k = divmod(self.fact(position), 4)
        ent = self.entity(e)
        attribute = ATTRIBUTES[ent.kind][k]
        sentences = [lang["passages"][attribute].format(**_fields(lang, ent, attribute))]
        sentences += [lang["fillers"][i] for i in ent.fillers[k]]
        return doc_text(ent.name, " ".join(sentences))

    def queries(self) -> dict[str, tuple[int, str, int]]:
        """qid -> (entity, attribute, question variant)."""
        rng = random.Random(f"rerank-bench/synthetic-indexed/{VERSION}/queries/{self.opts.seed}/{self.n_docs}")
        asked = rng.sample(range(self.n_docs), self.opts.queries_per_language)
        out = {}
        for n, fact in enumerate(asked):
            e, k = divmod(fact, 4)
            out[f"q{n:05d}"] = (e, ATTRIBUTES[self.pair(e // 2)[1][e % 2]][k], rng.randrange(2))
        return out

    def judgements(self, e: int, attribute: str) -> dict[str, int]:
        ent = self.entity(e)
        attributes = ATTRIBUTES[ent.kind]
        out = {doc_id(self.position(4 * e + k)): (2 if a == attribute else 1) for k, a in enumerate(attributes)}
        if ent.twin is not None:
            out[doc_id(self.position(4 * ent.twin + attributes.index(attribute)))] = 0
        return out


def doc_id(position: int) -> str:
    return f"d{position:06d}"


class IndexedSyntheticCollection(Collection):
    """One language of the indexed generator's collection: queries and judgements in memory, every
    passage rendered when asked for (`iter_docs`, `docs_range`, `get_docs`)."""

    source = "synthetic"

    def __init__(self, language: str, opts: Options, *, name: str | None = None, max_queries: int | None = None):
        lang = set_identity(self, language, opts, name, max_queries)
        self.world = IndexedWorld(opts)
        queries, qrels, answers = {}, {}, {}
        for qid, (e, attribute, variant) in self.world.queries().items():
            ent = self.world.entity(e)
            queries[qid] = lang["questions"][attribute][variant].format(**_fields(lang, ent, attribute))
            qrels[qid] = self.world.judgements(e, attribute)
            answers[qid] = next(d for d, r in qrels[qid].items() if r == 2)
        keep_queries(self, queries, qrels, answers)

    # --- documents -----------------------------------------------------------------------------------
    def n_docs(self) -> int:
        return self.world.n_docs

    def docs_range(self, start: int, stop: int) -> list[tuple[str, str]]:
        lang = TEMPLATES[self.language]
        return [(doc_id(p), self.world.passage(p, lang)) for p in range(max(0, start), min(stop, self.n_docs()))]

    def iter_docs(self, batch_size: int = 10_000) -> Iterator[list[tuple[str, str]]]:
        if batch_size <= 0:
            raise BenchError(f"iter_docs: batch_size must be positive, got {batch_size}")
        for start in range(0, self.n_docs(), batch_size):
            yield self.docs_range(start, start + batch_size)

    def _position(self, docid: str) -> int | None:
        m = _DOC_ID.fullmatch(docid)
        p = int(m.group(1)) if m else None
        return p if p is not None and p < self.n_docs() and doc_id(p) == docid else None

    def get_docs(self, doc_ids: Iterable[str]) -> dict[str, str]:
        lang, out = TEMPLATES[self.language], {}
        for d in doc_ids:
            p = self._position(d)
            if p is None:
                raise BenchError(f"collection {self.name!r}: document id {d!r} is not in the corpus "
                                 "(a run file or cache from another collection?)")
            out[d] = self.world.passage(p, lang)
        return out

    def _absent(self, doc_ids: list[str]) -> list[str]:
        return [d for d in doc_ids if self._position(d) is None]

    def empty_docs(self) -> list[str]:
        """None: every passage has a title and at least one sentence by construction (no pass over the
        corpus, which at millions of passages would cost the driver minutes)."""
        return []

    # --- identity ------------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        o = self.options
        return {"generator": "synthetic-indexed", "version": VERSION, "language": self.language, "seed": o.seed,
                "docs_per_language": o.docs_per_language, "twin_rate": o.twin_rate, "sentences": list(o.sentences)}

    def _selection(self) -> dict[str, Any]:
        return {"queries_per_language": self.options.queries_per_language, "max_queries": self.max_queries}

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {**super().describe(), "generator": "indexed", "generator_version": VERSION, "seed": o.seed,
                "docs_per_language": o.docs_per_language, "queries_per_language": o.queries_per_language,
                "twin_rate": o.twin_rate, "sentences": list(o.sentences), "max_queries": self.max_queries,
                "relevance": "2 answers the question, 1 same entity, 0 the look-alike entity's passage"}
