"""A generated collection with known answers, in several languages.

Why: real collections have incomplete judgements and cannot be shipped with the tests; this one is
built so that which documents are relevant is known exactly, and it runs anywhere in seconds.

How it is built (deterministic given ``seed``):

* A *world* of invented entities (people, companies, towns) with language-neutral names
  (``Kalimo Tessaro``, ``Morvatek``, ``Benuvira``). Each entity has four attributes (a person's birth
  year, occupation, home town, prize...), and each attribute is stated in exactly one passage
  (title = the entity's name). About half the entities have a *twin* whose name differs by one
  letter: the hard distractors.
* A *query* asks for one attribute of one entity. Relevance, graded: 2 = the passage that states
  the answer; 1 = the entity's other passages (about the same entity); 0 (judged) = the twin's
  passage on the same attribute; every other passage is unjudged and never mentions the entity.
* Every language renders the same world with its own templates (`synthetic_templates.py`), so
  ``synthetic/en`` and ``synthetic/yo`` are parallel: same ids, same judgements, other words.

Options (the spec's ``synthetic`` table): ``languages`` (default all six: en, de, fr, es, sw, yo),
``docs_per_language`` (default 2000; rounded down to a multiple of 4), ``queries_per_language``
(default 200), ``seed`` (default 0), ``twin_rate`` (default 0.5), ``generator`` (``"world"``, the
default: this module, up to WORLD_MAX_DOCS passages; ``"indexed"``: `synthetic_indexed.py`, any
size, each passage computed from its index) and, for the indexed generator only, ``sentences``
(``[least, most]`` sentences a passage, default ``[2, 4]``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ..config import CollectionSpec
from ..errors import BenchError
from .base import MemoryCollection, doc_text, natural_key
from .synthetic_templates import ATTRIBUTES, N_OCCUPATIONS, N_PRODUCTS, TEMPLATES

#: Bumped whenever the generator or its templates change what it produces (part of the fingerprint).
GENERATOR_VERSION = 1
LANGUAGES = tuple(TEMPLATES)
DEFAULTS: dict[str, Any] = {"languages": list(LANGUAGES), "docs_per_language": 2000, "queries_per_language": 200,
                            "seed": 0, "twin_rate": 0.5, "generator": "world", "sentences": None}
GENERATORS = ("world", "indexed")
#: The world generator's largest corpus: its invented names run out a little above (it would never finish).
WORLD_MAX_DOCS = 250_000
#: Sentences a passage of the indexed generator has by default: the fact, then one to three neutral ones.
INDEXED_SENTENCES = (2, 4)

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_ENDINGS = {"company": ("tek", "ex", "on", "ara", "is", "ium"), "town": ("holm", "ville", "dor", "ana", "burg", "ko")}


@dataclass(frozen=True)
class Options:
    languages: tuple[str, ...]
    docs_per_language: int
    queries_per_language: int
    seed: int
    twin_rate: float
    generator: str = "world"
    sentences: tuple[int, int] | None = None  # the indexed generator's [least, most] sentences a passage


def parse_options(raw: dict | None, where: str = "synthetic") -> Options:
    """Validate the ``synthetic`` table: unknown keys, wrong types and bad values are BenchErrors."""
    raw = dict(raw or {})
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise BenchError(f"{where}: unknown option(s) {unknown}; known: {', '.join(DEFAULTS)}")
    opts = {**DEFAULTS, **raw}
    langs = opts["languages"]
    if isinstance(langs, str):
        langs = [langs]
    if not isinstance(langs, list) or not langs or not all(isinstance(x, str) for x in langs):
        raise BenchError(f"{where}.languages: must be a non-empty list of language codes from {', '.join(LANGUAGES)}")
    bad = [x for x in langs if x not in TEMPLATES]
    if bad:
        raise BenchError(f"{where}.languages: no templates for {bad}; the generator writes {', '.join(LANGUAGES)}")
    if len(set(langs)) != len(langs):
        raise BenchError(f"{where}.languages: {langs} names a language twice")
    for key, low in (("docs_per_language", 8), ("queries_per_language", 1), ("seed", 0)):
        if not isinstance(opts[key], int) or isinstance(opts[key], bool) or opts[key] < low:
            raise BenchError(f"{where}.{key}: must be an integer >= {low}, got {opts[key]!r}")
    rate = opts["twin_rate"]
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate <= 1:
        raise BenchError(f"{where}.twin_rate: must be a number between 0 and 1, got {rate!r}")
    docs = opts["docs_per_language"] // 4 * 4
    if opts["queries_per_language"] > docs:
        raise BenchError(f"{where}.queries_per_language = {opts['queries_per_language']} is more than the "
                         f"{docs} facts that docs_per_language = {opts['docs_per_language']} gives (one per passage)")
    generator, sentences = opts["generator"], opts["sentences"]
    if generator not in GENERATORS:
        raise BenchError(f"{where}.generator: {generator!r}; use \"world\" (the default) or \"indexed\" (any size)")
    if generator == "world":
        if sentences is not None:
            raise BenchError(f"{where}.sentences: only the indexed generator takes it; add generator = \"indexed\"")
        if docs > WORLD_MAX_DOCS:
            raise BenchError(f"{where}.docs_per_language = {docs:,}: the world generator's names run out above "
                             f"{WORLD_MAX_DOCS:,} passages; set generator = \"indexed\" for larger collections")
        return Options(tuple(langs), docs, opts["queries_per_language"], opts["seed"], float(rate))
    return Options(tuple(langs), docs, opts["queries_per_language"], opts["seed"], float(rate), "indexed",
                   _sentences(sentences, where))


def _sentences(value, where: str) -> tuple[int, int]:
    """The indexed generator's [least, most] sentences a passage: the fact's sentence plus up to the three
    neutral sentences each language has."""
    if value is None:
        return INDEXED_SENTENCES
    if (not isinstance(value, list) or len(value) != 2 or not all(isinstance(x, int) and not isinstance(x, bool)
                                                                 for x in value) or not 1 <= value[0] <= value[1] <= 4):
        raise BenchError(f"{where}.sentences: {value!r}; expected [least, most] with 1 <= least <= most <= 4 "
                         "(the fact's sentence plus up to the language's three neutral sentences)")
    return value[0], value[1]


# --- the world ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entity:
    kind: str                       # person | company | town
    name: str
    values: dict[str, dict]         # attribute -> template fields (ints index the language's word lists)
    twin: int | None = None         # index of the entity whose name differs by one letter


class _Names:
    """Invented, language-neutral names, each used once in the whole world (so a name in a passage
    always means the same entity)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def _word(self, syllables: int, ending: str = "") -> str:
        s = "".join(self.rng.choice(_CONSONANTS) + self.rng.choice(_VOWELS) for _ in range(syllables))
        return (s + ending).capitalize()

    def new(self, kind: str) -> str:
        while True:
            if kind == "person":
                name = f"{self._word(self.rng.choice((2, 3)))} {self._word(3)}"
            elif kind in _ENDINGS:
                name = self._word(self.rng.choice((2, 3)), self.rng.choice(_ENDINGS[kind]))
            else:  # place, river, region, award: plain words
                name = self._word(self.rng.choice((2, 3)))
            if name not in self.used:
                self.used.add(name)
                return name

    def twin_of(self, name: str) -> str:
        """The same name with one vowel changed (never a substring of the original, nor it of this)."""
        positions = [i for i, ch in enumerate(name) if ch in _VOWELS]
        while True:
            i = self.rng.choice(positions)
            twin = name[:i] + self.rng.choice([v for v in _VOWELS if v != name[i]]) + name[i + 1:]
            if twin not in self.used:
                self.used.add(twin)
                return twin


