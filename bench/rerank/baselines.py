"""Faithful baselines: the ways users score pairs today, behind the same interface as the fast engine.

Each reproduces what its library does by default, so every comparison runs in one process on the
same pairs. Where a baseline's own default precision or batch size differs from the spec's
defaults, the baseline's default applies unless the spec sets the field explicitly; ``describe()``
records what ran.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from .. import lazy, models
from ..engine.common import check_max_length, load_error
from ..engine.device import AUTO_CUDA, matmul_precision, resolve_precision
from ..engine.tokens import learn_template
from .common import EngineBase, check_pairs, check_scores, load_cross_encoder


def _explicit(spec, field: str) -> bool:
    return field in spec.model_fields_set


def score_longest_first(forward, items: list, order, batch_size: int) -> tuple[np.ndarray, int, int]:
    """FlagEmbedding's scoring loop: items in `order` (longest first), the batch size found by
    `flag_probe`, one `forward(batch) -> (scores, padded positions)` per batch. Returns the float32
    scores in the items' own order, the positions computed, and the batch size used."""
    ordered = [items[i] for i in order]
    bs = flag_probe(forward, ordered, batch_size)
    scores, padded = [], 0
    for s in range(0, len(ordered), bs):
        out, size = forward(ordered[s:s + bs])
        scores.extend(out.cpu().numpy().tolist())
        padded += size
    result = np.empty(len(ordered), dtype=np.float32)
    result[order] = scores
    return result, padded, bs


def flag_probe(forward, items, batch_size: int) -> int:
    """FlagEmbedding's probe: the first (longest) batch runs once, shrinking by 3/4 on out-of-memory
    until it fits; the batch size that fit."""
    torch = lazy.torch
    while items:
        try:
            forward(items[:batch_size])
            break
        except torch.OutOfMemoryError:
            if batch_size <= 1:
                raise
            batch_size = batch_size * 3 // 4
    return batch_size


class TransformersReranker(EngineBase):
    """The plain loop: ``AutoModelForSequenceClassification``, pairs in input order, batches of
    ``batch_size`` tokenized with ``tokenizer(q, p, padding=True, truncation=True, max_length)``
    (pad to the longest in the batch, longest-first truncation), scores copied back per batch.
    ``dtype = "auto"`` means fp32, the library default."""

    engine = "transformers"

    def __init__(self, spec, device: str = "cpu", cache_dir=None):
        super().__init__(spec, device, resolve_precision(spec.dtype, device, AUTO_CUDA[self.engine]), query_limit=False)
        self.source = models.resolve(spec.model, cache_dir)
        self.tokenizer, self.model = load_cross_encoder(spec, device, self.precision, cache_dir)
        self.batch_size = spec.batch_size

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        pairs = check_pairs(pairs)
        t0 = time.perf_counter()
        out, tokens, padded, hit = [], 0, 0, 0
        with lazy.torch.inference_mode(), matmul_precision(self.precision):
            for s in range(0, len(pairs), self.batch_size):
                chunk = pairs[s:s + self.batch_size]
                enc = self.tokenizer([q for q, _ in chunk], [p for _, p in chunk], padding=True, truncation=True,
                                     max_length=self.spec.max_length, return_tensors="pt")
                lengths = enc["attention_mask"].sum(1)
                tokens += int(lengths.sum())
                padded += enc["attention_mask"].numel()
                hit += int((lengths >= self.spec.max_length).sum())
                logits = self.model(**enc.to(self.device)).logits
                out.append(logits.view(-1).float().cpu().numpy())
        scores = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
        self._stats.add(pairs=len(pairs), tokens=tokens, padded_tokens=padded, truncated_pairs=hit,
                        seconds=time.perf_counter() - t0)
        return check_scores(scores, pairs, self.label)

    def describe(self) -> dict:
        return self._describe(batch_size=self.batch_size, query_max_length=None, order="input",
                              truncation="longest_first", attention=self.model.config._attn_implementation)


class CrossEncoderReranker(EngineBase):
    """sentence-transformers ``CrossEncoder(model).predict(pairs, batch_size, activation_fn=Identity)``:
    its own length sorting (by characters) and padding; raw logits. ``dtype = "auto"`` = fp32.

    Token counts are not visible inside ``predict``: ``stats()`` recounts them from the scored pairs
    (outside the timed call) by re-tokenizing and replaying the library's batching."""

    engine = "sentence-transformers"

    def __init__(self, spec, device: str = "cpu", cache_dir=None):
        super().__init__(spec, device, resolve_precision(spec.dtype, device, AUTO_CUDA[self.engine]), query_limit=False)
        self.source = models.resolve(spec.model, cache_dir)
        try:
            self.model = lazy.sentence_transformers.CrossEncoder(
                self.source, device=device, revision=spec.revision, max_length=spec.max_length,
                model_kwargs={"dtype": self.precision.torch_dtype})
        except (OSError, ValueError) as exc:
            raise load_error("reranker model", spec, exc) from None
        check_max_length(self.model.config, spec.max_length, f"reranker {spec.label}")
        self.batch_size = spec.batch_size
        self._uncounted: list[list[tuple[str, str]]] = []

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        pairs = check_pairs(pairs)
        t0 = time.perf_counter()
        scores = cross_encoder_logits(self.model, pairs, self.batch_size, self.precision)
        self._stats.add(pairs=len(pairs), seconds=time.perf_counter() - t0)
        self._uncounted.append(pairs)
        return check_scores(scores, pairs, self.label)

    def stats(self) -> dict:
        for pairs in self._uncounted:
            self._count(pairs)
        self._uncounted = []
        return self._stats.as_dict()

    def reset_stats(self) -> None:
        self._uncounted = []
        super().reset_stats()

    def _count(self, pairs) -> None:
        """Replay predict's batching: sorted by characters (longest first), ``batch_size`` per batch,
        each padded to its longest tokenized pair (no padding when the model runs flattened)."""
        if not pairs:
            return
        tok = self.model.tokenizer
        enc = tok([q for q, _ in pairs], [p for _, p in pairs], truncation=True, max_length=self.spec.max_length,
                  return_attention_mask=False, return_token_type_ids=False)
        lengths = np.array([len(x) for x in enc["input_ids"]])
        order = np.argsort([-(len(q) + len(p)) for q, p in pairs])
        if self.model._can_flatten_inputs():
            padded = int(lengths.sum())
        else:
            padded = sum(int(lengths[order[s:s + self.batch_size]].max()) * len(order[s:s + self.batch_size])
                         for s in range(0, len(order), self.batch_size))
        self._stats.tokens += int(lengths.sum())
        self._stats.padded_tokens += padded
        self._stats.truncated_pairs += int((lengths >= self.spec.max_length).sum())

    def describe(self) -> dict:
        return self._describe(batch_size=self.batch_size, query_max_length=None, order="length-sorted (characters)",
                              truncation="longest_first",
                              attention=self.model.config._attn_implementation,
                              stats_tokens="recounted after scoring, outside the timed call")


