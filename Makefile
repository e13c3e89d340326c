# modeldeploy: `make demo` runs the local demo, `make test` runs the whole suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STATE ?= .modeldeploy/demo
# Development tools (devtools/mdlocal: the local control plane) are not part of the operator
# package; the demo, the benchmark, `make down` and the tests import them from here.
export PYTHONPATH := $(CURDIR)/devtools$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: setup controlplane kstatus-check demo demo-gitops down test drills lint unit crd bench

$(VENV)/.installed: pyproject.toml
	@echo "[setup] creating $(VENV) and installing modeldeploy with its dev tools"
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

setup: $(VENV)/.installed

controlplane:
	bash hack/build-controlplane.sh

# The real kstatus library as a program (hack/kstatus-check); the unit tests judge status with it.
kstatus-check:
	bash hack/build-controlplane.sh kstatus

demo: setup controlplane
	$(PY) hack/demo.py --state $(STATE)

# The same demo, with the models synced from a local git repository by Flux's own controllers.
demo-gitops: setup controlplane
	$(PY) hack/demo.py --state $(STATE) --gitops

down:
	$(PY) -m mdlocal.localcluster down $(STATE) || true
	@if [ -f $(STATE)/operator.pid ]; then kill $$(cat $(STATE)/operator.pid) 2>/dev/null || true; rm -f $(STATE)/operator.pid; fi
	@if [ -f $(STATE)/standins.pid ]; then kill $$(cat $(STATE)/standins.pid) 2>/dev/null || true; rm -f $(STATE)/standins.pid; fi

lint: setup
	$(VENV)/bin/ruff check operator devtools tests hack
	$(VENV)/bin/ruff format --check operator devtools tests hack
	$(VENV)/bin/mypy

unit: setup kstatus-check
	$(VENV)/bin/pytest tests/unit

# The drills (tests/drills, docs/drills.md) kill, restart and peer operators of their own, so they
# run in a pytest invocation of their own, beside a control plane of their own: the short form here.
test: setup controlplane lint
	$(VENV)/bin/pytest tests --ignore=tests/drills
	$(VENV)/bin/pytest tests/drills

# The long form: 100 models in the crash drill, 1,000 generated specs in the hostile-input drill.
drills: setup controlplane
	MODELDEPLOY_DRILLS=long $(VENV)/bin/pytest tests/drills

crd: setup controlplane
	$(VENV)/bin/modeldeploy crd > crds/modeldeploy.dev_modeldeployments.yaml
	cp crds/modeldeploy.dev_modeldeployments.yaml charts/modeldeploy/crds/
	bash hack/render-install.sh

bench: setup controlplane
	$(PY) hack/bench.py
