# The two commands of the README: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo demo-stop test lint unit docs test-lowest benchmarks clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,docs,hub,sim,daq]'
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

# The lowest versions pyproject.toml allows, resolved by uv, in a venv of their own.
test-lowest: $(VENV)/.installed
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv venv -q --allow-existing -p $(PY) .venv-lowest
	VIRTUAL_ENV=.venv-lowest $(VENV)/bin/uv pip install -q --resolution lowest-direct -e '.[test,sim]'
	.venv-lowest/bin/python -m pytest -q -ra

clean:
	rm -rf $(VENV) .venv-lowest docs/_build .pytest_cache
