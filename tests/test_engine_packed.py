"""The packed (padding-free) forward equals the Hugging Face forward token for token, for
XLM-R and BERT, on every attention path; so does the packed decoder's flash path. The flash kernel
behind 'varlen' needs CUDA; here a per-sequence reference stands in for it, with the real kernel's
signature and every argument checked or honoured (packing, cumulative lengths, longest length, head
layout, scale, causal window, grouped-query heads, dropout). The tests marked `gpu` run the real
kernel on CUDA (skipped without it)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.engine.loop import Batch
from bench.engine.packed import PackedEncoder, choose_attention, first_tokens, pool
from bench.engine.tokens import PairTokenizer, flatten
from bench.errors import BenchError

PAIRS = [("ìbéèrè kúkúrú", "Èdè Yorùbá jẹ́ ọ̀kan lára àwọn èdè " * 5), ("who wrote it", "A short passage."),
         ("light", "Reflected light " * 30), ("q", "")]


def flash_reference(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window=(-1, -1), gqa=False):
    """What flash attention computes over packed sequences, one sequence at a time in plain torch:
    softmax(scale * q k^T) v with ``scale`` defaulting to 1/sqrt(head dim); the diagonal aligned at
    each sequence's end (query i of lq against lk keys sits at key i + lk - lq, as flash-attn >= 2.1
    and torch's varlen_attn align it); key j visible when it lies within ``window = (left, right)`` of
    that diagonal (-1: unbounded; (-1, 0) is causal); grouped-query heads only when ``gqa``."""
    import math

    import torch

    assert cu_q.dtype == cu_k.dtype == torch.int32 and cu_q.shape == cu_k.shape
    for cu, max_len, x in ((cu_q, max_q, q), (cu_k, max_k, k)):
        assert int((cu[1:] - cu[:-1]).max()) == max_len and cu[0] == 0 and cu[-1] == x.shape[0]
    heads, kv_heads, dim = q.shape[1], k.shape[1], q.shape[2]
    assert k.shape[1:] == v.shape[1:] and k.shape[2] == dim
    assert heads == kv_heads or (gqa and heads % kv_heads == 0), (heads, kv_heads, gqa)
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    left, right = window
    out = []
    for qa, qb, ka, kb in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), cu_k[:-1].tolist(), cu_k[1:].tolist()):
        qi = q[qa:qb].transpose(0, 1)
        ki, vi = (x[ka:kb].repeat_interleave(heads // kv_heads, 1).transpose(0, 1) for x in (k, v))
        offset = (ki.shape[1] - qi.shape[1]) + torch.arange(qi.shape[1])[:, None] - torch.arange(ki.shape[1])[None, :]
        visible = torch.ones_like(offset, dtype=torch.bool)  # offset = diagonal - key position
        if right >= 0:
            visible &= offset >= -right
        if left >= 0:
            visible &= offset <= left
        weights = (qi @ ki.transpose(1, 2) * scale).masked_fill(~visible, float("-inf")).softmax(-1)
        out.append((weights @ vi).transpose(0, 1))
    return torch.cat(out)


def stand_in_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                         window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    """``torch.nn.attention.varlen.varlen_attn`` on the CPU: its signature (checked against the installed
    torch below), every argument honoured or, where a stand-in cannot, required at the value the engine
    must pass."""
    assert return_aux is None and seqused_k is None and block_table is None and num_splits is None
    return flash_reference(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale=scale, window=window_size,
                           gqa=enable_gqa)


def stand_in_flash_forward(query, key, value, cum_seq_q, cum_seq_k, max_q, max_k, dropout_p, is_causal,
                           return_debug_mask, *, scale=None, window_size_left=None, window_size_right=None,
                           seqused_k=None, alibi_slopes=None, block_table=None, num_splits=None):
    """``aten._flash_attention_forward`` on the CPU, the same way (its schema checked below): no dropout
    when scoring, no debug mask, is_causal and the window honoured; the kernel takes grouped-query heads."""
    assert dropout_p == 0.0, "dropout while scoring: the scores would be random"
    assert not return_debug_mask and seqused_k is None and alibi_slopes is None and block_table is None
    assert num_splits is None
    window = (-1 if window_size_left is None else window_size_left,
              0 if is_causal else (-1 if window_size_right is None else window_size_right))
    out = flash_reference(query, key, value, cum_seq_q, cum_seq_k, max_q, max_k, scale=scale, window=window, gqa=True)
    return out, None, None, None, None


def test_stand_ins_take_the_real_kernels_arguments():
    """The stand-ins' parameters are the installed torch's, name for name, so every argument the engine
    passes reaches a check (a new or renamed one fails here)."""
    import inspect

    import torch

    names = lambda f: list(inspect.signature(f).parameters)  # noqa: E731
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        varlen_attn = None
    if varlen_attn is not None:
        assert names(stand_in_varlen_attn) == names(varlen_attn)
    schema = torch.ops.aten._flash_attention_forward.default._schema
    assert names(stand_in_flash_forward) == [a.name for a in schema.arguments]


def use_reference_kernels(attention, monkeypatch):
    """Stand the CPU reference in for the CUDA flash kernel behind ``attention``."""
    import torch

    if attention == "varlen":
        import torch.nn.attention.varlen as varlen

        monkeypatch.setattr(varlen, "varlen_attn", stand_in_varlen_attn)
    if attention == "varlen-aten":
        monkeypatch.setattr(torch.ops.aten, "_flash_attention_forward", stand_in_flash_forward)


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


def on_cuda(batch):
    """The batch's tensors on the GPU."""
    import dataclasses

    return dataclasses.replace(batch, **{f: getattr(batch, f).cuda() for f in ("input_ids", "position_ids", "cu_seqlens")},
                               token_type_ids=None if batch.token_type_ids is None else batch.token_type_ids.cuda())


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["xlmr", "bert"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_flash_kernel_on_cuda_equals_hugging_face(models, family, dtype):
    """The real flash kernel (the path choose_attention picks on CUDA in half precision) against Hugging
    Face's fp32 forward on the CPU: every token's state and the first tokens only. A wrong mask, scale or
    layout moves states by their own size; half precision by well under 2% (bf16: 4%)."""
    import copy

    import torch

    model, tokenizer = models[family]
    attention = choose_attention("varlen", "cuda", half=True)
    enc = PackedEncoder(copy.deepcopy(model).to("cuda", getattr(torch, dtype)), attention)
    chunk, batch = packed_batch(tokenizer, enc.position_offset)
    with torch.inference_mode():
        ref = hf_hidden(model, tokenizer, chunk)
        got = enc(on_cuda(batch)).float().cpu()
        first = enc(on_cuda(batch), first_only=True).float().cpu()
    limit = 0.02 if dtype == "float16" else 0.04
    assert got.shape == ref.shape and float((got - ref).norm() / ref.norm()) < limit, attention
    expect = first_tokens(ref, batch)
    assert float((first - expect).norm() / expect.norm()) < limit, attention


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


@pytest.mark.parametrize("model", ["random:tiny-qwen3-reranker", "random:tiny-gemma-reranker"])
@pytest.mark.parametrize("reuse", [True, False])
def test_packed_decoder_flash_path_equals_its_sdpa_path(model, reuse, monkeypatch):
    """The decoder's varlen path (CUDA's; here the stand-in): prompts packed, the causal window aligned at
    each run's end, prefix rows gathered in front of each run's keys, grouped-query heads (Qwen3 4/2,
    Gemma 4/1). Its scores equal the SDPA path's (itself checked against Hugging Face's forward in
    tests/test_decoder_rerankers.py)."""
    from bench.config import RerankerSpec
    from bench.engine.decoder import PackedDecoder
    from bench.rerank import build_reranker
    from bench.rerank.scoring import head_vector

    import torch.nn.attention.varlen as varlen

    monkeypatch.setattr(varlen, "varlen_attn", stand_in_varlen_attn)
    pairs = [(q, p) for q, _ in PAIRS[:3] for _, p in PAIRS]  # three queries, four candidates each
    fast = build_reranker(RerankerSpec(model=model, engine="fast", device="cpu", dtype="fp32", max_length=128,
                                       prefix_reuse=reuse, token_budget=300))
    assert fast.decoder.attention == "sdpa-padded"
    expected = fast.score(pairs)
    fast.decoder = PackedDecoder(fast.model, head_vector(fast.model, fast.scoring), "varlen")
    fast.padded = False
    got = fast.score(pairs)
    assert fast.describe()["attention"] == "varlen"
    assert np.std(expected) > 0.05  # scores spread, so equality can fail
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
