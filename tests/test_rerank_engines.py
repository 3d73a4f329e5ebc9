"""Reranker engines on real Yoruba pairs: the fast engine and the baselines agree with the plain
loop (fp32, within 1e-5) in input order, for any token budget; stats, describe, errors, OOM search.

The session's `tiny_reranker` has near-constant outputs (random init, std 0.02), on which an
equality test could not fail; `spread_reranker` adds seeded noise to its weights so scores differ
from pair to pair.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.config import RerankerSpec
from bench.errors import BenchError
from bench.rerank import build_reranker
from bench.throughput.speed import beir_pairs

TOL = 1e-5


def spread(src: str, dst: Path, seed: int = 0, scale: float = 0.15) -> str:
    """Copy of the cross-encoder at `src` with seeded noise on every non-LayerNorm weight."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not (dst / "config.json").exists():
        model = AutoModelForSequenceClassification.from_pretrained(src)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "LayerNorm" not in name:
                    p.add_(torch.randn(p.shape, generator=g) * scale)
        model.config.rerank_bench = {"untrained": True}
        model.save_pretrained(dst)
        AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return str(dst)


@pytest.fixture(scope="session")
def pairs(shared_data):
    """Real MIRACL Yoruba queries with judged passages (half) and random corpus passages (half)."""
    return beir_pairs(shared_data / "miracl-yo-dev", 160).pairs


@pytest.fixture(scope="session")
def spread_reranker(tiny_reranker, cache_dir):
    return spread(tiny_reranker, cache_dir / "spread-tiny-xlmr")


