"""T5 rerankers' forward: the model loaded with its head, and the two ways to score token ids.

Score (pygaggle ``MonoT5.rescore``; rank_llm ``MonoT5.run_llm_batched`` takes its exponent): one
decoder step from T5's start token, the logits of the words ``true`` and ``false``, and
``log_softmax`` over the two: score = log p(true) = log sigmoid(logit(true) - logit(false)), float32.

* ``ReferenceT5``: the authors' formulation: ``T5ForConditionalGeneration`` called on batches of
  ``batch_size`` inputs in input order, right-padded to the longest, with one decoder position; the
  full-vocabulary logits at that position; log_softmax over (false, true).
* ``FastT5``: inputs sorted longest first in batches of at most ``token_budget`` padded tokens; the
  encoder runs once per input (Hugging Face's ``T5Stack`` with SDPA attention: T5's relative position
  bias is an additive bias per head and position pair, which varlen/flash kernels do not take, so the
  encoder is not packed; length sorting keeps its padding small); then the single decoder step by
  hand. With one decoder position, self-attention is the value projection of that position (its
  softmax is over one key), and cross-attention needs no key or value projection of the encoder
  states: per head, ``q·(W_k e) = (W_kᵀ q)·e`` and ``Σ p·W_v e = W_v (Σ p·e)``, which costs
  ``heads × d`` per encoder token instead of ``2 × d × heads·d_kv``. The logits of the two words only:
  ``(W[true] - W[false])·h`` (scaled by d_model^-0.5 as T5 scales tied outputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ... import lazy, models
from ...engine.common import check_max_length, load_error
from ...errors import BenchError
from ..scoring import _single_token, load_config
from .templates import KNOWN_SEQ2SEQ, Seq2SeqPrompts

#: Model types whose decoder step ``FastT5`` computes (T5 v1.0 and v1.1 / mT5 blocks).
FAST_MODEL_TYPES = ("t5", "mt5")


def is_seq2seq(config) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def known_seq2seq(spec, config):
    """(hub id, entry) of ``KNOWN_SEQ2SEQ`` for ``spec.model`` or the ``random:`` model standing for one."""
    meta = getattr(config, "rerank_bench", None) or {}
    for key in (spec.model, meta.get("known_as")):
        if key in KNOWN_SEQ2SEQ:
            return key, KNOWN_SEQ2SEQ[key]
    return None, None


@dataclass
class LoadedT5:
    """A T5 reranker ready to score: tokenizer, model, answer-word ids, prompt builder."""

    tokenizer: object
    model: object
    true: str
    false: str
    true_id: int
    false_id: int
    prompts: Seq2SeqPrompts
    source: str
    known_as: str | None
    authors: str


def load_t5(spec, head: str, device: str, precision, cache_dir=None, config=None) -> LoadedT5:
    """Tokenizer, ``T5ForConditionalGeneration`` (eval, on ``device`` in ``precision``), answer words
    (the known model's, else ``yes_token`` / ``no_token``, else true / false) and prompts."""
    transformers = lazy.transformers
    source = models.resolve(spec.model, cache_dir)
    config = config or load_config(spec, cache_dir)
    if not is_seq2seq(config):
        raise BenchError(f"reranker {spec.model!r}: head = {head!r} scores a sequence-to-sequence (T5) model, but "
                         f"the model is {config.architectures}; use a T5 reranker or remove head")
    key, known = known_seq2seq(spec, config)
    check_max_length(config, spec.max_length, f"reranker {spec.label}")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, revision=spec.revision)
        model = transformers.T5ForConditionalGeneration.from_pretrained(source, revision=spec.revision,
                                                                        dtype=precision.torch_dtype)
    except (OSError, ValueError) as exc:
        raise load_error("reranker model", spec, exc) from None
    model.to(device).eval()
    true = spec.yes_token or (known.true if known else "true")
    false = spec.no_token or (known.false if known else "false")
    try:
        prompts = Seq2SeqPrompts(tokenizer, head, spec.template, spec.max_length, spec.query_max_length)
    except ValueError as exc:
        raise BenchError(f"reranker {spec.label}: {exc}") from None
    return LoadedT5(tokenizer, model, true, false, _single_token(tokenizer, true, "yes"),
                    _single_token(tokenizer, false, "no"), prompts, source, key,
                    known.source if known else "experiment fields")


def padded_batch(seqs: list[list[int]], pad_id: int, device: str):
    """Right-padded ids and attention mask (T5's tokenizer pads on the right)."""
    torch = lazy.torch
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids.to(device), mask.to(device)


