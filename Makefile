# `make test` and `make serve` work on a fresh machine: they create .venv and install into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test serve lint bench proto clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

serve: $(STAMP)
	$(PY) -m weightgen.server

lint: $(STAMP)
	$(PY) -m ruff check .

# Regenerates the committed Python stubs from the .proto (a test checks they are current).
proto: $(STAMP)
	$(PY) -m weightgen.v1.regen

bench: $(STAMP)
	$(PY) bench/engine_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
