"""monoT5 (pointwise): each (query, passage) pair scored on its own, log p(true) (``bench.rerank.seq2seq.t5``).

Two engines, one prompt builder (``templates.Seq2SeqPrompts``), so they score the same ids:
``transformers`` (the authors' formulation, the reference) and ``fast`` (length-sorted token-budget
batches, the decoder step folded). ``T5EngineBase`` is what duoT5's engines share too.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ...engine.common import default_token_budget
from ...engine.device import AUTO_CUDA, matmul_precision, resolve_precision
from ...errors import BenchError
from ... import lazy
from ..common import EngineBase, check_pairs, check_scores
from .t5 import FastT5, ReferenceT5, load_t5

#: ``dtype = "auto"`` on CUDA: bf16 for the fast engine (T5 was trained in bf16; its activations
#: overflow fp16), the reference as its users run it (fp32).
SEQ2SEQ_AUTO_CUDA = {**AUTO_CUDA, "fast": "bf16"}
SCORE = "log p(true): log_softmax over the (false, true) logits at the first decoder step"


class T5EngineBase(EngineBase):
    """The loaded T5, its scorer (reference or fast) and what the record says; ``head`` is the family."""

    head = ""

    def __init__(self, spec, device: str = "cpu", cache_dir=None, *, config=None, token_budget: int | None = None,
                 **options):
        unknown = sorted(k for k, v in options.items() if v is not None)
        if unknown:
            raise BenchError(f"{self.engine} engine, {self.head} reranker: option(s) {unknown} do not apply; "
                             "a T5 reranker takes token_budget (fast engine) only")
        super().__init__(spec, device, resolve_precision(spec.dtype, device, SEQ2SEQ_AUTO_CUDA[self.engine]),
                         query_limit=True)
        self.t5 = load_t5(spec, self.head, device, self.precision, cache_dir, config=config)
        self.source = self.t5.source
        if self.engine == "fast":
            self.scorer = FastT5(self.t5, device, token_budget or spec.token_budget or default_token_budget(device))
        else:
            if token_budget is not None:
                raise BenchError("token_budget: only the fast engine takes it")
            self.scorer = ReferenceT5(self.t5, device, spec.batch_size)

    def set_token_budget(self, tokens: int) -> None:
        if self.engine == "fast":
            self.scorer.token_budget = int(tokens)

    def score_ids(self, seqs: list[list[int]]) -> tuple[np.ndarray, int]:
        """log p(true) per input and the padded tokens computed, under the engine's precision."""
        with lazy.torch.inference_mode(), matmul_precision(self.precision):
            return self.scorer(seqs)

    def scoring(self, **fields) -> dict:
        t5 = self.t5
        return {"head": self.head, "family": self.head, "template": t5.prompts.template, "true": t5.true,
                "false": t5.false, "true_id": t5.true_id, "false_id": t5.false_id, "score": SCORE,
                "source": t5.authors, **({"known_as": t5.known_as} if t5.known_as else {}), **fields}

    def _describe_t5(self, **fields) -> dict:
        return self._describe(scoring=self.scoring(**fields), truncation=self.t5.prompts.truncation,
                              **self.scorer.describe())


class MonoT5Reranker(T5EngineBase):
    """monoT5: ``score(pairs)`` -> log p(true) per pair."""

    head = "monot5"

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        pairs = check_pairs(pairs)
        t0 = time.perf_counter()
        enc = self.t5.prompts.mono(pairs)
        scores, padded = self.score_ids(enc.seqs)
        self._stats.add(pairs=len(pairs), tokens=sum(map(len, enc.seqs)), padded_tokens=padded,
                        truncated_pairs=enc.hit_max, truncated_queries=enc.hit_query_max,
                        seconds=time.perf_counter() - t0)
        return check_scores(scores, pairs, self.label)

    def describe(self) -> dict:
        return self._describe_t5()


class MonoT5Transformers(MonoT5Reranker):
    engine = "transformers"


class MonoT5Fast(MonoT5Reranker):
    engine = "fast"