def _values(kind: str, rng: random.Random, names: _Names) -> dict[str, dict]:
    year = lambda: rng.randint(1850, 1990)  # noqa: E731 - local shorthand
    if kind == "person":
        return {"birth": {"year": year(), "place": names.new("place")},
                "occupation": {"occupation": rng.randrange(N_OCCUPATIONS)},
                "hometown": {"place": names.new("place")},
                "award": {"year": year(), "award": names.new("award")}}
    if kind == "company":
        return {"founded": {"year": year(), "founder": names.new("person")},
                "headquarters": {"place": names.new("place")},
                "product": {"product": rng.randrange(N_PRODUCTS)},
                "employees": {"number": rng.randint(50, 20000)}}
    return {"population": {"number": rng.randint(2000, 900000)},
            "river": {"river": names.new("river")},
            "region": {"region": names.new("region")},
            "festival": {"month": rng.randrange(12)}}


def build_world(n_entities: int, seed: int, twin_rate: float) -> list[Entity]:
    """`n_entities` entities; with probability `twin_rate` an entity is followed by its twin."""
    rng = random.Random(f"rerank-bench/synthetic/{GENERATOR_VERSION}/world/{seed}")
    names = _Names(rng)
    world: list[Entity] = []
    while len(world) < n_entities:
        kind = rng.choice(tuple(ATTRIBUTES))
        name = names.new(kind)
        if len(world) + 2 <= n_entities and rng.random() < twin_rate:
            i = len(world)
            world.append(Entity(kind, name, _values(kind, rng, names), twin=i + 1))
            world.append(Entity(kind, names.twin_of(name), _values(kind, rng, names), twin=i))
        else:
            world.append(Entity(kind, name, _values(kind, rng, names)))
    return world


