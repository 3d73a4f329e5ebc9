"""Bi-encoder encoding for the first stage: texts -> L2-normalised float32 embeddings.

Pooling is the sentence-transformers model's own (its ``Pooling`` module's modes); embeddings are
L2-normalised (the model's ``Normalize`` module, or added here when the model has none: exact search
runs over normalised vectors; ``describe()`` says which). Engines:

* ``fast``: the same token-budget batching and padding-free packed forward as the fast reranker
  (``bench.engine``), reusing the loaded model's parameters; equal to ``SentenceTransformer.encode``
  within 1e-4 in fp32. With CLS pooling alone (the BGE models) the last layer is computed for the
  first tokens only (``bench.engine.packed``). Architectures outside the BERT family run the Hugging
  Face forward over padded, length-sorted batches (recorded as ``forward = "hf"``);
* ``sentence-transformers``: ``SentenceTransformer.encode(texts, batch_size, normalize_embeddings=True)``.
"""

from __future__ import annotations

import re
import time
from typing import Iterable, Iterator, Sequence

import numpy as np

from .. import lazy, models
from ..engine import packed
from ..engine.batching import TokenBudget
from ..engine.common import PACKED_OPTIONS, check_max_length, default_token_budget, load_error
from ..engine.device import AUTO_CUDA, matmul_precision, resolve_devices, resolve_precision
from ..engine.loop import BatchLoop
from ..engine.tokens import TextTokenizer
from ..errors import BenchError

BGE_EN_INSTRUCTION = "Represent this sentence for searching relevant passages: "
BGE_ZH_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："


def default_query_instruction(model_ref: str) -> str:
    """The query prefix a model was trained with (FlagEmbedding's model list for the BGE family).

    bge-{small,base,large}-en[-v1.5]: the English retrieval instruction; bge-*-zh[-v1.5]: the Chinese
    one; bge-m3 and every other model: none."""
    name = model_ref.rstrip("/").split("/")[-1].split(":")[-1].lower()
    if re.fullmatch(r"bge-(small|base|large)-en(-v1\.5)?", name):
        return BGE_EN_INSTRUCTION
    if re.fullmatch(r"bge-(small|base|large)-zh(-v1\.5)?", name):
        return BGE_ZH_INSTRUCTION
    return ""


class _Seqs:
    """cu_seqlens view of a padded batch, so padded hidden states pool like packed ones."""

    def __init__(self, cu_seqlens):
        self.cu_seqlens = cu_seqlens


