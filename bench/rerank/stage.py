"""The rerank stage: a candidate run in, a reranked run out, checkpointed so nothing is lost.

Each query's top-`top_k` candidates (in first-stage order) become (query, passage) pairs for the
reranker. Queries are scored in blocks; each finished block is written atomically to the checkpoint
folder with its scores, the reranker's counters and a digest of the exact pairs it scored (query and
document ids and texts), so an interrupted run resumes at the first missing block and its diagnostics
still cover every pair. A block is used again only when its digest matches the pairs it would score
now and its file passes its check (`bench.cache`); otherwise it is scored again.

Speed: each block's checkpoint holds the wall time of its one scoring call (`reranker.score` or
`rerank_queries`), nothing else: the reranker is built, loaded (or trained) before, and the first block
this stage scores is preceded by an untimed warm-up on its first queries (`WARMUP_PAIRS`), so
first-call costs (kernel selection, allocator growth, lazy initialisation) stay out of every rate.
`RerankResult.speed()` is what a record states about it (`timings.rerank_*`).

The reranked run holds the `top_k` reranked documents per query with the reranker's float32 scores,
followed by the first stage's remaining candidates in first-stage order (scored below every reranked
one), so reranking a prefix never changes Recall at the first stage's depth. With the usual
`top_k` = first-stage depth there is no remainder.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..cache import read_checked, write_checked_json
from ..progress import bar as progress_bar, skip
from ..runs import sort_ranking
from .common import QueryCandidates, check_scores, is_query_reranker

BLOCK_PAIRS = 20_000
#: Pairs (whole queries, at least one) scored untimed before the first block a stage scores.
WARMUP_PAIRS = 256
#: The counters every engine's ``stats()`` reports (`bench.rerank.common.Stats`), and
#: ``computed_tokens`` (real tokens the forward computed; engines that reuse no prefix leave it out:
#: it is then ``tokens``). Any other numeric counter is a family's own, summed into ``diagnostics.counters``.
STANDARD_COUNTERS = {"pairs", "tokens", "padded_tokens", "computed_tokens", "truncated_pairs", "truncated_queries",
                     "seconds", "calls", "wall_seconds"}
#: What a rerank record's rate times (`timings.rerank_timed`).
TIMED = ("scoring calls only (reranker.score or rerank_queries, one per block); not building, training or loading "
         "the model, reading passages or checkpoints, nor the untimed warm-up (rerank_warmup_pairs) before the "
         "first block each run scores")


@dataclass(frozen=True)
class RerankResult:
    """What `RerankStage.rerank` returns: the reranked run, the reranker's counters summed over every
    block (None where the engine does not count), and how much came from the checkpoints."""

    run: dict[str, dict[str, float]]
    top_k: int
    blocks: int
    resumed_blocks: int                 # blocks read back from checkpoints, not scored now
    pairs: int                          # pairs scored (counted from the blocks' scores)
    tokens: int | None                  # prompt tokens: every pair's input as the model reads it whole
    padded_tokens: int | None           # every position the model computed (padding and real tokens)
    computed_tokens: int | None         # the real tokens among them (fewer than `tokens` with prefix reuse)
    truncated_pairs: int | None
    truncated_queries: int | None
    seconds: float | None               # scoring wall time, summed over the blocks as each recorded it
    counters: dict[str, float] = field(default_factory=dict)  # a family's own counters (windows, ...), summed
    block_seconds: list[float] = field(default_factory=list)  # each block's scoring time, in block order
    block_pairs: list[int] = field(default_factory=list)      # each block's pairs
    warmup_pairs: int = 0               # pairs scored untimed before the first block scored now

    @property
    def pairs_per_second(self) -> float | None:
        return self.pairs / self.seconds if self.seconds else None

    def diagnostics(self) -> dict:
        """Truncation and token accounting per pair (what a record's ``diagnostics`` holds): the same
        definitions for every engine (`token_diagnostics`)."""
        share = lambda part, whole: part / whole if part is not None and whole else None  # noqa: E731
        return {
            "pairs": self.pairs,
            "truncated_pairs_share": share(self.truncated_pairs, self.pairs),
            "truncated_queries_share": share(self.truncated_queries, self.pairs),
            **token_diagnostics(self.pairs, self.tokens, self.padded_tokens, self.computed_tokens),
            **({"counters": dict(self.counters)} if self.counters else {}),
        }

    def speed(self) -> dict:
        """What a record's timings state about the scoring rate: pairs/s over the timed scoring calls,
        what is timed, where the times come from, and their spread over the blocks."""
        rates = [p / s for p, s in zip(self.block_pairs, self.block_seconds) if s]
        source = ("this run's own timing" if not self.resumed_blocks else
                  "checkpoints of an earlier run (every block came from the cache)" if self.resumed_blocks == self.blocks
                  else "this run's own timing and checkpoints of an earlier run")
        return {"rerank_scoring_seconds": self.seconds, "rerank_pairs_per_s": self.pairs_per_second,
                "rerank_timed": TIMED, "rerank_speed_source": source + ": one pass over each block, not a "
                "throughput benchmark (`bench throughput` times engines with warm-up and repeats)",
                "rerank_block_pairs_per_s": [round(r, 3) for r in rates], "rerank_warmup_pairs": self.warmup_pairs}


def token_diagnostics(pairs: int | None, tokens: int | None, padded_tokens: int | None,
                      computed_tokens: int | None) -> dict:
    """Token accounting that means the same for every engine, each share in [0, 1]:

    * ``mean_tokens_per_pair``: prompt tokens per pair (the input as the model would read it whole);
    * ``mean_computed_tokens_per_pair``: positions the forward computed per pair, padding included;
    * ``padding_share``: of the positions computed, the share that is padding;
    * ``prefix_saved_share``: of the prompt tokens, the share not computed because a query's shared
      prefix was computed once (decoder prefix reuse; 0 for every other engine).

    ``computed_tokens`` (real tokens computed) is ``tokens`` for engines that do not report it; None
    where the engine counts nothing."""
    share = lambda part, whole: min(1.0, max(0.0, part / whole)) if part is not None and whole else None  # noqa: E731
    real = tokens if computed_tokens is None else computed_tokens
    per_pair = lambda n: n / pairs if n is not None and pairs else None  # noqa: E731
    return {
        "mean_tokens_per_pair": per_pair(tokens),
        "mean_computed_tokens_per_pair": per_pair(padded_tokens),
        "padding_share": share(padded_tokens - real, padded_tokens) if padded_tokens and real is not None else None,
        "prefix_saved_share": share(tokens - real, tokens) if tokens and real is not None else None,
    }


class RerankStage:
    """Rerank the top `top_k` of a run with one reranker, in resumable blocks."""

    def __init__(self, reranker_factory, top_k: int, checkpoint_dir: str | Path, *, progress: bool = True):
        self._factory = reranker_factory
        self._reranker = None
        self.top_k = top_k
        self.checkpoint_dir = Path(checkpoint_dir)
        self.progress = progress

    @property
    def reranker(self):
        """Built on first use, so a fully cached stage never loads the model."""
        if self._reranker is None:
            self._reranker = self._factory()
        return self._reranker

    def rerank(self, queries: dict[str, str], candidates: dict[str, dict[str, float]], get_docs) -> RerankResult:
        """The reranked run with its counters and timings. `get_docs(ids) -> {id: text}`."""
        plan = BlockPlan.of(queries, candidates, self.top_k)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        done_blocks, resumed, warm = [], 0, False
        bar = progress_bar(plan.pairs, "rerank", "pair", enabled=self.progress)
        for i, block in enumerate(plan.blocks):
            path = self.checkpoint_dir / block_file(i)
            keys, pairs = plan.pairs_of(block, queries, get_docs)
            done = _read_block(path, block, pairs_digest(keys, pairs))
            if done is None:
                done = score_block(self.reranker, block, keys, pairs, warm_up=not warm)
                warm = True
                write_checked_json(path, done)
                bar.update(sum(len(v) for v in done["scores"].values()))
            else:
                resumed += 1
                skip(bar, sum(len(v) for v in done["scores"].values()))
            done_blocks.append(done)
        bar.close()
        return plan.assemble(done_blocks, resumed)


def block_file(i: int) -> str:
    """The checkpoint file name of block `i` (the same in a local cache entry and on a cluster's storage)."""
    return f"block-{i:05d}.json"


def score_block(reranker, qids: list[str], keys: list[tuple[str, str]], pairs: list[tuple[str, str]], *,
                warm_up: bool = False) -> dict:
    """One block scored: its checkpoint content (query ids, the digest of its pairs, scores per query,
    the reranker's counters, the wall time of the scoring call). With `warm_up`, the block's first
    queries (about WARMUP_PAIRS pairs) are scored once before, untimed, their scores dropped."""
    warmup_pairs = 0
    if warm_up and getattr(reranker, "warm_up", True):  # a python: class may be a paid API: never twice
        head_keys, head_pairs = _head_queries(keys, pairs, WARMUP_PAIRS)
        _score(reranker, head_keys, head_pairs)
        warmup_pairs = len(head_pairs)
    reranker.reset_stats()
    t0 = time.perf_counter()
    scores = _score(reranker, keys, pairs)
    elapsed = time.perf_counter() - t0
    scored: dict[str, dict[str, float]] = {q: {} for q in qids}
    for (q, d), s in zip(keys, scores):
        scored[q][d] = s
    return {"qids": qids, "pairs_sha256": pairs_digest(keys, pairs), "scores": scored,
            "stats": {**reranker.stats(), "wall_seconds": elapsed},
            **({"warmup_pairs": warmup_pairs} if warmup_pairs else {})}


def _score(reranker, keys: list[tuple[str, str]], pairs: list[tuple[str, str]]) -> list[float]:
    if is_query_reranker(reranker):
        return score_whole_queries(reranker, keys, pairs)
    return reranker.score(pairs).tolist()


def _head_queries(keys: list[tuple[str, str]], pairs: list[tuple[str, str]], n: int) -> tuple[list, list]:
    """The first whole queries of a block holding at least `n` pairs (all of it when smaller)."""
    end = min(n, len(keys))
    while end < len(keys) and keys[end][0] == keys[end - 1][0]:
        end += 1
    return keys[:end], pairs[:end]


def score_whole_queries(reranker, keys: list[tuple[str, str]], pairs: list[tuple[str, str]]) -> list[float]:
    """A query-level reranker's scores for a block's pairs, in pair order: the pairs grouped by query
    (a block lists each query's candidates together, in incoming order)."""
    groups: dict[str, list[int]] = {}
    for i, (q, _) in enumerate(keys):
        groups.setdefault(q, []).append(i)
    queries = [QueryCandidates(pairs[idx[0]][0], tuple(keys[i][1] for i in idx), tuple(pairs[i][1] for i in idx))
               for idx in groups.values()]
    results = reranker.rerank_queries(queries)
    if len(results) != len(queries):
        raise AssertionError(f"reranker {reranker.label}: {len(results)} results for {len(queries)} queries (engine bug)")
    scores = [0.0] * len(pairs)
    for idx, query, result in zip(groups.values(), queries, results):
        checked = check_scores(result, list(zip([query.query] * len(idx), query.passages)), reranker.label,
                               doc_ids=list(query.doc_ids))
        for i, s in zip(idx, checked.tolist()):
            scores[i] = s
    return scores


def pairs_digest(keys: list[tuple[str, str]], pairs: list[tuple[str, str]]) -> str:
    """sha256 of the exact (query id, doc id, query text, passage text) list a block scores."""
    h = hashlib.sha256()
    for key, pair in zip(keys, pairs):
        h.update(json.dumps([*key, *pair], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class BlockPlan:
    """Which pairs a rerank scores and how they are cut into blocks of about BLOCK_PAIRS pairs (whole
    queries, sorted query ids), and how finished blocks make the reranked run. Any backend that
    scores the blocks of one plan returns the same run."""

    top_k: int
    tops: dict[str, list[str]]      # the reranked prefix per query, in first-stage order
    rest: dict[str, list[str]]      # the remainder kept in first-stage order below it
    blocks: list[list[str]]

    @classmethod
    def of(cls, queries: dict[str, str], candidates: dict[str, dict[str, float]], top_k: int) -> "BlockPlan":
        qids = [q for q in sorted(candidates) if q in queries and candidates[q]]
        ranked = {q: [d for d, _ in sort_ranking(candidates[q])] for q in qids}
        tops = {q: docs[:top_k] for q, docs in ranked.items()}
        rest = {q: docs[top_k:] for q, docs in ranked.items()}
        blocks, cur, size = [], [], 0
        for q in qids:
            cur.append(q)
            size += len(tops[q])
            if size >= BLOCK_PAIRS:
                blocks.append(cur)
                cur, size = [], 0
        if cur:
            blocks.append(cur)
        return cls(top_k, tops, rest, blocks)

    @property
    def pairs(self) -> int:
        return sum(len(t) for t in self.tops.values())

    def pairs_of(self, block: list[str], queries: dict[str, str], get_docs) -> tuple[list, list]:
        """(keys, pairs) of one block: (query id, doc id) and (query text, passage text) per pair; the
        docstore is read once per query of the block."""
        pairs, keys = [], []
        for q in block:
            texts = get_docs(self.tops[q])
            for d in self.tops[q]:
                pairs.append((queries[q], texts[d]))
                keys.append((q, d))
        return keys, pairs

    def assemble(self, done_blocks: list[dict], resumed: int) -> RerankResult:
        """The reranked run and summed counters from every block's checkpoint content, in block order."""
        run: dict[str, dict[str, float]] = {}
        totals = {"tokens": 0, "padded_tokens": 0, "computed_tokens": 0, "truncated_pairs": 0,
                  "truncated_queries": 0, "seconds": 0.0}
        counters: dict[str, float] = {}
        block_seconds, block_pairs, warmup = [], [], 0
        for done in done_blocks:
            run.update(done["scores"])
            stats = {**done["stats"], "seconds": done["stats"].get("wall_seconds")}
            stats.setdefault("computed_tokens", stats.get("tokens"))  # no prefix reuse: every token is computed
            for k in totals:  # an engine that does not count something reports None: keep it None
                value = stats.get(k)
                totals[k] = None if value is None or totals[k] is None else totals[k] + value
            block_seconds.append(stats["seconds"] or 0.0)
            block_pairs.append(sum(len(v) for v in done["scores"].values()))
            warmup += int(done.get("warmup_pairs", 0))
            for k, value in done["stats"].items():  # a family's own counters
                if k not in STANDARD_COUNTERS and isinstance(value, (int, float)) and not isinstance(value, bool):
                    counters[k] = counters.get(k, 0) + value
        for q, below in self.rest.items():
            if below:
                floor = min(run[q].values()) if run.get(q) else 0.0
                for i, d in enumerate(below, start=1):
                    run[q][d] = floor - i  # keeps first-stage order under the reranked prefix
        return RerankResult(run=run, top_k=self.top_k, blocks=len(self.blocks), resumed_blocks=resumed,
                            pairs=sum(block_pairs), counters=counters, block_seconds=block_seconds,
                            block_pairs=block_pairs, warmup_pairs=warmup, **totals)


def _read_block(path: Path, qids: list[str], digest: str):
    """A finished block, or None if absent, damaged or scored for other pairs (then it is rescored)."""
    data = read_checked(path)
    if data is None:
        return None
    return parse_block(data.decode("utf-8", errors="replace"), qids, digest, where=str(path))


def parse_block(text: str, qids: list[str], digest: str, *, where: str):
    """A checkpoint's content if it is whole and was scored for exactly these pairs (`qids` and their
    `pairs_digest`), else None: the caller scores the block again. A block written for other
    candidates is said on stderr."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    if data.get("qids") != qids or data.get("pairs_sha256") != digest:
        print(f"note: {where} was scored for other candidates (the first stage or collection changed); "
              "scoring it again", file=sys.stderr, flush=True)
        return None
    return data
