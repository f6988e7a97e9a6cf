# dbzero developer commands.  `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-installed

.PHONY: demo test build bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "cython>=3.0" "lmdb>=2.3" "msgpack>=1.0" "pytest>=7" "hypothesis>=6" "setuptools>=64" wheel
	touch $(STAMP)

build: $(STAMP)
	$(PY) setup.py build_ext --inplace -q

demo: build
	rm -rf examples/app-data
	cd examples && PYTHONPATH=.. ../$(PY) quickstart.py
	cd examples && PYTHONPATH=.. ../$(PY) quickstart.py

test: build
	$(PY) -m pytest tests -q

bench: build
	$(PY) perf/run_all.py

clean:
	rm -rf build dbzero_ext/*.c dbzero_ext/*.so examples/app-data .pytest_cache .hypothesis
