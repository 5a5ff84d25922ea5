# Two commands on a fresh machine:
#   make run    creates .venv, installs ssl-cli, runs the default main job (SSL vs supervised on digits)
#   make test   creates .venv, installs ssl-cli with its test extras, runs the test suite
#   make test-fast   the same without the tests marked slow
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# torch and torchvision pinned to the pair that installs from this machine's disk (see README).
TORCH = torch==2.14.1 torchvision==0.29.1

.PHONY: run test test-fast install

$(BIN)/ssl-train: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/ssl-train

run: install
	$(BIN)/ssl-train -m method=supervised,pseudolabel,fixmatch

# pytest exits 5 when it collected no tests: that is a failure, not a pass.
# -n 2: two pytest-xdist workers, one per core of the 2-core machines we run on.
test: install
	$(BIN)/python -m pytest -n 2; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

# The fast tier: every module, without the tests marked slow (pytest -m "not slow").
test-fast: install
	$(BIN)/python -m pytest -n 2 -m "not slow"; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status
