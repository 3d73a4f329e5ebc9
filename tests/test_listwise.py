"""Listwise rerankers (head ``listwise``: generated rankings; head ``first``: FIRST's first-token logits) as
castorini/rank_llm runs them, on real MIRACL Yoruba and Vaswani text with the tiny untrained Mistral
(``random:tiny-mistral-listwise``, Mistral-7B's real tokenizer from mistral-common).

rank_llm's own formulation is transcribed here, independently of the package: its window count
(``ListwiseRankLLM._count_windows``), its sliding windows with the answer applied
(``_sliding_windows_batched_async`` + ``receive_permutation`` + ``clean_ranking_response``), its prompt
construction (``RankListwiseOSLLM.create_prompt`` over ``SingleTurnListwiseInferenceHandler``, the YAML
templates' text); the package's results are compared with these.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench import models
from bench.config import CollectionSpec, RerankerSpec
from bench.data import load_collection
from bench.errors import BenchError
from bench.rerank import build_reranker
from bench.rerank.common import QueryCandidates
from bench.rerank.listwise.parsing import parse_answer
from bench.rerank.listwise.windows import window_spans
from bench.throughput.pairs import pairs_from_collection

TINY = "random:tiny-mistral-listwise"
ALPHA = {"prompt_template": "rank_zephyr_alpha"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- rank_llm, transcribed (commit 1b3cabb) ------------------------------------------------------------
def rankllm_count_windows(num_candidates, rank_start, rank_end, window_size, stride):
    """ListwiseRankLLM._count_windows."""
    end_pos = min(rank_end, num_candidates)
    start_pos = max(end_pos - window_size, rank_start)
    count, prev_start_pos = 0, None
    while end_pos > start_pos and prev_start_pos != rank_start:
        count += 1
        prev_start_pos = start_pos
        end_pos -= stride
        start_pos -= stride
        start_pos = max(start_pos, rank_start)
    return count


def rankllm_clean(response, use_alpha):
    """response_utils.clean_ranking_response."""
    if "</think>" in response:
        response = response.split("</think>")[-1].strip()
    fake_numbers_map = str.maketrans(
        "⁰¹²³⁴⁵⁶⁷⁸⁹₀₁₂₃₄₅₆₇₈₉①②③④⑤⑥⑦⑧⑨❶❷❸❹❺❻❼❽❾０１２３４５６７８９🄀🄁🄂🄃🄄🄅🄆🄇🄈🄉",
        "0123456789012345678912345678912345678901234567890123456789")
    response = response.translate(fake_numbers_map)
    new_response = ""
    for c in response:
        if use_alpha:
            new_response += " " if not c.isalpha() else str(ord(c) - (ord("A") - 1))
        else:
            new_response += " " if not c.isdigit() else c
    return new_response.strip()


def rankllm_receive_permutation(candidates, permutation, rank_start, rank_end, use_alpha=False):
    """ListwiseRankLLM.receive_permutation (candidates as a list; returns the new list)."""
    candidates = list(candidates)
    cut_range = copy.deepcopy(candidates[rank_start:rank_end])
    original_rank = list(range(len(cut_range)))
    try:
        response = rankllm_clean(permutation, use_alpha)
        response = [int(x) - 1 for x in response.split()]
        deduplicated = []
        for c in response:
            if c not in deduplicated:
                deduplicated.append(c)
        response = [ss for ss in deduplicated if ss in original_rank]
        response = response + [tt for tt in original_rank if tt not in response]
    except Exception:
        response = original_rank
    for j, x in enumerate(response):
        candidates[j + rank_start] = cut_range[x]
    return candidates


def rankllm_sliding_windows(candidates, answer, window_size, stride, rank_end=100, use_alpha=False):
    """_sliding_windows_batched_async for one request: `answer(window candidates)` is the model's text.
    Returns the final candidates and the windows' (start, end)."""
    window_size = min(window_size, rank_end)
    end_pos = min(rank_end, len(candidates))
    start_pos = max(end_pos - window_size, 0)
    work = [(start_pos, end_pos)] if end_pos > start_pos else []
    spans = []
    while work:
        s, e = work.pop()
        spans.append((s, e))
        candidates = rankllm_receive_permutation(candidates, answer(candidates[s:e]), s, e, use_alpha)
        next_end, next_start = e - stride, max(s - stride, 0)
        if next_end > next_start and s != 0:
            work.append((next_start, next_end))
    return candidates, spans


# -- real text -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def queries(shared_data):
    """Queries of MIRACL Yoruba and Vaswani with 23, 12, 30 and 7 candidates (a short one, an exact fit,
    a longer one, one smaller than a window)."""
    out = []
    for name, split in (("miracl-yo-dev", "dev"), ("vaswani", "test")):
        col = load_collection(CollectionSpec(source="beir", path=str(shared_data / name), split=split))
        ps = pairs_from_collection(col, k=30, max_queries=2)
        for (qid, sl), n in zip(ps.query_slices(), (23, 12) if name == "vaswani" else (30, 7)):
            pairs = ps.pairs[sl][:n]
            out.append(QueryCandidates(pairs[0][0], tuple(ps.doc_ids[sl][:n]), tuple(p for _, p in pairs)))
    return out