class ReferenceT5:
    """The authors' formulation (module docstring): input order, fixed batch size, full logits."""

    def __init__(self, loaded: LoadedT5, device: str, batch_size: int):
        self.t5, self.device, self.batch_size = loaded, device, batch_size
        self.start = loaded.model.config.decoder_start_token_id

    def describe(self) -> dict:
        return {"batch_size": self.batch_size, "order": "input", "padding": "right, to the batch's longest",
                "forward": "T5ForConditionalGeneration, one decoder position, full-vocabulary logits",
                "attention": self.t5.model.config._attn_implementation}

    def __call__(self, seqs: list[list[int]]) -> tuple[np.ndarray, int]:
        """log p(true) per input, in input order, and the padded tokens the encoder ran."""
        torch = lazy.torch
        out, padded = [], 0
        pad = self.t5.tokenizer.pad_token_id
        for s in range(0, len(seqs), self.batch_size):
            ids, mask = padded_batch(seqs[s:s + self.batch_size], pad, self.device)
            padded += ids.numel()
            start = torch.full((ids.shape[0], 1), self.start, dtype=torch.long, device=self.device)
            logits = self.t5.model(input_ids=ids, attention_mask=mask, decoder_input_ids=start).logits[:, 0, :]
            pair = logits[:, [self.t5.false_id, self.t5.true_id]].float()
            out.append(torch.log_softmax(pair, dim=-1)[:, 1].cpu().numpy())
        return (np.concatenate(out) if out else np.zeros(0, dtype=np.float32)), padded


class FastT5:
    """Length-sorted token-budget batches, the encoder once per input, one folded decoder step."""

    def __init__(self, loaded: LoadedT5, device: str, token_budget: int):
        torch = lazy.torch
        model = loaded.model
        if model.config.model_type not in FAST_MODEL_TYPES:
            raise BenchError(f"fast engine cannot run {model.config.model_type!r} models (it computes the decoder step "
                             f"of {', '.join(FAST_MODEL_TYPES)} blocks); use engine = 'transformers'")
        self.t5, self.device, self.token_budget = loaded, device, int(token_budget)
        cfg = model.config
        self.heads, self.d_kv = cfg.num_heads, cfg.d_kv
        decoder = model.decoder
        self.blocks = list(decoder.block)
        self.final_norm = decoder.final_layer_norm
        with torch.no_grad():
            self.start = decoder.embed_tokens.weight[cfg.decoder_start_token_id].clone()
            w = model.get_output_embeddings().weight
            self.head = (w[loaded.true_id].float() - w[loaded.false_id].float()).contiguous()
            scale = getattr(cfg, "scale_decoder_outputs", cfg.tie_word_embeddings)
            self.scale = cfg.d_model ** -0.5 if scale else 1.0
            # cross-attention key and value weights per head: [heads, d_kv, d_model]
            self.cross = [(b.layer[1].EncDecAttention.k.weight.view(self.heads, self.d_kv, -1),
                           b.layer[1].EncDecAttention.v.weight.view(self.heads, self.d_kv, -1)) for b in self.blocks]

    def describe(self) -> dict:
        return {"token_budget": self.token_budget, "order": "longest first", "padding": "right, per length-sorted batch",
                "forward": "HF T5 encoder (sdpa) once per input + one decoder step computed by hand "
                           "(cross-attention folded onto the query side, two output rows)",
                "attention": self.t5.model.config._attn_implementation}

    def __call__(self, seqs: list[list[int]]) -> tuple[np.ndarray, int]:
        """log p(true) per input, in input order, and the padded tokens the encoder ran."""
        out = np.zeros(len(seqs), dtype=np.float32)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        padded, s = 0, 0
        pad = self.t5.tokenizer.pad_token_id
        while s < len(order):
            longest = len(seqs[order[s]])
            e = s + max(1, self.token_budget // max(longest, 1))
            idx = order[s:e]
            ids, mask = padded_batch([seqs[i] for i in idx], pad, self.device)
            padded += ids.numel()
            out[idx] = self._score(ids, mask).cpu().numpy()
            s = e
        return out, padded

    def _score(self, ids, mask):
        torch = lazy.torch
        F = torch.nn.functional
        enc = self.t5.model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, n, d]
        bias = torch.zeros(mask.shape, dtype=enc.dtype, device=enc.device)
        bias.masked_fill_(mask == 0, torch.finfo(enc.dtype).min)
        x = self.start.to(enc.dtype).expand(ids.shape[0], -1)
        for block, (wk, wv) in zip(self.blocks, self.cross):
            sa, ca, ff = block.layer[0], block.layer[1], block.layer[-1]
            x = x + sa.SelfAttention.o(sa.SelfAttention.v(sa.layer_norm(x)))  # softmax over one key is 1
            q = ca.EncDecAttention.q(ca.layer_norm(x)).view(-1, self.heads, self.d_kv)
            u = torch.einsum("bhk,hkd->bhd", q, wk)                       # W_kᵀ q per head
            p = F.softmax(torch.einsum("bhd,bnd->bhn", u, enc) + bias[:, None, :], dim=-1)  # T5: no 1/sqrt(d)
            ctx = torch.einsum("bhn,bnd->bhd", p, enc)                    # Σ p·e per head
            x = x + ca.EncDecAttention.o(torch.einsum("bhd,hkd->bhk", ctx, wv).reshape(x.shape[0], -1))
            x = ff(x)                                                     # T5LayerFF: norm, FFN, residual
        h = self.final_norm(x).float() * self.scale
        return F.logsigmoid(h @ self.head)
