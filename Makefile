# Lotgate. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PROTOS := $(wildcard protos/lotgate/*/v1/*.proto)

.DEFAULT_GOAL := help
.PHONY: help install run demo test test-unit test-integration test-e2e test-faults soak fuzz lint \
        proto proto-check bench bench-history deploy-check mutation mutation-ci clean

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install Lotgate with everything it needs (nats-server too)

run: install ## run nats-server and the three services on SQLite files; Ctrl-C stops them
	$(BIN)/lotgate run

demo: install ## drive a realistic scenario over gRPC and print each lot's status and why
	$(BIN)/lotgate demo

VALIDATION_DIR ?= build/validation

test: install ## all tests: unit, integration (real NATS + database) and e2e (processes); writes build/validation/
	$(BIN)/pytest --validation-report=$(VALIDATION_DIR)

test-unit: install ## pure tests of the rules, fast
	$(BIN)/pytest tests/unit

test-integration: install ## each service in-process against a real nats-server and database
	$(BIN)/pytest tests/integration

test-e2e: install ## the three services as processes, driven like a warehouse and an instrument
	$(BIN)/pytest tests/e2e

FUZZ_EXAMPLES ?= 300
# A new seed per run unless given; the run prints it, so that a failure can be repeated.
ifndef FUZZ_SEED
FUZZ_SEED := $(shell date +%s)
endif
fuzz: install ## the RPC fuzzer at length: FUZZ_EXAMPLES requests per RPC (300), FUZZ_SEED to repeat a run
	@echo "fuzzing every RPC with $(FUZZ_EXAMPLES) requests each, FUZZ_SEED=$(FUZZ_SEED)"
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_SEED=$(FUZZ_SEED) $(BIN)/pytest tests/integration/test_rpc_fuzz.py

mutation: install ## mutmut over the pure rules (unit tests) and the outbox/inbox (integration); prints scores and survivors
	$(BIN)/python -m tests.mutation.run domain delivery

# The subset's 3 survivors are equivalent (README, "Mutation testing"): 99.0 %; one more
# survivor fails the run.
mutation-ci: install ## a bounded mutation run for CI: the release rule and the transition policy
	$(BIN)/python -m tests.mutation.run domain --fail-under 98.8 \
	  --only 'services.lots.domain.rule.x_decide*' \
	  --only 'services.lots.domain.rule.x_qualification_unmet*' \
	  --only 'services.lots.domain.lifecycle.x_next_status*' \
	  --only 'services.lots.domain.lifecycle.x_transition*' \
	  --only 'services.lots.domain.rule.x_missing_results*' \
	  --only 'services.lots.domain.rule.x_required_tests*'

.PHONY: stateful
stateful: install ## the stateful property test of the release rule, 2,000 sequences (STATEFUL_EXAMPLES)
	STATEFUL_EXAMPLES=$${STATEFUL_EXAMPLES:-2000} $(BIN)/pytest tests/unit/test_release_rule_stateful.py

.PHONY: validation-report
validation-report: test ## the same as make test: all tests, and the traceability matrix in build/validation/

test-faults: install ## the fault suite: crashes, broker and database outages, judged by an oracle (minutes)
	$(BIN)/pytest tests/faults -p no:cacheprovider

SOAK_SECONDS ?= 120
soak: install ## random faults under a random workload for SOAK_SECONDS (120); prints a table
	SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m tests.faults.soak

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --silent

lint: install node_modules/.package-lock.json ## ruff and buf lint
	$(BIN)/ruff check .
	npx --no-install buf lint

proto: install ## regenerate the Python code from protos/
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -I protos \
	  --python_out=protos --grpc_python_out=protos --mypy_out=protos --mypy_grpc_out=protos \
	  $(PROTOS)

proto-check: proto ## fail when the generated code is not what the protos give
	git diff --exit-code -- protos

bench: install ## benchmark on PostgreSQL (DATABASE_URL) or SQLite; prints the tables
	$(BIN)/python -m tests.bench
	$(BIN)/python -m tests.bench.history

bench-history: install ## only the auditor queries on 100,000 history rows; prints a table
	$(BIN)/python -m tests.bench.history

deploy-check: ## validate the Kubernetes manifests, the Dockerfile and the compose file
	bash deploy/check.sh

clean: ## remove the venv, the local data and caches
	rm -rf $(VENV) .lotgate node_modules .pytest_cache .ruff_cache .hypothesis mutants mutants-*
