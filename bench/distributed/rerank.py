"""Reranking on the cluster: the local stage's blocks, scored by a pool of actors holding the reranker.

The driver plans the blocks exactly as the local stage does (`BlockPlan`), reads each block's
passages from the docstore once (a stored block is used only if it was scored for exactly these
pairs: `pairs_digest`), and sends each missing block with its passages; an actor scores it with the
same `score_block` and writes the checkpoint to storage. Finished blocks (from this run, an
interrupted one, or a local run sharing the storage) are read back and assembled by the same code as
locally, so the reranked run is the local one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..rerank import build_reranker
from ..rerank.stage import BlockPlan, RerankResult, block_file, pairs_digest, parse_block, score_block
from .encode import run_actor_pool
from .storage import Storage


class BlockScorer:
    """A Ray Data actor: builds the reranker once, scores whole blocks, checkpoints each to storage."""

    def __init__(self, spec, cache_dir: str, storage: Storage, folder: str):
        self.reranker = build_reranker(spec, cache_dir=cache_dir)
        self.storage, self.folder = storage, folder
        self.warm = False  # the first block this actor scores is preceded by an untimed warm-up

    def __call__(self, batch: dict) -> dict:
        out = {"block": [], "pairs": [], "seconds": [], "described": []}
        for i, qids, keys_q, keys_d, query_texts, passages in zip(
                batch["block"], batch["qids"], batch["keys_q"], batch["keys_d"], batch["query_texts"], batch["passages"]):
            keys = [(str(q), str(d)) for q, d in zip(keys_q, keys_d)]
            pairs = [(str(q), str(p)) for q, p in zip(query_texts, passages)]
            done = score_block(self.reranker, [str(q) for q in qids], keys, pairs, warm_up=not self.warm)
            self.warm = True
            self.storage.write_checked_json(f"{self.folder}/{block_file(int(i))}", done)
            out["block"].append(int(i))
            out["pairs"].append(len(pairs))
            out["seconds"].append(done["stats"]["wall_seconds"])
            out["described"].append(json.dumps(self.reranker.describe(), default=str))
        return {k: np.array(v) for k, v in out.items()}


class RayRerankStage:
    """`RerankStage`'s interface (`rerank(queries, candidates, get_docs) -> RerankResult`) on a cluster.

    After a call, `submitted_blocks` counts the blocks sent to the actors, `described` is the
    reranker as an actor built it (None when every block came from storage), and `execution` is
    what the record states about the step."""

    def __init__(self, spec, top_k: int, checkpoints: Path, *, backend):
        self.spec, self.top_k, self.backend = spec, top_k, backend
        self.folder = backend.relative(checkpoints)
        self.submitted_blocks = 0
        self.described: dict | None = None
        self.execution: dict = {}

    def rerank(self, queries: dict[str, str], candidates: dict[str, dict[str, float]], get_docs) -> RerankResult:
        storage, execution = self.backend.storage, self.backend.execution
        plan = BlockPlan.of(queries, candidates, self.top_k)
        block_pairs = [plan.pairs_of(block, queries, get_docs) for block in plan.blocks]  # docstore read once
        digests = [pairs_digest(keys, pairs) for keys, pairs in block_pairs]
        done: dict[int, dict] = {}
        for i, block in enumerate(plan.blocks):
            found = self._stored(i, block, digests[i])
            if found is not None:
                done[i] = found
        missing = [i for i in range(len(plan.blocks)) if i not in done]
        t0 = time.perf_counter()
        if missing:
            items = []
            for i in missing:  # the passages travel with their block
                keys, pairs = block_pairs[i]
                items.append({"block": i, "qids": plan.blocks[i], "keys_q": [q for q, _ in keys],
                              "keys_d": [d for _, d in keys], "query_texts": [q for q, _ in pairs],
                              "passages": [p for _, p in pairs]})
            self.backend.log(f"reranking {len(missing)} of {len(plan.blocks)} block(s) on {execution.workers} actor(s)")
            out = run_actor_pool(items, BlockScorer, dict(spec=self.backend.worker_spec(self.spec),
                                                          cache_dir=self.backend.cache_dir, storage=storage,
                                                          folder=self.folder), execution)
            self.described = json.loads(out["described"][0])
            for i in missing:
                done[i] = self._stored(i, plan.blocks[i], digests[i])
                if done[i] is None:
                    raise RuntimeError(f"{storage.path(self.folder)}: block {i} was scored but cannot be read back")
        self.submitted_blocks = len(missing)
        self.execution = self.backend.describe(steps={"rerank_seconds": time.perf_counter() - t0},
                                               submitted_blocks=len(missing), blocks=len(plan.blocks))
        return plan.assemble([done[i] for i in range(len(plan.blocks))], resumed=len(plan.blocks) - len(missing))

    def _stored(self, i: int, qids: list[str], digest: str) -> dict | None:
        """Block `i` from storage if it is there, intact, and was scored for exactly these pairs."""
        rel = f"{self.folder}/{block_file(i)}"
        data = self.backend.storage.read_checked(rel)
        return None if data is None else parse_block(data.decode("utf-8", errors="replace"), qids, digest,
                                                     where=self.backend.storage.path(rel))
