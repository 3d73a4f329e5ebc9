"""A padding-free forward for decoder rerankers (Qwen2, Qwen3, Gemma, Mistral, Llama), scored at one
position, with shared-prefix reuse.

A decoder reranker reads the logits of each prompt's last token. Here the prompts of a batch are laid
end to end (``[tokens, hidden]``), so the linear layers compute no padding, and the loaded Hugging Face
model's own modules do each step: embedding (times sqrt(hidden) for Gemma), per layer RMSNorm,
q/k/v projections (with Qwen3's per-head q/k RMSNorm), rotary embedding at each token's position, causal
attention with grouped-query heads, output projection, residual, RMSNorm, gated MLP, residual; the
final RMSNorm; then the head. Two things a full forward computes are skipped because the score never
reads them: the last layer runs its attention output and MLP for the scored position only, and the
projection onto the whole vocabulary becomes one fp32 dot product with ``W[yes] - W[no]`` (or one row).
Listwise FIRST reads the whole final hidden state of that position instead (``last_hidden``) and
projects it itself. Mistral's sliding window changes nothing while every sequence fits inside it,
which is checked per batch (a longer one is an error, not a silent difference).

Shared-prefix reuse: the prompts of one query's candidates begin with the same tokens (system prompt,
instruction, query). Under causal attention those tokens' keys and values do not depend on what
follows, so they are computed once per distinct prefix (``prefix_cache``) and each prompt runs only its
remaining tokens against them (``score`` with a cache): the same function, far fewer tokens.

Attention paths: ``sdpa-padded`` (every device, every dtype; the CPU path): queries and keys scattered
into padded tensors, a boolean mask that is causal within the prompt and open on its prefix;
``varlen`` (CUDA, fp16/bf16): flash attention over packed sequences with causal alignment at the end
(bottom-right), the prefix rows gathered in front of each prompt's own keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .. import lazy
from ..errors import BenchError

FAMILIES = ("qwen2", "qwen3", "gemma", "mistral", "llama")


def unsupported_reason(config) -> str | None:
    """Why ``PackedDecoder`` cannot run a model with this config (None when it can)."""
    if config.model_type not in FAMILIES:
        return f"model_type {config.model_type!r} is not one of {', '.join(FAMILIES)}"
    layer_types = getattr(config, "layer_types", None) or []
    if getattr(config, "use_sliding_window", False) or any(t != "full_attention" for t in layer_types):
        return "sliding-window attention layers (only full causal attention is implemented)"
    return None


@dataclass
class DecoderBatch:
    """Packed token runs on the device: ``ids``/``positions`` ``[tokens]``, ``cu`` int32 ``[n + 1]``,
    ``max_len``; ``prefix`` (long ``[n]``): the row of the prefix cache each run continues, or None;
    ``extent``: the longest sequence (prefix included) the batch completes."""

    ids: Any
    positions: Any
    cu: Any
    max_len: int
    prefix: Any = None
    extent: int = 0

    @property
    def n(self) -> int:
        return self.cu.numel() - 1


def make_batch(runs: Sequence[Sequence[int]], starts: Sequence[int], device: str,
               prefix: Sequence[int] | None = None) -> DecoderBatch:
    """Token runs (each continuing at position ``starts[i]``) as one packed batch on ``device``."""
    torch = lazy.torch
    lengths = np.fromiter((len(r) for r in runs), dtype=np.int64, count=len(runs))
    offsets = np.zeros(len(runs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter((t for r in runs for t in r), dtype=np.int64, count=int(offsets[-1]))
    positions = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], lengths) + np.repeat(np.asarray(starts), lengths)
    pre = None if prefix is None else torch.as_tensor(np.asarray(prefix, dtype=np.int64), device=device)
    extent = int((np.asarray(starts, dtype=np.int64) + lengths).max())
    return DecoderBatch(torch.as_tensor(ids, device=device), torch.as_tensor(positions, device=device),
                        torch.as_tensor(offsets.astype(np.int32), device=device), int(lengths.max()), pre, extent)


@dataclass
class PrefixCache:
    """Keys and values of distinct prefixes, per layer: packed ``[tokens, kv_heads, dim]`` with ``cu``
    (int32 ``[g + 1]``) for flash attention, and padded ``[g, longest, kv_heads, dim]`` for SDPA."""

    keys: list
    values: list
    cu: Any
    lengths: Any
    longest: int


class PackedDecoder:
    """``score(batch, cache) -> float32 [n]``: the head at each run's last token; ``last_hidden``: that
    token's final hidden state. ``head_vector`` may be None when only ``last_hidden`` is used."""

    def __init__(self, model, head_vector, attention: str = "sdpa-padded"):
        reason = unsupported_reason(model.config)
        if reason:
            raise BenchError(f"packed decoder: unsupported model ({reason})")
        cfg = model.config
        inner = model.model
        self.config = cfg
        self.embed, self.layers, self.norm, self.rotary = inner.embed_tokens, list(inner.layers), inner.norm, inner.rotary_emb
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.layers[0].self_attn.scaling
        # Gemma multiplies embeddings by sqrt(hidden); newer transformers do it inside the embedding module
        gemma = cfg.model_type == "gemma" and not hasattr(self.embed, "embed_scale")
        self.embed_scale = cfg.hidden_size ** 0.5 if gemma else None
        self.qk_norm = hasattr(self.layers[0].self_attn, "q_norm")
        self.vector = head_vector
        # Mistral's sliding window: attention reaches back this many tokens (no limit while sequences fit)
        self.window = getattr(cfg, "sliding_window", None) if cfg.model_type == "mistral" else None
        self.attention = attention
        self._attend = self._sdpa if attention == "sdpa-padded" else self._varlen

    # -- public ------------------------------------------------------------------------------------------
    def prefix_cache(self, batch: DecoderBatch) -> PrefixCache:
        """Keys and values of every layer for the prefixes in ``batch`` (the last layer: keys and values
        only, nothing a prompt does not read)."""
        self._check_window(batch)
        x = self._embed(batch.ids)
        cos, sin = self._rope(x, batch.positions)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            h = layer.input_layernorm(x)
            q, k, v = self._qkv(layer, h, cos, sin, queries=i < len(self.layers) - 1)
            keys.append(k)
            values.append(v)
            if q is not None:
                x = self._finish(layer, x, self._attend(q, k, v, batch, None, i, last_only=False))
        cu = batch.cu.long()
        lengths = cu[1:] - cu[:-1]
        cache = PrefixCache(keys, values, batch.cu, lengths, batch.max_len)
        if self.attention == "sdpa-padded":  # padded once here, not per prompt batch and layer
            slot, _ = _slots(cu, batch.max_len, batch.ids.numel())
            cache.keys = [_scatter(k, slot, batch.n, batch.max_len) for k in keys]
            cache.values = [_scatter(v, slot, batch.n, batch.max_len) for v in values]
        return cache

    def score(self, batch: DecoderBatch, cache: PrefixCache | None = None):
        """The head at each run's last token, fp32 ``[n]``; runs continue their ``cache`` rows."""
        return self.last_hidden(batch, cache).float() @ self.vector

    def last_hidden(self, batch: DecoderBatch, cache: PrefixCache | None = None):
        """The final (normed) hidden state at each run's last token, ``[n, hidden]`` in the model's dtype."""
        self._check_window(batch)
        x = self._embed(batch.ids)
        cos, sin = self._rope(x, batch.positions)
        for i, layer in enumerate(self.layers[:-1]):
            h = layer.input_layernorm(x)
            q, k, v = self._qkv(layer, h, cos, sin)
            x = self._finish(layer, x, self._attend(q, k, v, batch, cache, i, last_only=False))
        layer, last = self.layers[-1], batch.cu[1:].long() - 1
        h = layer.input_layernorm(x)
        _, k, v = self._qkv(layer, h, cos, sin, queries=False)
        q = self._queries(layer, h.index_select(0, last), cos.index_select(0, last), sin.index_select(0, last))
        x = self._finish(layer, x.index_select(0, last),
                         self._attend(q, k, v, batch, cache, len(self.layers) - 1, last_only=True))
        return self.norm(x)

    def describe(self) -> dict:
        return {"forward": "packed-decoder", "attention": self.attention, "family": self.config.model_type,
                "last_layer": "scored position only", "lm_head": "one fp32 vector (W[yes] - W[no] or W[yes])"}

    def _check_window(self, batch: DecoderBatch) -> None:
        if self.window and batch.extent > self.window:
            raise BenchError(f"packed decoder: a sequence of {batch.extent} tokens exceeds the model's sliding window "
                             f"of {self.window} (only full causal attention is implemented); shorten the input")

    # -- one layer, as the Hugging Face decoder layer computes it -----------------------------------------
    def _embed(self, ids):
        x = self.embed(ids)
        if self.embed_scale is not None:  # Gemma: the normaliser in the hidden states' dtype
            x = x * lazy.torch.tensor(self.embed_scale, dtype=x.dtype)
        return x

    def _rope(self, x, positions):
        cos, sin = self.rotary(x[None], positions[None])
        return cos[0], sin[0]

    def _queries(self, layer, h, cos, sin):
        a = layer.self_attn
        q = a.q_proj(h).view(h.shape[0], self.heads, self.head_dim)
        if self.qk_norm:
            q = a.q_norm(q)
        return _rotate(q, cos, sin)

    def _qkv(self, layer, h, cos, sin, queries: bool = True):
        a, t = layer.self_attn, h.shape[0]
        k = a.k_proj(h).view(t, self.kv_heads, self.head_dim)
        v = a.v_proj(h).view(t, self.kv_heads, self.head_dim)
        if self.qk_norm:
            k = a.k_norm(k)
        q = self._queries(layer, h, cos, sin) if queries else None
        return q, _rotate(k, cos, sin), v

    @staticmethod
    def _finish(layer, x, attended):
        x = x + layer.self_attn.o_proj(attended)
        return x + layer.mlp(layer.post_attention_layernorm(x))

    # -- attention --------------------------------------------------------------------------------------
    def _sdpa(self, q, k, v, batch, cache, layer: int, *, last_only: bool):
        """Padded SDPA: each run's queries against its prefix rows (all visible) and its own keys
        (causal); ``last_only``: one query per run, its last token."""
        torch = lazy.torch
        n, longest = batch.n, batch.max_len
        cu = batch.cu.long()
        slot, lengths = _slots(cu, longest, k.shape[0])
        kp, vp = _scatter(k, slot, n, longest), _scatter(v, slot, n, longest)
        own = torch.arange(longest, device=k.device)
        qpos = (lengths - 1)[:, None] if last_only else own[None, :].expand(n, longest)
        mask = (own[None, None, :] <= qpos[:, :, None]) & (own[None, None, :] < lengths[:, None, None])
        if cache is not None:
            pk = cache.keys[layer].index_select(0, batch.prefix)
            pv = cache.values[layer].index_select(0, batch.prefix)
            kp, vp = torch.cat([pk, kp], 1), torch.cat([pv, vp], 1)
            seen = torch.arange(cache.longest, device=k.device)[None, :] < cache.lengths.index_select(0, batch.prefix)[:, None]
            mask = torch.cat([seen[:, None, :].expand(-1, mask.shape[1], -1), mask], 2)
        qp = q[:, :, None, :] if last_only else _scatter(q, slot, n, longest).transpose(1, 2)
        o = torch.nn.functional.scaled_dot_product_attention(
            qp, kp.transpose(1, 2), vp.transpose(1, 2), attn_mask=mask[:, None], scale=self.scale,
            enable_gqa=self.heads != self.kv_heads)
        if last_only:
            return o.reshape(n, -1)
        return o.transpose(1, 2).reshape(n * longest, -1).index_select(0, slot)

    def _varlen(self, q, k, v, batch, cache, layer: int, *, last_only: bool):
        """Flash attention over packed runs (CUDA, fp16/bf16), causal aligned at each run's end, each
        run's prefix rows gathered in front of its own keys."""
        torch = lazy.torch
        from torch.nn.attention.varlen import varlen_attn  # optional submodule (see packed.varlen_available)

        cu = batch.cu
        if cache is not None:
            gather, cu_k, max_k = _prefix_gather(batch, cache)
            k = torch.cat([cache.keys[layer], k]).index_select(0, gather)
            v = torch.cat([cache.values[layer], v]).index_select(0, gather)
        else:
            cu_k, max_k = cu, batch.max_len
        cu_q = torch.arange(batch.n + 1, dtype=cu.dtype, device=cu.device) if last_only else cu
        o = varlen_attn(q, k, v, cu_q, cu_k, 1 if last_only else batch.max_len, max_k, scale=self.scale,
                        window_size=(-1, 0), enable_gqa=self.heads != self.kv_heads)
        return o.reshape(q.shape[0], -1)


