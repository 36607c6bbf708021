# Developer tasks, one command each. `make install` first (editable, with the test extra).
PYTHON ?= python3

.PHONY: install format lint test run deb db-up

install:
	$(PYTHON) -m pip install -e '.[test]'

format:
	$(PYTHON) -m ruff check --fix . && $(PYTHON) -m ruff format .

lint:
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check . && $(PYTHON) -m mypy

# The README's test command (.ci/run runs the same).
test:
	$(PYTHON) -m pytest -n 2

# Embedded PostgreSQL 18 in ./.durable unless DURABLE_DSN is set.
run:
	$(PYTHON) -m durable_cluster start

# dist/durable-cluster_<version>_amd64.deb (see ops/deb/build.sh).
deb:
	ops/deb/build.sh dist

# PostgreSQL 17 of the dev container, for working outside it.
db-up:
	docker compose -f .devcontainer/docker-compose.yml up -d db
