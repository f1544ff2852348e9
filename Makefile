# Two commands for a newcomer: `make demo` and `make test`. Both create the virtual
# environment when it is missing. VENV=<path> points at a kept environment.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mi-probe-installed
DEMO_SPEC ?= specs/semantic_knockout.yaml
# Plugin distributions shipped in this repository (installed like third-party ones).
PLUGIN_DIRS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))

.PHONY: demo test study architectures install clean-reports

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,ray,tensorboard,mlflow,notebook]' $(foreach p,$(PLUGIN_DIRS),-e $(p))
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mi-probe run $(DEMO_SPEC)

test: $(STAMP)
	$(PY) -m mypy
	MI_PROBE_DISABLE_PLUGIN_AUTOLOAD=1 MI_PROBE_REQUIRE_RAY=1 $(PY) -m pytest -q tests $(addsuffix /tests,$(PLUGIN_DIRS)) \
		specs --mi-probe-claims-as-warnings

# The paper's claims on ../shared/data/imagenette-dev: runs (or resumes) every spec of
# specs/study, reusing cached models, and regenerates docs/reproduction.md.
study: $(STAMP)
	$(VENV)/bin/mi-probe study specs/study

# The conformance sweep over timm's registry: the smallest model of every timm family
# (and the paper's archs) through sites, capture, layer_mi and knockout; writes
# docs/architectures.md. Resumes from reports/architectures/rows.jsonl.
architectures: $(STAMP)
	$(PY) -m mi_probe.testing.architectures --out docs/architectures.md --workdir reports/architectures

clean-reports:
	rm -rf reports
