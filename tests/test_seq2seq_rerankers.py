"""monoT5 and duoT5 (bench.rerank.seq2seq) on real MIRACL-yo and Vaswani text with the tiny random T5:
prompts as rank_llm builds and truncates them, the fast engine equal to the authors' formulation,
duoT5's sym-sum equal to a plain double loop over pairs scored one by one, a BM25 → monoT5 → duoT5
chain as three systems, `bench throughput` over both, and one clear error per bad input.

T5's own sentencepiece vocabulary is not available offline (no PyPI package ships spiece.model), so
the ``random:`` T5 models use a STAND-IN tokenizer: Mistral-7B's sentencepiece pieces (PyPI
mistral-common) laid out as T5's (bench.models.seq2seq). Token ids differ from T5's; the layout
(``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, ``</s>`` appended, 100 sentinels) and the prompt rules do not.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench import models
from bench.cli import main
from bench.config import CollectionSpec, RerankerSpec, load_experiment
from bench.data import load_collection
from bench.models.seq2seq import count_parameters
from bench.rerank import build_reranker
from bench.rerank.common import QueryCandidates
from bench.records import read_record
from bench.runs import read_run, sort_ranking
from bench.throughput.pairs import pairs_from_collection

TOL = 1e-4
T5 = "random:tiny-t5-reranker"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def collections(shared_data):
    return {name: load_collection(CollectionSpec(source="beir", path=str(shared_data / name), split=split))
            for name, split in (("miracl-yo-dev", "dev"), ("vaswani", "test"))}


@pytest.fixture(scope="module")
def pairs(collections):
    """Four queries with six candidates each from MIRACL Yoruba and from Vaswani."""
    return [p for col in collections.values() for p in pairs_from_collection(col, k=6, max_queries=4).pairs]


@pytest.fixture(scope="module")
def t5(cache_dir):
    """(tokenizer, T5ForConditionalGeneration) of the tiny random T5, loaded as Hugging Face loads it."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    folder = models.resolve(T5, cache_dir)
    return AutoTokenizer.from_pretrained(folder), T5ForConditionalGeneration.from_pretrained(folder).eval()


def spec(head: str, engine: str, **fields) -> RerankerSpec:
    return RerankerSpec(model=T5, head=head, engine=engine, device="cpu", dtype="fp32", **fields)


def test_standin_tokenizer_has_t5s_layout(t5):
    tok, model = t5
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert len(tok) == 32100 and tok.convert_tokens_to_ids("<extra_id_0>") == 32099 and tok.bos_token_id is None
    assert model.config.vocab_size == 32128 and model.config.decoder_start_token_id == 0
    for word in ("true", "false"):
        ids = tok(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids) == ["▁" + word]
    assert tok("a  b")["input_ids"][-1] == 1 and tok("a  b")["input_ids"] == tok("a b")["input_ids"]


def test_monot5_3b_shape_has_the_published_size():
    """castorini/monot5-3b-msmarco-10k is t5-3b: 2.85B parameters (its hub page, safetensors). The
    count from the architecture, against the same count written out by hand from its config.json."""
    d, inner, ff, layers, vocab, heads, buckets = 1024, 32 * 128, 16384, 24, 32128, 32, 32
    attention = 4 * d * inner
    encoder = layers * (attention + 2 * d * ff + 2 * d) + d + buckets * heads
    decoder = layers * (2 * attention + 2 * d * ff + 3 * d) + d + buckets * heads
    by_hand = vocab * d + encoder + decoder  # tied input/output embeddings counted once
    n = count_parameters("monot5-3b-msmarco-10k")
    assert n == by_hand == 2_851_598_336
    assert round(n / 1e9, 2) == 2.85
    assert count_parameters("duot5-3b-msmarco-10k") == n


def rank_llm_budget(tok, query: str, template_without_docs: str, context_size: int) -> int:
    """rank_llm's MonoT5/DuoT5.create_prompt: context size - 64 reserved - tokens of the template with
    the query and empty documents, counted by encode() (with its </s>)."""
    return context_size - 64 - len(tok.encode(template_without_docs.format(query=query)))


