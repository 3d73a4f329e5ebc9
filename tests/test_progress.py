"""Progress that helps: one bar per step, counting passages or pairs, no Hugging Face loading bars."""

from __future__ import annotations

import re
from collections import Counter

from bench.cli import main

#: a closed tqdm bar's last state: "desc: 100%|████| 400/400 [00:01<00:00, 312passage/s]"
FINAL = re.compile(r"^(?P<desc>[^:\r]+): +\d+%\|[^|]*\| (?P<n>[\d.]+k?)/(?P<total>[\d.]+k?) "
                   r"\[[^\]]*, (?:[\d.?]+[kM]?(?P<unit>[a-z]+)/s|[\d.]+s/(?P<per>[a-z]+))\]$")


def closed_bars(stderr: str) -> list[re.Match]:
    """Each bar that was closed (its last redraw, on the line it leaves behind)."""
    return [m for line in stderr.split("\n") if (m := FINAL.match(line.split("\r")[-1].strip()))]


def test_a_run_draws_one_bar_per_step_and_no_hugging_face_bars(experiment_toml, tmp_path, monkeypatch, capsys):
    for var in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "RERANK_BENCH_VERBOSE"):  # as a user's shell
        monkeypatch.delenv(var, raising=False)
    path = experiment_toml(
        name="bars", cache_dir=str(tmp_path / "cache"),  # models built and loaded here: their bars would show
        first_stages={"dense": {"kind": "dense", "model": "random:tiny-bge-m3", "max_length": 64, "depth": 20,
                                "shard_size": 100, "dtype": "fp32", "device": "cpu"}},
        datasets=[{"source": "synthetic", "synthetic": {"languages": ["en"], "docs_per_language": 400,
                                                        "queries_per_language": 10}}],
        rerankers=[{"model": "random:tiny-xlmr-reranker", "top_k": 10, "max_length": 64, "dtype": "fp32"}],
        evaluation={"metrics": ["nDCG@10"]})
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--skip-preflight"]) == 0
    out, err = capsys.readouterr()
    assert "Loading weights" not in err and "Writing model shards" not in err and "Batches" not in err
    bars = closed_bars(err)
    assert Counter(m["desc"] for m in bars) == {"encode corpus": 1, "exact search": 1, "rerank": 1}, err
    counts = {m["desc"]: (m["n"], m["total"], m["unit"] or m["per"]) for m in bars}
    assert counts["encode corpus"] == ("400", "400", "passage")  # the encoder's loop and the shards counted once
    assert counts["rerank"] == ("100", "100", "pair")
    assert out.count("nDCG@10") == 1  # the summary table, printed once
