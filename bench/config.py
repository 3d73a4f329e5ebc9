"""Experiment specs: what to run, as typed settings with clear errors.

An experiment file (TOML) declares datasets × first stages × rerankers × evaluation. Each stage
reads its own settings model below; unknown fields, wrong types and bad values are errors that
name the file and the field path (``rerankers[1].dtype``), never silently ignored.

Layout of an experiment file::

    name = "default"
    [first_stages.bge-base-en]          # named first stages, referenced by datasets
    kind = "dense"
    model = "BAAI/bge-base-en-v1.5"
    depth = 100

    [[datasets]]
    source = "ir_datasets"
    id = "msmarco-passage/trec-dl-2019/judged"
    first_stage = "bge-base-en"

    [[rerankers]]
    model = "BAAI/bge-reranker-large"
    dtype = "bf16"

    [evaluation]
    metrics = ["nDCG@10", "MRR@10", "Recall@100"]
"""

from __future__ import annotations

import difflib
import json
import sys
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .engine.common import FAST_OPTIONS
from .engine.device import DTYPES, ENGINES
from .engine.prompts import CUSTOM, CUSTOM_WITH_INSTRUCTION, check_custom_template, template_kind
from .errors import BenchError
from .metrics import MetricName, unique_metrics
from .models.decoders import DECODER_ARCHITECTURES
from .models.python import PYTHON_PREFIX, file_relative_to
from .models.references import RANDOM_PREFIX, masked_lm_reference_problem, reference_problem
from .systems import pipeline_label

Dtype = Literal[DTYPES]
Engine = Literal[ENGINES]
#: Where each language goes in the id of a dataset entry that expands over ``languages``.
LANG = "{lang}"
DTYPE_HELP = ("one of auto (the engine's own default on CUDA: fp16 for the fast engine, fp32 on CPU; the record "
              "states which), fp32, tf32, fp16, bf16")


