"""Listwise rerankers: sliding windows over each query's candidates, each window ordered by a causal LM.

``ListwiseEngine.rerank_queries`` runs rank_llm's sliding windows (``windows``) for a block of queries:
at each step every query that still has a window contributes its next one, the engine orders that
batch of windows (``rank_windows``), and each order is applied before the query's next window is
built. The engines differ only in how a window is ordered:

* ``GenerationListwise`` (head ``listwise``, engine ``transformers``): the prompt (``prompts``) through
  ``generate``: greedy, exactly rank_llm's answer length in new tokens (``output_tokens``; vLLM's
  ``min_tokens = max_tokens``), windows of a step left-padded in batches of ``batch_size``, the new
  tokens decoded without special tokens, read and repaired (``parsing.parse_answer``);
* ``FirstReference`` (head ``first``, engine ``transformers``): one Hugging Face forward over each
  prompt (ending in ``[``) and the logits of the identifier tokens at its last position
  (``parsing.order_from_logits``): FIRST's single-token decoding, the reference;
* ``FirstFast`` (head ``first``, engine ``fast``): the same logits from the packed causal decoder
  (``bench.engine.decoder``): the windows of many queries packed together in token-budget batches,
  each query's system prompt and query prefix computed once and reused by all its windows (across
  steps and passes), the vocabulary projection at each window's last position only.

Scores: candidate at final rank r of n gets n - r (float32), so the rerank stage's run keeps the order.
Counters (``stats()``, summed into a record's ``diagnostics.counters``): ``windows``, ``repaired_windows``,
``identifiers_missing`` / ``_duplicate`` / ``_unknown``, ``empty_answers``, ``cut_windows`` (windows whose
passages were cut to fit), ``generated_tokens``; ``pairs`` are candidates reranked, ``tokens`` prompt
tokens, ``truncated_pairs`` candidates cut in at least one window.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ... import lazy, models
from ...engine import decoder
from ...engine.batching import TokenBudget
from ...engine.common import default_token_budget, load_error, usable_positions
from ...engine.device import matmul_precision, resolve_precision
from ...errors import BenchError
from ..common import EngineBase, QueryCandidates
from ..decoder_fast import check_packed_decoder, packed_decoder_attention, prefix_cache, run_packed
from ..decoder_hf import DECODER_AUTO_CUDA, left_padded
from ..scoring import _tokenizer
from .known import known_listwise
from .parsing import FIRST_TOP_LOGPROBS, Repair, order_from_logits, parse_answer
from .prompts import ListwisePrompter, WindowPrompt
from .templates import load_template
from .windows import apply_window, window_spans

#: queries whose windows run together (bounds the fast engine's prefix cache)
CHUNK_QUERIES = 64
FAMILY_COUNTERS = ("windows", "repaired_windows", "identifiers_missing", "identifiers_duplicate",
                   "identifiers_unknown", "empty_answers", "cut_windows", "generated_tokens")


@dataclass(frozen=True)
class Window:
    """One window to order: the query and its passages in their current order."""

    query: str
    passages: tuple[str, ...]


class ListwiseEngine(EngineBase):
    """Sliding windows (rank_llm's), the model and its prompts; ``rank_windows`` orders a batch of windows."""

    head = ""

    def __init__(self, spec, device: str = "cpu", cache_dir=None, *, config=None):
        super().__init__(spec, device, resolve_precision(spec.dtype, device, DECODER_AUTO_CUDA[self.engine]),
                         query_limit=False)
        self.settings = spec.listwise
        if self.settings is None:  # a saved stand-in of a listwise model, named by its folder
            raise BenchError(f"reranker {spec.label}: {spec.model!r} is a listwise model; set head = '{self.head}' "
                             "(and its listwise settings) in its [[rerankers]] entry")
        try:
            self.template = load_template(self.settings.prompt_template)
        except ValueError as exc:
            raise BenchError(f"reranker {spec.label}: listwise.{exc}") from None
        self.source = models.resolve(spec.model, cache_dir)
        try:
            self.tokenizer = _tokenizer(self.source, spec.revision, False)
        except (OSError, ValueError) as exc:
            raise load_error("reranker tokenizer", spec, exc) from None
        self.prompts = ListwisePrompter(self.tokenizer, self.template, context_size=self.settings.context_size,
                                        max_passage_words=self.settings.max_passage_words,
                                        variable_passages=self.settings.variable_passages, first=self.head == "first")
        self._check_fits(config)
        self.model = self._load_model()
        self.counters: Counter = Counter()
        self._run = Counter()  # tokens and padded tokens of the current rerank_queries call

    # -- loading ---------------------------------------------------------------------------------
    def _check_fits(self, config) -> None:
        """A window must fit the context with empty passages, and the context the model's positions."""
        s = self.settings
        window = s.window
        fixed, answer = self.prompts.fixed_tokens(window), self.prompts.output_tokens(window)
        if fixed + answer > s.context_size:
            raise BenchError(f"reranker {self.label}: listwise.window = {window} does not fit listwise.context_size = "
                             f"{s.context_size}: {window} empty passages take {fixed} prompt tokens and the answer "
                             f"{answer}; lower window or raise context_size")
        limit = usable_positions(config)
        if limit and s.context_size + self.answer_tokens(window) > limit:
            raise BenchError(f"reranker {self.label}: listwise.context_size = {s.context_size} plus the answer's "
                             f"{self.answer_tokens(window)} tokens exceeds the model's {limit} positions; lower it")

    def _load_model(self):
        try:
            model = lazy.transformers.AutoModelForCausalLM.from_pretrained(
                self.source, revision=self.spec.revision, dtype=self.precision.torch_dtype)
        except (OSError, ValueError) as exc:
            raise load_error("reranker model", self.spec, exc) from None
        return model.to(self.device).eval()

    def answer_tokens(self, n: int) -> int:
        """Tokens generated for a window of ``n`` (FIRST: one position read)."""
        return 1 if self.head == "first" else min(self.prompts.output_tokens(n), self.settings.max_new_tokens or 1 << 30)

    # -- the sliding windows -----------------------------------------------------------------------
    def rerank_queries(self, queries: Sequence[QueryCandidates]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        out: list[np.ndarray] = []
        self._run.clear()
        with lazy.torch.inference_mode(), matmul_precision(self.precision):
            for s in range(0, len(queries), CHUNK_QUERIES):
                out += self._rerank_chunk(list(queries[s:s + CHUNK_QUERIES]))
        self._stats.add(pairs=sum(len(q.passages) for q in queries), tokens=self._run["tokens"],
                        padded_tokens=self._run["padded"], truncated_pairs=self._run["cut"],
                        seconds=time.perf_counter() - t0)
        return out

    def _rerank_chunk(self, queries: list[QueryCandidates]) -> list[np.ndarray]:
        s = self.settings
        orders = [list(range(len(q.passages))) for q in queries]
        cut: list[set] = [set() for _ in queries]
        self.start_queries()
        for _ in range(s.passes):
            spans = [window_spans(len(o), s.window, s.stride) for o in orders]
            for step in range(max((len(x) for x in spans), default=0)):
                todo = [qi for qi in range(len(queries)) if step < len(spans[qi])]
                windows = [Window(queries[qi].query, tuple(queries[qi].passages[d] for d in
                                                           orders[qi][spans[qi][step][0]:spans[qi][step][1]]))
                           for qi in todo]
                prompts = [self.prompts.build(w.query, w.passages) for w in windows]
                repairs = self.rank_windows(windows, prompts)
                for qi, prompt, repair in zip(todo, prompts, repairs):
                    start, end = spans[qi][step]
                    cut[qi].update(orders[qi][start + i] for i in prompt.cut)
                    apply_window(orders[qi], start, end, repair.permutation)
                    self._count(prompt, repair)
        self.prompts.forget_queries()
        self._run["cut"] += sum(len(c) for c in cut)
        scores = []
        for order in orders:
            s_ = np.zeros(len(order), dtype=np.float32)
            s_[order] = np.arange(len(order), 0, -1, dtype=np.float32)
            scores.append(s_)
        return scores

    def _count(self, prompt: WindowPrompt, repair: Repair) -> None:
        c = self.counters
        c["windows"] += 1
        c["repaired_windows"] += repair.repaired
        c["identifiers_missing"] += repair.missing
        c["identifiers_duplicate"] += repair.duplicate
        c["identifiers_unknown"] += repair.unknown
        c["empty_answers"] += repair.empty
        c["cut_windows"] += bool(prompt.cut)

    # -- what each engine provides -------------------------------------------------------------------
    def start_queries(self) -> None:
        """Called before a chunk of queries' windows (the fast engine starts its prefix cache)."""

    def rank_windows(self, windows: list[Window], prompts: list[WindowPrompt]) -> list[Repair]:
        raise NotImplementedError

    @property
    def pad_id(self) -> int:
        """Left padding of the Hugging Face forwards: the tokenizer's pad token, else its end of sequence."""
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    # -- counters and record ------------------------------------------------------------------------
    def stats(self) -> dict:
        return {**super().stats(), **{k: int(self.counters[k]) for k in FAMILY_COUNTERS}}

    def reset_stats(self) -> None:
        super().reset_stats()
        self.counters.clear()

    def describe(self) -> dict:
        s = self.settings
        key, known = known_listwise(self.spec.model, (getattr(self.model.config, "rerank_bench", None) or {})
                                    .get("known_as"))
        scoring = {"head": self.head, "family": self.head, **s.model_dump(mode="json"),
                   "identifiers": f"{self.template.identifiers(1)[0]}..{self.template.identifiers(s.window)[-1]}",
                   "template_source": self.template.source, "chat_template": "the model tokenizer's",
                   "known_as": key, "settings_source": known.source if known else "experiment fields"}
        out = self._describe(scoring=scoring, listwise=s.model_dump(mode="json"), template=s.prompt_template,
                             truncation="rank_llm's: every passage cut to fewer words (from max_passage_words) "
                                        "until the prompt fits context_size minus the answer's tokens",
                             windows="rank_llm's sliding windows: bottom up, window and stride in passages")
        out["max_length"] = s.context_size
        return out


class GenerationListwise(ListwiseEngine):
    """Generated rankings, as rank_llm's vLLM path asks for them: greedy, exactly the answer's length."""

    engine = "transformers"
    head = "listwise"

    def __init__(self, spec, device: str = "cpu", cache_dir=None, *, config=None):
        super().__init__(spec, device, cache_dir, config=config)
        self.batch_size = spec.batch_size

    def rank_windows(self, windows, prompts):
        repairs: list[Repair | None] = [None] * len(windows)
        groups: dict[int, list[int]] = {}
        for i, w in enumerate(windows):  # one generation length per batch
            groups.setdefault(self.answer_tokens(len(w.passages)), []).append(i)
        for new_tokens, idx in groups.items():
            for s in range(0, len(idx), self.batch_size):
                part = idx[s:s + self.batch_size]
                texts = self._generate([prompts[i].ids for i in part], new_tokens)
                for i, text in zip(part, texts):
                    repairs[i] = parse_answer(text, len(windows[i].passages), self.template.alpha)
        return repairs

    def _generate(self, seqs: list[list[int]], new_tokens: int) -> list[str]:
        """Greedy continuations of exactly ``new_tokens`` tokens (end of sequence suppressed before, as
        vLLM's ``min_tokens``), decoded without special tokens."""
        ids, mask = left_padded(seqs, self.pad_id)
        config = lazy.transformers.GenerationConfig(
            do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=self.pad_id,
            eos_token_id=self.tokenizer.eos_token_id, temperature=None, top_p=None, top_k=None)
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                  generation_config=config)
        new = out[:, ids.shape[1]:]
        self._run.update(tokens=sum(len(x) for x in seqs), padded=ids.numel())
        self.counters["generated_tokens"] += int(new.numel())
        return self.tokenizer.batch_decode(new.tolist(), skip_special_tokens=True)

    def describe(self) -> dict:
        out = super().describe()
        out.update(batch_size=self.batch_size, order="windows of a step, in query order", padding="left",
                   forward="hf generate (greedy)", generation=f"greedy, min_new_tokens = max_new_tokens = the "
                   "answer's tokens (rank_llm's num_output_tokens)" + (
                       f", capped at max_new_tokens = {self.settings.max_new_tokens}"
                       if self.settings.max_new_tokens else ""))
        return out


class FirstEngine(ListwiseEngine):
    """FIRST: the order from the identifier tokens' logits at the first generated position."""

    head = "first"

    def __init__(self, spec, device: str = "cpu", cache_dir=None, *, config=None):
        super().__init__(spec, device, cache_dir, config=config)
        if not self.template.alpha:
            raise BenchError(f"reranker {self.label}: head = 'first' reads single-token identifiers A..T; "
                             f"listwise.prompt_template = {self.settings.prompt_template!r} numbers them: use "
                             "'rank_zephyr_alpha' (as rank_llm's FIRST runs, --use_alpha)")
        self.identifier_ids = self._identifier_ids()
        self.id_index = lazy.torch.tensor(self.identifier_ids, device=device)

    def _identifier_ids(self) -> list[int]:
        """Each identifier's token id where FIRST reads it: after the prompt's final ``[`` (one token each)."""
        text = self.prompts.text("q", ["a"] * self.settings.window, 1)
        base = self.prompts.encode(text)
        ids = []
        for ident in self.template.identifiers(self.settings.window):
            seq = self.tokenizer(text + "[" + ident)["input_ids"]
            if seq[:len(base)] != base or len(seq) != len(base) + 1:
                raise BenchError(f"reranker {self.label}: the identifier {ident!r} after '[' is not one token of its "
                                 f"own in the model's tokenizer ({self.tokenizer.convert_ids_to_tokens(seq[len(base) - 1:])}"
                                 "); FIRST reads one token per identifier: use a model whose tokenizer keeps them whole")
            ids.append(int(seq[-1]))
        return ids

    def rank_windows(self, windows, prompts):
        logits = self.window_logits(prompts)
        return [order_from_logits(row[:-1], row[-1], len(w.passages)) for w, row in zip(windows, logits)]

    def _head(self, logits):
        """Identifier logits and the top-``FIRST_TOP_LOGPROBS`` threshold from full-vocabulary logits ``[n, V]``."""
        logits = logits.float()
        kth = lazy.torch.topk(logits, FIRST_TOP_LOGPROBS, dim=-1).values[:, -1:]
        return lazy.torch.cat([logits.index_select(1, self.id_index), kth], 1)

    def window_logits(self, prompts: list[WindowPrompt]) -> np.ndarray:
        """fp32 ``[windows, identifiers + 1]``: each window's identifier logits (A, B, ...) at its last
        position, and the top-``FIRST_TOP_LOGPROBS`` threshold in the last column."""
        with lazy.torch.inference_mode(), matmul_precision(self.precision):
            return self._window_logits(prompts)

    def _window_logits(self, prompts: list[WindowPrompt]) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict:
        out = super().describe()
        out["scoring"].update(identifier_ids=self.identifier_ids, top_logprobs=FIRST_TOP_LOGPROBS,
                              source="rank_llm RankListwiseOSLLM (use_logits, use_alpha) before commit 94d8c51: "
                                     "prompt + '[', one token, identifiers among the top 30 log-probabilities by "
                                     "logit, the others appended")
        return out


class FirstReference(FirstEngine):
    """FIRST through Hugging Face's own forward: left padding, batches of ``batch_size`` windows."""

    engine = "transformers"

    def __init__(self, spec, device: str = "cpu", cache_dir=None, *, config=None):
        super().__init__(spec, device, cache_dir, config=config)
        self.batch_size = spec.batch_size

    def _window_logits(self, prompts):
        out = []
        for s in range(0, len(prompts), self.batch_size):
            seqs = [p.ids for p in prompts[s:s + self.batch_size]]
            ids, mask = left_padded(seqs, self.pad_id)
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                logits_to_keep=1).logits[:, -1, :]  # the last position's, as vLLM computes them
            out.append(self._head(logits).cpu().numpy())
            self._run.update(tokens=sum(len(x) for x in seqs), padded=ids.numel())
        return np.concatenate(out) if out else np.zeros((0, len(self.identifier_ids) + 1), dtype=np.float32)

    def describe(self) -> dict:
        out = super().describe()
        out.update(batch_size=self.batch_size, order="windows of a step, in query order", padding="left",
                   forward="hf", lm_head="full vocabulary (as vLLM computes the log-probabilities)")
        return out


