"""The graph interpreter: state in, next actions out. No I/O.

An instance's progress is its *journal*: recorded facts keyed by a
deterministic *step key*. ``evaluate`` walks the frozen graph from the root,
replaying recorded facts, and returns what must happen next:

- ``steps``: leaf steps (SQL, HTTP, custom) that have no recorded result and
  must be executed; the worker runs them and records their results;
- ``records``: internal decisions that must be made durable *before* the
  instance may act on them (a timer's due time, a RACE winner, a consumed
  signal or a signal timeout, a loop iteration's start);
- ``outcome``: the instance's result once the root is done;
- ``wake_at``: when a timer comes due, if the instance is only waiting;
- ``stamps``: the status of every node it visited, for ``df.nodes``.

Evaluating again with the same journal gives the same answer, so a worker that
crashes loses nothing but the steps in flight, which are re-run (SQL steps
only if their transaction, checkpoint included, did not commit).

Step keys name an execution *scope* and a node: ``<scope>/<node>``. The root
scope is ``<instance>::1``; like pg_durable's sub-orchestrations, a JOIN or
RACE branch runs in ``<scope>::<branch root>::1``, iteration ``i`` (from 1) of
a loop in ``<scope>::<loop>::i`` (for a root loop ``<instance>::i``), and
attempt ``k`` of a retry in ``<scope>::<retry>::k``. Scopes double as
pg_durable's ``status_details.execution_id``. Suffixes mark internal records:
``!timer``, ``!race``, ``!decision``; a scope's own ``/!gate`` record starts a
loop iteration or a retry attempt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from .values import break_value, condition_value

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

JSON = Any
Env = dict[str, JSON]

MAX_LOOP_ITERATIONS = 100_000
MIN_ITERATION_SECONDS = 1.0
BREAK_OUTSIDE_LOOP = "df.break() was called outside of a loop. df.break() may only be used inside df.loop()."
LOOP_CAP = (
    "Loop exceeded maximum iteration count of 100000. "
    "Use df.break() to exit the loop or restructure the workflow."
)
LOOP_LOST_RACE = "Loop branch cancelled after losing RACE"
EXTERNAL_TYPES = frozenset({"SQL", "HTTP", "HTTP_MULTIPART", "STEP"})


class GraphError(ValueError):
    """The frozen graph is malformed (it passed df.start's checks, so this is a bug or tampering)."""


# -- the frozen graph ---------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Node:
    id: str
    type: str
    query: str | None
    result_name: str | None
    left: Node | None = None
    right: Node | None = None
    cond: Node | None = None
    extras: tuple[Node, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)

    def children(self) -> list[Node]:
        found = [c for c in (self.cond, self.left, self.right) if c is not None]
        found.extend(self.extras)
        return found


CONFIG_TYPES = frozenset(
    {"WAIT_SCHEDULE", "BREAK", "HTTP", "HTTP_MULTIPART", "SIGNAL", "STEP", "RETRY", "TIMEOUT"}
)


def build_graph(rows: Mapping[str, Mapping[str, Any]], root: str) -> Node:
    """Build the node tree from the frozen rows ``{id: {t, q, r, l, rt}}``.

    IF condition and JOIN extra subtrees are referenced from the ``query``
    JSON, as pg_durable stores them.
    """
    nodes: dict[str, Node] = {}
    for node_id, row in rows.items():
        node_type = str(row["t"])
        query = row.get("q")
        config: dict[str, Any] = {}
        if query is not None and (node_type in CONFIG_TYPES or node_type in {"IF", "JOIN", "LOOP"}):
            try:
                parsed = orjson.loads(query)
            except orjson.JSONDecodeError as exc:
                raise GraphError(f"node {node_id} ({node_type}): query is not JSON") from exc
            if not isinstance(parsed, dict):
                raise GraphError(f"node {node_id} ({node_type}): query is not a JSON object")
            config = parsed
        nodes[node_id] = Node(node_id, node_type, query, row.get("r"), config=config)

    def ref(node_id: object, what: str, owner: str) -> Node:
        if not isinstance(node_id, str) or node_id not in nodes:
            raise GraphError(f"node {owner}: {what} {node_id!r} does not exist")
        return nodes[node_id]

    for node_id, row in rows.items():
        node = nodes[node_id]
        if row.get("l") is not None:
            node.left = ref(row["l"], "left_node", node_id)
        if row.get("rt") is not None:
            node.right = ref(row["rt"], "right_node", node_id)
        if "condition_node" in node.config:
            node.cond = ref(node.config["condition_node"], "condition_node", node_id)
        if "extra_nodes" in node.config:
            node.extras = tuple(ref(x, "extra node", node_id) for x in node.config["extra_nodes"])
    if root not in nodes:
        raise GraphError(f"root node {root} does not exist")
    return nodes[root]


# -- the journal ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    kind: str  # step, timer, race, decision, gate, signal
    ok: bool
    value: JSON
    guarantee: str | None = None


@dataclass(frozen=True, slots=True)
class Signal:
    id: int
    name: str
    data: JSON


@dataclass
class Journal:
    """Recorded facts of one instance, with an index of gates per loop/retry base."""

    records: dict[str, Record] = field(default_factory=dict)
    gates: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, record: Record) -> None:
        self.records[key] = record
        if record.kind == "gate":
            base, _, number = key.removesuffix("/!gate").rpartition("::")
            current = self.gates.get(base, 0)
            self.gates[base] = max(current, int(number))

    def get(self, key: str) -> Record | None:
        return self.records.get(key)

    def latest_gate(self, base: str) -> tuple[int, Record] | None:
        number = self.gates.get(base)
        if number is None:
            return None
        record = self.records.get(f"{base}::{number}/!gate")
        return (number, record) if record is not None else None

    def drop(self, prefixes: tuple[str, ...]) -> None:
        """Forget the records (and gate indexes) under finished scopes' key prefixes."""
        if not prefixes:
            return
        for key in [k for k in self.records if k.startswith(prefixes)]:
            del self.records[key]
        for base in [b for b in self.gates if (b + "::").startswith(prefixes) or b.startswith(prefixes)]:
            del self.gates[base]


