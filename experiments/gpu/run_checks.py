"""The one prepared GPU benchmark: engines side by side, fidelity, encoders (see README.md here).

Run through ``run_checks.sh`` (which sets the environment); ``--smoke`` runs the same steps on CPU
with a tiny model and a few pairs, to prove the script before GPU time is spent on it.

Each step has a time limit and the whole run has one: a step that would start after its limit is
skipped and recorded as skipped; a step that fails is recorded with its error and the rest go on.
After every step (and every sweep cell) ``results.json`` is rewritten atomically, so whatever ran is
kept even if the run is killed. Files written to ``--out`` (at most 8 come back from the GPU box):
``results.json`` (all records, the steps, the summary), ``table.md`` and ``throughput.png``; the
shell wrapper adds ``log.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if sys.version_info < (3, 11):  # bench.config imports tomllib (3.11+); tomli is the same parser, carried in .whl/
    try:
        import tomllib  # noqa: F401
    except ModuleNotFoundError:
        import tomli

        sys.modules["tomllib"] = tomli

# Issue 3's anchors and targets (H100): used only to print the comparison, never to change a number.
TARGETS = {"fast_pairs_per_s": 8000, "fast_vs_flag": 3.0, "bf16_top10_identical": 0.99,
           "bge_base_passages_per_s": 14700}
ANCHORS = {"transformers fp32 batch 32": 289, "sentence-transformers fp32 batch 32": 610, "flag fp16 batch 128": 1220,
           "bf16 length-sorted 65,536-token batches": 4586, "st encoder bge-base fp32 batch 32": 2224,
           "st encoder bge-m3 fp32 batch 32": 737}

FULL = dict(
    device="cuda", reranker="random:bge-reranker-large", k=100, sweep_pairs=4096, fidelity_queries=None,
    warmup=1, repeats=3, latency_queries=8, total_s=380,
    # slow baselines on whole-query heads of the same pairs (recorded per cell as max_pairs)
    plain_pairs=1024, st_pairs=2048,
    budgets=[16384, 65536, 131072], encoder_texts=4096, encoder_st_texts={"bge-base-en-v1.5": 4096, "bge-m3": 2048},
    encoders={"bge-base-en-v1.5": "random:bge-base-en-v1.5", "bge-m3": "random:bge-m3"},
    encoder_budget=65536,
    limits={"ceiling": 30, "pairs": 40, "model": 90, "sweep": 170, "fidelity": 75, "encoders": 110},
)
SMOKE = dict(
    device="cpu", reranker="random:tiny-xlmr-reranker", k=8, sweep_pairs=32, fidelity_queries=6,
    warmup=1, repeats=1, latency_queries=1, total_s=400, plain_pairs=16, st_pairs=24,
    budgets=[512, 2048], encoder_texts=48, encoder_st_texts={"bge-base-en-v1.5": 32, "bge-m3": 32},
    encoders={"bge-base-en-v1.5": "offline:all-MiniLM-L6-v2", "bge-m3": "random:tiny-bge-m3"},
    encoder_budget=1024,
    limits={"ceiling": 30, "pairs": 60, "model": 60, "sweep": 180, "fidelity": 60, "encoders": 90},
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Checks:
    """The steps, their limits, and everything they produced, saved after each step."""

    def __init__(self, out: Path, cfg: dict, smoke: bool, total_s: float):
        self.out, self.cfg, self.smoke = out, cfg, smoke
        self.t0 = time.monotonic()
        self.end = self.t0 + total_s
        self.steps: list[dict] = []
        self.records: dict[str, dict] = {}
        self.partial: dict = {}
        self.state: dict = {}

    # --- bookkeeping ----------------------------------------------------------------------------
    def step(self, name: str, fn, *, needs: tuple[str, ...] = ()) -> None:
        limit = self.cfg["limits"][name]
        now = time.monotonic()
        missing = [n for n in needs if n not in self.state]
        entry = {"step": name, "limit_s": limit, "started_s": round(now - self.t0, 1)}
        if missing:
            entry.update(status="skipped", reason=f"needs {missing} from an earlier step that did not finish")
        elif now + 5 > self.end:
            entry.update(status="skipped", reason="the run's total time limit was reached")
        else:
            deadline = min(now + limit, self.end)
            log(f"step {name} (limit {limit:.0f} s, {self.end - now:.0f} s left in the run)")
            try:
                fn(deadline)
                entry["status"] = "ok"
            except Exception as exc:  # recorded, and the next step goes on: the run must not die
                entry.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000],
                             traceback=traceback.format_exc()[-4000:])
                log(f"step {name} FAILED: {type(exc).__name__}: {exc}")
            entry["seconds"] = round(time.monotonic() - now, 1)
            if entry["seconds"] > limit:
                entry["over_limit"] = True
        self.steps.append(entry)
        self.save()

    def save(self) -> None:
        from bench.io import atomic_write_json

        atomic_write_json(self.out / "results.json", {
            "what": "rerank-bench GPU checks (experiments/gpu/run_checks.py)", "smoke": self.smoke,
            "config": self.cfg, "targets": TARGETS, "issue_anchors_pairs_per_s": ANCHORS, "steps": self.steps,
            "records": self.records, "partial": self.partial, "summary": self.state.get("summary"),
            "elapsed_s": round(time.monotonic() - self.t0, 1)})

    # --- steps ----------------------------------------------------------------------------------
    def environment(self) -> None:
        import torch

        from bench.records import environment

        env = environment()
        env["torch_cuda_available"] = torch.cuda.is_available()
        env["env"] = {k: os.environ.get(k) for k in ("TOKENIZERS_PARALLELISM", "RERANK_BENCH_CACHE", "DATA",
                                                     "RERANK_BENCH_XLMR_TOKENIZER", "CUDA_VISIBLE_DEVICES")}
        try:
            env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,clocks.max.sm,power.limit",
                                                "--format=csv,noheader"], capture_output=True, text=True,
                                               timeout=15).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            env["nvidia_smi"] = f"not available: {exc}"
        self.records["environment"] = env
        log(f"device: {env['device'].get('device')}; torch {torch.__version__}; {env['nvidia_smi']}")
        if self.cfg["device"] == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device; run with --smoke for the CPU check")

    def ceiling(self, deadline: float) -> None:
        from bench.throughput.flops import matmul_ceiling

        c = matmul_ceiling(self.cfg["device"])
        self.records["ceiling"] = c
        self.state["ceiling"] = c
        log(f"measured {c['dtype']} matmul ceiling: {c['tflop_per_s']:.3g} TFLOP/s")

    def pairs(self, deadline: float) -> None:
        from bench.config import CollectionSpec
        from bench.data import load_collection
        from bench.throughput.pairs import pairs_from_collection

        data = Path(os.environ.get("DATA") or ROOT.parent / "shared" / "data")
        col = load_collection(CollectionSpec(source="beir", path=str(data / "miracl-yo-dev"), split="dev"))
        full = pairs_from_collection(col, k=self.cfg["k"], max_queries=self.cfg["fidelity_queries"])
        sweep = full.head(self.cfg["sweep_pairs"])
        # passages for the encoders: the candidates' distinct texts, in pair order
        seen, texts = set(), []
        for (_, d), did in zip(full.pairs, full.doc_ids):
            if did not in seen:
                seen.add(did)
                texts.append(d)
        self.state.update(collection=col, full=full, sweep_pairs=sweep, texts=texts[: self.cfg["encoder_texts"]])
        log(f"pairs: sweep {len(sweep)} ({sweep.n_queries} queries × k={sweep.k}), fidelity {len(full)} "
            f"({full.n_queries} queries), encoder passages {len(self.state['texts'])}")

    def model(self, deadline: float) -> None:
        from bench import models
        from bench.throughput.flops import tokenizer_and_shape

        t = time.monotonic()
        path = models.resolve(self.cfg["reranker"], os.environ.get("RERANK_BENCH_CACHE"))
        self.state["tokenizer"], self.state["shape"] = tokenizer_and_shape(path)
        self.state["model"] = path
        log(f"model {self.cfg['reranker']} ready in {time.monotonic() - t:.0f} s: {self.state['shape']}")

    def sweep_cells(self):
        from bench.throughput.sweep import Cell

        c, L = self.cfg, 512
        cells = [
            Cell("transformers", "fp32", L, batch_size=32, max_pairs=c["plain_pairs"],
                 note="the plain loop; a whole-query head of the pairs (it is slow)"),
            Cell("sentence-transformers", "fp32", L, batch_size=32, max_pairs=c["st_pairs"],
                 note="CrossEncoder.predict defaults; a whole-query head of the pairs"),
            Cell("flag", "fp16", L, batch_size=128, note="FlagEmbedding-style"),
        ]
        for budget in c["budgets"]:
            cells.append(Cell("fast", "bf16", L, token_budget=budget))
        mid = c["budgets"][len(c["budgets"]) // 2]
        cells += [
            Cell("fast", "bf16", L, token_budget=mid, options=(("attention", "sdpa-padded"),)),
            Cell("fast", "bf16", L, token_budget=mid, options=(("forward", "hf"),),
                 note="length-sorted token-budget batches through the Hugging Face forward (SDPA, padded)"),
            Cell("fast", "fp16", L, token_budget=mid),
            Cell("fast", "fp32", L, token_budget=mid, note="fp32 reference for fidelity"),
        ]
        return cells

    def sweep(self, deadline: float) -> None:
        from bench.throughput.fidelity import sweep_fidelity
        from bench.throughput.sweep import Sweep, reranker_factory

        cfg = self.cfg
        cache = os.environ.get("RERANK_BENCH_CACHE")
        sw = Sweep(self.state["sweep_pairs"], self.sweep_cells(),
                   reranker_factory(cfg["reranker"], cache_dir=cache, device=cfg["device"]),
                   model=cfg["reranker"], device=cfg["device"], warmup=cfg["warmup"], repeats=cfg["repeats"],
                   latency_queries=cfg["latency_queries"], tokenizer=self.state["tokenizer"],
                   shape=self.state["shape"], name="gpu-checks", deadline=deadline,
                   settings={"reranker_ref": cfg["reranker"]})

        def on_cell(result):
            self.partial.setdefault("sweep_cells", []).append(result)
            if result.get("error"):
                log(f"  {result['label']}: {result['error']}")
            else:
                log(f"  {result['label']}: {result['pairs_per_s']:,.0f} pairs/s on {result['n_pairs']} pairs, "
                    f"{100 * (result.get('ceiling_share') or 0):.1f}% of ceiling")
            self.save()

        record, scores = sw.run(ceiling=self.state["ceiling"], progress=False, on_cell=on_cell)
        self.records["throughput"] = record
        self.partial.pop("sweep_cells", None)
        self.state["sweep_record"] = record
        self.state["sweep_scores"] = scores
        comparisons = sweep_fidelity(record, scores, self.state["sweep_pairs"], qrels=self.state["collection"].qrels,
                                     evaluator="builtin", include_fp32=True)
        self.state["sweep_fidelity"] = comparisons

    def fidelity(self, deadline: float) -> None:
        """Every precision against fp32 on all the queries (one untimed pass each; more queries than
        the sweep, so that '≥ 99% of queries' is a statement about more than 40 queries)."""
        from bench.throughput.fidelity import fidelity_record, sweep_fidelity
        from bench.throughput.sweep import Cell, Sweep, reranker_factory

        cfg, L = self.cfg, 512
        mid = cfg["budgets"][len(cfg["budgets"]) // 2]
        cells = [Cell("fast", "fp32", L, token_budget=mid), Cell("fast", "bf16", L, token_budget=mid),
                 Cell("flag", "fp16", L, batch_size=128), Cell("fast", "fp16", L, token_budget=mid)]
        sw = Sweep(self.state["full"], cells,
                   reranker_factory(cfg["reranker"], cache_dir=os.environ.get("RERANK_BENCH_CACHE"),
                                    device=cfg["device"]),
                   model=cfg["reranker"], device=cfg["device"], warmup=0, repeats=1, latency_queries=0,
                   tokenizer=self.state["tokenizer"], shape=self.state["shape"], name="gpu-checks-fidelity",
                   deadline=deadline, settings={"note": "one untimed-warm-up pass per cell: scores for fidelity"})
        record, scores = sw.run(ceiling=self.state["ceiling"], progress=False)
        comparisons = sweep_fidelity(record, scores, self.state["full"], qrels=self.state["collection"].qrels,
                                     evaluator="builtin")
        for c in comparisons:
            c.pairs_set = "all queries"
        sweep_part = self.state.get("sweep_fidelity", [])
        for c in sweep_part:
            c.pairs_set = "sweep pairs"
        rec = fidelity_record(sweep_part + comparisons, throughput_record=record,
                              note="evaluator 'builtin' (checked equal to pytrec_eval in tests/test_fidelity.py; "
                                   "no ranx/numba compile on a timed box)")
        self.records["fidelity"] = rec
        self.records["fidelity_pass_throughput"] = record
        for c in comparisons:
            log(f"  {c.cell} vs {c.reference}: top-10 identical {100 * c.top10_identical:.1f}% of "
                f"{c.n_queries} queries, max |Δ| {c.max_abs_diff:.2e}")

    def encoders(self, deadline: float) -> None:
        from bench import models
        from bench.config import FirstStageSpec
        from bench.engine.device import release_memory
        from bench.retrieve import build_encoder
        from bench.throughput.flops import tokenizer_and_shape
        from bench.throughput.pairs import text_token_lengths
        from bench.throughput.sweep import run_encoder_cell

        cfg, cache = self.cfg, os.environ.get("RERANK_BENCH_CACHE")
        ceiling = self.state.get("ceiling")
        out = []
        self.records["encoders"] = {"kind": "encoder-throughput", "ceiling": ceiling, "cells": out}
        for arch, ref in cfg["encoders"].items():
            if time.monotonic() > deadline:
                out.append({"label": arch, "error": "skipped: the step's time limit was reached"})
                continue
            try:
                path, source = models.resolve(ref, cache), "bench.models"
                tok, shape = tokenizer_and_shape(path, head=False)
            except Exception as exc:
                out.append({"label": arch, "model": ref, "error": f"{type(exc).__name__}: {exc}"[:1000]})
                log(f"  encoder {arch}: {out[-1]['error']}")
                continue
            for engine, dtype, n in (("sentence-transformers", "fp32", cfg["encoder_st_texts"][arch]),
                                     ("fast", "bf16", len(self.state["texts"]))):
                label = f"{arch} {engine} {dtype}"
                if time.monotonic() > deadline:
                    out.append({"label": label, "error": "skipped: the step's time limit was reached"})
                    continue
                texts = self.state["texts"][:n]
                fields = dict(kind="dense", model=path, dtype=dtype, max_length=512, device=cfg["device"], engine=engine)
                if engine == "fast":
                    fields["token_budget"] = cfg["encoder_budget"]
                else:
                    fields["batch_size"] = 32
                enc = None
                try:
                    enc = build_encoder(FirstStageSpec(**fields), cache_dir=cache)
                    cell = run_encoder_cell(enc, texts, label=label, shape=shape,
                                            lengths=text_token_lengths(tok, texts, 512), ceiling=ceiling,
                                            device=cfg["device"], warmup=1, repeats=2)
                    cell.update(architecture=arch, model=ref, model_source=source, engine=engine, dtype=dtype,
                                batch_size=fields.get("batch_size"), token_budget=fields.get("token_budget"))
                    log(f"  encoder {label}: {cell['texts_per_s']:,.0f} passages/s "
                        f"(mean {cell.get('mean_tokens_per_text', 0):.0f} tokens)")
                except Exception as exc:
                    cell = {"label": label, "architecture": arch, "model": ref, "engine": engine, "dtype": dtype,
                            "error": f"{type(exc).__name__}: {exc}"[:1000]}
                    log(f"  encoder {label}: {cell['error']}")
                finally:
                    del enc
                    release_memory(cfg["device"])
                out.append(cell)
                self.save()

    # --- outputs --------------------------------------------------------------------------------
    def finish(self) -> None:
        """Table, plot and summary from whatever finished."""
        from bench.io import atomic_write_text
        from bench.throughput.tables import fidelity_table, plot_throughput, throughput_table

        summary = summarize(self.records)
        self.state["summary"] = summary
        parts = [f"# GPU checks ({'smoke, CPU' if self.smoke else 'full'})", "",
                 f"Device: {(self.records.get('environment') or {}).get('device', {}).get('device')}; "
                 f"elapsed {time.monotonic() - self.t0:.0f} s", ""]
        if "throughput" in self.records:
            parts += ["## Rerankers side by side (same pairs)", "", throughput_table(self.records["throughput"])]
        if "fidelity" in self.records:
            parts += ["## Fidelity against fp32", "", fidelity_table(self.records["fidelity"].comparisons)]
        if "encoders" in self.records:
            parts += ["## Bi-encoders", "", encoder_table(self.records["encoders"]["cells"])]
        parts += ["## Steps", "", "| step | status | seconds | note |", "|---|---|---|---|"]
        parts += [f"| {s['step']} | {s['status']} | {s.get('seconds', '')} | "
                  f"{(s.get('error') or s.get('reason') or '')[:150]} |" for s in self.steps]
        parts += ["", "## Summary", "", summary_text(summary)]
        atomic_write_text(self.out / "table.md", "\n".join(parts) + "\n")
        if "throughput" in self.records:
            try:
                plot_throughput(self.records["throughput"], self.out / "throughput.png")
            except Exception as exc:
                self.steps.append({"step": "plot", "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        self.save()


def encoder_table(cells) -> str:
    lines = ["| encoder | engine | dtype | passages | passages/s | mean tokens | TFLOP/s | % ceiling | peak mem |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        if c.get("error"):
            lines.append(f"| {c['label']} | {c.get('engine', '')} | {c.get('dtype', '')} | | {c['error'][:80]} | | | | |")
            continue
        mem = (c.get("peak_memory") or {}).get("bytes")
        lines.append(f"| {c['architecture']} | {c['engine']} | {c['dtype']} | {c['n_texts']} | {c['texts_per_s']:,.0f} | "
                     f"{c.get('mean_tokens_per_text', 0):.1f} | {c.get('useful_tflop_per_s', 0):.3g} | "
                     f"{100 * (c.get('ceiling_share') or 0):.1f}% | {'–' if mem is None else f'{mem / 2**30:.2f} GiB'} |")
    return "\n".join(lines) + "\n"


def summarize(records: dict) -> dict:
    """The issue's targets against what was measured (None where the step did not run). `records`: the
    typed throughput and fidelity records, the other steps' results as dicts."""
    out: dict = {"device": (records.get("environment") or {}).get("device", {}).get("device")}
    tp = records.get("throughput")
    if tp:
        ok = [c for c in tp.cells if not c.error]
        fast = [c for c in ok if c.engine == "fast" and c.dtype_resolved in ("bf16", "fp16")]
        flag = [c for c in ok if c.engine == "flag"]
        best = max(fast, key=lambda c: c.pairs_per_s, default=None)
        out["mean_tokens_per_pair"] = tp.pairs.mean_tokens_per_pair
        out["best_fast"] = best and {"label": best.label, "pairs_per_s": best.pairs_per_s,
                                     "ceiling_share": best.ceiling_share}
        for c in ok:
            out.setdefault("pairs_per_s", {})[c.label] = round(c.pairs_per_s, 1)
        if best and flag:
            out["fast_vs_flag"] = best.pairs_per_s / flag[0].pairs_per_s
        out["fast_target_met"] = bool(best and best.pairs_per_s >= TARGETS["fast_pairs_per_s"])
        out["vs_flag_target_met"] = bool(out.get("fast_vs_flag") and out["fast_vs_flag"] >= TARGETS["fast_vs_flag"])
    fid = records.get("fidelity")
    if fid:
        bf16 = [c for c in fid.comparisons if c.dtype == "bf16" and c.engine == "fast" and c.pairs_set == "all queries"]
        if bf16:
            out["bf16_top10_identical"] = bf16[0].top10_identical
            out["bf16_queries"] = bf16[0].n_queries
            out["bf16_target_met"] = bf16[0].top10_identical >= TARGETS["bf16_top10_identical"]
    enc = records.get("encoders")
    if enc:
        for c in enc["cells"]:
            if not c.get("error"):
                out.setdefault("encoder_passages_per_s", {})[c["label"]] = round(c["texts_per_s"], 1)
        base = [c for c in enc["cells"] if not c.get("error") and c.get("architecture") == "bge-base-en-v1.5"
                and c.get("engine") == "fast"]
        if base:
            out["bge_base_target_met"] = base[0]["texts_per_s"] >= TARGETS["bge_base_passages_per_s"]
    return out


