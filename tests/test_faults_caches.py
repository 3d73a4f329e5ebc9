"""Model caches and the cache folder (issue 19, items 10 and 11): models the project builds into
the cache are verified on every load and rebuilt when damaged (said on stderr), readable by whoever
shares the cache, their weights' sha256 in every record that uses them, and leftovers of killed
builds removed; a cache folder that cannot be one stops `bench run` before any work.

Small real material: the untrained 2-layer XLM-R reranker (`random:tiny-xlmr-reranker`, built in
seconds), the 300-passage Vaswani folder of the fault tests. Read-only cases mount a small tmpfs
(root on Linux) and skip elsewhere."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from bench import models
from bench.cache import FOLDER_CHECK, checked_folder
from bench.models import trained
from test_faults import bench_run, small_fs, vaswani, write_experiment  # noqa: F401 (fixtures)

TINY = "random:tiny-xlmr-reranker"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The tiny reranker built into a cache of its own, and the sha256 of each of its files as built."""
    cache = tmp_path_factory.mktemp("model-cache")
    folder = Path(models.resolve(TINY, cache))
    return cache, {p.name: sha256(p) for p in folder.iterdir() if p.name != FOLDER_CHECK}


@pytest.mark.parametrize("damage, problem", [
    ("overwrite", "model.safetensors: content differs from what was written (sha256 mismatch)"),
    ("truncate", "model.safetensors: 1,000 bytes, but"),
    ("empty-config", "config.json: 0 bytes, but"),
    ("no-check", f"no {FOLDER_CHECK} inside"),
])
def test_a_damaged_model_is_rebuilt_and_said(built, damage, problem, capsys):
    cache, digests = built
    folder = Path(models.resolve(TINY, cache))
    weights = folder / "model.safetensors"
    if damage == "overwrite":  # same size, other bytes: a size check alone would miss it
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "empty-config":
        (folder / "config.json").write_text("")
    else:  # a folder built by an older version: nothing to verify it with
        (folder / FOLDER_CHECK).unlink()
    capsys.readouterr()
    assert Path(models.resolve(TINY, cache)) == folder
    err = capsys.readouterr().err
    assert f"cache: {folder}: {problem}" in err and err.rstrip().endswith("rebuilding it")
    models.resolve(TINY, cache)
    assert capsys.readouterr().err == ""  # sound again: nothing to say
    rebuilt = {p.name: sha256(p) for p in folder.iterdir() if p.name != FOLDER_CHECK}
    assert rebuilt == digests  # the deterministic build again, byte for byte
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")] == []


def test_built_models_are_readable_by_the_others_sharing_the_cache(tmp_path):
    """Under umask 022 every file is 0644 and every folder 0755 (safetensors alone would leave 0600);
    under 077 they stay private, as the user asked."""
    for umask, file_mode, dir_mode in ((0o022, 0o644, 0o755), (0o077, 0o600, 0o700)):
        before = os.umask(umask)
        try:
            folder = Path(models.resolve(TINY, tmp_path / f"cache-{umask:o}"))
        finally:
            os.umask(before)
        for path in [folder, *folder.rglob("*")]:
            assert stat.S_IMODE(path.stat().st_mode) == (dir_mode if path.is_dir() else file_mode), (umask, path)


def test_leftovers_of_killed_builds_are_removed_when_no_build_holds_the_lock(built):
    cache, _ = built
    folder = Path(models.resolve(TINY, cache))
    leftovers = [folder.with_name(f".{folder.name}.k1ll3d.building"), folder.with_name(folder.name + ".partial")]
    for leftover in leftovers:
        leftover.mkdir()
        (leftover / "model.safetensors").write_bytes(b"half a model")
    with open(folder.with_name(f".{folder.name}.lock"), "a+b") as lock:  # a build in progress elsewhere
        fcntl.flock(lock, fcntl.LOCK_EX)
        models.resolve(TINY, cache)
        assert all(p.exists() for p in leftovers), "a live build's folder must be left alone"
    models.resolve(TINY, cache)
    assert not any(p.exists() for p in leftovers)


