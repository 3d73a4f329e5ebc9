"""`bench run EXP --dry-run`: what a run would do, found without loading a model or downloading.

For each dataset (its query and document counts: from its data when at hand, else the counts
ir_datasets publishes in its metadata, offline), each first stage (cached run or not), each reranker
(pairs to score), the files and models still to download (each file once, with the total size),
and a time estimate per step and in all.

Rates come from records: quality and throughput records in the output folder, and the records the
project committed under `results/` (also those nested in a result file, such as the GPU checks'
`results.json`). A model without a rate of its own takes the rate of its stand-in with random weights
of the same shape (`random:bge-reranker-large` for `BAAI/bge-reranker-large`), else a measured
model's rate scaled by FLOPs per token (shapes: `bench.models.references`). Every estimate names its
device and record: a rate from another device is only a hint. `estimate_here` turns the same plan
into a lower bound for this machine's CPU (`bench.plan.preflight.check_duration`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import lazy
from ..cache import cache_root
from ..config import Experiment
from ..data import expand, load_collection
from ..errors import BenchError
from ..models.references import BIENCODER_ARCHITECTURES, XLMR_ARCHITECTURES
from ..records import SCHEMA, RECORD_KINDS, find_records
from ..retrieve.stage import build_stages
from ..rerank.seq2seq.templates import duo_pairs
from .preflight import uncached_models

#: Vocabulary sizes of the tokenizer families in the shape tables (for download sizes).
VOCAB = {"bert": 30522, "xlmr": 250002}
#: Bytes per weight of the checkpoints the hub ships for these models (fp32 safetensors).
SHIPPED_BYTES_PER_WEIGHT = 4


@dataclass
class Rate:
    """A measured rate: units per second, the device that measured it and the record it is from;
    `flop_per_item` (useful FLOPs per passage or pair at the measured lengths) when the record counts it."""

    per_second: float
    device: str
    source: str
    flop_per_item: float | None = None


@dataclass
class Step:
    """One expensive step of the plan: encoding a corpus, reranking pairs."""

    what: str
    amount: int
    unit: str
    rate: Rate | None
    note: str = ""              # how the rate was found (its own, a stand-in, scaled)

    @property
    def seconds(self) -> float | None:
        return self.amount / self.rate.per_second if self.rate else None

    @property
    def flops(self) -> float | None:
        return self.amount * self.rate.flop_per_item if self.rate and self.rate.flop_per_item else None


@dataclass
class Plan:
    lines: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    downloads: dict[str, int] = field(default_factory=dict)   # missing file -> bytes (0: unknown)
    unestimated: list[str] = field(default_factory=list)      # work without any rate

    def add(self, text: str) -> None:
        self.lines.append(text)

    @property
    def seconds(self) -> float:
        """Estimated time of the work with a rate (on the rates' devices)."""
        return sum(s.seconds or 0.0 for s in self.steps)

    def devices(self) -> list[str]:
        return list(dict.fromkeys(s.rate.device for s in self.steps if s.rate))

    def text(self) -> str:
        out = list(self.lines)
        if self.downloads:
            known = sum(self.downloads.values())
            out.append(f"files to download: {len(self.downloads)}" + (f", {_size(known)} in all" if known else ""))
            out += [f"    missing: {path}" + (f" ({_size(n)})" if n else "") for path, n in self.downloads.items()]
        total = (f"about {_duration(self.seconds)} for encoding and reranking on {' and '.join(self.devices())} "
                 "(searching, downloading and loading models come on top)" if self.steps and self.seconds else "")
        unestimated = list(dict.fromkeys(self.unestimated + [s.what for s in self.steps if s.rate is None]))
        if unestimated:
            total += ("; " if total else "") + f"no measured rate for: {', '.join(unestimated)}"
        return "\n".join(out + [f"time estimate: {total or 'nothing to estimate'}"]) + "\n"


# -- rates --------------------------------------------------------------------------------------------
def measured_rates(folders: list[Path]) -> dict[tuple[str, str], Rate]:
    """(kind, model) -> the fastest rate the records under `folders` measured: ("encode", model) in
    passages/s from first-stage quality records and encoder measurements, ("rerank", model) in pairs/s
    from reranked quality records and throughput records (also records nested in result files)."""
    rates: dict[tuple[str, str], Rate] = {}

    def keep(key, value, device, path, flop=None):
        if value and (key not in rates or value > rates[key].per_second):
            rates[key] = Rate(float(value), str(device or "unknown device"), _shown(path), flop)

    for folder in folders:
        if not folder.is_dir():
            continue
        for rec in find_records(folder, kind="quality"):
            device = rec.environment.device.get("device")
            if rec.system.stage == "rerank":
                if not rec.timings.cached and rec.timings.resumed_blocks in (None, 0):
                    keep(("rerank", _ref((rec.system.reranker or {}).get("model"))), rec.timings.rerank_pairs_per_s,
                         device, rec.path)
            elif not rec.timings.cached:
                keep(("encode", _ref(rec.system.first_stage.get("model"))), rec.timings.docs_per_second, device,
                     rec.path)
        for rec in find_records(folder, kind="throughput"):
            _throughput_rates(rec, rec.path, keep)
        for path, nested in _nested_records(folder):
            if nested.get("schema") == SCHEMA and nested.get("kind") == "throughput":
                try:
                    rec = RECORD_KINDS["throughput"].model_validate(nested)
                except ValueError:
                    continue
                _throughput_rates(rec, path, keep)
            elif nested.get("kind") == "encoder-throughput":  # the GPU checks' bi-encoder measurements
                device = (nested.get("ceiling") or {}).get("device")
                for cell in nested.get("cells") or []:
                    if isinstance(cell, dict) and not cell.get("error") and cell.get("model"):
                        n = cell.get("n_texts")
                        keep(("encode", cell["model"]), cell.get("texts_per_s"), device, f"{path} ({cell.get('label')})",
                             cell["useful_flop"] / n if cell.get("useful_flop") and n else None)
    return rates


def _shown(path) -> str:
    """A record's path as the user typed the folder: relative to the working folder when inside it."""
    text = str(path)
    try:
        return str(Path(text.split(" (")[0]).resolve().relative_to(Path.cwd())) + text[len(text.split(" (")[0]):]
    except ValueError:
        return text


def _ref(model) -> str | None:
    return model.get("ref") if isinstance(model, dict) else model


def _throughput_rates(rec, path, keep) -> None:
    for cell in rec.cells:
        if not cell.error and cell.pairs_per_s:
            flop = cell.useful_flop / cell.n_pairs if cell.useful_flop and cell.n_pairs else None
            keep(("rerank", rec.model.ref), cell.pairs_per_s, rec.environment.device.get("device") or rec.device,
                 f"{path} ({cell.label})", flop)


def _nested_records(folder: Path):
    """(file, dict) for every record-like dict nested inside the JSON files under `folder` that are not
    records themselves (`find_records` reads those)."""
    for path in sorted(folder.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("schema") == SCHEMA:
            continue
        stack = [data]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                if item.get("kind") in ("throughput", "encoder-throughput"):
                    yield path, item
                else:
                    stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)


def _shape(model: str) -> dict | None:
    """The architecture of a model the project knows the shape of, by its name's last part."""
    name = model.rstrip("/").split("/")[-1].split(":")[-1]
    return XLMR_ARCHITECTURES.get(name) or BIENCODER_ARCHITECTURES.get(name)


def flops_per_token(shape: dict) -> float:
    """Matrix FLOPs per token of a transformer encoder: 2 × layers × (4 h² + 2 h ffn)."""
    h = shape["hidden_size"]
    return 2.0 * shape["num_hidden_layers"] * (4 * h * h + 2 * h * shape["intermediate_size"])


def rate_for(rates: dict[tuple[str, str], Rate], kind: str, model: str) -> tuple[Rate | None, str]:
    """The rate of `model` for `kind` (encode or rerank) and how it was found: its own; its random-weight
    stand-in of the same shape; else a measured model's rate scaled by FLOPs per token."""
    if (kind, model) in rates:
        return rates[(kind, model)], ""
    name = model.rstrip("/").split("/")[-1].split(":")[-1]
    stand_in = rates.get((kind, f"random:{name}"))
    if stand_in is not None and model != f"random:{name}":
        return stand_in, f" (random:{name}, the same shape with random weights)"
    target = _shape(model)
    if target is None:
        return None, ""
    for (k, measured), rate in sorted(rates.items(), key=lambda kv: -kv[1].per_second):
        shape = _shape(measured) if k == kind and measured else None
        if shape is not None:
            ratio = flops_per_token(shape) / flops_per_token(target)
            return (Rate(rate.per_second * ratio, rate.device, rate.source,
                         rate.flop_per_item / ratio if rate.flop_per_item else None),
                    f" (scaled from {measured} by FLOPs per token, ×{ratio:.2f}: an estimate)")
    return None, ""


def download_bytes(model: str) -> int | None:
    """About how many bytes a model of known shape is on the hub (fp32 weights; the rest is small)."""
    shape = _shape(model)
    if shape is None:
        return None
    family = shape.get("family", "xlmr")
    h = shape["hidden_size"]
    params = (VOCAB[family] + shape["max_position_embeddings"]) * h + shape["num_hidden_layers"] * (
        4 * h * h + 2 * h * shape["intermediate_size"])
    return int(params * SHIPPED_BYTES_PER_WEIGHT)


# -- the plan -----------------------------------------------------------------------------------------
def published_counts(spec) -> tuple[int, int, str, list] | None:
    """(queries, documents, corpus, missing files) of an ir_datasets collection that is not downloaded
    yet: the counts from ir_datasets' own metadata (shipped with the package, read offline), the id of
    the dataset its documents come from, the files from its download table. None when ir_datasets does
    not know them."""
    from ..data.irds import missing_downloads  # imports ir_datasets' metadata, here only

    if spec.source != "ir_datasets":
        return None
    try:
        irds = lazy.ir_datasets
        ds = irds.load(spec.id)
        n_docs, n_queries = ds.docs_count(), ds.queries_count()
        corpus = irds.docs_parent_id(spec.id)
        handlers = [ds.queries_handler(), ds.qrels_handler(), ds.docs_handler()]
    except Exception:  # unknown id or a dataset without metadata: no counts
        return None
    if n_docs is None or n_queries is None:
        return None
    if spec.max_queries:
        n_queries = min(n_queries, spec.max_queries)
    return n_queries, n_docs, f"ir_datasets:{corpus}", [m for h in handlers for m in missing_downloads(h)]


def plan(exp: Experiment, out: Path, *, results: Path | None = None) -> Plan:
    """The plan of `bench run` for `exp` into `out` (see the module's docstring)."""
    cache = cache_root(exp.cache_dir)
    rates = measured_rates([p for p in (results, out) if p is not None])
    p = Plan()
    p.add(f"experiment {exp.name!r}: output {out}, cache {cache}")
    stages = build_stages(exp.first_stages, cache, progress=False)
    n_pairs: dict[str, int] = {}
    encoded: dict[tuple, str] = {}  # (model, corpus) -> the dataset whose first stage encodes it
    for spec in (s for entry in exp.datasets for s in expand(entry)):
        try:
            collection = load_collection(spec, cache_dir=cache, download=False)
        except BenchError as exc:
            published = published_counts(spec)
            if published is None:  # nothing to count with: what is missing, in ir_datasets' words
                p.add(f"- dataset {spec.label}: not at hand ({str(exc).splitlines()[0].rstrip(':')})")
                p.unestimated.append(f"{spec.label} (no counts)")
                continue
            n_queries, n_docs, corpus, missing = published
            for m in missing:
                p.downloads.setdefault(m.path, m.size)
            p.add(f"- dataset {spec.label}: not downloaded yet; {n_queries:,} queries, {n_docs:,} documents "
                  f"(ir_datasets' published counts); {len({m.path for m in missing})} file(s) to download, listed below")
            _first_stages(p, exp, spec, rates, n_queries, (n_docs, corpus), None, n_pairs, encoded)
            continue
        n_queries, n_docs = len(collection.queries), collection.n_docs()
        p.add(f"- dataset {collection.name}: {n_queries:,} queries, {n_docs:,} documents")
        _first_stages(p, exp, spec, rates, n_queries, (n_docs, collection.corpus_fingerprint()), (stages, collection),
                      n_pairs, encoded)
    for rspec in exp.rerankers:  # by label: two rerankers may share a model
        if rspec.label in n_pairs:
            rate, how = rate_for(rates, "rerank", rspec.model)
            step = Step(f"reranking with {rspec.model}", n_pairs[rspec.label], "pairs", rate, how)
            p.steps.append(step)
            p.add(f"reranker {rspec.label}: up to {n_pairs[rspec.label]:,} pairs in all" + _estimate(step))
    missing = [(ref, rev) for ref, rev in uncached_models(exp)]
    sizes = [download_bytes(ref) for ref, _ in missing]
    p.add("models to download (not in the local Hugging Face cache): "
          + (", ".join(ref + (f"@{rev}" if rev else "") + (f" (about {_size(n)})" if n else "")
                       for (ref, rev), n in zip(missing, sizes)) if missing else "none (all local or cached)"))
    for (ref, _), n in zip(missing, sizes):
        p.downloads.setdefault(f"{ref} (Hugging Face hub, weights estimated from the architecture)", n or 0)
    return p


def _first_stages(p: Plan, exp: Experiment, spec, rates, n_queries: int, corpus: tuple[int, str], loaded, n_pairs,
                  encoded: dict) -> None:
    """The lines and steps of a dataset's first stages and rerankers; a corpus is encoded once per
    model (its embeddings are cached by corpus, whatever the split)."""
    n_docs, corpus_id = corpus
    for name, fs in exp.first_stages_for(spec):
        cached = loaded is not None and loaded[0][name].is_cached(loaded[1])
        what = f"{fs.kind}" + (f" {fs.model}" if fs.model else "") + f", depth {fs.depth}"
        line = f"  - first stage {exp.first_stage_label(name)} ({what}): " + ("cached" if cached else "to run")
        if not cached and fs.kind in ("dense", "bge-m3", "splade"):
            if (fs.model, corpus_id) in encoded:
                line += f"; its corpus is encoded once, for {encoded[(fs.model, corpus_id)]}"
            else:
                encoded[(fs.model, corpus_id)] = spec.label
                rate, how = rate_for(rates, "encode", fs.model)
                step = Step(f"encoding {fs.model}", n_docs, "passages", rate, how)
                p.steps.append(step)
                line += _estimate(step)
        p.add(line)
        for rspec in exp.rerankers:
            k = min(rspec.top_k, fs.depth)
            pairs = n_queries * k
            n_pairs[rspec.label] = n_pairs.get(rspec.label, 0) + pairs
            duo = (f", {n_queries * duo_pairs(k, rspec.duo_aggregation):,} duoT5 pairs"
                   if rspec.head == "duot5" else "")
            p.add(f"    - rerank {exp.system_label(name, rspec)}: up to {pairs:,} pairs (top "
                  f"{k} of {n_queries:,} queries{duo}; blocks cached by an earlier run are reused)")


def _estimate(step: Step) -> str:
    if step.rate is None:
        return ""
    return (f", about {_duration(step.seconds)} at {step.rate.per_second:,.0f} {step.unit}/s{step.note} "
            f"(measured on {step.rate.device}: {step.rate.source})")


def estimate_here(p: Plan, cpu_flop_per_s: float) -> tuple[float, list[str]]:
    """A lower bound of the plan's time on this machine's CPU, and the steps it could not bound:
    each step at its own rate when that was measured on a CPU, else its FLOPs at `cpu_flop_per_s`
    (the CPU's measured matrix rate, which no engine exceeds)."""
    seconds, unbounded = 0.0, []
    for step in p.steps:
        if step.rate is not None and step.rate.device == "cpu":
            seconds += step.seconds or 0.0
        elif step.flops:
            seconds += step.flops / cpu_flop_per_s
        else:
            unbounded.append(step.what)
    return seconds, unbounded


def _size(n: int) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e9 else f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n / 1e3:,.0f} kB"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"