def _rotate(x, cos, sin):
    """Rotary embedding of ``[tokens, heads, dim]`` at each token's cos/sin ``[tokens, dim]``."""
    half = x.shape[-1] // 2
    rotated = lazy.torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def _slots(cu, longest: int, tokens: int):
    """Each packed token's row in a padded ``[n * longest]`` layout, and the runs' lengths."""
    torch = lazy.torch
    lengths = cu[1:] - cu[:-1]
    n = lengths.numel()
    seq = torch.repeat_interleave(torch.arange(n, device=cu.device), lengths, output_size=tokens)
    local = torch.arange(tokens, device=cu.device) - cu[:-1].index_select(0, seq)
    return seq * longest + local, lengths


def _scatter(x, slot, n: int, longest: int):
    """Packed ``[tokens, heads, dim]`` into zero-padded ``[n, longest, heads, dim]``."""
    padded = x.new_zeros(n * longest, *x.shape[1:])
    padded.index_copy_(0, slot, x)
    return padded.view(n, longest, *x.shape[1:])


def _prefix_gather(batch: DecoderBatch, cache: PrefixCache):
    """Row indices into ``cat(prefix rows, run rows)`` that put each run's prefix before its own keys."""
    torch = lazy.torch
    pcu = cache.cu.long()
    starts, plen = pcu.index_select(0, batch.prefix), cache.lengths.index_select(0, batch.prefix)
    cu = batch.cu.long()
    rlen = cu[1:] - cu[:-1]
    total = plen + rlen
    cu_k = torch.zeros(batch.n + 1, dtype=torch.long, device=cu.device)
    cu_k[1:] = torch.cumsum(total, 0)
    t = int(cu_k[-1])
    seq = torch.repeat_interleave(torch.arange(batch.n, device=cu.device), total, output_size=t)
    local = torch.arange(t, device=cu.device) - cu_k[:-1].index_select(0, seq)
    in_prefix = local < plen.index_select(0, seq)
    offset = int(pcu[-1])
    gather = torch.where(in_prefix, starts.index_select(0, seq) + local,
                         offset + cu[:-1].index_select(0, seq) + local - plen.index_select(0, seq))
    return gather, cu_k.to(batch.cu.dtype), int(total.max())


