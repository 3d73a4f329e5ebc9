"""What every reranker engine shares: the interface, counters, input and output checks, loading a
cross-encoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from .. import lazy, models
from ..engine.common import check_max_length, load_error
from ..errors import BenchError


@runtime_checkable
class Reranker(Protocol):
    """What every engine offers."""

    label: str

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """float32 logits, one per (query, passage) pair, in input order."""

    def describe(self) -> dict:
        """Engine, model, resolved dtype and device, batching actually used, attention path, lengths."""

    def stats(self) -> dict:
        """Counters since construction or ``reset_stats``: pairs, tokens, padded_tokens,
        truncated_pairs, truncated_queries, seconds."""

    def reset_stats(self) -> None: ...


@dataclass(frozen=True)
class QueryCandidates:
    """One query and the candidates a query-level reranker orders, in the order they arrive (the
    first stage's, or the reranker's this one reranks)."""

    query: str
    doc_ids: tuple[str, ...]
    passages: tuple[str, ...]


@runtime_checkable
class QueryReranker(Protocol):
    """What a family that sees a query's candidates together offers (pairwise: duoT5 compares them
    two by two; listwise: an LLM orders windows of them), beside the pointwise ``score(pairs)``.

    The rerank stage hands it whole queries (its blocks never split one) and writes the scores it
    returns, so such a reranker is checkpointed, cached, recorded and compared like any other.
    ``stats()`` may hold the family's own counters (windows, repaired windows, pairs compared) beside
    the pointwise ones: every numeric counter is summed over the blocks into the record's
    ``diagnostics.counters``."""

    label: str

    def rerank_queries(self, queries: Sequence[QueryCandidates]) -> list[np.ndarray]:
        """For each query, float32 scores of its candidates in the order given (higher ranks first;
        a listwise order is returned as scores that decrease along it)."""

    def describe(self) -> dict: ...

    def stats(self) -> dict: ...

    def reset_stats(self) -> None: ...


def is_query_reranker(reranker) -> bool:
    """Whether `reranker` scores whole queries (`QueryReranker`) rather than independent pairs."""
    return callable(getattr(reranker, "rerank_queries", None))


class Stats:
    """The counters ``Reranker.stats()`` reports.

    ``tokens`` are real tokens, ``padded_tokens`` the tokens the forward computed (padding
    included; equal to ``tokens`` for packed batches). ``truncated_pairs`` counts pairs whose
    length reached max_length, ``truncated_queries`` queries that reached query_max_length (None
    when the engine has no query limit). ``seconds`` is wall time inside ``score``."""

    def __init__(self, query_limit: bool = True):
        self.query_limit = query_limit
        self.reset()

    def reset(self) -> None:
        self.pairs = self.tokens = self.padded_tokens = self.truncated_pairs = self.truncated_queries = 0
        self.seconds = 0.0
        self.calls = 0

    def add(self, *, pairs=0, tokens=0, padded_tokens=0, truncated_pairs=0, truncated_queries=0, seconds=0.0):
        self.pairs += int(pairs)
        self.tokens += int(tokens)
        self.padded_tokens += int(padded_tokens)
        self.truncated_pairs += int(truncated_pairs)
        self.truncated_queries += int(truncated_queries)
        self.seconds += float(seconds)
        self.calls += 1

    def as_dict(self) -> dict:
        return {"pairs": self.pairs, "tokens": self.tokens, "padded_tokens": self.padded_tokens,
                "truncated_pairs": self.truncated_pairs,
                "truncated_queries": self.truncated_queries if self.query_limit else None,
                "seconds": self.seconds, "calls": self.calls}


def check_pairs(pairs) -> list[tuple[str, str]]:
    """Pairs as a list of (str, str); anything else is an error naming the index."""
    out = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str)
                and isinstance(pair[1], str)):
            raise BenchError(f"pairs[{i}]: expected a (query, passage) pair of strings, got {type(pair).__name__} "
                             f"{str(pair)[:80]!r}")
        out.append((pair[0], pair[1]))
    return out


def check_scores(scores: np.ndarray, pairs: Sequence[tuple[str, str]], label: str, *,
                 qids: Sequence[str] | None = None, doc_ids: Sequence[str] | None = None) -> np.ndarray:
    """float32 scores, one per pair: the one score check, of every engine's output and of the scores
    fidelity compares.

    A wrong count is a bug in the engine, not something a user can fix: an AssertionError, so it
    surfaces with its traceback. A NaN or infinite score is a BenchError naming the first such pair
    (with its query and document ids when given) and the usual cause."""
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if len(scores) != len(pairs):
        raise AssertionError(f"reranker {label}: {len(scores)} scores for {len(pairs)} pairs (engine bug)")
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        i = int(bad[0])
        query = f"{qids[i]!r} " if qids is not None else ""
        document = f", document {doc_ids[i]!r}" if doc_ids is not None else ""
        raise BenchError(f"reranker {label}: score of pair {i} is {scores[i]} (query {query}{pairs[i][0][:100]!r}"
                         f"{document}); {len(bad)} of {len(scores)} scores are not finite. With fp16 this is "
                         "usually an overflow: use dtype bf16 or fp32")
    return scores


def load_cross_encoder(spec, device: str, precision, cache_dir=None):
    """Tokenizer and ``AutoModelForSequenceClassification`` for ``spec``, on ``device`` in ``precision``,
    in eval mode; one logit per pair is required."""
    transformers = lazy.transformers
    source = models.resolve(spec.model, cache_dir)
    try:
        config = transformers.AutoConfig.from_pretrained(source, revision=spec.revision,
                                                         trust_remote_code=getattr(spec, "trust_remote_code", False))
        if getattr(config, "num_labels", 1) != 1:
            raise BenchError(f"reranker model {spec.model!r} has {config.num_labels} labels; a reranker "
                             "must output one logit per pair (num_labels = 1)")
        check_max_length(config, spec.max_length, f"reranker {spec.label}")
        remote = getattr(spec, "trust_remote_code", False)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, revision=spec.revision, trust_remote_code=remote)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            source, revision=spec.revision, dtype=precision.torch_dtype, trust_remote_code=remote)
    except (OSError, ValueError) as exc:
        raise load_error("reranker model", spec, exc) from None
    model.to(device).eval()
    return tokenizer, model


class EngineBase:
    """Shared plumbing of the engines: label, resolved precision and device, counters, describe()."""

    engine = ""

    def __init__(self, spec, device: str, precision, *, query_limit: bool):
        self.spec = spec
        self.label = spec.label
        self.device = device
        self.precision = precision
        self._stats = Stats(query_limit=query_limit)

    def stats(self) -> dict:
        return self._stats.as_dict()

    def reset_stats(self) -> None:
        self._stats.reset()

    def _describe(self, **fields) -> dict:
        model = models.describe_loaded(self.spec.model, self.spec.revision, getattr(self, "source", self.spec.model))
        return {"engine": self.engine, "label": self.label, "model": model, "dtype": self.precision.name,
                "dtype_requested": self.precision.requested, "device": self.device,
                "max_length": self.spec.max_length, "scoring": {"head": "classification"},
                "trust_remote_code": getattr(self.spec, "trust_remote_code", False), **fields}
