"""The graph interpreter (spec §1.3, §1.15, §2.8-§2.15): semantics, records, stamps, replay.

A small driver plays the runtime's part deterministically: evaluate, write the
records (dropping prefixes, consuming signals), run the requested steps with
results from a function of the step, evaluate again; a fake clock jumps to
``wake_at`` when the instance only waits. Every round also checks that a second
evaluation of the same state gives the same answer.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from durable_cluster import graph
from durable_cluster.engine import _tail_keys
from durable_cluster.graph import (
    BREAK_OUTSIDE_LOOP,
    LOOP_CAP,
    Evaluation,
    GraphError,
    Journal,
    NewRecord,
    Outcome,
    Record,
    Run,
    Signal,
    Stamp,
    StepRequest,
    build_graph,
    evaluate,
    next_cron_tick,
)

if TYPE_CHECKING:
    from collections.abc import Callable

INSTANCE = "abcd0001"
ROOT = f"{INSTANCE}::1"
T0 = 1_700_000_000.0


def rows(*values: Any, column: str = "v") -> dict[str, Any]:
    """A SQL result with one column."""
    return {"rows": [{column: v} for v in values], "row_count": len(values)}


# -- building graphs ------------------------------------------------------------------


class G:
    """Builds frozen rows ``{id: {t, q, r, l, rt}}`` as df.start stores them."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def add(
        self,
        t: str,
        q: str | None = None,
        *,
        name: str | None = None,
        left: str | None = None,
        right: str | None = None,
        id: str | None = None,
    ) -> str:
        node_id = id or f"n{len(self.rows) + 1:02d}"
        assert node_id not in self.rows
        self.rows[node_id] = {"t": t, "q": q, "r": name, "l": left, "rt": right}
        return node_id

    @staticmethod
    def _json(config: dict[str, Any]) -> str:
        return orjson.dumps(config).decode()

    def sql(self, text: str, *, name: str | None = None, id: str | None = None) -> str:
        return self.add("SQL", text, name=name, id=id)

    def then(self, a: str, b: str, *, name: str | None = None, id: str | None = None) -> str:
        return self.add("THEN", None, name=name, left=a, right=b, id=id)

    def seq(self, *parts: str, name: str | None = None) -> str:
        node = parts[0]
        for i, part in enumerate(parts[1:], start=2):
            node = self.then(node, part, name=name if i == len(parts) else None)
        return node

    def if_(self, cond: str, yes: str, no: str, *, name: str | None = None, id: str | None = None) -> str:
        return self.add("IF", self._json({"condition_node": cond}), name=name, left=yes, right=no, id=id)

    def if_rows(self, result: str, yes: str, no: str, *, id: str | None = None) -> str:
        query = self._json({"condition_type": "result_has_rows", "result_name": result})
        return self.add("IF", query, left=yes, right=no, id=id)

    def join(self, *branches: str, name: str | None = None, id: str | None = None) -> str:
        query = self._json({"extra_nodes": list(branches[2:])}) if len(branches) > 2 else None
        return self.add("JOIN", query, name=name, left=branches[0], right=branches[1], id=id)

    def race(self, a: str, b: str, *, name: str | None = None, id: str | None = None) -> str:
        return self.add("RACE", None, name=name, left=a, right=b, id=id)

    def loop(
        self, body: str, cond: str | None = None, *, name: str | None = None, id: str | None = None
    ) -> str:
        query = None if cond is None else self._json({"condition_node": cond})
        return self.add("LOOP", query, name=name, left=body, id=id)

    def brk(self, value: str | None = None, *, id: str | None = None) -> str:
        return self.add("BREAK", self._json({"break_value": value}), id=id)

    def sleep(self, seconds: int, *, name: str | None = None, id: str | None = None) -> str:
        return self.add("SLEEP", str(seconds), name=name, id=id)

    def schedule(self, expr: str, *, name: str | None = None, id: str | None = None) -> str:
        return self.add("WAIT_SCHEDULE", self._json({"cron_expr": expr}), name=name, id=id)

    def signal(
        self, signal: str, timeout: int | None = None, *, name: str | None = None, id: str | None = None
    ) -> str:
        config = {"signal_name": signal, "timeout_seconds": timeout}
        return self.add("SIGNAL", self._json(config), name=name, id=id)

    def step(self, kind: str, args: dict[str, Any], *, name: str | None = None, id: str | None = None) -> str:
        return self.add("STEP", self._json({"kind": kind, "args": args}), name=name, id=id)

    def retry(
        self,
        child: str,
        attempts: int,
        backoff: float = 1.0,
        ceiling: float = 60.0,
        *,
        name: str | None = None,
        id: str | None = None,
    ) -> str:
        config = {"max_attempts": attempts, "backoff_seconds": backoff, "max_backoff_seconds": ceiling}
        return self.add("RETRY", self._json(config), name=name, left=child, id=id)

    def timeout(self, child: str, seconds: float, *, name: str | None = None, id: str | None = None) -> str:
        return self.add("TIMEOUT", self._json({"seconds": seconds}), name=name, left=child, id=id)


# -- the simulated runtime ------------------------------------------------------------


class Fail:
    """A step result: the step failed with ``error``."""

    def __init__(self, error: str) -> None:
        self.error = error


HOLD = object()  # a step result: the step stays in flight until ``finish``


def every_minute(expr: str, after: float) -> float:
    """A fake cron: ticks on every minute boundary; ``bad`` is invalid."""
    if expr == "bad":
        raise ValueError(f"Invalid cron expression '{expr}': nope")
    return (math.floor(after / 60) + 1) * 60.0


@dataclass
class Driver:
    rows: dict[str, dict[str, Any]]
    root: str
    results: dict[str, Any] = field(default_factory=dict)
    signals: list[Signal] = field(default_factory=list)
    now: float = T0
    cron: Callable[[str, float], float] = every_minute
    journal: Journal | None = None

    def __post_init__(self) -> None:
        self.run = Run(INSTANCE, build_graph(self.rows, self.root), self.journal or Journal())
        self.run.signals = list(self.signals)
        self.in_flight: dict[str, StepRequest] = {}
        self.started: list[StepRequest] = []
        self.cancelled: list[str] = []
        self.written: list[NewRecord] = []
        self.evaluations: list[Evaluation] = []
        self.outcome: Outcome | None = None
        self.stamps: dict[str, Stamp] = {}
        self.waited: list[float] = []

    # the pieces ----------------------------------------------------------------------

    def evaluate(self) -> Evaluation:
        first = evaluate(self.run, self.now, in_flight=set(self.in_flight), cron=self.cron)
        again = evaluate(self.run, self.now, in_flight=set(self.in_flight), cron=self.cron)
        assert first == again, "evaluation is not deterministic"
        for request in first.steps:
            assert request.key in first.wanted
            assert self.run.journal.get(request.key) is None
            assert request.key not in self.in_flight
        for new in first.records:
            assert self.run.journal.get(new.key) is None, f"record {new.key} written twice"
        self.evaluations.append(first)
        self.stamps.update(first.stamps)
        return first

    def write(self, records: list[NewRecord]) -> None:
        for new in records:
            self.written.append(new)
            self.run.journal.drop(new.drop_prefixes)
            self.run.journal.add(new.key, new.record)
            if new.consumes_signal is not None:
                self.run.signals = [s for s in self.run.signals if s.id != new.consumes_signal]

    def result_of(self, request: StepRequest) -> Any:
        query = request.node.query or ""
        if query in self.results:
            found = self.results[query]
            return found(request) if callable(found) else found
        return rows(query)

    def record(self, key: str, value: Any) -> None:
        if isinstance(value, Fail):
            self.run.journal.add(key, Record("step", False, value.error))
        else:
            self.run.journal.add(key, Record("step", True, value))

    def finish(self, query: str, value: Any = None) -> StepRequest:
        """Complete the in-flight step running ``query`` (its default result if no value)."""
        matches = [r for r in self.in_flight.values() if r.node.query == query]
        assert len(matches) == 1, f"{query!r} in flight: {len(matches)}"
        request = matches[0]
        del self.in_flight[request.key]
        self.record(request.key, rows(query) if value is None else value)
        return request

    def send(self, signal_id: int, name: str, data: Any = None) -> None:
        self.run.signals.append(Signal(signal_id, name, data))

    # the loop ------------------------------------------------------------------------

    def round(self) -> Evaluation:
        """One evaluation, acted on: cancel, write records, run steps."""
        ev = self.evaluate()
        if ev.outcome is not None:
            self.outcome = ev.outcome
            for key in list(self.in_flight):
                self.cancelled.append(key)
                del self.in_flight[key]
            return ev
        for key in list(self.in_flight):
            if key not in ev.wanted:
                self.cancelled.append(key)
                del self.in_flight[key]
        self.write(ev.records)
        for request in ev.steps:
            self.started.append(request)
            value = self.result_of(request)
            if value is HOLD:
                self.in_flight[request.key] = request
            else:
                self.record(request.key, value)
        return ev

    def go(self, *, until: float | None = None, max_rounds: int = 2000) -> Outcome | None:
        """Run until finished, or until only signals/held steps (or a time past ``until``) remain."""
        for _ in range(max_rounds):
            ev = self.round()
            if ev.outcome is not None:
                return ev.outcome
            if ev.records or any(self.run.journal.get(r.key) for r in ev.steps):
                continue
            if ev.wake_at is None or (until is not None and ev.wake_at > until):
                return None
            assert ev.wake_at > self.now
            self.waited.append(ev.wake_at)
            self.now = ev.wake_at
        raise AssertionError("too many rounds")

    # views ---------------------------------------------------------------------------

    def queries(self) -> list[str | None]:
        return [r.node.query for r in self.started]

    def records_of(self, kind: str) -> list[NewRecord]:
        return [n for n in self.written if n.record.kind == kind]

    def request(self, query: str) -> StepRequest:
        matches = [r for r in self.started if r.node.query == query]
        assert len(matches) == 1, f"{query!r} started {len(matches)} times"
        return matches[0]