def reranker(engine="transformers", **fields):
    fields.setdefault("listwise", {})
    return build_reranker(RerankerSpec(model=TINY, engine=engine, device="cpu", dtype="fp32", **fields))


def order_of(scores) -> list[int]:
    return [int(i) for i in np.argsort(-np.asarray(scores), kind="stable")]


def mock_generation(rr, answer):
    """Replace the model's generation: `answer(window passages)` -> text, for each window in turn."""
    windows = []

    def rank_windows(ws, prompts):
        windows.extend(ws)
        return [parse_answer(answer(w.passages), len(w.passages), rr.template.alpha) for w in ws]

    rr.rank_windows = rank_windows
    return windows


# -- windows --------------------------------------------------------------------------------------------
def test_window_counts_equal_rank_llms_formula():
    # rank_llm's own test cases (test/rerank/listwise/test_count_windows.py)
    assert [len(window_spans(n, 20, 10)) for n in (25, 8, 40)] == [2, 1, 3]
    for n in range(0, 61):
        for window in (2, 3, 5, 10, 20):
            for stride in range(1, window):
                assert len(window_spans(n, window, stride)) == rankllm_count_windows(n, 0, 100, window, stride), \
                    (n, window, stride)
    assert window_spans(100, 20, 10)[0] == (80, 100) and window_spans(100, 20, 10)[-1] == (0, 20)


def test_the_worked_example_of_rank_llms_guide(cache_dir):
    """docs/onboarding-rz.md: ten documents A..J, true ranking J..A, window 5, stride 3, a model that orders
    each window perfectly. rank_llm's code (transcribed above) runs the windows [5, 10), [2, 7), [0, 4)
    and ends with J I B A E D C H G F (the guide's prose draws the third window as [0, 5) and gets
    J I E B A D C H G F: its code's last window is cut at the top). The reranker gives the code's order."""
    docs = list("ABCDEFGHIJ")
    truth = {d: i for i, d in enumerate(docs)}  # J most relevant

    def oracle(passages):
        ranked = sorted(range(len(passages)), key=lambda i: -truth[passages[i].split()[-1]])
        return " > ".join(f"[{i + 1}]" for i in ranked)

    expected, spans = rankllm_sliding_windows([f"document {d}" for d in docs], oracle, 5, 3)
    assert spans == [(5, 10), (2, 7), (0, 4)]
    assert [c.split()[-1] for c in expected] == list("JIBAEDCHGF")
    rr = reranker(listwise={"window": 5, "stride": 3})
    windows = mock_generation(rr, oracle)
    (scores,) = rr.rerank_queries([QueryCandidates("which letter?", tuple(docs), tuple(f"document {d}" for d in docs))])
    assert [docs[i] for i in order_of(scores)] == list("JIBAEDCHGF")
    assert [len(w.passages) for w in windows] == [5, 5, 4]
    assert rr.stats()["windows"] == 3 and rr.stats()["repaired_windows"] == 0


@pytest.mark.parametrize("answer_text", ["[2] > [1] > [3]", "[4] > [3] > [2] > [1] > [5] > [6] > [7] > [8] > [9] > [10]"])
def test_a_fixed_answer_gives_rank_llms_order_on_real_text(queries, answer_text):
    """A mocked model that answers the same permutation to every window: on every query (candidate counts
    30, 7, 23, 12), two passes, window 10, stride 4, the order is rank_llm's and the windows are its."""
    rr = reranker(listwise={"window": 10, "stride": 4, "passes": 2})
    mock_generation(rr, lambda passages: answer_text)
    results = rr.rerank_queries(queries)
    expected_windows = 0
    for q, scores in zip(queries, results):
        candidates = list(q.doc_ids)
        for _ in range(2):
            candidates, spans = rankllm_sliding_windows(candidates, lambda c: answer_text, 10, 4)
            expected_windows += len(spans)
        assert [q.doc_ids[i] for i in order_of(scores)] == candidates
    assert rr.stats()["windows"] == expected_windows


# -- answers -------------------------------------------------------------------------------------------
MALFORMED = [
    ("[3] > [1] > [2] > [5] > [4]", 0, 0, 0),            # clean
    ("[3] > [1]", 3, 0, 0),                              # missing
    ("[2] > [2] > [1] > [1] > [3] > [4] > [5]", 0, 2, 0),  # duplicates
    ("[7] > [2] > [0] > [1] > [3] > [4] > [5]", 0, 0, 2),  # unknown (7; 0 is -1)
    ("", 5, 0, 0),                                       # empty
    ("I think [4] is best. ⁵ > ③", 2, 0, 0),             # prose, look-alike digits
    ("<think>[1] > [2]</think>[5] > [4]", 3, 0, 0),      # reasoning before the answer
    ("[12] > [1]", 4, 0, 1),                             # two digits
]


