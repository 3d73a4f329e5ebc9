"""Untrained T5 rerankers the project builds itself (``random:`` models), with a stand-in for T5's
tokenizer.

Why: monoT5 and duoT5 (castorini/monot5-*, castorini/duot5-*) cannot be downloaded in tests or on
machines without hub access, yet both engines must run through the real
``T5ForConditionalGeneration.from_pretrained`` path. Each builder saves a normal Hugging Face T5
folder with random weights of a named shape and records, in ``config.rerank_bench``, which published
reranker it stands for (``known_as``: a key of ``bench.rerank.seq2seq.KNOWN_SEQ2SEQ``) or none
(``tiny-t5-reranker`` serves monoT5 and duoT5 alike: the experiment sets its ``head``).

Tokenizer: T5's own sentencepiece vocabulary (``spiece.model``) ships in no PyPI package, so every
``random:`` T5 gets a STAND-IN built from Mistral-7B's sentencepiece model (``tokenizer.model.v1``
of the PyPI package mistral-common, 32,000 pieces) laid out as T5's: ``<pad>`` = 0 (T5's decoder
start token), ``</s>`` = 1 (appended to every input), ``<unk>`` = 2, no BOS, whitespace collapsed,
words split at spaces as sentencepiece does, and 100 ``<extra_id_N>`` sentinels after the pieces
(32,100 entries, as T5's tokenizer has; the embedding table has T5's 32,128 rows). ``▁true`` and
``▁false`` are single pieces in it, as in T5's. Token ids therefore differ from T5's; records say so.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import lazy
from .packaged import packaged_file
from ..errors import BenchError
from ..cache import checked_folder

#: T5's tokenizer layout (t5-base's tokenizer_config.json / spiece.model): special ids and sentinels.
T5_PAD, T5_EOS, T5_UNK = 0, 1, 2
T5_EXTRA_IDS = 100
T5_VOCAB_ROWS = 32128  # the embedding rows of every original T5 checkpoint (t5-small ... t5-11b)

_T5_V1 = dict(vocab_size=T5_VOCAB_ROWS, feed_forward_proj="relu", relative_attention_num_buckets=32,
              relative_attention_max_distance=128, layer_norm_epsilon=1e-6, tie_word_embeddings=True,
              pad_token_id=T5_PAD, eos_token_id=T5_EOS, decoder_start_token_id=T5_PAD)

#: name -> shape and the published model it stands for (shapes from each model's config.json).
SEQ2SEQ_ARCHITECTURES: dict[str, dict] = {
    # castorini/monot5-3b-msmarco-10k and castorini/duot5-3b-msmarco-10k: t5-3b (T5 v1.0, ReLU FFN,
    # tied embeddings), 24+24 layers, 32 heads of 128, d_ff 16384.
    "monot5-3b-msmarco-10k": dict(_T5_V1, known_as="castorini/monot5-3b-msmarco-10k", d_model=1024, d_kv=128,
                                  num_heads=32, d_ff=16384, num_layers=24, num_decoder_layers=24),
    "duot5-3b-msmarco-10k": dict(_T5_V1, known_as="castorini/duot5-3b-msmarco-10k", d_model=1024, d_kv=128,
                                 num_heads=32, d_ff=16384, num_layers=24, num_decoder_layers=24),
    # Tiny, for CPU tests and demos (untrained: exercises the code, not quality); head set by the experiment.
    "tiny-t5-reranker": dict(_T5_V1, known_as=None, d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2,
                             num_decoder_layers=2),
}


def mistral_spm_file() -> Path:
    """Mistral-7B's sentencepiece model from the PyPI package mistral-common, or from
    ``RERANK_BENCH_MISTRAL_SPM`` (a copy of that file)."""
    return packaged_file("RERANK_BENCH_MISTRAL_SPM", "mistral_common", "data/tokenizer.model.v1",
                         "random: T5 models need the stand-in tokenizer built from the PyPI package mistral-common",
                         "mistral-common sentencepiece")


def t5_standin_tokenizer(model_max_length: int = 512):
    """A fast tokenizer with T5's conventions over Mistral's 32,000 sentencepiece pieces (module
    docstring): pieces 0, 1, 2 renamed to ``<pad>``, ``</s>``, ``<unk>``, ``$A </s>`` post-processing."""
    tokenizers, transformers = lazy.tokenizers, lazy.transformers
    extractor = lazy.transformers_convert.SentencePieceExtractor(str(mistral_spm_file()))
    pieces = [p.piece for p in extractor.proto.pieces]
    if pieces[:3] != ["<unk>", "<s>", "</s>"]:
        raise BenchError(f"mistral-common's tokenizer.model.v1 starts with {pieces[:3]}, not <unk> <s> </s>")
    vocab = {piece: i for i, piece in enumerate(pieces)}
    merges = lazy.transformers_convert.generate_merges(vocab)
    renamed = {"<unk>": "<pad>", "<s>": "</s>", "</s>": "<unk>"}
    vocab = {renamed.get(piece, piece): i for piece, i in vocab.items()}
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True,
                                                     byte_fallback=True))
    tok.normalizer = tokenizers.normalizers.Sequence([
        tokenizers.normalizers.NFKC(), tokenizers.normalizers.Replace(tokenizers.Regex(r"\s+"), " "),
        tokenizers.normalizers.Strip()])
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = tokenizers.decoders.Sequence([tokenizers.decoders.ByteFallback(),
                                                tokenizers.decoders.Metaspace(replacement="▁", prepend_scheme="always")])
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", T5_EOS)])
    specials = [tokenizers.AddedToken(t, special=True, normalized=False) for t in ("<pad>", "</s>", "<unk>")]
    tok.add_special_tokens(specials)
    extra = [f"<extra_id_{i}>" for i in reversed(range(T5_EXTRA_IDS))]  # T5: <extra_id_0> is the last id
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in extra])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length,
                                                pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                                extra_special_tokens=extra, clean_up_tokenization_spaces=False)
    for token, tid in (("<pad>", T5_PAD), ("</s>", T5_EOS), ("<unk>", T5_UNK), ("<extra_id_0>", 32099)):
        if fast.convert_tokens_to_ids(token) != tid:
            raise BenchError(f"T5 stand-in tokenizer: {token} got id {fast.convert_tokens_to_ids(token)}, not {tid}")
    return fast


def t5_config(architecture: str):
    """The ``T5Config`` of a named architecture (no weights), with what it stands for."""
    if architecture not in SEQ2SEQ_ARCHITECTURES:
        raise BenchError(f"unknown random T5 {architecture!r}; known: {', '.join(SEQ2SEQ_ARCHITECTURES)}")
    shape = dict(SEQ2SEQ_ARCHITECTURES[architecture])
    known_as = shape.pop("known_as")
    cfg = lazy.transformers.T5Config(**shape)
    cfg.architectures = ["T5ForConditionalGeneration"]
    return cfg, known_as


def count_parameters(architecture: str) -> int:
    """Parameters of a named architecture, counted on the meta device (no memory): tied embeddings once."""
    torch, transformers = lazy.torch, lazy.transformers
    cfg, _ = t5_config(architecture)
    with torch.device("meta"):
        model = transformers.T5ForConditionalGeneration(cfg)
    seen, total = set(), 0
    for p in model.parameters():  # parameters() already yields a tied tensor once; ids make it explicit
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def build_random_t5(architecture: str, folder: str | os.PathLike, seed: int = 0) -> Path:
    """An untrained ``T5ForConditionalGeneration`` of ``architecture``'s shape with the stand-in
    tokenizer in ``folder``: used when it passes its check, else built (`bench.cache.checked_folder`)."""
    return checked_folder(folder, lambda tmp: _save_random_t5(architecture, tmp, seed))


def _save_random_t5(architecture: str, tmp: Path, seed: int) -> None:
    torch, transformers = lazy.torch, lazy.transformers
    cfg, known_as = t5_config(architecture)
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # 1/sqrt(fan_in) keeps activations O(1), so scores differ telling between pairs
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
    model.config.rerank_bench = {"untrained": True, "architecture": architecture, "seed": seed, "known_as": known_as,
                                 "tokenizer": "stand-in: Mistral-7B's sentencepiece pieces (mistral-common) in "
                                              "T5's layout; T5's own vocabulary is not available offline"}
    model.save_pretrained(tmp)
    t5_standin_tokenizer().save_pretrained(tmp)
