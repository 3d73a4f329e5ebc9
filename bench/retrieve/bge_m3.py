"""bge-m3 as its authors use it: dense, sparse and multi-vector heads from one forward.

The model (``BAAI/bge-m3``) is XLM-R large with two small heads beside the dense CLS vector, shipped
as PyTorch pickles in the hub repo: ``sparse_linear.pt`` (hidden -> 1) and ``colbert_linear.pt``
(hidden -> hidden). They are loaded with ``torch.load(weights_only=True)`` only. Formulas, as
FlagEmbedding computes them (``inference/embedder/encoder_only/m3.py``, and for the scores
``finetune/embedder/encoder_only/m3/modeling.py``):

* dense: the CLS state, L2-normalised; score = inner product;
* sparse: per token ``relu(sparse_linear(h))``, per token id the max over its occurrences, special
  tokens (cls, eos, pad, unk) dropped; score = sum over shared token ids of the weight products;
* multi-vector: ``colbert_linear(h)`` for every token but CLS, each normalised; score = mean over the
  query's vectors of the max inner product over the passage's vectors.

The first stage ``kind = "bge-m3"`` ranks by ``mode``: ``dense``; ``sparse`` (exact search over the
corpus's cached lexical weights, ``bench.retrieve.sparse``); ``dense+sparse`` (FlagEmbedding's MKQA
hybrid: the union of the dense and sparse top ``hybrid_depth``, score = 1 x dense + 0.3 x sparse, a part
missing from one list counting 0); ``multivec`` and ``all`` (the dense top ``rescore_depth`` re-encoded and
rescored, as their ``multi_vector_rerank`` script does: colbert alone, or (1 x dense + 0.3 x sparse +
1 x colbert) / 2.3). Weights from ``C_MTEB/MKQA/hybrid_retrieval/step0-hybrid_search_results.py`` and
``C_MTEB/MKQA/multi_vector_rerank/step0-rerank_results.py``.

Everything runs in the fast engine's packed forward (``bench.engine.heads`` reads the token states
from the packed tensor); the corpus is encoded once for every mode (dense vectors and lexical weights
cached side by side); only multivec and all re-encode the candidates, for their colbert vectors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import lazy
from ..cache import entry
from ..config import BgeM3Weights
from ..engine import heads
from ..engine.device import matmul_precision
from ..errors import BenchError
from ..runs import sort_ranking
from . import sparse
from .embeddings import EmbeddingStore
from .encoder import Encoder
from .search import exact_top_k

HEAD_FILES = {"sparse": "sparse_linear.pt", "colbert": "colbert_linear.pt"}
RESCORE_DEPTH = 100
HYBRID_DEPTH = 1000
#: Queries whose candidates are re-encoded together for multivec / all (bounds the colbert vectors held).
RESCORE_QUERIES = 16


def head_file(source: str, name: str, revision: str | None) -> Path:
    """A head's weight file: beside the model in a local folder, else from the hub repo."""
    if Path(source).exists():
        path = Path(source) / name
        if not path.is_file():
            raise BenchError(f"{source}: no {name}; a bge-m3 model folder holds its heads as "
                             f"{' and '.join(HEAD_FILES.values())} beside the transformer")
        return path
    try:
        return Path(lazy.huggingface_hub.hf_hub_download(source, name, revision=revision))
    except Exception as exc:  # offline, missing file, unknown repo: one message for all
        raise BenchError(f"bge-m3 head {name} of {source!r} (revision {revision}): cannot fetch: {exc}") from None


def load_linear(path: Path, dtype, device):
    """A ``torch.nn.Linear`` from a state-dict pickle, read with ``weights_only=True`` (no code runs)."""
    torch = lazy.torch
    state = torch.load(path, map_location="cpu", weights_only=True)
    if set(state) != {"weight", "bias"}:
        raise BenchError(f"{path}: expected a Linear layer's state dict (weight, bias), found {sorted(state)}")
    out_features, in_features = state["weight"].shape
    layer = torch.nn.Linear(in_features, out_features)
    layer.load_state_dict(state)
    return layer.to(device=device, dtype=dtype).eval()


