"""A padding-free forward for the BERT family (BERT, RoBERTa, XLM-RoBERTa, CamemBERT).

Sequences of a batch are laid end to end as one ``[total_tokens, hidden]`` tensor, so the linear
layers (nearly all the work) compute no padding. The loaded Hugging Face model's parameters are used
in place; the only new tensors are the fused query/key/value weights (one matmul instead of three),
whose size ``fused_qkv_bytes`` records. Each step follows the Hugging Face modules it replaces:
embeddings (word + token type + position, LayerNorm), then per layer self-attention, output dense,
residual LayerNorm, intermediate activation, output dense, residual LayerNorm.

Attention paths (``attention=``):

* ``varlen``: ``torch.nn.attention.varlen.varlen_attn`` over cumulative sequence lengths (flash
  attention, CUDA, fp16/bf16); where that module is missing, ``torch.ops.aten._flash_attention_forward``
  with the same arguments, recorded as ``varlen-aten``;
* ``sdpa-padded``: each layer scatters q/k/v into a padded ``[batch, heads, longest, dim]`` tensor,
  runs ``scaled_dot_product_attention`` with a key padding mask, and gathers the real tokens back.
  Works on every device and dtype (the CPU path).

Work a head never reads is skipped: with ``forward(batch, first_only=True)`` (a cross-encoder's head
and CLS pooling read only each sequence's first token) the last layer projects keys and values for
every token but computes the query, attention output, output dense and feed-forward block for the
first tokens only: the same function, about 10/12 of one layer's matmul FLOPs fewer (3.5% of
bge-reranker-large's 24 layers).

Opt-in variants, each changing how a step runs, never what it computes beyond rounding, and each
recorded by ``describe()``:

* ``gelu_epilogue``: the intermediate dense and its GELU in one ``torch._addmm_activation`` call,
  which on CUDA runs GELU inside the cuBLASLt matmul epilogue (no separate pass over the
  ``[tokens, 4 × hidden]`` activations). PyTorch's CUDA path computes GELU's tanh form there, so a
  model trained with exact GELU ("gelu") sees a difference of at most about 5e-4 per activation, far
  below bf16's rounding of the same values; fidelity against fp32 measures it. On the CPU it is
  exact GELU.
* ``fused_add_norm``: residual add and LayerNorm as one ``torch.compile``'d function (one pass over
  the hidden states instead of two); the matmuls and attention stay eager.
"""

from __future__ import annotations

import math

from .. import lazy
from ..errors import BenchError

#: model_type -> whether position ids start after the padding index (RoBERTa style) or at 0 (BERT)
FAMILY = {"bert": False, "roberta": True, "xlm-roberta": True, "camembert": True}
ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "relu": None}
ATTENTION_PATHS = ("auto", "varlen", "sdpa-padded")


def unsupported_reason(config) -> str | None:
    """Why the packed forward cannot run a model with this config (None when it can)."""
    if config.model_type not in FAMILY:
        return f"model_type {config.model_type!r} is not one of {sorted(FAMILY)}"
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        return f"position_embedding_type {config.position_embedding_type!r} (only absolute is implemented)"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "decoder / cross-attention configuration"
    if not isinstance(config.hidden_act, str) or config.hidden_act not in ACTIVATIONS:
        return f"hidden_act {config.hidden_act!r} (implemented: {sorted(ACTIVATIONS)})"
    return None


def varlen_available() -> str | None:
    """Which variable-length attention this torch offers: 'varlen', 'varlen-aten' or None."""
    try:
        import torch.nn.attention.varlen  # noqa: F401  (a probe: the module is absent from older torch)

        return "varlen"
    except ImportError:
        pass
    if hasattr(lazy.torch.ops.aten, "_flash_attention_forward"):
        return "varlen-aten"
    return None


def choose_attention(requested: str, device: str, half: bool) -> str:
    """Resolve ``auto`` and check an explicit choice can run here (never switched silently)."""
    if requested not in ATTENTION_PATHS:
        raise BenchError(f"attention {requested!r}: use one of {', '.join(ATTENTION_PATHS)}")
    flash_ok = device.startswith("cuda") and half
    if requested == "auto":
        return (varlen_available() or "sdpa-padded") if flash_ok else "sdpa-padded"
    if requested == "varlen":
        if not flash_ok:
            raise BenchError("attention 'varlen' needs a CUDA device and fp16/bf16 (flash attention); "
                             "use attention 'sdpa-padded' or 'auto'")
        found = varlen_available()
        if found is None:
            raise BenchError("attention 'varlen': this torch has neither torch.nn.attention.varlen nor "
                             "aten._flash_attention_forward; use 'sdpa-padded'")
        return found
    return requested


