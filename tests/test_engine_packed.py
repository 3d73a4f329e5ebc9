"""The packed (padding-free) forward equals the Hugging Face forward token for token, for
XLM-R and BERT, on every attention path. The flash kernel behind 'varlen' needs CUDA; here a
per-sequence reference stands in for it, which checks everything around the kernel (packing,
cumulative lengths, longest length, head layout)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.engine.loop import Batch
from bench.engine.packed import PackedEncoder, choose_attention, first_tokens, pool
from bench.engine.tokens import PairTokenizer, flatten
from bench.errors import BenchError

PAIRS = [("ìbéèrè kúkúrú", "Èdè Yorùbá jẹ́ ọ̀kan lára àwọn èdè " * 5), ("who wrote it", "A short passage."),
         ("light", "Reflected light " * 30), ("q", "")]


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *rest, **kw):
    import torch
    import torch.nn.functional as F

    assert cu_q.dtype == cu_k.dtype == torch.int32 and cu_q.shape == cu_k.shape
    for cu, max_len, x in ((cu_q, max_q, q), (cu_k, max_k, k)):
        assert int((cu[1:] - cu[:-1]).max()) == max_len and cu[0] == 0 and cu[-1] == x.shape[0]
    out = []
    for qa, qb, ka, kb in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), cu_k[:-1].tolist(), cu_k[1:].tolist()):
        out.append(F.scaled_dot_product_attention(q[qa:qb].transpose(0, 1), k[ka:kb].transpose(0, 1),
                                                  v[ka:kb].transpose(0, 1)).transpose(0, 1))
    return torch.cat(out)


def use_reference_kernels(attention, monkeypatch):
    """Stand the per-sequence reference in for the CUDA flash kernel behind ``attention``."""
    import torch

    if attention == "varlen":
        import torch.nn.attention.varlen as varlen

        monkeypatch.setattr(varlen, "varlen_attn", reference_varlen)
    if attention == "varlen-aten":
        monkeypatch.setattr(torch.ops.aten, "_flash_attention_forward",
                            lambda *a: (reference_varlen(*a[:7]), None, None, None, None))


def packed_batch(tokenizer, offset):
    import torch

    chunk = flatten(PairTokenizer(tokenizer, 64)(PAIRS), 0, offset)
    cu = torch.from_numpy(chunk.offsets.astype(np.int32))
    types = None if chunk.types is None else torch.from_numpy(chunk.types)
    return chunk, Batch(n=chunk.n, max_len=int(chunk.lengths[0]), tokens=chunk.tokens, padded_tokens=chunk.tokens,
                        input_ids=torch.from_numpy(chunk.ids), token_type_ids=types,
                        position_ids=torch.from_numpy(chunk.positions), cu_seqlens=cu)


def hf_hidden(model, tokenizer, chunk):
    """Hugging Face's last hidden states of each sequence (one at a time: no padding)."""
    import torch

    out = []
    for i in range(chunk.n):
        ids = torch.from_numpy(chunk.ids[chunk.offsets[i]:chunk.offsets[i + 1]])[None]
        kw = {}
        if chunk.types is not None:
            kw["token_type_ids"] = torch.from_numpy(chunk.types[chunk.offsets[i]:chunk.offsets[i + 1]])[None]
        out.append(model(input_ids=ids, **kw).last_hidden_state[0])
    return torch.cat(out)


@pytest.fixture(scope="module")
def models(tiny_reranker, minilm):
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    xlmr = AutoModelForSequenceClassification.from_pretrained(tiny_reranker).eval().base_model
    return {"xlmr": (xlmr, AutoTokenizer.from_pretrained(tiny_reranker)),
            "bert": (AutoModel.from_pretrained(minilm).eval(), AutoTokenizer.from_pretrained(minilm))}