@dataclass
class M3Output:
    """Texts encoded by bge-m3, in input order."""

    dense: np.ndarray                       # [n, hidden], L2-normalised
    sparse: object                          # scipy CSR [n, vocab]: lexical weights
    colbert: list[np.ndarray] | None = None  # per text [tokens - 1, dim], normalised


class M3Encoder:
    """One job: texts -> bge-m3's dense vectors, lexical weights and (on request) colbert vectors,
    from one packed forward per batch."""

    def __init__(self, spec, *, cache_dir=None, device: str | None = None):
        self.spec = spec
        self.encoder = Encoder(spec.model_copy(update={"kind": "dense"}), cache_dir=cache_dir, device=device)
        enc = self.encoder
        if enc.engine != "fast" or enc.packed is None:
            raise BenchError(f"kind = 'bge-m3' ({spec.model!r}) runs in the fast engine's packed forward: set "
                             f"engine = 'fast' and use an XLM-R model ({getattr(enc, 'fallback_reason', None) or enc.engine})")
        if enc.pooling != ("cls",):
            raise BenchError(f"kind = 'bge-m3': {spec.model!r} pools {enc.pooling}; bge-m3's dense vector is the CLS state")
        dtype = enc.precision.torch_dtype
        self.sparse_linear = load_linear(head_file(enc.source, HEAD_FILES["sparse"], spec.revision), dtype, enc.device)
        self.colbert_linear = load_linear(head_file(enc.source, HEAD_FILES["colbert"], spec.revision), dtype, enc.device)
        tok = enc.tokenizer
        self.unused_ids = {i for i in (tok.cls_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id)
                           if i is not None}
        self.vocab = int(enc.hf.config.vocab_size)
        self.instruction = enc.instruction

    def encode_queries(self, texts: Sequence[str], *, colbert: bool = False) -> M3Output:
        return self.encode([self.instruction + t for t in texts], colbert=colbert)

    def encode_docs(self, texts: Sequence[str], *, colbert: bool = False) -> M3Output:
        return self.encode(list(texts), colbert=colbert)

    def encode(self, texts: list[str], *, colbert: bool = False) -> M3Output:
        """The heads' outputs for ``texts``. The loop returns rows in input order; the variable-length
        outputs are kept per batch in processing order, and a last column carries each text's
        processing position so that they are put back in input order."""
        torch, enc = lazy.torch, self.encoder
        n = len(texts)
        if n == 0:
            return M3Output(np.zeros((0, enc.dim), np.float32), lazy.scipy_sparse.csr_matrix((0, self.vocab)),
                            [] if colbert else None)
        rows = sparse.SparseRows(self.vocab)
        parts: list[tuple] = []  # colbert vectors and counts per batch, in processing order

        def forward(batch):
            hidden = enc.packed(batch)
            cu = batch.cu_seqlens
            dense = torch.nn.functional.normalize(hidden.index_select(0, cu[:-1].long()).float(), dim=-1)
            seq, ids, weights = heads.lexical_weights(hidden, batch.input_ids, cu, self.sparse_linear, self.unused_ids)
            if colbert:
                vecs, counts = heads.colbert_vectors(hidden, cu, self.colbert_linear)
                parts.append((vecs.cpu().numpy(), counts.cpu().numpy()))
            return torch.cat([dense, rows.add(seq, ids, weights, batch.n)[:, None]], dim=1)

        with torch.inference_mode(), matmul_precision(enc.precision):
            out, _ = enc.loop.run(texts, enc.text_tokenizer, forward)
        rank = out[:, -1].astype(np.int64)  # input i was the rank[i]-th text processed
        weights = rows.matrix(rank)
        vectors = None
        if colbert:
            flat = np.concatenate([p[0] for p in parts])
            offsets = np.concatenate([[0], np.cumsum(np.concatenate([p[1] for p in parts]))])
            vectors = [flat[offsets[r]:offsets[r + 1]] for r in rank]
        return M3Output(np.ascontiguousarray(out[:, :-1]), weights, vectors)

    def describe(self) -> dict:
        return {**self.encoder.describe(), "heads": {
            "sparse": f"relu(sparse_linear) {tuple(self.sparse_linear.weight.shape)}, max per token id, "
                      f"special ids {sorted(self.unused_ids)} dropped",
            "colbert": f"colbert_linear {tuple(self.colbert_linear.weight.shape)} on tokens 1.. (CLS dropped), normalised"}}

    def close(self) -> None:
        self.encoder.close()


