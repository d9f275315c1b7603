# patrol — the two commands a new user needs: `make demo` and `make test`.
# Each installs what it needs itself: a virtualenv with the project, and the Debian packages
# prometheus + prometheus-alertmanager (promtool/amtool, the end-to-end tests, and the demo's
# alerting loop).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
APT_PACKAGES := prometheus prometheus-alertmanager
DEMO_ARGS ?=

.PHONY: help venv system-deps lint test test-fast fuzz demo bench clean

help:
	@echo "make demo   - start the simulated world (sandbox) and watch patrol keep it alive"
	@echo "make test   - install everything needed, lint, and run every test"
	@echo "make lint   - ruff + mypy --strict + import-linter"
	@echo "make bench  - run the benchmarks in bench/ (figures for docs/benchmarks.md)"
	@echo "make fuzz   - fuzz a live worker's webhook (100,000 inputs) and the config loader (10,000 files)"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "patrol needs Python >= 3.11"'
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo ">> installing python3-venv (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo ">> installing patrol and its dev tools into $(VENV)"
	@$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

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
	  rc=$$?; [ -z "$$own_policy" ] || $$SUDO rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: venv system-deps lint
	$(BIN)/pytest -q -p no:cacheprovider

# Unit tests only, for a quick loop while editing.
test-fast: venv
	$(BIN)/pytest -q tests/unit

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

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
