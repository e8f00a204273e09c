# Two targets on a fresh clone: `make quickstart` (a real search) and `make test`.
# Both build .venv first. On a CPU machine the pinned CPU torch wheel is
# installed so nothing pulls CUDA wheels; GPU users keep their own torch with
# `make TORCH= ...` (an empty TORCH installs no torch; pyproject asks torch>=2.4).

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
EXTRAS ?= dev,onnx,plotly,dashboard

.PHONY: quickstart test lint bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	if [ -n "$(TORCH)" ]; then $(PY) -m pip install -q "$(TORCH)"; fi
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

quickstart: $(VENV)/.installed
	$(VENV)/bin/shiftnas search examples/quickstart.yaml

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed
	$(PY) -m benchmarks.kernels --quick

clean:
	rm -rf $(VENV) runs
