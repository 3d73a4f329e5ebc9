"""Throughput sweep: FLOP accounting, real pairs, timing cells, records, tables and plots."""

from __future__ import annotations

import functools
import json
import time

import numpy as np
import pytest

from bench.errors import BenchError
from bench.records import ThroughputRecord
from bench.throughput.flops import ModelShape, matmul_ceiling, useful_flops
from bench.throughput.pairs import candidates_from_qrels, pair_token_lengths, pairs_from_collection
from bench.throughput.sweep import Cell, Sweep, add_speedups, cells_from_spec
from bench.throughput.tables import throughput_table
from bench.throughput.timing import PeakMemory


class PlainScorer:
    """The test's own reference scorer: the plain transformers loop (input order, padded batches)
    with the Reranker interface's counters, so the sweep is tested independently of the engines."""

    def __init__(self, path: str, *, batch_size: int = 8, max_length: int = 512, dtype: str = "fp32"):
        import torch

        self.torch = torch
        self.tok, self.model = _load(path, dtype)
        self.batch_size, self.max_length, self.dtype_name = batch_size, max_length, dtype
        self.reset_stats()

    def score(self, pairs):
        out = []
        for i in range(0, len(pairs), self.batch_size):
            chunk = pairs[i:i + self.batch_size]
            enc = self.tok([q for q, _ in chunk], [d for _, d in chunk], padding=True, truncation="only_second",
                           max_length=self.max_length, return_tensors="pt")
            with self.torch.inference_mode():
                logits = self.model(**enc).logits[:, 0]
            out.append(logits.float().numpy())
            self._stats["pairs"] += len(chunk)
            self._stats["tokens"] += int(enc["attention_mask"].sum())
            self._stats["padded_tokens"] += int(enc["attention_mask"].numel())
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    def describe(self):
        return {"engine": "test-plain", "dtype": self.dtype_name, "batch_size": self.batch_size}

    def stats(self):
        return dict(self._stats)

    def reset_stats(self):
        self._stats = {"pairs": 0, "tokens": 0, "padded_tokens": 0, "truncated_pairs": 0, "seconds": 0.0}


@functools.lru_cache(maxsize=4)
def _load(path: str, dtype: str):
    """Tokenizer and model, loaded once per test session (loading dominates a tiny model's cost)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    return (AutoTokenizer.from_pretrained(path),
            AutoModelForSequenceClassification.from_pretrained(path, dtype=torch_dtype).eval())


@pytest.fixture(scope="module")
def miracl(shared_data):
    from bench.config import CollectionSpec
    from bench.data import load_collection

    return load_collection(CollectionSpec(source="beir", path=str(shared_data / "miracl-yo-dev"), split="dev"))


@pytest.fixture(scope="module")
def pairset(miracl):
    return pairs_from_collection(miracl, k=12, max_queries=6, pool=5000)


# --- FLOPs ---------------------------------------------------------------------------------------

def test_useful_flops_equal_torch_flop_counter(tiny_reranker):
    """The docstring's formula is exactly what torch counts on unpadded sequences (eager attention,
    so that QKᵀ and AV show up as matmuls the counter sees)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_reranker, attn_implementation="eager").eval()
    shape = ModelShape.from_config(model.config)
    lengths = [5, 37, 128, 300]
    counted = 0
    for n in lengths:
        with FlopCounterMode(display=False) as fc, torch.inference_mode():
            model(input_ids=torch.randint(5, 1000, (1, n)))
        counted += fc.get_total_flops()
    assert useful_flops(shape, lengths) == counted
    # bge-reranker-large at 94 tokens per pair: the issue's ~58 GFLOP per pair.
    large = ModelShape(layers=24, hidden=1024, ffn=4096, head_labels=1)
    assert useful_flops(large, [94]) / 1e9 == pytest.approx(57.7, abs=0.1)


def test_bi_encoder_shape_has_no_head():
    shape = ModelShape.from_config({"num_hidden_layers": 2, "hidden_size": 8, "intermediate_size": 16}, head=False)
    assert useful_flops(shape, [3]) == 2 * (3 * 2 * (4 * 64 + 2 * 8 * 16) + 4 * 8 * 9)
    with pytest.raises(BenchError, match="BERT-family"):
        ModelShape.from_config({"d_model": 8})


def test_cpu_matmul_ceiling_is_measured_and_labelled():
    c = matmul_ceiling("cpu", n=256, repeats=3)
    assert c["dtype"] == "fp32" and c["tflop_per_s"] > 0 and "CPU" in c["method"]
    assert c["median_s"] > 0 and c["repeats"] == 3


# --- pairs ---------------------------------------------------------------------------------------

def test_candidates_relevant_first_then_deterministic(miracl):
    qids = list(miracl.queries)[:5]
    ids = [d for batch in miracl.iter_docs() for d, _ in batch][:3000]
    a = candidates_from_qrels(qids, miracl.qrels, ids, k=20, seed=3)
    b = candidates_from_qrels(qids, miracl.qrels, ids, k=20, seed=3)
    c = candidates_from_qrels(qids, miracl.qrels, ids, k=20, seed=4)
    assert a == b and a != c
    for q in qids:
        judged = miracl.qrels[q]
        n_rel = sum(r > 0 for r in judged.values())
        assert all(judged.get(d, 0) > 0 for d in a[q][:n_rel])
        assert len(a[q]) == 20 and len(set(a[q])) == 20


def test_pairset_groups_queries_and_heads_are_whole_queries(pairset, miracl):
    assert len(pairset) == 6 * 12 and pairset.n_queries == 6
    assert [q for q, _ in pairset.query_slices()] == list(miracl.queries)[:6]
    first_q, sl = pairset.query_slices()[0]
    assert pairset.pairs[sl.start][0] == miracl.queries[first_q]
    docs = miracl.get_docs(pairset.doc_ids[:3])
    assert [p[1] for p in pairset.pairs[:3]] == [docs[d] for d in pairset.doc_ids[:3]]
    head = pairset.head(30)
    assert len(head) == 24 and head.n_queries == 2 and head.source["subset_of_pairs"] == 72
    assert len(pairset.head(5)) == 12  # never an empty set: at least one whole query
    d = pairset.describe()
    assert d["n_pairs"] == 72 and d["k"] == 12 and "relevant" in d["candidates"]


def test_pairs_from_a_run_follow_the_ranking(miracl):
    q = list(miracl.queries)[0]
    docs = [d for batch in miracl.iter_docs() for d, _ in batch][:10]
    run = {q: {d: float(i) for i, d in enumerate(docs)}}
    ps = pairs_from_collection(miracl, k=4, run=run, run_source="test")
    assert ps.doc_ids == docs[::-1][:4] and ps.n_queries == 1
    with pytest.raises(BenchError, match="no .* pairs"):
        pairs_from_collection(miracl, k=4, run={"nope": {docs[0]: 1.0}})


def test_token_lengths_match_the_tokenizer(pairset, tiny_reranker):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_reranker)
    pairs = pairset.pairs[:40]
    for max_length in (512, 48):
        got = pair_token_lengths(tok, pairs, max_length)
        enc = tok([q for q, _ in pairs], [d for _, d in pairs], truncation="only_second", max_length=max_length)
        assert got.tolist() == [len(x) for x in enc["input_ids"]]
    assert pair_token_lengths(tok, pairs, 512, query_max_length=6).max() <= pair_token_lengths(tok, pairs, 512).max()


# --- sweep ---------------------------------------------------------------------------------------

