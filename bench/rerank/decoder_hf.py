"""Decoder rerankers through Hugging Face's own forward: the model card's snippet, the reference engine.

What the Qwen3-Reranker model card (and mxbai-rerank-v2, FlagEmbedding's ``FlagLLMReranker``) do:
``AutoModelForCausalLM``, prompts built by the authors' template (``bench.engine.prompts``), pairs in input
order in batches of ``batch_size``, each batch left-padded to its longest prompt, the full forward
including the projection onto the whole vocabulary, then the head read at the last position
(``bench.rerank.scoring``). Models with their own code (``trust_remote_code = true``) run only here.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from .. import lazy
from ..engine.device import AUTO_CUDA, matmul_precision, resolve_precision
from .common import EngineBase, check_pairs, check_scores
from .scoring import head_from_logits, load_decoder

#: ``dtype = "auto"`` on CUDA for decoder engines: bf16 for the fast engine (Qwen's and Gemma's
#: activations overflow fp16), each baseline as its users run it.
DECODER_AUTO_CUDA = {**AUTO_CUDA, "fast": "bf16"}


class DecoderEngineBase(EngineBase):
    """What the decoder engines share: the loaded model, head and prompts, and what the record says."""

    def __init__(self, spec, device: str, cache_dir=None, *, config=None):
        super().__init__(spec, device, resolve_precision(spec.dtype, device, DECODER_AUTO_CUDA[self.engine]),
                         query_limit=True)
        loaded = load_decoder(spec, device, self.precision, cache_dir, config=config)
        self.source = loaded.source
        self.tokenizer, self.model = loaded.tokenizer, loaded.model
        self.scoring, self.prompts, self.max_length = loaded.scoring, loaded.prompts, loaded.max_length

    def _describe_decoder(self, **fields) -> dict:
        out = self._describe(scoring=self.scoring.describe(), template=self.scoring.template,
                             truncation=self.prompts.truncation, trust_remote_code=self.spec.trust_remote_code,
                             **fields)
        out["max_length"] = self.max_length  # the known model's default when the experiment sets none
        return out


class DecoderTransformersReranker(DecoderEngineBase):
    """The model card's snippet: left padding, fixed batch, input order, full-vocabulary logits."""

    engine = "transformers"

    def __init__(self, spec, device: str = "cpu", cache_dir=None, *, config=None):
        super().__init__(spec, device, cache_dir, config=config)
        self.batch_size = spec.batch_size
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        torch = lazy.torch
        pairs = check_pairs(pairs)
        t0 = time.perf_counter()
        out, tokens, padded = [], 0, 0
        enc = self.prompts(pairs)
        with torch.inference_mode(), matmul_precision(self.precision):
            for s in range(0, len(pairs), self.batch_size):
                seqs = enc.seqs[s:s + self.batch_size]
                ids, mask = left_padded(seqs, self.pad_id)
                tokens += sum(len(x) for x in seqs)
                padded += ids.numel()
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                out.append(head_from_logits(logits[:, -1, :], self.scoring).cpu().numpy())
        scores = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
        self._stats.add(pairs=len(pairs), tokens=tokens, padded_tokens=padded, truncated_pairs=enc.hit_max,
                        truncated_queries=enc.hit_query_max, seconds=time.perf_counter() - t0)
        return check_scores(scores, pairs, self.label)

    def describe(self) -> dict:
        return self._describe_decoder(batch_size=self.batch_size, order="input", padding="left", forward="hf",
                                      attention=self.model.config._attn_implementation,
                                      lm_head="full vocabulary (as the model card)")


def left_padded(seqs: list[list[int]], pad_id: int):
    """``input_ids`` and ``attention_mask`` ``[n, longest]``, each sequence at the right end (left padding:
    the last position is every prompt's last token)."""
    torch = lazy.torch
    longest = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for i, x in enumerate(seqs):
        ids[i, longest - len(x):] = torch.tensor(x)
        mask[i, longest - len(x):] = 1
    return ids, mask