def summary_text(s: dict) -> str:
    lines = []
    if s.get("best_fast"):
        b = s["best_fast"]
        lines.append(f"best fast cell: {b['label']}: {b['pairs_per_s']:,.0f} pairs/s "
                     f"(target ≥ {TARGETS['fast_pairs_per_s']:,}: {'met' if s['fast_target_met'] else 'NOT met'})")
    if s.get("fast_vs_flag"):
        lines.append(f"fast / flag-style: {s['fast_vs_flag']:.2f}× (target ≥ {TARGETS['fast_vs_flag']}×: "
                     f"{'met' if s['vs_flag_target_met'] else 'NOT met'})")
    if "bf16_top10_identical" in s:
        lines.append(f"bf16 top-10 identical to fp32: {100 * s['bf16_top10_identical']:.1f}% of {s['bf16_queries']} "
                     f"queries (target ≥ 99%: {'met' if s['bf16_target_met'] else 'NOT met'})")
    for label, v in (s.get("encoder_passages_per_s") or {}).items():
        lines.append(f"encoder {label}: {v:,.0f} passages/s")
    if "bge_base_target_met" in s:
        lines.append(f"bge-base fast ≥ {TARGETS['bge_base_passages_per_s']:,} passages/s: "
                     f"{'met' if s['bge_base_target_met'] else 'NOT met'}")
    if s.get("mean_tokens_per_pair"):
        lines.append(f"mean tokens per pair (MS MARCO ~94): {s['mean_tokens_per_pair']}")
    return "\n".join(f"- {x}" for x in lines) + "\n" if lines else "(nothing measured)\n"


