# Quick start: `make demo` (the main job on built-in synthetic data) and `make test`.
# The environment's Python: >= 3.12 (JAX 0.11 and later need it), found by scripts/find_python.sh
# (python3.12, python3.13, python3, pyenv's versions); PY=/path/to/python overrides.
PY ?=
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: test test-floor test-py313 device-check-image test-cluster chaos chaos-prepare stress demo table3 summary benchmark benchmark-gpu \
  accelerators accelerators-tpu accelerators-gpu device-check device-wheels clean

# libtpu goes into its own folder, on the path of the tests only (the ahead-of-time TPU compiles):
# in the environment itself jax would look for a TPU, and say so, in every run.
LIBTPU := $(VENV)/libtpu

$(INSTALLED): requirements.txt requirements-dev.txt requirements-tpu.txt
	@scripts/make_venv.sh $(VENV) $(PY)
	$(PYTHON) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PYTHON) -m pip install -q --no-deps --upgrade --target $(LIBTPU) \
	  $$(grep '^libtpu==' requirements-tpu.txt)
	touch $@

# --dist loadfile: each test file runs on one worker, so its module fixtures (a trained run, a
# benchmark report) are built once.
test: $(INSTALLED)
	PYTHONPATH=$(LIBTPU) $(PYTHON) -m pytest -n $(PYTEST_WORKERS) --dist loadfile tests

# The oldest supported jax (requirements-floor.txt: the GPU machines' 0.11.2) in .venv-floor: the
# training, checkpoint and step tests and the multi-process watch on JAX's distributed client;
# then the device check's --smoke as a GPU image runs it (device-check-image, below). .ci/run
# runs it after `make test`.
FLOOR := .venv-floor
FLOOR_TESTS := tests/test_train.py tests/test_steps.py tests/test_peers.py tests/test_jax_private.py
$(FLOOR)/.installed: requirements.txt requirements-floor.txt requirements-dev.txt
	@scripts/make_venv.sh $(FLOOR) $(PY)
	grep -v '^jax==\|^jaxlib==' requirements.txt > $(FLOOR)/requirements.txt
	$(FLOOR)/bin/python -m pip install -q -r $(FLOOR)/requirements.txt -r requirements-floor.txt \
	  -r requirements-dev.txt
	touch $@

test-floor: $(FLOOR)/.installed
	$(FLOOR)/bin/python -c 'import jax, sys; print("jax", jax.__version__, "on", sys.version[:6])'
	$(FLOOR)/bin/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(FLOOR_TESTS)
	$(MAKE) device-check-image

# The newest Python these machines have (3.13): core tests in .venv-py313, built by
# scripts/install.sh as a TPU VM or GPU node builds its environment (uv, the pinned runtime
# packages and pytest; not torch, a CUDA build of gigabytes on PyPI).
PY313 ?= $(HOME)/.pyenv/versions/3.13.0/bin/python3
NEWEST := .venv-py313
$(NEWEST)/.installed: requirements.txt requirements-dev.txt scripts/install.sh
	grep '^pytest' requirements-dev.txt > $(NEWEST).test-requirements.txt
	PY=$(PY313) PY_VERSION=3.13 VENV=$(NEWEST) bash scripts/install.sh requirements.txt \
	  $(NEWEST).test-requirements.txt
	rm -f $(NEWEST).test-requirements.txt
	touch $@

# The training, multi-process and JAX-internals tests of test-floor (not test_steps.py, which
# cross-checks against PyTorch), and the data stack with its stops: the pools' and loaders' ends
# on 3.13.0, which carries CPython's race of gh-125451.
PY313_TESTS := tests/test_train.py tests/test_peers.py tests/test_jax_private.py \
  tests/test_stops.py tests/test_datasets.py tests/test_pipeline.py
test-py313: $(NEWEST)/.installed
	$(NEWEST)/bin/python -c 'import jax, sys; print("jax", jax.__version__, "on", sys.version[:6]); \
	  sys.exit(sys.version_info[:2] != (3, 13))'
	$(NEWEST)/bin/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PY313_TESTS)

