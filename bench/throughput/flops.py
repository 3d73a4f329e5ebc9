"""FLOPs of a forward pass and the device's measured matrix ceiling.

Why: a pairs/s number means more next to the work it did (matmul FLOPs on real tokens, the same
count for every engine) and the rate the device can reach at all (measured, not a datasheet's).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import lazy
from ..errors import BenchError


@dataclass(frozen=True)
class ModelShape:
    """The sizes that decide a BERT-family transformer's matmul FLOPs."""

    layers: int
    hidden: int
    ffn: int
    head_labels: int | None  # None: no classification head (a bi-encoder)

    @classmethod
    def from_config(cls, config, *, head: bool = True) -> "ModelShape":
        get = config.get if isinstance(config, dict) else (lambda name, default=None: getattr(config, name, default))
        try:
            return cls(int(get("num_hidden_layers")), int(get("hidden_size")), int(get("intermediate_size")),
                       int(get("num_labels", 1) or 1) if head else None)
        except (TypeError, ValueError):
            raise BenchError("model config lacks num_hidden_layers / hidden_size / intermediate_size: FLOPs "
                             "are counted for BERT-family models only") from None


def tokenizer_and_shape(path: str, *, revision: str | None = None, head: bool = True) -> tuple[Any, ModelShape]:
    """The tokenizer (for token lengths) and the shape (for FLOPs) of the model at `path`, without
    loading its weights."""
    tokenizer = lazy.transformers.AutoTokenizer.from_pretrained(path, revision=revision)
    config = lazy.transformers.AutoConfig.from_pretrained(path, revision=revision)
    return tokenizer, ModelShape.from_config(config, head=head)


def useful_flops(shape: ModelShape, lengths: Sequence[int] | np.ndarray) -> int:
    """Matmul FLOPs of a forward pass over sequences of the given real (unpadded) lengths.

    Per layer and token: ``2·(4h² + 2·h·ffn)`` for the Q, K, V and output projections and the two FFN
    matrices, plus ``2·2·L·h`` for attention (QKᵀ and AV against the L tokens of its own sequence).
    Per sequence, the classification head on the first token: ``2·(h² + h·labels)`` (XLM-R's
    dense→out_proj, BERT's pooler→classifier). A FLOP is a multiply or an add (2 per multiply-add).
    Embeddings, LayerNorm, softmax and activations are not matmuls and are not counted. Padding is
    never counted: this is the work any engine must do, so engines compare on equal terms.
    """
    lens = np.asarray(lengths, dtype=np.int64)
    h, f = shape.hidden, shape.ffn
    per_token = 2 * (4 * h * h + 2 * h * f)
    total = shape.layers * (per_token * int(lens.sum()) + 4 * h * int((lens * lens).sum()))
    if shape.head_labels is not None:
        total += len(lens) * 2 * (h * h + h * shape.head_labels)
    return int(total)


def matmul_ceiling(device: str = "cuda", *, n: int | None = None, repeats: int | None = None) -> dict[str, Any]:
    """The device's measured matrix rate: median over repeats of a large square matmul.

    On CUDA: bf16 (the precision the fast engine runs), n = 8192, each repeat 10 back-to-back
    products between two CUDA events (one product takes ~1.5 ms on an H100: too short to time
    alone). On CPU: fp32 (CPU bf16 matmuls are not what CPU engines run), n = 1024, one product per
    repeat, wall clock; the record says so.
    """
    torch = lazy.torch
    cuda = str(device).startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    n = n or (8192 if cuda else 1024)
    repeats = repeats or (20 if cuda else 5)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(10):
                    torch.mm(a, b)
                end.record()
                end.synchronize()
                seconds = start.elapsed_time(end) / 1000.0 / 10
            else:
                t0 = time.perf_counter()
                torch.mm(a, b)
                seconds = time.perf_counter() - t0
            if i >= 2:  # two warm-up products
                times.append(seconds)
    med = statistics.median(times)
    return {"device": _device_name(device), "dtype": "bf16" if cuda else "fp32", "n": n, "repeats": repeats,
            "median_s": med, "tflop_per_s": 2 * n ** 3 / med / 1e12,
            "method": ("median over repeats of 10 torch.mm of two n×n matrices, CUDA events" if cuda else
                       "median of torch.mm on two n×n fp32 matrices, wall clock (CPU: fp32 rate, not bf16)")}


def _device_name(device: str) -> str:
    torch = lazy.torch
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({torch.get_num_threads()} threads)"