@dataclass(frozen=True)
class Plan:
    """The language-independent collection: which passage says what, and what each query asks."""

    world: list[Entity]
    doc_ids: dict[tuple[int, str], str]          # (entity, attribute) -> docid
    doc_order: list[tuple[int, str]]             # corpus order (shuffled, so ids say nothing)
    fillers: dict[tuple[int, str], int | None]   # which neutral sentence follows a passage, if any
    queries: dict[str, tuple[int, str, int]]     # qid -> (entity, attribute, question variant)


def plan(opts: Options) -> Plan:
    n_entities = opts.docs_per_language // 4
    world = build_world(n_entities, opts.seed, opts.twin_rate)
    rng = random.Random(f"rerank-bench/synthetic/{GENERATOR_VERSION}/corpus/{opts.seed}/{n_entities}")
    facts = [(i, a) for i, e in enumerate(world) for a in ATTRIBUTES[e.kind]]
    order = facts[:]
    rng.shuffle(order)
    doc_ids = {fact: f"d{n:06d}" for n, fact in enumerate(order)}
    fillers = {fact: (rng.randrange(3) if rng.random() < 0.5 else None) for fact in facts}
    qrng = random.Random(f"rerank-bench/synthetic/{GENERATOR_VERSION}/queries/{opts.seed}/{n_entities}")
    asked = qrng.sample(facts, opts.queries_per_language)
    queries = {f"q{n:05d}": (i, a, qrng.randrange(2)) for n, (i, a) in enumerate(asked)}
    return Plan(world, doc_ids, order, fillers, queries)


def judgements(p: Plan, entity: int, attribute: str) -> dict[str, int]:
    """Graded qrels of a question about `attribute` of `entity` (see the module docstring)."""
    e = p.world[entity]
    out = {p.doc_ids[(entity, a)]: (2 if a == attribute else 1) for a in ATTRIBUTES[e.kind]}
    if e.twin is not None:
        out[p.doc_ids[(e.twin, attribute)]] = 0
    return out


# --- rendering ---------------------------------------------------------------------------------------


def _fields(lang: dict, e: Entity, attribute: str) -> dict[str, Any]:
    fields: dict[str, Any] = {"name": e.name, **e.values[attribute]}
    for key, words in (("occupation", "occupations"), ("product", "products"), ("month", "months")):
        if key in fields:
            fields[key] = lang[words][fields[key]]
    return fields


def set_identity(collection, language: str, opts: Options, name: str | None, max_queries: int | None) -> dict:
    """A synthetic collection's language, options and name (either generator); its language's templates."""
    if language not in TEMPLATES:
        raise BenchError(f"synthetic: no templates for language {language!r}; the generator writes "
                         f"{', '.join(LANGUAGES)}")
    collection.language = language
    collection.options = opts
    collection.max_queries = max_queries
    collection.name = name or f"synthetic/{language}"
    return TEMPLATES[language]


def keep_queries(collection, queries: dict, qrels: dict, answers: dict) -> None:
    """The queries (with their qrels and answers) a collection keeps: in `natural_key` order, the first
    ``max_queries``."""
    kept = sorted(queries, key=natural_key)
    kept = kept[:collection.max_queries] if collection.max_queries else kept
    collection.queries = {q: queries[q] for q in kept}
    collection.qrels = {q: qrels[q] for q in kept}
    #: qid -> the one passage that answers it (relevance 2), for checks and examples.
    collection.answers = {q: answers[q] for q in kept}


