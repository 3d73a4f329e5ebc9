"""How a score comes out of a reranker: its scoring head, prompt template and the known models' table.

Heads (recorded in every record under ``scoring``):

* ``classification``: the sequence-classification logit (BGE cross-encoders);
* ``yes_no``: a causal LM's logits at the last position, score = logit(yes) - logit(no); its sigmoid is
  the softmax p(yes) over the two tokens that the Qwen3-Reranker model card computes;
* ``token_logit``: one token's logit at the last position (bge-reranker-v2-gemma's "Yes").

Token ids come from the model's own tokenizer (a word that it splits into several tokens is an error).
Known decoder rerankers get their head, template, tokens, default max_length and padding side from
``KNOWN_MODELS``; an experiment may override ``template``, ``head`` and ``instruction``.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

from .. import lazy, models
from ..engine.common import check_max_length, load_error
from ..engine.prompts import PromptTokenizer
from ..errors import BenchError

HEADS = ("classification", "yes_no", "token_logit")
#: RerankerSpec fields that decide how a decoder reranker scores (passed on wherever a spec is rebuilt)
DECODER_FIELDS = {"head", "template", "instruction", "yes_token", "no_token", "prefix_reuse", "trust_remote_code"}


@dataclass(frozen=True)
class KnownModel:
    """What the authors of a decoder reranker use: template, head, tokens, default max_length, padding side."""

    template: str
    head: str
    yes: str
    no: str | None
    max_length: int
    padding_side: str
    source: str


_QWEN3 = KnownModel("qwen3", "yes_no", "yes", "no", 8192, "left",
                    "model card of Qwen/Qwen3-Reranker-*: format_instruction, prefix/suffix, "
                    "token_true_id/token_false_id, max_length = 8192, padding_side='left'")
_MXBAI = KnownModel("mxbai-v2", "yes_no", "1", "0", 8192, "left",
                    "mixedbread-ai/mxbai-rerank mxbai_rerank_v2.py: MxbaiRerankV2 (yes_loc '1', no_loc '0', "
                    "logits = yes - no, max_length = 8192, padding_side = 'left')")
#: hub id -> how its authors score it.
KNOWN_MODELS: dict[str, KnownModel] = {
    "Qwen/Qwen3-Reranker-0.6B": _QWEN3,
    "Qwen/Qwen3-Reranker-4B": _QWEN3,
    "Qwen/Qwen3-Reranker-8B": _QWEN3,
    "BAAI/bge-reranker-v2-gemma": KnownModel(
        "bge-gemma", "token_logit", "Yes", None, 512, "left",
        "FlagEmbedding inference/reranker/decoder_only/base.py: BaseLLMReranker (yes_loc = 'Yes', "
        "max_length = 512, last_logit_pool) and the bge-reranker-v2-gemma model card"),
    "mixedbread-ai/mxbai-rerank-base-v2": _MXBAI,
    "mixedbread-ai/mxbai-rerank-large-v2": _MXBAI,
}


def is_causal_lm(config) -> bool:
    return any(a.endswith("ForCausalLM") for a in (getattr(config, "architectures", None) or []))


def known_model(spec, config) -> tuple[str | None, KnownModel | None]:
    """The table entry for ``spec.model`` or, for a ``random:`` model, the one it stands for."""
    meta = getattr(config, "rerank_bench", None) or {}
    for key in (spec.model, meta.get("known_as")):
        if key in KNOWN_MODELS:
            return key, KNOWN_MODELS[key]
    return None, None


def load_config(spec, cache_dir=None):
    """The model's config; a model that needs remote code it is not allowed to run is one clear error."""
    source = models.resolve(spec.model, cache_dir)
    try:
        return lazy.transformers.AutoConfig.from_pretrained(source, revision=spec.revision,
                                                            trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc):
            raise BenchError(f"reranker {spec.model!r} ships its own modelling code (trust_remote_code); it runs "
                             "only through the Hugging Face forward: set trust_remote_code = true and "
                             "engine = 'transformers' in its [[rerankers]] entry, if you trust that code") from None
        raise load_error("reranker model", spec, exc) from None


