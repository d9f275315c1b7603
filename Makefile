# patrol — the two commands a new user needs: `make demo` and `make test`.
# Each installs what it needs itself: a virtualenv with the project, and the Debian packages
# prometheus + prometheus-alertmanager (promtool/amtool, the end-to-end tests, and the demo's
# alerting loop).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The venv is reinstalled when the project's metadata or the lock changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt 2>/dev/null | sha1sum | cut -c1-12)
APT_PACKAGES := prometheus prometheus-alertmanager
# kubectl renders deploy/ in the tests (`kubectl kustomize`); it is not in Debian's own archive.
KUBECTL_MIN_MINOR := 27
DEMO_ARGS ?=

.PHONY: help venv lock system-deps lint test test-fast faults fuzz demo bench soak mttr clean

help:
	@echo "make demo   - start the simulated world (sandbox) and watch patrol keep it alive"
	@echo "make test   - install everything needed, lint, and run every test"
	@echo "make lint   - ruff + mypy --strict + import-linter"
	@echo "make bench  - run the benchmarks in bench/ (figures for docs/benchmarks.md)"
	@echo "make lock   - pin what the venv has into constraints.txt (after changing dependencies)"
	@echo "make soak   - 100 planned rotations through the whole loop, judged by what the world suffered"
	@echo "make mttr   - time from an out-of-band PAT revocation to recovery, through the whole loop"
	@echo "make fuzz   - fuzz a live worker's webhook (100,000 inputs) and the config loader (10,000 files)"
	@echo "make faults - the fault matrix: every external call x latency, 5xx, 429, 401, refused, SIGKILL"

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "patrol needs Python >= 3.11"'
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo ">> installing python3-venv (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo ">> installing patrol and its dev tools into $(VENV)"
	@$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]' -c constraints.txt || { \
	  echo ">> installing with constraints.txt failed; if pyproject.toml's dependencies changed, run 'make lock'" >&2; \
	  exit 1; }
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

# The lock: resolve pyproject.toml's ranges into the venv (keeping what already satisfies them),
# then pin exactly what is installed (tools/lock.py: patrol's dependencies and its dev tools,
# transitively; nothing installed by hand). Commit constraints.txt after `make test` passes.
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(BIN)/python tools/lock.py constraints.txt
	@rm -f $(VENV)/.installed-*

# Debian packages for the end-to-end tests. Installed without recommends and without starting
# their services (a policy-rc.d answering 101 while apt runs, unless the machine has its own):
# tests start their own instances. A package removed but not purged ("deinstall ok
# config-files") counts as missing.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo ">> installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  own_policy=""; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' | $$SUDO tee /usr/sbin/policy-rc.d >/dev/null && $$SUDO chmod +x /usr/sbin/policy-rc.d; \
	    own_policy=1; \
	  fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	  rc=$$?; [ -z "$$own_policy" ] || $$SUDO rm -f /usr/sbin/policy-rc.d; [ $$rc = 0 ] || exit $$rc; \
	fi
	@minor=$$(kubectl version --client -o json 2>/dev/null | sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' | head -1); \
	if [ -z "$$minor" ] || [ "$$minor" -lt $(KUBECTL_MIN_MINOR) ]; then \
	  echo ">> kubectl >= 1.$(KUBECTL_MIN_MINOR) is needed (the tests render deploy/ with 'kubectl kustomize'); found: $${minor:+1.}$${minor:-none}" >&2; \
	  echo "   Debian's archive has none this recent. Install the Debian package 'kubectl' from the Kubernetes" >&2; \
	  echo "   project's apt repository (https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/), or" >&2; \
	  echo "   the 'kubectl' package of the Google Cloud CLI apt repository; any kubectl >= 1.$(KUBECTL_MIN_MINOR) on PATH will do." >&2; \
	  exit 1; \
	fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Two workers, one test file each at a time (--dist loadfile keeps a module's fixtures in one
# process): most of the suite waits on real Prometheus scrapes, KEDA polls and retry backoffs, so
# two at once halve the wall time on two cores (docs/benchmarks.md "The test suite").
test: venv system-deps lint
	$(BIN)/pytest -q -p no:cacheprovider -n 2 --dist loadfile

# Unit tests only, for a quick loop while editing.
test-fast: venv
	$(BIN)/pytest -q tests/unit

# The fault matrix (docs/reliability.md "Fault matrix"; make test runs it too). The table it checks:
# PYTHONPATH=. $(BIN)/python -m tests.faults.matrix --markdown
faults: venv
	$(BIN)/pytest -q -p no:cacheprovider tests/faults

# Property-based fuzzing of the webhook against a live worker server (0 5xx, 0 tracebacks,
# 0 rotations from invalid input) and of the config loader (a config or problems naming the
# file, never a traceback). FUZZ_EXAMPLES / FUZZ_CONFIG_EXAMPLES change the counts; the
# figures are printed.
FUZZ_EXAMPLES ?= 100000
FUZZ_CONFIG_EXAMPLES ?= 10000
fuzz: venv
	PATROL_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) PATROL_FUZZ_CONFIG_EXAMPLES=$(FUZZ_CONFIG_EXAMPLES) \
	  $(BIN)/pytest -q -s -p no:cacheprovider --timeout=0 tests/fuzz

demo: venv system-deps
	$(BIN)/patrol demo $(DEMO_ARGS)

bench: venv
	$(BIN)/python bench/scrape.py
	$(BIN)/python bench/webhook.py
	$(BIN)/python bench/rotation.py

# The long runs of docs/reliability.md: real processes, real Prometheus and Alertmanager.
SOAK_ARGS ?= --rotations 100
soak: venv system-deps
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

mttr: venv system-deps
	$(BIN)/python bench/mttr.py $(MTTR_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
