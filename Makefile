# Two commands do everything on a fresh machine:
#   make demo   set up .venv and run the Ni example (prints the IFC table, writes a plot)
#   make test   set up .venv, lint (ruff) and run the test suite (make test-quick: the quick tier)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch: the CPU build 2.13.0 (the package itself asks only for a range)
TORCH ?= torch==2.13.0

.PHONY: demo test test-quick bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,viz]"
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/ni_phonons.py --out out
	$(PY) examples/fit_ni.py --out out

test: $(VENV)/.installed
	$(VENV)/bin/ruff check xtds tests benchmarks examples
	$(PY) -m pytest -q

# the quick tier for iteration: everything but the tests marked heavy (about 2 minutes on 2 cores)
test-quick: $(VENV)/.installed
	$(VENV)/bin/ruff check xtds tests benchmarks examples
	$(PY) -m pytest -q -m "not slow and not heavy"

bench: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) out .pytest_cache
