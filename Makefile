# Two commands do all the set-up on a fresh machine:
#   make lab    creates .venv if missing, installs everything, opens JupyterLab on the course
#   make test   creates .venv if missing, installs everything, runs pytest + every notebook under nbval
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONHASHSEED := 0

.PHONY: venv lab demo test test-fast notebooks bench assignments student handout nbgrader-check clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install -e . --no-deps
	touch $(STAMP)

lab: venv
	$(VENV)/bin/jupyter lab --allow-root notebooks/00_overview.ipynb  # --allow-root: containers often run as root

demo: venv
	$(PY) -m vit_edu demo

test: venv
	$(PY) -m pytest tests notebooks --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg

test-fast: venv
	$(PY) -m pytest tests

notebooks: venv  # re-run every notebook in place; this (not the tests) rewrites the committed figures/
	$(PY) tools/execute_notebooks.py notebooks/*.ipynb

bench: venv
	$(PY) benchmarks/bench_throughput.py

assignments: venv  # nbgrader metadata into notebooks/ + student copies into assignments/student/
	$(PY) -m vit_edu assignments

student: venv  # the course as students get it (assignments/student/); its figures go to build/student_figures
	VIT_EDU_FIGURES=$(CURDIR)/build/student_figures $(VENV)/bin/jupyter lab --allow-root assignments/student/00_overview.ipynb

HANDOUT ?= build/handout
handout: venv  # the folder to give students: student notebooks, the package, a README (replaces a previous one)
	$(PY) -m vit_edu handout $(HANDOUT) --force

NBGRADER_PY ?= $(PY)
nbgrader-check: venv  # real nbgrader: generate + autograde a right/empty/half submission (skips without nbgrader)
	$(NBGRADER_PY) tools/nbgrader_check.py $(NOTEBOOKS)

clean:
	rm -rf build .pytest_cache