def scope_prefixes(scope: str) -> tuple[str, ...]:
    """The journal key prefixes of everything recorded in ``scope`` and its sub-scopes."""
    return (f"{scope}/", f"{scope}::")


# -- evaluation results ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepRequest:
    """A leaf step to execute."""

    key: str
    node: Node
    scope: str
    env: Env
    attempt: int
    iteration: int


@dataclass(frozen=True, slots=True)
class NewRecord:
    key: str
    record: Record
    consumes_signal: int | None = None
    #: key prefixes of a finished loop iteration to delete with this record
    drop_prefixes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Stamp:
    status: str  # running, completed, failed
    result: JSON
    scope: str
    #: extra facts for df.nodes.status_details (a RETRY node's attempts and their errors)
    details: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    value: JSON  # the root result, or the error message


@dataclass
class Evaluation:
    steps: list[StepRequest] = field(default_factory=list)
    wanted: set[str] = field(default_factory=set)
    records: list[NewRecord] = field(default_factory=list)
    stamps: dict[str, Stamp] = field(default_factory=dict)
    outcome: Outcome | None = None
    wake_at: float | None = None
    waits_for_signal: bool = False

    def wake(self, at: float) -> None:
        if self.wake_at is None or at < self.wake_at:
            self.wake_at = at


# Node outcomes during a walk.
class _Pending:
    __slots__ = ()


PENDING = _Pending()


@dataclass(frozen=True, slots=True)
class Done:
    value: JSON
    env: Env


@dataclass(frozen=True, slots=True)
class Failed:
    error: str