@pytest.mark.parametrize("text, missing, duplicate, unknown", MALFORMED)
def test_malformed_answers_are_repaired_as_rank_llm_repairs_them(text, missing, duplicate, unknown):
    repair = parse_answer(text, 5, alpha=False)
    assert repair.permutation == rankllm_receive_permutation(list(range(5)), text, 0, 5)
    assert (repair.missing, repair.duplicate, repair.unknown) == (missing, duplicate, unknown)
    assert repair.repaired == bool(missing or duplicate or unknown)
    assert repair.empty == (text == "")


def test_alphabetical_answers_and_unreadable_digits():
    for text in ("[C] > [A] > [B]", "[B] > [b] > [A]", "C A", "[Z] > [A]"):
        assert parse_answer(text, 4, alpha=True).permutation == rankllm_receive_permutation(
            list(range(4)), text, 0, 4, use_alpha=True), text
    # a digit with no decimal value (PARENTHESIZED DIGIT ONE): rank_llm keeps the window as it was
    repair = parse_answer("[2] > ⑴", 3, alpha=False)
    assert repair.permutation == rankllm_receive_permutation([0, 1, 2], "[2] > ⑴", 0, 3) == [0, 1, 2]
    assert repair.unreadable and repair.repaired


def test_repaired_windows_are_counted(queries):
    """Answers cycle through the malformed ones: each window's repair is counted, and summed in stats()."""
    rr = reranker(listwise={"window": 5, "stride": 2})
    answers = iter(t for t, *_ in MALFORMED * 100)
    mock_generation(rr, lambda passages: next(answers))
    rr.rerank_queries(queries[:1])
    n = rr.stats()["windows"]
    assert n == rankllm_count_windows(len(queries[0].passages), 0, 100, 5, 2) > len(MALFORMED)
    cycle = [parse_answer(t, 5, False) for t, *_ in (MALFORMED * 2)[:n]]
    assert rr.stats()["repaired_windows"] == sum(r.repaired for r in cycle)
    assert rr.stats()["identifiers_missing"] == sum(r.missing for r in cycle)
    assert rr.stats()["identifiers_duplicate"] == sum(r.duplicate for r in cycle)
    assert rr.stats()["empty_answers"] == sum(r.empty for r in cycle)


# -- the models on real text ---------------------------------------------------------------------------
def test_every_query_gets_a_permutation_of_its_candidates(queries):
    """The three engines with the tiny model, two passes: each query's scores order exactly its candidates
    (distinct scores, nothing lost or added), the window count is rank_llm's, answers are repaired and
    counted, and FIRST's fast engine orders as its reference does."""
    settings = {"window": 8, "stride": 3, "passes": 2}
    expected_windows = 2 * sum(rankllm_count_windows(len(q.passages), 0, 100, 8, 3) for q in queries)
    orders = {}
    for head, engine, extra in (("listwise", "transformers", {}), ("first", "transformers", ALPHA),
                                ("first", "fast", ALPHA)):
        rr = reranker(engine, head=head, listwise={**settings, **extra}, batch_size=4)
        results = rr.rerank_queries(queries)
        for q, scores in zip(queries, results):
            assert scores.dtype == np.float32 and len(scores) == len(q.passages)
            assert sorted(scores.tolist()) == list(range(1, len(q.passages) + 1))
        stats = rr.stats()
        assert stats["windows"] == expected_windows and stats["pairs"] == sum(len(q.passages) for q in queries)
        assert 0 < stats["repaired_windows"] <= stats["windows"]  # the untrained model needs repairs
        orders[(head, engine)] = [order_of(s) for s in results]
        if head == "listwise":
            assert stats["generated_tokens"] > 0 and stats["identifiers_duplicate"] > 0
    assert orders[("first", "fast")] == orders[("first", "transformers")]
    assert any(o != list(range(len(o))) for o in orders[("first", "fast")])  # FIRST moved something


def test_first_fast_equals_the_reference_on_identifier_logits(queries):
    """fp32 CPU: the packed engine (prefix reuse on and off, a token budget small enough for several
    batches and prefix caches merged across steps) gives the reference's identifier logits within 1e-4."""
    ref = reranker("transformers", head="first", listwise={**ALPHA, "window": 10, "stride": 5})
    steps = []
    for q in queries:  # two steps: every query's first window, then its second (or its only one again)
        spans = window_spans(len(q.passages), 10, 5)
        for step, (s, e) in enumerate(spans[:2] + spans[:1] * (2 - len(spans[:2]))):
            while len(steps) <= step:
                steps.append([])
            steps[step].append(ref.prompts.build(q.query, q.passages[s:e]))
    expected = [ref.window_logits(p) for p in steps]
    assert np.std(expected[0][:, :-1]) > 0.5  # logits spread, so equality can fail
    for reuse, budget in ((True, 700), (False, 4096), (True, 50000)):
        fast = reranker("fast", head="first", listwise={**ALPHA, "window": 10, "stride": 5}, prefix_reuse=reuse,
                        token_budget=budget)
        fast.start_queries()
        for prompts, want in zip(steps, expected):
            got = fast.window_logits(prompts)
            assert got.shape == want.shape
            assert np.abs(got - want).max() < 1e-4, (reuse, budget)
        saved = fast.describe()["prefix_reuse"]["prefix_tokens_saved"]
        assert (saved > 0.01) is reuse


