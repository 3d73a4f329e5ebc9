"""Token-level heads read straight from the packed hidden states (no padding anywhere).

bge-m3 puts two heads beside its dense CLS vector (FlagEmbedding ``BGEM3`` / ``M3Embedder``):

* the *sparse* head: ``relu(sparse_linear(h))``, one weight per token; a text's lexical weights are the
  maximum weight per token id, special tokens (cls, eos, pad, unk) dropped, zero weights dropped;
* the *multi-vector* (colbert) head: ``colbert_linear(h)`` for every token but the first (CLS; the
  final eos is kept), each vector L2-normalised.

Both read the ``[total_tokens, hidden]`` tensor of ``PackedEncoder.forward`` with the batch's
``cu_seqlens`` (sequence ``i`` holds rows ``cu[i]:cu[i+1]``).
"""

from __future__ import annotations

from .. import lazy


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
