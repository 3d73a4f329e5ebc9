"""The fast engine for decoder rerankers: prompts built once, shared prefixes computed once per query,
packed runs sorted by length in token-budget batches through ``bench.engine.decoder.PackedDecoder``.

Per ``score`` call, pairs are taken a few thousand at a time (whole groups of one prefix together):
the distinct prefixes of the group run first (keys and values kept), then every prompt's remaining
tokens, longest first, in batches of at most ``token_budget`` tokens (padded tokens on the SDPA path),
each reading its prefix's rows. ``prefix_reuse = false`` runs every prompt whole. The record states
the share of tokens the reuse saved (``prefix_tokens_saved``). In ``stats()``, ``tokens`` are the
prompts' tokens and ``padded_tokens`` the tokens the forward ran (padding included on the SDPA path):
with reuse the second can be the smaller, so a sweep's padding fraction reads 0 there.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from .. import lazy
from ..engine import decoder, packed
from ..engine.batching import TokenBudget
from ..engine.common import default_token_budget
from ..engine.device import matmul_precision
from ..errors import BenchError
from .common import check_pairs, check_scores
from .decoder_hf import DecoderEngineBase
from .scoring import head_vector

#: pairs whose prefixes are kept at once (bounds the prefix cache's memory)
CHUNK_PAIRS = 4096
#: fast-engine options a decoder takes; the encoder-only ones must stay at their defaults
DECODER_OPTIONS = ("attention", "forward", "token_budget", "prefix_reuse")


def check_packed_decoder(spec, config, forward: str, who: str) -> None:
    """What the packed causal decoder refuses before a model is loaded: another forward than its own,
    an architecture it does not implement."""
    if forward not in ("auto", "packed"):
        raise BenchError(f"fast engine, {who}: forward {forward!r}; the Hugging Face forward of a decoder is "
                         "engine = 'transformers'")
    reason = decoder.unsupported_reason(config)
    if reason:
        raise BenchError(f"fast engine cannot run {spec.model!r}: {reason}; use engine = 'transformers'")


def packed_decoder_attention(attention: str, device: str, half: bool, who: str) -> str:
    """The attention path the packed decoder runs (`packed.choose_attention`); the aten flash path is
    refused: the decoder's flash attention needs torch.nn.attention.varlen."""
    path = packed.choose_attention(attention, device, half)
    if path == "varlen-aten":
        raise BenchError(f"fast engine, {who}: needs torch.nn.attention.varlen for flash attention; use "
                         "attention = 'sdpa-padded'")
    return path


class FastDecoderReranker(DecoderEngineBase):
    engine = "fast"

    def __init__(self, spec, device: str = "cpu", cache_dir=None, *, config=None, attention: str = "auto",
                 forward: str = "auto", token_budget: int | None = None, prefix_reuse: bool | None = None,
                 **encoder_options):
        asked = [k for k in ("compile", "gelu_epilogue", "fused_add_norm") if encoder_options.get(k)]
        if encoder_options.get("prune_last_layer") is False:
            asked.append("prune_last_layer = false")
        if asked:
            raise BenchError(f"fast engine, decoder reranker: {', '.join(asked)} are encoder options; a decoder "
                             f"takes {', '.join(DECODER_OPTIONS)} (its last layer always runs the scored position only)")
        if spec.trust_remote_code:
            raise BenchError(f"reranker {spec.model!r}: trust_remote_code models run only through the Hugging Face "
                             "forward: set engine = 'transformers'")
        check_packed_decoder(spec, config, forward, "decoder reranker")
        super().__init__(spec, device, cache_dir, config=config)
        path = packed_decoder_attention(attention, device, self.precision.half, "decoder reranker")
        self.decoder = decoder.PackedDecoder(self.model, head_vector(self.model, self.scoring).to(device), path)
        self.prefix_reuse = spec.prefix_reuse if prefix_reuse is None else bool(prefix_reuse)
        self.budget = TokenBudget(int(token_budget or spec.token_budget or default_token_budget(device)))
        self.padded = path == "sdpa-padded"
        self.computed_tokens = 0

    def set_token_budget(self, tokens: int) -> None:
        self.budget = TokenBudget(int(tokens))

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        pairs = check_pairs(pairs)
        t0 = time.perf_counter()
        scores = np.zeros(len(pairs), dtype=np.float32)
        tokens = computed = padded = hit = hit_q = 0
        with lazy.torch.inference_mode(), matmul_precision(self.precision):
            for s in range(0, len(pairs), CHUNK_PAIRS):
                enc = self.prompts(pairs[s:s + CHUNK_PAIRS])
                hit, hit_q = hit + enc.hit_max, hit_q + enc.hit_query_max
                tokens += sum(len(x) for x in enc.seqs)
                out, c, p = self._score_chunk(enc)
                scores[s:s + len(out)] = out
                computed, padded = computed + c, padded + p
        self.computed_tokens += computed
        self._stats.add(pairs=len(pairs), tokens=tokens, padded_tokens=padded, truncated_pairs=hit,
                        truncated_queries=hit_q, seconds=time.perf_counter() - t0)
        return check_scores(scores, pairs, self.label)

    def _score_chunk(self, enc) -> tuple[np.ndarray, int, int]:
        """Scores of one chunk in input order, the tokens computed and the tokens the forward ran
        (padding included on the SDPA path)."""
        prefixes, items = decoder.split_prefixes(enc.seqs, enc.shared, self.prefix_reuse)
        cache, padded = None, 0
        if prefixes:
            cache, padded = prefix_cache(self.decoder, prefixes, self.budget, self.padded, self.device)
        out, ran = run_packed(self.decoder.score, items, cache, self.budget, self.padded, self.device)
        computed = sum(len(p) for p in prefixes) + sum(len(r) for _, r, _ in items)
        return out, computed, padded + ran

    def stats(self) -> dict:
        out = super().stats()
        out["computed_tokens"] = self.computed_tokens
        return out

    def reset_stats(self) -> None:
        super().reset_stats()
        self.computed_tokens = 0

    def describe(self) -> dict:
        """The engine's settings; what it computed is counted in ``stats()`` (``computed_tokens``
        beside ``tokens``), which a record turns into ``diagnostics.prefix_saved_share``."""
        return self._describe_decoder(**self.decoder.describe(), **self.budget.describe(),
                                      prefix_reuse={"enabled": self.prefix_reuse},
                                      order="prefix groups, runs longest first")


