"""Bi-encoder encoding: the fast engine equals SentenceTransformer.encode within 1e-4 (fp32) on real
English and Yoruba texts, with mean pooling (all-MiniLM-L6-v2) and CLS pooling (a tiny XLM-R shaped
like bge-m3), for any token budget; query instructions; normalisation; errors."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from bench.config import FirstStageSpec
from bench.retrieve import build_encoder
from bench.retrieve.encoder import BGE_EN_INSTRUCTION, BGE_ZH_INSTRUCTION, default_query_instruction
from bench.errors import BenchError

TOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: OpenMP spinning on a busy 2-core machine made tiny forwards ~10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def texts(shared_data):
    """Real passages: Vaswani abstracts (English) and MIRACL Yoruba passages, some long, plus edge cases."""
    out = []
    for name, n in (("vaswani", 60), ("miracl-yo-dev", 60)):
        with gzip.open(shared_data / name / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                row = json.loads(line)
                out.append((row.get("title", "") + " " + row["text"]).strip())
                if i + 1 == n:
                    break
    out.append(" ".join(out[:12]))  # longer than max_length: truncated
    out += ["", "a", "  spaces around  "]
    return out


def st_reference(folder: str, texts, max_length: int | None = None):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(folder, device="cpu")
    if max_length:
        st.max_seq_length = max_length
    return st.encode(texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)


@pytest.fixture(scope="module")
def tiny_m3(tiny_reranker, tmp_path_factory):
    """A sentence-transformers folder shaped like bge-m3 (XLM-R, CLS pooling, Normalize), tiny and
    with spread-out random weights, built with XLM-R's real tokenizer."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    root = tmp_path_factory.mktemp("tiny-m3")
    torch.manual_seed(0)
    cfg = XLMRobertaConfig(vocab_size=250002, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=8194, type_vocab_size=1, pad_token_id=1,
                           bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, initializer_range=0.2)
    XLMRobertaModel(cfg, add_pooling_layer=False).save_pretrained(root / "hf")
    AutoTokenizer.from_pretrained(tiny_reranker).save_pretrained(root / "hf")
    modules = [Transformer(str(root / "hf"), max_seq_length=8192), Pooling(64, "cls")]
    SentenceTransformer(modules=modules + [Normalize()], device="cpu").save(str(root / "m3"))
    SentenceTransformer(modules=modules, device="cpu").save(str(root / "no-normalize"))
    return root


def spec(model: str, **fields) -> FirstStageSpec:
    return FirstStageSpec(kind="dense", model=model, device="cpu", **fields)


