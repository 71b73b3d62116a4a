# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN ?= runs/demo
DEMO_MANIFEST ?= data/openclipart-demo/manifest_stripped.csv

.PHONY: install install-dev demo test lint browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[index,serve,report]"

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"

# Debian's Chromium for the web page's browser tests (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium (sudo apt-get install chromium) for the browser tests"; fi; }

demo: install
	HF_HUB_OFFLINE=1 bash scripts/demo.sh $(RUN) $(DEMO_MANIFEST)

test: install-dev browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

lint: install-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs build dist *.egg-info
