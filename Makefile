# The two commands of the README:  `make serve`  and  `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# WebRTC tests run in a network namespace that has only the loopback interface.
NETNS := $(shell if [ "$$(id -u)" = 0 ]; then echo "unshare --net"; \
                 else echo "unshare --user --map-root-user --net"; fi)

.PHONY: install serve test-install test lint bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .
	npm ci --prefix static --no-audit --no-fund --loglevel=error

serve: install
	$(BIN)/rtcproctor serve

test-install: install
	$(BIN)/pip install --quiet -e '.[test]'

lint: test-install
	$(BIN)/ruff check rtcproctor tests

test: lint
	$(NETNS) sh -c 'ip link set lo up && exec $(BIN)/pytest $(PYTEST_ARGS)'

bench: install
	$(NETNS) sh -c 'ip link set lo up && exec $(BIN)/rtcproctor bench signaling'