class Spec(BaseModel):
    """Base of every settings model: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CollectionSpec(Spec):
    """Where a collection comes from.

    * ``source = "ir_datasets"``: ``id`` is an ir_datasets id (``msmarco-passage/dev/small``,
      ``miracl/yo/dev``, ``beir/scifact/test``, ``nano-beir/arguana``). With ``languages`` the entry
      stands for one collection per language: ``id = "miracl/{lang}/dev"``, ``languages = ["yo", "sw"]``
      (``bench.data.expand``).
    * ``source = "beir"``: ``path`` is a folder in BEIR layout; ``split`` picks ``qrels/<split>.tsv``.
    * ``source = "synthetic"``: the project's own generator (known answers), sized by ``synthetic``.
    """

    source: Literal["ir_datasets", "beir", "synthetic"]
    id: str | None = None
    path: str | None = None
    split: str | None = Field(None, description="beir: picks qrels/<split>.tsv (default test); ir_datasets ids include the split")
    name: str | None = Field(None, description="label in tables; default derived from id/path")
    language: str | None = Field(None, description="ISO 639-1 code; ir_datasets/MIRACL ids set it")
    languages: list[str] | None = Field(None, description="ir_datasets: one collection per language, each with "
                                                          "{lang} in id replaced (e.g. id = 'miracl/{lang}/dev')")
    max_queries: int | None = Field(None, gt=0, description="keep the first N queries (sorted by id) to bound run time")
    synthetic: dict | None = Field(None, description="generator options (languages, docs per language, seed...)")
    first_stage: str | list[str] | None = Field(
        None, description="name of an entry in [first_stages], or a list of them (each its own pipelines, every "
                          "reranker reranking each); default: the only one")
    on_empty: Literal["count", "error"] = Field("count", description="empty query texts and passages (no title, "
                                                "no text): counted and recorded, or an error")

    @model_validator(mode="before")
    @classmethod
    def _default_split(cls, data):
        if isinstance(data, dict) and data.get("source") == "beir" and data.get("split") is None:
            data = {**data, "split": "test"}
        return data

    @model_validator(mode="after")
    def _source_fields(self):
        if self.source == "ir_datasets" and self.split is not None:
            raise ValueError(f"split = {self.split!r} has no effect for ir_datasets: the id names the split "
                             f"(e.g. 'miracl/yo/dev'); remove the field")
        need = {"ir_datasets": "id", "beir": "path", "synthetic": None}[self.source]
        if need and not getattr(self, need):
            raise ValueError(f"source = {self.source!r} needs field '{need}'")
        if self.languages is not None:
            if self.source != "ir_datasets":
                raise ValueError(f"languages expands an ir_datasets id; source = {self.source!r} does not take it"
                                 + (" (list them in synthetic.languages)" if self.source == "synthetic" else ""))
            if LANG not in self.id:
                raise ValueError(f"languages = {self.languages} needs {LANG} in id, where each language goes "
                                 f"(e.g. 'miracl/{LANG}/dev'); id is {self.id!r}")
            if not self.languages or len(set(self.languages)) != len(self.languages):
                raise ValueError(f"languages = {self.languages}: list each language once, at least one")
            if self.language:
                raise ValueError("set language (one collection) or languages (one per language), not both")
        elif self.source == "ir_datasets" and LANG in self.id:
            raise ValueError(f"id {self.id!r} holds {LANG}: list the languages it stands for in languages "
                             "(e.g. languages = ['yo', 'sw'])")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.source == "ir_datasets":
            return self.id
        if self.source == "beir":
            return f"{Path(self.path).name}/{self.split}"
        return "synthetic"


class BgeM3Weights(Spec):
    """Weights of bge-m3's scores when combined (FlagEmbedding's MKQA scripts: dense 1, sparse 0.3, colbert 1)."""

    dense: float = 1.0
    sparse: float = 0.3
    colbert: float = 1.0


# -- which field acts where ----------------------------------------------------------------------
# One table per component says which of its optional fields act for which kind (first stages) or
# scoring head (rerankers). A field an experiment sets where it does nothing is an error at load
# time naming it (`inert_fields`), never a setting the record states as if it had been used.
# A new kind or head is one row here.

_ENCODER_FIELDS = ("model", "revision", "query_instruction", "dtype", "max_length", "batch_size", "token_budget",
                   "engine", "search_chunk", "device", "shard_size")
#: The FirstStageSpec fields each kind reads, besides those every kind reads (`FIRST_STAGE_COMMON`).
FIRST_STAGE_FIELDS = {
    "dense": _ENCODER_FIELDS,
    "bge-m3": (*_ENCODER_FIELDS, "mode", "weights", "rescore_depth", "hybrid_depth"),
    "bm25": ("preset", "k1", "b"),
    "run": ("path",),
    "scoreddocs": (),
    "splade": ("model", "revision", "dtype", "max_length", "batch_size", "token_budget", "engine", "device",
               "shard_size", "quantize", "query_quantize", "query_encoder", "special_tokens"),
    "fusion": ("first_stages", "method", "rrf_k", "norm", "fusion_weights"),
}
FIRST_STAGE_COMMON = ("kind", "name", "depth", "remove_query_id")
#: Fields that shape cache files, not results: left out of a first stage's description in records.
LAYOUT_FIELDS = ("shard_size",)

#: Where a reranker field acts: always (None), or only with one of the listed engines or templates
#: (`bench.engine.prompts.template_kind`: a known template's name, "custom" or "custom {instruction}").
Acts = dict[str, tuple[str, ...]] | None
_FAST, _NOT_FAST = ("fast",), ("transformers", "sentence-transformers", "flag")
_DECODER_HEAD: dict[str, Acts] = {
    "template": None, "yes_token": None,
    "instruction": {"template": ("qwen3", "bge-gemma", "mxbai-v2", CUSTOM_WITH_INSTRUCTION)},
    "query_max_length": {"template": ("bge-gemma", CUSTOM, CUSTOM_WITH_INSTRUCTION)},  # qwen3, mxbai-v2 cut their own way
    "prefix_reuse": {"engine": _FAST}, "token_budget": {"engine": _FAST},
    "batch_size": {"engine": _NOT_FAST}, "trust_remote_code": {"engine": ("transformers",)},
}
#: The RerankerSpec fields each scoring head reads (`bench.rerank.scoring.HEADS`), and where; every
#: reranker reads the others (model, name, revision, engine, dtype, top_k, device, head).
_T5_HEAD: dict[str, Acts] = {"template": None, "yes_token": None, "no_token": None, "query_max_length": None,
                            "batch_size": {"engine": ("transformers",)}, "token_budget": {"engine": _FAST}}
_LISTWISE_HEAD: dict[str, Acts] = {"listwise": None, "batch_size": {"engine": ("transformers",)}}
RERANKER_FIELDS: dict[str, dict[str, Acts]] = {
    "classification": {"batch_size": None, "query_max_length": {"engine": ("fast", "flag")},
                       "token_budget": {"engine": _FAST}, "trust_remote_code": {"engine": ("transformers",)}},
    "yes_no": {**_DECODER_HEAD, "no_token": None},
    "token_logit": _DECODER_HEAD,
    "monot5": _T5_HEAD,
    "duot5": {**_T5_HEAD, "max_pairs_per_query": None, "duo_aggregation": None},
    "listwise": _LISTWISE_HEAD,
    "first": {**_LISTWISE_HEAD, "prefix_reuse": {"engine": _FAST}, "token_budget": {"engine": _FAST}},
}


#: The validation context key under which rerankers' fields are checked against `RERANKER_FIELDS`.
FIELDS_ACT = "fields_act"


def inert_fields(given: set[str], row: dict[str, Acts], governed: set[str], where: dict[str, str | None],
                 what: str, readers) -> list[str]:
    """Why each field in `given` that the table governs does nothing for this component (empty: all
    act). `row`: the fields its kind or head reads and where; `where`: its engine, template...;
    `readers(field)`: the kinds or heads that do read a field, for the message."""
    problems = []
    for name in sorted(given & governed):  # a field written as None (a default spelled out) is not set
        if name not in row:
            others = readers(name)
            problems.append(f"{name} does nothing for {what}" + (f" (only {others} read it)" if others else "")
                            + ": remove it")
            continue
        for axis, allowed in (row[name] or {}).items():
            if where.get(axis) not in allowed:
                problems.append(f"{name} does nothing for {what} with {axis} = {where.get(axis)!r} (it acts with "
                                f"{axis} {' or '.join(map(repr, allowed))}): remove it")
    return problems


#: BM25 settings of other toolkits, as closely as bm25s allows (docs/first-stages.md, "BM25 against Pyserini").
BM25_PRESETS = {"pyserini": {"k1": 0.9, "b": 0.4}}


class FirstStageSpec(Spec):
    """First-stage retrieval producing the candidates a reranker sees.

    * ``dense``: a sentence-transformers bi-encoder (``model``), exact inner-product search over
      normalised embeddings, corpus embeddings cached on disk.
    * ``bm25``: bm25s over the corpus (``k1``, ``b``; tokenisation stated in the record).
    * ``run``: candidates read from a TREC run file (``path``; may contain ``{dataset}``).
    * ``scoreddocs``: ir_datasets' own scored docs (MS MARCO's official BM25 top-1000).
    * ``bge-m3``: bge-m3's three heads from one forward (``bench.retrieve.bge_m3``), by ``mode``:
      ``dense``, ``sparse`` (exact search over cached lexical weights), ``dense+sparse`` (the union of
      both top ``hybrid_depth`` lists, weighted), ``multivec`` and ``all`` (the dense top
      ``rescore_depth`` rescored by the multi-vector head, alone or weighted with the other two).
    * ``splade``: a masked-LM SPLADE model (``bench.retrieve.splade``): max-pooled log(1 + relu(MLM
      logits)) term weights, cached per corpus shard, exact sparse search; ``quantize`` = integer impacts.
    * ``fusion``: two or more named first stages fused through ``ranx.fuse`` (``bench.retrieve.fusion``).
    """

    kind: Literal["dense", "bge-m3", "bm25", "run", "scoreddocs", "splade", "fusion"]
    name: str | None = Field(None, description="label in tables; default: its key in [first_stages]")
    depth: int = Field(100, gt=0, description="candidates kept per query")
    model: str | None = None
    revision: str | None = None
    query_instruction: str | None = Field(None, description="prefix for queries; None: the model's known default")
    dtype: Dtype = "auto"
    max_length: int = Field(512, gt=0)
    batch_size: int = Field(256, gt=0, description="texts per batch (upper bound when token_budget is set)")
    token_budget: int | None = Field(None, gt=0, description="max padded tokens per batch; None: engine default")
    engine: Literal["fast", "sentence-transformers", "transformers"] = Field(
        "fast", description="dense, bge-m3: fast or sentence-transformers; splade: fast or transformers (the "
                            "plain AutoModelForMaskedLM loop)")
    search_chunk: int = Field(65536, gt=0, description="corpus rows scored at once in exact search")
    shard_size: int | None = Field(None, gt=0, description="dense, bge-m3: passages per corpus embedding shard, the "
                                                            "unit an interrupted encoding keeps; None: about a "
                                                            "twentieth of the corpus (1,000 to 100,000)")
    path: str | None = None
    preset: Literal["pyserini"] | None = Field(None, description="bm25: 'pyserini' = Pyserini's k1 0.9, b 0.4 (fields "
                                                                 "set here still win; docs/first-stages.md says what differs)")
    k1: float = 1.5
    b: float = 0.75
    device: str = Field("auto", description="auto = every visible GPU (corpus shards spread over them) else "
                                            "the CPU; cpu; cuda:N; or several joined by commas")
    remove_query_id: bool = Field(False, description="drop, from each query's candidates, the passage whose id "
                                                     "equals the query id, before the depth cut (pyserini's "
                                                     "--remove-query; FlagEmbedding's pre-2024-07 MIRACL protocol)")
    mode: Literal["dense", "sparse", "multivec", "dense+sparse", "all"] | None = Field(
        None, description="kind = 'bge-m3': which head(s) rank the candidates")
    weights: BgeM3Weights | None = Field(None, description="kind = 'bge-m3': weights of dense, sparse and colbert "
                                                           "scores in dense+sparse and all (default 1, 0.3, 1)")
    rescore_depth: int | None = Field(None, gt=0, description="multivec / all: dense candidates rescored (default 100)")
    hybrid_depth: int | None = Field(None, gt=0, description="dense+sparse: depth of each list merged (default 1000)")
    # kind = "splade" (bench.retrieve.splade)
    quantize: float | None = Field(None, gt=0, description="splade: integer impacts round(w x quantize) at search "
                                                           "time, as Pyserini's impact index (100); None: float weights")
    query_quantize: float | None = Field(None, gt=0, description="splade: the queries' factor (default: quantize; "
                                                                 "Pyserini's PyTorch query encoder: 51.2)")
    query_encoder: str | None = Field(None, description="splade: 'model' (the same model), 'idf' (the model's idf.json, "
                                                        "no model: inference-free), or a second model for queries; "
                                                        "None: the known model's own")
    special_tokens: Literal["keep", "drop"] | None = Field(None, description="splade: whether special tokens get "
                                                                             "weights; None: the known model's own")
    # kind = "fusion" (bench.retrieve.fusion)
    first_stages: list[str] | None = Field(None, description="fusion: the first stages fused (names in [first_stages])")
    method: Literal["rrf", "combsum", "combmnz", "wsum"] | None = Field(None, description="fusion: ranx.fuse method "
                                                                                          "(default rrf)")
    rrf_k: int | None = Field(None, gt=0, description="fusion, method = 'rrf': k in 1 / (k + rank) (default 60)")
    norm: Literal["min-max", "max", "sum", "zmuv", "rank", "none"] | None = Field(
        None, description="fusion, combsum / combmnz / wsum: ranx's normalisation of each list (default min-max)")
    fusion_weights: dict[str, float] | None = Field(None, description="fusion, method = 'wsum': a weight per member")

    @field_validator("model")
    @classmethod
    def _known_model(cls, v, info):
        v = _checked_model(v)
        problem = v and info.data.get("kind") == "splade" and masked_lm_reference_problem(v)
        if problem:  # SPLADE reads a masked-LM head: refused now where it can be known without loading
            raise ValueError(problem)
        return v

    @field_validator("query_encoder")
    @classmethod
    def _known_query_encoder(cls, v):
        if v not in (None, "model", "idf"):
            problem = reference_problem(v) or masked_lm_reference_problem(v)
            if problem:
                raise ValueError(f"{problem} (or use 'model' or 'idf')")
        return v

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data):
        if isinstance(data, dict) and data.get("preset") is not None:
            if data.get("kind") != "bm25":
                raise ValueError(f"preset = {data['preset']!r} is a BM25 preset; kind is {data.get('kind')!r}")
            if data["preset"] in BM25_PRESETS:
                data = {**BM25_PRESETS[data["preset"]], **data}
        return data

    def settings(self) -> dict:
        """The fields that act for this kind (records describe a dense stage without BM25's k1 and b)."""
        acting = {*FIRST_STAGE_COMMON, *FIRST_STAGE_FIELDS[self.kind]} - {"name", *LAYOUT_FIELDS}
        return self.model_dump(mode="json", include=acting)

    @model_validator(mode="after")
    def _kind_fields(self):
        if self.kind == "dense" and not self.model:
            raise ValueError("kind = 'dense' needs field 'model' (e.g. 'BAAI/bge-base-en-v1.5')")
        if self.kind == "bge-m3" and (not self.model or not self.mode):
            raise ValueError("kind = 'bge-m3' needs fields 'model' (e.g. 'BAAI/bge-m3') and 'mode' "
                             "(dense, sparse, multivec, dense+sparse or all)")
        governed = {f for row in FIRST_STAGE_FIELDS.values() for f in row}
        problems = inert_fields(_given(self), dict.fromkeys(FIRST_STAGE_FIELDS[self.kind]), governed, {},
                                f"kind = {self.kind!r}", lambda f: _kinds(f, FIRST_STAGE_FIELDS, "kind"))
        if problems:
            raise ValueError("; ".join(problems))
        self._splade_fields()
        self._fusion_fields()
        if self.kind == "run" and not self.path:
            raise ValueError("kind = 'run' needs field 'path' (a TREC run file)")
        return self

    def _splade_fields(self) -> None:
        """kind = "splade"'s own checks (which fields act for which kind is `FIRST_STAGE_FIELDS`)."""
        if self.kind != "splade":
            if self.engine == "transformers":
                raise ValueError(f"engine = 'transformers' is kind = 'splade''s plain loop; kind = {self.kind!r} "
                                 "takes 'fast' or 'sentence-transformers'")
            return
        if not self.model:
            raise ValueError("kind = 'splade' needs field 'model' (e.g. 'naver/splade-cocondenser-ensembledistil')")
        if self.engine == "sentence-transformers":
            raise ValueError("engine: kind = 'splade' takes 'fast' (packed forward, fused MLM head) or 'transformers' "
                             "(the plain AutoModelForMaskedLM loop)")
        if self.query_quantize is not None and self.quantize is None:
            raise ValueError("query_quantize scales query weights to integer impacts; set quantize (the documents' "
                             "factor, e.g. 100) too")

    def _fusion_fields(self) -> None:
        """kind = "fusion"'s own checks (which fields act for which kind is `FIRST_STAGE_FIELDS`)."""
        if self.kind != "fusion":
            return
        members = self.first_stages or []
        if len(members) < 2 or len(set(members)) != len(members):
            raise ValueError(f"first_stages = {members}: a fusion names two or more distinct first stages")
        method = self.method or "rrf"
        if method == "rrf" and self.norm is not None:
            raise ValueError(f"norm = {self.norm!r}: method 'rrf' reads ranks only; a normalisation is for "
                             "combsum, combmnz or wsum")
        if method != "rrf" and self.rrf_k is not None:
            raise ValueError(f"rrf_k: only method = 'rrf' takes it (method is {method!r})")
        if method == "wsum":
            if self.fusion_weights is None or set(self.fusion_weights) != set(members):
                raise ValueError(f"method = 'wsum' needs fusion_weights with one weight per member: "
                                 f"{{{', '.join(f'{m} = ...' for m in members)}}}"
                                 + (f"; got {sorted(self.fusion_weights)}" if self.fusion_weights else ""))
        elif self.fusion_weights is not None:
            raise ValueError(f"fusion_weights: only method = 'wsum' takes them (method is {method!r})")


class ListwiseSpec(Spec):
    """How a listwise reranker (head ``listwise`` or ``first``) slides its windows and builds its prompts,
    with rank_llm's defaults (``bench.rerank.listwise``); a known model's 2CR command settings fill in what
    the experiment leaves out."""

    window: int = Field(20, gt=1, description="passages per window")
    stride: int = Field(10, gt=0, description="positions the window moves up each step (less than window)")
    passes: int = Field(1, gt=0, description="sliding-window passes, each over the order the previous left")
    variable_passages: bool = Field(False, description="the prompt's answer example for windows of any size "
                                                       "([2] > [1]) rather than full windows ([4] > [2])")
    context_size: int = Field(4096, gt=0, description="prompt plus answer tokens; passages are cut by words to fit")
    prompt_template: str = Field("rank_zephyr", description="rank_zephyr, rank_zephyr_alpha, rank_gpt, or a "
                                                            "rank_llm template file (*.yaml)")
    max_new_tokens: int | None = Field(None, gt=0, description="head listwise: cap on generated tokens; None: "
                                                               "rank_llm's, the tokens of a complete answer")
    max_passage_words: int = Field(300, gt=0, description="words per passage before any cut (rank_llm's default)")

    @model_validator(mode="after")
    def _consistent(self):
        from .rerank.listwise.templates import template_problem  # bench.rerank imports this module (via bench.data)

        if self.stride >= self.window:
            raise ValueError(f"stride = {self.stride} must be less than window = {self.window} (each window must "
                             "overlap the next, as rank_llm's sliding windows do)")
        problem = template_problem(self.prompt_template, self.window)
        if problem:
            raise ValueError(problem)
        return self


#: RerankerSpec fields a listwise head does not read (each has its listwise counterpart or none).
NOT_LISTWISE = {"max_length": "listwise.context_size bounds the prompt", "query_max_length": "",
                "template": "use listwise.prompt_template", "instruction": "", "yes_token": "", "no_token": ""}


class RerankerSpec(Spec):
    """A cross-encoder reranking the first stage's top ``top_k``.

    ``engine``: ``fast`` (the project's engine), or a faithful baseline: ``transformers`` (plain
    loop), ``sentence-transformers`` (``CrossEncoder.predict``), ``flag`` (FlagEmbedding-style fp16
    length-sorted batches). Scores are float32 logits (no sigmoid: it does not change the order).
    """

    model: str
    name: str | None = Field(None, description="label in tables; default: last part of model")
    revision: str | None = None
    engine: Engine = "fast"
    dtype: Dtype = "auto"
    top_k: int = Field(100, gt=0)
    max_length: int = Field(512, gt=0)
    query_max_length: int | None = Field(None, gt=0, description="truncate queries first; None: no separate limit")
    batch_size: int = Field(32, gt=0, description="pairs per batch (baselines); caps the fast engine's pairs "
                                                  "per batch only when set explicitly")
    token_budget: int | None = Field(None, gt=0, description="max tokens per batch for the fast engine; None: its default")
    device: str = Field("auto", description="auto = every visible GPU (one process each) else the CPU; cpu; "
                                            "cuda:N; or several joined by commas")
    # Decoder rerankers (bench.rerank.scoring): None = the known model's own choice. monot5 / duot5: a
    # T5 reranker (bench.rerank.seq2seq), set by a known model (KNOWN_SEQ2SEQ) when left out; listwise / first:
    # an LLM ordering windows of candidates (bench.rerank.listwise, KNOWN_LISTWISE).
    head: Literal["classification", "yes_no", "token_logit", "monot5", "duot5", "listwise", "first"] | None = None
    template: str | None = Field(None, description="qwen3, bge-gemma, mxbai-v2, or a string with {query} and {passage}")
    instruction: str | None = Field(None, description="task instruction (Qwen3's <Instruct>, mxbai's instruction:)")
    yes_token: str | None = Field(None, description="the word whose logit scores relevance (default: the model's)")
    no_token: str | None = Field(None, description="yes_no head: the word whose logit is subtracted")
    prefix_reuse: bool = Field(True, description="fast engine, decoder heads: each query's prompt prefix computed once")
    trust_remote_code: bool = Field(False, description="allow a model's own modelling code (Hugging Face forward only)")
    # Chains and duoT5 (bench.rerank.seq2seq; README of docs/reranker-families.md, "Chains: rerank_of").
    rerank_of: str | None = Field(None, description="the label of a reranker listed before this one: rerank its "
                                                    "output run (for each first stage) instead of the first stage's")
    max_pairs_per_query: int | None = Field(None, gt=0, description="duot5: pairs per query allowed, "
                                            "top_k·(top_k-1) (default 2,450 = 50·49); raise it to confirm more")
    duo_aggregation: Literal["sym-sum", "rank_llm"] | None = Field(
        None, description="duot5: sym-sum over every ordered pair (the paper, pygaggle; the default) or rank_llm "
                          "(each pair i < j once, p to i and 1 - p to j: how rank_llm's 2CR rows were made)")
    options: dict[str, Any] = Field({}, description="python: rerankers: keyword arguments for the class")
    listwise: ListwiseSpec | None = Field(None, description="head listwise / first: sliding windows and prompts "
                                                            "(window, stride, passes, variable_passages, context_size, "
                                                            "prompt_template, max_new_tokens, max_passage_words)")

    @model_validator(mode="before")
    @classmethod
    def _known_listwise(cls, data):
        """A known listwise model (``bench.rerank.listwise.KNOWN_LISTWISE``) sets its head and, under it,
        the settings of rank_llm's command for it; the experiment's own fields win. A listwise head
        generates with the transformers engine unless the experiment names another."""
        from .rerank.listwise import LISTWISE_HEADS, known_listwise  # bench.rerank imports this module

        if not isinstance(data, dict) or not isinstance(data.get("model"), str):
            return data
        _, known = known_listwise(data["model"])
        head = data.get("head") or (known.head if known else None)
        if head not in LISTWISE_HEADS:
            return data
        given = data.get("listwise") if isinstance(data.get("listwise"), dict) else {}
        defaults = known.settings if known and known.head == head else {}
        data = {**data, "head": head, "listwise": {**defaults, **given}}
        if head == "listwise" and "engine" not in data:
            data["engine"] = "transformers"
        return data

    @model_validator(mode="after")
    def _listwise_fields(self):
        if self.head not in ("listwise", "first"):
            if self.listwise is not None:
                raise ValueError("listwise: these settings are for head = 'listwise' or 'first'")
            return self
        unused = [f for f in NOT_LISTWISE if f in self.model_fields_set]
        if unused:
            hints = "; ".join(f"{f}: {NOT_LISTWISE[f]}" for f in unused if NOT_LISTWISE[f])
            raise ValueError(f"{', '.join(unused)}: not read by head = {self.head!r}" + (f" ({hints})" if hints else ""))
        engines = ("transformers",) if self.head == "listwise" else ("fast", "transformers")
        if self.engine not in engines:
            raise ValueError(f"engine = {self.engine!r} does not run head = {self.head!r}: use "
                             f"{' or '.join(repr(e) for e in engines)}"
                             + (" (generation runs on transformers; the fast engine runs head = 'first')"
                                if self.head == "listwise" else ""))
        return self

    @model_validator(mode="before")
    @classmethod
    def _seq2seq_defaults(cls, data):
        """A known T5 reranker's head when the experiment sets none; duoT5's k = rank_llm's 50 by default."""
        if isinstance(data, dict) and isinstance(data.get("model"), str):
            seq2seq = _seq2seq()
            if data.get("head") is None and seq2seq.known_head(data["model"]):
                data = {**data, "head": seq2seq.known_head(data["model"])}
            if data.get("head") == "duot5" and "top_k" not in data:
                data = {**data, "top_k": seq2seq.DUOT5_TOP_K}
        return data

    @model_validator(mode="after")
    def _template_slots(self):
        if self.head in ("monot5", "duot5"):
            _seq2seq().check_template(self.template, self.head)
        elif self.template is not None:
            check_custom_template(self.template)
        return self

    @model_validator(mode="after")
    def _duo_pairs(self):
        for field in ("max_pairs_per_query", "duo_aggregation"):
            if getattr(self, field) is not None and self.head != "duot5":
                raise ValueError(f"{field}: only head = 'duot5' takes it (head is {self.head!r})")
        limit = self.max_pairs_per_query or _seq2seq().DUOT5_MAX_PAIRS
        pairs = _seq2seq().duo_pairs(self.top_k, self.duo_aggregation)
        if self.head == "duot5" and pairs > limit:
            raise ValueError(f"top_k = {self.top_k}: duoT5 compares {pairs:,} pairs per query, above "
                             f"max_pairs_per_query = {limit:,}; lower top_k (rank_llm recommends "
                             f"{_seq2seq().DUOT5_TOP_K}) or set max_pairs_per_query = {pairs} to confirm")
        return self

    @field_validator("model")
    @classmethod
    def _known_model(cls, v):
        return _checked_model(v, reranker=True)

    @model_validator(mode="after")
    def _python_class_settings(self):  # a python: class runs its own scoring: engine settings would be ignored
        python = self.model.startswith(PYTHON_PREFIX)
        given = sorted(self.model_fields_set - PYTHON_FIELDS) if python else []
        if given or (self.options and not python):
            raise ValueError(f"{', '.join(given)}: not for a python: reranker (its class scores; pass its settings "
                             "in options = {...})" if given else "options: only for a python: reranker's class")
        return self

    @model_validator(mode="after")
    def _fields_act(self, info: ValidationInfo):
        """Checked where an experiment file is read (`load_experiment`'s `FIELDS_ACT` context): a
        throughput sweep builds specs of other engines than the entry's and carries its fields along."""
        if not (info.context or {}).get(FIELDS_ACT):
            return self
        head, template = scoring_of(self)
        if head is None:  # a causal LM that neither a table nor the experiment describes: its config decides
            return self
        governed = {f for row in RERANKER_FIELDS.values() for f in row}
        where = {"engine": self.engine, "template": template_kind(template) if template else None}
        problems = inert_fields(_given(self), RERANKER_FIELDS.get(head, {}), governed, where,
                                f"a reranker with head {head!r}", lambda f: _kinds(f, RERANKER_FIELDS, "head"))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def label(self) -> str:
        return self.name or self.model.rstrip("/").split("/")[-1].split(":")[-1]


def _seq2seq():
    """`bench.rerank.seq2seq.templates` (known T5 heads, templates, duoT5 limits; no heavy imports),
    imported on first use: `bench.rerank` imports `bench.data`, which imports this module."""
    from .rerank.seq2seq import templates
    return templates


#: The fields a python: reranker takes (rerank_of: a chain, where the experiment has chains); the rest
#: configure the project's engines.
PYTHON_FIELDS = {"model", "name", "top_k", "options", "rerank_of"}


def _given(spec: BaseModel) -> set[str]:
    """The fields a settings model was given a value other than None."""
    return {f for f in spec.model_fields_set if getattr(spec, f) is not None}


def _kinds(field: str, table: dict[str, Any], what: str) -> str:
    """The rows of `table` that read `field`, in words ("kind = 'bge-m3'", "head 'yes_no' or 'token_logit'")."""
    rows = [repr(k) for k, row in table.items() if field in row]
    return f"{what} {' or '.join([', '.join(rows[:-1]), rows[-1]] if len(rows) > 2 else rows)}" if rows else ""


def scoring_of(spec: "RerankerSpec") -> tuple[str | None, str | None]:
    """The scoring head and template a reranker will use, as far as the experiment and the model's
    name (a known model, a `random:` decoder, a local folder's config.json) tell without loading it;
    (None, template) when only the model's config can say (`bench.rerank.scoring.resolve_scoring`)."""
    from .rerank.scoring import KNOWN_MODELS  # read at call time: bench.rerank's modules import this one's users

    known_as, causal = spec.model, False
    prefix, _, name = spec.model.partition(":")
    if f"{prefix}:" == RANDOM_PREFIX and name in DECODER_ARCHITECTURES:
        known_as, causal = DECODER_ARCHITECTURES[name].get("known_as"), True
    elif (Path(spec.model) / "config.json").is_file():
        try:
            config = json.loads((Path(spec.model) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        config = config if isinstance(config, dict) else {}
        known_as = (config.get("rerank_bench") or {}).get("known_as") or spec.model
        causal = any(str(a).endswith("ForCausalLM") for a in config.get("architectures") or [])
    known = KNOWN_MODELS.get(known_as)
    head = spec.head or (known.head if known else None)
    template = spec.template or (known.template if known else None)
    if head is None and template is None and not causal:
        head = "classification"
    return head, template


def _checked_model(ref: str | None, reranker: bool = False) -> str | None:
    problem = None if ref is None else reference_problem(ref, reranker=reranker)
    if problem:
        raise ValueError(problem)
    return ref


class EvaluationSpec(Spec):
    """Metrics and trec_eval conventions (docs/evaluation.md, 'Evaluation conventions')."""

    metrics: list[MetricName] = ["nDCG@10", "MRR@10", "Recall@100"]
    depth: int | None = Field(None, gt=0, description="trec_eval -M: only the top N of each ranking count")
    rel_level: int = Field(1, ge=1, description="trec_eval -l: minimum relevance that counts as relevant")
    judged_only: bool = False

    @field_validator("metrics")
    @classmethod
    def _each_metric_once(cls, v):  # ndcg@10 and ndcg_cut_10 are one metric: kept once, with a note
        kept, notes = unique_metrics(v)
        for line in notes:
            print(f"note: [evaluation].metrics: {line}", file=sys.stderr)
        return kept


class ThroughputSpec(Spec):
    """A throughput sweep: engines × budgets × dtypes × max_lengths on real pairs."""

    engines: list[Engine] = ["fast", "transformers"]
    dtypes: list[Dtype] = ["auto"]
    batch_sizes: list[int] = [32]
    token_budgets: list[int] = [16384]
    max_lengths: list[int] = [512]
    pairs: int = Field(1024, gt=0)
    k: int = Field(100, gt=0, description="pairs per query for queries/s and per-query latency")
    warmup: int = Field(1, ge=0)
    repeats: int = Field(3, gt=0)
    engine_dtypes: dict[Engine, list[Dtype]] = Field({}, description="per-engine dtypes instead of `dtypes` "
                                                     "(run baselines as their users do: transformers=fp32, flag=fp16)")
    candidates: Literal["first-stage", "qrels"] = Field("first-stage", description="each query's k pairs: the "
                                                         "first stage's top-k, or relevant + judged + random docs")
    slow_pairs: int | None = Field(None, gt=0, description="at most this many pairs (whole queries) for the "
                                                           "transformers and sentence-transformers engines")
    latency_queries: int = Field(16, ge=0, description="queries timed one call each for latency p50/p95")
    order: Literal["auto", "interleaved", "in-order"] = Field("auto", description="interleaved: pass r of every "
                                                              "cell before pass r+1 of any; auto: interleaved on CPU")
    time_limit_s: float | None = Field(None, gt=0, description="cells not started by then are recorded as skipped")
    fidelity: bool = Field(True, description="compare every precision's scores with fp32 on the same pairs")
    variants: dict[Engine, list[dict[str, Any]]] = Field(
        {}, description="engine keyword variants, each its own cells (fast engine: e.g. "
                        "[{prune_last_layer = false}, {}], see bench.engine.common.FAST_OPTIONS)")

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, v):
        for engine, variants in v.items():
            if engine != "fast" and any(variants):
                raise ValueError(f"variants.{engine}: only the fast engine takes keyword variants")
            for i, opts in enumerate(variants):
                unknown = sorted(set(opts) - set(FAST_OPTIONS))
                if unknown:
                    raise ValueError(f"variants.{engine}[{i}]: unknown option(s) {unknown}; "
                                     f"known: {', '.join(FAST_OPTIONS)}")
        return v


class ExecutionSpec(Spec):
    """Where the expensive steps run: ``local`` (this process, the default) or ``ray`` (a Ray cluster:
    corpus encoding, exact search and reranking on its workers; see docs/ray.md)."""

    backend: Literal["local", "ray"] = "local"
    address: str | None = Field(None, description="ray: the cluster, e.g. 'auto' or 'ray://head:10001'; "
                                                  "None: Ray's own default (RAY_ADDRESS, else a local one)")
    storage: str | None = Field(None, description="ray: where shards and blocks are written, readable and writable "
                                                  "by every node: a shared path or a pyarrow/fsspec URI "
                                                  "(s3://bucket/prefix); None: the cache folder")
    gpus_per_worker: float = Field(0, ge=0, description="ray: GPUs each encoder/reranker actor holds (0: CPU)")
    cpus_per_worker: float = Field(1, gt=0, description="ray: CPUs each actor or search task holds")
    workers: int = Field(1, gt=0, description="ray: actors in each pool, and search tasks")


class Experiment(Spec):
    name: str
    description: str = ""
    cache_dir: str | None = Field(None, description="embeddings, runs and models; default ~/.cache/rerank-bench")
    seed: int = 0
    datasets: list[CollectionSpec]
    first_stages: dict[str, FirstStageSpec]
    rerankers: list[RerankerSpec] = []
    evaluation: EvaluationSpec = EvaluationSpec()
    throughput: ThroughputSpec | None = None
    execution: ExecutionSpec = ExecutionSpec()

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, v):  # the default output is runs/<name>: never a path out of runs/
        if not v.strip() or "/" in v or "\\" in v or ".." in v or v.startswith("."):
            raise ValueError(f"{v!r}: the experiment name is the folder runs/<name>; use letters, digits, "
                             "'-', '_' or '.', without '/', '\\' or '..'")
        return v

    @field_validator("datasets")
    @classmethod
    def _some_datasets(cls, v):
        if not v:
            raise ValueError("needs at least one [[datasets]] entry")
        return v

    @model_validator(mode="after")
    def _references(self):
        if not self.first_stages:
            raise ValueError("needs at least one [first_stages.<name>] table")
        for i, ds in enumerate(self.datasets):
            if ds.first_stage is None and len(self.first_stages) > 1:
                raise ValueError(f"datasets[{i}]: several first stages are defined; set first_stage to one of "
                                 f"{sorted(self.first_stages)} (or a list of them)")
            names = [ds.first_stage] if isinstance(ds.first_stage, str) else ds.first_stage or []
            if isinstance(ds.first_stage, list) and (not names or len(set(names)) != len(names)):
                raise ValueError(f"datasets[{i}].first_stage = {names}: list each first stage once, at least one")
            for name in names:
                if name not in self.first_stages:
                    raise ValueError(f"datasets[{i}].first_stage = {name!r} is not defined; "
                                     f"defined: {sorted(self.first_stages)}")
        self._fusion_members()
        for name in dict.fromkeys(n for ds in self.datasets for n, _ in self.first_stages_for(ds)):
            depth = self.first_stages[name].depth
            for j, r in enumerate(self.rerankers):
                if r.top_k > depth:
                    raise ValueError(f"rerankers[{j}].top_k = {r.top_k} exceeds first_stages.{name}.depth = {depth}: "
                                     f"it would rerank {depth} candidates, not {r.top_k}; lower top_k or raise depth")
        for what, labels in (("first stages", [self.first_stage_label(n) for n in self.first_stages]),
                             ("rerankers", [r.label for r in self.rerankers])):
            dup = {x for x in labels if labels.count(x) > 1}
            if dup:
                raise ValueError(f"{what} share the label(s) {sorted(dup)}: give each a distinct 'name'")
        self._chains()
        return self

    def _chains(self) -> None:
        """`rerank_of` names a reranker listed before (so chains have no cycle and run in file order)."""
        labels = [r.label for r in self.rerankers]
        for j, r in enumerate(self.rerankers):
            if r.rerank_of is None:
                continue
            if r.rerank_of not in labels:
                raise ValueError(f"rerankers[{j}].rerank_of = {r.rerank_of!r}: no reranker of this experiment has that "
                                 f"label; labels: {labels}")
            if labels.index(r.rerank_of) >= j:
                raise ValueError(f"rerankers[{j}].rerank_of = {r.rerank_of!r}: that reranker is listed at or after "
                                 f"this one (rerankers[{labels.index(r.rerank_of)}]); list the reranker whose output "
                                 "it reranks before it")

    def chain_of(self, reranker: RerankerSpec) -> list[RerankerSpec]:
        """The rerankers a system runs, first to last: `reranker` after those its `rerank_of` names."""
        by_label = {r.label: r for r in self.rerankers}
        chain = [reranker]
        while chain[0].rerank_of is not None:
            chain.insert(0, by_label[chain[0].rerank_of])
        return chain

    def _fusion_members(self) -> None:
        """Each fusion names defined first stages, not itself, in no cycle, none shallower than itself."""
        fusions = {name: spec for name, spec in self.first_stages.items() if spec.kind == "fusion"}
        for name, spec in fusions.items():
            for member in spec.first_stages:
                if member == name:
                    raise ValueError(f"first_stages.{name}.first_stages: {name!r} names itself; a fusion fuses "
                                     "other first stages")
                if member not in self.first_stages:
                    raise ValueError(f"first_stages.{name}.first_stages: {member!r} is not defined; defined: "
                                     f"{sorted(self.first_stages)}")
        for name in fusions:
            cycle = self._fusion_cycle(name, [])
            if cycle:
                raise ValueError(f"first_stages.{name}.first_stages: fusions fuse each other in a cycle "
                                 f"({' -> '.join(cycle)}); a fusion's members must not lead back to it")
        for name, spec in fusions.items():
            for member in spec.first_stages:
                depth = self.first_stages[member].depth
                if depth < spec.depth:
                    raise ValueError(f"first_stages.{name}.first_stages: {member!r} has depth {depth}, below the "
                                     f"fusion's depth {spec.depth}; each list is taken at its own depth: raise "
                                     f"first_stages.{member}.depth or lower first_stages.{name}.depth")

    def _fusion_cycle(self, name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return path[path.index(name):] + [name]
        spec = self.first_stages.get(name)
        if spec is None or spec.kind != "fusion":
            return None
        for member in spec.first_stages:
            found = self._fusion_cycle(member, path + [name])
            if found:
                return found
        return None

    def first_stages_for(self, ds: CollectionSpec) -> list[tuple[str, FirstStageSpec]]:
        """The first stages a dataset runs, in the order it lists them: (name, settings) pairs."""
        names = [ds.first_stage] if isinstance(ds.first_stage, str) else ds.first_stage or [next(iter(self.first_stages))]
        return [(name, self.first_stages[name]) for name in names]

    def first_stage_for(self, ds: CollectionSpec) -> tuple[str, FirstStageSpec]:
        """The dataset's first first stage (the one a throughput sweep reads its pairs from)."""
        return self.first_stages_for(ds)[0]

    def first_stage_label(self, name: str) -> str:
        return self.first_stages[name].name or name

    def system_label(self, first_stage: str, reranker: RerankerSpec | None = None) -> str:
        """The label of the pipeline `first_stage` (a key of first_stages) » `reranker` (`bench.systems`):
        reranked systems name their first stage when the experiment defines several."""
        chain = [r.label for r in self.chain_of(reranker)] if reranker else []
        return pipeline_label(self.first_stage_label(first_stage), chain[-1] if chain else None,
                              qualify=len(self.first_stages) > 1, via=chain[:-1])


def format_validation_error(exc: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    """Pydantic's errors as `file: field.path: message` lines; with the `model` validated, an
    unknown field names the closest valid one (`topk` → did you mean `top_k`?)."""
    lines = []
    for err in exc.errors():
        loc = ""
        for part in err["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = err["msg"]
        if err["type"] == "value_error":  # our own message, without pydantic's "Value error, " in front
            msg = str(err.get("ctx", {}).get("error", msg.removeprefix("Value error, ")))
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see bench/config.py for the fields)"
            valid = _fields_at(model, err["loc"][:-1]) if model is not None else []
            close = difflib.get_close_matches(str(err["loc"][-1]), valid, n=1, cutoff=0.6)
            if close:
                msg = f"unknown field; did you mean {close[0]!r}? (valid here: {', '.join(valid)})"
            elif valid:
                msg = f"unknown field; valid here: {', '.join(valid)}"
        elif err["type"] == "literal_error" and "dtype" in loc:
            msg = f"{msg}: {DTYPE_HELP}"
        lines.append(f"{source}: {loc or '(top level)'}: {msg}")
    return "\n".join(lines)


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the settings model at `loc` inside `model` (a list index or dict key steps
    into the item type); [] when `loc` leads to no model."""
    current: Any = model
    for part in loc:
        current = _model_of(current)
        if _is_model(current):
            field = current.model_fields.get(part) if isinstance(part, str) else None
            current = field.annotation if field else None
        elif get_origin(current) in (list, dict) and get_args(current):
            current = get_args(current)[-1]  # list[X] -> X, dict[K, X] -> X
        else:
            return []
    current = _model_of(current)
    return list(current.model_fields) if _is_model(current) else []


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _model_of(tp: Any) -> Any:
    """`X | None` -> X when X is a settings model; anything else as it is."""
    if get_origin(tp) in (list, dict):
        return tp
    models = [a for a in get_args(tp) if _is_model(a)]
    return models[0] if models else tp


def read_toml(path: str | Path, what: str = "experiment file", hint: str = "") -> dict:
    """A TOML file as a dict; a missing file or a syntax error is a BenchError naming the file."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise BenchError(f"{path}: {what} not found{hint}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"{path}: not valid TOML: {exc}") from None


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment TOML; relative paths inside are resolved against its folder."""
    path = Path(path)
    raw = read_toml(path, "experiment file", " (see experiments/ for examples)")
    base = path.resolve().parent
    for ds in raw.get("datasets", []) or []:
        if isinstance(ds, dict) and isinstance(ds.get("path"), str) and not Path(ds["path"]).is_absolute():
            ds["path"] = str((base / ds["path"]).resolve())
    for fs in (raw.get("first_stages") or {}).values():
        if isinstance(fs, dict) and isinstance(fs.get("path"), str) and not Path(fs["path"]).is_absolute():
            fs["path"] = str((base / fs["path"]).resolve())
    for rr in raw.get("rerankers", []) or []:
        if isinstance(rr, dict) and isinstance(rr.get("model"), str):
            rr["model"] = file_relative_to(rr["model"], base)  # python:file.py:Class
    for r in raw.get("rerankers", []) or []:  # a listwise template file beside the experiment
        lw = r.get("listwise") if isinstance(r, dict) else None
        template = lw.get("prompt_template") if isinstance(lw, dict) else None
        if isinstance(template, str) and template.endswith((".yaml", ".yml")) and not Path(template).is_absolute():
            lw["prompt_template"] = str((base / template).resolve())
    try:
        return Experiment.model_validate(raw, context={FIELDS_ACT: True})
    except ValidationError as exc:
        raise BenchError(format_validation_error(exc, str(path), Experiment)) from None