def done(driver: Driver) -> Any:
    outcome = driver.go()
    assert outcome is not None, "the run did not finish"
    assert outcome.ok, outcome.value
    return outcome.value


def failed(driver: Driver) -> str:
    outcome = driver.go()
    assert outcome is not None, "the run did not finish"
    assert not outcome.ok, outcome.value
    assert isinstance(outcome.value, str)
    return outcome.value


def replay(driver: Driver, now: float | None = None) -> Evaluation:
    """Evaluate a fresh instance (new graph objects) over a copy of the recorded journal."""
    journal = Journal()
    for key, record in driver.run.journal.records.items():
        journal.add(key, copy.deepcopy(record))
    run = Run(INSTANCE, build_graph(driver.rows, driver.root), journal)
    run.signals = list(driver.run.signals)
    return evaluate(run, driver.now if now is None else now, cron=driver.cron)


# -- build_graph ---------------------------------------------------------------------


def test_build_graph_links_children_conditions_and_extras() -> None:
    g = G()
    cond = g.sql("c")
    body = g.if_(cond, g.sql("y"), g.sql("n"), id="if")
    joined = g.join(body, g.sql("b"), g.sql("x1"), g.sql("x2"), id="j")
    root = build_graph(g.rows, joined)
    assert root.type == "JOIN"
    assert [n.query for n in root.extras] == ["x1", "x2"]
    assert root.left is not None
    assert root.left.id == "if"
    assert root.left.cond is not None
    assert root.left.cond.query == "c"
    assert [c.id for c in root.children()] == ["if", "n05", "n06", "n07"]


@pytest.mark.parametrize(
    ("rows", "root", "message"),
    [
        ({"a": {"t": "THEN", "l": "a", "rt": "zz"}}, "a", "node a: right_node 'zz' does not exist"),
        ({"a": {"t": "IF", "q": '{"condition_node":"q"}'}}, "a", "node a: condition_node 'q' does not exist"),
        ({"a": {"t": "JOIN", "q": '{"extra_nodes":[7]}'}}, "a", "node a: extra node 7 does not exist"),
        ({"a": {"t": "IF", "q": "nope"}}, "a", "node a (IF): query is not JSON"),
        ({"a": {"t": "SIGNAL", "q": "[1]"}}, "a", "node a (SIGNAL): query is not a JSON object"),
        ({"a": {"t": "SQL", "q": "x"}}, "b", "root node b does not exist"),
    ],
)
def test_build_graph_rejects_malformed_rows(rows: dict[str, Any], root: str, message: str) -> None:
    with pytest.raises(GraphError) as info:
        build_graph(rows, root)
    assert str(info.value) == message


def test_unknown_node_type_fails_the_node() -> None:
    g = G()
    root = g.then(g.sql("a"), g.add("WARP", None, id="w"), id="t")
    d = Driver(g.rows, root)
    assert failed(d) == "Unknown node_type 'WARP'"
    assert d.stamps["w"] == Stamp("failed", "Unknown node_type 'WARP'", ROOT)


# -- a single step -------------------------------------------------------------------


def test_single_sql_step_key_request_and_result() -> None:
    g = G()
    root = g.sql("SELECT 1", id="s")
    d = Driver(g.rows, root, results={"SELECT 1": rows(1)})
    ev = d.round()
    assert ev.outcome is None
    assert ev.records == []
    assert ev.wanted == {f"{ROOT}/s"}
    [request] = ev.steps
    assert (request.key, request.scope, request.env, request.attempt, request.iteration) == (
        f"{ROOT}/s",
        ROOT,
        {},
        1,
        0,
    )
    assert ev.stamps == {"s": Stamp("running", None, ROOT)}
    assert done(d) == {"rows": [{"v": 1}], "row_count": 1}
    assert d.stamps == {"s": Stamp("completed", rows(1), ROOT)}


def test_in_flight_step_is_wanted_but_not_requested_again() -> None:
    g = G()
    root = g.sql("slow", id="s")
    d = Driver(g.rows, root, results={"slow": HOLD})
    assert d.go() is None
    ev = d.evaluate()
    assert ev.steps == []
    assert ev.wanted == {f"{ROOT}/s"}
    assert (ev.outcome, ev.wake_at, ev.waits_for_signal) == (None, None, False)
    d.finish("slow", rows(9))
    assert done(d) == rows(9)


def test_failed_step_fails_the_instance_with_its_message_as_a_string() -> None:
    g = G()
    root = g.sql("bad", id="s")
    d = Driver(g.rows, root, results={"bad": Fail("SQL execution failed: boom")})
    assert failed(d) == "SQL execution failed: boom"
    assert d.stamps["s"] == Stamp("failed", "SQL execution failed: boom", ROOT)


def test_step_kind_request_carries_the_node() -> None:
    g = G()
    root = g.step("echo", {"x": 1}, id="s")
    d = Driver(g.rows, root, results={'{"kind":"echo","args":{"x":1}}': {"echoed": 1}})
    assert done(d) == {"echoed": 1}
    [request] = d.started
    assert request.node.type == "STEP"
    assert request.node.config == {"kind": "echo", "args": {"x": 1}}


# -- THEN and named results ------------------------------------------------------------


def test_then_runs_left_then_right_and_returns_right() -> None:
    g = G()
    root = g.then(g.sql("a"), g.sql("b"), id="t")
    d = Driver(g.rows, root, results={"a": rows(1), "b": rows(2)})
    first = d.round()
    assert [r.node.query for r in first.steps] == ["a"]
    second = d.round()
    assert [r.node.query for r in second.steps] == ["b"]
    assert done(d) == rows(2)
    assert d.queries() == ["a", "b"]
    assert d.stamps["t"] == Stamp("completed", rows(2), ROOT)


def test_then_chain_runs_in_order_one_step_per_round() -> None:
    g = G()
    root = g.seq(g.sql("a"), g.sql("b"), g.sql("c"), g.sql("d"))
    d = Driver(g.rows, root)
    assert done(d) == rows("d")
    assert d.queries() == ["a", "b", "c", "d"]
    assert [len(e.steps) for e in d.evaluations] == [1, 1, 1, 1, 0]


def test_then_stops_at_a_failure() -> None:
    g = G()
    root = g.seq(g.sql("a", id="a"), g.sql("b", id="b"), g.sql("c", id="c"))
    d = Driver(g.rows, root, results={"b": Fail("nope")})
    assert failed(d) == "nope"
    assert d.queries() == ["a", "b"]
    assert "c" not in d.stamps
    assert d.stamps["b"] == Stamp("failed", "nope", ROOT)
    assert d.stamps[root] == Stamp("failed", "nope", ROOT)


def test_named_results_reach_later_steps_and_rebinding_wins() -> None:
    g = G()
    root = g.seq(
        g.sql("a", name="x"),
        g.sql("b", name="y"),
        g.sql("c", name="x"),
        g.sql("d"),
    )
    d = Driver(g.rows, root, results={"a": rows(1), "b": rows(2), "c": rows(3)})
    assert done(d) == rows("d")
    assert d.request("a").env == {}
    assert d.request("b").env == {"x": rows(1)}
    assert d.request("c").env == {"x": rows(1), "y": rows(2)}
    assert d.request("d").env == {"x": rows(3), "y": rows(2)}


def test_a_name_on_a_then_node_binds_the_right_result() -> None:
    g = G()
    named = g.then(g.sql("a"), g.sql("b"), name="both")
    root = g.then(named, g.sql("c"))
    d = Driver(g.rows, root, results={"b": rows(2)})
    done(d)
    assert d.request("c").env == {"both": rows(2)}


def test_failed_node_binds_no_name() -> None:
    g = G()
    inner = g.sql("a", name="x")
    root = g.then(inner, g.sql("b"))
    d = Driver(g.rows, root, results={"a": Fail("e")})
    assert failed(d) == "e"
    assert d.queries() == ["a"]


# -- IF ------------------------------------------------------------------------------


def if_graph(cond_value: Any) -> tuple[Driver, str]:
    g = G()
    root = g.if_(g.sql("cond", id="c"), g.sql("yes", id="y"), g.sql("no", id="n"), id="if")
    return Driver(g.rows, root, results={"cond": cond_value}), root


@pytest.mark.parametrize(
    ("cond_value", "taken"),
    [
        (rows(True), "yes"),
        (rows(False), "no"),
        (rows(), "no"),
        (rows(None), "no"),
        (rows(1), "yes"),
        (rows(0), "no"),
        (rows(-2.5), "yes"),
        (rows(0.0), "no"),
        (rows("t"), "yes"),
        (rows("T"), "yes"),
        (rows("yes"), "yes"),
        (rows(" TRUE "), "yes"),
        (rows("no"), "no"),
        (rows("f"), "no"),
        (rows("False"), "no"),
        (rows(""), "no"),
        (rows("   "), "no"),
        (rows("0"), "no"),
        (rows("0.00"), "no"),
        (rows("12"), "yes"),
        (rows("anything"), "yes"),
        (rows([]), "no"),
        (rows([0]), "yes"),
        (rows({}), "no"),
        (rows({"a": 1}), "yes"),
        (rows(False, True), "no"),  # only the first row counts
        ({"rows": [{"a": 0, "b": 1}], "row_count": 1}, "no"),  # only the first column
        ({"rows": [{"a": 1, "b": 0}], "row_count": 1}, "yes"),
        ({"rows": [{}], "row_count": 1}, "no"),  # no columns: null
        (None, "no"),
        (True, "yes"),
        (False, "no"),
        (3, "yes"),
        (0, "no"),
        ("yes", "yes"),
        ("no", "no"),
        ("f", "no"),
        ("", "no"),
        ([], "no"),
        ([False], "yes"),
        ({}, "no"),
        ({"slept": True, "seconds": 0}, "yes"),
        ({"rows": "not a list", "row_count": 0}, "yes"),  # not a row set: a non-empty object
    ],
)
def test_if_truthiness(cond_value: Any, taken: str) -> None:
    d, _ = if_graph(cond_value)
    assert done(d) == rows(taken)
    assert d.queries() == ["cond", taken]


def test_if_stamps_condition_and_taken_branch_only() -> None:
    d, _ = if_graph(rows(True))
    assert done(d) == rows("yes")
    assert d.stamps == {
        "c": Stamp("completed", rows(True), ROOT),
        "y": Stamp("completed", rows("yes"), ROOT),
        "if": Stamp("completed", rows("yes"), ROOT),
    }


def test_if_condition_failure_fails_the_if() -> None:
    d, _ = if_graph(Fail("cond broke"))
    assert failed(d) == "cond broke"
    assert d.queries() == ["cond"]
    assert d.stamps["if"] == Stamp("failed", "cond broke", ROOT)


def test_if_condition_subtree_names_reach_the_branch() -> None:
    g = G()
    cond = g.then(g.sql("pre", name="p"), g.sql("cond", name="c"))
    root = g.then(g.if_(cond, g.sql("yes"), g.sql("no"), name="branch"), g.sql("after"))
    d = Driver(g.rows, root, results={"pre": rows(1), "cond": rows("yes"), "yes": rows(7)})
    assert done(d) == rows("after")
    assert d.request("yes").env == {"p": rows(1), "c": rows("yes")}
    assert d.request("after").env == {"p": rows(1), "c": rows("yes"), "branch": rows(7)}


def test_if_without_a_condition_fails() -> None:
    g = G()
    root = g.add("IF", None, left=g.sql("a"), right=g.sql("b"), id="if")
    d = Driver(g.rows, root)
    assert failed(d) == "IF node has no condition"


@pytest.mark.parametrize(("named", "taken"), [(rows(1, 2), "yes"), (rows(), "no"), (rows(None), "yes")])
def test_if_rows_tests_row_count(named: Any, taken: str) -> None:
    g = G()
    root = g.then(g.sql("q", name="r"), g.if_rows("r", g.sql("yes"), g.sql("no")))
    d = Driver(g.rows, root, results={"q": named})
    assert done(d) == rows(taken)
    assert d.queries() == ["q", taken]


def test_if_rows_missing_name() -> None:
    g = G()
    root = g.then(g.sql("q", name="other"), g.if_rows("r", g.sql("yes"), g.sql("no"), id="if"))
    d = Driver(g.rows, root)
    assert failed(d) == "df.if_rows: result 'r' not found"
    assert d.stamps["if"] == Stamp("failed", "df.if_rows: result 'r' not found", ROOT)


@pytest.mark.parametrize(
    "named",
    [{"status": 200, "ok": True}, [rows(1)], "text", None, {"rows": []}],
)
def test_if_rows_on_a_result_without_row_count(named: Any) -> None:
    g = G()
    root = g.then(g.sql("q", name="r"), g.if_rows("r", g.sql("yes"), g.sql("no")))
    d = Driver(g.rows, root, results={"q": named})
    assert failed(d) == "df.if_rows: result 'r' is not a SQL result (missing row_count)"


def test_if_rows_on_a_sleep_result() -> None:
    g = G()
    root = g.then(g.sleep(0, name="r"), g.if_rows("r", g.sql("yes"), g.sql("no")))
    d = Driver(g.rows, root)
    assert failed(d) == "df.if_rows: result 'r' is not a SQL result (missing row_count)"


# -- JOIN ----------------------------------------------------------------------------


def test_join_runs_branches_together_and_returns_an_array_in_order() -> None:
    g = G()
    root = g.join(g.sql("a", id="a"), g.sql("b", id="b"), id="j")
    d = Driver(g.rows, root, results={"a": rows(1), "b": {"status": 200}})
    first = d.round()
    assert [r.node.query for r in first.steps] == ["a", "b"]
    assert [r.scope for r in first.steps] == [f"{ROOT}::a::1", f"{ROOT}::b::1"]
    assert [r.key for r in first.steps] == [f"{ROOT}::a::1/a", f"{ROOT}::b::1/b"]
    assert done(d) == [rows(1), {"status": 200}]
    assert d.stamps["j"] == Stamp("completed", [rows(1), {"status": 200}], ROOT)
    assert d.stamps["a"] == Stamp("completed", rows(1), f"{ROOT}::a::1")


def test_join_with_extra_branches_keeps_order() -> None:
    g = G()
    root = g.join(g.sql("a"), g.sql("b"), g.sql("c"), g.sql("d"), g.sql("e"))
    d = Driver(g.rows, root, results=dict.fromkeys("abcde", HOLD))
    assert d.go() is None
    assert sorted(d.in_flight) == sorted(f"{ROOT}::n0{i}::1/n0{i}" for i in range(1, 6))
    for q, value in zip("ecadb", [5, 3, 1, 4, 2], strict=True):
        d.finish(q, value)
        if q != "b":
            assert d.go() is None
    assert done(d) == [1, 2, 3, 4, 5]


def test_nested_joins_nest_arrays_and_scopes() -> None:
    g = G()
    inner = g.join(g.sql("b", id="b"), g.sql("c", id="c"), id="k")
    root = g.join(g.sql("a", id="a"), inner, id="j")
    d = Driver(g.rows, root, results={"a": 1, "b": 2, "c": 3})
    assert done(d) == [1, [2, 3]]
    assert d.stamps["c"] == Stamp("completed", 3, f"{ROOT}::k::1::c::1")
    assert d.request("c").key == f"{ROOT}::k::1::c::1/c"


def test_join_waits_for_all_branches_even_after_a_failure() -> None:
    g = G()
    root = g.join(g.sql("a"), g.sql("b"), id="j")
    d = Driver(g.rows, root, results={"a": Fail("boom"), "b": HOLD})
    assert d.go() is None
    ev = d.evaluate()
    assert ev.outcome is None
    assert ev.wanted == {f"{ROOT}::n02::1/n02"}
    assert ev.stamps["j"] == Stamp("running", None, ROOT)
    d.finish("b")
    assert failed(d) == "JOIN branch 1 failed: boom"
    assert d.cancelled == []
    assert d.stamps["j"] == Stamp("failed", "JOIN branch 1 failed: boom", ROOT)


def test_join_reports_the_first_failed_branch_in_order() -> None:
    g = G()
    root = g.join(g.sql("a"), g.sql("b"), g.sql("c"), g.sql("d"))
    d = Driver(g.rows, root, results={"b": Fail("e2"), "c": Fail("e3"), "d": Fail("e4")})
    assert failed(d) == "JOIN branch 2 failed: e2"


def test_join_failure_in_an_extra_branch_is_numbered() -> None:
    g = G()
    root = g.join(g.sql("a"), g.sql("b"), g.sql("c"), g.sql("d"))
    d = Driver(g.rows, root, results={"d": Fail("e4")})
    assert failed(d) == "JOIN branch 4 failed: e4"


def test_join_branches_see_parent_names_and_merge_theirs_back() -> None:
    g = G()
    left = g.then(g.sql("a1", name="x"), g.sql("a2"))
    right = g.sql("b", name="y")
    extra = g.sql("c", name="z")
    root = g.seq(g.sql("pre", name="p"), g.join(left, right, extra, name="j"), g.sql("after"))
    d = Driver(g.rows, root, results={"pre": 0, "a1": 1, "a2": 2, "b": 3, "c": 4})
    done(d)
    assert d.request("a1").env == {"p": 0}
    assert d.request("a2").env == {"p": 0, "x": 1}
    assert d.request("b").env == {"p": 0}
    assert d.request("after").env == {"p": 0, "x": 1, "y": 3, "z": 4, "j": [2, 3, 4]}


@pytest.mark.parametrize("rebinding", ["left", "right"])
def test_join_parent_name_rebound_in_one_branch_survives_the_other(rebinding: str) -> None:
    g = G()
    changer = g.sql("new", name="x")
    keeper = g.sql("keep")
    pair = (changer, keeper) if rebinding == "left" else (keeper, changer)
    root = g.seq(g.sql("old", name="x"), g.join(*pair), g.sql("after"))
    d = Driver(g.rows, root, results={"old": rows("old"), "new": rows("new")})
    done(d)
    assert d.request("after").env == {"x": rows("new")}


def test_join_later_branch_rebinding_wins() -> None:
    g = G()
    root = g.seq(g.join(g.sql("a", name="x"), g.sql("b", name="x")), g.sql("after"))
    d = Driver(g.rows, root, results={"a": 1, "b": 2})
    done(d)
    assert d.request("after").env == {"x": 2}


# -- RACE ----------------------------------------------------------------------------


def race_graph(left: Any, right: Any) -> tuple[Driver, str]:
    g = G()
    root = g.race(g.sql("L", id="l"), g.sql("R", id="r"), id="race")
    return Driver(g.rows, root, results={"L": left, "R": right}), root


