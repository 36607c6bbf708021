#!/usr/bin/env bash
# Runs once, when the dev container is created: install the project with its
# test tools, install the schema into $DURABLE_DSN, and say what to run next.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --disable-pip-version-check -e '.[test]'

# psql, for poking at the database (the PG* variables point it at "db").
if ! command -v psql >/dev/null && command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq postgresql-client >/dev/null ||
        echo "post-create: could not install psql; continuing without it" >&2
fi

# Retries for up to 5 minutes while "db" starts.
durable-cluster init

cat <<'MESSAGE'

durable-cluster is installed (editable, with the test extra) and its schema is
in $DURABLE_DSN, the PostgreSQL 17 of the "db" service (`psql` connects there).

  make run     run the cluster:  durable-cluster start   (Ctrl-C stops it)
  make test    run the tests:    python3 -m pytest -n 2  (on $DURABLE_TEST_DSN)
  make lint    ruff check, ruff format --check, mypy

MESSAGE
