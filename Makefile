# Self-bootstrapping: every target creates .venv on first use. torch is pinned to the
# local CPU wheel only when no torch is present, so other builds (CUDA, ROCm) are kept.
PY := .venv/bin/python
PIP := $(PY) -m pip
TORCH_PIN ?= torch==2.13.0

.PHONY: install install-dev quickstart test bench lint clean

.venv/bin/python:
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip

.venv/.torch: .venv/bin/python
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_PIN)
	touch $@

install: .venv/.torch
	$(PY) -c 'import torch;print("torch=="+torch.__version__.split("+")[0])' > .venv/constraints.txt
	$(PIP) install -q -e . -c .venv/constraints.txt

install-dev: .venv/.torch
	$(PY) -c 'import torch;print("torch=="+torch.__version__.split("+")[0])' > .venv/constraints.txt
	$(PIP) install -q -e ".[dev]" -c .venv/constraints.txt

quickstart: install
	.venv/bin/genforge quickstart

test: install-dev
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest

bench: install-dev  # about 100 minutes; each script writes bench/out/<name>.json (see docs/benchmarks.md)
	$(PY) bench/classifier_vs_reference.py
	$(PY) bench/fashion_presets.py
	$(PY) bench/gan_vs_reference.py
	$(PY) bench/vae_vs_reference.py
	$(PY) bench/serve_load.py
	$(PY) bench/compress.py

lint: install-dev
	.venv/bin/ruff check .

clean:
	rm -rf .venv runs build *.egg-info
