# Two commands for a newcomer: `make demo` and `make test`. Both create the virtual
# environment when it is missing. VENV=<path> points at a kept environment.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mi-probe-installed
DEMO_SPEC ?= specs/semantic_knockout.yaml
# Plugin distributions shipped in this repository (installed like third-party ones).
PLUGIN_DIRS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))
# their optional extras that `make test` exercises (the rest skip, saying why)
PLUGIN_EXTRAS := plugins/mi-probe-ksg=faiss
plugin_req = $(1)$(foreach e,$(PLUGIN_EXTRAS),$(if $(filter $(1)=%,$(e)),[$(patsubst $(1)=%,%,$(e))]))

.PHONY: demo test study architectures install clean-reports bench-estimators

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,ray,tensorboard,mlflow,notebook,store]' $(foreach p,$(PLUGIN_DIRS),-e '$(call plugin_req,$(p))')
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

# bmi's benchmark (Beyond Normal, NeurIPS 2023; docs/bench_estimators.md): every shipped
# estimator with joint_mi on bmi's 40 tasks at bmi's protocol (N = 5000, seeds 0-9), and
# bmi's own estimators on the same samples when .venv-bmi exists (make .venv-bmi). Resumes
# from $(BENCH_OUT)/rows.jsonl. BENCH_ARGS adds arguments, e.g.
# BENCH_ARGS="--subset ci --n 1000 --seeds 0-2". `make test` does not need bmi.
VENV_BMI ?= .venv-bmi
BENCH_OUT ?= reports/bench_estimators
BENCH_ARGS ?=
bench-estimators: $(STAMP)
	$(VENV)/bin/mi-probe bench-estimators --all-estimators --n 5000 --seeds 0-9 \
		--out $(BENCH_OUT) $(if $(wildcard $(VENV_BMI)/bin/python),--bmi-python $(VENV_BMI)/bin/python,--no-bmi) \
		$(BENCH_ARGS)

# bmi in its own environment: it pins jax 0.4.30, pydantic<2, pandas<2 and numpy 1.26,
# which mi-probe's environment (pydantic 2) cannot hold. jax 0.4.30 has wheels for
# Python 3.10-3.12: PYTHON_BMI=python3.11 picks one when python3 is newer.
PYTHON_BMI ?= $(PYTHON)
$(VENV_BMI)/bin/python:
	$(PYTHON_BMI) -m venv $(VENV_BMI)
	$(VENV_BMI)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_BMI)/bin/python -m pip install --quiet benchmark-mi jax==0.4.30 jaxlib==0.4.30

.venv-bmi: $(VENV_BMI)/bin/python

clean-reports:
	rm -rf reports
