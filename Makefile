# Quick start: `make demo` (the main job on built-in synthetic data) and `make test`.
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: test demo summary benchmark benchmark-gpu clean

# libtpu goes into its own folder, on the path of the tests only (the ahead-of-time TPU compiles):
# in the environment itself jax would look for a TPU, and say so, in every run.
LIBTPU := $(VENV)/libtpu

$(INSTALLED): requirements.txt requirements-dev.txt requirements-tpu.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PYTHON) -m pip install -q --no-deps --upgrade --target $(LIBTPU) \
	  $$(grep '^libtpu==' requirements-tpu.txt)
	touch $@

test: $(INSTALLED)
	PYTHONPATH=$(LIBTPU) $(PYTHON) -m pytest -n $(PYTEST_WORKERS) tests

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

# The GPU tables of docs/benchmarks.md, on a CUDA host whose python has jax[cuda] and
# requirements.txt (no .venv is made): make benchmark-gpu GPU_PYTHON=python3 GPU_OUT=docs/bench
# GPU_PART=1 is the 8-frame table and XLA's default NCDHW 3D convs; 2 the 16 frames and roll/slice.
GPU_PYTHON ?= python3
GPU_OUT ?= docs/bench
GPU_PART ?= 1 2
GPU_BENCH := $(GPU_PYTHON) -m cstm_jax.benchmark --batch 64 --dtype bfloat16 --warmup 2 \
  --repeats 5 --steps 5 --mode inference,train
benchmark-gpu:
ifneq (,$(filter 1,$(GPU_PART)))
	$(GPU_BENCH) --frames 8 --json $(GPU_OUT)/gpu_8f.json --markdown $(GPU_OUT)/gpu_8f.md \
	  --models cstm_bninception,tsn_bninception,tsm_bninception,gsm_bninception,i3d_resnet50
	$(GPU_BENCH) --frames 8 --gpu-conv-nhwc false --models cstm_bninception,tsn_bninception \
	  --json $(GPU_OUT)/gpu_8f_ncdhw.json --markdown $(GPU_OUT)/gpu_8f_ncdhw.md
endif
ifneq (,$(filter 2,$(GPU_PART)))
	$(GPU_BENCH) --frames 16 --models cstm_bninception,tsn_bninception \
	  --json $(GPU_OUT)/gpu_16f.json --markdown $(GPU_OUT)/gpu_16f.md
	$(GPU_BENCH) --frames 8 --models cstm_bninception,tsm_bninception --shift-impl slice \
	  --json $(GPU_OUT)/gpu_8f_slice.json --markdown $(GPU_OUT)/gpu_8f_slice.md
endif

clean:
	rm -rf $(VENV) .pytest_cache .jax_cache runs/demo data/demo
