"""The synthetic collection: known answers by construction, determinism, options, and a real
bi-encoder finding the answers far above chance."""

from __future__ import annotations

import random
import re

import pytest

from bench.config import CollectionSpec
from bench.data import expand, load_collection, load_collections
from bench.data.synthetic import LANGUAGES, ATTRIBUTES, parse_options, plan
from bench.errors import BenchError


def synth(**options):
    language = options.pop("language", None)
    max_queries = options.pop("max_queries", None)
    name = options.pop("name", None)
    return CollectionSpec(source="synthetic", synthetic=options, language=language, max_queries=max_queries, name=name)


def ndcg_at_10(qrels, run) -> float:
    from ranx import Qrels, Run, evaluate

    return float(evaluate(Qrels(qrels), Run(run), "ndcg@10"))


def test_every_language_has_templates_for_every_attribute():
    from bench.data.synthetic_templates import TEMPLATES

    attrs = {a for kind in ATTRIBUTES.values() for a in kind}
    for lang, t in TEMPLATES.items():
        assert set(t["passages"]) == attrs and set(t["questions"]) == attrs, lang
        assert len(t["occupations"]) == 10 and len(t["products"]) == 10 and len(t["months"]) == 12, lang
        for a in attrs:
            assert "{name}" in t["passages"][a] and all("{name}" in q for q in t["questions"][a]), (lang, a)


def test_expand_gives_one_named_collection_per_language():
    spec = synth(docs_per_language=80, queries_per_language=10)
    specs = expand(spec)
    assert [s.language for s in specs] == list(LANGUAGES) == ["en", "de", "fr", "es", "sw", "yo"]
    assert [s.label for s in specs] == [f"synthetic/{lang}" for lang in LANGUAGES]
    cols = load_collections(spec)
    assert [(c.name, c.language) for c in cols] == [(f"synthetic/{lang}", lang) for lang in LANGUAGES]
    # parallel collections: same ids and judgements, other words
    assert all(c.qrels == cols[0].qrels and list(c.iter_docs())[0][0][0] == "d000000" for c in cols)
    assert len({c.queries["q00000"] for c in cols}) == 6
    assert len({c.fingerprint() for c in cols}) == 6
    named = expand(synth(docs_per_language=80, queries_per_language=10, languages=["de", "yo"], name="mine"))
    assert [s.label for s in named] == ["mine/de", "mine/yo"]
    with pytest.raises(BenchError, match="load them with bench.data.load_collections"):
        load_collection(spec)
    one = load_collection(synth(docs_per_language=80, queries_per_language=10, language="sw"))
    assert one.name == "synthetic/sw" and one.language == "sw"


@pytest.mark.parametrize("lang", LANGUAGES)
def test_answers_are_known_by_construction(lang):
    opts = dict(docs_per_language=400, queries_per_language=100, seed=3, languages=[lang])
    c = load_collection(synth(**opts))
    p = plan(parse_options(opts))
    assert c.n_docs() == 400 and len(c.queries) == 100
    docs = dict(pair for batch in c.iter_docs() for pair in batch)
    twins = 0
    for qid, (entity, attribute, _) in p.queries.items():
        e = p.world[entity]
        assert e.name in c.queries[qid]
        judged = c.qrels[qid]
        # exactly the entity's own passages mention it: one answers (2), the others are about it (1)
        mentioning = {d for d, text in docs.items() if re.search(rf"(?<!\w){re.escape(e.name)}(?!\w)", text)}
        assert mentioning == {d for d, r in judged.items() if r >= 1}
        assert sorted(judged.values(), reverse=True)[:4] == [2, 1, 1, 1]
        assert c.answers[qid] == next(d for d, r in judged.items() if r == 2)
        answer = docs[c.answers[qid]]
        for value in e.values[attribute].values():
            if isinstance(value, str) or value >= 100:  # years, counts and names appear verbatim
                assert str(value) in answer
        # the hard distractor: the look-alike entity's passage on the same attribute, judged 0
        zero = [d for d, r in judged.items() if r == 0]
        if e.twin is not None:
            twins += 1
            twin = p.world[e.twin].name
            assert len(zero) == 1 and twin in docs[zero[0]] and e.name not in docs[zero[0]]
            assert len(twin) == len(e.name) and sum(a != b for a, b in zip(twin, e.name)) == 1
        else:
            assert zero == []
    assert 20 < twins < 90