# The device check as a GPU host runs it, on the CPU: a stand-in for the GPU machines' image
# (scripts/gpu_image.txt: jax 0.11.2 without the data stack) takes the wheels of
# `make device-wheels` through scripts/device_check.sh, at smoke sizes.
IMAGE := .venv-gpu-image
$(IMAGE)/.installed: scripts/gpu_image.txt
	@scripts/make_venv.sh $(IMAGE) $(PY)
	$(IMAGE)/bin/python -m pip install -q -r scripts/gpu_image.txt
	touch $@

device-check-image: $(IMAGE)/.installed device-wheels
	rm -rf $(IMAGE)/site $(IMAGE)/report
	! $(IMAGE)/bin/python -c 'import grain' 2>/dev/null  # the stand-in lacks the data stack
	CSTM_DEVICE_SITE=$(IMAGE)/site bash scripts/device_check.sh $(IMAGE)/bin/python \
	  $(IMAGE)/report --smoke

# Real SLURM (slurmctld, slurmd, munged on this machine) and Open MPI: sbatch, scancel, requeue,
# mpirun, a killed task (tests/cluster, about 3 minutes). Needs root and Debian's packages:
# apt-get install -y slurm-wlm munge openmpi-bin. .ci/run runs it after `make test`.
test-cluster: $(INSTALLED)
	$(PYTHON) -m pytest -p no:xdist tests/cluster

# The soak of stops anywhere (docs/reliability.md): a two-process smoke job stopped ten times at
# random moments (SIGKILL, SIGTERM or Ctrl-C to the group), restarted each time; 2 to 3.5
# minutes on 2 cores when it passes (runs of 2026-12-06). Its report: runs/chaos/report.json.
chaos: $(INSTALLED)
	$(PYTHON) -m tools.chaos --processes 2 --kills 10 --out runs/chaos

# The same for prepare (docs/reliability.md): a synthetic download with damaged videos prepared
# once, then again with ten stops at random moments (SIGKILL to the command or its group,
# SIGTERM, Ctrl-C), restarted each time; the examples, their order, the report and --verify
# must equal the uninterrupted preparation's. Its report: runs/chaos_prepare/report.json.
chaos-prepare: $(INSTALLED)
	$(PYTHON) -m tools.chaos_prepare --kills 10 --out runs/chaos_prepare

# The timing-sensitive tests (stops, peers, faults, the chaos soaks of training and prepare, and
# tests/cluster where SLURM is installed) STRESS_ROUNDS times, with a busy process per core
# beside them (docs/reliability.md, "Under load"). Its report: runs/stress/report.json.
STRESS_ROUNDS ?= 5
stress: $(INSTALLED)
	$(PYTHON) -m tools.stress --rounds $(STRESS_ROUNDS) --out runs/stress

# Synthetic SSv2-format data -> TFDS dataset -> train and evaluate TSN and CSTM -> table, plots.
demo: $(INSTALLED)
	$(PYTHON) -m cstm_jax.demo

# The paper's Table 3: each cell's number, config and command, and the runs' numbers in runs/.
table3: $(INSTALLED)
	$(PYTHON) -m cstm_jax.analysis.table3 --runs runs

# Parameters and multiply-adds of every model.
summary: $(INSTALLED)
	$(PYTHON) -m cstm_jax.analysis.summary

# The CPU throughput tables of docs/benchmarks.md (about 35 minutes on 2 cores); on a GPU or TPU
# run the commands in docs/benchmarks.md instead.
BENCH := $(PYTHON) -m cstm_jax.analysis.benchmark --warmup 1 --repeats 3 --steps 1 --batch 4
benchmark: $(INSTALLED)
	$(BENCH) --frames 8 --crop 128 --mode inference,train --json docs/bench/cpu_matched.json \
	  --markdown docs/bench/cpu_matched.md --plot docs/bench/cpu_matched.png
	$(BENCH) --published --models cstm_bninception,tsn_bninception,tsm_resnet50,i3d_resnet50 \
	  --mode inference --json docs/bench/cpu_published.json --markdown docs/bench/cpu_published.md
	$(BENCH) --models tsn_bninception,cstm_bninception --frames 8 --crop 224 --mode inference,train \
	  --json docs/bench/cpu_bninception_224.json --markdown docs/bench/cpu_bninception_224.md
	$(BENCH) --models tsm_bninception,cstm_bninception --frames 8 --crop 128 --shift_impl=slice \
	  --mode inference,train --json docs/bench/cpu_slice.json --markdown docs/bench/cpu_slice.md

# The GPU tables of docs/benchmarks.md, on a CUDA host whose python has jax[cuda] and
# requirements.txt (no .venv is made): make benchmark-gpu GPU_PYTHON=python3 GPU_OUT=docs/bench
# GPU_PART=1 is the 8-frame table and forced NHWC convs; 2 the 16-frame table and roll/slice.
GPU_PYTHON ?= python3
GPU_OUT ?= docs/bench
GPU_PART ?= 1 2
GPU_BENCH := $(GPU_PYTHON) -m cstm_jax.analysis.benchmark --batch 64 --dtype bfloat16 --warmup 2 \
  --repeats 5 --steps 5 --mode inference,train
benchmark-gpu:
ifneq (,$(filter 1,$(GPU_PART)))
	$(GPU_BENCH) --frames 8 --json $(GPU_OUT)/gpu_8f.json --markdown $(GPU_OUT)/gpu_8f.md \
	  --models cstm_bninception,tsn_bninception,tsm_bninception,gsm_bninception,i3d_resnet50
	$(GPU_BENCH) --frames 8 --gpu_conv_nhwc --models cstm_bninception,tsn_bninception \
	  --json $(GPU_OUT)/gpu_8f_nhwc.json --markdown $(GPU_OUT)/gpu_8f_nhwc.md
endif
ifneq (,$(filter 2,$(GPU_PART)))
	$(GPU_BENCH) --frames 16 --models cstm_bninception,tsn_bninception \
	  --json $(GPU_OUT)/gpu_16f.json --markdown $(GPU_OUT)/gpu_16f.md
	$(GPU_BENCH) --frames 8 --models cstm_bninception,tsm_bninception --shift_impl=slice \
	  --json $(GPU_OUT)/gpu_8f_slice.json --markdown $(GPU_OUT)/gpu_8f_slice.md
endif

# docs/accelerators.md: the experiments compiled ahead of time for TPU slices and H100s (no
# accelerator needed; on 2 cores each H100 compile took 33-213 s, a full-size TPU step 447-744 s
# or more). CUDA targets need the jax CUDA plugin:
# make accelerators CUDA_PYTHON=path/to/python-with-requirements-cuda.txt
CUDA_PYTHON ?= .venv-cuda/bin/python
# A train step of 32 clips: the GSM recipe's optimizer step (16 clips twice) in one step.
AOT_ARGS := --config.model.dtype=bfloat16 --config.data.batch_size=32 \
  --config.optim.grad_accum_steps=1
TPU_AOT := PYTHONPATH=$(LIBTPU) $(PYTHON) -m cstm_jax.analysis.aot
GPU_AOT := $(CUDA_PYTHON) -m cstm_jax.analysis.aot
AOT_OUT := docs/aot
accelerators: accelerators-tpu accelerators-gpu

accelerators-tpu: $(INSTALLED)
	mkdir -p $(AOT_OUT)
	-$(TPU_AOT) --config=configs/ssv2_8f.py $(AOT_ARGS) --target=tpu:v5e-8 --target=tpu:v5e-256 \
	  --steps=eval --config.data.eval_batch_size=256 --json $(AOT_OUT)/tpu_cstm_8f_eval.json
	-$(TPU_AOT) --config=configs/ssv2_8f.py $(AOT_ARGS) --target=tpu:v5e-256 --steps=train \
	  --config.data.batch_size=256 --json $(AOT_OUT)/tpu_cstm_8f_v5e256_train.json
	-$(TPU_AOT) --config=configs/ssv2_8f.py $(AOT_ARGS) --target=tpu:v5e-8 --target=tpu:v5p-8 \
	  --target=tpu:v6e-8 --steps=train --json $(AOT_OUT)/tpu_cstm_8f_train.json
	-$(TPU_AOT) --config=configs/ssv2_16f.py $(AOT_ARGS) --target=tpu:v5e-8 --steps=train \
	  --json $(AOT_OUT)/tpu_cstm_16f.json
	-$(TPU_AOT) --config=configs/ssv2_ablation_tsn.py $(AOT_ARGS) --target=tpu:v5e-8 --steps=train \
	  --json $(AOT_OUT)/tpu_tsn_8f.json
	-$(TPU_AOT) --config=configs/ssv2_i3d_resnet50.py $(AOT_ARGS) --target=tpu:v5e-8 --steps=train \
	  --json $(AOT_OUT)/tpu_i3d_resnet50.json
	-for cfg in ssv2_trn ssv2_s3dg ssv2_stm_resnet50; do for step in eval train; do \
	  $(TPU_AOT) --config=configs/$$cfg.py $(AOT_ARGS) --target=tpu:v5e-8 --steps=$$step \
	    --json $(AOT_OUT)/tpu_$${cfg}_$$step.json; done; done

