# The two commands of the README:  `make serve`  and  `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# uv, from PyPI into the venv, installs the same packages as pip in a fraction of the time.
# Precompiled bytecode (pip's default) spares every server and test process compiling torch.
INSTALL := $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python
# WebRTC tests run in a network namespace that has only the loopback interface.
NETNS := $(shell if [ "$$(id -u)" = 0 ]; then echo "unshare --net"; \
                 else echo "unshare --user --map-root-user --net"; fi)

.PHONY: install serve test-install test lint bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BIN)/uv: $(BIN)/python
	$(BIN)/pip install --quiet uv

install: $(BIN)/uv
	$(INSTALL) -e .
	npm ci --prefix static --no-audit --no-fund --loglevel=error

serve: install
	$(BIN)/rtcproctor serve

test-install: install
	$(INSTALL) -e '.[test]'

lint: test-install
	$(BIN)/ruff check rtcproctor tests

test: lint
	$(NETNS) sh -c 'ip link set lo up && exec $(BIN)/pytest $(PYTEST_ARGS)'

bench: install
	$(NETNS) sh -c 'ip link set lo up && exec $(BIN)/rtcproctor bench signaling'