def test_deterministic_and_seeded():
    a = load_collection(synth(docs_per_language=200, queries_per_language=30, language="fr"))
    b = load_collection(synth(docs_per_language=200, queries_per_language=30, language="fr"))
    assert list(a.iter_docs()) == list(b.iter_docs()) and a.queries == b.queries and a.qrels == b.qrels
    assert a.fingerprint() == b.fingerprint()
    other = load_collection(synth(docs_per_language=200, queries_per_language=30, language="fr", seed=1))
    assert list(other.iter_docs()) != list(a.iter_docs()) and other.fingerprint() != a.fingerprint()
    more_queries = load_collection(synth(docs_per_language=200, queries_per_language=60, language="fr"))
    assert list(more_queries.iter_docs()) == list(a.iter_docs())
    assert more_queries.corpus_fingerprint() == a.corpus_fingerprint() != other.corpus_fingerprint()
    cut = load_collection(synth(docs_per_language=200, queries_per_language=30, language="fr", max_queries=5))
    assert list(cut.queries) == list(a.queries)[:5] and set(cut.qrels) == set(cut.queries)
    d = cut.describe()
    assert (d["n_docs"], d["n_queries"], d["language"], d["source"]) == (200, 5, "fr", "synthetic")


def test_perfect_ranking_scores_one_and_distractors_cost():
    c = load_collection(synth(docs_per_language=200, queries_per_language=50, language="en"))
    perfect = {q: {d: float(r + 1) for d, r in judged.items()} for q, judged in c.qrels.items()}
    assert ndcg_at_10(c.qrels, perfect) == pytest.approx(1.0)
    fooled = {q: {d: float(3 - r if r == 0 else r) for d, r in judged.items()} for q, judged in c.qrels.items()}
    assert ndcg_at_10(c.qrels, fooled) < 1.0  # the look-alike ranked first is a real mistake


@pytest.mark.parametrize("kw, expected", [
    (dict(docs=10), r"unknown option\(s\) \['docs'\]; known: languages, docs_per_language"),
    (dict(languages=["en", "xx"]), r"no templates for \['xx'\]; the generator writes en, de, fr, es, sw, yo"),
    (dict(docs_per_language=40, queries_per_language=41), r"queries_per_language = 41 is more than the 40 facts"),
    (dict(docs_per_language="many"), r"docs_per_language: must be an integer >= 8"),
    (dict(twin_rate=2), r"twin_rate: must be a number between 0 and 1"),
])
def test_bad_options(kw, expected):
    with pytest.raises(BenchError, match=expected):
        load_collections(synth(**kw))


def test_language_outside_options_is_an_error():
    with pytest.raises(BenchError, match=r"language = 'yo' is not in synthetic.languages \['en'\]"):
        load_collection(synth(languages=["en"], language="yo"))


def test_minilm_finds_answers_far_above_chance(minilm):
    """all-MiniLM-L6-v2 (English-trained), exact search: clearly better than random in English and
    still far above chance in Yoruba, whose words it never learnt (names carry it)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(minilm, device="cpu")
    scores = {}
    for c in load_collections(synth(docs_per_language=240, queries_per_language=40, languages=["en", "yo"])):
        ids, texts = zip(*(pair for batch in c.iter_docs() for pair in batch))
        docs = model.encode(list(texts), normalize_embeddings=True, batch_size=64)
        queries = model.encode(list(c.queries.values()), normalize_embeddings=True)
        sims = queries @ docs.T
        run = {q: {ids[j]: float(sims[i, j]) for j in range(len(ids))} for i, q in enumerate(c.queries)}
        rng = random.Random(0)
        chance = {q: {d: rng.random() for d in ids} for q in c.queries}
        scores[c.language] = (ndcg_at_10(c.qrels, run), ndcg_at_10(c.qrels, chance))
    for lang, (model_ndcg, chance_ndcg) in scores.items():
        assert chance_ndcg < 0.1, (lang, chance_ndcg)
        assert model_ndcg > 0.5, (lang, model_ndcg)
    assert scores["en"][0] > 0.7


# --- the indexed generator (any size; each passage from its index) -------------------------------------
def indexed(**options):
    return synth(generator="indexed", **options)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_indexed_answers_are_known_by_construction(lang):
    """As for the world generator: exactly the entity's own passages name it, one of them (judged 2)
    states the asked value, the look-alike's passage on the same attribute is judged 0, and its name
    differs from the entity's in one letter; a passage holds 2 to 4 sentences (the default)."""
    c = load_collection(indexed(docs_per_language=400, queries_per_language=100, seed=3, languages=[lang]))
    docs = dict(pair for batch in c.iter_docs(batch_size=37) for pair in batch)
    assert len(docs) == c.n_docs() == 400 and sorted(docs) == [f"d{i:06d}" for i in range(400)]
    w, lang_t = c.world, __import__("bench.data.synthetic_templates", fromlist=["TEMPLATES"]).TEMPLATES[lang]
    twins = 0
    for qid, (e, attribute, _) in w.queries().items():
        ent = w.entity(e)
        judged = c.qrels[qid]
        mentioning = {d for d, text in docs.items() if re.search(rf"(?<!\w){re.escape(ent.name)}(?!\w)", text)}
        assert ent.name in c.queries[qid] and mentioning == {d for d, r in judged.items() if r >= 1}
        assert sorted(judged.values(), reverse=True)[:4] == [2, 1, 1, 1]
        answer = docs[c.answers[qid]]
        for value in ent.values[attribute].values():
            if isinstance(value, str) or value >= 100:
                assert str(value) in answer
        zero = [d for d, r in judged.items() if r == 0]
        if ent.twin is not None:
            twins += 1
            twin = w.entity(ent.twin).name
            assert len(zero) == 1 and twin in docs[zero[0]] and ent.name not in docs[zero[0]]
            assert len(twin) == len(ent.name) and sum(a != b for a, b in zip(twin, ent.name)) == 1
        else:
            assert zero == []
    assert 20 < twins < 90
    fillers = lang_t["fillers"]
    for text in docs.values():  # the fact's sentence, then 1 to 3 of the three neutral sentences
        assert 1 <= sum(f in text for f in fillers) <= 3