@dataclass(frozen=True, slots=True)
class Broke:
    value: JSON
    env: Env


Result = _Pending | Done | Failed | Broke


# -- the walk --------------------------------------------------------------------------


@dataclass
class Run:
    """Everything evaluation needs about one instance."""

    instance_id: str
    root: Node
    journal: Journal
    label: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    signals: list[Signal] = field(default_factory=list)

    @property
    def root_scope(self) -> str:
        return f"{self.instance_id}::1"


def next_cron_tick(expression: str, after: float) -> float:
    """The next tick of a 5-field cron expression (UTC) strictly after ``after``."""
    from croniter import croniter  # noqa: PLC0415 - imported on first use (slow import)

    try:
        itr = croniter(expression, datetime.fromtimestamp(after, UTC))
    except (ValueError, KeyError) as exc:
        raise ValueError(f"Invalid cron expression '{expression}': {exc}") from exc
    return float(itr.get_next(float))


class _Walk:
    def __init__(
        self,
        run: Run,
        now: float,
        in_flight: set[str],
        cron: Callable[[str, float], float],
    ) -> None:
        self.run = run
        self.journal = run.journal
        self.now = now
        self.in_flight = in_flight
        self.cron = cron
        self.out = Evaluation()
        self.claimed_signals: set[int] = set()
        self.details: dict[str, dict[str, Any]] = {}

    # stamps -----------------------------------------------------------------------

    def _finish(self, node: Node, scope: str, result: Result) -> Result:
        details = self.details.pop(node.id, None)
        if isinstance(result, Done):
            self.out.stamps[node.id] = Stamp("completed", result.value, scope, details)
            if node.result_name:
                env = dict(result.env)
                env[node.result_name] = result.value
                return Done(result.value, env)
        elif isinstance(result, Failed):
            self.out.stamps[node.id] = Stamp("failed", result.error, scope, details)
        elif isinstance(result, Broke):
            self.out.stamps[node.id] = Stamp("completed", result.value, scope, details)
        else:
            self.out.stamps[node.id] = Stamp("running", None, scope, details)
        return result

    # dispatch ---------------------------------------------------------------------

    def visit(self, node: Node, scope: str, env: Env, attempt: int, iteration: int) -> Result:
        method = getattr(self, "v_" + node.type.lower(), None)
        if method is None:
            return self._finish(node, scope, Failed(f"Unknown node_type '{node.type}'"))
        result: Result = method(node, scope, env, attempt, iteration)
        return self._finish(node, scope, result)

    def _mark(self) -> tuple[int, int, frozenset[int]]:
        return len(self.out.steps), len(self.out.records), frozenset(self.claimed_signals)

    def _undo(self, mark: tuple[int, int, frozenset[int]]) -> None:
        """Forget the steps, records and signal claims of subtrees that just lost a decision.

        A RACE loser or a timed-out child must not start a step, arm a timer or
        consume a signal in the very evaluation that decides against it.
        """
        steps, records, claimed = mark
        del self.out.steps[steps:]
        del self.out.records[records:]
        self.claimed_signals = set(claimed)

    # leaves -------------------------------------------------------------------------

    def _external(self, node: Node, scope: str, env: Env, attempt: int, iteration: int) -> Result:
        key = f"{scope}/{node.id}"
        record = self.journal.get(key)
        if record is not None:
            return Done(record.value, env) if record.ok else Failed(str(record.value))
        self.out.wanted.add(key)
        if key not in self.in_flight:
            self.out.steps.append(StepRequest(key, node, scope, env, attempt, iteration))
        return PENDING

    v_sql = v_http = v_http_multipart = v_step = _external

    def _timer(self, key: str, due: Callable[[], float]) -> float | Failed | None:
        """The due time of a timer, arming it (a record to write) on first sight."""
        record = self.journal.get(key)
        if record is not None:
            return float(record.value["due"])
        try:
            at = due()
        except ValueError as exc:
            return Failed(str(exc))
        self.out.records.append(NewRecord(key, Record("timer", True, {"due": at})))
        return None

    def v_sleep(self, node: Node, scope: str, env: Env, attempt: int, iteration: int) -> Result:
        seconds = int(node.query or 0)
        value = {"slept": True, "seconds": seconds}
        if seconds <= 0:
            return Done(value, env)
        due = self._timer(f"{scope}/{node.id}!timer", lambda: self.now + seconds)
        if isinstance(due, Failed):
            return due
        if due is None:
            return PENDING
        if self.now >= due:
            return Done(value, env)
        self.out.wake(due)
        return PENDING

    def v_wait_schedule(self, node: Node, scope: str, env: Env, attempt: int, iteration: int) -> Result:
        expression = str(node.config.get("cron_expr", ""))
        due = self._timer(f"{scope}/{node.id}!timer", lambda: self.cron(expression, self.now))
        if isinstance(due, Failed):
            return due
        if due is None:
            return PENDING
        if self.now >= due:
            return Done({"scheduled": True}, env)
        self.out.wake(due)
        return PENDING

    def v_signal(self, node: Node, scope: str, env: Env, attempt: int, iteration: int) -> Result:
        key = f"{scope}/{node.id}"
        record = self.journal.get(key)
        if record is not None:
            return Done(record.value, env)
        name = str(node.config.get("signal_name", ""))
        for signal in self.run.signals:
            if signal.name == name and signal.id not in self.claimed_signals:
                self.claimed_signals.add(signal.id)
                value = {"signal_name": name, "timed_out": False, "data": signal.data}
                self.out.records.append(
                    NewRecord(key, Record("signal", True, value), consumes_signal=signal.id)
                )
                return PENDING
        self.out.waits_for_signal = True
        timeout = node.config.get("timeout_seconds")
        if timeout is None:
            return PENDING
        due = self._timer(f"{key}!timer", lambda: self.now + float(timeout))
        if isinstance(due, Failed):
            return due
        if due is None:
            return PENDING
        if self.now >= due:
            value = {"signal_name": name, "timed_out": True, "data": None}
            self.out.records.append(NewRecord(key, Record("signal", True, value)))
            return PENDING
        self.out.wake(due)
        return PENDING

    def v_break(self, node: Node, scope: str, env: Env, attempt: int, iteration: int) -> Result:
        return Broke(break_value(node.config.get("break_value")), env)

    # composites ---------------------------------------------------------------------

    def v_then(self, node: Node, scope: str, env: Env, attempt: int, iteration: int) -> Result:
        assert node.left is not None and node.right is not None
        first = self.visit(node.left, scope, env, attempt, iteration)
        if not isinstance(first, Done):
            return first
        return self.visit(node.right, scope, first.env, attempt, iteration)

    def v_if(self, node: Node, scope: str, env: Env, attempt: int, iteration: int) -> Result:
        assert node.left is not None and node.right is not None
        if node.config.get("condition_type") == "result_has_rows":
            name = str(node.config.get("result_name"))
            if name not in env:
                return Failed(f"df.if_rows: result '{name}' not found")
            named = env[name]
            if not isinstance(named, dict) or "row_count" not in named:
                return Failed(f"df.if_rows: result '{name}' is not a SQL result (missing row_count)")
            truth = bool(named["row_count"])
        else:
            if node.cond is None:
                return Failed("IF node has no condition")
            cond = self.visit(node.cond, scope, env, attempt, iteration)
            if not isinstance(cond, Done):
                return cond
            truth = condition_value(cond.value)
            env = cond.env
        branch = node.left if truth else node.right
        return self.visit(branch, scope, env, attempt, iteration)

    def _branch(self, branch: Node, scope: str, env: Env, attempt: int, iteration: int) -> Result:
        return self.visit(branch, f"{scope}::{branch.id}::1", env, attempt, iteration)

    def v_join(self, node: Node, scope: str, env: Env, attempt: int, iteration: int) -> Result:
        assert node.left is not None and node.right is not None
        branches = [node.left, node.right, *node.extras]
        results = [self._branch(b, scope, env, attempt, iteration) for b in branches]
        if any(r is PENDING for r in results):
            return PENDING
        values = []
        merged = dict(env)
        for number, result in enumerate(results, start=1):
            if isinstance(result, Failed):
                return Failed(f"JOIN branch {number} failed: {result.error}")
            if isinstance(result, Broke):
                return Broke(result.value, _merge(merged, env, result.env))
            assert isinstance(result, Done)
            values.append(result.value)
            merged = _merge(merged, env, result.env)
        return Done(values, merged)

    def v_race(self, node: Node, scope: str, env: Env, attempt: int, iteration: int) -> Result:
        assert node.left is not None and node.right is not None
        key = f"{scope}/{node.id}!race"
        record = self.journal.get(key)
        sides = {"left": node.left, "right": node.right}
        if record is not None:
            side = str(record.value["winner"])
            loser = sides["right" if side == "left" else "left"]
            if loser.type == "LOOP":
                self.out.stamps[loser.id] = Stamp("failed", LOOP_LOST_RACE, f"{scope}::{loser.id}::1")
            return self._race_result(side, self._branch(sides[side], scope, env, attempt, iteration), env)
        mark = self._mark()
        left = self._branch(node.left, scope, env, attempt, iteration)
        right = self._branch(node.right, scope, env, attempt, iteration)
        if left is PENDING and right is PENDING:
            return PENDING
        winner = "left" if left is not PENDING else "right"
        self._undo(mark)
        self.out.records.append(NewRecord(key, Record("race", True, {"winner": winner})))
        return PENDING

    @staticmethod
    def _race_result(side: str, result: Result, env: Env) -> Result:
        if isinstance(result, Failed):
            return Failed(f"RACE {side} branch failed: {result.error}")
        if isinstance(result, Done):
            return Done(result.value, _merge(dict(env), env, result.env))
        if isinstance(result, Broke):
            return Broke(result.value, _merge(dict(env), env, result.env))
        return result

    def v_loop(self, node: Node, scope: str, env: Env, attempt: int, iteration: int) -> Result:
        assert node.left is not None
        is_root = node is self.run.root
        base = self.run.instance_id if is_root else f"{scope}::{node.id}"
        latest = self.journal.latest_gate(base)
        if latest is None:
            self._gate(base, 1, env, None, ())
            return PENDING
        number, gate = latest
        iter_scope = f"{base}::{number}"
        start_env = {} if is_root else dict(gate.value.get("env") or {})
        body = self.visit(node.left, iter_scope, start_env, attempt, number)
        if isinstance(body, Broke):
            return Done(body.value, body.env)
        if not isinstance(body, Done):
            return body
        last, after = body.value, body.env
        if node.cond is not None:
            cond = self.visit(node.cond, iter_scope, body.env, attempt, number)
            if isinstance(cond, Broke):
                return Done(cond.value, cond.env)
            if not isinstance(cond, Done):
                return cond
            after = cond.env
            if not condition_value(cond.value):
                return Done(last, after)
        if number >= MAX_LOOP_ITERATIONS:
            return Failed(LOOP_CAP)
        not_before = float(gate.value["at"]) + MIN_ITERATION_SECONDS
        if self.now < not_before:
            self.out.wake(not_before)
            return PENDING
        self._gate(base, number + 1, {} if is_root else after, last, scope_prefixes(iter_scope))
        return PENDING

    def _gate(self, base: str, number: int, env: Env, last: JSON, drop: tuple[str, ...]) -> None:
        value = {"at": self.now, "env": env, "last": last}
        self.out.records.append(
            NewRecord(f"{base}::{number}/!gate", Record("gate", True, value), drop_prefixes=drop)
        )

    def v_retry(self, node: Node, scope: str, env: Env, attempt: int, iteration: int) -> Result:
        assert node.left is not None
        base = f"{scope}::{node.id}"
        latest = self.journal.latest_gate(base)
        number = 1 if latest is None else latest[0]
        if latest is not None and self.now < float(latest[1].value["at"]):
            self.out.wake(float(latest[1].value["at"]))
            return PENDING
        max_attempts = int(node.config.get("max_attempts", 1))
        errors = []
        for earlier in range(2, number + 1):
            gate = self.journal.get(f"{base}::{earlier}/!gate")
            if gate is not None:
                errors.append({"attempt": earlier - 1, "error": gate.value.get("error")})
        self.details[node.id] = {"attempt": number, "max_attempts": max_attempts, "errors": errors}
        result = self.visit(node.left, f"{base}::{number}", env, number, iteration)
        if not isinstance(result, Failed):
            return result
        if number >= max_attempts:
            if max_attempts == 1:
                return result
            return Failed(f"failed after {number} attempts: {result.error}")
        backoff = float(node.config.get("backoff_seconds", 1.0))
        ceiling = float(node.config.get("max_backoff_seconds", 60.0))
        delay = min(backoff * math.pow(2, number - 1), ceiling)
        value = {"at": self.now + delay, "error": result.error, "attempt": number + 1}
        self.out.records.append(NewRecord(f"{base}::{number + 1}/!gate", Record("gate", True, value)))
        return PENDING

    def v_timeout(self, node: Node, scope: str, env: Env, attempt: int, iteration: int) -> Result:
        assert node.left is not None
        seconds = float(node.config.get("seconds", 0))
        decision_key = f"{scope}/{node.id}!decision"
        decided = self.journal.get(decision_key)
        if decided is not None and decided.value.get("timed_out"):
            return Failed(f"df.timeout: did not finish within {seconds:g}s")
        due = self._timer(f"{scope}/{node.id}!timer", lambda: self.now + seconds)
        if isinstance(due, Failed):
            return due
        if due is None:
            return PENDING
        mark = self._mark()
        result = self.visit(node.left, scope, env, attempt, iteration)
        if decided is not None:
            return result
        if result is not PENDING:
            self.out.records.append(NewRecord(decision_key, Record("decision", True, {"timed_out": False})))
            return PENDING
        if self.now >= due:
            self._undo(mark)
            self.out.records.append(NewRecord(decision_key, Record("decision", True, {"timed_out": True})))
            return PENDING
        self.out.wake(due)
        return PENDING


