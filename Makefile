# Two commands for a newcomer: `make demo` and `make test`. Both create the virtual
# environment when it is missing. VENV=<path> points at a kept environment.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mi-probe-installed
DEMO_SPEC ?= specs/layer_mi.yaml

.PHONY: demo test install clean-reports

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mi-probe run $(DEMO_SPEC)

test: $(STAMP)
	MI_PROBE_DISABLE_PLUGIN_AUTOLOAD=1 $(PY) -m pytest -q tests

clean-reports:
	rm -rf reports
