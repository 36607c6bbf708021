"""The durable-cluster benchmark harness (``ops/bench/run.py``).

Modules:

- :mod:`dcbench.server`: the PostgreSQL server (an embedded one of its own, or ``--dsn``),
  the template database and the benchmark role;
- :mod:`dcbench.cluster`: ``durable-cluster start`` as a subprocess, its processes;
- :mod:`dcbench.procfs`: resident memory and CPU time from ``/proc``;
- :mod:`dcbench.pgbench`: the physical limit (pgbench on checkpoint-shaped commits);
- :mod:`dcbench.workloads`: the durable-cluster workloads;
- :mod:`dcbench.dbos`: the optional DBOS Transact column (its own virtual environment);
- :mod:`dcbench.report`: figures, medians, ratios, the table and the JSON.
"""

from __future__ import annotations
