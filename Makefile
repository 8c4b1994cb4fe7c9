# The two entry points of the README: `make train` and `make test`.
PYTHON ?= python3
# The one Python version the project runs and tests on (pyproject.toml's requires-python, the README).
PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
ifneq ($(PYTHON_VERSION),3.11)
$(error awpo needs Python 3.11, but $(PYTHON) is '$(PYTHON_VERSION)': run make with PYTHON=/path/to/python3.11)
endif
VENV   ?= .venv
PY     := $(VENV)/bin/python
SCRATCH ?= $(CURDIR)/.scratch

# Every cache that torch, triton, vLLM and HF write goes under the scratch directory.
export VLLM_CACHE_ROOT        := $(SCRATCH)/vllm
export HF_HOME                := $(SCRATCH)/hf
export XDG_CACHE_HOME         := $(SCRATCH)/xdg
export TORCHINDUCTOR_CACHE_DIR:= $(SCRATCH)/inductor
export TRITON_CACHE_DIR       := $(SCRATCH)/triton
export VLLM_ENABLE_V1_MULTIPROCESSING := 0
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: venv train test test-fast bench
venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --no-deps -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $@

train: venv
	$(PY) -m awpo.train $(ARGS)

# The whole suite on two pytest-xdist workers with one torch thread each (ARGS='-n 0': one process).
test: venv
	$(PY) -m awpo.bfcl.venv --ensure
	$(PY) -m awpo.integrations.verl.venv --ensure
	OMP_NUM_THREADS=1 $(PY) -m pytest tests -q -p no:cacheprovider -n 2 --dist worksteal $(ARGS)

# The inner loop for a change: no vLLM, no BFCL checker, no slow tests; two workers with one torch thread each.
test-fast: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest tests -q -p no:cacheprovider -m "not vllm and not bfcl and not slow" \
		-n 2 --dist worksteal $(ARGS)

bench: venv
	$(PY) -m pytest benchmarks --benchmark-only -p no:cacheprovider $(ARGS)
