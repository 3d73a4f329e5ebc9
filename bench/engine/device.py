"""Devices and precision, resolved once and recorded as resolved (never silently changed later)."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass

from .. import lazy
from ..errors import BenchError

#: Every precision name a spec may ask for (the one list the whole package uses).
DTYPES = ("auto", "fp32", "tf32", "fp16", "bf16")
#: Every reranker engine (the one list the whole package uses): the project's own, then the baselines.
ENGINES = ("fast", "transformers", "sentence-transformers", "flag")


def resolve_devices(device: str | None = "auto", devices=None) -> list[str]:
    """The devices to run on.

    ``devices`` (a list, from the library API) wins over ``device`` (the spec's string).
    ``device``: ``"auto"`` = every visible CUDA device (data-parallel when there are several), else
    the CPU; ``"cpu"``; ``"cuda"`` / ``"cuda:1"``; or several joined by commas (``"cuda:0,cuda:1"``).
    """
    torch = lazy.torch
    if devices is not None:
        names = [str(d) for d in devices]
        if not names:
            raise BenchError("devices: empty list; give at least one device (e.g. ['cuda:0'] or ['cpu'])")
    elif device in (None, "", "auto"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        names = [f"cuda:{i}" for i in range(n)] or ["cpu"]
    else:
        names = [d.strip() for d in str(device).split(",") if d.strip()]
    out = []
    for name in names:
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise BenchError(f"device {name!r}: not a device name; use auto, cpu, cuda, cuda:N "
                             "or several joined by commas") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise BenchError(f"device {name!r}: CUDA is not available here (torch {torch.__version__}); "
                                 "use device = 'cpu' or 'auto'")
            index = 0 if dev.index is None else dev.index
            if index >= torch.cuda.device_count():
                raise BenchError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
            out.append(f"cuda:{index}")
        elif dev.type == "cpu":
            out.append("cpu")
        else:
            raise BenchError(f"device {name!r}: only cpu and cuda devices are supported")
    return out


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` is what ran (fp32, tf32, fp16, bf16), ``requested`` what was asked."""

    name: str
    requested: str

    @property
    def torch_dtype(self):
        torch = lazy.torch
        return {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
                "bf16": torch.bfloat16}[self.name]

    @property
    def half(self) -> bool:
        return self.name in ("fp16", "bf16")


#: What ``dtype = "auto"`` means for the fast engines on CUDA. fp16, not bf16: with trained weights
#: bf16's 8-bit mantissa reorders close scores (all-MiniLM-L6-v2 on Vaswani: 60% of queries keep
#: fp32's top-10 in bf16, 96% in fp16; results/half-precision-fidelity-minilm), and FlagEmbedding,
#: whose published numbers the registry checks, runs fp16. bf16 stays one setting away for speed.
FAST_AUTO_CUDA = "fp16"
#: ``dtype = "auto"`` on CUDA per engine: the fast engines' choice, each baseline as its users run it.
AUTO_CUDA = {"fast": FAST_AUTO_CUDA, "flag": "fp16", "transformers": "fp32", "sentence-transformers": "fp32"}


def resolve_precision(dtype: str, device: str, auto_cuda: str = FAST_AUTO_CUDA) -> Precision:
    """``auto`` = ``auto_cuda`` (``FAST_AUTO_CUDA`` unless an engine's faithful default differs) on
    CUDA, fp32 on CPU.

    tf32 is a CUDA matmul mode: asking for it on the CPU is an error rather than a quiet fp32 run."""
    if dtype not in DTYPES:
        raise BenchError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    on_cuda = device.startswith("cuda")
    name = (auto_cuda if on_cuda else "fp32") if dtype == "auto" else dtype
    if name == "tf32" and not on_cuda:
        raise BenchError("dtype 'tf32' needs a CUDA device (TF32 is a GPU matmul mode); use fp32 on the CPU")
    return Precision(name=name, requested=dtype)


def precision_for(dtype: str, device: str | None, engine: str) -> str:
    """The precision ``engine`` runs ``dtype`` in on ``device`` (a spec's device string, ``auto``
    included), without loading a model: what cache keys must hold, since ``auto`` means fp16 on a
    GPU and fp32 on the CPU."""
    return resolve_precision(dtype, resolve_devices(device)[0], AUTO_CUDA[engine]).name


@contextmanager
def matmul_precision(precision: Precision):
    """Let fp32 matmuls use TF32 only while a tf32 model runs; restore the process setting after."""
    torch = lazy.torch
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision.name == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def synchronize(device: str) -> None:
    """Wait for queued device work (timings and out-of-memory recovery need a settled device; no-op on CPU)."""
    if str(device).startswith("cuda"):
        lazy.torch.cuda.synchronize(device)


def release_memory(device: str | None = None) -> None:
    """Give memory back between models (or after an out-of-memory batch), so one model's cached
    blocks do not sit beside the next one's. ``None``: the CUDA caching allocator if torch has CUDA."""
    gc.collect()
    if device is None or str(device).startswith("cuda"):
        if lazy.torch.cuda.is_available():
            lazy.torch.cuda.empty_cache()
