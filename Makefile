# Two commands matter: `make bench` (the main job, GPU box with network) and `make test`.
# Both create .venv and install the project on first use. Set TORCH_SPEC to pick a torch build
# first (CI: TORCH_SPEC=torch==2.13.0 takes the CPU build); by default pip picks torch as usual.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?=
OUT ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install bench demo test test-all throughput reproduce report docs clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install -q "$(TORCH_SPEC)")
	$(BIN)/python -m pip install -q -e '.[offline,test,ray,docs]'
	@echo "compiling ranx's metric kernels once (numba, about a minute on first install)..."
	$(BIN)/python -c "from bench.evaluate import warm_up; warm_up()"
	touch $(STAMP)

install: $(STAMP)

bench: $(STAMP)  ## the main job: experiments/default.toml (GPU box with network; what it runs: docs/index.md)
	$(BIN)/bench run experiments/default.toml $(if $(OUT),--out $(OUT))

demo: $(STAMP)  ## the embedded default: runs anywhere, offline, on CPU, in a few minutes
	$(BIN)/bench run experiments/offline.toml $(if $(OUT),--out $(OUT))

# Two pytest workers, each test file whole on one (its module fixtures built once), one torch thread
# each: on two cores the suite's waits (subprocesses, Ray nodes) overlap the other worker's compute.
test: $(STAMP)  ## the test suite (offline, CPU; tests that need ../shared/data skip with a message without it)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

throughput: $(STAMP)  ## reranker engines side by side: experiments/throughput.toml
	$(BIN)/bench throughput experiments/throughput.toml $(if $(OUT),--out $(OUT))

reproduce: $(STAMP)  ## published vs. measured scores: make reproduce NAMES='measured/miracl-yo-dev/minilm/*'
	$(BIN)/bench reproduce $(NAMES)

report: $(STAMP)  ## the table again from a run's records: make report OUT=runs/default
	$(BIN)/bench report $(or $(OUT),runs/default)

docs: $(STAMP)  ## the documentation site (docs/, mkdocs.yml) into site/; a broken link or a page left out fails
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean-venv:
	rm -rf $(VENV)