def prefix_cache(packed_decoder, prefixes, budget: TokenBudget, padded: bool, device: str):
    """All prefixes' keys and values, computed in token-budget batches (in order) and merged; and the
    tokens the forward ran for them."""
    caches, computed, s = [], 0, 0
    while s < len(prefixes):
        e, longest = s + 1, len(prefixes[s])
        while e < len(prefixes):
            longest_next = max(longest, len(prefixes[e]))
            cost = (e - s + 1) * longest_next if padded else sum(map(len, prefixes[s:e + 1]))
            if cost > budget.used:
                break
            e, longest = e + 1, longest_next
        batch = decoder.make_batch(prefixes[s:e], [0] * (e - s), device)
        caches.append(packed_decoder.prefix_cache(batch))
        computed += (e - s) * batch.max_len if padded else batch.ids.numel()
        s = e
    return decoder.merge_caches(caches), computed


def run_packed(forward, items, cache, budget: TokenBudget, padded: bool, device: str) -> tuple[np.ndarray, int]:
    """``forward(batch, cache or None)`` over every item ``(prefix row or -1, tokens, first position)``,
    longest first in token-budget batches (runs with a prefix and runs without one apart; an
    out-of-memory batch shrinks the budget and runs again): fp32 results in item order (``[n]`` or
    ``[n, ...]``, as ``forward`` returns them per run) and the tokens the forward ran."""
    out = None
    ran = 0
    order = sorted(range(len(items)), key=lambda i: (items[i][0] < 0, -len(items[i][1])))
    s = 0
    while s < len(order):
        e = _batch_end(order, items, s, budget.used, padded)
        idx = order[s:e]
        has_prefix = items[idx[0]][0] >= 0
        runs = [items[i][1] for i in idx]
        batch = decoder.make_batch(runs, [items[i][2] for i in idx], device,
                                   [items[i][0] for i in idx] if has_prefix else None)
        try:
            result = forward(batch, cache if has_prefix else None)
        except lazy.torch.OutOfMemoryError:
            budget.shrink(len(runs) * max(len(r) for r in runs) if padded else sum(len(r) for r in runs), len(runs))
            continue
        values = result.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(items), *values.shape[1:]), dtype=np.float32)
        out[idx] = values
        ran += len(runs) * batch.max_len if padded else batch.ids.numel()
        s = e
    return (out if out is not None else np.zeros(0, dtype=np.float32)), ran


def _batch_end(order, items, s: int, budget: int, padded: bool) -> int:
    """As many runs (same prefix kind, sorted longest first) as fit in the token budget, at least one."""
    kind = items[order[s]][0] >= 0
    longest = len(items[order[s]][1])
    total, e = 0, s
    while e < len(order) and (items[order[e]][0] >= 0) == kind:
        n = len(items[order[e]][1])
        cost = (e - s + 1) * longest if padded else total + n
        if e > s and cost > budget:
            break
        total += n
        e += 1
    return e
