"""SPLADE-style learned sparse retrieval (``kind = "splade"``): masked-LM term weights, exact sparse search.

A text's weight for vocabulary entry ``j`` is the maximum over its tokens ``t`` of
``log(1 + relu(logit[t, j]))``, the logits of the model's masked-LM head, padding masked out, as the
authors compute it (naver/splade's ``Splade`` max aggregation; Pyserini's ``SpladeQueryEncoder`` and
``SpladeDocumentEncoder``; OpenSearch's model cards). Score = inner product of the query's and the
passage's weights. Special tokens ([CLS], [SEP]) weigh like any token in naver's models; OpenSearch's
models zero them (``special_tokens``).

Queries and documents (``KNOWN_MODELS`` states each known model's): one model for both (SPLADE++,
splade-v3, OpenSearch v1); two models (naver's efficient SPLADE: a ``-doc`` and a ``-query`` model,
``query_encoder = "<the query model>"``); or inference-free queries (OpenSearch's doc-only models:
each distinct query token weighs its entry in the model's ``idf.json``, no model runs:
``query_encoder = "idf"``).

Engines (``engine``):

* ``fast``: the packed forward (``bench.engine.packed``: real tokens only, no padding) for BERT and
  XLM-R families, a padded Hugging Face forward for others (recorded as ``forward = "hf"``); then the
  MLM head over real tokens only, a chunk of tokens at a time, each chunk folded into the per-text
  maximum at once (``bench.engine.heads.splade_weights``): the ``[tokens x vocab]`` logits never exist
  whole.
* ``transformers``: the plain loop the authors run: ``AutoModelForMaskedLM`` over padded batches of
  ``batch_size`` texts in input order, the whole ``[batch, length, vocab]`` logits, the formula above.

The corpus's weights (float32, unquantised) are cached in checked shards (``sparse.SparseStore``), the
unit an interrupted encoding keeps. ``quantize = 100`` turns them into integer impacts at search time,
as Pyserini's impact index stores them (``round(w x 100)``; queries by ``query_quantize``, default the
same factor), so one cached encoding serves both. Search is exact (``sparse.sparse_top_k``).

Corpus encoding goes through the embedding store's shard entry point (``SparseStore.build`` with
``SpladeEncoder.encode_shards``), the one the dense and bge-m3 stages use; the Ray backend encodes a
shard with the same call on its workers (``bench.distributed.encode.SpladeCorpus``) and writes
``sparse.shard_payload(weights, ids)`` under ``sparse.shard_files(i)`` in ``weights_entry(...)``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .. import lazy, models
from ..cache import entry
from ..engine import heads, packed
from ..engine.batching import TokenBudget
from ..engine.common import check_max_length, default_token_budget, load_error
from ..engine.device import AUTO_CUDA, matmul_precision, resolve_devices, resolve_precision
from ..engine.loop import BatchLoop
from ..engine.tokens import TextTokenizer
from ..errors import BenchError
from ..progress import advance
from . import sparse

#: The weight each token gets, as the record states it.
FORMULA = "max over tokens of log(1 + relu(MLM logits)), padding masked"


@dataclass(frozen=True)
class KnownModel:
    """How a known SPLADE-style model encodes queries, and whether its authors zero special tokens."""

    query: str            # "model": the same model; "idf": tokenizer + the model's idf.json; else the query model
    special_tokens: str   # "keep" (naver: [CLS]/[SEP] weigh like any token) or "drop" (OpenSearch zeroes them)
    source: str           # where that is stated


_NAVER = "naver/splade (one model for queries and documents; Pyserini's SpladeQueryEncoder likewise)"
_NAVER_EFFICIENT = "naver/splade efficient SPLADE (Lassance & Clinchant, SIGIR 2022): separate query and document models"
_OPENSEARCH = "the model card's get_sparse_vector (max over masked logits, log(1 + relu), special tokens zeroed)"
_OPENSEARCH_DOC = (_OPENSEARCH + "; queries: tokenizer and the weight look-up table idf.json, no model "
                   "(\"inference-free\")")

#: Models whose query side and special tokens are known; any other masked-LM model takes naver's convention
#: (``DEFAULT_MODEL``) unless ``query_encoder`` / ``special_tokens`` say otherwise.
KNOWN_MODELS: dict[str, KnownModel] = {
    "naver/splade-cocondenser-ensembledistil": KnownModel("model", "keep", _NAVER),
    "naver/splade-cocondenser-selfdistil": KnownModel("model", "keep", _NAVER),
    "naver/splade-v3": KnownModel("model", "keep", _NAVER),
    "naver/splade_v2_distil": KnownModel("model", "keep", _NAVER),
    "naver/splade_v2_max": KnownModel("model", "keep", _NAVER),
    "naver/efficient-splade-V-large-doc": KnownModel("naver/efficient-splade-V-large-query", "keep", _NAVER_EFFICIENT),
    "naver/efficient-splade-VI-BT-large-doc": KnownModel("naver/efficient-splade-VI-BT-large-query", "keep",
                                                         _NAVER_EFFICIENT),
    "opensearch-project/opensearch-neural-sparse-encoding-v1": KnownModel("model", "drop", _OPENSEARCH),
    "opensearch-project/opensearch-neural-sparse-encoding-doc-v1": KnownModel("idf", "drop", _OPENSEARCH_DOC),
    "opensearch-project/opensearch-neural-sparse-encoding-doc-v2-distill": KnownModel("idf", "drop", _OPENSEARCH_DOC),
    "opensearch-project/opensearch-neural-sparse-encoding-doc-v2-mini": KnownModel("idf", "drop", _OPENSEARCH_DOC),
}
DEFAULT_MODEL = KnownModel("model", "keep", "not a known model: naver/splade's convention")
IDF_FILE = "idf.json"


def known_model(ref: str) -> KnownModel:
    return KNOWN_MODELS.get(ref.rstrip("/"), DEFAULT_MODEL)


def query_side(spec) -> tuple[str, str]:
    """(query encoder, special tokens) of a splade spec: its own settings, else the known model's."""
    known = known_model(spec.model)
    return spec.query_encoder or known.query, spec.special_tokens or known.special_tokens