@pytest.mark.parametrize("family", ["xlmr", "bert"])
@pytest.mark.parametrize("attention", ["sdpa-padded", "varlen", "varlen-aten"])
def test_packed_forward_equals_hugging_face(models, family, attention, monkeypatch):
    import torch

    model, tokenizer = models[family]
    use_reference_kernels(attention, monkeypatch)
    enc = PackedEncoder(model, attention)
    assert enc.position_offset == (2 if family == "xlmr" else 0)
    chunk, batch = packed_batch(tokenizer, enc.position_offset)
    with torch.inference_mode():
        got = enc(batch)
        ref = hf_hidden(model, tokenizer, chunk)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=2e-5, rtol=0)
        first = pool(got, batch, ("cls", "mean", "max", "lasttoken"))
    cu, h = chunk.offsets, model.config.hidden_size
    seqs = [got[a:b] for a, b in zip(cu[:-1], cu[1:])]
    expect = torch.cat([torch.stack([x[0] for x in seqs]), torch.stack([x.mean(0) for x in seqs]),
                        torch.stack([x.max(0).values for x in seqs]), torch.stack([x[-1] for x in seqs])], 1)
    torch.testing.assert_close(first, expect, atol=1e-6, rtol=0)
    assert first.shape == (chunk.n, 4 * h)


@pytest.mark.parametrize("family", ["xlmr", "bert"])
@pytest.mark.parametrize("attention", ["sdpa-padded", "varlen", "varlen-aten"])
def test_last_layer_for_first_tokens_only_equals_the_full_forward(models, family, attention, monkeypatch):
    """``first_only`` computes the last layer's query side for the first tokens only: the first-token
    states must be those of the full forward (and of Hugging Face's)."""
    import torch

    model, tokenizer = models[family]
    use_reference_kernels(attention, monkeypatch)
    enc = PackedEncoder(model, attention)
    chunk, batch = packed_batch(tokenizer, enc.position_offset)
    with torch.inference_mode():
        got = enc(batch, first_only=True)
        full = first_tokens(enc(batch), batch)
        ref = first_tokens(hf_hidden(model, tokenizer, chunk), batch)
    assert got.shape == (chunk.n, model.config.hidden_size)
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=0)


def test_gelu_epilogue_is_exact_gelu_on_the_cpu(models):
    """On the CPU ``torch._addmm_activation`` is the matmul, bias and exact GELU: the same numbers."""
    import torch

    model, tokenizer = models["xlmr"]
    plain, fused = PackedEncoder(model), PackedEncoder(model, gelu_epilogue=True)
    _, batch = packed_batch(tokenizer, plain.position_offset)
    with torch.inference_mode():
        torch.testing.assert_close(fused(batch), plain(batch), atol=1e-5, rtol=0)
    assert fused.describe()["gelu_epilogue"] and "epilogue" in fused.describe()["activation"]
    assert not plain.describe()["gelu_epilogue"]


def test_attention_choice_is_explicit():
    assert choose_attention("auto", "cpu", half=True) == "sdpa-padded"
    assert choose_attention("sdpa-padded", "cpu", half=False) == "sdpa-padded"
    with pytest.raises(BenchError, match="CUDA device and fp16/bf16"):
        choose_attention("varlen", "cpu", half=True)
    with pytest.raises(BenchError, match="use one of"):
        choose_attention("flash", "cpu", half=True)


@pytest.mark.slow
def test_compiled_layers_equal_eager(models):
    import torch

    model, tokenizer = models["xlmr"]
    eager = PackedEncoder(model, "sdpa-padded")
    compiled = PackedEncoder(model, "sdpa-padded", compile=True)
    fused = PackedEncoder(model, "sdpa-padded", fused_add_norm=True)
    _, batch = packed_batch(tokenizer, eager.position_offset)
    with torch.inference_mode():
        expect = eager(batch)
        torch.testing.assert_close(compiled(batch), expect, atol=1e-5, rtol=0)
        torch.testing.assert_close(fused(batch), expect, atol=1e-5, rtol=0)
        torch.testing.assert_close(fused(batch, first_only=True), first_tokens(expect, batch), atol=1e-5, rtol=0)
