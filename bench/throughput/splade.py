"""SPLADE document encoding, the fast MLM path against the plain ``AutoModelForMaskedLM`` loop, side by
side in one process on the same passages: passages/s, peak memory, and how far apart their weights are.

The plain loop is the authors' (``engine = "transformers"``: padded batches in input order, the whole
``[batch, length, vocab]`` logits, ``max(log(1 + relu(logits)) x mask)``); the fast path
(``engine = "fast"``) runs the packed forward over real tokens and the fused, chunked MLM head
(``bench.engine.heads.splade_weights``). One ``throughput`` record per model: a cell per engine with
its median seconds over the timed passes, ``passages_per_s`` (also written as ``pairs_per_s``, the
field the throughput tables read), the process' peak memory during the cell above what it held at
the cell's start (on the CPU: peak RSS; the model is loaded before the reset), and the fast cell's
``speedup_vs_plain`` and ``max_abs_diff_vs_plain`` (largest weight difference, any passage, any term).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .. import models
from ..config import FirstStageSpec
from ..records import ThroughputRecord, make_record
from ..retrieve.splade import SpladeEncoder
from .timing import PeakMemory, time_passes

ENGINES = ("transformers", "fast")


def rss_bytes() -> int | None:
    """The process' resident set now (Linux), the base a CPU cell's peak is measured from."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def encode_cell(encoder: SpladeEncoder, texts: Sequence[str], *, label: str, device: str, warmup_texts: int,
                repeats: int) -> tuple[dict, object]:
    """Time ``encode_docs`` over `texts` (after one untimed pass over the first `warmup_texts`): the
    cell as a record holds it, and the last pass' weights."""
    encoder.encode_docs(list(texts[:warmup_texts]))
    memory = PeakMemory(device)
    memory.reset()
    base = rss_bytes() if not device.startswith("cuda") else 0
    times, weights = time_passes(encoder.encode_docs, list(texts), warmup=0, repeats=repeats, device=device)
    peak = memory.result()
    med = statistics.median(times)
    spec = encoder.spec
    cell = {"engine": spec.engine, "dtype": encoder.docs.precision.name, "max_length": spec.max_length,
            "batch_size": spec.batch_size if spec.engine == "transformers" else None,
            "token_budget": encoder.docs.budget.used if spec.engine == "fast" else None,
            "label": label, "variant": "", "engine_describe": encoder.describe(), "n_pairs": len(texts),
            "n_passages": len(texts), "repeats": repeats, "warmup": 1, "seconds": times, "median_s": med,
            "pairs_per_s": len(texts) / med, "passages_per_s": len(texts) / med,
            "peak_memory": {**peak, "base_bytes": base,
                            "above_base_bytes": None if peak.get("bytes") is None or base is None else peak["bytes"] - base},
            "terms_per_passage": weights.nnz / weights.shape[0], "error": None}
    return cell, weights


def splade_throughput(model: str, texts: Sequence[str], *, collection: str, max_length: int = 256,
                      batch_size: int = 32, dtype: str = "fp32", device: str = "cpu", repeats: int = 2,
                      warmup_texts: int = 16, cache_dir=None, log: Callable[[str], None] = print) -> ThroughputRecord:
    """Both engines on the same passages, the plain loop first; one record."""
    cells, weights = [], {}
    for engine in ENGINES:
        spec = FirstStageSpec(kind="splade", model=model, engine=engine, dtype=dtype, device=device,
                              max_length=max_length, batch_size=batch_size)
        encoder = SpladeEncoder(spec, cache_dir=cache_dir, device=device)
        label = {"transformers": "plain AutoModelForMaskedLM loop", "fast": "fast: packed + fused MLM head"}[engine]
        cell, weights[engine] = encode_cell(encoder, texts, label=label, device=device, warmup_texts=warmup_texts,
                                            repeats=repeats)
        cells.append(cell)
        log(f"  {model} {label}: {cell['passages_per_s']:.1f} passages/s, peak +"
            f"{(cell['peak_memory']['above_base_bytes'] or 0) / 2**20:.0f} MiB")
        del encoder
    plain, fast = cells
    fast["speedup_vs_plain"] = plain["median_s"] / fast["median_s"]
    fast["speedup_reference"] = plain["label"]
    fast["max_abs_diff_vs_plain"] = float(abs(weights["fast"] - weights["transformers"]).max())
    described = models.describe(model)
    return make_record("throughput", name=f"splade-encoding-{model.split(':')[-1].split('/')[-1]}",
                       model={**described, "shape": None}, device=device,
                       pairs={"collection": collection, "n_pairs": len(texts), "n_queries": 0, "k": 1,
                              "what": "passages (SPLADE document encoding), not pairs",
                              "mean_chars_per_pair": float(np.mean([len(t) for t in texts]))},
                       settings={"warmup": 1, "repeats": repeats, "latency_queries": 0, "max_length": max_length,
                                 "batch_size_plain": batch_size, "warmup_texts": warmup_texts},
                       ceiling={}, cells=cells)


def splade_table(records: Sequence[ThroughputRecord]) -> str:
    """Passages/s and peak memory per model and engine, from the records."""
    lines = ["| model | engine | dtype | passages | passages/s | speedup | peak memory above start | max abs diff vs plain |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for rec in records:
        for c in rec.cells:
            extra = c.model_extra or {}
            above = c.peak_memory.get("above_base_bytes")
            diff = extra.get("max_abs_diff_vs_plain")
            cols = [rec.model.ref, c.label, c.dtype, str(c.n_pairs), f"{c.pairs_per_s:.1f}",
                    "" if c.speedup_vs_plain is None else f"{c.speedup_vs_plain:.2f}x",
                    "" if above is None else f"{above / 2**20:.0f} MiB", "" if diff is None else f"{diff:.1e}"]
            lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"