class FirstFast(FirstEngine):
    """FIRST on the packed causal decoder, windows of many queries packed, each query's prefix computed once."""

    engine = "fast"

    def __init__(self, spec, device: str = "cpu", cache_dir=None, *, config=None, attention: str = "auto",
                 token_budget: int | None = None, prefix_reuse: bool | None = None, forward: str = "auto",
                 **encoder_options):
        asked = sorted(k for k, v in encoder_options.items() if v is not None)
        if asked:
            raise BenchError(f"fast engine, FIRST: {', '.join(asked)} are encoder options; FIRST takes attention, "
                             "token_budget, prefix_reuse")
        check_packed_decoder(spec, config, forward, "FIRST")
        super().__init__(spec, device, cache_dir, config=config)
        path = packed_decoder_attention(attention, device, self.precision.half, "FIRST")
        self.decoder = decoder.PackedDecoder(self.model, None, path)
        self.lm_head = self.model.get_output_embeddings()
        self.padded = path == "sdpa-padded"
        self.prefix_reuse = spec.prefix_reuse if prefix_reuse is None else bool(prefix_reuse)
        self.budget = TokenBudget(int(token_budget or spec.token_budget or default_token_budget(device)))
        self.prompt_tokens = self.computed_tokens = 0  # prefix reuse's account, over every window ordered
        self._cache = None
        self._rows: dict[tuple, int] = {}

    def start_queries(self) -> None:
        self._cache, self._rows = None, {}

    def _forward(self, batch, cache):
        return self._head(self.lm_head(self.decoder.last_hidden(batch, cache)))

    def _window_logits(self, prompts):
        new = []
        items = []
        for p in prompts:
            n = p.shared if self.prefix_reuse else 0
            if n <= 0:
                items.append((-1, p.ids, 0))
                continue
            key = tuple(p.ids[:n])
            if key not in self._rows:
                self._rows[key] = len(self._rows)
                new.append(list(key))
            items.append((self._rows[key], p.ids[n:], n))
        ran = 0
        if new:
            cache, ran = prefix_cache(self.decoder, new, self.budget, self.padded, self.device)
            self._cache = cache if self._cache is None else decoder.merge_caches([self._cache, cache])
        out, ran_runs = run_packed(self._forward, items, self._cache, self.budget, self.padded, self.device)
        self.computed_tokens += sum(map(len, new)) + sum(len(r) for _, r, _ in items)
        self.prompt_tokens += sum(len(p.ids) for p in prompts)
        self._run.update(tokens=sum(len(p.ids) for p in prompts), padded=ran + ran_runs)
        return out

    def stats(self) -> dict:
        return {**super().stats(), "computed_tokens": self.computed_tokens}

    def reset_stats(self) -> None:
        super().reset_stats()
        self.prompt_tokens = self.computed_tokens = 0

    def describe(self) -> dict:
        tokens, computed = self.prompt_tokens, self.computed_tokens
        saved = round(1 - computed / tokens, 4) if tokens and self.prefix_reuse else 0.0
        out = super().describe()
        out.update(**self.decoder.describe(), **self.budget.describe(),
                   prefix_reuse={"enabled": self.prefix_reuse, "tokens": tokens, "computed_tokens": computed,
                                 "prefix_tokens_saved": saved},
                   order="windows of a step packed, prefix groups, runs longest first")
        out["lm_head"] = "full vocabulary at each window's last position (the top-30 threshold needs it)"
        return out