def test_indexed_reads_agree_and_the_collection_holds_no_corpus():
    """`docs_range`, `get_docs` and `iter_docs` give the same passages; a 2,000,000-passage collection
    is built, pickled small (what a cluster's workers receive) and read at its end; names are unique."""
    import pickle

    c = load_collection(indexed(docs_per_language=4000, queries_per_language=50, languages=["de"]))
    every = [pair for batch in c.iter_docs(batch_size=999) for pair in batch]
    assert c.docs_range(1500, 1600) == every[1500:1600] and c.docs_range(3990, 5000) == every[3990:]
    assert c.get_docs(["d000007", "d003999"]) == {"d000007": every[7][1], "d003999": every[3999][1]}
    for bad in ("d004000", "d0000007", "x1"):
        with pytest.raises(BenchError, match=f"document id '{bad}' is not in the corpus"):
            c.get_docs([bad])
    assert c._absent(["d000001", "d004000"]) == ["d004000"] and c.empty_docs() == []
    names = [c.world.entity(e).name for e in range(c.world.n_entities)]
    assert len(set(names)) == len(names)
    big = load_collection(indexed(docs_per_language=2_000_000, queries_per_language=200, languages=["en"]))
    blob = pickle.dumps(big.reader())
    assert big.n_docs() == 2_000_000 and len(blob) < 200_000
    copy = pickle.loads(blob)
    assert copy.docs_range(1_999_998, 2_000_005) == big.docs_range(1_999_998, 2_000_000)
    answer = big.answers["q00000"]
    assert copy.get_docs([answer]) == big.get_docs([answer]) and answer in big.qrels["q00000"]
    # the world generator's collection also pickles without its passages and makes them again
    world = load_collection(synth(docs_per_language=200, queries_per_language=10, language="sw"))
    assert pickle.loads(pickle.dumps(world.reader())).docs_range(10, 20) == world.docs_range(10, 20)


def test_indexed_is_deterministic_and_keyed():
    a = load_collection(indexed(docs_per_language=400, queries_per_language=30, language="fr"))
    b = load_collection(indexed(docs_per_language=400, queries_per_language=30, language="fr"))
    assert a.docs_range(0, 400) == b.docs_range(0, 400) and a.qrels == b.qrels and a.fingerprint() == b.fingerprint()
    world = load_collection(synth(docs_per_language=400, queries_per_language=30, language="fr"))
    one = load_collection(indexed(docs_per_language=400, queries_per_language=30, language="fr", sentences=[1, 1]))
    assert len({a.corpus_fingerprint(), world.corpus_fingerprint(), one.corpus_fingerprint()}) == 3
    assert all(text.count(".") == 1 for _, text in one.docs_range(0, 400) if "Prize" not in text)
    assert a.describe()["generator"] == "indexed" and a.describe()["sentences"] == [2, 4]


@pytest.mark.parametrize("kw, expected", [
    (dict(generator="grid"), r"generator: 'grid'; use \"world\" \(the default\) or \"indexed\""),
    (dict(sentences=[2, 3]), r"sentences: only the indexed generator takes it"),
    (dict(generator="indexed", sentences=[3, 2]), r"expected \[least, most\] with 1 <= least <= most <= 4"),
    (dict(generator="indexed", sentences=[1, 5]), r"expected \[least, most\]"),
    (dict(docs_per_language=500_000), r"the world generator's names run out above 250,000 passages; set "
                                      r"generator = \"indexed\""),
])
def test_bad_generator_options(kw, expected):
    with pytest.raises(BenchError, match=expected):
        load_collections(synth(**kw))