def _single_token(tokenizer, word: str, field: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise BenchError(f"{field} token {word!r}: the model's tokenizer splits it into {len(ids)} tokens {ids}; "
                         "a scoring head reads one token's logit: choose a word the tokenizer keeps whole")
    return int(ids[0])


@dataclass(frozen=True)
class Scoring:
    """A reranker's resolved head: kind, template and token ids (token ids None for classification)."""

    head: str
    template: str | None = None
    yes: str | None = None
    no: str | None = None
    yes_id: int | None = None
    no_id: int | None = None
    instruction: str | None = None
    padding_side: str | None = None
    source: str | None = None
    known_as: str | None = None

    def describe(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def resolve_scoring(spec, config, tokenizer=None) -> Scoring:
    """The head ``spec`` asks for (``head``/``template``/``instruction``), else the known model's, else
    classification for a sequence classifier; a causal LM with neither is an error naming the fields."""
    causal = is_causal_lm(config)
    key, known = known_model(spec, config)
    head = spec.head or (known.head if known else ("classification" if not causal else None))
    if head == "classification":
        if causal:
            raise BenchError(f"reranker {spec.model!r}: head = 'classification' but the model is a causal LM "
                             f"({config.architectures}); use head = 'yes_no' or 'token_logit' with a template")
        if spec.template is not None:
            raise BenchError(f"reranker {spec.model!r}: template is for decoder heads; a classification "
                             "cross-encoder reads the tokenizer's own pair encoding")
        return Scoring("classification")
    if not causal:
        raise BenchError(f"reranker {spec.model!r}: head = {head!r} reads a causal LM's logits but the model is "
                         f"{config.architectures}; remove head (classification) or use a causal LM")
    template = spec.template or (known.template if known else None)
    if head is None or template is None:
        raise BenchError(f"reranker {spec.model!r} is a causal LM with no known template: set template "
                         "(one of qwen3, bge-gemma, mxbai-v2, or a string with {query} and {passage}), "
                         "head ('yes_no' or 'token_logit'), and yes_token / no_token if not 'yes' / 'no'")
    yes = spec.yes_token or (known.yes if known and head == known.head else "yes")
    no = None
    if head == "yes_no":
        no = spec.no_token or (known.no if known and known.no else "no")
    yes_id = no_id = None
    if tokenizer is not None:
        yes_id = _single_token(tokenizer, yes, "yes")
        no_id = _single_token(tokenizer, no, "no") if no is not None else None
    return Scoring(head, template, yes, no, yes_id, no_id, spec.instruction,
                   known.padding_side if known else "left", known.source if known else "experiment fields",
                   key)


def default_max_length(spec, scoring: Scoring, config) -> int:
    """``spec.max_length`` when the experiment sets it, else the known model's default (capped by the
    model's positions)."""
    if "max_length" in spec.model_fields_set or scoring.known_as is None:
        return spec.max_length
    limit = int(getattr(config, "max_position_embeddings", 0) or 0)
    n = KNOWN_MODELS[scoring.known_as].max_length
    return min(n, limit) if limit else n


@dataclass
class LoadedDecoder:
    """A causal-LM reranker ready to score: tokenizer, model, head, prompt builder, max_length."""

    tokenizer: object
    model: object
    scoring: Scoring
    prompts: PromptTokenizer
    max_length: int
    source: str


@functools.lru_cache(maxsize=4)
def _tokenizer(source: str, revision: str | None, trust_remote_code: bool):
    """A decoder's tokenizer, loaded once per process: Qwen's 151,669-entry tokenizer.json takes seconds
    to parse, and a throughput sweep builds one engine per cell. Read only here (nothing mutates it)."""
    return lazy.transformers.AutoTokenizer.from_pretrained(source, revision=revision,
                                                           trust_remote_code=trust_remote_code)


def load_decoder(spec, device: str, precision, cache_dir=None, config=None) -> LoadedDecoder:
    """Tokenizer, ``AutoModelForCausalLM`` (eval, on ``device`` in ``precision``), head and prompts."""
    transformers = lazy.transformers
    source = models.resolve(spec.model, cache_dir)
    config = config or load_config(spec, cache_dir)
    try:
        tokenizer = _tokenizer(source, spec.revision, spec.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise load_error("reranker tokenizer", spec, exc) from None
    scoring = resolve_scoring(spec, config, tokenizer)
    max_length = default_max_length(spec, scoring, config)
    check_max_length(config, max_length, f"reranker {spec.label}")
    prompts = PromptTokenizer(tokenizer, scoring.template, max_length, query_max_length=spec.query_max_length,
                              instruction=spec.instruction)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(source, revision=spec.revision,
                                                                  dtype=precision.torch_dtype,
                                                                  trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise load_error("reranker model", spec, exc) from None
    model.to(device).eval()
    return LoadedDecoder(tokenizer, model, scoring, prompts, max_length, source)


def head_vector(model, scoring: Scoring):
    """The head as one fp32 vector over the final hidden state: W[yes] - W[no], or W[yes]."""
    w = model.get_output_embeddings().weight
    vec = w[scoring.yes_id].float()
    if scoring.head == "yes_no":
        vec = vec - w[scoring.no_id].float()
    return vec.contiguous()


def head_from_logits(logits, scoring: Scoring):
    """The head on full-vocabulary logits ``[n, vocab]`` (as the model cards compute it), fp32."""
    logits = logits.float()
    score = logits[:, scoring.yes_id]
    if scoring.head == "yes_no":
        score = score - logits[:, scoring.no_id]
    return score