def _merge(merged: Env, parent: Env, branch: Env) -> Env:
    """Merge the names a branch bound (added or rebound) into ``merged``."""
    result = dict(merged)
    for name, value in branch.items():
        if name not in parent or parent[name] is not value:
            result[name] = value
    return result


def evaluate(
    run: Run,
    now: float,
    *,
    in_flight: set[str] | None = None,
    cron: Callable[[str, float], float] = next_cron_tick,
) -> Evaluation:
    """Walk the graph of ``run`` at time ``now`` (seconds since the epoch)."""
    walk = _Walk(run, now, in_flight or set(), cron)
    root = run.root
    scope = run.root_scope
    result = walk.visit(root, scope, {}, 1, 0)
    out = walk.out
    if isinstance(result, Done):
        out.outcome = Outcome(True, result.value)
    elif isinstance(result, Failed):
        out.outcome = Outcome(False, result.error)
    elif isinstance(result, Broke):
        out.outcome = Outcome(False, BREAK_OUTSIDE_LOOP)
        out.stamps[root.id] = Stamp("failed", BREAK_OUTSIDE_LOOP, scope)
    if out.outcome is not None:
        # Finished: nothing else is wanted (race losers, timers of dead branches).
        out.steps.clear()
        out.records.clear()
        out.wanted.clear()
        out.wake_at = None
    return out
