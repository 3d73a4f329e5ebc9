"""The shared engine machinery: tokenization templates, flattening, token-budget batches,
background prefetch and the out-of-memory budget."""

from __future__ import annotations

import numpy as np
import pytest

from bench.engine.batching import TokenBudget, chunk_bounds, plan_batches, prefetch
from bench.engine.tokens import PairTokenizer, TextTokenizer, flatten, learn_template
from bench.errors import BenchError

PAIRS = [("ìbéèrè kúkúrú", "Èdè Yorùbá jẹ́ ọ̀kan lára àwọn èdè tí wọ́n ń sọ ní ilẹ̀ Áfíríkà " * 6),
         ("who wrote it", "A short passage."),
         ("who wrote it", ""),
         ("a much longer question about measurement of light reflection", "Reflected light " * 40)]


@pytest.fixture(scope="module")
def xlmr_tokenizer(tiny_reranker):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_reranker)


@pytest.fixture(scope="module")
def bert_tokenizer(minilm):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm)


@pytest.mark.parametrize("name", ["xlmr_tokenizer", "bert_tokenizer"])
@pytest.mark.parametrize("max_length", [24, 64, 512])
def test_pair_ids_equal_the_tokenizer_pair_encoding(request, name, max_length):
    tok = request.getfixturevalue(name)
    enc = PairTokenizer(tok, max_length)(PAIRS)
    ref = tok([q for q, _ in PAIRS], [p for _, p in PAIRS], truncation="only_second", max_length=max_length)
    assert enc.seqs == ref["input_ids"]
    if name == "bert_tokenizer":
        assert enc.types == ref["token_type_ids"] and set(enc.types[1]) == {0, 1}
    else:
        assert enc.types is None  # XLM-R takes no token type ids
    assert enc.hit_max == sum(len(x) == max_length for x in ref["input_ids"])


def test_query_max_length_cuts_the_query_before_the_pair(xlmr_tokenizer):
    enc = PairTokenizer(xlmr_tokenizer, 64, query_max_length=3)(PAIRS)
    q = xlmr_tokenizer([q for q, _ in PAIRS], add_special_tokens=False)["input_ids"]
    assert enc.hit_query_max == sum(len(x) >= 3 for x in q)
    for ids, qi in zip(enc.seqs, q):
        assert ids[1:1 + min(3, len(qi))] == qi[:3] and len(ids) <= 64


def test_text_ids_equal_the_tokenizer_encoding(bert_tokenizer, xlmr_tokenizer):
    texts = [p for _, p in PAIRS]
    for tok in (bert_tokenizer, xlmr_tokenizer):
        enc = TextTokenizer(tok, 32)(texts)
        assert enc.seqs == tok(texts, truncation=True, max_length=32)["input_ids"]


def test_templates_learnt_from_the_tokenizer(bert_tokenizer, xlmr_tokenizer):
    t = learn_template(xlmr_tokenizer, 2)
    assert t.specials == ((0,), (2, 2), (2,)) and t.n_special == 4
    b = learn_template(bert_tokenizer, 2)
    assert b.specials == ((101,), (102,), (102,)) and b.text_types == (0, 1)
    with pytest.raises(BenchError, match="no room"):
        PairTokenizer(xlmr_tokenizer, 5)


def test_flatten_sorts_longest_first_with_positions():
    from bench.engine.tokens import Encoded

    chunk = flatten(Encoded([[5, 6], [7, 8, 9, 10], [11], [12, 13, 14, 15]], None), start=10, position_offset=2)
    assert chunk.order.tolist() == [1, 3, 0, 2]  # stable among equal lengths
    assert chunk.lengths.tolist() == [4, 4, 2, 1] and chunk.offsets.tolist() == [0, 4, 8, 10, 11]
    assert chunk.ids.tolist() == [7, 8, 9, 10, 12, 13, 14, 15, 5, 6, 11]
    assert chunk.positions.tolist() == [2, 3, 4, 5, 2, 3, 4, 5, 2, 3, 2]
    assert chunk.start == 10 and chunk.tokens == 11


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("budget", [1, 7, 50, 10_000])
def test_batches_cover_every_item_once_within_budget(padded, budget):
    lengths = np.sort(np.random.default_rng(0).integers(1, 30, size=200))[::-1]
    batches = plan_batches(lengths, budget, padded)
    assert batches[0][0] == 0 and batches[-1][1] == 200
    assert all(a[1] == b[0] for a, b in zip(batches, batches[1:]))
    for s, e in batches:
        cost = (e - s) * lengths[s] if padded else lengths[s:e].sum()
        assert e - s == 1 or cost <= budget
    capped = plan_batches(lengths, 10_000, padded, max_items=16)
    assert max(e - s for s, e in capped) == 16


def test_chunks_start_small_and_grow():
    bounds = chunk_bounds(5000, first=512, largest=2048)
    assert bounds[:3] == [(0, 512), (512, 1536), (1536, 3584)] and bounds[-1] == (3584, 5000)
    assert chunk_bounds(0) == []


@pytest.mark.parametrize("depth", [0, 2])
def test_prefetch_keeps_order_and_raises_errors(depth):
    assert list(prefetch(lambda x: x * x, range(20), depth)) == [x * x for x in range(20)]

    def bad(x):
        if x == 3:
            raise ValueError("bad item 3")
        return x

    got = []
    with pytest.raises(ValueError, match="bad item 3"):
        for x in prefetch(bad, range(10), depth):
            got.append(x)
    assert got == [0, 1, 2]


def test_budget_halves_on_failures_and_refuses_single_items():
    b = TokenBudget(4096)
    b.shrink(failed_tokens=4000, items=40)
    assert b.used == 2000 and b.describe()["token_budget_requested"] == 4096
    b.shrink(failed_tokens=1500, items=10)
    assert b.used == 750 and len(b.describe()["oom_retries"]) == 2
    with pytest.raises(BenchError, match="single sequence of 600 tokens"):
        b.shrink(failed_tokens=600, items=1)