def test_race_first_finished_branch_wins_and_the_loser_is_cancelled() -> None:
    d, _ = race_graph(HOLD, HOLD)
    assert d.go() is None
    assert set(d.in_flight) == {f"{ROOT}::l::1/l", f"{ROOT}::r::1/r"}
    d.finish("R", rows("right"))
    decide = d.round()
    assert decide.outcome is None
    assert decide.records == [NewRecord(f"{ROOT}/race!race", Record("race", True, {"winner": "right"}))]
    assert decide.stamps["race"] == Stamp("running", None, ROOT)
    after = d.round()
    assert after.outcome == Outcome(True, rows("right"))
    assert d.cancelled == [f"{ROOT}::l::1/l"]
    assert d.stamps["race"] == Stamp("completed", rows("right"), ROOT)


def test_race_loser_steps_leave_wanted_once_decided() -> None:
    g = G()
    slow = g.seq(g.sql("s1"), g.sql("s2"), g.sql("s3"))
    root = g.then(g.race(g.sql("fast"), slow), g.sql("after"))
    d = Driver(g.rows, root, results={"fast": HOLD, "s2": HOLD, "after": HOLD})
    assert d.go() is None
    assert sorted(r.node.query or "" for r in d.in_flight.values()) == ["fast", "s2"]
    d.finish("fast")
    assert d.go() is None
    assert sorted(r.node.query or "" for r in d.in_flight.values()) == ["after"]
    assert d.cancelled == [f"{ROOT}::n05::1/n02"]
    assert "s3" not in d.queries()


@pytest.mark.parametrize(
    ("left", "right", "message"),
    [
        (Fail("lboom"), HOLD, "RACE left branch failed: lboom"),
        (HOLD, Fail("rboom"), "RACE right branch failed: rboom"),
        (Fail("lboom"), Fail("rboom"), "RACE left branch failed: lboom"),
    ],
)
def test_race_a_failure_that_finishes_first_wins(left: Any, right: Any, message: str) -> None:
    d, _ = race_graph(left, right)
    assert failed(d) == message
    assert d.stamps["race"] == Stamp("failed", message, ROOT)


def test_race_tie_goes_left() -> None:
    d, _ = race_graph(rows("left"), rows("right"))
    assert done(d) == rows("left")
    assert [n.record.value for n in d.records_of("race")] == [{"winner": "left"}]


def test_race_decision_is_stable_when_the_loser_finishes_later() -> None:
    d, _ = race_graph(HOLD, HOLD)
    d.go()
    d.finish("R", rows("right"))
    d.round()  # decision: right
    # The loser's result arrives anyway (it was running when cancelled).
    d.record(f"{ROOT}::l::1/l", rows("left"))
    assert done(d) == rows("right")
    again = replay(d)
    assert again.outcome == Outcome(True, rows("right"))


def test_race_merges_only_the_winners_names() -> None:
    g = G()
    left = g.seq(g.sql("l1", name="a"), g.sql("l2", name="w"))
    right = g.sql("r", name="b")
    root = g.seq(g.sql("pre", name="p"), g.race(left, right, name="won"), g.sql("after"))
    d = Driver(g.rows, root, results={"pre": 0, "l1": 1, "l2": HOLD, "r": HOLD})
    assert d.go() is None
    d.finish("l2", 2)
    assert done(d) == rows("after")
    assert d.request("after").env == {"p": 0, "a": 1, "w": 2, "won": 2}


def test_race_timeout_idiom_with_sleep() -> None:
    g = G()
    late = g.then(g.sleep(30), g.sql("timeout"))
    root = g.race(g.sql("work"), late)
    d = Driver(g.rows, root, results={"work": HOLD, "timeout": rows("timeout")})
    assert done(d) == rows("timeout")
    assert d.now == T0 + 30
    assert d.cancelled == [f"{ROOT}::n04::1/n04"]


def test_race_with_a_sleep_loser_stops_waking() -> None:
    g = G()
    root = g.race(g.sql("work"), g.sleep(30))
    d = Driver(g.rows, root, results={"work": HOLD})
    assert d.go(until=T0) is None
    assert d.evaluate().wake_at == T0 + 30
    d.finish("work", 5)
    d.round()
    assert d.evaluate().outcome == Outcome(True, 5)


def test_race_decision_starts_nothing_for_the_loser() -> None:
    # Fixed: the evaluation that decided the race also started the loser's next
    # step (and armed its timers); the runtime ran it before cancelling it.
    g = G()
    loser = g.seq(g.sql("s1"), g.sql("s2"), g.sleep(60))
    root = g.race(g.sql("fast"), loser, id="r")
    d = Driver(g.rows, root, results={"fast": HOLD, "s1": HOLD})
    assert d.go() is None
    d.finish("fast", 1)
    d.finish("s1")
    decide = d.round()
    assert decide.steps == []
    assert decide.records == [NewRecord(f"{ROOT}/r!race", Record("race", True, {"winner": "left"}))]
    assert done(d) == 1
    assert "s2" not in d.queries()
    assert d.records_of("timer") == []


def test_race_lost_by_a_loop_stamps_the_loop_failed() -> None:
    g = G()
    loop = g.loop(g.sql("poll"), id="L")
    root = g.then(g.race(g.sql("work"), loop), g.sql("after"))
    d = Driver(g.rows, root, results={"work": HOLD})
    assert d.go(until=T0 + 3) is None
    assert d.stamps["L"] == Stamp("running", None, f"{ROOT}::L::1")
    d.finish("work", 1)
    assert done(d) == rows("after")
    assert d.stamps["L"] == Stamp("failed", "Loop branch cancelled after losing RACE", f"{ROOT}::L::1")
    assert graph.LOOP_LOST_RACE == "Loop branch cancelled after losing RACE"


def test_race_in_a_loop_decides_again_each_iteration() -> None:
    g = G()
    body = g.seq(
        g.race(g.sql("a", id="a"), g.sql("b", id="b"), id="r"), g.if_(g.sql("stop?"), g.brk(), g.sql("more"))
    )
    root = g.loop(body)
    d = Driver(
        g.rows,
        root,
        results={"a": lambda r: rows("a") if r.iteration != 2 else HOLD, "stop?": stop_in(3)},
    )
    assert done(d) is None
    assert [(n.key, n.record.value) for n in d.records_of("race")] == [
        (f"{INSTANCE}::1/r!race", {"winner": "left"}),
        (f"{INSTANCE}::2/r!race", {"winner": "right"}),
        (f"{INSTANCE}::3/r!race", {"winner": "left"}),
    ]
    assert d.cancelled == [f"{INSTANCE}::2::a::1/a"]


# -- LOOP ----------------------------------------------------------------------------


def counting_body(g: G) -> str:
    """``('tick' |=> 't') ~> if('stop?', break('done'), 'more')``; ``stop_in`` answers 'stop?'."""
    return g.seq(
        g.sql("tick", name="t", id="tick"),
        g.if_(g.sql("stop?", id="stop"), g.brk("done", id="brk"), g.sql("more", id="more"), id="if"),
    )


def stop_in(iteration: int) -> Callable[[StepRequest], Any]:
    """A 'stop?' result: true from loop iteration ``iteration`` on."""
    return lambda request: rows(request.iteration >= iteration)


def test_root_loop_runs_iterations_in_new_scopes_until_break() -> None:
    g = G()
    root = g.loop(counting_body(g), id="L")
    d = Driver(g.rows, root, results={"stop?": stop_in(3), "tick": lambda r: rows(r.iteration)})
    first = d.round()
    assert first.steps == []
    assert first.records == [
        NewRecord(f"{INSTANCE}::1/!gate", Record("gate", True, {"at": T0, "env": {}, "last": None}))
    ]
    assert done(d) == "done"
    ticks = [r for r in d.started if r.node.id == "tick"]
    assert [(r.key, r.iteration, r.env) for r in ticks] == [
        (f"{INSTANCE}::1/tick", 1, {}),
        (f"{INSTANCE}::2/tick", 2, {}),  # root loop: names reset each iteration
        (f"{INSTANCE}::3/tick", 3, {}),
    ]
    assert [r.env for r in d.started if r.node.id == "stop"] == [
        {"t": rows(1)},
        {"t": rows(2)},
        {"t": rows(3)},
    ]
    gates = d.records_of("gate")
    assert [n.key for n in gates] == [f"{INSTANCE}::{i}/!gate" for i in (1, 2, 3)]
    assert [n.record.value for n in gates] == [
        {"at": T0, "env": {}, "last": None},
        {"at": T0 + 1, "env": {}, "last": rows("more")},
        {"at": T0 + 2, "env": {}, "last": rows("more")},
    ]
    assert [n.drop_prefixes for n in gates] == [
        (),
        (f"{INSTANCE}::1/", f"{INSTANCE}::1::"),
        (f"{INSTANCE}::2/", f"{INSTANCE}::2::"),
    ]
    assert d.stamps["L"] == Stamp("completed", "done", ROOT)
    assert d.stamps["tick"] == Stamp("completed", rows(3), f"{INSTANCE}::3")
    # Only the last iteration's records are left.
    assert sorted(d.run.journal.records) == [
        f"{INSTANCE}::3/!gate",
        f"{INSTANCE}::3/stop",
        f"{INSTANCE}::3/tick",
    ]


def test_loop_paces_iterations_one_second_apart() -> None:
    g = G()
    root = g.loop(counting_body(g))
    d = Driver(g.rows, root, results={"stop?": stop_in(4)})
    assert done(d) == "done"
    assert d.waited == [T0 + 1, T0 + 2, T0 + 3]
    paced = [e for e in d.evaluations if e.wake_at is not None]
    assert [e.wake_at for e in paced] == [T0 + 1, T0 + 2, T0 + 3]
    assert all(e.records == [] and e.steps == [] for e in paced)


