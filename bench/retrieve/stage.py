"""The first stage: a collection in, a candidate run out (cached as a TREC run file).

One object per configured first stage. `retrieve(collection)` returns the top-`depth` candidates per
query from a dense bi-encoder (exact search over cached corpus embeddings), BM25, a TREC run file, or
ir_datasets' scoreddocs, and caches the result keyed by the stage's settings and the collection's
fingerprint, so a rerun (or a resumed run) costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from .. import models
from ..cache import entry, entry_path
from ..config import FirstStageSpec
from ..engine.device import precision_for, resolve_devices
from ..errors import BenchError
from ..io import atomic_write_json
from ..runs import read_run, sort_ranking, write_run
from . import build_encoder
from .bm25 import bm25_settings, bm25_top_k
from .embeddings import EmbeddingStore
from .search import exact_top_k

SHARD_SIZE = 100_000


def queries_digest(queries: dict[str, str]) -> str:
    h = hashlib.sha256()
    for qid in sorted(queries):
        h.update(f"{qid}\t{queries[qid]}\n".encode("utf-8"))
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class FirstStageResult:
    """What `FirstStage.retrieve` returns: the candidate run, what it cost, and the stage's account
    of how it was made (``info``: method, settings, embeddings folder and counts, as records keep it)."""

    run: dict[str, dict[str, float]]
    info: dict
    cached: bool                        # read from the cache: nothing ran now
    seconds: float | None               # making the run (when cached: when it was made)
    encoder: dict | None = None         # the bi-encoder as it ran (dense)
    encode_seconds: float | None = None
    search_seconds: float | None = None
    docs_per_second: float | None = None

    @classmethod
    def from_info(cls, run: dict[str, dict[str, float]], info: dict, cached: bool) -> "FirstStageResult":
        """From the account the stage keeps beside its cached run (``info.json``)."""
        return cls(run=run, info={**info, "cached": cached}, cached=cached, seconds=info.get("seconds"),
                   encoder=info.get("encoder"), encode_seconds=info.get("encode_seconds"),
                   search_seconds=info.get("search_seconds"), docs_per_second=info.get("docs_per_second"))


class FirstStage:
    """Candidates for every query of a collection, by one configured method."""

    def __init__(self, name: str, spec: FirstStageSpec, cache_root: str | Path, *, progress: bool = True):
        self.name = name
        self.spec = spec
        self.cache_root = Path(cache_root)
        self.progress = progress
        self._encoder = None

    def describe(self) -> dict:
        out = {"name": self.name, **self.spec.settings()}
        if self.spec.model:
            out["model"] = models.describe(self.spec.model, self.spec.revision)
        if self._encoder is not None:
            out["encoder"] = self._encoder.describe()
        return out

    # -- public ------------------------------------------------------------------------------
    def cache_folder(self, collection, *, create: bool = True) -> Path:
        """Where this stage's run over `collection` is cached (keyed by every setting that shapes it)."""
        spec_key = self.spec.model_dump(mode="json", exclude={"device", "batch_size", "token_budget", "search_chunk", "name",
                                                           "preset"})
        if self.spec.kind == "dense":  # `auto` is fp16 on a GPU, fp32 on the CPU: key the run on what runs
            spec_key["precision"] = precision_for(self.spec.dtype, self.spec.device, self.spec.engine)
        return (entry if create else entry_path)(self.cache_root, "runs", f"{collection.name}-{self.name}",
                                                 stage=spec_key, collection=collection.fingerprint(),
                                                 queries=queries_digest(collection.queries))

    def is_cached(self, collection) -> bool:
        folder = self.cache_folder(collection, create=False)
        return (folder / "run.trec").exists() and (folder / "info.json").exists()

    def retrieve(self, collection) -> FirstStageResult:
        """The candidate run and what it cost (timings, cache hits)."""
        folder = self.cache_folder(collection)
        run_path, info_path = folder / "run.trec", folder / "info.json"
        if run_path.exists() and info_path.exists():
            return FirstStageResult.from_info(read_run(run_path), json.loads(info_path.read_text()), cached=True)
        t0 = time.perf_counter()
        if self.spec.kind == "dense":
            ranked, info = self._dense(collection)
        elif self.spec.kind == "bm25":
            ranked, info = self._bm25(collection)
        elif self.spec.kind == "run":
            ranked, info = self._from_run_file(collection)
        else:
            ranked, info = self._scoreddocs(collection)
        info["seconds"] = time.perf_counter() - t0
        run = {qid: {doc: score for doc, score in docs} for qid, docs in ranked.items() if docs}
        write_run(run, run_path, tag=self.name)
        atomic_write_json(info_path, info)
        return FirstStageResult.from_info(run, info, cached=False)

    # -- methods -----------------------------------------------------------------------------
    def _dense(self, collection):
        if self._encoder is None:  # one process per device when there are several, whole shards each
            self._encoder = build_encoder(self.spec, cache_dir=self.cache_root)
        enc = self._encoder
        d = enc.describe()
        storage = "float32" if d.get("dtype") in ("fp32", "tf32") else "float16"
        store_folder = entry(self.cache_root, "embeddings", f"{collection.name}-{Path(self.spec.model).name}",
                             model=self.spec.model, revision=self.spec.revision, corpus=collection.corpus_fingerprint(),
                             max_length=d.get("max_length", self.spec.max_length),  # as capped by the model
                             dtype=d.get("dtype"), engine=self.spec.engine,
                             storage=storage)
        store = EmbeddingStore(store_folder, shard_size=SHARD_SIZE)
        t0 = time.perf_counter()
        built = {"encoded_docs": 0, "reused_docs": collection.n_docs()}
        if not store.complete():
            built = store.build(collection.iter_docs(batch_size=SHARD_SIZE), encode_shards=enc.encode_shards,
                                n_docs=collection.n_docs(), storage_dtype=storage, progress=self.progress)
        t_encode = time.perf_counter() - t0
        qids = sorted(collection.queries)
        t0 = time.perf_counter()
        q = enc.encode_queries([collection.queries[qid] for qid in qids])
        hits = exact_top_k(q, store.shards(), self.spec.depth, chunk=self.spec.search_chunk,
                           device=resolve_devices(self.spec.device)[0], progress=self.progress,
                           n_docs=collection.n_docs())
        t_search = time.perf_counter() - t0
        info = {"method": "dense exact inner product over L2-normalised embeddings", "encoder": d,
                "embeddings": {"folder": str(store_folder), "storage_dtype": storage, **built},
                "encode_seconds": t_encode, "search_seconds": t_search,
                "docs_per_second": built["encoded_docs"] / t_encode if built["encoded_docs"] else None}
        return dict(zip(qids, hits)), info

    def close(self) -> None:
        """Release the encoder (and its worker processes, if several devices)."""
        if self._encoder is not None:
            self._encoder.close()
        self._encoder = None

    def _bm25(self, collection):
        ranked = bm25_top_k(collection.iter_docs(), collection.queries, self.spec.depth,
                            language=collection.language, k1=self.spec.k1, b=self.spec.b, progress=self.progress)
        return ranked, {"method": "bm25", "bm25": bm25_settings(collection.language, self.spec.k1, self.spec.b)}

    def _from_run_file(self, collection):
        path = Path(self.spec.path.format(dataset=collection.name.replace("/", "_"),
                                          language=collection.language or ""))
        run = read_run(path)
        unknown = [q for q in run if q not in collection.queries]
        kept = {q: run[q] for q in collection.queries if q in run}
        if not kept:
            raise BenchError(f"{path}: none of the run's {len(run)} query ids is a query of {collection.name} "
                             f"(e.g. run has {next(iter(run), None)!r}, collection has {next(iter(collection.queries), None)!r})")
        return self._cut(kept), {"method": "run file", "path": str(path), "ignored_queries": len(unknown)}

    def _scoreddocs(self, collection):
        return self._cut(collection.scoreddocs(self.spec.depth)), {"method": "ir_datasets scoreddocs"}

    def _cut(self, run):
        return {qid: sort_ranking(docs)[: self.spec.depth] for qid, docs in run.items()}
