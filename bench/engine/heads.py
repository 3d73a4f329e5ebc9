"""Token-level heads read straight from the packed hidden states (no padding anywhere).

bge-m3 puts two heads beside its dense CLS vector (FlagEmbedding ``BGEM3`` / ``M3Embedder``):

* the *sparse* head: ``relu(sparse_linear(h))``, one weight per token; a text's lexical weights are the
  maximum weight per token id, special tokens (cls, eos, pad, unk) dropped, zero weights dropped;
* the *multi-vector* (colbert) head: ``colbert_linear(h)`` for every token but the first (CLS; the
  final eos is kept), each vector L2-normalised.

A masked-LM model read as SPLADE reads it (``bench.retrieve.splade``): the MLM head's logits over the
vocabulary for every real token, ``log(1 + relu(logits))``, max-pooled over each sequence's tokens
(``splade_weights``). The projection to the vocabulary (hidden x 30,522 for BERT) dominates the cost and
its output is ``[tokens, vocab]``; here it is computed a chunk of tokens at a time, each chunk folded
into the running per-sequence maximum at once, so that matrix never exists whole.

All read the ``[total_tokens, hidden]`` tensor of ``PackedEncoder.forward`` (or a padded forward's real
tokens) with the batch's ``cu_seqlens`` (sequence ``i`` holds rows ``cu[i]:cu[i+1]``).
"""

from __future__ import annotations

import warnings

from .. import lazy
from ..errors import BenchError

#: Logits the fused MLM pooling holds at once: tokens x vocabulary cells (64 MB in float32).
MLM_CHUNK_CELLS = 1 << 24


def sequence_index(cu_seqlens, total: int):
    """For every packed token, the index of its sequence."""
    torch = lazy.torch
    cu = cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=cu.device), lengths, output_size=total)


def lexical_weights(hidden, input_ids, cu_seqlens, sparse_linear, unused_ids):
    """(sequence index, token id, weight) triples, one per distinct (sequence, token id) with a
    positive weight: the max of ``relu(sparse_linear(h))`` over the token's occurrences, ``unused_ids``
    (the special tokens) left out. Weights are float32."""
    torch = lazy.torch
    weights = torch.relu(sparse_linear(hidden)).squeeze(-1).float()
    seq = sequence_index(cu_seqlens, hidden.shape[0])
    ids = input_ids.long()
    keep = ~torch.isin(ids, torch.as_tensor(sorted(unused_ids), device=ids.device)) & (weights > 0)
    seq, ids, weights = seq[keep], ids[keep], weights[keep]
    key = seq * (int(ids.max()) + 1 if ids.numel() else 1) + ids
    uniq, inverse = torch.unique(key, return_inverse=True)
    best = torch.zeros(uniq.numel(), dtype=torch.float32, device=weights.device)
    best.scatter_reduce_(0, inverse, weights, "amax", include_self=False)
    first = torch.zeros(uniq.numel(), dtype=torch.long, device=ids.device)
    first.scatter_(0, inverse, torch.arange(ids.numel(), device=ids.device))  # any occurrence: same (seq, id)
    return seq[first], ids[first], best


def colbert_vectors(hidden, cu_seqlens, colbert_linear):
    """Every token's normalised colbert vector but each sequence's first (CLS), in packed order, and
    the number per sequence (its length - 1)."""
    torch = lazy.torch
    cu = cu_seqlens.long()
    keep = torch.ones(hidden.shape[0], dtype=torch.bool, device=hidden.device)
    keep[cu[:-1]] = False
    vecs = torch.nn.functional.normalize(colbert_linear(hidden[keep]).float(), dim=-1)
    return vecs, (cu[1:] - cu[:-1]) - 1


def mlm_head(model):
    """The masked-LM head of a ``*ForMaskedLM`` model as one function ``[tokens, hidden] -> [tokens, vocab]``,
    through the model's own modules: BERT's ``cls``, RoBERTa/XLM-R's ``lm_head``, DistilBERT's
    ``vocab_transform`` -> activation -> ``vocab_layer_norm`` -> ``vocab_projector``."""
    if hasattr(model, "cls") and hasattr(model.cls, "predictions"):
        return model.cls
    if hasattr(model, "lm_head"):
        return model.lm_head
    if hasattr(model, "vocab_projector"):
        return lambda h: model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(h))))
    raise BenchError(f"{type(model).__name__}: no masked-LM head this harness knows (BERT cls, RoBERTa lm_head, "
                     "DistilBERT vocab_projector)")


def max_logits(hidden, cu_seqlens, head, vocab: int, chunk_tokens: int):
    """Per sequence, the maximum over its tokens of every vocabulary logit: ``[n, vocab]`` in the head's
    dtype. The head runs on ``chunk_tokens`` rows at a time; each chunk's logits are folded into the
    running maximum (``index_reduce_`` amax) before the next is computed."""
    torch = lazy.torch
    total, n = hidden.shape[0], cu_seqlens.numel() - 1
    seq = sequence_index(cu_seqlens, total)
    out = None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="index_reduce", category=UserWarning)  # "in beta"
        for a in range(0, total, chunk_tokens):
            logits = head(hidden[a:a + chunk_tokens])
            if out is None:
                out = torch.full((n, vocab), float("-inf"), dtype=logits.dtype, device=logits.device)
            out.index_reduce_(0, seq[a:a + chunk_tokens], logits, "amax", include_self=True)
    return out


def splade_activation(x):
    """SPLADE's term weight of a logit, ``log(1 + relu(x))``, written as the authors write it (not log1p)."""
    torch = lazy.torch
    return torch.log(1 + torch.relu(x))


def splade_weights(hidden, cu_seqlens, head, vocab: int, *, chunk_tokens: int | None = None, drop_ids=()):
    """(sequence index, token id, weight) triples of every positive SPLADE weight: max over a sequence's
    tokens of ``log(1 + relu(logits))``. The activation is monotone, so it is applied once to each
    sequence's maximum logits (in float32) instead of to every token's; ``drop_ids`` (special tokens,
    for models whose authors zero them) get no weight."""
    torch = lazy.torch
    chunk = chunk_tokens or max(1, MLM_CHUNK_CELLS // vocab)
    weights = splade_activation(max_logits(hidden, cu_seqlens, head, vocab, chunk).float())
    if drop_ids:
        weights[:, list(drop_ids)] = 0
    seq, ids = torch.nonzero(weights, as_tuple=True)
    return seq, ids, weights[seq, ids]
