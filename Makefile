# Quick start: `make demo` (the main job on built-in synthetic data) and `make test`.
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: test demo summary benchmark clean

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

# The CPU throughput tables of docs/benchmarks.md (about 35 minutes on 2 cores); on a GPU or TPU
# run the commands in docs/benchmarks.md instead.
BENCH := $(PYTHON) -m cstm_jax.benchmark --warmup 1 --repeats 3 --steps 1 --batch 4
benchmark: $(INSTALLED)
	$(BENCH) --frames 8 --crop 128 --mode inference,train --json docs/bench/cpu_matched.json \
	  --markdown docs/bench/cpu_matched.md --plot docs/bench/cpu_matched.png
	$(BENCH) --published --models cstm_bninception,tsn_bninception,tsm_resnet50,i3d_resnet50 \
	  --mode inference --json docs/bench/cpu_published.json --markdown docs/bench/cpu_published.md
	$(BENCH) --models tsn_bninception,cstm_bninception --frames 8 --crop 224 --mode inference,train \
	  --json docs/bench/cpu_bninception_224.json --markdown docs/bench/cpu_bninception_224.md
	$(BENCH) --models tsm_bninception,cstm_bninception --frames 8 --crop 128 --shift-impl slice \
	  --mode inference,train --json docs/bench/cpu_slice.json --markdown docs/bench/cpu_slice.md

clean:
	rm -rf $(VENV) .pytest_cache .jax_cache runs/demo data/demo
