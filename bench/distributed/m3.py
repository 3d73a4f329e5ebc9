"""bge-m3 on the cluster: query encoding, the corpus's dense vectors and lexical weights, dense and
sparse search, and the multi-vector rescoring of the top candidates.

The modes are ranked by the local code (`bench.retrieve.bge_m3.rank`), with each search and the
rescoring run on the cluster: the corpus is encoded by `encode.M3Corpus` shards, searched by
`search.distributed_search` (dense) and `search.sparse_search` (lexical weights), and rescored by
a pool of actors holding the encoder. Rescoring keeps the local blocks of ``RESCORE_QUERIES``
queries (each block's candidates re-encoded together, in the same order, so the same batches give
the same colbert vectors and the run equals the local one); each actor reads its block's passages
itself (`Collection.reader`), so no passage passes through the driver.
"""

from __future__ import annotations

import json

import numpy as np

from ..engine.device import resolve_devices
from ..retrieve import bge_m3
from .encode import run_actor_pool


def encode_queries(spec, cache_dir: str, texts: list[str], colbert: bool):
    """A cluster task: (the encoder's description, the dtype its corpus vectors are keyed by, the
    queries' dense vectors, lexical weights and, for rescoring, colbert vectors)."""
    encoder = bge_m3.M3Encoder(spec, cache_dir=cache_dir, device=resolve_devices(spec.device)[0])
    try:
        return encoder.describe(), encoder.encoder.describe().get("dtype"), encoder.encode_queries(texts, colbert=colbert)
    finally:
        encoder.close()


def rows(q: bge_m3.M3Output, start: int, stop: int) -> bge_m3.M3Output:
    """Queries ``start`` to ``stop - 1`` of an encoded batch."""
    return bge_m3.M3Output(q.dense[start:stop], q.sparse[start:stop], q.colbert[start:stop] if q.colbert else None)


class BlockRescorer:
    """A Ray Data actor: builds bge-m3 once, then rescores whole blocks of queries (`bge_m3.rerank`),
    reading their candidates' passages itself."""

    def __init__(self, spec, cache_dir: str, reader, queries: bge_m3.M3Output, candidates: list, mode: str, weights,
                 k: int):
        self.encoder = bge_m3.M3Encoder(spec, cache_dir=cache_dir, device=resolve_devices(spec.device)[0])
        self.reader, self.queries, self.candidates = reader, queries, candidates
        self.mode, self.weights, self.k = mode, weights, k

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {"block": [], "hits": [], "rescored": []}
        for b in batch["block"]:
            start = int(b) * bge_m3.RESCORE_QUERIES
            stop = start + bge_m3.RESCORE_QUERIES
            hits, rescored = bge_m3.rerank(self.encoder, self.reader, rows(self.queries, start, stop),
                                           self.candidates[start:stop], self.mode, self.weights, self.k)
            out["block"].append(int(b))
            out["hits"].append(json.dumps(hits))  # Python floats: exact through JSON
            out["rescored"].append(rescored)
        return {k: np.array(v) for k, v in out.items()}


def rescore(reader, spec, cache_dir: str, queries: bge_m3.M3Output, candidates: list, mode: str, weights, k: int,
            execution) -> tuple[list, int]:
    """Every query's rescored top-``k`` and the passages re-encoded, as `bge_m3.rerank` locally."""
    blocks = -(-len(candidates) // bge_m3.RESCORE_QUERIES)
    out = run_actor_pool([{"block": b} for b in range(blocks)], BlockRescorer,
                         dict(spec=spec, cache_dir=cache_dir, reader=reader, queries=queries, candidates=candidates,
                              mode=mode, weights=weights, k=k), execution)
    hits = []
    for _, block_hits in sorted(zip(out["block"], out["hits"])):
        hits.extend([[(d, s) for d, s in row] for row in json.loads(block_hits)])
    return hits, int(sum(out["rescored"]))
