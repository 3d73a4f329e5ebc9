"""Models: what a model name means and where its weights come from.

`references.py` turns a name into a folder `from_pretrained` loads (hub ids and folders as they are;
`offline:`, `random:` and `trained:` names built or found by the project); `decoders.py` builds the
random causal-LM rerankers and Qwen's tokenizer; `trained.py` trains the demo's reranker once into
the cache. Every stage that loads a model goes through `resolve` and records `describe`.
"""

from .references import (BIENCODER_ARCHITECTURES, MLM_ARCHITECTURES, OFFLINE_MODELS, OFFLINE_PREFIX, RANDOM_PREFIX,
                         TRAINED_MODELS, TRAINED_PREFIX, TRAINED_VERSION, XLMR_ARCHITECTURES, add_m3_heads,
                         bert_tokenizer_dir, build_random_biencoder, build_random_mlm, build_random_xlmr,
                         default_cache_dir, describe, describe_loaded, is_untrained, masked_lm_problem,
                         masked_lm_reference_problem, minilm_dir, reference_problem, resolve, trained_folder,
                         xlmr_tokenizer, xlmr_tokenizer_file)

__all__ = ["BIENCODER_ARCHITECTURES", "MLM_ARCHITECTURES", "OFFLINE_MODELS", "OFFLINE_PREFIX", "RANDOM_PREFIX",
           "TRAINED_MODELS", "TRAINED_PREFIX", "TRAINED_VERSION", "XLMR_ARCHITECTURES", "add_m3_heads",
           "bert_tokenizer_dir", "build_random_biencoder", "build_random_mlm", "build_random_xlmr",
           "default_cache_dir", "describe", "describe_loaded", "is_untrained", "masked_lm_problem",
           "masked_lm_reference_problem", "minilm_dir", "reference_problem", "resolve", "trained_folder",
           "xlmr_tokenizer", "xlmr_tokenizer_file"]
