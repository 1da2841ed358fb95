# The two commands of the README: `make demo` (main job) and `make test` (the test suite).
# Both install what they need first: torch/torchvision pinned (local cache), the package with its
# test extras, and Debian's dataset-fashion-mnist when its files are absent.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install data demo test bench

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

test: install data
	$(PYTHON) -m pytest -q -p no:cacheprovider tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc
