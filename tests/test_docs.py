"""The README and docs/ cannot drift from the code: every `bench` command they show runs or parses,
every path they name exists, every experiment snippet validates, the three README recipes run, and the
documentation site builds with `mkdocs build --strict` (see docs/development.md, "Documentation").

How a fenced ```bash block is read:
* unmarked: its `bench ...` and `make <target>` lines must run offline. They run in order, in a sandbox
  copy of the checkout where `make demo` has already run once (so `runs/offline/` exists for every
  page) and where the synthetic collections of every experiment are cut to a demo size
  (`demo_size`) and the demo cross-encoder trains for a few steps only: the commands are the
  documented ones, the data smaller;
* marked `<!-- commands: network, gpu -->` (kinds: network, gpu, cluster, long; text after `;` is a
  note): each command is parsed by the real command line, `bench run` also as `--dry-run` (loads the
  experiment, selects its datasets, plans, downloads nothing) and `bench reproduce` also as `--list`
  (its patterns must name registry entries).
`<!-- file: PATH -->` before a block writes the block to PATH in the sandbox (a file that exists in the
checkout must equal it), so a worked example runs as written. Commands in experiment files' comments
are parsed like marked ones. New pages, blocks and commands are picked up by these tests unchanged.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from bench.cli import COMMANDS, main
from bench.config import Experiment, load_experiment
from bench.models import trained
from bench.models.python import file_relative_to

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
ARTIFACTS = REPO / "test-artifacts"
KINDS = {"network", "gpu", "cluster", "long"}
MARKER = re.compile(r"<!--\s*commands:\s*([^;>]*?)\s*(?:;[^>]*)?-->")
FILE_MARKER = re.compile(r"<!--\s*file:\s*(\S+)\s*-->")
#: How a marked command is checked beyond parsing: run with these options added.
DEEPER = {"run": ["--dry-run"], "reproduce": ["--list"]}


# -- reading the pages ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    text: str
    needs: frozenset[str]
    file: str | None

    def where(self, offset: int = 0) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line + offset}"


@dataclass(frozen=True)
class Command:
    where: str
    argv: tuple[str, ...]           # after `bench`
    env: tuple[tuple[str, str], ...] = ()
    needs: frozenset[str] = frozenset()
    shown: str = ""


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a page, each with the marker comment on the line before it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(```+)\s*([\w-]*)", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith(fence.group(1)))
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marked, file = MARKER.search(before), FILE_MARKER.search(before)
        needs = frozenset(k.strip() for k in marked.group(1).split(",") if k.strip()) if marked else frozenset()
        out.append(Block(page, i + 2, fence.group(2).lower(), "\n".join(lines[i + 1:end]) + "\n", needs,
                         file.group(1) if file else None))
        i = end + 1
    return out


@functools.cache
def make_targets() -> dict[str, list[str]]:
    """Makefile target -> its recipe lines."""
    targets, current = {}, None
    for line in (REPO / "Makefile").read_text().splitlines():
        head = re.match(r"^([\w-]+):", line)
        if head:
            current = targets.setdefault(head.group(1), [])
        elif line.startswith("\t") and current is not None:
            current.append(line.strip())
    return targets


def make_command(args: list[str]) -> list[str] | None:
    """`make TARGET VAR=value`: the `bench` command its recipe runs (None: the target runs no bench)."""
    target = next(a for a in args if "=" not in a)
    variables = dict(a.split("=", 1) for a in args if "=" in a)
    assert target in make_targets(), f"make {target}: no such target in the Makefile"
    for line in make_targets()[target]:
        if line.startswith("$(BIN)/bench "):
            line = re.sub(r"\$\(if \$\((\w+)\),((?:[^()]|\$\(\w+\))*)\)", lambda m: m.group(2) if variables.get(m.group(1)) else "", line)
            line = re.sub(r"\$\(or \$\((\w+)\),([^()]*)\)", lambda m: variables.get(m.group(1)) or m.group(2), line)
            line = re.sub(r"\$\((\w+)\)", lambda m: shlex.quote(variables.get(m.group(1), "")) if m.group(1) != "BIN" else "", line)
            return shlex.split(line)[1:]
    return None


def commands(block: Block) -> list[Command]:
    """The `bench` commands of a shell block (`make` targets as the command their recipe runs)."""
    out, env = [], {}
    text = re.sub(r"\\\n\s*", " ", block.text)
    for offset, line in enumerate(text.splitlines()):
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            env.update(w.split("=", 1) for w in words[1:] if "=" in w)
            continue
        local = dict(env)
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            local.update([words.pop(0).split("=", 1)])
        if words[:1] == ["make"]:
            argv = make_command(words[1:])
        elif words[:1] == ["bench"]:
            argv = words[1:]
        elif words[:3] == ["python", "-m", "bench"]:
            argv = words[3:]
        else:
            continue  # other tools (ray, huggingface-cli, pyserini) are not ours to check
        if argv is not None:
            out.append(Command(block.where(offset), tuple(argv), tuple(local.items()), block.needs, line.strip()))
    return out


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page)]


def shell_blocks() -> list[Block]:
    return [b for b in all_blocks() if b.lang in ("bash", "sh", "shell", "console")]


def comment_commands() -> list[Command]:
    """`bench ...` commands in the comments of experiment files (checked as marked commands are)."""
    out = []
    for path in sorted((REPO / "experiments").glob("*.toml")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found = re.match(r"^#.*?`?(bench (?:\w+)(?: [^`(]*)?)", line)
            if found and found.group(1).split()[1] in COMMANDS and "<" not in found.group(1):
                words = shlex.split(found.group(1).strip().rstrip("\\"), comments=True)
                out.append(Command(f"{path.relative_to(REPO)}:{n}", tuple(words[1:]), (), frozenset({"network"}), line))
    return out


MARKED = [c for b in shell_blocks() if b.needs for c in commands(b)] + comment_commands()
OFFLINE_PAGES = sorted({b.page for b in shell_blocks() if not b.needs and commands(b)})


# -- the sandbox: a copy of the checkout where the offline commands run -------------------------------------
def demo_size(text: str) -> str:
    """An experiment cut to a demo size: synthetic collections of 150 passages and 12 questions, two
    languages at most."""
    text = re.sub(r"docs_per_language = \d+", "docs_per_language = 150", text)
    text = re.sub(r"queries_per_language = \d+", "queries_per_language = 12", text)
    return re.sub(r"(synthetic = \{[^}\n]*languages = )\[([^\]]*)\]",
                  lambda m: m.group(1) + "[" + ", ".join(m.group(2).split(", ")[:2]) + "]", text)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A copy of the checkout's experiments (cut to a demo size), `bench/` and `results/` linked, the
    docs' file blocks written, its own cache and a short training of the demo cross-encoder; `make
    demo` already run in it."""
    root = tmp_path_factory.mktemp("docs-sandbox")
    shutil.copytree(REPO / "experiments", root / "experiments")
    for name in ("bench", "results"):
        (root / name).symlink_to(REPO / name)
    for b in all_blocks():
        if b.file:
            shipped = REPO / b.file
            if shipped.exists():
                assert shipped.read_text(encoding="utf-8") == b.text, f"{b.where()}: differs from {b.file}"
            (root / b.file).parent.mkdir(parents=True, exist_ok=True)
            (root / b.file).write_text(b.text, encoding="utf-8")
    for path in (root / "experiments").glob("*.toml"):
        path.write_text(demo_size(path.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("RERANK_BENCH_CACHE", str(root / "cache"))
        patch.setitem(trained.SETTINGS, "steps", 4)  # the demo model's quality is test_trained.py's business
        patch.setattr(trained, "training_groups", functools.partial(trained.training_groups, ["en"]))
        assert main(["run", "experiments/offline.toml", "--no-progress", "--skip-preflight"]) == 0
        yield root


def bench(argv, env=(), monkeypatch=None) -> int:
    """`bench ARGV` in this process, with the command line's own environment variables; an argument
    error is its exit status, as in a shell."""
    for key, value in env:
        monkeypatch.setenv(key, value)
    try:
        return main([*argv, "--no-progress"] if argv and argv[0] in COMMANDS else list(argv))
    except SystemExit as exc:
        return exc.code


# -- the tests ----------------------------------------------------------------------------------------------
def test_pages_are_read_and_markers_are_known():
    """The reader finds the blocks and commands this module checks (a test of the reader itself)."""
    readme = blocks(REPO / "README.md")
    assert any(b.needs == {"network", "gpu"} for b in readme) and any(b.file for b in readme)
    assert [c.argv for c in commands(Block(REPO, 1, "bash", "make demo OUT=x\nA=1 bench run e.toml \\\n  --dry-run\n",
                                           frozenset(), None))] == [("run", "experiments/offline.toml", "--out", "x"),
                                                                    ("run", "e.toml", "--dry-run")]
    for b in all_blocks():
        assert b.needs <= KINDS, f"{b.where()}: unknown kind(s) {sorted(b.needs - KINDS)}; use {sorted(KINDS)}"
    assert len(MARKED) > 10 and len(OFFLINE_PAGES) >= 2


@pytest.mark.parametrize("command", MARKED, ids=lambda c: c.where)
def test_marked_commands_parse(command, sandbox, monkeypatch):
    """A command that needs a network, a GPU, a cluster or a long time: the real command line parses it,
    `bench run` plans it (--dry-run) and `bench reproduce` finds its entries (--list)."""
    name = command.argv[0]
    assert name in COMMANDS, f"{command.where}: `bench {name}` is not a command ({', '.join(COMMANDS)})"
    if name in DEEPER:
        assert bench([*command.argv, *DEEPER[name]], command.env, monkeypatch) == 0, command.shown
        return
    module = __import__(COMMANDS[name][0], fromlist=["run"])
    seen = []
    monkeypatch.setattr(module, "run", lambda args: seen.append(args) or 0)
    assert bench(command.argv, command.env, monkeypatch) == 0 and seen, command.shown
    for value in vars(seen[0]).values():  # an experiment file it names exists and loads
        if isinstance(value, (str, Path)) and str(value).endswith(".toml") and "experiments/" in str(value):
            load_experiment(value)


@pytest.mark.parametrize("page", OFFLINE_PAGES, ids=lambda p: p.name)
def test_offline_commands_run(page, sandbox, monkeypatch, capsys):
    """Every command of the page's unmarked blocks runs, in order, in the sandbox."""
    for block in [b for b in shell_blocks() if b.page == page and not b.needs]:
        for command in commands(block):
            code = bench(command.argv, command.env, monkeypatch)
            assert code == 0, f"{command.where}: `{command.shown}` exited {code}:\n{capsys.readouterr().err[-3000:]}"


def inline_commands() -> list[tuple[str, str, list[str]]]:
    """(where, command, options) of every inline `bench COMMAND ...` span of the pages."""
    out = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for span in re.findall(r"`(bench [a-z][^`]*)`", text):
            words = span.replace("[", " ").replace("]", " ").replace("|", " ").split()
            out.append((f"{page.relative_to(REPO)}: `{span}`", words[1], [w.split("=")[0] for w in words[2:]
                                                                            if re.match(r"^--?[a-zA-Z]", w)]))
    return out


def test_inline_commands_name_real_commands_and_options():
    import argparse
    import importlib

    problems = []
    for where, name, options in inline_commands():
        if name not in COMMANDS:
            problems.append(f"{where}: no command {name!r}")
            continue
        parser = argparse.ArgumentParser()
        importlib.import_module(COMMANDS[name][0]).add_arguments(parser)
        known = set(parser._option_string_actions) | {"--no-progress", "--verbose"}
        problems += [f"{where}: `bench {name}` has no option {o}" for o in options if o not in known]
    assert not problems, "\n".join(problems)
    assert len(inline_commands()) > 20


def test_paths_named_in_the_docs_exist():
    """A file or folder of the checkout named in the README, the docs or an experiment file's comments
    exists (`experiments/default.toml` once named a module that had moved). Patterns, placeholders
    (`docs/PAGE.md`) and the reader's own files (`experiments/my-experiment.toml`) are not checked."""
    path = re.compile(r"(?<![\w./-])((?:bench|experiments|results|tests|docs)/[\w.+*{}<>/-]*[\w/*}>])")
    problems = []
    sources = [*PAGES, *sorted((REPO / "experiments").rglob("*.toml")), REPO / "Makefile"]
    for source in sources:
        text = source.read_text(encoding="utf-8")
        if source.suffix == ".toml":
            text = "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
        written = {b.file for b in all_blocks() if b.file}
        for found in path.findall(text):
            if any(c in found for c in "<>{}*") or found in written or re.search(r"/(my[-_]|[A-Z]+\b)", found):
                continue
            if not (REPO / found).exists():
                problems.append(f"{source.relative_to(REPO)}: {found}")
    # a section named beside its page ("docs/throughput.md, 'Choosing a precision'") is a heading there
    section = re.compile(r"""((?:(?<=\()|(?<=see ))README|docs/[\w-]+\.md),? ["']([^"']+)["']""")
    for source in [*sources, *sorted(REPO.glob("bench/**/*.py")), *sorted(REPO.glob("tests/*.py"))]:
        for page, title in section.findall(source.read_text(encoding="utf-8")):
            target = REPO / ("README.md" if page == "README" else page)
            headings = re.findall(r"^#+ (.*)$", target.read_text(encoding="utf-8"), re.M) if target.exists() else []
            if not any(h.replace("`", "").lower().startswith(title.lower()) for h in headings):
                problems.append(f"{source.relative_to(REPO)}: {page}, {title!r} (no such heading)")
    assert not problems, "named but missing:\n" + "\n".join(problems)


def toml_blocks() -> list[Block]:
    return [b for b in all_blocks() if b.lang == "toml"]


@pytest.mark.parametrize("block", toml_blocks(), ids=lambda b: b.where())
def test_toml_snippets_are_valid_experiment_parts(block, sandbox):
    """Each TOML snippet parses; its experiment tables validate as `bench run` reads them (relative
    python: files against the sandbox's experiments/), a whole experiment with its references."""
    data = tomllib.loads(block.text)
    if not set(data) & set(Experiment.model_fields):
        return  # a registry entry or a pyproject.toml table: not an experiment part
    for reranker in data.get("rerankers", []):
        reranker["model"] = file_relative_to(reranker["model"], sandbox / "experiments")
    try:
        if {"name", "datasets", "first_stages"} <= set(data):
            Experiment.model_validate(data)
        for key, value in data.items():
            TypeAdapter(Experiment.model_fields[key].annotation).validate_python(value)
    except ValidationError as exc:
        pytest.fail(f"{block.where()}: {exc}")


# -- the README's recipes ----------------------------------------------------------------------------------
def readme_block(heading: str, lang: str = "bash") -> Block:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(heading)
    return next(b for b in blocks(REPO / "README.md") if b.lang == lang and b.line > text[:start].count("\n"))


def test_recipe_a_compares_two_rerankers_offline(sandbox, monkeypatch, cache_dir):
    """Recipe (a) as written, on an offline variant of its experiment: the three MS MARCO datasets
    become the synthetic English collection, bge-base-en-v1.5 the real all-MiniLM-L6-v2, the two hub
    rerankers `random:tiny-xlmr-reranker` and the README's TermOverlap class, under their labels."""
    monkeypatch.setenv("RERANK_BENCH_CACHE", str(cache_dir))  # the session's: its random models are built once
    path = sandbox / "experiments" / "msmarco-rerankers.toml"
    spec = tomllib.loads(path.read_text(encoding="utf-8"))
    labels = [r["model"].split("/")[-1] for r in spec["rerankers"]]
    from conftest import experiment_text

    path.write_text(experiment_text(
        name=spec["name"], first_stages={"bge-base-en": {"kind": "dense", "model": "offline:all-MiniLM-L6-v2",
                                                         "depth": 20, "dtype": "fp32", "max_length": 128}},
        datasets=[{"source": "synthetic", "synthetic": {"languages": ["en"], "docs_per_language": 150,
                                                        "queries_per_language": 12}}],
        rerankers=[{"model": "random:tiny-xlmr-reranker", "name": labels[0], "dtype": "fp32", "max_length": 128,
                    "top_k": 20},
                   {"model": "python:custom_reranker.py:TermOverlap", "name": labels[1], "top_k": 20}],
        evaluation=spec["evaluation"]), encoding="utf-8")
    for command in commands(readme_block("## Recipe (a)")):
        assert bench(command.argv, command.env, monkeypatch) == 0, command.shown
    out = sandbox / "runs" / "msmarco-rerankers"
    records = sorted(p.name for p in (out / "records").glob("*.json"))
    assert len(records) == 3 and all(any(label in r for r in records) for label in labels)
    tables = " ".join(p.read_text() for p in (out / "compare").rglob("*.md"))
    assert all(label in tables for label in labels)


@pytest.mark.slow
@pytest.mark.shared_data
def test_recipe_b_reproduces_bge_m3_rows_offline(sandbox, shared_data, monkeypatch, capsys, cache_dir):
    """Recipe (b) as written, on an offline variant of its experiment: `miracl/yo/dev` is
    ../shared/data's Yoruba dev (its 119 queries and qrels) as a BEIR folder labelled `miracl/yo/dev`,
    cut to the judged passages and 200 others (a full-corpus encoding is test_miracl_yo.py's), bge-m3
    is `random:tiny-bge-m3`, and the multi-vector rows rank the top 20, not 100. Both commands run;
    `bench reproduce` checks the five Yoruba rows against the published table and says FAIL, naming
    the corpus and the untrained model. Slow: five first stages over 1,100 passages."""
    import gzip

    monkeypatch.setenv("RERANK_BENCH_CACHE", str(cache_dir))  # the session's: random:tiny-bge-m3 is built once
    src, folder = shared_data / "miracl-yo-dev", sandbox / "miracl-yo-subset"
    qrels = [line.split("\t") for line in (src / "qrels" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    judged = {row[1] for row in qrels}
    (folder / "qrels").mkdir(parents=True)
    shutil.copy(src / "queries.jsonl", folder / "queries.jsonl")
    shutil.copy(src / "qrels" / "dev.tsv", folder / "qrels" / "dev.tsv")
    with gzip.open(src / "corpus.jsonl.gz", "rt", encoding="utf-8") as fi, \
            gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as fo:
        fo.writelines(line for i, line in enumerate(fi) if i < 200 or json.loads(line)["_id"] in judged)
    text = (REPO / "experiments" / "miracl-bge-m3.toml").read_text(encoding="utf-8").replace("BAAI/bge-m3", "random:tiny-bge-m3")
    text, n = re.subn(r"depth = 100\nrescore_depth = 100", "depth = 20\nrescore_depth = 20", text)  # top 20 re-encoded
    assert n == 2
    text, n = re.subn(r'source = "ir_datasets"\nid = "miracl/\{lang\}/dev"\nlanguages = \[[^\]]*\]',
                      f'source = "beir"\npath = "{folder.as_posix()}"\nsplit = "dev"\nlanguage = "yo"\nname = "miracl/yo/dev"', text)
    assert n == 5
    (sandbox / "experiments" / "miracl-bge-m3.toml").write_text(text, encoding="utf-8")
    run, reproduce = commands(readme_block("## Recipe (b)"))
    assert bench(run.argv, run.env, monkeypatch) == 0, run.shown
    capsys.readouterr()
    assert bench(reproduce.argv, reproduce.env, monkeypatch) == 1, reproduce.shown  # 1: FAIL, as it must here
    out = capsys.readouterr().out
    rows = re.findall(r"^FAIL (flagembedding-bge-m3[\w+-]*)/miracl-yo-dev/nDCG@10", out, re.M)
    assert sorted(rows) == sorted(["flagembedding-bge-m3", "flagembedding-bge-m3-sparse", "flagembedding-bge-m3-multivec",
                                   "flagembedding-bge-m3-dense+sparse", "flagembedding-bge-m3-all"]), out[-3000:]
    assert "49043" in out.replace(",", "") and "untrained" in out, out[-3000:]


def test_recipe_c_three_ways_to_name_a_reranker(sandbox, monkeypatch, tiny_reranker, capsys):
    """Recipe (c): its command ran as written (test_offline_commands_run[README.md]); here each of its
    three `model =` lines in turn: the Python class runs, the folder runs with the tiny random
    cross-encoder's folder in place of `/data/models/my-cross-encoder`, the hub id (network) is planned."""
    from conftest import experiment_text

    snippet = tomllib.loads(readme_block("## Recipe (c)", "toml").text)["rerankers"]
    assert [r["model"] for r in snippet][2] == "python:custom_reranker.py:TermOverlap"
    spec = tomllib.loads((sandbox / "experiments" / "custom-rerankers.toml").read_text(encoding="utf-8"))
    for i, reranker in enumerate(snippet):
        model = tiny_reranker if reranker["model"].startswith("/data/") else reranker["model"]
        path = sandbox / "experiments" / f"recipe-c-{i}.toml"
        path.write_text(experiment_text(name=f"recipe-c-{i}", first_stages=spec["first_stages"],
                                        datasets=spec["datasets"], rerankers=[{"model": model, "top_k": 10}]))
        if i == 0:  # a hub id: planned offline, listed as a download
            assert bench(["run", str(path), "--dry-run"], (), monkeypatch) == 0
            assert f"models to download (not in the local Hugging Face cache): {model}" in capsys.readouterr().out
            continue
        assert bench(["run", str(path), "--skip-preflight"], (), monkeypatch) == 0
        records = sorted((sandbox / "runs" / f"recipe-c-{i}" / "records").glob("*.json"))
        assert len(records) == 2
    report = (sandbox / "runs" / "custom-rerankers" / "report.md").read_text()
    assert "TermOverlap" in report and "demo-ce" in report and "first stage: bm25" in report
    record = json.loads(next((sandbox / "runs" / "custom-rerankers" / "records").glob("*TermOverlap.json")).read_text())
    assert record["system"]["reranker"]["python"]["version"] == "1"


# -- the site -----------------------------------------------------------------------------------------------
def test_site_builds_strictly_and_renders_in_chromium(tmp_path):
    """`mkdocs build --strict` (a broken link or anchor, a page left out of the navigation fail it);
    the home page and the results page of `make demo`'s records in headless chromium, silent consoles,
    screenshots in test-artifacts/."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    site = tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=REPO,
                           capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                             "NO_MKDOCS_2_WARNING": "1"})
    assert built.returncode == 0, built.stderr[-3000:]
    pages = {p.relative_to(site).as_posix() for p in site.glob("*.html")}
    assert {f"{p.stem}.html" for p in (REPO / "docs").glob("*.md")} <= pages
    from test_systems import browse, console_lines

    # the results page of make demo's committed records (results/demo-cpu/), written with report.md beside it
    assert main(["report", str(REPO / "results" / "demo-cpu"), "--out", str(tmp_path / "demo")]) == 0
    demo = tmp_path / "demo" / "report.html"
    ARTIFACTS.mkdir(exist_ok=True)
    for page, shot in ((site / "index.html", "docs-home.png"), (demo, "results-page-demo.png")):
        taken = browse(page, f"--screenshot={ARTIFACTS / shot}", "--window-size=1280,1600")
        assert taken.returncode == 0 and console_lines(taken.stderr) == [], taken.stderr[-2000:]
        assert (ARTIFACTS / shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