@pytest.mark.parametrize("max_length", [512, 128])
def test_monot5_prompts_are_rank_llms(t5, pairs, max_length):
    """Every prompt: the tokenizer's own encoding of rank_llm's text when nothing is cut; a cut passage
    keeps exactly rank_llm's doc budget minus the </s> its encode counts, and 'Relevant:' stays."""
    tok, _ = t5
    reranker = build_reranker(spec("monot5", "fast", max_length=max_length))
    prompts = reranker.t5.prompts
    enc = prompts.mono(pairs)
    relevant = tok("Relevant:", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    # a query is cut to half the room the template leaves (rank_llm has no rule: its budget would go negative)
    room = (max_length - 64 - len(tok.encode("Query: Document: Relevant:"))) // 2
    cut = cut_queries = 0
    for (q, d), ids in zip(pairs, enc.seqs):
        assert ids[-len(relevant):] == relevant and len(ids) <= max_length - 64
        if len(tok(q, add_special_tokens=False)["input_ids"]) > room:
            cut_queries += 1
            continue
        budget = rank_llm_budget(tok, q, "Query: {query} Document:  Relevant: ", max_length)
        doc = tok(d, add_special_tokens=False)["input_ids"]
        if len(doc) <= budget - 1:
            assert ids == tok(f"Query: {q} Document: {d} Relevant:")["input_ids"]
        else:
            cut += 1
            kept = tok.decode(doc[:budget - 1])
            assert ids == tok(f"Query: {q} Document: {kept} Relevant:")["input_ids"]
    assert cut_queries == enc.hit_query_max
    assert cut > 0 if max_length == 128 else cut == enc.hit_max == 0  # at 128, the long passages are cut


def rank_llm_monot5_scores(tok, model, prompts: list[str]) -> np.ndarray:
    """rank_llm MonoT5.run_llm_batched, transcribed: generate one token with its scores, then
    exp(t) / (exp(t) + exp(f)) from the first step's logits; returned as its log (monoT5's score)."""
    import torch
    from transformers.generation import GenerationConfig

    true_id = tok.encode("true", add_special_tokens=False)[0]
    false_id = tok.encode("false", add_special_tokens=False)[0]
    gen_cfg = GenerationConfig.from_model_config(model.config)
    gen_cfg.max_new_tokens = gen_cfg.min_new_tokens = 1
    gen_cfg.output_scores = gen_cfg.return_dict_in_generate = True
    gen_cfg.do_sample = False
    batch = tok(prompts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], generation_config=gen_cfg)
    scores = []
    for logits in out.scores[0]:
        t, f = float(logits[true_id]), float(logits[false_id])
        scores.append(math.log(math.exp(t) / (math.exp(t) + math.exp(f))))
    return np.array(scores)


@pytest.mark.parametrize("max_length", [512, 128])
def test_monot5_fast_equals_the_reference(pairs, max_length):
    """The fast engine (sorted budget batches, folded decoder step) against the authors' formulation,
    on real text; at 128 most passages are cut."""
    ref = build_reranker(spec("monot5", "transformers", max_length=max_length, batch_size=5))
    fast = build_reranker(spec("monot5", "fast", max_length=max_length, token_budget=700))
    a, b = ref.score(pairs), fast.score(pairs)
    assert a.dtype == b.dtype == np.float32 and np.isfinite(a).all()
    assert np.abs(a - b).max() <= TOL
    assert np.std(a) > 1e-3  # scores that differ between pairs: the comparison is telling
    assert ref.stats()["truncated_pairs"] == fast.stats()["truncated_pairs"]
    assert (fast.stats()["truncated_pairs"] > 0) == (max_length == 128)
    assert fast.describe()["scoring"]["head"] == "monot5"


def test_the_reference_is_rank_llms_generate(t5, pairs):
    """The reference engine equals rank_llm's generate()-based scoring on the texts rank_llm builds."""
    tok, model = t5
    short = [(q, d) for q, d in pairs if len(tok(d)["input_ids"]) < 200][:8]
    assert len(short) >= 4
    ours = build_reranker(spec("monot5", "transformers", batch_size=3)).score(short)
    theirs = rank_llm_monot5_scores(tok, model, [f"Query: {q} Document: {d} Relevant: " for q, d in short])
    assert np.abs(ours - theirs).max() <= 1e-5


def duo_by_hand(tok, model, query: str, passages: list[str], once: bool = False) -> np.ndarray:
    """duoT5 as the paper and pygaggle define it, written plainly: each ordered pair (i, j) scored on
    its own from the template's text, p = softmax over (false, true) logits, then s_i += p, s_j += 1 - p.
    With `once`, rank_llm's PairwiseRankLLM: only the pairs i < j."""
    import torch

    true_id = tok.encode("true", add_special_tokens=False)[0]
    false_id = tok.encode("false", add_special_tokens=False)[0]
    scores = [0.0] * len(passages)
    for i in range(len(passages)):
        for j in range(len(passages)):
            if i == j or (once and j < i):  # rank_llm reads each pair once, i < j
                continue
            text = f"Query: {query} Document0: {passages[i]} Document1: {passages[j]} Relevant:"
            batch = tok([text], return_tensors="pt")
            with torch.no_grad():
                logits = model(**batch, decoder_input_ids=torch.zeros((1, 1), dtype=torch.long)).logits[0, 0]
            t, f = float(logits[true_id]), float(logits[false_id])
            p = math.exp(t) / (math.exp(t) + math.exp(f))
            scores[i] += p
            scores[j] += 1 - p
    return np.array(scores)