class Encoder:
    """One job: texts -> L2-normalised float32 embeddings, as the sentence-transformers model
    defines pooling. ``encode_queries`` prepends the query instruction; ``encode_docs`` does not."""

    def __init__(self, spec, *, cache_dir=None, device: str | None = None, attention: str = "auto",
                 compile: bool = False, token_budget: int | None = None, first_chunk: int = 512,
                 largest_chunk: int = 16384, **packed_options):
        if spec.kind != "dense" or not spec.model:
            raise BenchError(f"first stage kind {spec.kind!r}: only 'dense' first stages have an encoder")
        devices = resolve_devices(device or spec.device)
        self.device = devices[0]
        self.devices_visible = devices
        self.spec = spec
        self.engine = spec.engine
        self.precision = resolve_precision(spec.dtype, self.device, AUTO_CUDA[spec.engine])
        if spec.engine == "fast":
            attention = packed.choose_attention(attention, self.device, self.precision.half)
        self.source = models.resolve(spec.model, cache_dir)
        try:
            self.st = lazy.sentence_transformers.SentenceTransformer(
                self.source, device=self.device, revision=spec.revision,
                model_kwargs={"dtype": self.precision.torch_dtype})
        except (OSError, ValueError) as exc:
            raise load_error("bi-encoder", spec, exc) from None
        self.st.eval()
        self.instruction = (spec.query_instruction if spec.query_instruction is not None
                            else default_query_instruction(spec.model))
        self.max_length = min(spec.max_length, self.st.max_seq_length or spec.max_length)
        check_max_length(self.st[0].model.config, self.max_length, f"bi-encoder {spec.model!r}")
        self.st.max_seq_length = self.max_length
        self.dim = int(self.st.get_embedding_dimension())
        self.modules = [type(m).__name__ for m in self.st]
        self.model_normalizes = "Normalize" in self.modules
        self._seconds, self._texts, self._tokens = 0.0, 0, 0
        if self.engine == "fast":
            self._setup_fast(attention, compile, token_budget, first_chunk, largest_chunk, packed_options)
        elif packed_options:
            raise BenchError(f"bi-encoder options {sorted(packed_options)} need engine = 'fast'")

    # -- fast engine --------------------------------------------------------------------------------------
    def _setup_fast(self, attention, compile, token_budget, first_chunk, largest_chunk, packed_options):
        shape = [m for m in self.modules if m != "Normalize"]
        if shape != ["Transformer", "Pooling"] or (self.model_normalizes and self.modules[-1] != "Normalize"):
            raise BenchError(f"bi-encoder {self.spec.model!r}: modules {self.modules}; the fast engine implements "
                             "Transformer -> Pooling [-> Normalize]. Use engine = 'sentence-transformers'")
        pooling = self.st[1]
        mode = pooling.pooling_mode
        self.pooling = (mode,) if isinstance(mode, str) else tuple(mode)
        self.hf = self.st[0].model
        self.tokenizer = self.st.tokenizer
        self.text_tokenizer = TextTokenizer(self.tokenizer, self.max_length)
        reason = packed.unsupported_reason(self.hf.config)
        self.forward_kind = "packed" if reason is None else "hf"
        self.fallback_reason = reason
        if reason is None:
            unknown = sorted(set(packed_options) - set(PACKED_OPTIONS))
            if unknown:
                raise BenchError(f"bi-encoder: unknown option(s) {unknown}; known: {', '.join(PACKED_OPTIONS)}")
            self.packed = packed.PackedEncoder(self.hf, attention, compile=compile, **packed_options)
            offset, padded = self.packed.position_offset, False
        elif packed_options:
            raise BenchError(f"bi-encoder {self.spec.model!r}: options {sorted(packed_options)} need the packed "
                             f"forward, which this model does not run ({reason})")
        else:
            self.packed, offset, padded = None, 0, True
        self.first_only = self.pooling == ("cls",) and self.packed is not None
        self.budget = TokenBudget(token_budget or self.spec.token_budget or default_token_budget(self.device))
        self.max_texts = self.spec.batch_size if "batch_size" in self.spec.model_fields_set else None
        self.loop = BatchLoop(self.device, self.budget, padded=padded, pad_id=self.tokenizer.pad_token_id or 0,
                              position_offset=offset, max_items=self.max_texts,
                              first_chunk=first_chunk, largest_chunk=largest_chunk)

    def _forward(self, batch):
        torch = lazy.torch
        if self.first_only:  # CLS pooling reads the first tokens only
            return torch.nn.functional.normalize(self.packed(batch, first_only=True).float(), dim=-1)
        if self.packed is not None:
            hidden, seqs = self.packed(batch), batch
        else:
            out = self.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          token_type_ids=batch.token_type_ids).last_hidden_state
            mask = batch.attention_mask.bool()
            lengths = mask.sum(1)
            cu = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=lengths.device)
            cu[1:] = lengths.cumsum(0)
            hidden, seqs = out[mask], _Seqs(cu)
        return torch.nn.functional.normalize(packed.pool(hidden, seqs, self.pooling), dim=-1)

    # -- public -------------------------------------------------------------------------------------------
    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode([self.instruction + t for t in texts], "queries")

    def encode_docs(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(list(texts), "docs")

    def encode_shards(self, items: Iterable[tuple[object, list[str]]]) -> Iterator[tuple[object, np.ndarray]]:
        """(key, vectors) per (key, texts) item, in order: how a corpus is built, whatever the devices
        (`ShardEncoderPool` offers the same over several)."""
        for key, texts in items:
            yield key, self.encode_docs(texts)

    def _encode(self, texts: list[str], what: str) -> np.ndarray:
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise BenchError(f"{what}[{i}]: expected a string, got {type(t).__name__}")
        t0 = time.perf_counter()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with lazy.torch.inference_mode(), matmul_precision(self.precision):
            if self.engine == "fast":
                out, counts = self.loop.run(texts, self.text_tokenizer, self._forward)
                self._tokens += counts.tokens
            else:
                out = self.st.encode(texts, batch_size=self.spec.batch_size, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=False)  # the step's bar counts
        out = np.ascontiguousarray(out, dtype=np.float32)
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if len(bad):
            raise BenchError(f"bi-encoder {self.spec.model!r}: embedding of {what}[{bad[0]}] is not finite "
                             f"({len(bad)} of {len(out)}); with fp16 this is usually an overflow: use bf16 or fp32")
        self._seconds += time.perf_counter() - t0
        self._texts += len(texts)
        return out

    def close(self) -> None:
        """Nothing to release (the model goes with the object); here so that one device and several
        (`ShardEncoderPool`) are used alike."""

    def stats(self) -> dict:
        """Texts encoded, real tokens (fast engine), seconds inside encode calls."""
        return {"texts": self._texts, "tokens": self._tokens if self.engine == "fast" else None,
                "seconds": self._seconds}

    def describe(self) -> dict:
        model = models.describe_loaded(self.spec.model, self.spec.revision, self.source)
        out = {"engine": self.engine, "model": model, "revision": self.spec.revision,
               "query_instruction": self.instruction, "dtype": self.precision.name,
               "dtype_requested": self.precision.requested, "device": self.device,
               "max_length": self.max_length, "max_length_requested": self.spec.max_length, "dim": self.dim,
               "modules": self.modules,
               "normalize": "model" if self.model_normalizes else "added (the model has no Normalize module)"}
        if len(self.devices_visible) > 1:
            out["devices_unused"] = self.devices_visible[1:]  # encoding is single-device
        if self.engine == "fast":
            out.update(pooling=list(self.pooling), forward=self.forward_kind, prune_last_layer=self.first_only,
                       max_texts_per_batch=self.max_texts, **self.budget.describe())
            out.update(self.packed.describe() if self.packed is not None else
                       {"attention": f"hf-{self.hf.config._attn_implementation}-padded",
                        "packed_unsupported": self.fallback_reason})
        else:
            out["batch_size"] = self.spec.batch_size
        return out


def build_single(spec, device: str, *, cache_dir=None, options: dict | None = None) -> Encoder:
    """The bi-encoder of a dense first stage on one device. ``options``: fast-engine keywords
    (``attention``, ``compile``, ``token_budget``, ``first_chunk``, ``largest_chunk``, and the packed
    forward's ``gelu_epilogue`` and ``fused_add_norm``)."""
    options = dict(options or {})
    if options and spec.engine != "fast":
        raise BenchError(f"bi-encoder engine {spec.engine!r} takes no options (got {sorted(options)})")
    return Encoder(spec, cache_dir=cache_dir, device=device, **options)