def test_minilm_fast_equals_sentence_transformers_for_any_budget(minilm, texts):
    ref = st_reference(minilm, texts)
    enc = build_encoder(spec(minilm))
    assert enc.dim == 384 and enc.describe()["max_length"] == 256  # the model's own max_seq_length
    for budget, n in ((1, 24), (300, len(texts)), (8192, len(texts))):  # budget 1: one text per batch
        enc.budget.used = enc.budget.requested = budget
        out = enc.encode_docs(texts[-n:])
        assert out.dtype == np.float32 and out.shape == (n, 384)
        np.testing.assert_allclose(out, ref[-n:], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    d = enc.describe()
    assert d["pooling"] == ["mean"] and d["forward"] == "packed" and d["normalize"] == "model"
    assert d["dtype"] == "fp32" and d["engine"] == "fast" and d["prune_last_layer"] is False
    assert np.abs(ref[:60] @ ref[:60].T - np.eye(60)).max() > 0.1  # distinct texts, distinct vectors


def test_tiny_bge_m3_cls_pooling_equals_sentence_transformers(tiny_m3, texts):
    folder = str(tiny_m3 / "m3")
    ref = st_reference(folder, texts, max_length=128)
    enc = build_encoder(spec(folder, max_length=128, token_budget=700))
    np.testing.assert_allclose(enc.encode_docs(texts), ref, atol=TOL, rtol=0)
    assert enc.describe()["pooling"] == ["cls"] and enc.describe()["max_length"] == 128
    assert enc.describe()["prune_last_layer"] is True  # CLS pooling: last layer on first tokens only
    assert np.abs(ref[:40] @ ref[:40].T - np.eye(40)).max() > 0.1


def test_model_without_normalize_is_normalised_and_says_so(tiny_m3, texts):
    folder = str(tiny_m3 / "no-normalize")
    enc = build_encoder(spec(folder, max_length=64))
    out = enc.encode_docs(texts[:20])
    np.testing.assert_allclose(out, st_reference(folder, texts[:20], max_length=64), atol=TOL, rtol=0)
    assert enc.describe()["normalize"].startswith("added")


def test_query_instruction_prefixes_queries_only(minilm):
    queries = ["what is a transformer", "measurement of reflected light"]
    enc = build_encoder(spec(minilm, query_instruction="query: "))
    np.testing.assert_allclose(enc.encode_queries(queries), st_reference(minilm, ["query: " + q for q in queries]),
                               atol=TOL, rtol=0)
    np.testing.assert_allclose(enc.encode_docs(queries), st_reference(minilm, queries), atol=TOL, rtol=0)
    assert enc.describe()["query_instruction"] == "query: "
    assert build_encoder(spec(minilm)).describe()["query_instruction"] == ""


def test_sentence_transformers_engine_and_empty_input(minilm, texts):
    enc = build_encoder(spec(minilm, engine="sentence-transformers", batch_size=8))
    np.testing.assert_allclose(enc.encode_docs(texts[:10]), st_reference(minilm, texts[:10]), atol=1e-6, rtol=0)
    assert enc.describe()["batch_size"] == 8 and enc.describe()["dtype"] == "fp32"
    assert enc.encode_docs([]).shape == (0, 384)
    assert build_encoder(spec(minilm)).encode_queries([]).shape == (0, 384)


#: The query instructions as the BGE model cards print them (BAAI/bge-*-en-v1.5 and BAAI/bge-*-zh-v1.5,
#: "Model List" and "Usage"): English with its trailing space, Chinese ending in a full-width colon.
PUBLISHED_EN = "Represent this sentence for searching relevant passages: "
PUBLISHED_ZH = "\u4e3a\u8fd9\u4e2a\u53e5\u5b50\u751f\u6210\u8868\u793a\u4ee5\u7528\u4e8e\u68c0\u7d22\u76f8\u5173\u6587\u7ae0\uff1a"


def test_default_query_instructions_are_the_model_cards():
    assert PUBLISHED_ZH == "为这个句子生成表示以用于检索相关文章："  # the escapes above, character for character
    for model in ("BAAI/bge-base-en-v1.5", "BAAI/bge-large-en-v1.5", "BAAI/bge-small-en-v1.5", "BAAI/bge-large-en",
                  "random:bge-base-en-v1.5"):
        assert default_query_instruction(model) == PUBLISHED_EN, model
    for model in ("BAAI/bge-small-zh-v1.5", "BAAI/bge-large-zh-v1.5"):
        assert default_query_instruction(model) == PUBLISHED_ZH, model
    for model in ("BAAI/bge-m3", "random:bge-m3", "offline:all-MiniLM-L6-v2"):  # no instruction
        assert default_query_instruction(model) == "", model
    assert (BGE_EN_INSTRUCTION, BGE_ZH_INSTRUCTION) == (PUBLISHED_EN, PUBLISHED_ZH)


def test_encoder_errors(minilm):
    with pytest.raises(BenchError, match="only 'dense'"):
        build_encoder(FirstStageSpec(kind="bm25"))
    with pytest.raises(BenchError, match="takes no options"):
        build_encoder(spec(minilm, engine="sentence-transformers"), compile=True)
    with pytest.raises(BenchError, match="cannot load"):
        build_encoder(spec(minilm + "-missing"))
    with pytest.raises(BenchError, match=r"docs\[1\]"):
        build_encoder(spec(minilm)).encode_docs(["ok", None])


@pytest.mark.parametrize("arch", ["tiny-bge-m3", pytest.param("bge-base-en-v1.5", marks=pytest.mark.slow)])
def test_random_bi_encoders_build_as_sentence_transformers_folders(arch, cache_dir):
    from bench import models

    enc = build_encoder(spec(f"random:{arch}", max_length=64), cache_dir=cache_dir)
    d = enc.describe()
    assert d["model"]["untrained"] is True and d["pooling"] == ["cls"] and d["normalize"] == "model"
    assert d["dim"] == models.BIENCODER_ARCHITECTURES[arch]["hidden_size"]
    assert d["query_instruction"] == default_query_instruction(arch)
    texts = ["Èdè Yorùbá jẹ́ ọ̀kan lára àwọn èdè", "measurement of reflected light"]
    ref = st_reference(models.resolve(f"random:{arch}", cache_dir), texts, max_length=64)
    np.testing.assert_allclose(enc.encode_docs(texts), ref, atol=TOL, rtol=0)



def test_packed_options_pass_through_and_are_checked(minilm, texts):
    """The packed forward's variants reach a fast bi-encoder (on the CPU the GELU epilogue is exact
    GELU: same embeddings); a misspelt option is an error, not ignored."""
    ref = build_encoder(spec(minilm)).encode_docs(texts)
    enc = build_encoder(spec(minilm), gelu_epilogue=True)
    np.testing.assert_allclose(enc.encode_docs(texts), ref, atol=TOL, rtol=0)
    assert enc.describe()["gelu_epilogue"] is True
    with pytest.raises(BenchError, match="unknown option"):
        build_encoder(spec(minilm), gelu_epilogu=True)