# -- scores ---------------------------------------------------------------------------------------------
def colbert_score(query: np.ndarray, passage: np.ndarray) -> float:
    """Mean over the query's vectors of the max inner product over the passage's vectors."""
    if len(query) == 0 or len(passage) == 0:
        return 0.0
    return float((query.astype(np.float64) @ passage.astype(np.float64).T).max(axis=1).mean())


# -- the first stage ------------------------------------------------------------------------------------
def corpus_entry(cache_root, spec, collection, dtype: str) -> tuple[Path, str]:
    """The cache entry of a collection's dense vectors and lexical weights under `spec`, and the dtype
    the vectors are stored in, from the precision the encoder runs in. Every backend keys shards here."""
    storage = "float32" if dtype in ("fp32", "tf32") else "float16"
    folder = entry(cache_root, "embeddings", f"{collection.name}-{Path(spec.model).name}-m3",
                   model=spec.model, revision=spec.revision, corpus=collection.corpus_fingerprint(),
                   max_length=spec.max_length, dtype=dtype, engine=spec.engine, storage=storage,
                   heads="bge-m3 dense + sparse")
    return folder, storage


def corpus_store(encoder: M3Encoder, collection, cache_root, *, shard_size: Callable[[int | None], int],
                 progress: bool) -> tuple[EmbeddingStore, dict]:
    """The corpus's dense vectors and lexical weights, encoded once (one forward) and cached.
    ``shard_size(laid_out)``: the shard size, given the one the entry was written with (if any)."""
    folder, storage = corpus_entry(cache_root, encoder.spec, collection, encoder.encoder.describe().get("dtype"))
    sparse.drop_unpaired(folder)  # a dense shard without its weights is encoded again
    store = EmbeddingStore(folder)
    store.shard_size = shard_size(store.laid_out_shard_size())
    built = {"encoded_docs": 0, "reused_docs": collection.n_docs()}
    t0 = time.perf_counter()

    def encode_shards(items):
        for i, texts in items:
            out = encoder.encode_docs(texts)
            sparse.save_shard(folder, i, out.sparse)  # before the dense shard: dense present => sparse present
            yield i, out.dense

    if not store.complete():
        built = store.build(collection.iter_docs(batch_size=store.shard_size), encode_shards=encode_shards,
                            n_docs=collection.n_docs(), storage_dtype=storage, progress=progress)
    sparse_bytes = sum(p.stat().st_size for p in Path(folder).glob("shard-*.sparse.npz"))
    dense_bytes = sum(p.stat().st_size for p in Path(folder).glob("shard-*.npy"))
    return store, {"folder": str(folder), "storage_dtype": storage, "shard_size": store.shard_size, **built, "encode_seconds": time.perf_counter() - t0,
                   "dense_bytes": dense_bytes, "sparse_bytes": sparse_bytes}


def retrieve(encoder: M3Encoder, collection, cache_root, k: int, *, shard_size: Callable[[int | None], int], search_chunk: int,
             device: str, progress: bool) -> tuple[dict, dict]:
    """Top-``k`` per query by the spec's mode, and the account of how (records keep it)."""
    spec = encoder.spec
    store, built = corpus_store(encoder, collection, cache_root, shard_size=shard_size, progress=progress)
    qids = sorted(collection.queries)
    t0 = time.perf_counter()
    q = encoder.encode_queries([collection.queries[qid] for qid in qids], colbert=spec.mode in ("multivec", "all"))

    def dense(depth):
        return exact_top_k(q.dense, store.shards(), depth, chunk=search_chunk, device=device, progress=progress,
                           n_docs=collection.n_docs())

    def lexical(depth):
        return sparse.sparse_top_k(q.sparse, sparse.shards(store), depth, progress=progress, n_docs=collection.n_docs())

    def rescore(candidates, mode, w):
        return rerank(encoder, collection, q, candidates, mode, w, k)

    hits, info = rank(spec, k, dense, lexical, rescore)
    info = {"method": f"bge-m3 {spec.mode}", "mode": spec.mode, "encoder": encoder.describe(), "embeddings": built,
            **info, "search_seconds": time.perf_counter() - t0, "encode_seconds": built["encode_seconds"],
            "docs_per_second": built["encoded_docs"] / built["encode_seconds"] if built["encoded_docs"] else None}
    return dict(zip(qids, hits)), info


