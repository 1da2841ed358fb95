# The two commands of the README: `make demo` (main job) and `make test` (the test suite).
# Both install what they need first: torch/torchvision pinned (local cache), the package with its
# test extras, and Debian's dataset-fashion-mnist when its files are absent.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install data demo test test-oldest bench

install:
	$(PIP) install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -c constraints.txt -e '.[test]'

data:
	@if [ ! -f $(FMNIST) ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	fi
	@test -f $(FMNIST) || { echo "Fashion-MNIST missing: apt-get install dataset-fashion-mnist"; exit 1; }

demo: install data
	$(PYTHON) train_scripts/demo.py --out outputs/demo

# $(call run_pytest,PYTHON,ARGS): the suite under PYTHON, failing on "no tests collected" (pytest's exit 5) too
run_pytest = $(1) -m pytest -q -p no:cacheprovider $(2); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test: install data
	$(call run_pytest,$(PYTHON),tests)

# The oldest releases setup.cfg admits (constraints-oldest.txt, one per range floor) on the oldest
# Python it admits, in their own venv: what a user with an older environment runs. Not part of
# `make test` (it downloads about 5 GB: PyPI's CUDA builds of torch 2.4); run it when a floor or a
# use of a dependency's API changes. With pyenv: `make test-oldest PYENV_VERSION=3.9.18`.
OLDEST_PYTHON ?= python3.9
OLDEST_VENV ?= $(HOME)/.cache/repan/venv-oldest
# the suite without the optional extras (onnx, pycocotools, torchao): their own floors are not tested here
OLDEST_PYTEST_ARGS := -m "not extras" --ignore=tests/test_export.py --ignore=tests/test_quantize.py
test-oldest: data
	@$(OLDEST_PYTHON) -V >/dev/null 2>&1 || { echo "test-oldest runs on $(OLDEST_PYTHON), the oldest Python" \
		"setup.cfg admits, and cannot start it: install it, or name it: make test-oldest OLDEST_PYTHON=/path/to/it"; exit 1; }
	test -x $(OLDEST_VENV)/bin/python || $(OLDEST_PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q -r constraints-oldest.txt 'pytest>=7' 'pytest-timeout>=2'
	$(OLDEST_VENV)/bin/python -m pip install -q -c constraints-oldest.txt -e .
	$(call run_pytest,$(OLDEST_VENV)/bin/python,$(OLDEST_PYTEST_ARGS) tests)
