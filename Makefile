# natbox: `make test` sets everything up on a fresh Debian machine (as root) and runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := iptables conntrack iproute2 procps iputils-ping gcc tmux fonts-firacode libcairo2 nftables iptstate
export XTABLES_LOCKFILE ?= /tmp/natbox-test-xtables.lock

.PHONY: test lint typecheck pytest deps venv screenshots bench demo clean

test: venv lint typecheck pytest

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (lab tests will be skipped)"; fi; \
	fi

$(BIN)/.installed: pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: deps $(BIN)/.installed

lint: venv
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest

screenshots: venv
	$(BIN)/python -m tui.screenshots screenshots

# The article's lab in network namespaces, the seed's forward, traffic, and the dashboard (root).
demo: venv
	$(BIN)/natbox demo

bench: venv
	$(BIN)/python -m benchmarks.conntrack_100k
	$(BIN)/python -m benchmarks.viewer_100k
	$(BIN)/python -m benchmarks.apply_10k
	$(BIN)/python -m benchmarks.forwards_scale
	$(BIN)/python -m benchmarks.lived_in

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
