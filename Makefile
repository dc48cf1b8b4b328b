# pvit: `make run` trains and evaluates the tiny default recipe; `make test` runs the test suite and the docs build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RECIPE ?= recipes/pvit_tiny.yaml
export HF_HUB_OFFLINE ?= 1
export NO_MKDOCS_2_WARNING ?= 1

.PHONY: run test install docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-installs when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev,docs]"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/pvit run $(RECIPE) --overwrite

test: install
	$(BIN)/python -m pytest -q
	$(BIN)/mkdocs build --strict -q -d $(VENV)/site-build

docs: install
	$(BIN)/mkdocs serve

bench: install
	for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs site
