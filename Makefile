# Two targets on a fresh clone: `make quickstart` (a real search) and `make test`.
# Both build .venv first. On a CPU machine the pinned CPU torch wheel is
# installed so nothing pulls CUDA wheels; GPU users keep their own torch with
# `make TORCH= ...` (an empty TORCH installs no torch; pyproject asks torch>=2.4).

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
EXTRAS ?= dev,onnx,plotly,dashboard,postgres

.PHONY: quickstart test lint bench clean data gpu-carry gpu-check-dry

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	if [ -n "$(TORCH)" ]; then $(PY) -m pip install -q "$(TORCH)"; fi
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

quickstart: $(VENV)/.installed data
	$(VENV)/bin/shiftnas search examples/quickstart.yaml

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed
	$(PY) -m benchmarks.kernels --quick

# What benchmarks/gpu_check.sh needs on a GPU machine without a network, in the ignored
# folder wheels/: optuna and its pure-Python needs as CPython 3.12 wheels, and Fashion-MNIST's
# four files (from `make data`). Carry wheels/ along, then run `bash benchmarks/gpu_check.sh`.
GPU_WHEELS := optuna alembic sqlalchemy greenlet colorlog mako
gpu-carry: $(VENV)/.installed data
	mkdir -p wheels/fashion-mnist
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d wheels $(GPU_WHEELS)
	cp "$$($(PY) -c 'from shiftnas.evaluators.fetch import locate; print(locate("fashion_mnist")[0])')"/*-ubyte.gz wheels/fashion-mnist/
	du -sh wheels

gpu-check-dry: $(VENV)/.installed
	PYTHON=$(PY) bash benchmarks/gpu_check.sh --dry-run

# Fashion-MNIST for `data: {name: fashion_mnist}`: installs the Debian package where
# apt-get exists and we are root; otherwise prints the commands that get it and
# fails. `shiftnas data where fashion_mnist` shows which folder is then read.
FASHION_DEB := dataset-fashion-mnist
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST is installed in /usr/share/datasets/fashion-mnist ($(FASHION_DEB))."; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y $(FASHION_DEB) || { apt-get update && apt-get install -y $(FASHION_DEB); } || { \
	    echo "apt-get could not install $(FASHION_DEB); download it instead:"; \
	    echo "  $(VENV)/bin/shiftnas data fetch fashion_mnist"; exit 1; }; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "Fashion-MNIST is not installed. Either install the Debian package:"; \
	  echo "  sudo apt-get install $(FASHION_DEB)"; \
	  echo "or download it (30 MB, SHA-256 checked) into ~/.cache/shiftnas/data/fashion_mnist:"; \
	  echo "  $(VENV)/bin/shiftnas data fetch fashion_mnist"; exit 1; \
	else \
	  echo "Fashion-MNIST is not installed. Download it (30 MB, SHA-256 checked) with:"; \
	  echo "  $(VENV)/bin/shiftnas data fetch fashion_mnist"; exit 1; \
	fi

clean:
	rm -rf $(VENV) runs