accelerators-gpu: $(INSTALLED)
	mkdir -p $(AOT_OUT)
	-$(GPU_AOT) --config=configs/ssv2_8f.py $(AOT_ARGS) --target=cuda:h100 --target=cuda:h100x8 \
	  --json $(AOT_OUT)/cuda_cstm_8f.json
	-$(GPU_AOT) --config=configs/ssv2_8f.py $(AOT_ARGS) --target=cuda:h100 --steps=train \
	  --max_batch=512 --json $(AOT_OUT)/cuda_cstm_8f_largest.json
	-$(GPU_AOT) --config=configs/ssv2_16f.py $(AOT_ARGS) --target=cuda:h100 --target=cuda:h100x8 \
	  --steps=train --json $(AOT_OUT)/cuda_cstm_16f.json
	-$(GPU_AOT) --config=configs/ssv2_ablation_tsn.py $(AOT_ARGS) --target=cuda:h100 --steps=train \
	  --json $(AOT_OUT)/cuda_tsn_8f.json
	-$(GPU_AOT) --config=configs/ssv2_i3d_resnet50.py $(AOT_ARGS) --target=cuda:h100 --steps=train \
	  --json $(AOT_OUT)/cuda_i3d_resnet50.json
	-for cfg in ssv2_trn ssv2_s3dg ssv2_stm_resnet50; do \
	  $(GPU_AOT) --config=configs/$$cfg.py $(AOT_ARGS) --target=cuda:h100 --steps=train \
	    --json $(AOT_OUT)/cuda_$$cfg.json; done
	for nhwc in false true; do for cfg in ssv2_8f ssv2_ablation_tsn; do \
	  $(GPU_AOT) --config=configs/$$cfg.py $(AOT_ARGS) --target=cuda:h100 --steps=train \
	    --config.data.batch_size=64 --config.xla.gpu_conv_nhwc=$$nhwc \
	    --json $(AOT_OUT)/cuda_kernels_$${cfg}_nhwc_$$nhwc.json || exit 1; done; done

# The one-call device check (docs/accelerators.md): about 9 minutes on one GPU host, with that
# host's own Python and jax; writes docs/bench/device_<device>.{json,md} (DEVICE_OUT).
# `make device-wheels` (here, with network) fetches what such a host may lack into .whl/.
DEVICE_PYTHON ?= python3
DEVICE_OUT ?= docs/bench
device-check:
	bash scripts/device_check.sh $(DEVICE_PYTHON) $(DEVICE_OUT)

WHEEL_PLATFORMS := $(foreach p,manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
  manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 any,--platform $(p))
device-wheels: $(INSTALLED)
	mkdir -p .whl
	grep -v '^#' scripts/device_wheels.txt | grep -v '^promise==' | xargs $(PYTHON) -m pip download \
	  -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  $(WHEEL_PLATFORMS) -d .whl
	# promise has no wheel on PyPI: a pure-Python one is built from its source.
	$(PYTHON) -m pip wheel -q --no-deps -w .whl $$(grep '^promise==' scripts/device_wheels.txt)
	du -sh .whl

clean:
	rm -rf $(VENV) $(FLOOR) $(NEWEST) $(IMAGE) .pytest_cache .jax_cache runs/demo runs/chaos runs/chaos_early \
	  runs/chaos_prepare runs/stress data/demo
