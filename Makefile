# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch lies on this machine's disk; GPU users install their own CUDA build before `make`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup system-deps demo test test-fast lint clean-outputs

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the tests start for real: SLURM + munge (a one-node cluster), Chromium (the MLflow UI test).
# Where this target can install them (root with apt-get), their tests must run: `make test` fails, not skips, if
# they cannot (XLSR_REQUIRE_SYSTEM_TESTS=1, tests/_system.py). Elsewhere they skip, naming the claim left unproven.
CAN_INSTALL_SYSTEM_DEPS := $(shell [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && echo 1)
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in slurm-wlm munge chromium; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi; \
	else echo "not root with apt-get: install slurm-wlm munge chromium yourself, or their tests skip (UNPROVEN: ...)"; fi

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