class PackedEncoder:
    """``forward(batch) -> [total_tokens, hidden]`` for a BERT-family base model (``model.base_model``).

    ``batch`` carries ``input_ids``, ``token_type_ids`` (or None), ``position_ids``, ``cu_seqlens``
    (int32, ``[n + 1]``) and ``max_len``: the layout ``bench.engine.loop`` produces."""

    def __init__(self, base_model, attention: str = "sdpa-padded", compile: bool = False, *,
                 gelu_epilogue: bool = False, fused_add_norm: bool = False):
        torch = lazy.torch
        reason = unsupported_reason(base_model.config)
        if reason:
            raise BenchError(f"packed forward: unsupported model ({reason})")
        cfg = base_model.config
        self.config = cfg
        self.attention = attention
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.gelu = ACTIVATIONS[cfg.hidden_act]
        emb = base_model.embeddings
        self.emb = emb
        self.position_offset = (emb.padding_idx + 1) if FAMILY[cfg.model_type] else 0
        self.layers = []
        self.fused_qkv_bytes = 0
        self.eps = (base_model.encoder.layer[0].attention.output.LayerNorm.eps,
                    base_model.encoder.layer[0].output.LayerNorm.eps)
        with torch.no_grad():
            for layer in base_model.encoder.layer:
                sa = layer.attention.self
                w = torch.cat([sa.query.weight, sa.key.weight, sa.value.weight], 0).contiguous()
                b = torch.cat([sa.query.bias, sa.key.bias, sa.value.bias], 0).contiguous()
                self.fused_qkv_bytes += (w.numel() + b.numel()) * w.element_size()
                # Plain tensors (detached views, no copies): torch.compile then sees every layer as
                # the same graph with different inputs instead of recompiling per module.
                mods = (layer.attention.output.dense, layer.attention.output.LayerNorm, layer.intermediate.dense,
                        layer.output.dense, layer.output.LayerNorm)
                self.layers.append((w, b) + tuple(t.detach() for m in mods for t in (m.weight, m.bias)))
        padded = attention == "sdpa-padded"
        self._flash = {"varlen": _flash_varlen, "varlen-aten": _flash_aten}.get(attention)
        self._attend = self._sdpa_padded if padded else self._varlen
        self._attend_first = self._sdpa_padded_first if padded else self._varlen_first
        self.gelu_epilogue = gelu_epilogue
        self.fused_add_norm = fused_add_norm
        self._add_norm = torch.compile(_add_norm, dynamic=True) if fused_add_norm else _add_norm
        self._layer = torch.compile(self._layer_eager, dynamic=True) if compile else self._layer_eager
        self.compile = compile

    def embed(self, batch):
        emb = self.emb
        x = emb.word_embeddings(batch.input_ids)
        if batch.token_type_ids is None:
            x = x + emb.token_type_embeddings.weight[0]
        else:
            x = x + emb.token_type_embeddings(batch.token_type_ids)
        x = x + emb.position_embeddings(batch.position_ids)
        norm = emb.LayerNorm
        return lazy.torch.nn.functional.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

    def forward(self, batch, *, first_only: bool = False):
        """Hidden states ``[total_tokens, hidden]``; with ``first_only`` each sequence's first-token
        state ``[n, hidden]``, the last layer computed for those tokens only."""
        x = self.embed(batch)
        ctx = self._attention_context(batch)
        layers = self.layers[:-1] if first_only else self.layers
        for params in layers:
            x = self._layer(x, params, ctx)
        if first_only:
            return self._last_layer_first(x, self.layers[-1], ctx, batch)
        return x

    __call__ = forward

    # -- one transformer layer, as BertLayer / XLMRobertaLayer compute it --------------------------------
    def _layer_eager(self, x, params, ctx):
        F = lazy.torch.nn.functional
        w_qkv, b_qkv, w_ao, b_ao, g1, beta1 = params[:6]
        t, width = x.shape
        qkv = F.linear(x, w_qkv, b_qkv).view(t, 3, self.heads, self.head_dim)
        a = self._attend(qkv, ctx).reshape(t, width)
        x = self._add_norm(F.linear(a, w_ao, b_ao), x, g1, beta1, self.eps[0])
        return self._feed_forward(x, params)

    def _feed_forward(self, x, params):
        F = lazy.torch.nn.functional
        w_in, b_in, w_out, b_out, g2, beta2 = params[6:]
        if self.gelu_epilogue:
            h = lazy.torch._addmm_activation(b_in, x, w_in.t(), use_gelu=self.gelu is not None)
        else:
            h = F.linear(x, w_in, b_in)
            h = F.relu(h) if self.gelu is None else F.gelu(h, approximate=self.gelu)
        return self._add_norm(F.linear(h, w_out, b_out), x, g2, beta2, self.eps[1])

    def _last_layer_first(self, x, params, ctx, batch):
        """The last layer for each sequence's first token: its query against every token's key and
        value, then the output dense, LayerNorms and feed-forward block on ``n`` rows, not ``t``."""
        F = lazy.torch.nn.functional
        w_qkv, b_qkv, w_ao, b_ao, g1, beta1 = params[:6]
        t, width = x.shape
        x0 = x.index_select(0, batch.cu_seqlens[:-1].long())
        n = x0.shape[0]
        q = F.linear(x0, w_qkv[:width], b_qkv[:width]).view(n, self.heads, self.head_dim)
        kv = F.linear(x, w_qkv[width:], b_qkv[width:]).view(t, 2, self.heads, self.head_dim)
        a = self._attend_first(q, kv, ctx).reshape(n, width)
        x0 = self._add_norm(F.linear(a, w_ao, b_ao), x0, g1, beta1, self.eps[0])
        return self._feed_forward(x0, params)

    # -- attention paths ----------------------------------------------------------------------------------
    def _attention_context(self, batch):
        """What the attention path needs beyond q/k/v, computed once per batch (not per layer)."""
        if self.attention != "sdpa-padded":
            return batch
        torch = lazy.torch
        cu = batch.cu_seqlens.long()
        n, longest = cu.numel() - 1, batch.max_len
        lengths = cu[1:] - cu[:-1]
        t = batch.input_ids.numel()
        seq = torch.repeat_interleave(torch.arange(n, device=cu.device), lengths, output_size=t)
        slot = seq * longest + (batch.position_ids - self.position_offset)
        keep = torch.arange(longest, device=cu.device)[None, :] < lengths[:, None]
        return slot, keep[:, None, None, :], n, longest

    def _varlen(self, qkv, batch):
        cu = batch.cu_seqlens
        return self._flash(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, cu, batch.max_len, batch.max_len)

    def _varlen_first(self, q, kv, batch):
        cu = batch.cu_seqlens
        return self._flash(q, kv[:, 0], kv[:, 1], _first_cu(cu), cu, 1, batch.max_len)

    @staticmethod
    def _padded(x, ctx):
        """Packed ``[tokens, m, heads, dim]`` scattered into zero-padded ``[m, n, heads, longest, dim]``."""
        slot, _, n, longest = ctx
        t, m, h, d = x.shape
        padded = x.new_zeros(n * longest, m, h, d)
        padded.index_copy_(0, slot, x)
        return padded.view(n, longest, m, h, d).permute(2, 0, 3, 1, 4)

    def _sdpa_padded_first(self, q, kv, ctx):
        mask, n = ctx[1], ctx[2]
        k, v = self._padded(kv, ctx)
        o = lazy.torch.nn.functional.scaled_dot_product_attention(q[:, :, None, :], k, v, attn_mask=mask,
                                                                  scale=self.scale)
        return o.reshape(n, -1)

    def _sdpa_padded(self, qkv, ctx):
        slot, mask, n, longest = ctx
        q, k, v = self._padded(qkv, ctx)
        o = lazy.torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return o.transpose(1, 2).reshape(n * longest, *qkv.shape[2:]).index_select(0, slot)

    def describe(self) -> dict:
        act = self.config.hidden_act
        if self.gelu_epilogue and self.gelu is not None:
            act += " (matmul epilogue: tanh form on CUDA)"
        return {"forward": "packed", "attention": self.attention, "fused_qkv_bytes": self.fused_qkv_bytes,
                "activation": act, "gelu_epilogue": self.gelu_epilogue, "fused_add_norm": self.fused_add_norm}


