# Quickstart: `make demo` (sets up, then runs the whole pipeline tiny on this CPU) and `make test`.
# `make setup` is idempotent: the first run creates .venv and installs everything, later runs check
# and return in seconds. Override TORCH_SPEC to install another torch build (e.g. a CUDA wheel).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# one pytest worker per core (pytest-xdist); tests/conftest.py keeps the SLURM tests together in one worker
PYTEST_ARGS ?= -n auto --dist loadgroup
STAMP := $(VENV)/.installed

.PHONY: setup test demo clean-venv

setup: $(STAMP)
	@$(PY) tools/install_detectron2.py

$(STAMP): setup.py Makefile
	@command -v $(PYTHON) >/dev/null || { echo "setup: $(PYTHON) not found; install Python >= 3.9"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	@$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS) tests

demo: setup
	$(PY) tools/demo.py

clean-venv:
	rm -rf $(VENV)
