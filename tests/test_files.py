"""Files as users expect them: outputs honour the umask (a shared results folder stays readable),
and records say where their experiment file is."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bench.cli import main
from bench.config import CollectionSpec, FirstStageSpec
from bench.data import load_collection
from bench.pipeline import experiment_file
from bench.retrieve.stage import FirstStage

REPO = Path(__file__).resolve().parents[1]


def modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def test_run_outputs_are_0644_under_umask_022_and_follow_a_stricter_one(experiment_toml, tmp_path, capsys):
    path = experiment_toml(name="files", first_stages={"bm25": {"kind": "bm25", "depth": 10},  # two systems to compare
                                                       "pyserini": {"kind": "bm25", "preset": "pyserini", "depth": 10}},
                           datasets=[{"source": "synthetic", "first_stage": ["bm25", "pyserini"],
                                      "synthetic": {"languages": ["en"], "docs_per_language": 40,
                                                    "queries_per_language": 3}}])
    old = os.umask(0o022)
    try:
        assert main(["run", str(path), "--out", str(tmp_path / "shared"), "--no-progress", "--skip-preflight"]) == 0
        assert main(["compare", str(tmp_path / "shared" / "records"), "--out", str(tmp_path / "cmp"),
                     "--permutations", "10", "--bootstrap", "10"]) == 0
        os.umask(0o077)
        assert main(["run", str(path), "--out", str(tmp_path / "private"), "--no-progress", "--skip-preflight"]) == 0
    finally:
        os.umask(old)
    shared = modes(tmp_path / "shared")
    assert {"report.md", "report.csv", "report.html", "records/synthetic_en__bm25.json", "runs/synthetic_en/bm25.trec",
            "runs/synthetic_en/qrels.txt"} <= set(shared)
    assert set(shared.values()) == {0o644}, shared
    assert set(modes(tmp_path / "cmp").values()) == {0o644}
    assert set(modes(tmp_path / "private").values()) == {0o600}


def test_records_state_the_experiment_file_absolute_and_from_the_checkout(tmp_path):
    inside = experiment_file(REPO / "experiments" / "offline.toml")
    assert inside == {"file": str(REPO / "experiments" / "offline.toml"), "repository_file": "experiments/offline.toml"}
    (tmp_path / "e.toml").write_text("", encoding="utf-8")
    assert experiment_file(tmp_path / "e.toml") == {"file": str((tmp_path / "e.toml").resolve())}


def test_embedding_cache_keys_on_the_max_length_that_took_effect(minilm, tmp_path):
    """MiniLM reads 256 tokens at most: asking 512 encodes with 256, so it shares 256's embeddings."""
    collection = load_collection(CollectionSpec(source="synthetic", synthetic={
        "languages": ["en"], "docs_per_language": 24, "queries_per_language": 2}))
    folders, encoded = [], []
    for max_length in (256, 512):
        spec = FirstStageSpec(kind="dense", model=minilm, dtype="fp32", depth=5, max_length=max_length, device="cpu")
        stage = FirstStage(f"m{max_length}", spec, tmp_path, progress=False)
        try:
            info = stage.retrieve(collection).info
        finally:
            stage.close()
        folders.append(info["embeddings"]["folder"])
        encoded.append(info["embeddings"]["encoded_docs"])
    assert folders[0] == folders[1] and encoded == [24, 0]