def test_a_damaged_trained_model_is_trained_again(tmp_path, monkeypatch, capsys):
    """`trained:` models go through the same check: training is replaced by a stand-in that saves a
    small folder (the real training takes minutes and is tested in tests/test_trained.py)."""
    runs = []

    def fake_training(folder, log=None):
        runs.append(folder)
        (Path(folder) / "config.json").write_text(json.dumps({"rerank_bench": {"trained_on": "synthetic data"}}))
        (Path(folder) / "model.safetensors").write_bytes(b"weights" * 100)
        return 0.0

    monkeypatch.setattr(trained, "train_demo", fake_training)
    ref = "trained:synthetic-minilm-ce"
    trained.ensure(ref, tmp_path, log=lambda m: None)
    trained.ensure(ref, tmp_path, log=lambda m: None)
    assert len(runs) == 1
    folder = models.trained_folder("synthetic-minilm-ce", tmp_path)
    (folder / "model.safetensors").write_bytes(b"Weights" * 100)
    capsys.readouterr()
    trained.ensure(ref, tmp_path, log=lambda m: None)
    assert len(runs) == 2 and "(sha256 mismatch); rebuilding it" in capsys.readouterr().err
    assert models.describe(str(folder))["weights_sha256"] == {"model.safetensors": sha256(folder / "model.safetensors")}


def test_checked_folder_builds_once_and_keeps_nothing_of_a_failed_build(tmp_path):
    calls = []

    def build(tmp: Path):
        calls.append(tmp)
        (tmp / "a.bin").write_bytes(b"a")
        if len(calls) == 1:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        checked_folder(tmp_path / "m", build)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock"]
    checked_folder(tmp_path / "m", build)
    checked_folder(tmp_path / "m", build)
    assert len(calls) == 2 and json.loads((tmp_path / "m" / FOLDER_CHECK).read_text())["files"]["a.bin"]["size"] == 1


def test_records_carry_the_weights_digest_of_a_built_model(experiment_toml, vaswani, tmp_path):
    cache = tmp_path / "cache"
    path = write_experiment(experiment_toml, vaswani, cache, {"kind": "bm25"}, reranker=TINY)
    assert bench_run(path, tmp_path / "out") == 0
    rec = json.loads((tmp_path / "out" / "records" / "vaswani300__fs__tiny.json").read_text())
    weights = Path(models.resolve(TINY, cache)) / "model.safetensors"
    assert rec["system"]["reranker"]["model"]["weights_sha256"] == {"model.safetensors": sha256(weights)}


# -- the cache folder --------------------------------------------------------------------------------
def test_a_cache_folder_that_cannot_be_one_stops_before_any_work(experiment_toml, vaswani, tmp_path, small_fs,
                                                                 monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    read_only = small_fs("1m", "ro")
    for cache, message in ((tmp_path / "file", "exists and is a file"), (Path("/proc/bench-cache"), "under /proc"),
                           (read_only, "not writable"), (read_only / "sub", "cannot be made")):
        path = write_experiment(experiment_toml, vaswani, cache, {"kind": "bm25"})
        assert bench_run(path, tmp_path / "out") == 2
        assert f"cache_dir = {cache}: {message}" in capsys.readouterr().err
        assert not (tmp_path / "out").exists(), "nothing may run before the cache folder is checked"
    text = path.read_text().replace(f'cache_dir = "{read_only / "sub"}"\n', "")
    path.write_text(text)
    monkeypatch.setenv("RERANK_BENCH_CACHE", str(tmp_path / "file"))
    assert bench_run(path, tmp_path / "out") == 2
    assert f"RERANK_BENCH_CACHE = {tmp_path / 'file'}: exists and is a file" in capsys.readouterr().err