def test_loop_iteration_slower_than_a_second_is_not_paced() -> None:
    g = G()
    body = g.seq(g.sleep(5), g.if_(g.sql("stop?"), g.brk("x"), g.sql("more")))
    root = g.loop(body)
    d = Driver(g.rows, root, results={"stop?": stop_in(2)})
    assert done(d) == "x"
    assert [n.record.value["at"] for n in d.records_of("gate")] == [T0, T0 + 5]
    assert d.waited == [T0 + 5, T0 + 10]


def test_non_root_loop_prefix_and_suffix_run_once_and_names_thread() -> None:
    g = G()
    body = g.seq(
        g.sql("tick", name="t", id="tick"),
        g.if_(g.sql("stop?"), g.brk("out"), g.sql("more")),
    )
    loop = g.loop(body, name="loop", id="L")
    root = g.seq(g.sql("prefix", name="p"), loop, g.sql("suffix"))
    d = Driver(
        g.rows,
        root,
        results={"stop?": stop_in(3), "tick": lambda r: r.iteration, "prefix": 0},
    )
    assert done(d) == rows("suffix")
    assert d.queries().count("prefix") == 1
    assert d.queries().count("suffix") == 1
    ticks = [r for r in d.started if r.node.id == "tick"]
    base = f"{ROOT}::L"
    assert [(r.key, r.iteration, r.env) for r in ticks] == [
        (f"{base}::1/tick", 1, {"p": 0}),
        (f"{base}::2/tick", 2, {"p": 0, "t": 1}),
        (f"{base}::3/tick", 3, {"p": 0, "t": 2}),
    ]
    gates = d.records_of("gate")
    assert [n.key for n in gates] == [f"{base}::{i}/!gate" for i in (1, 2, 3)]
    assert [n.record.value["env"] for n in gates] == [{"p": 0}, {"p": 0, "t": 1}, {"p": 0, "t": 2}]
    assert [n.drop_prefixes for n in gates] == [
        (),
        (f"{base}::1/", f"{base}::1::"),
        (f"{base}::2/", f"{base}::2::"),
    ]
    assert d.request("suffix").env == {"p": 0, "t": 3, "loop": "out"}
    assert d.stamps["L"] == Stamp("completed", "out", ROOT)
    assert d.stamps["tick"] == Stamp("completed", 3, f"{base}::3")


def test_while_loop_ends_with_the_last_body_result() -> None:
    g = G()
    root = g.loop(g.sql("body", id="b"), g.sql("again?", id="c"), id="L")
    d = Driver(
        g.rows,
        root,
        results={"body": lambda r: rows(f"body {r.iteration}"), "again?": lambda r: rows(r.iteration < 3)},
    )
    assert done(d) == rows("body 3")
    assert d.queries() == ["body", "again?"] * 3
    assert d.stamps["c"] == Stamp("completed", rows(False), f"{INSTANCE}::3")


def test_while_condition_sees_body_names_and_failure_fails_the_loop() -> None:
    g = G()
    root = g.then(g.loop(g.sql("body", name="b"), g.sql("again?"), id="L"), g.sql("after"))
    d = Driver(g.rows, root, results={"body": 1, "again?": Fail("cond failed")})
    assert failed(d) == "cond failed"
    assert d.request("again?").env == {"b": 1}
    assert d.stamps["L"] == Stamp("failed", "cond failed", ROOT)


def test_loop_body_failure_fails_the_loop() -> None:
    g = G()
    root = g.loop(g.sql("body"), id="L")
    d = Driver(g.rows, root, results={"body": lambda r: Fail("boom") if r.iteration == 2 else 1})
    assert failed(d) == "boom"
    assert d.stamps["L"] == Stamp("failed", "boom", ROOT)


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("done", "done"),
        ('{"a":1}', {"a": 1}),
        ("[1,2]", [1, 2]),
        ("1", 1),
        ("2.5", 2.5),
        ("true", True),
        ("null", None),
        ('"quoted"', "quoted"),
        ("NaN", "NaN"),
        ("{bad", "{bad"),
        ("", ""),
        (None, None),
    ],
)
def test_break_value_rules(literal: str | None, value: Any) -> None:
    g = G()
    root = g.loop(g.then(g.sql("a"), g.brk(literal, id="b")), id="L")
    d = Driver(g.rows, root)
    outcome = d.go()
    assert outcome == Outcome(True, value)
    assert d.stamps["L"] == Stamp("completed", value, ROOT)


def test_break_in_a_join_branch_waits_for_the_other_branches() -> None:
    g = G()
    branch = g.then(g.sql("a"), g.brk("joined"))
    root = g.loop(g.join(branch, g.sql("slow")), id="L")
    d = Driver(g.rows, root, results={"slow": HOLD})
    assert d.go() is None
    d.finish("slow")
    assert done(d) == "joined"
    assert d.cancelled == []


def test_break_in_a_join_branch_merges_names() -> None:
    g = G()
    loop = g.loop(g.join(g.sql("a", name="x"), g.then(g.sql("b", name="y"), g.brk("j"))), name="l")
    root = g.then(loop, g.sql("after"))
    d = Driver(g.rows, root, results={"a": 1, "b": 2})
    done(d)
    assert d.request("after").env == {"x": 1, "y": 2, "l": "j"}


def test_join_failure_before_a_break_in_branch_order_wins() -> None:
    g = G()
    root = g.loop(g.join(g.sql("a"), g.brk("b")))
    d = Driver(g.rows, root, results={"a": Fail("first")})
    assert failed(d) == "JOIN branch 1 failed: first"


def test_join_break_before_a_failure_in_branch_order_wins() -> None:
    g = G()
    root = g.loop(g.join(g.brk("b"), g.sql("a")))
    d = Driver(g.rows, root, results={"a": Fail("second")})
    assert done(d) == "b"


def test_break_in_the_winning_race_branch() -> None:
    g = G()
    root = g.loop(g.race(g.sql("slow"), g.then(g.sql("quick"), g.brk("raced"))), id="L")
    d = Driver(g.rows, root, results={"slow": HOLD})
    assert done(d) == "raced"
    assert [r.node.query for r in d.started] == ["slow", "quick"]
    assert len(d.cancelled) == 1


def test_break_in_the_while_condition() -> None:
    g = G()
    cond = g.then(g.sql("check"), g.brk("from condition"))
    root = g.loop(g.sql("body", name="b"), cond, id="L")
    d = Driver(g.rows, root)
    assert done(d) == "from condition"
    assert d.queries() == ["body", "check"]


def test_break_in_if_condition() -> None:
    g = G()
    root = g.loop(g.if_(g.brk("cond"), g.sql("yes"), g.sql("no")))
    d = Driver(g.rows, root)
    assert done(d) == "cond"
    assert d.queries() == []


@pytest.mark.parametrize("where", ["root", "then", "join", "if", "race"])
def test_break_outside_a_loop_fails_the_instance(where: str) -> None:
    g = G()
    brk = g.brk("x", id="b")
    if where == "root":
        root = brk
    elif where == "then":
        root = g.then(g.sql("a"), brk, id="root")
    elif where == "join":
        root = g.join(g.sql("a"), brk, id="root")
    elif where == "if":
        root = g.if_(g.sql("c"), brk, g.sql("n"), id="root")
    else:
        root = g.race(brk, g.sql("a"), id="root")
    d = Driver(g.rows, root, results={"c": rows(True)})
    assert failed(d) == BREAK_OUTSIDE_LOOP
    assert BREAK_OUTSIDE_LOOP == (
        "df.break() was called outside of a loop. df.break() may only be used inside df.loop()."
    )
    assert d.stamps[root] == Stamp("failed", BREAK_OUTSIDE_LOOP, ROOT)


def test_break_after_the_loop_is_outside_it() -> None:
    g = G()
    root = g.seq(g.loop(g.brk("in")), g.brk("out"))
    d = Driver(g.rows, root)
    assert failed(d) == BREAK_OUTSIDE_LOOP


def test_nested_loops_break_to_the_nearest_loop() -> None:
    g = G()
    inner_body = g.seq(
        g.sql("inner", id="in"),
        g.if_(g.sql("inner stop?", id="is"), g.brk("inner done", id="ib"), g.sql("inner more")),
    )
    inner = g.loop(inner_body, name="inner_result", id="I")
    outer_body = g.seq(
        g.sql("outer", id="out"),
        inner,
        g.if_(g.sql("outer stop?", id="os"), g.brk("outer done"), g.sql("outer more")),
    )
    root = g.loop(outer_body, id="O")
    inner_runs: list[tuple[str, int]] = []

    def inner_stop(request: StepRequest) -> Any:
        inner_runs.append((request.scope, request.iteration))
        return rows(request.iteration >= 2)

    d = Driver(g.rows, root, results={"inner stop?": inner_stop, "outer stop?": stop_in(2)})
    assert done(d) == "outer done"
    assert inner_runs == [
        (f"{INSTANCE}::1::I::1", 1),
        (f"{INSTANCE}::1::I::2", 2),
        (f"{INSTANCE}::2::I::1", 1),  # the inner loop starts afresh in each outer iteration
        (f"{INSTANCE}::2::I::2", 2),
    ]
    assert d.queries().count("outer") == 2
    assert d.queries().count("inner") == 4
    assert [r.env for r in d.started if r.node.id == "os"] == [
        {"inner_result": "inner done"},
        {"inner_result": "inner done"},
    ]
    assert d.stamps["I"] == Stamp("completed", "inner done", f"{INSTANCE}::2")
    assert d.stamps["O"] == Stamp("completed", "outer done", ROOT)
    assert not [k for k in d.run.journal.records if k.startswith(f"{INSTANCE}::1")]


