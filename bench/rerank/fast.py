"""The project's fast engine: tokenize once, sort by length, token-budget batches, padding-free forward.

For the BERT family (bge-reranker-base/large/v2-m3 and other BERT/RoBERTa/XLM-R cross-encoders)
the forward is ``bench.engine.packed.PackedEncoder``: sequences packed end to end, variable-length
attention on CUDA in fp16/bf16, padded SDPA per layer elsewhere. Other architectures run the Hugging
Face forward (SDPA) over padded, length-sorted, token-budget batches; ``describe()["forward"]`` says
which ran. Tokenization runs in a background thread while the device computes; the token budget
halves on out-of-memory and the value that fit is kept and recorded.

Variants the throughput sweep compares are keywords: ``attention`` ("auto", "varlen",
"sdpa-padded"), ``forward`` ("auto", "packed", "hf"), ``compile`` (torch.compile of the layer
function; off: slower on an H100), ``prune_last_layer`` (on: the last layer computed for the first
tokens only, which the head reads), ``gelu_epilogue`` and ``fused_add_norm`` (off; see
``bench.engine.packed``), ``token_budget`` (overrides the spec), ``largest_chunk``.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from .. import lazy, models
from ..engine import packed
from ..engine.batching import TokenBudget
from ..engine.common import default_token_budget
from ..engine.device import AUTO_CUDA, matmul_precision, resolve_precision
from ..engine.loop import BatchLoop
from ..engine.tokens import PairTokenizer
from ..errors import BenchError
from .common import EngineBase, check_pairs, check_scores, load_cross_encoder


class FastReranker(EngineBase):
    engine = "fast"

    def __init__(self, spec, device: str = "cpu", cache_dir=None, *, attention: str = "auto",
                 forward: str = "auto", compile: bool = False, prune_last_layer: bool = True,
                 gelu_epilogue: bool = False, fused_add_norm: bool = False, token_budget: int | None = None,
                 first_chunk: int = 512, largest_chunk: int = 16384):
        super().__init__(spec, device, resolve_precision(spec.dtype, device, AUTO_CUDA[self.engine]), query_limit=True)
        if forward not in ("auto", "packed", "hf"):
            raise BenchError(f"forward {forward!r}: use auto, packed or hf")
        path = packed.choose_attention(attention, device, self.precision.half)  # checked before loading
        self.source = models.resolve(spec.model, cache_dir)
        self.tokenizer, self.model = load_cross_encoder(spec, device, self.precision, cache_dir)
        self.pair_tokenizer = PairTokenizer(self.tokenizer, spec.max_length, spec.query_max_length)
        reason = packed.unsupported_reason(self.model.config) or packed.head_supported(self.model)
        if forward == "packed" and reason:
            raise BenchError(f"forward 'packed' cannot run {spec.model!r}: {reason}; use forward 'auto' or 'hf'")
        self.forward_kind = "packed" if forward in ("auto", "packed") and not reason else "hf"
        self.fallback_reason = reason if forward == "auto" else None
        self.compile = compile
        self.prune_last_layer = prune_last_layer
        if self.forward_kind == "packed":
            self.encoder = packed.PackedEncoder(self.model.base_model, path, compile=compile,
                                                gelu_epilogue=gelu_epilogue, fused_add_norm=fused_add_norm)
            self._forward = self._forward_packed
            position_offset, padded = self.encoder.position_offset, False
        else:
            if attention not in ("auto", "sdpa-padded"):
                raise BenchError(f"attention {attention!r} needs the packed forward; this model runs the "
                                 "Hugging Face forward (attention 'auto')")
            asked = [k for k, v in (("compile", compile), ("gelu_epilogue", gelu_epilogue),
                                    ("fused_add_norm", fused_add_norm)) if v]
            if asked:
                raise BenchError(f"{', '.join(asked)}: implemented for the packed forward only, which this model "
                                 "does not run")
            self.encoder = None
            self._forward = self._forward_hf
            position_offset, padded = 0, True
        self.max_pairs = spec.batch_size if "batch_size" in spec.model_fields_set else None
        self.loop = BatchLoop(device, None, padded=padded, pad_id=self.tokenizer.pad_token_id or 0,
                              position_offset=position_offset, max_items=self.max_pairs,
                              first_chunk=first_chunk, largest_chunk=largest_chunk)
        self.set_token_budget(token_budget or spec.token_budget or default_token_budget(device))

    def set_token_budget(self, tokens: int) -> None:
        """Start the budget search over from ``tokens`` (a sweep can reuse one loaded model)."""
        self.budget = TokenBudget(int(tokens))
        self.loop.budget = self.budget

    def _forward_packed(self, batch):
        if self.prune_last_layer:
            first = self.encoder(batch, first_only=True)
        else:
            first = packed.first_tokens(self.encoder(batch), batch)
        return packed.classify(self.model, first).view(-1)

    def _forward_hf(self, batch):
        return self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          token_type_ids=batch.token_type_ids).logits.view(-1)

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        pairs = check_pairs(pairs)
        t0 = time.perf_counter()
        with lazy.torch.inference_mode(), matmul_precision(self.precision):
            scores, counts = self.loop.run(pairs, self.pair_tokenizer, self._forward)
        if scores is None:
            scores = np.zeros(0, dtype=np.float32)
        self._stats.add(pairs=counts.items, tokens=counts.tokens, padded_tokens=counts.padded_tokens,
                        truncated_pairs=counts.hit_max, truncated_queries=counts.hit_query_max,
                        seconds=time.perf_counter() - t0)
        return check_scores(scores, pairs, self.label)

    def describe(self) -> dict:
        out = self._describe(query_max_length=self.pair_tokenizer.query_limit,
                             query_max_length_requested=self.spec.query_max_length,
                             truncation="query to query_max_length, then only_second",
                             forward=self.forward_kind, compile=self.compile,
                             max_pairs_per_batch=self.max_pairs, **self.budget.describe(),
                             tokenization="background thread" if self.loop.prefetch_depth else "inline")
        if self.encoder is not None:
            out.update(self.encoder.describe(), prune_last_layer=self.prune_last_layer)
        else:
            out["attention"] = f"hf-{self.model.config._attn_implementation}-padded"
            if self.fallback_reason:
                out["packed_unsupported"] = self.fallback_reason
        return out