def merge_caches(caches: Sequence[PrefixCache]) -> PrefixCache:
    """Prefix caches computed batch by batch as one (rows in order; padded ones padded to the longest)."""
    if len(caches) == 1:
        return caches[0]
    torch = lazy.torch
    longest = max(c.longest for c in caches)
    lengths = torch.cat([c.lengths for c in caches])
    cu = torch.zeros(lengths.numel() + 1, dtype=caches[0].cu.dtype, device=lengths.device)
    cu[1:] = torch.cumsum(lengths, 0)

    def join(parts):
        if parts[0].dim() == 4:  # padded [g, longest, heads, dim]
            parts = [torch.nn.functional.pad(x, (0, 0, 0, 0, 0, longest - x.shape[1])) for x in parts]
        return torch.cat(parts)

    layers = range(len(caches[0].keys))
    return PrefixCache([join([c.keys[i] for c in caches]) for i in layers],
                       [join([c.values[i] for c in caches]) for i in layers], cu, lengths, longest)


def split_prefixes(seqs: Sequence[list[int]], shared: Sequence[int], reuse: bool):
    """Distinct prefixes and, per sequence, (prefix index or -1, its own tokens, their first position).

    Each sequence keeps at least its last token (the one scored); without ``reuse`` nothing is shared."""
    index: dict[tuple, int] = {}
    prefixes: list[list[int]] = []
    items = []
    for seq, n in zip(seqs, shared):
        n = min(n, len(seq) - 1) if reuse else 0
        if n <= 0:
            items.append((-1, seq, 0))
            continue
        key = tuple(seq[:n])
        if key not in index:
            index[key] = len(prefixes)
            prefixes.append(list(key))
        items.append((index[key], seq[n:], n))
    return prefixes, items
