# The two commands of the README: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo demo-stop test lint unit docs benchmarks clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,docs,hub,sim]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/socs-agents demo start --site-file site-config.yaml

demo-stop: $(VENV)/.installed
	$(VENV)/bin/socs-agents demo stop --site-file site-config.yaml

docs: $(VENV)/.installed
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(VENV)/.installed lint docs
	$(PY) -m pytest -q -ra

unit: $(VENV)/.installed
	$(PY) -m pytest -q -m "not integration"

clean:
	rm -rf $(VENV) docs/_build .pytest_cache
