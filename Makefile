# Quick start: `make demo` (the main job on built-in synthetic data) and `make test`.
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: test demo summary clean

$(INSTALLED): requirements.txt requirements-dev.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $@

test: $(INSTALLED)
	$(PYTHON) -m pytest -n $(PYTEST_WORKERS) tests

# Synthetic SSv2-format data -> TFDS dataset -> train and evaluate TSN and CSTM -> table, plots.
demo: $(INSTALLED)
	$(PYTHON) -m cstm_jax.demo

# Parameters and multiply-adds of every model.
summary: $(INSTALLED)
	$(PYTHON) -m cstm_jax.models.summary

clean:
	rm -rf $(VENV) .pytest_cache .jax_cache runs/demo data/demo