def test_loop_iteration_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graph, "MAX_LOOP_ITERATIONS", 3)
    g = G()
    root = g.loop(g.sql("forever"), id="L")
    d = Driver(g.rows, root)
    assert failed(d) == LOOP_CAP
    assert LOOP_CAP == (
        "Loop exceeded maximum iteration count of 100000. "
        "Use df.break() to exit the loop or restructure the workflow."
    )
    assert d.queries() == ["forever"] * 3
    assert d.stamps["L"] == Stamp("failed", LOOP_CAP, ROOT)


def test_loop_cap_does_not_stop_a_loop_that_ends_in_its_last_iteration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(graph, "MAX_LOOP_ITERATIONS", 3)
    g = G()
    root = g.loop(counting_body(g))
    d = Driver(g.rows, root, results={"stop?": stop_in(3)})
    assert done(d) == "done"


def test_loop_replay_after_compaction_continues_where_it_was() -> None:
    g = G()
    root = g.then(g.sql("prefix", name="p", id="pre"), g.loop(counting_body(g), id="L"))
    d = Driver(g.rows, root, results={"stop?": stop_in(4), "more": HOLD})
    for _ in range(2):
        assert d.go() is None  # "more" is in flight
        d.finish("more")
    assert d.go() is None
    assert list(d.in_flight) == [f"{ROOT}::L::3/more"]
    assert sorted(d.run.journal.records) == [
        f"{ROOT}/pre",
        f"{ROOT}::L::3/!gate",
        f"{ROOT}::L::3/stop",
        f"{ROOT}::L::3/tick",
    ]
    # Crash: the in-flight step is lost; a new worker evaluates the compacted journal.
    d2 = Driver(g.rows, root, results={"stop?": stop_in(4)}, journal=d.run.journal, now=d.now)
    assert done(d2) == "done"
    assert [(r.key, r.env) for r in d2.started] == [
        (f"{ROOT}::L::3/more", {"p": rows("prefix"), "t": rows("tick")}),
        (f"{ROOT}::L::4/tick", {"p": rows("prefix"), "t": rows("tick")}),
        (f"{ROOT}::L::4/stop", {"p": rows("prefix"), "t": rows("tick")}),
    ]


def test_gate_env_is_used_after_compaction() -> None:
    g = G()
    body = g.seq(g.sql("tick", name="t"), g.if_(g.sql("stop?"), g.brk("b"), g.sql("more")))
    root = g.then(g.sql("prefix", name="p"), g.loop(body, id="L"))
    d = Driver(g.rows, root, results={"stop?": stop_in(3), "tick": lambda r: r.iteration, "prefix": "P"})
    assert done(d) == "b"
    fresh = replay(d)
    assert fresh.outcome == Outcome(True, "b")
    # The journal no longer holds the prefix's names in the loop scope; the gate does.
    gate = d.run.journal.get(f"{ROOT}::L::3/!gate")
    assert gate is not None
    assert gate.value["env"] == {"p": "P", "t": 2}


def test_loop_inside_a_join_branch() -> None:
    g = G()
    loop = g.loop(g.if_(g.sql("stop?"), g.brk("looped"), g.sql("more")), id="L")
    root = g.join(g.sql("other"), loop, id="j")
    d = Driver(g.rows, root, results={"stop?": stop_in(2), "other": 1})
    assert done(d) == [1, "looped"]
    assert [n.key for n in d.records_of("gate")] == [f"{ROOT}::L::1::L::1/!gate", f"{ROOT}::L::1::L::2/!gate"]


def test_loop_iteration_with_a_long_step_is_not_paced() -> None:
    g = G()
    root = g.loop(g.sql("slow"))
    d = Driver(g.rows, root, results={"slow": HOLD})
    assert d.go() is None
    ev = d.evaluate()
    assert ev.wake_at is None
    d.now += 10
    d.finish("slow")
    ev = d.round()
    assert ev.wake_at is None
    assert [n.key for n in ev.records] == [f"{INSTANCE}::2/!gate"]
    assert ev.records[0].record.value["at"] == T0 + 10


# -- SLEEP ---------------------------------------------------------------------------


def test_sleep_arms_a_timer_then_completes_at_the_due_time() -> None:
    g = G()
    root = g.sleep(5, id="z")
    d = Driver(g.rows, root)
    arm = d.round()
    assert arm.records == [NewRecord(f"{ROOT}/z!timer", Record("timer", True, {"due": T0 + 5}))]
    assert arm.outcome is None
    assert arm.stamps["z"] == Stamp("running", None, ROOT)
    d.now = T0 + 3  # woken early: still waiting
    wait = d.round()
    assert (wait.outcome, wait.records, wait.steps, wait.wake_at) == (None, [], [], T0 + 5)
    d.now = T0 + 5
    assert d.round().outcome == Outcome(True, {"slept": True, "seconds": 5})
    assert d.stamps["z"] == Stamp("completed", {"slept": True, "seconds": 5}, ROOT)


def test_sleep_zero_completes_at_once() -> None:
    g = G()
    root = g.sleep(0, id="z")
    d = Driver(g.rows, root)
    ev = d.round()
    assert ev.outcome == Outcome(True, {"slept": True, "seconds": 0})
    assert ev.records == []


def test_sleep_timer_is_set_when_the_node_is_reached() -> None:
    g = G()
    root = g.seq(g.sql("a", name="x"), g.sleep(10, name="s"), g.sql("b"))
    d = Driver(g.rows, root, results={"a": HOLD})
    d.go()
    d.now = T0 + 100
    d.finish("a", 1)
    assert done(d) == rows("b")
    assert [n.record.value for n in d.records_of("timer")] == [{"due": T0 + 110}]
    assert d.request("b").env == {"x": 1, "s": {"slept": True, "seconds": 10}}


# -- WAIT_SCHEDULE -------------------------------------------------------------------


def test_schedule_next_tick_is_computed_when_the_node_runs() -> None:
    calls: list[tuple[str, float]] = []

    def cron(expr: str, after: float) -> float:
        calls.append((expr, after))
        return after + 42

    g = G()
    root = g.then(g.sleep(10), g.schedule("*/5 * * * *", id="w"))
    d = Driver(g.rows, root, cron=cron)
    assert done(d) == {"scheduled": True}
    assert set(calls) == {("*/5 * * * *", T0 + 10)}  # evaluated again until the timer is durable
    assert d.records_of("timer")[-1] == NewRecord(f"{ROOT}/w!timer", Record("timer", True, {"due": T0 + 52}))
    assert d.now == T0 + 52
    assert d.stamps["w"] == Stamp("completed", {"scheduled": True}, ROOT)


def test_two_schedule_waits_land_on_consecutive_ticks() -> None:
    g = G()
    root = g.seq(g.schedule("* * * * *"), g.schedule("* * * * *"), g.sql("job"))
    d = Driver(g.rows, root, now=600.5)
    assert done(d) == rows("job")
    assert [n.record.value["due"] for n in d.records_of("timer")] == [660.0, 720.0]
    assert d.waited == [660.0, 720.0]


def test_schedule_in_a_loop_waits_for_each_tick() -> None:
    g = G()
    body = g.seq(g.schedule("* * * * *"), g.if_(g.sql("stop?"), g.brk("b"), g.sql("job")))
    root = g.loop(body)
    d = Driver(g.rows, root, now=600.0, results={"stop?": stop_in(3)})
    assert done(d) == "b"
    assert [n.record.value["due"] for n in d.records_of("timer")] == [660.0, 720.0, 780.0]


def test_invalid_cron_fails_the_node_with_the_message() -> None:
    g = G()
    root = g.then(g.sql("a"), g.schedule("bad", id="w"))
    d = Driver(g.rows, root)
    assert failed(d) == "Invalid cron expression 'bad': nope"
    assert d.stamps["w"] == Stamp("failed", "Invalid cron expression 'bad': nope", ROOT)
    assert d.records_of("timer") == []


def test_next_cron_tick_with_croniter() -> None:
    # 2023-11-14T22:13:20Z
    assert next_cron_tick("*/5 * * * *", T0) == 1_700_000_100.0  # 22:15
    assert next_cron_tick("*/5 * * * *", 1_700_000_100.0) == 1_700_000_400.0  # strictly after
    assert next_cron_tick("0 0 * * *", T0) == 1_700_006_400.0  # midnight UTC
    with pytest.raises(ValueError, match=r"^Invalid cron expression 'not cron': "):
        next_cron_tick("not cron", T0)


# -- SIGNAL --------------------------------------------------------------------------


def test_signal_sent_before_the_wait_is_consumed_once() -> None:
    g = G()
    root = g.then(g.sql("a"), g.signal("go", id="s"))
    d = Driver(g.rows, root, signals=[Signal(7, "go", {"k": 1}), Signal(8, "other", 2)])
    assert done(d) == {"signal_name": "go", "timed_out": False, "data": {"k": 1}}
    [consumed] = d.records_of("signal")
    assert consumed == NewRecord(
        f"{ROOT}/s",
        Record("signal", True, {"signal_name": "go", "timed_out": False, "data": {"k": 1}}),
        consumes_signal=7,
    )
    assert d.run.signals == [Signal(8, "other", 2)]
    assert d.stamps["s"] == Stamp(
        "completed", {"signal_name": "go", "timed_out": False, "data": {"k": 1}}, ROOT
    )


def test_two_waits_with_one_name_take_signals_in_order() -> None:
    g = G()
    root = g.seq(g.signal("go", name="first"), g.signal("go", name="second"), g.sql("after"))
    d = Driver(
        g.rows, root, signals=[Signal(1, "go", "one"), Signal(2, "go", "two"), Signal(3, "go", "three")]
    )
    done(d)
    assert d.request("after").env == {
        "first": {"signal_name": "go", "timed_out": False, "data": "one"},
        "second": {"signal_name": "go", "timed_out": False, "data": "two"},
    }
    assert [n.consumes_signal for n in d.records_of("signal")] == [1, 2]
    assert d.run.signals == [Signal(3, "go", "three")]


