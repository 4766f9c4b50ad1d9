# Two commands do all the set-up on a fresh machine:
#   make lab    creates .venv if missing, installs everything, opens JupyterLab on the course
#   make test   creates .venv if missing, installs everything, runs pytest + every notebook under nbval
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONHASHSEED := 0

.PHONY: venv lab demo test test-fast notebooks bench assignments student handout nbgrader-check browser-test explorer-screenshot clean

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

browser-test: venv  # the attention explorer in JupyterLab + headless Chromium (needs a Chromium: apt-get install chromium)
	$(PY) -m pip install -q -r requirements-browser.txt
	VIT_EDU_BROWSER_TEST=1 $(PY) -m pytest tests/test_explorer_browser.py -p no:cacheprovider

explorer-screenshot: venv  # the same browser run, saving its picture of the explorer as figures/explorer.png
	$(PY) -m pip install -q -r requirements-browser.txt
	VIT_EDU_BROWSER_TEST=1 VIT_EDU_FIGURES=$(CURDIR)/figures $(PY) -m pytest tests/test_explorer_browser.py -p no:cacheprovider

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
# with NBGRADER_PY given (its own environment), the repository's .venv is neither built nor used
nbgrader-check: $(if $(filter command line environment,$(origin NBGRADER_PY)),,venv)  # real nbgrader: generate + autograde right/empty/half submissions (skips without nbgrader)
	$(NBGRADER_PY) tools/nbgrader_check.py $(NOTEBOOKS)

clean:
	rm -rf build .pytest_cache