class FlagStyleReranker(EngineBase):
    """FlagEmbedding's ``FlagReranker(model, use_fp16=True).compute_score(pairs)``, re-implemented.

    As FlagEmbedding does: fp16 on CUDA (fp32 on the CPU, where it turns fp16 off); batch 128;
    queries cut to ``query_max_length`` (default ``max_length * 3 // 4``) and passages to
    ``max_length`` without special tokens, then each pair assembled and cut ``only_second`` to
    ``max_length``; sorted longest first by tokens; a probe forward of the first batch that shrinks
    the batch by 3/4 on out-of-memory; ``tokenizer.pad`` per batch; scores back per batch, restored
    to input order. One deliberate difference: FlagEmbedding also shrinks on any ``RuntimeError``;
    here only out-of-memory does, so real errors are not hidden."""

    engine = "flag"

    def __init__(self, spec, device: str = "cpu", cache_dir=None):
        super().__init__(spec, device, resolve_precision(spec.dtype, device, AUTO_CUDA[self.engine]), query_limit=True)
        self.source = models.resolve(spec.model, cache_dir)
        self.tokenizer, self.model = load_cross_encoder(spec, device, self.precision, cache_dir)
        self.template = learn_template(self.tokenizer, 2)
        self.batch_size = spec.batch_size if _explicit(spec, "batch_size") else 128
        self.query_max_length = spec.query_max_length or spec.max_length * 3 // 4
        self.batch_size_used = self.batch_size

    def _items(self, pairs) -> tuple[list[dict], int, int]:
        tok, L = self.tokenizer, self.spec.max_length
        items, hit, hit_q = [], 0, 0
        for s in range(0, len(pairs), self.batch_size):
            chunk = pairs[s:s + self.batch_size]
            q_ids = tok([q for q, _ in chunk], add_special_tokens=False, max_length=self.query_max_length,
                        truncation=True)["input_ids"]
            p_ids = tok([p for _, p in chunk], add_special_tokens=False, max_length=L, truncation=True)["input_ids"]
            for q, p in zip(q_ids, p_ids):
                hit_q += len(q) >= self.query_max_length
                keep = max(0, L - self.template.n_special - len(q))
                hit += len(p) >= keep
                ids, types = self.template.assemble((q, p[:keep]))
                item = {"input_ids": ids}
                if types is not None:
                    item["token_type_ids"] = types
                items.append(item)
        return items, hit, hit_q

    def _forward(self, batch):
        inputs = self.tokenizer.pad(batch, padding=True, return_tensors="pt").to(self.device)
        return self.model(**inputs, return_dict=True).logits.view(-1).float(), inputs["attention_mask"].numel()

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        torch = lazy.torch
        pairs = check_pairs(pairs)
        t0 = time.perf_counter()
        if not pairs:
            self._stats.add(seconds=time.perf_counter() - t0)
            return np.zeros(0, dtype=np.float32)
        with torch.inference_mode(), matmul_precision(self.precision):
            items, hit, hit_q = self._items(pairs)
            order = np.argsort([-len(x["input_ids"]) for x in items])
            out, padded, self.batch_size_used = score_longest_first(self._forward, items, order, self.batch_size)
        self._stats.add(pairs=len(pairs), tokens=sum(len(x["input_ids"]) for x in items), padded_tokens=padded,
                        truncated_pairs=hit, truncated_queries=hit_q, seconds=time.perf_counter() - t0)
        return check_scores(out, pairs, self.label)

    def describe(self) -> dict:
        return self._describe(batch_size=self.batch_size, batch_size_used=self.batch_size_used,
                              query_max_length=self.query_max_length, order="length-sorted (tokens)",
                              truncation="query to query_max_length, then only_second",
                              attention=self.model.config._attn_implementation)


def cross_encoder_logits(model, pairs, batch_size: int, precision) -> np.ndarray:
    """sentence-transformers' `CrossEncoder.predict` as users call it, with the raw logits (no
    activation), under the precision's matmul setting; an empty list gives no scores."""
    if not pairs:
        return np.zeros(0, dtype=np.float32)
    with matmul_precision(precision):
        return model.predict(pairs, batch_size=batch_size, activation_fn=lazy.torch.nn.Identity(),
                             show_progress_bar=False, convert_to_numpy=True)