def test_waits_in_join_branches_share_the_mailbox() -> None:
    g = G()
    root = g.join(g.signal("go"), g.signal("go"))
    d = Driver(g.rows, root, signals=[Signal(1, "go", "one")])
    assert d.go() is None
    ev = d.evaluate()
    assert ev.waits_for_signal
    assert ev.wake_at is None
    d.send(2, "go", "two")
    assert done(d) == [
        {"signal_name": "go", "timed_out": False, "data": "one"},
        {"signal_name": "go", "timed_out": False, "data": "two"},
    ]


def test_signal_arriving_while_waiting() -> None:
    g = G()
    root = g.signal("go", id="s")
    d = Driver(g.rows, root)
    ev = d.round()
    assert (ev.outcome, ev.records, ev.steps, ev.wake_at, ev.waits_for_signal) == (None, [], [], None, True)
    assert d.go() is None
    d.send(5, "go", None)
    assert done(d) == {"signal_name": "go", "timed_out": False, "data": None}


def test_signal_wait_in_a_loop_takes_one_signal_per_iteration() -> None:
    g = G()
    body = g.seq(g.signal("tick", name="s"), g.if_(g.sql("stop?"), g.brk("ok"), g.sql("more")))
    root = g.then(g.loop(body), g.sql("after"))
    d = Driver(g.rows, root, results={"stop?": stop_in(2)}, signals=[Signal(1, "tick", 1)])
    assert d.go() is None
    assert d.evaluate().waits_for_signal
    d.send(2, "tick", 2)
    d.send(3, "tick", 3)
    assert done(d) == rows("after")
    assert [n.consumes_signal for n in d.records_of("signal")] == [1, 2]
    assert d.run.signals == [Signal(3, "tick", 3)]
    assert [r.env["s"]["data"] for r in d.started if r.node.query == "stop?"] == [1, 2]


def test_signal_timeout_is_a_success() -> None:
    g = G()
    root = g.then(g.signal("go", 10, name="w", id="s"), g.sql("after"))
    d = Driver(g.rows, root)
    arm = d.round()
    assert arm.records == [NewRecord(f"{ROOT}/s!timer", Record("timer", True, {"due": T0 + 10}))]
    assert arm.waits_for_signal
    wait = d.round()
    assert (wait.wake_at, wait.waits_for_signal, wait.records) == (T0 + 10, True, [])
    d.now = T0 + 10
    fire = d.round()
    assert fire.records == [
        NewRecord(f"{ROOT}/s", Record("signal", True, {"signal_name": "go", "timed_out": True, "data": None}))
    ]
    assert done(d) == rows("after")
    assert d.request("after").env == {"w": {"signal_name": "go", "timed_out": True, "data": None}}


def test_signal_before_its_timeout_wins() -> None:
    g = G()
    root = g.signal("go", 10)
    d = Driver(g.rows, root)
    assert d.go(until=T0 + 5) is None
    d.now = T0 + 5
    d.send(1, "go", [1])
    assert done(d) == {"signal_name": "go", "timed_out": False, "data": [1]}
    assert d.now == T0 + 5


def test_signal_in_a_race_branch_wins_the_race() -> None:
    g = G()
    root = g.race(g.sql("work"), g.signal("go", id="s"), id="r")
    d = Driver(g.rows, root, results={"work": HOLD})
    assert d.go() is None
    d.send(1, "go", "x")
    assert done(d) == {"signal_name": "go", "timed_out": False, "data": "x"}
    assert [n.record.value for n in d.records_of("race")] == [{"winner": "right"}]
    assert d.cancelled == [f"{ROOT}::n01::1/n01"]


def test_race_loser_does_not_take_a_signal_in_the_deciding_evaluation() -> None:
    # Fixed: the loser's wait consumed the signal in the evaluation that decided
    # the race, so the signal was lost to the wait after the race.
    g = G()
    root = g.then(g.race(g.sql("work"), g.signal("go")), g.signal("go", name="later"))
    d = Driver(g.rows, root, results={"work": HOLD})
    assert d.go() is None
    d.finish("work", 1)
    d.send(1, "go", "x")
    decide = d.round()
    assert [n.record.kind for n in decide.records] == ["race"]
    assert done(d) == {"signal_name": "go", "timed_out": False, "data": "x"}
    assert [n.consumes_signal for n in d.records_of("signal")] == [1]


# -- RETRY ---------------------------------------------------------------------------


def flaky(successes_from: int) -> Callable[[StepRequest], Any]:
    return lambda r: rows(r.attempt) if r.attempt >= successes_from else Fail(f"boom{r.attempt}")


def test_retry_succeeds_on_a_later_attempt_with_backoff() -> None:
    g = G()
    root = g.retry(g.sql("flaky", id="f"), 5, backoff=2.0, id="R")
    d = Driver(g.rows, root, results={"flaky": flaky(3)})
    assert done(d) == rows(3)
    assert [(r.key, r.attempt, r.scope) for r in d.started] == [
        (f"{ROOT}::R::1/f", 1, f"{ROOT}::R::1"),
        (f"{ROOT}::R::2/f", 2, f"{ROOT}::R::2"),
        (f"{ROOT}::R::3/f", 3, f"{ROOT}::R::3"),
    ]
    gates = d.records_of("gate")
    assert gates == [
        NewRecord(
            f"{ROOT}::R::2/!gate", Record("gate", True, {"at": T0 + 2, "error": "boom1", "attempt": 2})
        ),
        NewRecord(
            f"{ROOT}::R::3/!gate", Record("gate", True, {"at": T0 + 6, "error": "boom2", "attempt": 3})
        ),
    ]
    assert d.waited == [T0 + 2, T0 + 6]
    # The RETRY node's stamp reports the attempt that succeeded and each earlier error.
    assert d.stamps["R"] == Stamp(
        "completed",
        rows(3),
        ROOT,
        {
            "attempt": 3,
            "max_attempts": 5,
            "errors": [{"attempt": 1, "error": "boom1"}, {"attempt": 2, "error": "boom2"}],
        },
    )
    assert d.stamps["f"] == Stamp("completed", rows(3), f"{ROOT}::R::3")


def test_retry_waits_with_wake_at_between_attempts() -> None:
    g = G()
    root = g.retry(g.sql("flaky"), 3, backoff=5.0)
    d = Driver(g.rows, root, results={"flaky": flaky(2)})
    d.round()  # attempt 1 runs and fails
    gate = d.round()
    assert [n.key for n in gate.records] == [f"{ROOT}::n02::2/!gate"]
    d.now = T0 + 4
    ev = d.round()
    assert (ev.steps, ev.records, ev.wake_at) == ([], [], T0 + 5)
    d.now = T0 + 5
    assert [r.attempt for r in d.round().steps] == [2]


def test_retry_gives_up_after_max_attempts() -> None:
    g = G()
    root = g.retry(g.sql("flaky"), 3, backoff=1.0, id="R")
    d = Driver(g.rows, root, results={"flaky": flaky(99)})
    assert failed(d) == "failed after 3 attempts: boom3"
    assert d.waited == [T0 + 1, T0 + 3]
    assert d.stamps["R"] == Stamp(
        "failed",
        "failed after 3 attempts: boom3",
        ROOT,
        {
            "attempt": 3,
            "max_attempts": 3,
            "errors": [{"attempt": 1, "error": "boom1"}, {"attempt": 2, "error": "boom2"}],
        },
    )


def test_retry_with_one_attempt_keeps_the_error() -> None:
    g = G()
    root = g.retry(g.sql("flaky"), 1)
    d = Driver(g.rows, root, results={"flaky": flaky(99)})
    assert failed(d) == "boom1"


def test_retry_backoff_is_capped() -> None:
    g = G()
    root = g.retry(g.sql("flaky"), 5, backoff=10.0, ceiling=15.0)
    d = Driver(g.rows, root, results={"flaky": flaky(5)})
    assert done(d) == rows(5)
    ats = [n.record.value["at"] for n in d.records_of("gate")]
    assert [b - a for a, b in zip([T0, *ats], ats, strict=False)] == [10.0, 15.0, 15.0, 15.0]


def test_retry_reruns_the_whole_subtree_with_fresh_names() -> None:
    g = G()
    child = g.seq(g.sql("a", name="x"), g.sql("b"))
    root = g.then(g.sql("pre", name="p"), g.retry(child, 2, backoff=0.0))
    d = Driver(g.rows, root, results={"b": flaky(2), "a": lambda r: r.attempt, "pre": 0})
    assert done(d) == rows(2)
    assert [(r.node.query, r.attempt, r.env) for r in d.started] == [
        ("pre", 1, {}),
        ("a", 1, {"p": 0}),
        ("b", 1, {"p": 0, "x": 1}),
        ("a", 2, {"p": 0}),
        ("b", 2, {"p": 0, "x": 2}),
    ]


# -- TIMEOUT -------------------------------------------------------------------------


def test_timeout_wins_and_the_child_is_cancelled() -> None:
    g = G()
    root = g.timeout(g.sql("slow", id="c"), 5, id="T")
    d = Driver(g.rows, root, results={"slow": HOLD})
    arm = d.round()
    assert arm.records == [NewRecord(f"{ROOT}/T!timer", Record("timer", True, {"due": T0 + 5}))]
    assert arm.steps == []  # the child starts once the timer is durable
    assert d.go(until=T0) is None
    assert list(d.in_flight) == [f"{ROOT}/c"]
    d.now = T0 + 5
    decide = d.round()
    assert decide.records == [NewRecord(f"{ROOT}/T!decision", Record("decision", True, {"timed_out": True}))]
    assert decide.steps == []
    assert d.cancelled == []  # still wanted until the decision is durable
    after = d.round()
    assert after.outcome == Outcome(False, "df.timeout: did not finish within 5s")
    assert after.wanted == set()
    assert d.cancelled == [f"{ROOT}/c"]
    assert d.stamps["T"] == Stamp("failed", "df.timeout: did not finish within 5s", ROOT)


