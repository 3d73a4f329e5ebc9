"""What both model stages check and default to when they run a model (the bi-encoder of
`bench.retrieve` and the cross-encoders of `bench.rerank`): one definition of each.

Nothing here imports torch, so `bench.config` can import the option names it validates.
"""

from __future__ import annotations

from ..errors import BenchError

#: Default token budgets of the fast engines: tokens per batch (packed) or padded tokens per batch (hf forward).
DEFAULT_TOKEN_BUDGET = {"cuda": 65536, "cpu": 8192}
#: PackedEncoder keywords a fast engine passes through (see bench.engine.packed).
PACKED_OPTIONS = ("gelu_epilogue", "fused_add_norm")
#: The fast reranker's keywords (see bench.rerank.fast): the variants a throughput sweep may set.
FAST_OPTIONS = ("attention", "forward", "compile", "prune_last_layer", *PACKED_OPTIONS,
                "token_budget", "first_chunk", "largest_chunk", "prefix_reuse")


def default_token_budget(device: str) -> int:
    """The fast engines' token budget on ``device`` when neither the caller nor the spec sets one."""
    return DEFAULT_TOKEN_BUDGET["cuda" if device.startswith("cuda") else "cpu"]


def load_error(what: str, spec, exc: Exception) -> BenchError:
    """The error for a model that does not load: ``what`` names the role (``reranker model``, ``bi-encoder``)."""
    return BenchError(f"{what} {spec.model!r} (revision {spec.revision}): cannot load: {exc}. "
                      "Check the hub id or folder; offline (HF_HUB_OFFLINE=1) only cached models load")


def usable_positions(config) -> int:
    """Longest sequence the model's position table allows (RoBERTa/XLM-R lose padding_idx + 1)."""
    n = int(getattr(config, "max_position_embeddings", 0) or 0)
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):
        n -= int(config.pad_token_id) + 1
    return n


def check_max_length(config, max_length: int, what: str) -> None:
    """A max_length beyond the model's positions is an error, not an index error deep in the forward."""
    limit = usable_positions(config)
    if limit > 0 and max_length > limit:
        raise BenchError(f"{what}: max_length = {max_length} but the model has positions for {limit} tokens; "
                         f"set max_length <= {limit}")