def _add_norm(y, x, weight, bias, eps: float):
    """LayerNorm(y + x): a residual block's end (compiled into one kernel with ``fused_add_norm``)."""
    return lazy.torch.nn.functional.layer_norm(y + x, (y.shape[-1],), weight, bias, eps)


def _flash_varlen(q, k, v, cu_q, cu_k, max_q: int, max_k: int):
    """Flash attention over packed sequences through ``torch.nn.attention.varlen``."""
    from torch.nn.attention.varlen import varlen_attn  # optional submodule (see varlen_available)

    return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k)


def _flash_aten(q, k, v, cu_q, cu_k, max_q: int, max_k: int):
    """The same kernel through ``aten._flash_attention_forward`` (torch without the varlen module)."""
    return lazy.torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, False, False)[0]


def _first_cu(cu):
    """Cumulative query lengths when each sequence keeps one query (its first token): 0, 1, ..., n."""
    return lazy.torch.arange(cu.numel(), dtype=cu.dtype, device=cu.device)


def first_tokens(hidden, batch):
    """Hidden state of each sequence's first token (``[CLS]`` / ``<s>``): ``[n, hidden]``."""
    return hidden.index_select(0, batch.cu_seqlens[:-1].long())


def classify(model, first):
    """The sequence-classification head of ``model`` on the first-token states ``[n, hidden]``
    (``first_tokens`` of the hidden states, or ``PackedEncoder(..., first_only=True)``), through the
    model's own head modules: XLM-R/RoBERTa ``classifier`` (dense, tanh, out_proj) or BERT
    ``pooler`` then ``classifier``."""
    first = first[:, None, :]
    kind = model.config.model_type
    if FAMILY.get(kind):
        return model.classifier(first)
    pooled = model.base_model.pooler(first)
    return model.classifier(model.dropout(pooled))


