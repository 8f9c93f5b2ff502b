# Self-bootstrapping: every target creates .venv on first use. torch is pinned to the
# local CPU wheel only when no torch is present, so other builds (CUDA, ROCm) are kept.
PY := .venv/bin/python
PIP := $(PY) -m pip
TORCH_PIN ?= torch==2.13.0

.PHONY: install install-dev install-bench system-deps bench-deps quickstart test test-fast bench lint audit architecture clean

.venv/bin/python:
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip

.venv/.torch: .venv/bin/python
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_PIN)
	touch $@

install: .venv/.torch
	$(PY) -c 'import torch;print("torch=="+torch.__version__.split("+")[0])' > .venv/constraints.txt
	$(PIP) install -q -e . -c .venv/constraints.txt

install-dev: .venv/.torch  # dev + the trackers (MLflow, TensorBoard) that tests/test_track.py reads back + Optuna
	$(PY) -c 'import torch;print("torch=="+torch.__version__.split("+")[0])' > .venv/constraints.txt
	$(PIP) install -q -e ".[dev,track,tune]" -c .venv/constraints.txt

install-bench: .venv/.torch  # dev + the LitServe peer of bench/serve_load.py
	$(PY) -c 'import torch;print("torch=="+torch.__version__.split("+")[0])' > .venv/constraints.txt
	$(PIP) install -q -e ".[dev,track,tune,bench]" -c .venv/constraints.txt

quickstart: install
	.venv/bin/genforge quickstart

# The Debian packages the test suite needs (the real-data, browser and PostgreSQL-study paths), and those the benchmarks
# add (wrk): installed here when running as root with apt-get, else the one command that installs them, and a stop
# (SYSTEM_DEPS=skip runs without them; their tests are then listed as skipped at the end of the run, and fail under CI).
SYSTEM_DEPS ?= check
define apt_or_stop
	@[ "$(SYSTEM_DEPS)" = skip ] && exit 0; missing=""; $(1) \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else \
	  echo "make $(2) needs Debian packages that are missing; install them with:"; \
	  echo "  sudo apt-get install -y$$missing"; \
	  echo "or run without their tests (reported as skipped): make $(2) SYSTEM_DEPS=skip"; \
	  exit 1; \
	fi
endef
SUITE_PACKAGES = [ -d /usr/share/datasets/fashion-mnist ] || missing="$$missing dataset-fashion-mnist"; \
	[ -d /usr/share/games/fortunes ] || missing="$$missing fortunes"; \
	command -v zstd >/dev/null || missing="$$missing zstd"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	set -- /usr/lib/postgresql/*/bin/initdb; [ -x "$$1" ] || missing="$$missing postgresql";

system-deps:
	$(call apt_or_stop,$(SUITE_PACKAGES),test)

bench-deps:
	$(call apt_or_stop,$(SUITE_PACKAGES) command -v wrk >/dev/null || missing="$$missing wrk";,bench)

# The suite on TEST_WORKERS pytest-xdist workers: a test file's tests run on one worker, the longest files first, and
# the trained fixtures are trained once and shared (tests/conftest.py). Each target prints its wall time at the end.
# test-fast: the tests not marked slow (no trained fixture, no long training of their own), for before each commit.
TEST_WORKERS ?= 2
PYTEST := OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
define timed
@start=$$(date +%s); $(1); code=$$?; echo "make $(2): $$(($$(date +%s) - start)) s"; exit $$code
endef

test: install-dev system-deps
	$(call timed,$(PYTEST),test)

test-fast: install-dev system-deps
	$(call timed,$(PYTEST) -m "not slow",test-fast)

bench: install-bench bench-deps  # about 3 hours; each script writes bench/out/<name>.json (see docs/benchmarks.md)
	$(PY) bench/classifier_vs_reference.py
	$(PY) bench/fashion_presets.py
	$(PY) bench/gan_vs_reference.py
	$(PY) bench/vae_vs_reference.py
	$(PY) bench/serve_load.py
	$(PY) bench/compress.py
	$(PY) bench/forecast_vs_statistical.py
	$(PY) bench/series_cleaning.py
	$(PY) bench/fashion_rowlstm.py
	$(PY) bench/fashion_dp.py
	$(PY) bench/tune_fashion.py
	$(PY) bench/transfer_few_labels.py
	$(PY) bench/ddp_throughput.py
	$(PY) bench/text_gpt.py
	$(PY) bench/text_few_labels.py
	$(PY) bench/text_serve.py
	$(PY) bench/text_step_batch.py
	$(PY) bench/busy_machine.py

lint: install-dev
	.venv/bin/ruff check .
	.venv/bin/lint-imports

# docs/img/import-graph.png, the picture of docs/architecture.md, from the code and the layer contract
architecture: install-dev
	$(PY) docs/import_graph.py

# pip-audit over the installed environment where its advisory database answers; otherwise (as on this project's CI
# machines) the recorded table of fixed versions in tests/test_dependencies.py
audit: install-dev
	$(PIP) install -q pip-audit -c .venv/constraints.txt
	.venv/bin/pip-audit --skip-editable --progress-spinner off || { echo "pip-audit failed or its database is \
	unreachable: checking the recorded fixed versions instead"; $(PY) -m pytest -q tests/test_dependencies.py; }

clean:
	rm -rf .venv runs build *.egg-info
