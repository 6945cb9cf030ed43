# The two entry points a newcomer needs: `make demo` and `make test`.
# Both create their own virtual environment (.venv) and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NODE_PREFIX := .ci/node
OLD_PYMONGO_VENV := .ci/venv-pymongo410
# pytest processes for `make test` (pytest-xdist); 0 runs the tests one after another in one
# process, which is easier to read when debugging: `make test TEST_WORKERS=0`.
TEST_WORKERS ?= 2

.PHONY: demo test lint setup venv clean

$(PY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(PY)

$(NODE_PREFIX)/node_modules/.bin/mongosh:
	npm install --silent --no-audit --no-fund --prefix $(NODE_PREFIX) mongosh@2

$(OLD_PYMONGO_VENV)/bin/python:
	$(PYTHON) -m venv $(OLD_PYMONGO_VENV)
	$(OLD_PYMONGO_VENV)/bin/python -m pip install --quiet 'pymongo==4.10.1'

# The virtual environment alone: pymongosync (the `mongosync` command), mongoemu and the tools.
venv: $(PY)

# Everything `make test` needs: the virtual environment, mongosh, and PyMongo 4.10.1.
setup: $(PY) $(NODE_PREFIX)/node_modules/.bin/mongosh $(OLD_PYMONGO_VENV)/bin/python

# DEMO_ARGS=--keep-running keeps mongosync and its dashboard up after COMMITTED.
demo: $(PY)
	$(PY) -m scripts.demo $(DEMO_ARGS)

lint: $(PY)
	$(PY) -m ruff check .
	$(PY) -m mypy

test: setup lint
	MONGOSH=$(CURDIR)/$(NODE_PREFIX)/node_modules/.bin/mongosh \
	OLD_PYMONGO_PYTHON=$(CURDIR)/$(OLD_PYMONGO_VENV)/bin/python \
	$(PY) -m pytest -q -n $(TEST_WORKERS)

clean:
	rm -rf $(VENV) $(NODE_PREFIX) $(OLD_PYMONGO_VENV)