def test_duot5_aggregate_equals_a_double_loop(t5, collections):
    tok, model = t5
    queries = []
    for col in collections.values():
        ps = pairs_from_collection(col, k=12, max_queries=3)
        for qid, sl in ps.query_slices():
            short = [(d, p) for d, (_, p) in zip(ps.doc_ids[sl], ps.pairs[sl]) if len(tok(p)["input_ids"]) < 90][:4]
            if len(short) >= 3:
                queries.append(QueryCandidates(ps.pairs[sl][0][0], tuple(d for d, _ in short),
                                               tuple(p for _, p in short)))
    assert len(queries) >= 3
    for aggregation, once in (("sym-sum", False), ("rank_llm", True)):
        expected = [duo_by_hand(tok, model, q.query, list(q.passages), once=once) for q in queries]
        for engine in ("transformers", "fast"):
            duo = build_reranker(spec("duot5", engine, batch_size=4, duo_aggregation=aggregation))
            got = duo.rerank_queries(queries)
            for g, e in zip(got, expected):
                assert g.dtype == np.float32 and np.abs(g - e).max() <= TOL
            stats = duo.stats()
            assert stats["truncated_pairs"] == 0
            assert stats["duo_pairs"] == sum(len(q.passages) * (len(q.passages) - 1) // (2 if once else 1)
                                             for q in queries)
            assert stats["pairs"] == sum(len(q.passages) for q in queries)
            assert duo.describe()["scoring"]["duo_aggregation"] == aggregation
        assert max(np.ptp(e) for e in expected) > 1e-4  # the candidates are told apart


def chain_parts(shared_data) -> dict:
    return {"name": "chain", "first_stages": {"bm25": {"kind": "bm25", "depth": 8}},
            "datasets": [{"source": "beir", "path": str(shared_data / "vaswani"), "max_queries": 5}],
            "rerankers": [{"model": T5, "head": "monot5", "name": "monot5", "top_k": 8, "dtype": "fp32"},
                          {"model": T5, "head": "duot5", "name": "duot5", "top_k": 4, "rerank_of": "monot5",
                           "dtype": "fp32"}],
            "evaluation": {"metrics": ["nDCG@10", "Recall@100"]}}


def test_chain_bm25_monot5_duot5_gives_three_systems(shared_data, experiment_toml, tmp_path, capsys):
    path = experiment_toml("chain.toml", **chain_parts(shared_data))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    records = {r.system.label: r for r in map(read_record, sorted((out / "records").glob("*.json")))}
    assert sorted(records) == ["bm25", "monot5", "monot5 » duot5"]
    duo = records["monot5 » duot5"]
    assert duo.system.reranks == "monot5" and duo.system.chain == ["bm25", "monot5", "duot5"]
    assert duo.diagnostics["counters"]["duo_pairs"] == 5 * 4 * 3
    # duoT5 reranks monoT5's top 4 of each query; the rest stays below in monoT5's order
    mono_run, duo_run = (read_run(out / records[label].run_file) for label in ("monot5", "monot5 » duot5"))
    for q in mono_run:
        mono_order = [d for d, _ in sort_ranking(mono_run[q])]
        duo_order = [d for d, _ in sort_ranking(duo_run[q])]
        assert set(duo_order[:4]) == set(mono_order[:4]) and duo_order[4:] == mono_order[4:]
    report = (out / "report.md").read_text()
    assert "first stage: bm25" in report and "monot5 (untrained)" in report and "monot5 » duot5 (untrained)" in report
    capsys.readouterr()
    assert main(["compare", str(out / "records"), "--metric", "ndcg@10", "--out", str(tmp_path / "cmp"),
                 "--permutations", "200", "--bootstrap", "200"]) == 0
    table = capsys.readouterr().out
    assert all(label in table for label in ("bm25", "monot5 (untrained)", "monot5 » duot5 (untrained)"))
    # a rerun finds both rerankers' blocks (duoT5's cache is keyed on monoT5's checkpoints, not its record)
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    again = {r.system.label: r for r in map(read_record, sorted((out / "records").glob("*.json")))}
    for label in ("monot5", "monot5 » duot5"):
        assert again[label].timings.resumed_blocks == again[label].timings.blocks >= 1
        assert again[label].metrics == records[label].metrics