def print_short(out: Path) -> None:
    """The short table printed last (also after a kill: read back from results.json)."""
    try:
        res = json.loads((out / "results.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"no results.json in {out}: {exc}")
        return
    print("\n==== rerank-bench GPU checks: short table ====")
    cells = ((res.get("records") or {}).get("throughput") or {}).get("cells") or (res.get("partial") or {}).get("sweep_cells", [])
    for c in cells:
        if c.get("error"):
            print(f"{c['label']:<58} {c['error'][:70]}")
        else:
            print(f"{c['label']:<58} {c['pairs_per_s']:>9,.0f} pairs/s  {100 * (c.get('ceiling_share') or 0):5.1f}% ceil"
                  f"  p50 {c['latency_ms']['p50'] or 0:7.1f} ms  {c['n_pairs']} pairs")
    for c in ((res.get("records") or {}).get("encoders") or {}).get("cells", []):
        print(f"{c['label']:<58} " + (c["error"][:70] if c.get("error") else f"{c['texts_per_s']:>9,.0f} passages/s"))
    for s in res.get("steps", []):
        print(f"step {s['step']:<10} {s['status']:<8} {s.get('seconds', '')} {(s.get('error') or s.get('reason') or '')[:90]}")
    summary = res.get("summary")
    if summary:
        print(summary_text(summary))
    print(f"elapsed {res.get('elapsed_s')} s; files in {out}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, few pairs: proves the script works")
    parser.add_argument("--total-s", type=float, default=None, help="time limit of the whole run (default: the config's)")
    parser.add_argument("--print-only", action="store_true", help="print the short table from an existing results.json")
    args = parser.parse_args(argv)
    if args.print_only:
        print_short(args.out)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = SMOKE if args.smoke else FULL
    checks = Checks(args.out, cfg, args.smoke, args.total_s or cfg["total_s"])
    try:
        checks.environment()
    except Exception as exc:
        checks.steps.append({"step": "environment", "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        checks.save()
        log(f"environment: {exc}")
        checks.finish()
        return 0
    checks.step("ceiling", checks.ceiling)
    checks.step("pairs", checks.pairs)
    checks.step("model", checks.model)
    checks.step("sweep", checks.sweep, needs=("sweep_pairs", "model", "ceiling"))
    checks.step("fidelity", checks.fidelity, needs=("full", "model", "ceiling"))
    checks.step("encoders", checks.encoders, needs=("texts",))
    checks.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
