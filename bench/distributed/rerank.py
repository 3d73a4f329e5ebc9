"""Reranking on the cluster: the local stage's blocks, each scored where its passages are read.

The driver plans the blocks exactly as the local stage does (`BlockPlan`) and sends each block's
query ids, query texts and candidate ids, never a passage: an actor reads the block's passages from
the collection's source itself (`Collection.reader`: the ir_datasets docstore, the BEIR file, the
synthetic generator), computes the digest of the exact pairs (`pairs_digest`), keeps a block already
on storage if it was scored for exactly these pairs, else scores it with the same `score_block` and
writes the checkpoint. The driver then reads every block back (checked against the digest the actor
computed) and assembles the run with the local code, so the reranked run is the local one.
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
    """A Ray Data actor: for each block, reads its passages, keeps the stored block when it was scored
    for exactly these pairs, else builds the reranker (once) and scores and checkpoints the block."""

    def __init__(self, spec, cache_dir: str, storage: Storage, folder: str, reader):
        self.spec, self.cache_dir, self.storage, self.folder, self.reader = spec, cache_dir, storage, folder, reader
        self.reranker = None
        self.warm = False  # the first block this actor scores is preceded by an untimed warm-up

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {"block": [], "status": [], "digest": [], "described": []}
        for i, payload in zip(batch["block"], batch["payload"]):
            block = json.loads(str(payload))
            qids = block["qids"]
            plan = BlockPlan(0, block["tops"], {}, [qids])  # this block alone, as the driver planned it
            keys, pairs = plan.pairs_of(qids, block["queries"], self.reader.get_docs)
            digest = pairs_digest(keys, pairs)
            rel = f"{self.folder}/{block_file(int(i))}"
            stored = self.storage.read_checked(rel)
            if stored is not None and parse_block(stored.decode("utf-8", errors="replace"), qids, digest,
                                                  where=self.storage.path(rel)) is not None:
                status, described = "resumed", ""
            else:
                if self.reranker is None:
                    self.reranker = build_reranker(self.spec, cache_dir=self.cache_dir)
                self.storage.write_checked_json(rel, score_block(self.reranker, qids, keys, pairs, warm_up=not self.warm))
                self.warm = True
                status, described = "scored", json.dumps(self.reranker.describe(), default=str)
            for key, value in (("block", int(i)), ("status", status), ("digest", digest), ("described", described)):
                out[key].append(value)
        return {k: np.array(v) for k, v in out.items()}


class RayRerankStage:
    """`RerankStage`'s interface (`rerank(queries, candidates, get_docs) -> RerankResult`) on a cluster.

    After a call, `scored_blocks` counts the blocks scored now (every block goes to the actors, which
    keep the ones on storage), `described` is the reranker as an actor built it (None when every block
    came from storage), and `execution` is what the record states about the step."""

    def __init__(self, spec, top_k: int, checkpoints: Path, *, backend, reader):
        self.spec, self.top_k, self.backend, self.reader = spec, top_k, backend, reader
        self.folder = backend.relative(checkpoints)
        self.scored_blocks = 0
        self.described: dict | None = None
        self.execution: dict = {}

    def rerank(self, queries: dict[str, str], candidates: dict[str, dict[str, float]], get_docs=None) -> RerankResult:
        """The reranked run. ``get_docs`` is not used: the actors read the passages."""
        storage, execution = self.backend.storage, self.backend.execution
        plan = BlockPlan.of(queries, candidates, self.top_k)
        items = [{"block": i, "payload": json.dumps({"qids": block, "queries": {q: queries[q] for q in block},
                                                     "tops": {q: plan.tops[q] for q in block}}, ensure_ascii=False)}
                 for i, block in enumerate(plan.blocks)]
        self.backend.log(f"reranking {len(items)} block(s) on {execution.workers} actor(s) (blocks on storage are kept)")
        t0 = time.perf_counter()
        out = run_actor_pool(items, BlockScorer, dict(spec=self.backend.worker_spec(self.spec),
                                                      cache_dir=self.backend.cache_dir, storage=storage,
                                                      folder=self.folder, reader=self.reader), execution)
        done, scored = [], 0
        for i, status, digest, described in sorted(zip(out["block"], out["status"], out["digest"], out["described"])):
            block = self._stored(i, plan.blocks[i], digest)
            if block is None:
                raise RuntimeError(f"{storage.path(self.folder)}: block {i} was scored but cannot be read back")
            done.append(block)
            scored += status == "scored"
            if described and self.described is None:
                self.described = json.loads(described)
        self.scored_blocks = scored
        self.execution = self.backend.describe(steps={"rerank_seconds": time.perf_counter() - t0},
                                               scored_blocks=scored, blocks=len(plan.blocks))
        return plan.assemble(done, resumed=len(plan.blocks) - scored)

    def _stored(self, i: int, qids: list[str], digest: str) -> dict | None:
        """Block `i` from storage if it is there, intact, and was scored for exactly these pairs."""
        rel = f"{self.folder}/{block_file(i)}"
        data = self.backend.storage.read_checked(rel)
        return None if data is None else parse_block(data.decode("utf-8", errors="replace"), qids, digest,
                                                     where=self.backend.storage.path(rel))
