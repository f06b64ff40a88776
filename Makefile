# meshlab: build, run and test the service-mesh lab.
# `make` alone lists the targets. Defaults (ENV, ports, lab load) come from .env;
# override any of them on the command line, e.g. `make run ENV=staging LAB_RPS=500`.

-include .env
export

ENV ?= dev
LAB_DURATION ?= 20s
LAB_RPS ?= 200
QUICK ?=

CARGO ?= cargo
VENV := $(CURDIR)/.venv
TABLES := k8s/overlays
SHELL_SCRIPTS := $(wildcard scripts/*.sh) .ci/run bench/run.sh

.DEFAULT_GOAL := help
.PHONY: help setup build run test lint fmt bench clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## Install what builds and tests need (cmake, curl, .venv with test tools); idempotent
	@scripts/setup.sh

build: ## Release build of every binary (target/release/)
	$(CARGO) build --release --workspace --bins

run: setup ## Run the local lab for ENV (default dev) from k8s/overlays/ENV/table.toml
	$(CARGO) build --release --workspace --bins
	./target/release/meshlab up --env $(ENV) --tables $(TABLES) \
		--duration $(LAB_DURATION) --rps $(LAB_RPS)

test: setup ## Everything CI checks: fmt, clippy, build, cargo test, shellcheck
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) build --workspace --bins
	PATH="$(VENV)/bin:$$PATH" $(CARGO) test --workspace
	$(VENV)/bin/shellcheck $(SHELL_SCRIPTS)

lint: setup ## fmt check, clippy and shellcheck, without building or testing
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/shellcheck $(SHELL_SCRIPTS)

fmt: ## Format the Rust code in place
	$(CARGO) fmt --all

bench: setup ## Benchmark the sidecar against direct, nginx and HAProxy (QUICK=1: < 2 min)
	QUICK="$(QUICK)" bash bench/run.sh

clean: ## Remove build output and the venv
	$(CARGO) clean
	rm -rf $(VENV)