@pytest.fixture(scope="session")
def tiny_bert_reranker(minilm, cache_dir):
    """A 2-layer BERT cross-encoder (token type ids, pooler head) with bert-base-uncased's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    dst = cache_dir / "tiny-bert-reranker"
    if not (dst / "config.json").exists():
        torch.manual_seed(1)
        cfg = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=512, num_labels=1, initializer_range=0.2)
        BertForSequenceClassification(cfg).eval().save_pretrained(dst)
        AutoTokenizer.from_pretrained(minilm).save_pretrained(dst)
    return str(dst)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: on a busy 2-core machine OpenMP's spinning threads made these tiny
    forwards ~10x slower; the numbers compared do not depend on the thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_ENGINES: dict = {}


def engine(model: str, engine: str = "fast", **fields):
    """Engines are cached per settings: loading is the slow part of these tests."""
    options = fields.pop("options", {})
    key = (model, engine, tuple(sorted(fields.items())), tuple(sorted(options.items())))
    if key not in _ENGINES:
        spec = RerankerSpec(model=model, engine=engine, device="cpu", **fields)
        _ENGINES[key] = build_reranker(spec, **options)
    r = _ENGINES[key]
    r.reset_stats()
    return r


@pytest.fixture(scope="session")
def plain_scores(spread_reranker, pairs):
    return engine(spread_reranker, "transformers", max_length=128).score(pairs)


def test_scores_vary_so_equality_tests_can_fail(plain_scores):
    assert plain_scores.dtype == np.float32
    assert plain_scores.std() > 0.05


@pytest.mark.parametrize("budget", [1, 60, 700, 8192])
def test_fast_equals_plain_loop_for_any_budget(spread_reranker, pairs, plain_scores, budget):
    # budget 1 is shorter than every pair: each pair then runs alone in its batch.
    n = 48 if budget == 1 else len(pairs)  # one forward per pair: keep it short
    r = engine(spread_reranker, "fast", max_length=128)
    r.set_token_budget(budget)
    scores = r.score(pairs[:n])
    assert scores.dtype == np.float32 and scores.shape == (n,)
    np.testing.assert_allclose(scores, plain_scores[:n], atol=TOL, rtol=0)
    d = r.describe()
    assert d["forward"] == "packed" and d["attention"] == "sdpa-padded" and d["dtype"] == "fp32"
    assert d["token_budget_requested"] == budget == d["token_budget_used"]
    st = r.stats()
    assert st["pairs"] == n and st["padded_tokens"] == st["tokens"] > n
    assert st["truncated_pairs"] > 0  # max_length 128 cuts real Yoruba passages


def test_fast_hf_forward_and_baselines_equal_plain_loop(spread_reranker, pairs, plain_scores):
    for name, fields in [("fast", {"options": {"forward": "hf"}}), ("sentence-transformers", {}), ("flag", {})]:
        r = engine(spread_reranker, name, max_length=128, **fields)
        np.testing.assert_allclose(r.score(pairs), plain_scores, atol=TOL, rtol=0, err_msg=name)
        st = r.stats()
        assert st["pairs"] == len(pairs) and st["padded_tokens"] >= st["tokens"] > 0, name


def test_fast_variants_equal_plain_loop(spread_reranker, pairs, plain_scores):
    """The full last layer (prune_last_layer off) and the GELU epilogue give the same scores; the
    default prunes the last layer, and the record says which ran."""
    default = engine(spread_reranker, "fast", max_length=128)
    assert default.describe()["prune_last_layer"] is True and default.describe()["gelu_epilogue"] is False
    for opts in ({"prune_last_layer": False}, {"gelu_epilogue": True}):
        r = engine(spread_reranker, "fast", max_length=128, options=opts)
        np.testing.assert_allclose(r.score(pairs), plain_scores, atol=TOL, rtol=0, err_msg=str(opts))
        d = r.describe()
        assert all(d[k] == v for k, v in opts.items()), d


def test_same_tokens_counted_by_all_engines(spread_reranker, pairs):
    counts = {}
    for name in ("transformers", "fast", "sentence-transformers", "flag"):
        r = engine(spread_reranker, name, max_length=128)
        r.score(pairs)
        st = r.stats()
        counts[name] = (st["tokens"], st["truncated_pairs"])
    assert len(set(counts.values())) == 1, counts
    plain = engine(spread_reranker, "transformers", max_length=128)
    plain.score(pairs)
    assert plain.stats()["padded_tokens"] > counts["fast"][0]  # input-order batches carry padding


def test_input_order_preserved_under_shuffle(spread_reranker, pairs):
    r = engine(spread_reranker, "fast", max_length=128)
    r.set_token_budget(500)
    base = r.score(pairs)
    perm = np.random.default_rng(3).permutation(len(pairs))
    shuffled = r.score([pairs[i] for i in perm])
    np.testing.assert_allclose(shuffled, base[perm], atol=TOL, rtol=0)


def test_empty_single_and_duplicate_pairs(spread_reranker, pairs, plain_scores):
    for name in ("fast", "transformers", "sentence-transformers", "flag"):
        r = engine(spread_reranker, name, max_length=128)
        empty = r.score([])
        assert empty.shape == (0,) and empty.dtype == np.float32, name
        one = r.score([pairs[5]])
        np.testing.assert_allclose(one, plain_scores[5:6], atol=TOL, rtol=0, err_msg=name)
    r = engine(spread_reranker, "fast", max_length=128)
    r.set_token_budget(300)
    dup = r.score([pairs[0], pairs[1], pairs[0], pairs[0]])
    assert dup[0] == dup[2] == dup[3]
    np.testing.assert_allclose(dup[:2], plain_scores[:2], atol=TOL, rtol=0)


def test_bert_family_with_token_types_and_pooler(tiny_bert_reranker, pairs):
    plain = engine(tiny_bert_reranker, "transformers", max_length=96).score(pairs)
    assert plain.std() > 0.05
    fast = engine(tiny_bert_reranker, "fast", max_length=96)
    for budget, n in ((1, 32), (1000, len(pairs))):
        fast.set_token_budget(budget)
        np.testing.assert_allclose(fast.score(pairs[:n]), plain[:n], atol=TOL, rtol=0)
        assert fast.describe()["forward"] == "packed"


def test_query_max_length_cuts_queries_first(spread_reranker, pairs):
    r = engine(spread_reranker, "fast", max_length=128, query_max_length=4)
    flag = engine(spread_reranker, "flag", max_length=128, query_max_length=4)
    np.testing.assert_allclose(r.score(pairs), flag.score(pairs), atol=TOL, rtol=0)
    assert r.stats()["truncated_queries"] == flag.stats()["truncated_queries"] > 0
    assert r.describe()["query_max_length"] == 4


def test_bf16_runs_on_cpu_close_to_fp32(spread_reranker, pairs, plain_scores):
    r = engine(spread_reranker, "fast", max_length=128, dtype="bf16")
    s = r.score(pairs)
    assert r.describe()["dtype"] == "bf16" and s.dtype == np.float32
    assert np.corrcoef(s, plain_scores)[0, 1] > 0.95


def test_nan_scores_name_the_pair(spread_reranker, pairs):
    import torch

    for name in ("fast", "transformers"):
        r = engine(spread_reranker, name, max_length=128)
        bias = r.model.classifier.out_proj.bias
        saved = bias.detach().clone()
        with torch.no_grad():
            bias.fill_(float("nan"))
        try:
            with pytest.raises(BenchError, match=r"score of pair 0 is nan \(query"):
                r.score(pairs[:3])
        finally:
            with torch.no_grad():
                bias.copy_(saved)


def test_out_of_memory_halves_the_budget_and_records_it(spread_reranker, pairs, plain_scores, monkeypatch):
    import torch

    r = engine(spread_reranker, "fast", max_length=128)
    r.set_token_budget(4096)
    real = r._forward

    def small_device(batch):  # a device that holds at most 700 tokens per batch
        if batch.tokens > 700:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(batch)

    monkeypatch.setattr(r, "_forward", small_device)
    scores = r.score(pairs)
    np.testing.assert_allclose(scores, plain_scores, atol=TOL, rtol=0)
    d = r.describe()
    assert d["token_budget_requested"] == 4096 and d["token_budget_used"] <= 700
    assert d["oom_retries"][0]["budget"] == 4096
    failures = len(d["oom_retries"])
    r.score(pairs)  # the budget that fit is kept: no new failures
    assert len(r.describe()["oom_retries"]) == failures


def test_other_errors_are_not_retried(spread_reranker, pairs, monkeypatch):
    r = engine(spread_reranker, "fast", max_length=128)
    r.set_token_budget(4096)
    calls = []

    def broken(batch):
        calls.append(batch.tokens)
        raise RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED")

    monkeypatch.setattr(r, "_forward", broken)
    with pytest.raises(RuntimeError, match="CUBLAS"):
        r.score(pairs)
    assert len(calls) == 1 and r.describe()["token_budget_used"] == 4096


def test_a_single_pair_that_does_not_fit_is_an_error(spread_reranker, pairs, monkeypatch):
    import torch

    r = engine(spread_reranker, "fast", max_length=128)

    def tiny_device(batch):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(r, "_forward", tiny_device)
    with pytest.raises(BenchError, match="single sequence"):
        r.score(pairs[:4])


def test_describe_records_model_and_settings(spread_reranker):
    r = engine(spread_reranker, "fast", max_length=128)
    d = r.describe()
    assert d["model"]["untrained"] is True and d["model"]["ref"] == spread_reranker
    assert d["device"] == "cpu" and d["dtype_requested"] == "auto" and d["max_length"] == 128
    assert d["fused_qkv_bytes"] > 0 and d["compile"] is False and d["max_pairs_per_batch"] is None
    d = engine(spread_reranker, "flag", max_length=128).describe()
    assert d["dtype"] == "fp32" and d["batch_size"] == 128 and d["query_max_length"] == 128 * 3 // 4
    d = engine(spread_reranker, "transformers", max_length=128).describe()
    assert d["dtype"] == "fp32" and d["batch_size"] == 32 and d["order"] == "input"


def test_bad_settings_are_errors(spread_reranker):
    with pytest.raises(BenchError, match="^dtype 'tf32' needs a CUDA device"):
        build_reranker(RerankerSpec(model=spread_reranker, device="cpu", dtype="tf32"))
    with pytest.raises(BenchError, match="max_length = 1000"):
        build_reranker(RerankerSpec(model=spread_reranker, device="cpu", max_length=1000))
    with pytest.raises(BenchError, match="^attention 'varlen' needs a CUDA device"):
        build_reranker(RerankerSpec(model=spread_reranker, device="cpu"), attention="varlen")
    with pytest.raises(BenchError, match="unknown option"):
        build_reranker(RerankerSpec(model=spread_reranker, device="cpu"), atention="varlen")
    with pytest.raises(BenchError, match="takes no options"):
        build_reranker(RerankerSpec(model=spread_reranker, engine="flag", device="cpu"), compile=True)
    with pytest.raises(BenchError, match="gelu_epilogue: implemented for the packed forward only"):
        build_reranker(RerankerSpec(model=spread_reranker, device="cpu"), forward="hf", gelu_epilogue=True)
    with pytest.raises(BenchError, match="cannot load"):
        build_reranker(RerankerSpec(model=str(Path(spread_reranker).parent / "missing"), device="cpu"))
    with pytest.raises(BenchError, match=r"pairs\[1\]"):
        engine(spread_reranker, "fast", max_length=128).score([("q", "p"), ("q",)])


def test_data_parallel_two_cpu_workers_match_one_process(spread_reranker, pairs, plain_scores):
    spec = RerankerSpec(model=spread_reranker, device="cpu", max_length=128, token_budget=1000)
    r = build_reranker(spec, devices=["cpu", "cpu"])
    try:
        scores = r.score(pairs)
        np.testing.assert_allclose(scores, plain_scores, atol=TOL, rtol=0)
        perm = np.random.default_rng(1).permutation(len(pairs))
        np.testing.assert_allclose(r.score([pairs[i] for i in perm]), plain_scores[perm], atol=TOL, rtol=0)
        d = r.describe()
        assert d["data_parallel"]["processes"] == 2 and len(d["data_parallel"]["workers"]) == 2
        st = r.stats()
        assert st["pairs"] == 2 * len(pairs) and st["tokens"] > 0 and len(st["worker_seconds"]) == 2
        assert r.score([]).shape == (0,)
    finally:
        r.close()


def test_auto_precision_per_engine():
    """`auto` on CUDA: fp16 for the fast engines (fidelity on trained weights, FlagEmbedding's choice),
    each baseline as its users run it; fp32 on the CPU. Resolved without touching a GPU."""
    from bench.engine.device import FAST_AUTO_CUDA, resolve_precision

    assert FAST_AUTO_CUDA == "fp16" and resolve_precision("auto", "cuda:0").name == "fp16"
    assert resolve_precision("auto", "cuda:0", auto_cuda="fp32").name == "fp32"
    assert resolve_precision("auto", "cpu").name == "fp32" and resolve_precision("bf16", "cpu").name == "bf16"
    with pytest.raises(BenchError, match="^dtype 'tf32' needs a CUDA device"):
        resolve_precision("tf32", "cpu")
