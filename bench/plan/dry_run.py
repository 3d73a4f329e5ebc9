"""`bench run EXP --dry-run`: what a run would do, found without loading a model or downloading.

For each dataset (with its query and document counts when its data is at hand, else the downloads
it still needs), each first stage (cached run or not), each reranker (pairs to score), the models
not yet in the local Hugging Face cache, and a time estimate from rates measured in earlier
records (quality and throughput records under `results/` and the output folder) — each rate named
with the device that measured it, since a rate from another device is only a hint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..cache import cache_root
from ..config import Experiment
from ..data import expand, load_collection
from ..errors import BenchError
from .preflight import uncached_models
from ..records import find_records
from ..retrieve.stage import build_stages


@dataclass
class Rate:
    """A measured rate: units per second, the device that measured it and the record it is from."""

    per_second: float
    device: str
    source: str


@dataclass
class Plan:
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0          # estimated time of the work with a measured rate
    unestimated: list[str] = field(default_factory=list)  # work without one

    def add(self, text: str) -> None:
        self.lines.append(text)

    def text(self) -> str:
        total = f"about {_duration(self.seconds)} for the work with a measured rate" if self.seconds else ""
        if self.unestimated:
            total += ("; " if total else "") + f"no measured rate for: {', '.join(dict.fromkeys(self.unestimated))}"
        return "\n".join(self.lines + [f"time estimate: {total}"]) + "\n"


def measured_rates(folders: list[Path]) -> dict[tuple[str, str], Rate]:
    """(kind, model) -> the fastest rate the records under `folders` measured: ("encode", model) in
    passages/s from first-stage quality records, ("rerank", model) in pairs/s from reranked quality
    records and throughput records."""
    rates: dict[tuple[str, str], Rate] = {}

    def keep(key, value, device, path):
        if value and (key not in rates or value > rates[key].per_second):
            rates[key] = Rate(float(value), str(device or "unknown device"), str(path))

    for folder in folders:
        if not folder.is_dir():
            continue
        for rec in find_records(folder, kind="quality"):
            device = rec.environment.device.get("device")
            if rec.system.stage == "rerank":
                model = (rec.system.reranker or {}).get("model")
                ref = model.get("ref") if isinstance(model, dict) else model
                if not rec.timings.cached and rec.timings.resumed_blocks in (None, 0):
                    keep(("rerank", ref), rec.timings.rerank_pairs_per_s, device, rec.path)
            else:
                model = rec.system.first_stage.get("model")
                ref = model.get("ref") if isinstance(model, dict) else model
                if not rec.timings.cached:
                    keep(("encode", ref), rec.timings.docs_per_second, device, rec.path)
        for rec in find_records(folder, kind="throughput"):
            best = max((c.pairs_per_s or 0 for c in rec.cells if not c.error), default=0)
            keep(("rerank", rec.model.ref), best, rec.environment.device.get("device"), rec.path)
    return rates


def plan(exp: Experiment, out: Path, *, results: Path | None = None) -> Plan:
    """The plan of `bench run` for `exp` into `out` (see the module's docstring)."""
    cache = cache_root(exp.cache_dir)
    rates = measured_rates([p for p in (results, out) if p is not None])
    p = Plan()
    p.add(f"experiment {exp.name!r}: output {out}, cache {cache}")
    stages = build_stages(exp.first_stages, cache, progress=False)
    n_pairs: dict[str, int] = {}
    for spec in (s for entry in exp.datasets for s in expand(entry)):
        try:
            collection = load_collection(spec, cache_dir=cache, download=False)
        except BenchError as exc:  # the files ir_datasets lacks, one line each, before what to do about it
            lines = [line for line in str(exc).splitlines() if line.strip()]
            files = dict.fromkeys(line.strip() for line in lines[1:] if not line.startswith("downloads are switched off"))
            p.add(f"- dataset {spec.label}: not downloaded yet ({lines[0].rstrip(':')})")
            p.lines += [f"    missing: {line}" for line in files]
            for name, fs in exp.first_stages_for(spec):
                p.add(f"  - first stage {exp.first_stage_label(name)} ({fs.kind}, depth {fs.depth}): to run")
                for rspec in exp.rerankers:
                    p.add(f"    - rerank {exp.system_label(name, rspec)}: top {min(rspec.top_k, fs.depth)} per query "
                          "(pairs known once the queries are)")
            p.unestimated.append(f"{spec.label} (not downloaded)")
            continue
        n_queries, n_docs = len(collection.queries), collection.n_docs()
        p.add(f"- dataset {collection.name}: {n_queries:,} queries, {n_docs:,} documents")
        for name, fs in exp.first_stages_for(spec):
            cached = stages[name].is_cached(collection)
            what = f"{fs.kind}" + (f" {fs.model}" if fs.model else "") + f", depth {fs.depth}"
            line = f"  - first stage {exp.first_stage_label(name)} ({what}): " + ("cached" if cached else "to run")
            if not cached and fs.kind == "dense":
                line += _estimate(p, rates, ("encode", fs.model), n_docs, "passages", f"encoding {fs.model}")
            p.add(line)
            for rspec in exp.rerankers:
                k = min(rspec.top_k, fs.depth)
                pairs = n_queries * k
                n_pairs[rspec.label] = n_pairs.get(rspec.label, 0) + pairs  # by label: two rerankers may share a model
                duo = f", {n_queries * k * (k - 1):,} ordered duoT5 pairs" if rspec.head == "duot5" else ""
                p.add(f"    - rerank {exp.system_label(name, rspec)}: up to {pairs:,} pairs (top "
                      f"{k} of {n_queries:,} queries{duo}; blocks cached by an earlier run are reused)")
    for rspec in exp.rerankers:
        if rspec.label in n_pairs:
            p.add(f"reranker {rspec.label}: up to {n_pairs[rspec.label]:,} pairs in all"
                  + _estimate(p, rates, ("rerank", rspec.model), n_pairs[rspec.label], "pairs", f"reranking with {rspec.model}"))
    missing = [ref + (f"@{rev}" if rev else "") for ref, rev in uncached_models(exp)]
    p.add("models to download (not in the local Hugging Face cache): "
          + (", ".join(missing) if missing else "none (all local or cached)"))
    return p


def _estimate(p: Plan, rates, key, amount: int, unit: str, what: str) -> str:
    rate = rates.get(key)
    if rate is None:
        p.unestimated.append(what)
        return ""
    seconds = amount / rate.per_second
    p.seconds += seconds
    return (f", about {_duration(seconds)} at {rate.per_second:,.0f} {unit}/s "
            f"(measured on {rate.device}: {rate.source})")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
