"""The first stage: a collection in, a candidate run out (cached as a TREC run file).

One object per configured first stage. `retrieve(collection)` returns the top-`depth` candidates per
query from a dense bi-encoder (exact search over cached corpus embeddings), bge-m3's heads, SPLADE
(exact search over cached term weights), BM25, a TREC run file, ir_datasets' scoreddocs, or the
fusion of other first stages (`build_stages` links a fusion to its members), and caches the result
keyed by the stage's settings and the collection's fingerprint (for a run file: its content; for a
fusion: its members' entries), so a rerun (or a resumed run) costs nothing. The cached run and its
info are checked on read (`bench.cache`): a damaged one is recomputed.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from .. import models
from ..cache import checked, entry, entry_path, read_checked_json, write_checked_json, write_checked_text
from ..config import FirstStageSpec
from ..engine.device import precision_for, resolve_devices
from ..errors import BenchError
from ..io import sha256_file
from ..runs import format_run, read_run, sort_ranking
from . import bge_m3, build_encoder, fusion, splade
from .bm25 import bm25_settings, bm25_top_k
from .embeddings import EmbeddingStore
from .search import exact_top_k

#: The largest default shard (every embeddings entry's shard size before shard sizes scaled with the corpus).
SHARD_SIZE = 100_000
#: The smallest default shard, and how many shards a corpus is cut into by default.
MIN_SHARD_SIZE, SHARDS_PER_CORPUS = 1_000, 20
#: Spec fields added after runs were first cached: in the cache key only when an experiment sets them.
OPTIONAL_KEY_FIELDS = ("remove_query_id", "mode", "weights", "rescore_depth", "hybrid_depth", "quantize",
                       "query_quantize", "query_encoder", "special_tokens", "first_stages", "method", "rrf_k", "norm",
                       "fusion_weights")


def drop_query_ids(ranked: dict[str, list[tuple[str, float]]], depth: int) -> tuple[dict, int]:
    """Each query's ranking without the passage whose id equals the query id, cut to ``depth``
    (the methods fetch ``depth + 1`` so that exactly ``depth`` remain), and how many were removed.

    MIRACL's query ids and passage ids share one namespace; pyserini's ``--remove-query`` (and
    FlagEmbedding's MIRACL results before 2024-07) drop such passages from the results."""
    out, removed = {}, 0
    for qid, docs in ranked.items():
        kept = [(d, s) for d, s in docs if d != qid]
        removed += len(docs) - len(kept)
        out[qid] = kept[:depth]
    return out, removed


def shard_size(spec: FirstStageSpec, n_docs: int, laid_out: int | None = None) -> int:
    """Passages per corpus embedding shard: the unit an interrupted encoding keeps. Every backend cuts
    the corpus with this, so a shard written by one is found by another.

    An entry already on disk keeps the size it was written with (``laid_out``: its completion marker's,
    else its first shard's), so caches made before this setting existed, or with another value, are
    reused and never cut again. Otherwise the spec's ``shard_size``, else about a twentieth of the
    corpus, between MIN_SHARD_SIZE and SHARD_SIZE passages (a corpus of 2,000,000 or more keeps the
    former fixed 100,000). The size is not part of the cache key: it changes files, not vectors."""
    if laid_out:
        return laid_out
    if spec.shard_size:
        return spec.shard_size
    return min(SHARD_SIZE, max(MIN_SHARD_SIZE, -(-n_docs // SHARDS_PER_CORPUS)))


def queries_digest(queries: dict[str, str]) -> str:
    h = hashlib.sha256()
    for qid in sorted(queries):
        h.update(f"{qid}\t{queries[qid]}\n".encode("utf-8"))
    return h.hexdigest()[:16]


def embedding_entry(cache_root: str | Path, spec: FirstStageSpec, collection, encoder: dict) -> tuple[Path, str]:
    """The cache entry of a collection's corpus embeddings under `spec` and the dtype they are stored
    in, from the encoder's own description (its dtype as it runs). Every backend keys shards here."""
    storage = "float32" if encoder.get("dtype") in ("fp32", "tf32") else "float16"
    folder = entry(cache_root, "embeddings", f"{collection.name}-{Path(spec.model).name}",
                   model=spec.model, revision=spec.revision, corpus=collection.corpus_fingerprint(),
                   max_length=encoder.get("max_length", spec.max_length),  # as capped by the model
                   dtype=encoder.get("dtype"), engine=spec.engine, storage=storage)
    return folder, storage


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

    def __init__(self, name: str, spec: FirstStageSpec, cache_root: str | Path, *, progress: bool = True,
                 backend=None, members: dict[str, "FirstStage"] | None = None):
        self.name = name
        self.spec = spec
        self.cache_root = Path(cache_root)
        self.progress = progress
        self.backend = backend  # None: this process; else `backend.dense|bge_m3|splade(stage, collection)` run those kinds
        self.members = members or {}  # kind = "fusion": the stages it fuses, by name, in its order
        if spec.kind == "fusion" and list(self.members) != list(spec.first_stages):
            raise BenchError(f"first stage {name!r} fuses {spec.first_stages}; build it with build_stages")
        self._encoder = None
        #: what each method fetches: one more than kept when the query's own id may be dropped
        self.fetch_depth = spec.depth + (1 if spec.remove_query_id else 0)

    def describe(self) -> dict:
        out = {"name": self.name, **self.spec.settings()}
        if self.spec.model:
            out["model"] = models.describe(self.spec.model, self.spec.revision)
        if self.spec.kind == "fusion":
            out["fusion"] = fusion.settings(self.spec)
            # the members' settings: not their encoders, described only where this process loaded one (a
            # fresh local run), so the fusion's record key stays the same from the cache and on a cluster
            out["members"] = [{**{k: v for k, v in m.describe().items() if k != "encoder"}, "depth": m.spec.depth}
                              for m in self.members.values()]
        if self._encoder is not None:
            out["encoder"] = self._encoder.describe()
        return out

    # -- public ------------------------------------------------------------------------------
    def cache_folder(self, collection, *, create: bool = True) -> Path:
        """Where this stage's run over `collection` is cached (keyed by every setting that shapes it,
        and for a run file by its content: an edited run file is a new entry)."""
        spec_key = self.spec.model_dump(mode="json", exclude={"device", "batch_size", "token_budget", "search_chunk",
                                                           "name", "preset", "shard_size"})
        for f in OPTIONAL_KEY_FIELDS:  # keyed only when set, so runs cached before these fields stay valid
            if f not in self.spec.model_fields_set or spec_key[f] is None:
                spec_key.pop(f, None)
        if self.spec.kind == "fusion":  # the members' own entries: any change to a member is a new fused run
            spec_key["members"] = {m: stage.cache_folder(collection, create=False).name for m, stage in self.members.items()}
        if self.spec.kind in ("dense", "bge-m3", "splade"):  # `auto` is fp16 on a GPU, fp32 on the CPU: key the run on what runs
            spec_key["precision"] = (self.backend.precision(self.spec) if self.backend is not None  # the workers'
                                     else precision_for(self.spec.dtype, self.spec.device, self.spec.engine))
        if self.spec.kind == "run":
            spec_key["run_file_sha256"] = sha256_file(self._run_path(collection))
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
        info, run_intact = read_checked_json(info_path), checked(run_path)  # both checked: both said when damaged
        if info is not None and run_intact:
            return FirstStageResult.from_info(read_run(run_path), info, cached=True)
        t0 = time.perf_counter()
        if self.spec.kind == "dense":
            ranked, info = self._dense(collection)
        elif self.spec.kind == "bge-m3":
            ranked, info = self._bge_m3(collection)
        elif self.spec.kind == "splade":
            ranked, info = self._splade(collection)
        elif self.spec.kind == "fusion":
            ranked, info = self._fusion(collection)
        elif self.spec.kind == "bm25":
            ranked, info = self._bm25(collection)
        elif self.spec.kind == "run":
            ranked, info = self._from_run_file(collection)
        else:
            ranked, info = self._scoreddocs(collection)
        if self.spec.remove_query_id:
            ranked, removed = drop_query_ids(ranked, self.spec.depth)
            info["remove_query_id"] = {"removed": removed, "queries": len(ranked)}
        info["seconds"] = time.perf_counter() - t0
        run = {qid: {doc: score for doc, score in docs} for qid, docs in ranked.items() if docs}
        write_checked_text(run_path, format_run(run, tag=self.name))
        write_checked_json(info_path, info)
        return FirstStageResult.from_info(run, info, cached=False)

    # -- methods -----------------------------------------------------------------------------
    def _dense(self, collection):
        if self.backend is not None:  # another execution backend (a Ray cluster) encodes and searches
            return self.backend.dense(self, collection)
        if self._encoder is None:  # one process per device when there are several, whole shards each
            self._encoder = build_encoder(self.spec, cache_dir=self.cache_root)
        enc = self._encoder
        d = enc.describe()
        store_folder, storage = embedding_entry(self.cache_root, self.spec, collection, d)
        store = EmbeddingStore(store_folder)
        store.shard_size = shard_size(self.spec, collection.n_docs(), store.laid_out_shard_size())
        t0 = time.perf_counter()
        built = {"encoded_docs": 0, "reused_docs": collection.n_docs()}
        if not store.complete():
            built = store.build(collection.iter_docs(batch_size=store.shard_size), encode_shards=enc.encode_shards,
                                n_docs=collection.n_docs(), storage_dtype=storage, progress=self.progress)
        t_encode = time.perf_counter() - t0
        qids = sorted(collection.queries)
        t0 = time.perf_counter()
        q = enc.encode_queries([collection.queries[qid] for qid in qids])
        hits = exact_top_k(q, store.shards(), self.fetch_depth, chunk=self.spec.search_chunk,
                           device=resolve_devices(self.spec.device)[0], progress=self.progress,
                           n_docs=collection.n_docs())
        t_search = time.perf_counter() - t0
        info = {"method": "dense exact inner product over L2-normalised embeddings", "encoder": d,
                "embeddings": {"folder": str(store_folder), "storage_dtype": storage, "shard_size": store.shard_size,
                               **built},
                "encode_seconds": t_encode, "search_seconds": t_search,
                "docs_per_second": built["encoded_docs"] / t_encode if built["encoded_docs"] else None}
        return dict(zip(qids, hits)), info

    def _bge_m3(self, collection):
        if self.backend is not None:  # a Ray cluster encodes, searches and rescores
            return self.backend.bge_m3(self, collection)
        if self._encoder is None:  # one device: the corpus is encoded once for every mode, then cached
            self._encoder = bge_m3.M3Encoder(self.spec, cache_dir=self.cache_root,
                                             device=resolve_devices(self.spec.device)[0])
        n_docs = collection.n_docs()
        return bge_m3.retrieve(self._encoder, collection, self.cache_root, self.fetch_depth,
                               shard_size=lambda laid_out: shard_size(self.spec, n_docs, laid_out),
                               search_chunk=self.spec.search_chunk, device=resolve_devices(self.spec.device)[0],
                               progress=self.progress)

    def _splade(self, collection):
        if self.backend is not None:  # a Ray cluster encodes queries and corpus and searches
            return self.backend.splade(self, collection)
        if self._encoder is None:  # one device; the corpus's weights are cached, unquantised, for every setting
            self._encoder = splade.SpladeEncoder(self.spec, cache_dir=self.cache_root,
                                                 device=resolve_devices(self.spec.device)[0],
                                                 where=f"first_stages.{self.name}")
        n_docs = collection.n_docs()
        ranked, info = splade.retrieve(self._encoder, collection, self.cache_root, self.fetch_depth,
                                       shard_size=lambda laid_out: shard_size(self.spec, n_docs, laid_out),
                                       progress=self.progress)
        return ranked, info

    def _fusion(self, collection):
        """The members' runs (cached, or made now) fused through ranx; the record names each member."""
        method = fusion.settings(self.spec)
        runs, members = {}, []
        for name, stage in self.members.items():
            result = stage.retrieve(collection)
            runs[name] = result.run
            members.append({"name": name, "kind": stage.spec.kind, "depth": stage.spec.depth, "cached": result.cached,
                            "queries": len(result.run), "run": str(stage.cache_folder(collection, create=False))})
        t0 = time.perf_counter()
        ranked = fusion.fuse(runs, method, self.fetch_depth)
        info = {"method": f"fusion {method['method']} through ranx.fuse ({method['ranx_method']})", "fusion": method,
                "members": members, "fuse_seconds": time.perf_counter() - t0,
                "ties": "member lists read by rank are ordered by bench.runs.sort_ranking; the fused list too"}
        return ranked, info

    def close(self) -> None:
        """Release the encoder (and its worker processes, if several devices)."""
        if self._encoder is not None:
            self._encoder.close()
        self._encoder = None

    def _bm25(self, collection):
        ranked = bm25_top_k(collection.iter_docs(), collection.queries, self.fetch_depth,
                            language=collection.language, k1=self.spec.k1, b=self.spec.b, progress=self.progress)
        return ranked, {"method": "bm25", "bm25": bm25_settings(collection.language, self.spec.k1, self.spec.b)}

    def _run_path(self, collection) -> Path:
        path = Path(self.spec.path.format(dataset=collection.name.replace("/", "_"), language=collection.language or ""))
        if not path.is_file():
            raise BenchError(f"{path}: run file of first stage {self.name!r} not found")
        return path

    def _from_run_file(self, collection):
        path = self._run_path(collection)
        run = read_run(path)
        unknown = [q for q in run if q not in collection.queries]
        kept = {q: run[q] for q in collection.queries if q in run}
        if not kept:
            raise BenchError(f"{path}: none of the run's {len(run)} query ids is a query of {collection.name} "
                             f"(e.g. run has {next(iter(run), None)!r}, collection has {next(iter(collection.queries), None)!r})")
        return self._cut(kept), {"method": "run file", "path": str(path), "ignored_queries": len(unknown)}

    def _scoreddocs(self, collection):
        return self._cut(collection.scoreddocs(self.fetch_depth)), {"method": "ir_datasets scoreddocs"}

    def _cut(self, run):
        return {qid: sort_ranking(docs)[: self.fetch_depth] for qid, docs in run.items()}


def build_stages(specs: dict[str, FirstStageSpec], cache_root: str | Path, *, progress: bool = True,
                 backend=None) -> dict[str, FirstStage]:
    """One `FirstStage` per named spec, each fusion linked to its members' stages (the same objects, so
    a member's model loads once whichever asks for its run)."""
    stages: dict[str, FirstStage] = {}

    def build(name: str) -> FirstStage:
        if name not in stages:
            spec = specs[name]
            members = {m: build(m) for m in spec.first_stages} if spec.kind == "fusion" else None
            stages[name] = FirstStage(name, spec, cache_root, progress=progress, backend=backend, members=members)
        return stages[name]

    for name in specs:
        build(name)
    return stages