# -- prompts as rank_llm builds them -------------------------------------------------------------------
RANK_ZEPHYR_YAML = r'''
method: "singleturn_listwise"
system_message: "You are RankLLM, an intelligent assistant that can rank passages based on their relevancy to the query"
prefix: |
  I will provide you with {num} passages, each indicated by a numerical identifier []. Rank the passages based on their relevance to the search query: {query}.
body: |
  [{rank}] {candidate}
suffix: |-
  Search Query: {query}.
  Rank the {num} passages above based on their relevance to the search query. All the passages should be included and listed using identifiers, in descending order of relevance. The output format should be [] > [], e.g., [2] > [1], Answer concisely and directly and only respond with the ranking results, do not say any word or explain.
output_validation_regex: r"^\[\d+\]( > \[\d+\])*$"
output_extraction_regex: r"\[(\d+)\]"
'''
RANK_ZEPHYR_ALPHA_YAML = RANK_ZEPHYR_YAML.replace("a numerical identifier", "an alphabetical identifier").replace(
    "e.g., [2] > [1]", "e.g., [B] > [A]")


def rankllm_prompt_ids(tokenizer, yaml_text, query, passages, context_size, use_alpha, use_logits,
                       max_passage_words=300):
    """RankListwiseOSLLM.create_prompt (vLLM generate path) with SingleTurnListwiseInferenceHandler, then
    vLLM's tokenization of the text prompt (run_llm appends '[' when use_logits)."""
    import re

    import yaml
    from ftfy import fix_text

    template = yaml.safe_load(yaml_text)
    replace_number = lambda s: re.sub(r"\[(\d+)\]", r"(\1)", s)  # noqa: E731

    def output_tokens(n):
        ids = [chr(ord("A") + i) if use_alpha else str(i + 1) for i in range(n)]
        return len(tokenizer.encode(" > ".join(f"[{i}]" for i in ids), add_special_tokens=False))

    def generate_prompt(max_length):
        body = ""
        for rank, doc in enumerate(passages, start=1):
            content = fix_text(doc.strip())
            content = replace_number(" ".join(content.split()[: int(max_length)]))
            body += template["body"].format(rank=chr(64 + rank) if use_alpha else str(rank), candidate=content)
        values = {"num": len(passages), "query": replace_number(query)}
        text = template["prefix"].format(**values) + body + template["suffix"].format(**values)
        return [{"role": "system", "content": template["system_message"]}, {"role": "user", "content": text}]

    n = len(passages)
    max_length = max_passage_words
    while True:
        prompt = fix_text(tokenizer.apply_chat_template(generate_prompt(max_length), tokenize=False,
                                                        add_generation_prompt=True, enable_thinking=False))
        num_tokens = len(tokenizer.encode(prompt))
        if num_tokens <= context_size - output_tokens(n):
            break
        max_length -= max(1, (num_tokens - context_size + output_tokens(n)) // (n * 4))
    return tokenizer.encode(prompt + "[" if use_logits else prompt), max_length


@pytest.mark.parametrize("model, version, yaml_text, head", [
    ("castorini/rank_zephyr_7b_v1_full", "v1", RANK_ZEPHYR_YAML, "listwise"),
    ("castorini/first_mistral", "v3", RANK_ZEPHYR_ALPHA_YAML, "first")])
def test_prompt_ids_with_mistrals_tokenizer_equal_rank_llms_construction(queries, model, version, yaml_text, head):
    """RankZephyr (Mistral-7B-v0.1's tokenizer, Zephyr's chat template) and FIRST (Mistral-7B-Instruct-v0.3's,
    its chat template, '[' appended): one window of real passages, whole and cut to fit a small context."""
    from bench.models.decoders import mistral_tokenizer
    from bench.rerank.listwise.known import KNOWN_LISTWISE
    from bench.rerank.listwise.prompts import ListwisePrompter
    from bench.rerank.listwise.templates import load_template

    tok = mistral_tokenizer(version)
    assert len(tok) == {"v1": 32000, "v3": 32768}[version] and tok.bos_token_id == 1
    settings = RerankerSpec(model=model, device="cpu").listwise
    assert KNOWN_LISTWISE[model].head == head and settings.variable_passages
    q = queries[2]  # Vaswani: long abstracts, so a small context cuts them
    for context_size in (4096, 1500):
        prompter = ListwisePrompter(tok, load_template(settings.prompt_template), context_size=context_size,
                                    max_passage_words=300, variable_passages=True, first=head == "first")
        built = prompter.build(q.query, q.passages[:20])
        expected, words = rankllm_prompt_ids(tok, yaml_text, q.query, q.passages[:20], context_size,
                                             use_alpha=head == "first", use_logits=head == "first")
        assert built.ids == expected and built.max_words == words
        assert 0 < built.shared < len(built.ids) // 2
    assert words < 300  # the small context cut the passages


# -- bad input -----------------------------------------------------------------------------------------
def test_bad_inputs_are_one_clear_error(cache_dir, tmp_path):
    from pydantic import ValidationError

    with pytest.raises(BenchError, match=r"listwise.window = 20 does not fit listwise.context_size = 300"):
        reranker(listwise={"context_size": 300})
    with pytest.raises(ValidationError, match="stride = 10 must be less than window = 10"):
        RerankerSpec(model=TINY, listwise={"window": 10})
    with pytest.raises(ValidationError, match="engine = 'fast' does not run head = 'listwise'"):
        RerankerSpec(model=TINY, engine="fast")
    with pytest.raises(ValidationError, match="max_length: not read by head = 'listwise'"):
        RerankerSpec(model=TINY, max_length=512)
    with pytest.raises(BenchError, match="reads single-token identifiers A..T"):
        reranker("fast", head="first")  # the numeric template
    # a template without its placeholders
    bad = tmp_path / "bad.yaml"
    bad.write_text(RANK_ZEPHYR_YAML.replace("[{rank}] {candidate}", "[{rank}]"), encoding="utf-8")
    with pytest.raises(ValidationError, match=r"section 'body' lacks its placeholder\(s\) \{candidate\}"):
        RerankerSpec(model=TINY, listwise={"prompt_template": str(bad)})
    # an identifier that is not one token of its own: Qwen's BPE merges '[A'
    qwen = tmp_path / "qwen"
    shutil.copytree(models.resolve("random:tiny-qwen3-reranker", cache_dir), qwen)
    cfg = json.loads((qwen / "tokenizer_config.json").read_text())
    (qwen / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": "{{ messages[-1]['content'] + '\\n' }}"}))
    with pytest.raises(BenchError, match=r"the identifier 'A' after '\[' is not one token of its own"):
        build_reranker(RerankerSpec(model=str(qwen), head="first", listwise=ALPHA, device="cpu"))
    # an architecture the fast engine does not know
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(gpt2)
    with pytest.raises(BenchError, match="fast engine cannot run .*model_type 'gpt2' is not one of"):
        build_reranker(RerankerSpec(model=str(gpt2), head="first", listwise=ALPHA, device="cpu"))


def test_cli_exits_2_naming_the_field(experiment_toml, capsys):
    from bench.cli import main

    path = experiment_toml(name="t", first_stages={"bm25": {"kind": "bm25"}}, datasets=[{"source": "synthetic"}],
                           rerankers=[{"model": TINY, "listwise": {"window": 10, "stride": 12}}])
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "rerankers[0].listwise" in err and "stride = 12 must be less than window = 10" in err


# -- the models: Mistral and Llama in the packed decoder, the published shapes ------------------------
@pytest.mark.parametrize("family", ["mistral", "llama"])
def test_packed_decoder_runs_mistral_and_llama_as_hugging_face_does(family):
    """Random tiny Mistral and Llama (GQA; Llama with attention biases and Llama 3's rope scaling): the
    final hidden state at each sequence's last token, whole and continuing a shared prefix, equals the
    Hugging Face forward's; a sequence past Mistral's sliding window is refused."""
    import torch
    import transformers

    from bench.engine import decoder

    shape = dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, max_position_embeddings=512)
    if family == "mistral":
        cfg, cls = transformers.MistralConfig(**shape, sliding_window=40), transformers.MistralForCausalLM
    else:
        cfg = transformers.LlamaConfig(**shape, attention_bias=True, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64})
        cls = transformers.LlamaForCausalLM
    torch.manual_seed(0)
    model = cls(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    rng = np.random.default_rng(0)
    prefix = rng.integers(3, 300, 9).tolist()
    seqs = [prefix + rng.integers(3, 300, n).tolist() for n in (5, 17, 30)]
    with torch.inference_mode():
        want = [model(torch.tensor([s]), output_hidden_states=True).hidden_states[-1][0, -1] for s in seqs]
        packed = decoder.PackedDecoder(model, None)
        whole = packed.last_hidden(decoder.make_batch(seqs, [0, 0, 0], "cpu"))
        cache = packed.prefix_cache(decoder.make_batch([prefix], [0], "cpu"))
        cont = packed.last_hidden(decoder.make_batch([s[9:] for s in seqs], [9, 9, 9], "cpu", [0, 0, 0]), cache)
        for got in (whole, cont):
            assert max(float((g - w).abs().max()) for g, w in zip(got, want)) < 1e-4
        if family == "mistral":
            with pytest.raises(BenchError, match="exceeds the model's sliding window of 40"):
                packed.last_hidden(decoder.make_batch([prefix * 5], [0], "cpu"))


def test_exact_shapes_have_the_published_parameter_counts():
    """rank_zephyr_7b_v1_full (Mistral-7B-v0.1: 7.24B on its model page) and first_mistral
    (Mistral-7B-Instruct-v0.3: 7.25B), counted on the meta device and by hand from the published configs."""
    import torch

    from bench.models.decoders import decoder_config

    def by_hand(vocab, hidden=4096, layers=32, heads=32, kv=8, ffn=14336):
        head = hidden // heads
        attention = hidden * heads * head + 2 * hidden * kv * head + heads * head * hidden
        return 2 * vocab * hidden + layers * (attention + 3 * hidden * ffn + 2 * hidden) + hidden

    for arch, vocab, published in (("rank-zephyr-7b-v1-full", 32000, 7.24e9), ("first-mistral", 32768, 7.25e9)):
        cfg, cls = decoder_config(arch)
        with torch.device("meta"):
            model = cls(cfg)
        n = sum(p.numel() for p in model.parameters())
        assert n == by_hand(vocab) and round(n / 1e7) * 1e7 == published, (arch, n)
    assert decoder_config("rank-zephyr-7b-v1-full")[0].sliding_window == 4096
    assert decoder_config("first-mistral")[0].sliding_window is None


# -- throughput ----------------------------------------------------------------------------------------
def test_bench_throughput_puts_first_and_generation_side_by_side(shared_data, cache_dir, experiment_toml, tmp_path,
                                                                  capsys):
    """`bench throughput` with the tiny model: FIRST on the packed engine (with and without prefix reuse),
    its transformers reference and generated rankings, on the same queries, in one record and table."""
    from bench.cli import main
    from bench.records import find_records

    lw = {"window": 6, "stride": 3}
    exp = experiment_toml(
        "tp.toml", name="tp-listwise", cache_dir=cache_dir, first_stages={"bm25": {"kind": "bm25", "depth": 12}},
        datasets=[{"source": "beir", "path": shared_data / "miracl-yo-dev", "split": "dev"}],
        rerankers=[{"model": TINY, "name": "first", "head": "first", "device": "cpu", "top_k": 12,
                    "listwise": {**lw, **ALPHA}},
                   {"model": TINY, "name": "gen", "head": "listwise", "device": "cpu", "top_k": 12, "listwise": lw}],
        throughput={"engines": ["fast", "transformers"], "dtypes": ["fp32"], "batch_sizes": [4], "token_budgets": [4096],
                    "pairs": 24, "k": 12, "warmup": 0, "repeats": 1, "latency_queries": 1,
                    "variants": {"fast": [{}, {"prefix_reuse": False}]}})
    out = tmp_path / "out"
    rc = main(["throughput", str(exp), "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    (tp,) = find_records(out, kind="throughput")
    cells = {(c.model_extra["reranker"], c.engine, bool(c.options)): c for c in tp.cells}
    assert set(cells) == {("first", "fast", False), ("first", "fast", True), ("first", "transformers", False),
                          ("gen", "transformers", False)}
    for c in tp.cells:
        extra = c.model_extra
        assert c.error is None and c.n_queries == 2 and extra["windows_per_pass"] == 2 * 3
        assert extra["windows_per_s"] > 0 and extra["tokens_per_window"] > 100
    assert cells[("first", "fast", False)].model_extra["prefix_tokens_saved"] > 0
    assert cells[("first", "fast", True)].model_extra["prefix_tokens_saved"] is None
    assert cells[("first", "fast", False)].model_extra["same_order_as"]["share"] == 1.0
    assert cells[("gen", "transformers", False)].model_extra["generated_tokens_per_window"] > 10
    assert (out / "throughput-listwise.md").read_text().count("| first |") == 3


# -- registry and experiments ------------------------------------------------------------------------
REGISTRY = "bench/registry_entries/rankllm-2cr-msmarco.toml"
TSV = "published/rankllm-2cr-msmarco.tsv"
TEMPLATE_FILES = {"rank_zephyr_template.yaml": "rank_zephyr", "rank_zephyr_alpha_template.yaml": "rank_zephyr_alpha",
                  "rank_gpt_template.yaml": "rank_gpt"}


@pytest.fixture(scope="module")
def table_rows(shared_data):
    import csv

    path = shared_data.parent / TSV
    return list(csv.DictReader(path.open(encoding="utf-8"), delimiter="\t"))


def test_the_registry_holds_every_row_of_rank_llms_table(table_rows):
    """Each TSV row is one entry with its value, protocol and citation; paid APIs and LiT5 are blocked
    with their reason; every open-weights row on DL19-DL23 is a reranker of its experiment
    (rankllm-dl19-dl20.toml, -dl19-dl20-splade.toml over SPLADE++ ED, -dl21-dl23.toml) with exactly the
    entry's settings."""
    from bench.config import load_experiment
    from bench.registry import PROJECT_ROOT, load_registry_file

    entries = {e.name: e for e in load_registry_file(PROJECT_ROOT / REGISTRY)}
    assert len(entries) == len(table_rows) == 66
    experiments = {}
    for i, row in enumerate(table_rows, start=2):
        e = entries[f"rankllm-2cr/{row['condition']}/{row['topics']}/nDCG@10"]
        assert e.value == float(row["nDCG@10"]) and e.metric == "nDCG@10" and e.stage == "rerank"
        assert e.reranker.model == row["model"] and e.reranker.top_k == int(row["top_k"]) == e.first_stage.depth
        assert e.first_stage.kind == ("bm25" if row["first_stage"] == "bm25" else "splade")
        if row["first_stage"] != "bm25":  # Pyserini's SPLADE++ ED impact index: documents x 100, queries x 51.2
            assert (e.first_stage.model, e.first_stage.quantize, e.first_stage.query_quantize) == (
                "naver/splade-cocondenser-ensembledistil", 100, 51.2)
            assert e.experiment == "experiments/rankllm-dl19-dl20-splade.toml"
        assert f"row {i} of" in e.source.note and "1b3cabbc3564441bdcda6c6a2e92137b9faa0660" in e.source.url
        assert f"condition {row['condition']}, topic {row['topics']}, column nDCG@10" in e.source.section
        assert e.datasets[0].label.endswith({"dl19-passage": "2019/judged", "dl20-passage": "2020/judged",
                                             "dl21-passage": "2021/judged", "dl22-passage": "2022/judged",
                                             "dl23-passage": "2023/judged"}[row["topics"]])
        paid, lit5 = row["model"] in ("gpt-4o-mini", "gemini-2.0-flash"), "LiT5" in row["model"]
        assert bool(e.blocked) == (paid or lit5)
        assert ("paid API" in (e.blocked or "")) == paid and ("FiD" in (e.blocked or "")) == lit5
        other = {"monot5_template.yaml": "monot5", "duot5_template.yaml": "duot5", "rank_fid_template.yaml": None}
        if row["prompt_template"] in other:
            assert e.reranker.head == other[row["prompt_template"]] and e.reranker.listwise is None
        else:
            lw = e.reranker.listwise
            assert e.reranker.head == ("first" if row["first_token_logits"] == "yes" else "listwise")
            assert (lw.window, lw.stride, lw.passes, lw.context_size, lw.variable_passages, lw.prompt_template) == (
                20, 10, int(row["passes"]), int(row["context_size"]), row["variable_passages"] == "yes",
                TEMPLATE_FILES.get(row["prompt_template"], row["prompt_template"]))
        if e.blocked:
            continue
        path = e.experiment_path()
        exp = experiments.setdefault(path, load_experiment(path))
        (spec,) = [r for r in exp.rerankers if r.label == e.system]
        assert spec.model == e.reranker.model and spec.head == e.reranker.head and spec.top_k == e.reranker.top_k
        assert e.first_stage_label in exp.first_stages and exp.first_stages[e.first_stage_label].kind == e.first_stage.kind
        if e.reranker.head == "duot5":  # rank_llm reads each pair once
            assert spec.duo_aggregation == e.reranker.duo_aggregation == "rank_llm"
        if e.reranker.head not in ("listwise", "first"):
            continue
        for field in e.reranker.listwise.model_fields_set:
            assert getattr(spec.listwise, field) == getattr(e.reranker.listwise, field), (e.name, field)
        assert e.datasets[0].id in [d.id for d in exp.datasets]
    assert set(experiments) == {PROJECT_ROOT / "experiments/rankllm-dl19-dl20.toml",
                                PROJECT_ROOT / "experiments/rankllm-dl19-dl20-splade.toml",
                                PROJECT_ROOT / "experiments/rankllm-dl21-dl23.toml"}


def test_reproduce_lists_the_entries_and_a_record_with_another_protocol_fails(capsys):
    from bench.cli import main
    from bench.records import make_record
    from bench.registry import PROJECT_ROOT, check, load_registry_file

    assert main(["reproduce", "--list", "rankllm-2cr/*"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 66
    first = next(line for line in listed if line.startswith("rankllm-2cr/firstmistral/dl19-passage"))
    assert "first window=20, stride=10, passes=1" in first and "prompt_template=rank_zephyr_alpha" in first
    # DL19/20: 8 paid-API rows, 2 LiT5; DL21-23: 12 paid-API rows, 3 LiT5
    blocked = [line for line in listed if "[blocked]" in line]
    assert len(blocked) == 8 + 2 + 12 + 3

    entry = next(e for e in load_registry_file(PROJECT_ROOT / REGISTRY)
                 if e.name == "rankllm-2cr/firstmistral/dl19-passage/nDCG@10")
    spec = RerankerSpec(model="castorini/first_mistral", name="first_mistral", engine="fast",
                        listwise={"window": 10, "stride": 5})
    record = make_record(
        "quality", dataset={"label": "msmarco-passage/trec-dl-2019/judged", "id": "msmarco-passage/trec-dl-2019/judged",
                            "n_queries": 43, "n_docs": 8841823},
        system={"label": "first_mistral", "stage": "rerank", "first_stage": {"kind": "bm25", "depth": 100},
                "first_stage_label": "bm25",
                "reranker": {**spec.model_dump(mode="json"), "model": {"ref": spec.model, "untrained": False}}},
        evaluation={"metrics": ["nDCG@10"], "conventions": {}}, metrics={"nDCG@10": 0.68})
    result = check(entry, [record])
    assert result.status == "FAIL"
    assert "reranker.listwise.window: expected 20, record has 10" in result.reasons
    assert "reranker.listwise.stride: expected 10, record has 5" in result.reasons
    assert not any("prompt_template" in r or "reranker.head" in r for r in result.reasons)


def test_the_listwise_experiments_load():
    from bench.config import load_experiment
    from bench.registry import PROJECT_ROOT

    tp = load_experiment(PROJECT_ROOT / "experiments/throughput-listwise.toml")
    assert {r.head for r in tp.rerankers} == {"first", "listwise"} and tp.throughput.engines == ["fast", "transformers"]
    demo = load_experiment(PROJECT_ROOT / "experiments/offline-listwise.toml")
    assert [(r.head, r.engine) for r in demo.rerankers] == [("first", "fast"), ("first", "transformers"),
                                                           ("listwise", "transformers")]


# -- end to end ----------------------------------------------------------------------------------------
def test_bench_run_records_listwise_rerankers_with_their_counters(experiment_toml, cache_dir, tmp_path):
    """`bench run` with FIRST (fast, reference) and generation over BM25 top 10 of a small synthetic
    collection: one record each, the window counters summed into diagnostics.counters, the reranked run a
    permutation of the candidates, FIRST's two engines the same run; a rerun reads every block back."""
    from bench.cli import main
    from bench.records import find_records
    from bench.runs import read_run

    lw = {"window": 5, "stride": 2}
    fresh = tmp_path / "cache"  # nothing resumed from an earlier session: every reranker runs and describes itself
    model = Path(models.resolve(TINY, cache_dir))
    shutil.copytree(model, fresh / "models" / model.name)
    exp = experiment_toml(
        name="lw", cache_dir=fresh, first_stages={"bm25": {"kind": "bm25", "depth": 10}},
        datasets=[{"source": "synthetic", "synthetic": {"languages": ["en"], "docs_per_language": 200,
                                                        "queries_per_language": 6, "seed": 1}}],
        rerankers=[{"model": TINY, "name": "first-fast", "head": "first", "engine": "fast", "top_k": 10,
                    "device": "cpu", "listwise": {**lw, **ALPHA}},
                   {"model": TINY, "name": "first-ref", "head": "first", "engine": "transformers", "top_k": 10,
                    "device": "cpu", "listwise": {**lw, **ALPHA}},
                   {"model": TINY, "name": "gen", "top_k": 10, "device": "cpu", "listwise": lw}],
        evaluation={"metrics": ["nDCG@10"]})
    out = tmp_path / "out"
    assert main(["run", str(exp), "--out", str(out), "--no-progress"]) == 0
    records = {r.system.label: r for r in find_records(out / "records", kind="quality")}
    first_stage = read_run(out / records["bm25"].run_file)
    runs = {}
    for label in ("first-fast", "first-ref", "gen"):
        rec = records[label]
        counters = rec.diagnostics["counters"]
        assert counters["windows"] == sum(rankllm_count_windows(len(d), 0, 100, 5, 2) for d in first_stage.values())
        assert 0 < counters["repaired_windows"] <= counters["windows"]
        assert rec.system.reranker["scoring"]["head"] == ("listwise" if label == "gen" else "first")
        assert rec.system.reranker["listwise"]["window"] == 5 and rec.system.reranker["max_length"] == 4096
        runs[label] = read_run(out / rec.run_file)
        assert {q: set(d) for q, d in runs[label].items()} == {q: set(d) for q, d in first_stage.items()}
    assert runs["first-fast"] == runs["first-ref"]
    # a rerun reads every block back, counters included
    assert main(["run", str(exp), "--out", str(out), "--no-progress"]) == 0
    again = {r.system.label: r for r in find_records(out / "records", kind="quality")}
    assert again["gen"].timings.resumed_blocks == again["gen"].timings.blocks
    assert again["gen"].diagnostics["counters"] == records["gen"].diagnostics["counters"]
