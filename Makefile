# One task runner: these targets are what developers and CI run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
# Compiled once here, as an installed package is: a start then does not compile our modules
# again (with PYTHONDONTWRITEBYTECODE set, every start would).
BYTECODE := $(PY) -m compileall -q server notifiers pipewarden bench eval > /dev/null
# The hot path compiled with mypyc (server/core/compiled.py), rebuilt when one of its sources
# changes; where the build fails (no C compiler) the server runs as pure Python.
HOT      := $(addprefix server/core/,model.py validation.py dedup.py shards.py wire.py ingest.py)
COMPILED := build/mypyc/manifest.json

.PHONY: run test lint proto bench bench-scale eval install dev compile clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(COMPILED): $(VENV)/.dev-installed $(HOT) server/core/compiled.py scripts/compile.py
	$(PY) scripts/compile.py || echo "mypyc build failed (is there a C compiler?): the server runs as pure Python"

install: $(VENV)/.installed     ## the project alone (what a deployment installs)
dev: $(VENV)/.dev-installed     ## the project and what the tests and tools need
compile: $(COMPILED)            ## the hot path with mypyc, into build/mypyc/ (when sources changed)

run: dev compile                ## serve with the embedded defaults (gRPC :50051, HTTP :9095, ./var)
	$(BYTECODE)
	$(BIN)/pipewarden serve

test: dev lint compile          ## lint, then the whole suite (on the compiled hot path when built)
	$(BIN)/pytest -q

lint: dev                       ## ruff (checks and format), strict mypy and buf lint on the protos
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint

proto: dev                      ## regenerate pipewarden/v1 and pipewarden/storage/v1 from protos/
	$(PY) scripts/gen_protos.py

bench: dev compile              ## the benchmarks; results also in bench/results.json
	$(BYTECODE)
	$(PY) -m bench

bench-scale: dev compile        ## fleet sizes up to 1,000,000 pipelines (minutes); bench/out/results.json
	$(BYTECODE)
	$(PY) -m bench scale-1m

eval: dev compile               ## the anomaly detectors on labelled scenarios; also eval/results.json
	$(PY) -m eval

clean:
	rm -rf $(VENV) var build .pytest_cache .mypy_cache .ruff_cache .hypothesis
