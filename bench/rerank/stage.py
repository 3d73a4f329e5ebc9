"""The rerank stage: a candidate run in, a reranked run out, checkpointed so nothing is lost.

Each query's top-`top_k` candidates (in first-stage order) become (query, passage) pairs for the
reranker. Queries are scored in blocks; each finished block is written atomically to the checkpoint
folder with its scores, the reranker's counters and a digest of the exact pairs it scored (query and
document ids and texts), so an interrupted run resumes at the first missing block and its diagnostics
still cover every pair. A block is used again only when its digest matches the pairs it would score
now and its file passes its check (`bench.cache`); otherwise it is scored again.

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
#: The counters every engine's ``stats()`` reports (`bench.rerank.common.Stats`); any other numeric
#: counter is a family's own and is summed into ``diagnostics.counters``.
STANDARD_COUNTERS = {"pairs", "tokens", "padded_tokens", "truncated_pairs", "truncated_queries", "seconds",
                     "calls", "wall_seconds"}


@dataclass(frozen=True)
class RerankResult:
    """What `RerankStage.rerank` returns: the reranked run, the reranker's counters summed over every
    block (None where the engine does not count), and how much came from the checkpoints."""

    run: dict[str, dict[str, float]]
    top_k: int
    blocks: int
    resumed_blocks: int                 # blocks read back from checkpoints, not scored now
    pairs: int
    tokens: int | None
    padded_tokens: int | None           # every position the model computed (real tokens included)
    truncated_pairs: int | None
    truncated_queries: int | None
    seconds: float | None               # scoring wall time, summed over the blocks as each recorded it
    counters: dict[str, float] = field(default_factory=dict)  # a family's own counters (windows, ...), summed

    @property
    def pairs_per_second(self) -> float | None:
        return self.pairs / self.seconds if self.seconds else None

    def diagnostics(self) -> dict:
        """Shares per pair: truncation, tokens, padding (what a record's ``diagnostics`` holds)."""
        pairs = self.pairs or 1
        share = lambda part, whole: part / whole if part is not None and whole else None  # noqa: E731
        return {
            "pairs": self.pairs,
            "truncated_pairs_share": share(self.truncated_pairs, pairs),
            "truncated_queries_share": share(self.truncated_queries, pairs),
            "mean_tokens_per_pair": share(self.tokens, pairs),
            "padding_share": share(self.padded_tokens - self.tokens, self.padded_tokens)
            if self.padded_tokens and self.tokens is not None else None,
            **({"counters": dict(self.counters)} if self.counters else {}),
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
        done_blocks, resumed = [], 0
        bar = progress_bar(plan.pairs, "rerank", "pair", enabled=self.progress)
        for i, block in enumerate(plan.blocks):
            path = self.checkpoint_dir / block_file(i)
            keys, pairs = plan.pairs_of(block, queries, get_docs)
            done = _read_block(path, block, pairs_digest(keys, pairs))
            if done is None:
                done = score_block(self.reranker, block, keys, pairs)
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


def score_block(reranker, qids: list[str], keys: list[tuple[str, str]], pairs: list[tuple[str, str]]) -> dict:
    """One block scored: its checkpoint content (query ids, the digest of its pairs, scores per query,
    the reranker's counters)."""
    reranker.reset_stats()
    t0 = time.perf_counter()
    if is_query_reranker(reranker):
        scores = score_whole_queries(reranker, keys, pairs)
    else:
        scores = reranker.score(pairs).tolist()
    elapsed = time.perf_counter() - t0
    scored: dict[str, dict[str, float]] = {q: {} for q in qids}
    for (q, d), s in zip(keys, scores):
        scored[q][d] = s
    return {"qids": qids, "pairs_sha256": pairs_digest(keys, pairs), "scores": scored,
            "stats": {**reranker.stats(), "wall_seconds": elapsed}}


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
        totals = {"pairs": 0, "tokens": 0, "padded_tokens": 0, "truncated_pairs": 0, "truncated_queries": 0,
                  "seconds": 0.0}
        counters: dict[str, float] = {}
        for done in done_blocks:
            run.update(done["scores"])
            for k in totals:  # an engine that does not count something reports None: keep it None
                value = done["stats"].get(k if k != "seconds" else "wall_seconds")
                totals[k] = None if value is None or totals[k] is None else totals[k] + value
            for k, value in done["stats"].items():  # a family's own counters
                if k not in STANDARD_COUNTERS and isinstance(value, (int, float)) and not isinstance(value, bool):
                    counters[k] = counters.get(k, 0) + value
        for q, below in self.rest.items():
            if below:
                floor = min(run[q].values()) if run.get(q) else 0.0
                for i, d in enumerate(below, start=1):
                    run[q][d] = floor - i  # keeps first-stage order under the reranked prefix
        return RerankResult(run=run, top_k=self.top_k, blocks=len(self.blocks), resumed_blocks=resumed,
                            counters=counters, **totals)


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