def test_timeout_child_finishing_first_records_a_decision() -> None:
    g = G()
    root = g.timeout(g.sql("quick", name="q"), 2.5, id="T")
    d = Driver(g.rows, root, results={"quick": HOLD})
    d.go(until=T0)
    d.now = T0 + 1
    d.finish("quick", 1)
    decide = d.round()
    assert decide.records == [NewRecord(f"{ROOT}/T!decision", Record("decision", True, {"timed_out": False}))]
    d.now = T0 + 100  # replay long after the deadline: the decision holds
    assert done(d) == 1
    assert d.stamps["T"] == Stamp("completed", 1, ROOT)


def test_timeout_decision_starts_nothing_for_the_child() -> None:
    # Fixed: the evaluation that timed the child out also started its next step.
    g = G()
    root = g.timeout(g.seq(g.sql("a"), g.sql("b"), g.signal("go")), 5, id="T")
    d = Driver(g.rows, root, results={"a": HOLD}, signals=[Signal(1, "go", None)])
    assert d.go(until=T0) is None
    d.now = T0 + 5
    d.finish("a")
    decide = d.round()
    assert decide.steps == []
    assert [n.key for n in decide.records] == [f"{ROOT}/T!decision"]
    assert failed(d) == "df.timeout: did not finish within 5s"
    assert d.queries() == ["a"]
    assert d.run.signals == [Signal(1, "go", None)]


def test_timeout_message_keeps_fractions() -> None:
    g = G()
    root = g.timeout(g.sleep(10), 2.5)
    d = Driver(g.rows, root)
    assert failed(d) == "df.timeout: did not finish within 2.5s"
    assert d.now == T0 + 2.5


def test_timeout_child_failure_passes_through() -> None:
    g = G()
    root = g.timeout(g.sql("bad"), 5)
    d = Driver(g.rows, root, results={"bad": Fail("broken")})
    assert failed(d) == "broken"


def test_timeout_inside_retry_gets_a_new_deadline_per_attempt() -> None:
    g = G()
    root = g.retry(g.timeout(g.sql("work"), 5), 2, backoff=1.0)
    d = Driver(g.rows, root, results={"work": lambda r: HOLD if r.attempt == 1 else rows("ok")})
    assert done(d) == rows("ok")
    # attempt 2 starts at T0 + 5 + 1 s backoff, with a fresh 5 s deadline
    assert [n.record.value["due"] for n in d.records_of("timer")] == [T0 + 5, T0 + 11]
    assert d.cancelled == [f"{ROOT}::n03::1/n01"]


# -- stamps --------------------------------------------------------------------------


def test_stamps_cover_every_visited_node_with_scopes() -> None:
    g = G()
    join = g.join(g.sql("b", id="b"), g.then(g.sql("c", id="c"), g.sleep(0, id="z"), id="t2"), id="j")
    root = g.seq(
        g.sql("a", name="x", id="a"), g.if_(g.sql("cond", id="k"), join, g.sql("no", id="n"), id="if")
    )
    d = Driver(g.rows, root, results={"a": 1, "cond": rows(True), "b": 2, "c": Fail("c failed")})
    message = "JOIN branch 2 failed: c failed"
    assert failed(d) == message
    assert d.stamps == {
        "a": Stamp("completed", 1, ROOT),
        "k": Stamp("completed", rows(True), ROOT),
        "b": Stamp("completed", 2, f"{ROOT}::b::1"),
        "c": Stamp("failed", "c failed", f"{ROOT}::t2::1"),
        "t2": Stamp("failed", "c failed", f"{ROOT}::t2::1"),
        "j": Stamp("failed", message, ROOT),
        "if": Stamp("failed", message, ROOT),
        root: Stamp("failed", message, ROOT),
    }


def test_stamps_while_running_and_in_the_final_evaluation() -> None:
    g = G()
    root = g.then(g.sql("a", id="a"), g.sql("b", id="b"), id="t")
    d = Driver(g.rows, root, results={"b": HOLD})
    d.go()
    ev = d.evaluate()
    assert ev.stamps == {
        "a": Stamp("completed", rows("a"), ROOT),
        "b": Stamp("running", None, ROOT),
        "t": Stamp("running", None, ROOT),
    }
    d.finish("b")
    final = d.round()
    assert final.outcome == Outcome(True, rows("b"))
    assert final.stamps["t"] == Stamp("completed", rows("b"), ROOT)
    assert (final.steps, final.records, final.wanted, final.wake_at) == ([], [], set(), None)


def test_race_branch_scopes_in_stamps() -> None:
    g = G()
    root = g.race(g.then(g.sql("a", id="a"), g.sql("b", id="b"), id="t"), g.sql("c", id="c"), id="r")
    d = Driver(g.rows, root, results={"c": HOLD})
    assert done(d) == rows("b")
    assert d.stamps["b"] == Stamp("completed", rows("b"), f"{ROOT}::t::1")
    assert d.stamps["c"] == Stamp("running", None, f"{ROOT}::c::1")


# -- determinism and replay ----------------------------------------------------------


def complex_graph() -> tuple[dict[str, dict[str, Any]], str]:
    g = G()
    body = g.seq(
        g.join(g.sql("a", name="a"), g.race(g.sql("b"), g.sleep(3)), g.signal("go", 30)),
        g.retry(g.sql("flaky"), 3),
        g.if_(g.sql("stop?"), g.brk('{"finished":true}'), g.schedule("* * * * *")),
    )
    root = g.then(g.sql("prefix", name="p"), g.loop(body, name="l"))
    return g.rows, root


def complex_results() -> dict[str, Any]:
    return {
        "b": lambda r: HOLD if r.iteration == 1 else rows("b"),
        "flaky": lambda r: rows("ok") if r.attempt >= 2 else Fail("flake"),
        "stop?": stop_in(3),
    }


def test_complex_run_and_replay_from_the_recorded_journal() -> None:
    rows_, root = complex_graph()
    d = Driver(rows_, root, results=complex_results(), signals=[Signal(1, "go", "g1")])
    assert done(d) == {"finished": True}
    fresh = replay(d)
    assert fresh.outcome == Outcome(True, {"finished": True})
    assert (fresh.steps, fresh.records) == ([], [])
    assert fresh.stamps == d.evaluations[-1].stamps


def test_replay_from_scratch_reaches_the_same_outcome_at_every_point() -> None:
    rows_, root = complex_graph()
    d = Driver(rows_, root, results=complex_results(), signals=[Signal(i, "go", i) for i in range(1, 4)])
    history: list[tuple[float, Journal, list[Signal]]] = []
    for _ in range(400):
        ev = d.round()
        snapshot = Journal()
        for key, record in d.run.journal.records.items():
            snapshot.add(key, copy.deepcopy(record))
        history.append((d.now, snapshot, list(d.run.signals)))
        if ev.outcome is not None:
            break
        if not ev.records and not ev.steps and ev.wake_at is not None:
            d.now = ev.wake_at
    assert d.outcome == Outcome(True, {"finished": True})
    # A crash at any point: a new worker rebuilds the instance from the durable
    # journal (in-flight steps lost) and drives it to the same end.
    for now, journal, signals in history[:: max(1, len(history) // 25)]:
        crashed = Driver(rows_, root, results=complex_results(), journal=journal, now=now, signals=signals)
        assert crashed.go() == Outcome(True, {"finished": True})


def test_evaluation_is_pure() -> None:
    rows_, root = complex_graph()
    d = Driver(rows_, root, results=complex_results(), signals=[Signal(1, "go", "x")])
    d.go(until=T0)
    before = copy.deepcopy(d.run.journal.records)
    signals = list(d.run.signals)
    first = evaluate(d.run, d.now, in_flight=set(d.in_flight), cron=every_minute)
    second = evaluate(d.run, d.now, in_flight=set(d.in_flight), cron=every_minute)
    assert first == second
    assert d.run.journal.records == before
    assert d.run.signals == signals


def test_crash_reruns_the_in_flight_step_under_the_same_key() -> None:
    g = G()
    root = g.seq(g.sql("a"), g.sql("b", id="b"), g.sql("c"))
    d = Driver(g.rows, root, results={"b": HOLD})
    d.go()
    [key] = d.in_flight
    d2 = Driver(g.rows, root, journal=d.run.journal, now=d.now)
    ev = d2.round()
    assert [r.key for r in ev.steps] == [key] == [f"{ROOT}/b"]
    assert done(d2) == rows("c")


# -- the steps that can end an instance (the engine fuses their checkpoint with the end) --


def test_tail_keys_are_the_last_step_of_the_root_chain() -> None:
    g = G()
    last = g.sql("d")
    root = g.seq(g.sql("a"), g.sql("b"), g.sql("c"), last)
    run = Run(INSTANCE, build_graph(g.rows, root), Journal())
    assert _tail_keys(run) == {f"{run.root_scope}/{last}"}


def test_a_lone_step_is_its_own_tail_and_a_loop_has_none() -> None:
    g = G()
    only = g.sql("a")
    run = Run(INSTANCE, build_graph(g.rows, only), Journal())
    assert _tail_keys(run) == {f"{run.root_scope}/{only}"}
    g = G()
    looped = g.loop(g.sql("a"))
    run = Run(INSTANCE, build_graph(g.rows, looped), Journal())
    assert _tail_keys(run) == {f"{run.root_scope}/{looped}"}  # a LOOP node is never a step key