def render_passages(p: Plan, lang: dict) -> dict[str, str]:
    """Every passage of a plan in one language, docid -> text, in corpus order."""
    docs = {}
    for fact in p.doc_order:
        i, a = fact
        e = p.world[i]
        text = lang["passages"][a].format(**_fields(lang, e, a))
        if p.fillers[fact] is not None:
            text += " " + lang["fillers"][p.fillers[fact]]
        docs[p.doc_ids[fact]] = doc_text(e.name, text)
    return docs


class SyntheticCollection(MemoryCollection):
    """One language of the generated collection (``synthetic/<lang>``)."""

    source = "synthetic"

    def __init__(self, language: str, opts: Options, *, name: str | None = None, max_queries: int | None = None):
        lang = set_identity(self, language, opts, name, max_queries)
        p = plan(opts)
        self._doc_dict = render_passages(p, lang)
        queries, qrels, answers = {}, {}, {}
        for qid, (i, a, variant) in p.queries.items():
            queries[qid] = lang["questions"][a][variant].format(**_fields(lang, p.world[i], a))
            qrels[qid] = judgements(p, i, a)
            answers[qid] = p.doc_ids[(i, a)]
        keep_queries(self, queries, qrels, answers)

    def _docs(self) -> dict[str, str]:
        if self._doc_dict is None:  # a copy in another process (a cluster worker): generated again there
            self._doc_dict = render_passages(plan(self.options), TEMPLATES[self.language])
        return self._doc_dict

    def __getstate__(self) -> dict:
        """Pickled without its passages (`reader`): they are generated again where they are read."""
        return {**self.__dict__, "_doc_dict": None}

    def _identity(self) -> dict[str, Any]:
        o = self.options
        return {"generator": "synthetic", "version": GENERATOR_VERSION, "language": self.language, "seed": o.seed,
                "docs_per_language": o.docs_per_language, "twin_rate": o.twin_rate}

    def _selection(self) -> dict[str, Any]:
        return {"queries_per_language": self.options.queries_per_language, "max_queries": self.max_queries}

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {**super().describe(), "generator_version": GENERATOR_VERSION, "seed": o.seed,
                "docs_per_language": o.docs_per_language, "queries_per_language": o.queries_per_language,
                "twin_rate": o.twin_rate, "max_queries": self.max_queries,
                "relevance": "2 answers the question, 1 same entity, 0 the look-alike entity's passage"}


# --- specs -------------------------------------------------------------------------------------------


def expand_synthetic(spec: CollectionSpec) -> list[CollectionSpec]:
    """One spec per language, with ``language`` set, ``synthetic.languages = [lang]`` and the name
    ``<name or 'synthetic'>/<lang>`` (a spec for one language keeps a name it has). A spec that sets
    ``language`` stands for that language only."""
    opts = parse_options(spec.synthetic)
    langs = [spec.language] if spec.language else list(opts.languages)
    base = spec.name or "synthetic"
    out = []
    for lang in langs:
        if lang not in opts.languages:
            raise BenchError(f"synthetic: language = {lang!r} is not in synthetic.languages {list(opts.languages)}")
        name = spec.name if (spec.name and len(langs) == 1) else f"{base}/{lang}"
        out.append(spec.model_copy(update={"language": lang, "name": name,
                                           "synthetic": {**(spec.synthetic or {}), "languages": [lang]}}))
    return out


def load_synthetic(spec: CollectionSpec):
    """The one language a synthetic spec names (its ``language``, or its single ``synthetic.languages``)."""
    opts = parse_options(spec.synthetic)
    if spec.language:
        lang = spec.language
        if lang not in opts.languages:
            raise BenchError(f"synthetic: language = {lang!r} is not in synthetic.languages {list(opts.languages)}")
    elif len(opts.languages) == 1:
        lang = opts.languages[0]
    else:
        raise BenchError(f"synthetic spec names {len(opts.languages)} languages ({', '.join(opts.languages)}): "
                         "load them with bench.data.load_collections(spec), or expand(spec) into one spec each")
    if opts.generator == "indexed":
        from .synthetic_indexed import IndexedSyntheticCollection

        return IndexedSyntheticCollection(lang, opts, name=spec.name or f"synthetic/{lang}", max_queries=spec.max_queries)
    return SyntheticCollection(lang, opts, name=spec.name or f"synthetic/{lang}", max_queries=spec.max_queries)
