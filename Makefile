# meshlab: build, run and test the service-mesh lab.
# `make` alone lists the targets. Defaults (ENV, ports, lab load, IMAGE) come from .env;
# override any of them on the command line, e.g. `make run ENV=staging LAB_RPS=500`,
# `make apply ENV=prod`.

-include .env
export

ENV ?= dev
LAB_DURATION ?= 20s
LAB_RPS ?= 200
QUICK ?=

CARGO ?= cargo
VENV := $(CURDIR)/.venv
TABLES := k8s/overlays
SHELL_SCRIPTS := $(wildcard scripts/*.sh k8s/terraform/*.sh) .ci/run bench/run.sh

# Kubernetes: the overlays, the schema version `validate` checks them against (one of the
# versions kubernetes-validate bundles), the cluster tools and the minikube profile.
OVERLAYS := dev staging prod
K8S_VERSION := 1.32.0
KUSTOMIZE_BUILD := scripts/kustomize-build.sh
KUBECTL ?= kubectl
DOCKER ?= docker
PROFILE ?= meshlab
IMAGE ?= meshlab:dev
OUT ?=

.DEFAULT_GOAL := help
.PHONY: help setup build release run test lint fmt bench clean \
	validate diff apply delete image minikube-up minikube-down

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## Install what builds and tests need (cmake, curl, .venv with test tools); idempotent
	@scripts/setup.sh

release: ## Release build of every binary (target/release/)
	$(CARGO) build --release --workspace --bins

run: setup release ## Run the local lab for ENV (default dev) from k8s/overlays/ENV/table.toml
	./target/release/meshlab up --env $(ENV) --tables $(TABLES) \
		--duration $(LAB_DURATION) --rps $(LAB_RPS)

test: setup ## Everything CI checks: fmt, clippy, build, cargo test, validate, shellcheck
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) build --workspace --bins
	PATH="$(VENV)/bin:$$PATH" $(CARGO) test --workspace
	@$(MAKE) --no-print-directory validate
	$(VENV)/bin/shellcheck $(SHELL_SCRIPTS)

lint: setup ## fmt check, clippy and shellcheck, without building or testing
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/shellcheck $(SHELL_SCRIPTS)

fmt: ## Format the Rust code in place
	$(CARGO) fmt --all

bench: setup ## Benchmark the sidecar against direct, nginx and HAProxy (QUICK=1: < 2 min)
	QUICK="$(QUICK)" bash bench/run.sh

clean: ## Remove build output, the venv and .tools/
	$(CARGO) clean
	rm -rf $(VENV) .tools

# --- Kubernetes -----------------------------------------------------------------------------
# Rendering goes through scripts/kustomize-build.sh: a standalone kustomize when present, else
# `kubectl kustomize` (both Kustomize v5, so both render the same).

build: ## Render the overlay for ENV to stdout (OUT=file writes it there)
ifeq ($(OUT),)
	@$(KUSTOMIZE_BUILD) k8s/overlays/$(ENV)
else
	$(KUSTOMIZE_BUILD) k8s/overlays/$(ENV) > $(OUT)
endif

validate: ## Render every overlay and validate it against the Kubernetes K8S_VERSION schemas
	@scripts/setup.sh
	@set -e; for env in $(OVERLAYS); do \
		$(KUSTOMIZE_BUILD) k8s/overlays/$$env \
			| $(VENV)/bin/kubernetes-validate --kubernetes-version $(K8S_VERSION) --strict --quiet -; \
		echo "k8s/overlays/$$env: valid for Kubernetes $(K8S_VERSION)"; \
	done

diff: ## Show what `make apply` would change in the cluster for ENV (kubectl diff)
	@$(KUSTOMIZE_BUILD) k8s/overlays/$(ENV) | $(KUBECTL) diff -f - || test $$? -eq 1

apply: ## Deploy ENV to the current kubectl context (namespace mesh-ENV)
	$(KUSTOMIZE_BUILD) k8s/overlays/$(ENV) | $(KUBECTL) apply -f -

delete: ## Remove ENV from the current kubectl context
	$(KUSTOMIZE_BUILD) k8s/overlays/$(ENV) | $(KUBECTL) delete --ignore-not-found -f -

image: ## Build the container image IMAGE (from .env) with docker
	$(DOCKER) build -t $(IMAGE) .

minikube-up: ## Start minikube (profile PROFILE), build the image into it and deploy ENV
	scripts/start-minikube.sh --profile $(PROFILE) --env $(ENV)

minikube-down: ## Stop the minikube profile PROFILE (scripts/stop-minikube.sh --delete removes it)
	scripts/stop-minikube.sh --profile $(PROFILE)