class MaskedLM:
    """One job: texts -> SPLADE weights (CSR ``[n, vocab]``, float32, input order) from one masked-LM
    model on one device, by the spec's engine (``fast`` or the plain ``transformers`` loop)."""

    def __init__(self, ref: str, spec, *, cache_dir=None, device: str = "cpu", special_tokens: str = "keep",
                 attention: str = "auto", chunk_tokens: int | None = None, where: str = "kind = 'splade', model"):
        transformers = lazy.transformers
        self.ref, self.spec, self.device, self.engine = ref, spec, device, spec.engine
        self.precision = resolve_precision(spec.dtype, device, AUTO_CUDA[spec.engine])
        self.source = models.resolve(ref, cache_dir)
        try:
            config = transformers.AutoConfig.from_pretrained(self.source, revision=spec.revision)
        except (OSError, ValueError) as exc:
            raise load_error("SPLADE model", spec.model_copy(update={"model": ref}), exc) from None
        problem = models.masked_lm_problem(getattr(config, "architectures", None))
        if problem:
            raise BenchError(f"{where} {ref!r}: {problem}")
        try:
            self.hf = transformers.AutoModelForMaskedLM.from_pretrained(
                self.source, revision=spec.revision, dtype=self.precision.torch_dtype).to(device).eval()
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.source, revision=spec.revision)
        except (OSError, ValueError) as exc:
            raise load_error("SPLADE model", spec.model_copy(update={"model": ref}), exc) from None
        self.max_length = spec.max_length
        check_max_length(config, self.max_length, f"SPLADE model {ref!r}")
        self.vocab = int(config.vocab_size)
        self.head = heads.mlm_head(self.hf)
        self.special_tokens = special_tokens
        self.drop_ids = sorted(set(self.tokenizer.all_special_ids)) if special_tokens == "drop" else []
        self.chunk_tokens = chunk_tokens or max(1, heads.MLM_CHUNK_CELLS // self.vocab)
        self._tokens = 0
        self.packed = None
        if self.engine == "fast":
            self.fallback_reason = packed.unsupported_reason(config)
            if self.fallback_reason is None:
                attention = packed.choose_attention(attention, device, self.precision.half)
                self.packed = packed.PackedEncoder(self.hf.base_model, attention)
            self.text_tokenizer = TextTokenizer(self.tokenizer, self.max_length)
            self.budget = TokenBudget(spec.token_budget or default_token_budget(device))
            self.max_texts = spec.batch_size if "batch_size" in spec.model_fields_set else None
            self.loop = BatchLoop(device, self.budget, padded=self.packed is None,
                                  pad_id=self.tokenizer.pad_token_id or 0,
                                  position_offset=self.packed.position_offset if self.packed else 0,
                                  max_items=self.max_texts)
        elif self.engine != "transformers":
            raise BenchError(f"kind = 'splade': engine {self.engine!r}; use 'fast' or 'transformers'")

    # -- public -------------------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str]):
        texts = list(texts)
        if not texts:
            return lazy.scipy_sparse.csr_matrix((0, self.vocab), dtype=np.float32)
        with lazy.torch.inference_mode(), matmul_precision(self.precision):
            out = self._fast(texts) if self.engine == "fast" else self._plain(texts)
        if not np.isfinite(out.data).all():
            row = int(np.searchsorted(out.indptr, int(np.flatnonzero(~np.isfinite(out.data))[0]), side="right") - 1)
            raise BenchError(f"SPLADE model {self.ref!r}: the weights of text {row} ({texts[row][:60]!r}) are not "
                             f"finite; in {self.precision.name} this is usually an overflow of the MLM logits: use "
                             "bf16 or fp32")
        return out

    def describe(self) -> dict:
        model = models.describe(self.ref, self.spec.revision)
        model["untrained"] = model["untrained"] or models.describe(self.source)["untrained"]
        out = {"engine": self.engine, "model": model, "architecture": type(self.hf).__name__,
               "dtype": self.precision.name, "dtype_requested": self.precision.requested, "device": self.device,
               "max_length": self.max_length, "vocab": self.vocab, "formula": FORMULA,
               "special_tokens": self.special_tokens, "special_ids_dropped": self.drop_ids}
        if self.engine == "fast":
            out.update(head=f"MLM head over real tokens only, {self.chunk_tokens} tokens x {self.vocab} logits at "
                            "a time, folded into the per-text maximum",
                       max_texts_per_batch=self.max_texts, **self.budget.describe(),
                       **(self.packed.describe() if self.packed is not None else
                          {"forward": "hf", "attention": f"hf-{self.hf.config._attn_implementation}-padded",
                           "packed_unsupported": self.fallback_reason}))
        else:
            out.update(batch_size=self.spec.batch_size, head="AutoModelForMaskedLM logits [batch, length, vocab], "
                       "padded batches in input order")
        return out

    # -- engines ------------------------------------------------------------------------------------------
    def _fast(self, texts: list[str]):
        torch = lazy.torch
        rows = sparse.SparseRows(self.vocab)

        def forward(batch):
            if self.packed is not None:
                hidden, cu = self.packed(batch), batch.cu_seqlens
            else:  # padded Hugging Face forward; the head still sees real tokens only
                out = self.hf.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
                mask = batch.attention_mask.bool()
                cu = torch.zeros(batch.n + 1, dtype=torch.int32, device=out.device)
                cu[1:] = mask.sum(1).cumsum(0)
                hidden = out[mask]
            seq, ids, weights = heads.splade_weights(hidden, cu, self.head, self.vocab, chunk_tokens=self.chunk_tokens,
                                                     drop_ids=self.drop_ids)
            return rows.add(seq, ids, weights, batch.n)[:, None]

        out, counts = self.loop.run(texts, self.text_tokenizer, forward)
        self._tokens += counts.tokens
        return rows.matrix(out[:, 0].astype(np.int64))

    def _plain(self, texts: list[str]):
        """The authors' loop: padded batches in input order, the whole logits tensor, then the formula."""
        torch = lazy.torch
        scipy_sparse = lazy.scipy_sparse
        blocks = []
        for s in range(0, len(texts), self.spec.batch_size):
            enc = self.tokenizer(texts[s:s + self.spec.batch_size], truncation=True, max_length=self.max_length,
                                 padding=True, return_tensors="pt").to(self.device)
            logits = self.hf(**enc).logits
            mask = enc["attention_mask"]
            weights = torch.max(heads.splade_activation(logits) * mask.unsqueeze(-1), dim=1).values.float()
            if self.drop_ids:
                weights[:, self.drop_ids] = 0
            blocks.append(scipy_sparse.csr_matrix(weights.cpu().numpy()))
            self._tokens += int(mask.sum())
            advance(weights.shape[0])
        return scipy_sparse.vstack(blocks, format="csr").astype(np.float32)


class IdfQueries:
    """Inference-free queries (OpenSearch's doc-only models): each distinct token of a query weighs its
    entry in the model's ``idf.json`` (token -> weight); no model runs."""

    def __init__(self, tokenizer, path: Path, vocab: int, max_length: int):
        self.tokenizer, self.path, self.vocab, self.max_length = tokenizer, path, vocab, max_length
        table = json.loads(Path(path).read_text(encoding="utf-8"))
        self.idf = np.zeros(vocab, dtype=np.float32)
        unk = tokenizer.unk_token_id
        for token, weight in table.items():
            i = tokenizer.convert_tokens_to_ids(token)
            if i is not None and (i != unk or token == tokenizer.unk_token) and 0 <= i < vocab:
                self.idf[i] = weight

    def encode(self, texts: Sequence[str]):
        rows, cols = [], []
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"] if texts else []
        for r, seq in enumerate(ids):
            distinct = sorted(set(seq))
            rows += [r] * len(distinct)
            cols += distinct
        cols = np.asarray(cols, dtype=np.int64)
        out = lazy.scipy_sparse.csr_matrix((self.idf[cols], (np.asarray(rows, dtype=np.int64), cols)),
                                           shape=(len(ids), self.vocab), dtype=np.float32)
        out.eliminate_zeros()
        return out

    def describe(self) -> dict:
        return {"engine": "idf look-up (no model)", "file": str(self.path), "max_length": self.max_length,
                "formula": "each distinct query token: its idf.json weight"}


class SpladeEncoder:
    """A SPLADE first stage's encoders: documents by the masked-LM model, queries by the same model, a
    second one, or the idf look-up (``query_side``)."""

    def __init__(self, spec, *, cache_dir=None, device: str | None = None, where: str = "first_stages.<name>",
                 **options):
        """`where`: the stage's place in the experiment, for messages (``first_stages.splade``)."""
        devices = resolve_devices(device or spec.device)
        self.spec = spec
        self.devices_visible = devices
        self.query_mode, special = query_side(spec)
        self.docs = MaskedLM(spec.model, spec, cache_dir=cache_dir, device=devices[0], special_tokens=special,
                             where=f"{where}.model", **options)
        if self.query_mode == "model":
            self.queries = self.docs
        elif self.query_mode == "idf":
            path = model_file(self.docs.source, IDF_FILE, spec.revision)
            self.queries = IdfQueries(self.docs.tokenizer, path, self.docs.vocab, self.docs.max_length)
        else:
            self.queries = MaskedLM(self.query_mode, spec.model_copy(update={"revision": None}), cache_dir=cache_dir,
                                    device=devices[0], special_tokens=special, where=f"{where}.query_encoder",
                                    **options)
            if self.queries.vocab != self.docs.vocab:
                raise BenchError(f"kind = 'splade': query model {self.query_mode!r} has a vocabulary of "
                                 f"{self.queries.vocab}, the document model {spec.model!r} {self.docs.vocab}")

    def encode_docs(self, texts: Sequence[str]):
        return self.docs.encode(texts)

    def encode_queries(self, texts: Sequence[str]):
        return self.queries.encode(texts)

    def encode_shards(self, items: Iterable[tuple[object, list[str]]]) -> Iterator[tuple[object, object]]:
        """(key, CSR weights) per (key, texts) item, in order: how a corpus is built, on any backend."""
        for key, texts in items:
            yield key, self.encode_docs(texts)

    def describe(self) -> dict:
        out = {**self.docs.describe(), "query_encoder": self.query_mode,
               "query_encoder_source": known_model(self.spec.model).source if not self.spec.query_encoder
               else "set in the experiment"}
        if self.queries is not self.docs:
            out["queries"] = self.queries.describe()
        if len(self.devices_visible) > 1:
            out["devices_unused"] = self.devices_visible[1:]  # encoding is single-device
        return out

    def close(self) -> None:
        """Nothing to release (the models go with the object)."""


def model_file(source: str, name: str, revision: str | None) -> Path:
    """A file beside the model: in its folder, else from its hub repo."""
    if Path(source).exists():
        path = Path(source) / name
        if not path.is_file():
            raise BenchError(f"{source}: no {name} (query_encoder = 'idf' reads the model's {name})")
        return path
    try:
        return Path(lazy.huggingface_hub.hf_hub_download(source, name, revision=revision))
    except Exception as exc:  # offline, missing file, unknown repo: one message for all
        raise BenchError(f"{name} of {source!r} (revision {revision}): cannot fetch: {exc}") from None


# -- the first stage --------------------------------------------------------------------------------------
def weights_entry(cache_root, spec, collection, described: dict) -> Path:
    """The cache entry of a collection's corpus weights under `spec`, from the encoder's own description
    (what it runs: precision, effective max_length, special tokens). Every backend keys shards here."""
    return entry(cache_root, "embeddings", f"{collection.name}-{Path(spec.model).name}-splade",
                 model=spec.model, revision=spec.revision, corpus=collection.corpus_fingerprint(),
                 max_length=described["max_length"], dtype=described["dtype"], engine=spec.engine,
                 special_tokens=described["special_tokens"], weights=FORMULA)


def corpus_store(encoder: SpladeEncoder, collection, cache_root, *, shard_size: Callable[[int | None], int],
                 progress: bool) -> tuple[sparse.SparseStore, dict]:
    """The corpus's weights, encoded once and cached in checked shards (resumable).
    ``shard_size(laid_out)``: the shard size, given the one the entry was written with (if any)."""
    folder = weights_entry(cache_root, encoder.spec, collection, encoder.docs.describe())
    store = sparse.SparseStore(folder)
    store.shard_size = shard_size(store.laid_out_shard_size())
    built = {"encoded_docs": 0, "reused_docs": collection.n_docs()}
    t0 = time.perf_counter()
    if not store.complete():
        built = store.build(collection.iter_docs(batch_size=store.shard_size), encode_shards=encoder.encode_shards,
                            n_docs=collection.n_docs(), storage_dtype="float32", progress=progress)
    return store, {"folder": str(folder), "storage_dtype": "float32", "shard_size": store.shard_size, **built,
                   "encode_seconds": time.perf_counter() - t0,
                   "bytes": sum(p.stat().st_size for p in Path(folder).glob("shard-*.sparse.npz"))}


def retrieve(encoder: SpladeEncoder, collection, cache_root, k: int, *, shard_size: Callable[[int | None], int],
             progress: bool) -> tuple[dict, dict]:
    """Top-``k`` per query by exact sparse inner product (integer impacts with ``quantize``), and the
    account of how (records keep it)."""
    spec = encoder.spec
    store, built = corpus_store(encoder, collection, cache_root, shard_size=shard_size, progress=progress)
    qids = sorted(collection.queries)
    t0 = time.perf_counter()
    q, quantized = searched_queries(spec, encoder.encode_queries([collection.queries[qid] for qid in qids]))
    counted = {"docs": 0, "terms": 0}

    def shards():
        for ids, weights in store.shards():
            counted["docs"] += weights.shape[0]
            counted["terms"] += weights.nnz
            yield ids, weights if spec.quantize is None else sparse.quantize(weights, spec.quantize)

    hits = sparse.sparse_top_k(q, shards(), k, progress=progress, n_docs=collection.n_docs())
    t_search = time.perf_counter() - t0
    info = {**search_info(q, quantized, counted), "encoder": encoder.describe(), "embeddings": built,
            "encode_seconds": built["encode_seconds"], "search_seconds": t_search,
            "docs_per_second": built["encoded_docs"] / built["encode_seconds"] if built["encoded_docs"] else None}
    return dict(zip(qids, hits)), info


def searched_queries(spec, q) -> tuple[object, dict | None]:
    """The queries' weights as searched (integer impacts with ``quantize``) and what the record states
    about the quantisation (None without it). Every backend searches with these."""
    if spec.quantize is None:
        return q, None
    query_factor = spec.query_quantize or spec.quantize
    return sparse.quantize(q, query_factor), {
        "documents": spec.quantize, "queries": query_factor,
        "rule": "round(w x factor), half to even, zeros dropped; scores are integer inner products"}


def search_info(q, quantized: dict | None, counted: dict) -> dict:
    """What a record states about a search: the method, the quantisation, the terms per passage
    (``counted``: passages and stored terms searched) and per query."""
    return {"method": "splade exact sparse inner product" + (" over integer impacts" if quantized else ""),
            "quantize": quantized, "terms_per_passage": counted["terms"] / counted["docs"] if counted["docs"] else None,
            "terms_per_query": q.nnz / q.shape[0] if q.shape[0] else None}