def test_known_t5_models_set_their_head_and_duot5s_k():
    mono = RerankerSpec(model="castorini/monot5-3b-msmarco-10k")
    duo = RerankerSpec(model="castorini/duot5-3b-msmarco-10k")
    assert (mono.head, mono.top_k) == ("monot5", 100)
    assert (duo.head, duo.top_k) == ("duot5", 50)  # rank_llm's recommended k: 50 · 49 = 2,450 pairs
    assert RerankerSpec(model="random:duot5-3b-msmarco-10k").head == "duot5"
    assert RerankerSpec(model=T5, head="duot5", top_k=100, max_pairs_per_query=9900).top_k == 100


@pytest.mark.parametrize("change, field", [
    ({1: {"rerank_of": "mono"}}, "rerankers[1].rerank_of = 'mono'"),
    ({0: {"rerank_of": "duot5"}, 1: {"rerank_of": None}}, "rerankers[0].rerank_of = 'duot5'"),
    ({1: {"top_k": 60}}, "max_pairs_per_query"),
    ({0: {"template": "Query: {query} Relevant:"}}, "template"),
    ({1: {"template": "Query: {query} Document0: {passage0} Relevant:"}}, "{passage1}"),
    ({0: {"max_pairs_per_query": 10}}, "max_pairs_per_query: only head = 'duot5'"),
])
def test_bad_chain_and_duot5_inputs_are_one_error_each(shared_data, experiment_toml, tmp_path, capsys, change, field):
    parts = chain_parts(shared_data)
    parts["first_stages"]["bm25"]["depth"] = 100
    for i, fields in change.items():
        parts["rerankers"][i].update(fields)
        parts["rerankers"][i] = {k: v for k, v in parts["rerankers"][i].items() if v is not None}
    path = experiment_toml("bad.toml", **parts)
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert field in err and "bad.toml" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "records").exists()  # refused at load time, before any work


def test_a_t5_without_head_and_a_head_on_the_wrong_model_are_clear(tmp_path):
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="head = 'monot5'.*or 'duot5'"):
        build_reranker(RerankerSpec(model=T5, device="cpu"))
    with pytest.raises(BenchError, match="sequence-to-sequence"):
        build_reranker(RerankerSpec(model="random:tiny-xlmr-reranker", head="monot5", device="cpu"))


def test_bench_throughput_covers_monot5_and_duot5(shared_data, experiment_toml, tmp_path, capsys):
    parts = chain_parts(shared_data)
    parts["first_stages"]["bm25"]["depth"] = 5
    parts["rerankers"] = [{"model": T5, "head": "monot5", "name": "monot5", "top_k": 5},
                          {"model": T5, "head": "duot5", "name": "duot5", "top_k": 5}]
    parts["throughput"] = {"engines": ["fast", "transformers"], "dtypes": ["fp32"], "k": 5, "pairs": 20,
                           "token_budgets": [4096], "batch_sizes": [16], "warmup": 0, "repeats": 1,
                           "latency_queries": 1}
    path = experiment_toml("tp.toml", **parts)
    out = tmp_path / "tp"
    assert main(["throughput", str(path), "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    mono, duo = (read_record(out / "records" / f"throughput-{n}.json") for n in ("monot5", "duot5"))
    for rec in (mono, duo):
        assert {c.engine for c in rec.cells} == {"fast", "transformers"}
        assert all(c.error is None and c.pairs_per_s > 0 and c.n_pairs == 20 for c in rec.cells)
    for c in duo.cells:
        rate = c.model_extra["counters_per_s"]["duo_pairs"]
        assert rate == pytest.approx(4 * 5 * 4 / c.median_s)  # 4 queries of 5 candidates: 20 ordered pairs each
    assert "duo_pairs/s" in printed
    fidelity = json.loads((out / "records" / "fidelity-duot5.json").read_text())
    assert fidelity["kind"] == "fidelity"


def test_a_model_the_fast_engine_does_not_know_is_refused(monkeypatch):
    """The fast engine computes the decoder step of T5 and mT5 blocks only; any other seq2seq model
    (umT5's per-layer position biases, BART...) is one error pointing at the reference engine."""
    from bench.errors import BenchError
    from bench.rerank.seq2seq import t5

    monkeypatch.setattr(t5, "FAST_MODEL_TYPES", ("mt5",))
    with pytest.raises(BenchError, match="fast engine cannot run 't5'.*engine = 'transformers'"):
        build_reranker(spec("monot5", "fast"))
    assert build_reranker(spec("monot5", "transformers")).engine == "transformers"