def rank(spec, k: int, dense, lexical, rescore) -> tuple[list, dict]:
    """Every query's top-``k`` by ``spec.mode`` from the searches the caller runs where it runs them
    (this process, or a cluster): ``dense(depth)`` and ``lexical(depth)`` give every query's top
    ``depth``; ``rescore(candidates, mode, weights)`` gives the rescored lists and how many passages it
    re-encoded. Returns the hits and what the record states about the mode."""
    mode, w = spec.mode, spec.weights or BgeM3Weights()
    if mode == "dense":
        return dense(k), {}
    if mode == "sparse":
        return lexical(k), {}
    if mode == "dense+sparse":
        depth = max(spec.hybrid_depth or HYBRID_DEPTH, k)
        return ([hybrid(d, s, w, k) for d, s in zip(dense(depth), lexical(depth))],
                {"hybrid_depth": depth, "weights": w.model_dump()})
    depth = spec.rescore_depth or RESCORE_DEPTH
    if k > depth:
        raise BenchError(f"kind = 'bge-m3', mode = {mode!r}: depth {k} exceeds rescore_depth {depth}; "
                         "the rescored dense candidates are all it ranks")
    t1 = time.perf_counter()
    hits, rescored = rescore(dense(depth), mode, w)
    return hits, {"rescore_depth": depth, "weights": w.model_dump(), "rescored_passages": rescored,
                  "rescore_seconds": time.perf_counter() - t1}


def hybrid(dense_hits, sparse_hits, w: BgeM3Weights, k: int) -> list[tuple[str, float]]:
    """One query's union of the two lists, w.dense x dense + w.sparse x sparse (a part absent from its
    list counts 0, as FlagEmbedding's hybrid script), cut to ``k``."""
    scores: dict[str, float] = {}
    for doc, s in sparse_hits:
        scores[doc] = w.sparse * s
    for doc, s in dense_hits:
        scores[doc] = scores.get(doc, 0.0) + w.dense * s
    return sort_ranking(scores)[:k]


def rerank(encoder: M3Encoder, collection, q: M3Output, candidates, mode: str, w: BgeM3Weights, k: int):
    """Rescore each query's dense candidates: the passages re-encoded with their colbert vectors
    (a block of queries at a time, so memory holds only their candidates) and scored against the
    query's. ``multivec``: colbert alone; ``all``: (dense, sparse, colbert) weighted, over the weights' sum."""
    out, rescored = [], 0
    total = w.dense + w.sparse + w.colbert
    for start in range(0, len(candidates), RESCORE_QUERIES):
        block = candidates[start:start + RESCORE_QUERIES]
        doc_ids = list(dict.fromkeys(d for hits in block for d, _ in hits))
        texts = collection.get_docs(doc_ids)
        p = encoder.encode_docs([texts[d] for d in doc_ids], colbert=True)
        rescored += len(doc_ids)
        row = {d: i for i, d in enumerate(doc_ids)}
        for j, hits in enumerate(block):
            qi = start + j
            scores = {}
            for d, _ in hits:
                i = row[d]
                c = colbert_score(q.colbert[qi], p.colbert[i])
                if mode == "multivec":
                    scores[d] = c
                else:
                    dense_s = float(q.dense[qi].astype(np.float64) @ p.dense[i].astype(np.float64))
                    sparse_s = float(q.sparse[qi].multiply(p.sparse[i]).sum())
                    scores[d] = (w.dense * dense_s + w.sparse * sparse_s + w.colbert * c) / total
            out.append(sort_ranking(scores)[:k])
    return out, rescored
