"""Decoder rerankers as users run them today, besides the model card (``decoder_hf``): the same prompts
(``bench.engine.prompts``) through sentence-transformers' ``CrossEncoder`` and FlagEmbedding's
``FlagLLMReranker`` batching, so ``bench throughput`` and fidelity compare every way in one process.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from .. import lazy
from ..engine.device import matmul_precision
from ..errors import BenchError
from .baselines import cross_encoder_logits, score_longest_first
from .common import check_pairs, check_scores
from .decoder_hf import DecoderEngineBase
from .scoring import head_from_logits


class DecoderCrossEncoderReranker(DecoderEngineBase):
    """sentence-transformers ``CrossEncoder`` on a causal LM: its ``Transformer`` (text-generation, left
    padding, logits of the last position only) and ``LogitScore`` (logit(yes) - logit(no), or one
    logit) modules, ``predict(batch_size)``.

    Its input is a (query part, passage part) text pair per prompt, as the Qwen3-Reranker usage with
    sentence-transformers writes it: the harness's prompt ids decoded on either side of the shared
    prefix; CrossEncoder tokenizes both parts and joins them. Only the ``qwen3`` template survives that
    decode and re-encode token for token (mxbai's and gemma's prompts join separately tokenized pieces,
    "." and "\n" for one, which text cannot carry), so other templates are refused rather than scored
    on other tokens. ``stats`` counts the harness's tokens."""

    engine = "sentence-transformers"

    def __init__(self, spec, device: str = "cpu", cache_dir=None, *, config=None):
        super().__init__(spec, device, cache_dir, config=config)
        if self.scoring.template != "qwen3":
            raise BenchError(f"engine 'sentence-transformers' takes text, and the {self.scoring.template!r} "
                             "template's tokens do not survive decoding to text and tokenizing again; for this "
                             "reranker use fast, transformers or flag")
        st = lazy.sentence_transformers
        if not hasattr(st.cross_encoder, "modules") or not hasattr(st.cross_encoder.modules, "LogitScore"):
            raise BenchError(f"sentence-transformers {st.__version__} has no CrossEncoder LogitScore module for "
                             "causal LMs (added in 5.x); upgrade it or leave this engine out for decoder rerankers")
        del self.model  # CrossEncoder loads its own copy
        self.cross_encoder = st.CrossEncoder(self.source, device=device, max_length=self.max_length,
                                             model_kwargs={"dtype": self.precision.torch_dtype},
                                             trust_remote_code=spec.trust_remote_code)
        score = self.cross_encoder[-1]
        score.true_token_id = self.scoring.yes_id
        score.false_token_id = self.scoring.no_id if self.scoring.head == "yes_no" else None
        self.batch_size = spec.batch_size

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        pairs = check_pairs(pairs)
        t0 = time.perf_counter()
        enc = self.prompts(pairs)
        decode = self.tokenizer.decode
        texts = [(decode(s[:n]), decode(s[n:])) for s, n in zip(enc.seqs, enc.shared)]
        scores = cross_encoder_logits(self.cross_encoder, texts, self.batch_size, self.precision)
        self._stats.add(pairs=len(pairs), tokens=sum(len(s) for s in enc.seqs), truncated_pairs=enc.hit_max,
                        truncated_queries=enc.hit_query_max, seconds=time.perf_counter() - t0)
        return check_scores(scores, pairs, self.label)

    def describe(self) -> dict:
        return self._describe_decoder(batch_size=self.batch_size, order="CrossEncoder.predict's own",
                                      padding="left", forward="sentence-transformers CrossEncoder + LogitScore",
                                      inputs="the harness's prompts decoded as (query part, passage part) pairs",
                                      stats_tokens="the harness's prompt tokens (padding not visible)")


class DecoderFlagReranker(DecoderEngineBase):
    """FlagEmbedding's ``FlagLLMReranker.compute_score`` logic (``decoder_only/base.py``): prompts sorted
    longest first, batches of 128 (``batch_size`` when the experiment sets it), a probe of the first
    batch that shrinks it by 3/4 on out-of-memory, ``tokenizer.pad(pad_to_multiple_of=8)`` on the
    tokenizer's own padding side, the full forward, ``last_logit_pool`` (last real token), scores back
    in input order. fp16 on CUDA (``use_fp16=True``, as its README runs bge-reranker-v2-gemma)."""

    engine = "flag"

    def __init__(self, spec, device: str = "cpu", cache_dir=None, *, config=None):
        super().__init__(spec, device, cache_dir, config=config)
        self.batch_size = spec.batch_size if "batch_size" in spec.model_fields_set else 128
        self.batch_size_used = self.batch_size

    def _forward(self, seqs):
        torch = lazy.torch
        inputs = self.tokenizer.pad([{"input_ids": s} for s in seqs], padding=True, pad_to_multiple_of=8,
                                    return_tensors="pt").to(self.device)
        logits = self.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        mask = inputs["attention_mask"]
        if bool(mask[:, -1].all()):  # left padding: the last column is every prompt's last token
            last = logits[:, -1, :]
        else:
            last = logits[torch.arange(len(seqs), device=logits.device), mask.sum(1) - 1]
        return head_from_logits(last, self.scoring), mask.numel()

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        torch = lazy.torch
        pairs = check_pairs(pairs)
        t0 = time.perf_counter()
        enc = self.prompts(pairs)
        order = np.argsort([-len(s) for s in enc.seqs], kind="stable")
        with torch.inference_mode(), matmul_precision(self.precision):
            result, padded, self.batch_size_used = score_longest_first(self._forward, enc.seqs, order,
                                                                       self.batch_size)
        self._stats.add(pairs=len(pairs), tokens=sum(len(s) for s in enc.seqs), padded_tokens=padded,
                        truncated_pairs=enc.hit_max, truncated_queries=enc.hit_query_max,
                        seconds=time.perf_counter() - t0)
        return check_scores(result, pairs, self.label)

    def describe(self) -> dict:
        return self._describe_decoder(batch_size=self.batch_size, batch_size_used=self.batch_size_used,
                                      order="length-sorted (tokens)", padding=self.tokenizer.padding_side,
                                      forward="hf", attention=self.model.config._attn_implementation,
                                      lm_head="full vocabulary (as FlagEmbedding)")
