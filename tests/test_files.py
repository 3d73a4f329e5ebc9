"""Files as users expect them: outputs honour the umask (a shared results folder stays readable),
and records say where their experiment file is."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bench.cli import main
from bench.pipeline import experiment_file

REPO = Path(__file__).resolve().parents[1]


def modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def test_run_outputs_are_0644_under_umask_022_and_follow_a_stricter_one(experiment_toml, tmp_path, capsys):
    path = experiment_toml(name="files", first_stages={"bm25": {"kind": "bm25", "depth": 10}},
                           datasets=[{"source": "synthetic", "synthetic": {"languages": ["en"], "docs_per_language": 40,
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