def test_sweep_record_table_and_plot(pairset, tiny_reranker, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from bench.records import read_record
    from bench.throughput.tables import plot_throughput

    def build(cell: Cell):
        if cell.batch_size == 999:
            raise BenchError("this cell cannot be built")
        return PlainScorer(tiny_reranker, batch_size=cell.batch_size, max_length=cell.max_length, dtype=cell.dtype)

    cells = [Cell("transformers", "fp32", 512, batch_size=4), Cell("transformers", "fp32", 512, batch_size=16),
             Cell("other", "bf16", 512, batch_size=16, max_pairs=20), Cell("other", "fp32", 512, batch_size=999)]
    sweep = Sweep(pairset.head(24), cells, build, model=tiny_reranker, device="cpu", warmup=1, repeats=2,
                  latency_queries=3,
                  tokenizer=AutoTokenizer.from_pretrained(tiny_reranker),
                  shape=ModelShape.from_config(AutoConfig.from_pretrained(tiny_reranker)), name="t")
    record, scores = sweep.run(progress=False)
    assert record.kind == "throughput" and record.device == "cpu"
    assert record.ceiling.dtype == "fp32"
    ok = [c for c in record.cells if not c.error]
    assert len(ok) == 3 and record.cells[3].error == "this cell cannot be built"
    a, b, c = ok
    assert a.n_pairs == 24 and c.n_pairs == 12 and c.n_queries == 1
    assert len(a.seconds) == 2 and a.pairs_per_s == pytest.approx(24 / np.median(a.seconds))
    assert a.queries_per_s == pytest.approx(a.pairs_per_s / 12)
    assert a.latency_ms["n_queries"] == 2 and a.latency_ms["p95"] >= a.latency_ms["p50"] > 0
    # counters cover exactly the timed passes; larger batches pad more
    assert a.stats["pairs"] == 2 * 24
    assert 0 < a.padding_fraction < b.padding_fraction < 1
    assert a.flop_tokens == a.stats["tokens"] // 2 and a.flop_tokens_note is None
    assert a.useful_tflop_per_s > 0 and a.ceiling_share == pytest.approx(
        a.useful_tflop_per_s / record.ceiling.tflop_per_s)
    assert a.speedup_vs_plain == 1.0 and b.speedup_reference == a.label
    mem = a.peak_memory
    assert mem["bytes"] is None or mem["bytes"] > 10 * 2**20
    assert record.pairs.mean_tokens_per_pair["512"] == pytest.approx(a.mean_tokens_per_pair)
    assert scores[a.label].dtype == np.float32 and len(scores[c.label]) == 12
    np.testing.assert_allclose(scores[a.label], scores[b.label], atol=1e-5)

    table = throughput_table(record)
    assert table.count("\n| ") == 5 and "this cell cannot be built" in table and "1.00×" in table
    path = record.to_disk(tmp_path / "records" / "t.json")
    again = read_record(path)
    png = plot_throughput(again, tmp_path / "plots" / "t.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_deadline_skips_remaining_cells_and_says_so(pairset, tiny_reranker):
    calls = []

    def build(cell):
        calls.append(cell)
        return PlainScorer(tiny_reranker, batch_size=cell.batch_size)

    cells = [Cell("transformers", "fp32", 512, batch_size=8), Cell("transformers", "fp32", 512, batch_size=4)]
    sweep = Sweep(pairset.head(12), cells, build, model=tiny_reranker, device="cpu", warmup=0, repeats=1,
                  latency_queries=1, deadline=time.monotonic() - 1)
    record, scores = sweep.run(ceiling={"tflop_per_s": 1.0, "dtype": "fp32"}, progress=False)
    assert calls == [] and all("time limit" in c.error for c in record.cells) and scores == {}


def test_interleaved_passes_alternate_cells_and_record_failures(pairset, tiny_reranker):
    """Interleaved order: every cell's pass r runs before any cell's pass r+1; a cell that cannot be
    built or fails mid-way is recorded and the others finish; the engines are all closed."""
    calls, closed = [], []

    class Traced(PlainScorer):
        def score(self, pairs):
            calls.append(self.batch_size)
            if self.batch_size == 3 and len(calls) > 4:
                raise RuntimeError("engine crashed")
            return super().score(pairs)

        def close(self):
            closed.append(self.batch_size)

    def build(cell):
        if cell.batch_size == 5:
            raise BenchError("cannot build")
        return Traced(tiny_reranker, batch_size=cell.batch_size)

    cells = [Cell("transformers", "fp32", 512, batch_size=b) for b in (8, 5, 4, 3)]
    sweep = Sweep(pairset.head(12), cells, build, model=tiny_reranker, device="cpu", warmup=1, repeats=3,
                  latency_queries=0, interleave=True)
    seen = []
    record, scores = sweep.run(ceiling={"tflop_per_s": 1.0, "dtype": "fp32"}, progress=False, on_cell=seen.append)
    assert calls[:3] == [8, 4, 3] and calls[3:6] == [8, 4, 3]  # warm-ups, then pass 1 of every cell
    assert calls[6:] == [8, 4, 8, 4]  # the crashed cell is out, the others go on
    a, b, c, d = record.cells
    assert b.error == "cannot build" and d.error == "RuntimeError: engine crashed"
    assert a.repeats == c.repeats == 3 and a.peak_memory["bytes"] is None
    assert record.settings.interleave is True and set(scores) == {a.label, c.label}
    assert sorted(closed) == [3, 4, 8] and [r["label"] for r in seen] == [x.label for x in cells]
    with pytest.raises(BenchError, match="cells repeat"):
        Sweep(pairset, [cells[0], cells[0]], build, model=tiny_reranker, device="cpu").run(ceiling={}, progress=False)


def test_cells_from_spec_budgets_for_fast_batches_for_baselines():
    from bench.config import ThroughputSpec

    spec = ThroughputSpec(engines=["fast", "transformers"], dtypes=["fp32", "bf16"], batch_sizes=[8, 32],
                          token_budgets=[1024], max_lengths=[256])
    cells = cells_from_spec(spec, options={"fast": [{"attention": "varlen"}, {"attention": "sdpa-padded"}]},
                            max_pairs={"transformers": 100})
    fast = [c for c in cells if c.engine == "fast"]
    plain = [c for c in cells if c.engine == "transformers"]
    assert len(fast) == 4 and all(c.token_budget == 1024 and c.batch_size is None for c in fast)
    assert len(plain) == 4 and {c.batch_size for c in plain} == {8, 32} and all(c.max_pairs == 100 for c in plain)
    assert "attention=varlen" in fast[0].label and fast[0].to_dict()["options"] == {"attention": "varlen"}
    faithful = cells_from_spec(spec, engine_dtypes={"transformers": ["fp32"]})
    assert {c.dtype for c in faithful if c.engine == "transformers"} == {"fp32"}
    assert {c.dtype for c in faithful if c.engine == "fast"} == {"fp32", "bf16"}


def test_engine_dtypes_option_is_checked():
    from bench.commands.throughput import parse_engine_dtypes

    assert parse_engine_dtypes(["flag=fp16", "fast=bf16,fp32"]) == {"flag": ["fp16"], "fast": ["bf16", "fp32"]}
    with pytest.raises(BenchError, match="ENGINE one of fast"):
        parse_engine_dtypes(["flg=fp16"])
    with pytest.raises(BenchError, match=r"^--engine-dtypes 'flag=fp8': dtype \['fp8'\]: one of auto"):
        parse_engine_dtypes(["flag=fp8"])


def test_speedups_use_the_plain_fp32_cell_of_the_same_length():
    cells = [{"label": "p", "engine": "transformers", "dtype_resolved": "fp32", "max_length": 512, "pairs_per_s": 10.0},
             {"label": "f", "engine": "fast", "dtype_resolved": "bf16", "max_length": 512, "pairs_per_s": 40.0},
             {"label": "g", "engine": "fast", "dtype_resolved": "bf16", "max_length": 128, "pairs_per_s": 80.0},
             {"label": "x", "engine": "fast", "max_length": 512, "error": "boom"}]
    add_speedups(cells)
    assert cells[1]["speedup_vs_plain"] == 4.0 and cells[1]["speedup_reference"] == "p"
    assert cells[2]["speedup_vs_plain"] is None and "no plain-loop" in cells[2]["speedup_reference"]
    assert "speedup_vs_plain" not in cells[3]


def test_cpu_peak_memory_sees_an_allocation():
    mem = PeakMemory("cpu")
    mem.reset()
    before = mem.result()["bytes"]
    if before is None:
        pytest.skip(mem.result()["what"])
    import mmap

    # 64 MiB of fresh pages, touched: a NumPy array may be served from heap memory that an earlier test
    # freed but the process still holds (late in a long session), which does not raise the RSS at all
    block = mmap.mmap(-1, 64 * 2**20)
    block.write(b"\x01" * (64 * 2**20))
    after = mem.result()["bytes"]
    block.close()
    assert after - before >= 60 * 2**20
    mem.reset()
    assert mem.result()["bytes"] < after


def test_cpu_peak_memory_that_did_not_reset_is_not_recorded(monkeypatch):
    """A kernel or sandbox that accepts the clear_refs write but keeps the old peak: no number that
    covers earlier cells, the reason instead."""
    from bench.throughput import timing

    monkeypatch.setattr(timing, "_proc_status", lambda: {"VmHWM": 7 * 2**30, "VmRSS": 2**30})
    mem = PeakMemory("cpu")
    mem.reset()
    result = mem.result()
    assert result["bytes"] is None and "not recorded" in result["what"]


def test_quality_speed_plot_from_quality_records(tmp_path):
    from bench.report.plots import plot_quality_speed
    from bench.records import make_record

    recs = [make_record("quality", system={"label": lab}, dataset={"label": ds}, metrics={"nDCG@10": v},
                        timings={"rerank_pairs_per_s": s})
            for lab, ds, v, s in [("bge-large bf16", "yo", 0.6, 900.0), ("bge-large fp32", "yo", 0.61, 300.0),
                                  ("bge-base", "vaswani", 0.4, 2000.0)]]
    # a first stage has no reranking speed: left out
    recs.append(make_record("quality", system={"label": "first stage"}, dataset={"label": "yo"},
                            metrics={"nDCG@10": 0.3}, timings={}))
    png = plot_quality_speed(recs, tmp_path / "q.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(BenchError, match="MRR@10"):
        plot_quality_speed(recs, tmp_path / "x.png", metric="MRR@10")


# --- the command and the GPU script ----------------------------------------------------------------

def test_bench_throughput_command_writes_records_table_and_plot(shared_data, tiny_reranker, cache_dir, experiment_toml,
                                                               tmp_path, capsys):
    """`bench throughput` end to end on real pairs (qrels-based candidates: no first stage to build),
    the engines B1 wrote, fidelity of bf16 against fp32, and the files it promises."""
    from bench.cli import main
    from bench.records import find_records

    exp = experiment_toml(
        "tp.toml", name="tp-test", cache_dir=cache_dir, first_stages={"bm25": {"kind": "bm25"}},
        datasets=[{"source": "beir", "path": shared_data / "miracl-yo-dev", "split": "dev"}],
        rerankers=[{"model": "random:tiny-xlmr-reranker", "name": "tiny", "device": "cpu"}],
        throughput={"engines": ["fast", "transformers"], "dtypes": ["fp32", "bf16"], "batch_sizes": [16],
                    "token_budgets": [2048], "pairs": 24, "k": 8, "warmup": 0, "repeats": 1,
                    "variants": {"fast": [{}, {"prune_last_layer": False}]}})
    from bench.records import make_record

    quality = tmp_path / "run-out"
    for label, speed in (("tiny fp32", 120.0), ("tiny bf16", 300.0)):
        make_record("quality", system={"label": label}, dataset={"label": "miracl-yo-dev"},
                    metrics={"nDCG@10": 0.5}, timings={"rerank_pairs_per_s": speed}
                    ).to_disk(quality / "records" / f"{label}.json")
    out = tmp_path / "out"
    rc = main(["throughput", str(exp), "--out", str(out), "--candidates", "qrels", "--latency-queries", "2",
               "--quality-records", str(quality)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "24 pairs: 3 queries × k=8" in printed and "| fast | bf16 | 2048 tok |" in printed
    (tp,) = find_records(out, kind="throughput")
    (fid,) = find_records(out, kind="fidelity")
    assert len(tp.cells) == 6 and not any(c.error for c in tp.cells)
    full = [c for c in tp.cells if c.options == {"prune_last_layer": False}]
    assert len(full) == 2 and all(c.engine_describe["prune_last_layer"] is False for c in full)
    assert {c.dtype_resolved for c in tp.cells} == {"fp32", "bf16"}
    fast_fp32 = next(c for c in tp.cells if c.engine == "fast" and c.dtype_resolved == "fp32")
    assert fast_fp32.padding_fraction == 0 and fast_fp32.engine_describe["engine"] == "fast"
    assert fast_fp32.speedup_vs_plain > 0
    assert {(c.cell.split()[0], c.dtype) for c in fid.comparisons} == {("fast", "bf16"), ("transformers", "bf16")}
    assert all(c.reference.split()[1] == "fp32" for c in fid.comparisons)
    assert (out / "throughput-tiny.md").read_text().count("| fast |") == 2
    assert (out / "throughput-tiny.md").read_text().count("| fast prune_last_layer=False |") == 2
    assert (out / "plots" / "throughput-tiny.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "plots" / "quality-vs-speed.png").read_bytes()[:4] == b"\x89PNG"
    assert "2 quality records" in printed


def test_bench_throughput_needs_a_throughput_table(experiment_toml, capsys):
    from bench.cli import main

    exp = experiment_toml("x.toml", name="x", first_stages={"b": {"kind": "bm25"}}, datasets=[{"source": "synthetic"}])
    assert main(["throughput", str(exp)]) == 2
    assert "no [throughput] table" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_script_smoke_runs_on_cpu(shared_data, cache_dir, tmp_path):
    """The one-shot GPU script, --smoke on CPU: every step runs (or is recorded), the files it
    promises exist, and the short table is printed last. Its models come from the session cache
    (built there once, by the same `models.resolve`), not built again in a cache of its own."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path / "out"), "DATA": str(shared_data),
           "RERANK_BENCH_CACHE": str(cache_dir)}
    proc = subprocess.run(["bash", str(root / "experiments" / "gpu" / "run_checks.sh"), "--smoke"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "results.json", "table.md", "throughput.png"]
    res = json.loads((out / "results.json").read_text())
    status = {s["step"]: s["status"] for s in res["steps"]}
    assert status == {"ceiling": "ok", "pairs": "ok", "model": "ok", "sweep": "ok", "fidelity": "ok",
                      "encoders": "ok"}, res["steps"]
    cells = res["records"]["throughput"]["cells"]
    assert len(cells) == 9 and not any(c["error"] for c in cells)
    assert any(c["dtype"] == "bf16" for c in res["records"]["fidelity"]["comparisons"])
    assert not any(c.get("error") for c in res["records"]["encoders"]["cells"])
    assert "short table" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].startswith("elapsed")


def test_data_parallel_cell_counts_devices_and_closes_its_workers(pairset, tiny_reranker, cache_dir):
    """Two CPU worker processes (the multi-GPU code path): the ceiling share is per device, the
    main process' memory is not passed off as the workers', and the workers are stopped."""
    import multiprocessing

    from bench.throughput.sweep import reranker_factory

    cells = [Cell("fast", "fp32", 512, token_budget=2048)]
    sweep = Sweep(pairset.head(8), cells, reranker_factory(tiny_reranker, cache_dir=cache_dir, device="cpu,cpu"),
                  model=tiny_reranker, device="cpu", warmup=0, repeats=1, latency_queries=1,
                  tokenizer=None, shape=None)
    record, scores = sweep.run(ceiling={"tflop_per_s": 1.0, "dtype": "fp32"}, progress=False)
    (cell,) = record.cells
    assert cell.error is None and cell.devices == 2 and cell.peak_memory["bytes"] is None
    assert len(scores[cell.label]) == 12  # one whole query
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]


def test_plot_shows_every_cell_within_the_shared_scale(monkeypatch, tmp_path):
    """Regression: the committed H100 sweep's bf16 cells (~6,500 pairs/s) were cut off by a y scale
    frozen at the baselines' panel (~2,600)."""
    import json
    from pathlib import Path

    import bench.report.plots as plots
    from bench.throughput.tables import plot_throughput

    results = json.loads((Path(__file__).resolve().parents[1] / "results" / "gpu-checks-h100" / "results.json").read_text())
    record = ThroughputRecord.model_validate(results["records"]["throughput"])
    seen = {}

    def capture(fig, path):
        seen["fig"] = fig
        return Path(path)

    monkeypatch.setattr(plots, "save_png", capture)
    plot_throughput(record, tmp_path / "t.png")
    axes = seen["fig"].axes
    top = axes[0].get_ylim()[1]
    ys = [y for ax in axes for line in ax.get_lines() for y in line.get_ydata()]
    ok = [c.pairs_per_s for c in record.cells if not c.error]
    assert len(ys) == len(ok) and max(ys) == pytest.approx(max(ok))
    assert all(0 <= y <= top for y in ys)


def test_rates_keep_three_figures_below_one_hundred():
    from bench.throughput.tables import _rate

    assert (_rate(6584.2), _rate(152.0), _rate(7.273), _rate(0.1454)) == ("6,584", "152", "7.27", "0.145")


@pytest.mark.slow
def test_engine_check_variants_and_fidelity_smoke_on_cpu(shared_data, tmp_path, monkeypatch):
    """The follow-up GPU script, --smoke on CPU: each variant cell runs, and fidelity rows compare
    every cell with fp32 and every fast variant with the default bf16 cell. Run in this process (its
    model from the session cache), as `python experiments/gpu/engine_check.py` would run it."""
    from pathlib import Path

    from conftest import run_script

    script = Path(__file__).resolve().parents[1] / "experiments" / "gpu" / "engine_check.py"
    cells = ["fp32", "flag", "fast", "fast-full-last", "fast-gelu-epilogue", "fast-host-only"]
    monkeypatch.setenv("DATA", str(shared_data))  # RERANK_BENCH_CACHE: the session cache (conftest)
    assert run_script(script, "--smoke", "--out", str(tmp_path), "--collection", "vaswani", "--split", "test",
                      "--cells", *cells) == 0
    res = json.loads((tmp_path / "engine_check-vaswani.json").read_text())
    assert [c["cell"] for c in res["cells"]] == cells and not any(c.get("error") for c in res["cells"])
    by = {(r["cell"], r["reference"]): r for r in res["fidelity"]}
    assert set(by) == {(c, "fp32") for c in cells[1:5]} | {(c, "fast") for c in cells[3:5]}
    assert res["cells"][5]["pairs_per_s"] > 0 and not any(r["cell"] == "fast-host-only" for r in res["fidelity"])
    assert by["flag", "fp32"]["max_abs_diff"] < 1e-5  # flag-style runs fp32 on the CPU
    assert by["fast-full-last", "fast"]["max_abs_diff"] < 1e-2  # same function, bf16 rounding at most
    assert res["cells"][3]["describe"]["prune_last_layer"] is False


def test_sweep_device_is_the_first_resolved_device():
    from bench.throughput.sweep import resolve_device

    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"  # no GPU here
    with pytest.raises(BenchError, match="not a device name"):
        resolve_device("gpu0")
    with pytest.raises(BenchError, match="CUDA is not available"):
        resolve_device("cuda:0,cuda:1")


def test_throughput_table_gives_the_spread_and_ranks_only_separated_cells():
    from bench.records import CellResult
    from bench.throughput.tables import fastest_line, spread

    def cell(label, seconds):
        return CellResult(engine="fast", dtype="fp32", max_length=64, label=label, variant=label, n_pairs=100,
                          seconds=seconds, pairs_per_s=100 / float(np.median(seconds)))

    a, b, c = cell("a", [1.0, 1.1, 0.9]), cell("b", [2.0, 2.2, 1.9]), cell("c", [1.05, 1.2, 1.0])
    assert spread(a) == (pytest.approx(100 / 1.1), pytest.approx(100 / 0.9), 3)

    class Rec:
        cells = [a, b]

    assert fastest_line(Rec).startswith("Fastest: a")
    Rec.cells = [a, b, c]
    assert fastest_line(Rec).startswith("Not ranked: a and c overlap")