def head_supported(model) -> str | None:
    """Why ``classify`` cannot reproduce this model's head (None when it can)."""
    kind = model.config.model_type
    if kind not in FAMILY:
        return f"model_type {kind!r}"
    if FAMILY[kind]:
        ok = hasattr(model, "classifier") and hasattr(model.classifier, "out_proj")
    else:
        ok = (hasattr(model, "classifier") and hasattr(model, "dropout")
              and getattr(model.base_model, "pooler", None) is not None)
    return None if ok else f"{type(model).__name__} has a head the packed path does not know"


def pool(hidden, batch, modes: tuple[str, ...]):
    """sentence-transformers pooling over packed tokens (``cls``, ``mean``, ``max``,
    ``mean_sqrt_len_tokens``, ``lasttoken``), concatenated in ``modes`` order, accumulated in fp32."""
    torch = lazy.torch
    cu = batch.cu_seqlens.long()
    n = cu.numel() - 1
    lengths = (cu[1:] - cu[:-1])
    seq = None
    out = []
    for mode in modes:
        if mode == "cls":
            out.append(hidden.index_select(0, cu[:-1]).float())
        elif mode == "lasttoken":
            out.append(hidden.index_select(0, cu[1:] - 1).float())
        elif mode in ("mean", "mean_sqrt_len_tokens", "max"):
            if seq is None:
                seq = torch.repeat_interleave(torch.arange(n, device=cu.device), lengths,
                                              output_size=hidden.shape[0])
            if mode == "max":
                m = hidden.new_full((n, hidden.shape[1]), float("-inf"))
                m.scatter_reduce_(0, seq[:, None].expand_as(hidden), hidden, "amax", include_self=True)
                out.append(m.float())
                continue
            s = torch.zeros(n, hidden.shape[1], dtype=torch.float32, device=hidden.device)
            s.index_add_(0, seq, hidden.float())
            denom = lengths.float()[:, None]
            out.append(s / (denom if mode == "mean" else denom.sqrt()))
        else:
            raise BenchError(f"pooling mode {mode!r} is not implemented by the fast encoder; "
                             "use engine = 'sentence-transformers'")
    return torch.cat(out, dim=-1)
