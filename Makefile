# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch lies on this machine's disk; GPU users install their own CUDA build before `make`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# LM beam search (docs/decoding.md): pyctcdecode without its numpy<2 pin; KenLM's lmplz is built once per machine
# from the kenlm sdist into ~/.cache/xlsr_dist/kenlm-0.3.0/ (tools/build_kenlm.sh; apt packages when root).
PYCTCDECODE_SPEC ?= pyctcdecode==0.5.0

.PHONY: setup system-deps demo test test-fast lint clean-outputs gpu-wheels gpu-check

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "$(PYCTCDECODE_SPEC)"
	tools/build_kenlm.sh $(PY)
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the tests start for real: SLURM + munge (a one-node cluster), Chromium (the MLflow UI test),
# OpenSSH server + pdsh (two nodes on one machine through launch/multinode_deepspeed.sh, tests/test_two_nodes.py).
# Where this target can install them (root with apt-get), their tests must run: `make test` fails, not skips, if
# they cannot (XLSR_REQUIRE_SYSTEM_TESTS=1, tests/_system.py). Elsewhere they skip, naming the claim left unproven.
CAN_INSTALL_SYSTEM_DEPS := $(shell [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && echo 1)
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in slurm-wlm munge chromium openssh-server pdsh; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi; \
	else echo "not root with apt-get: install slurm-wlm munge chromium openssh-server pdsh yourself, or their tests skip (UNPROVEN: ...)"; fi

# The demo: tiny model, embedded synthetic corpus, 2 CPU ranks through the DeepSpeed launcher.
demo: setup
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/deepspeed --num_gpus 2 --module xlsr_dist.train --config launch/demo.yaml

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: setup system-deps lint
	XLSR_REQUIRE_SYSTEM_TESTS=$${XLSR_REQUIRE_SYSTEM_TESTS:-$(CAN_INSTALL_SYSTEM_DEPS)} OMP_WAIT_POLICY=PASSIVE \
	  $(PY) -m pytest -q -rs

# Without the multi-process runs (seconds, for editing).
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# GPU check, on a CUDA machine with no package index (bench/gpu_check.py): first, here, `make gpu-wheels` puts the
# wheels it needs beyond the machine's own torch into .whl/ (CPython 3.12, manylinux x86_64; DeepSpeed built from its
# sdist as pure Python, no CUDA ops); there, `make gpu-check` installs .whl/ beside that torch and runs the check
# (~8 min on one GPU). GPU_PY is the GPU machine's Python, the one with CUDA torch.
GPU_PY ?= python3
GPU_SITE ?= /tmp/xlsr_dist_site
GPU_CHECK_ARGS ?=
WHEEL_PLATFORMS := $(foreach n,2_17 2_24 2_27 2_28 2_31 2_34,--platform manylinux_$(n)_x86_64) \
	--platform manylinux2014_x86_64 --platform manylinux1_x86_64

gpu-wheels: setup
	mkdir -p .whl
	$(PY) bench/gpu_wheels.py > .whl/requirements.txt
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  $(WHEEL_PLATFORMS) -d .whl -r .whl/requirements.txt
	DS_BUILD_OPS=0 $(PY) -m pip wheel -q --no-deps --no-build-isolation -w .whl $$($(PY) bench/gpu_wheels.py --built)
	@du -sh .whl

gpu-check:
	if ls .whl/*.whl >/dev/null 2>&1; then \
	  $(GPU_PY) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $(GPU_SITE) .whl/*.whl; \
	fi
	PYTHONPATH=$(GPU_SITE):$$PYTHONPATH $(GPU_PY) bench/gpu_check.py $(GPU_CHECK_ARGS)
