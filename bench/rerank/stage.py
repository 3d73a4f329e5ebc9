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
from dataclasses import dataclass
from pathlib import Path

from .. import lazy
from ..cache import read_checked_json, write_checked_json
from ..runs import sort_ranking

BLOCK_PAIRS = 20_000


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
        qids = [q for q in sorted(candidates) if q in queries and candidates[q]]
        ranked = {q: [d for d, _ in sort_ranking(candidates[q])] for q in qids}
        tops = {q: docs[: self.top_k] for q, docs in ranked.items()}
        rest = {q: docs[self.top_k:] for q, docs in ranked.items()}
        blocks, cur, size = [], [], 0
        for q in qids:
            cur.append(q)
            size += len(tops[q])
            if size >= BLOCK_PAIRS:
                blocks.append(cur)
                cur, size = [], 0
        if cur:
            blocks.append(cur)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        run: dict[str, dict[str, float]] = {}
        totals = {"pairs": 0, "tokens": 0, "padded_tokens": 0, "truncated_pairs": 0, "truncated_queries": 0,
                  "seconds": 0.0}
        resumed = 0
        bar = lazy.tqdm.tqdm(total=sum(len(t) for t in tops.values()), desc="rerank", unit="pair",
                             disable=not self.progress, dynamic_ncols=True)
        for i, block in enumerate(blocks):
            path = self.checkpoint_dir / f"block-{i:05d}.json"
            pairs, keys = [], []
            for q in block:
                texts = get_docs(tops[q])
                for d in tops[q]:
                    pairs.append((queries[q], texts[d]))
                    keys.append((q, d))
            digest = pairs_digest(keys, pairs)
            done = _read_block(path, block, digest)
            if done is None:
                rr = self.reranker
                rr.reset_stats()
                t0 = time.perf_counter()
                scores = rr.score(pairs)
                elapsed = time.perf_counter() - t0
                stats = {**rr.stats(), "wall_seconds": elapsed}
                scored: dict[str, dict[str, float]] = {q: {} for q in block}
                for (q, d), s in zip(keys, scores.tolist()):
                    scored[q][d] = s
                done = {"qids": block, "pairs_sha256": digest, "scores": scored, "stats": stats}
                write_checked_json(path, done)
            else:
                resumed += 1
            run.update(done["scores"])
            for k in totals:  # an engine that does not count something reports None: keep it None
                value = done["stats"].get(k if k != "seconds" else "wall_seconds")
                totals[k] = None if value is None or totals[k] is None else totals[k] + value
            bar.update(sum(len(v) for v in done["scores"].values()))
        bar.close()
        for q, below in rest.items():
            if below:
                floor = min(run[q].values()) if run.get(q) else 0.0
                for i, d in enumerate(below, start=1):
                    run[q][d] = floor - i  # keeps first-stage order under the reranked prefix
        return RerankResult(run=run, top_k=self.top_k, blocks=len(blocks), resumed_blocks=resumed, **totals)


def pairs_digest(keys: list[tuple[str, str]], pairs: list[tuple[str, str]]) -> str:
    """sha256 of the exact (query id, doc id, query text, passage text) list a block scores."""
    h = hashlib.sha256()
    for key, pair in zip(keys, pairs):
        h.update(json.dumps([*key, *pair], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _read_block(path: Path, qids: list[str], digest: str):
    """A finished block, or None if absent, damaged or scored for other pairs (then it is rescored)."""
    data = read_checked_json(path)
    if data is None:
        return None
    if data.get("qids") != qids or data.get("pairs_sha256") != digest:
        print(f"note: {path} was scored for other candidates (the first stage or collection changed); "
              "scoring it again", file=sys.stderr, flush=True)
        return None
    return data
