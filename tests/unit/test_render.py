"""Graph rendering: the flow chart, the layered SVG layout, Mermaid and DOT (no database)."""

from __future__ import annotations

import itertools
import json
import time
import xml.etree.ElementTree as ET

import pytest

from durable_cluster import render
from durable_cluster.render import GraphNode

SVG = "{http://www.w3.org/2000/svg}"


def node(nid: int, kind: str, query: str | None = None, **kwargs: object) -> GraphNode:
    return GraphNode(id=f"{nid:08x}", node_type=kind, query=query, **kwargs)  # type: ignore[arg-type]


def ref(nid: int) -> str:
    return f"{nid:08x}"


def sample() -> list[GraphNode]:
    """SQL ~> IF(cond, then, else) ~> JOIN3(sleep, http, sql) ~> LOOP(body, while), with statuses."""
    return [
        node(1, "THEN", left=ref(2), right=ref(3)),
        node(2, "SQL", "SELECT 1 AS one", result_name="one", status="completed"),
        node(3, "THEN", left=ref(4), right=ref(9)),
        node(4, "IF", json.dumps({"condition_node": ref(5)}), left=ref(6), right=ref(7), status="completed"),
        node(5, "SQL", "SELECT true", status="completed"),
        node(6, "SQL", "SELECT 'then'", status="completed"),
        node(7, "SQL", "SELECT 'else'", status="skipped"),
        node(9, "THEN", left=ref(10), right=ref(14)),
        node(
            10, "JOIN", json.dumps({"extra_nodes": [ref(13)]}), left=ref(11), right=ref(12), status="running"
        ),
        node(11, "SLEEP", "5", status="running"),
        node(12, "HTTP", json.dumps({"method": "GET", "url": "https://example.com/x"}), status="failed"),
        node(13, "SQL", "SELECT \"q\" & '<script>'", status="pending"),
        node(14, "LOOP", json.dumps({"condition_node": ref(16)}), left=ref(15), status="pending"),
        node(15, "SQL", "UPDATE t SET x = x + 1", status="pending"),
        node(16, "SQL", "SELECT x < 10 FROM t", status="pending"),
    ]


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def boxes(root: ET.Element) -> dict[str, ET.Element]:
    return {g.attrib["data-node-id"]: g for g in root.iter(f"{SVG}g") if "node" in g.attrib.get("class", "")}


def test_the_flow_chart_draws_every_node_but_then_and_connects_the_parts() -> None:
    chart = render.flow(sample(), ref(1))
    drawn = [box.id for box in chart.boxes]
    assert sorted(drawn) == sorted(n.id for n in sample() if n.node_type != "THEN")
    edges = {(e.source, e.target): e for e in chart.edges}
    assert (ref(2), ref(5)) in edges  # a sequence: the left side's end to the right side's start
    assert (ref(5), ref(4)) in edges  # the condition feeds the IF
    assert edges[(ref(4), ref(6))].text == "then"
    assert edges[(ref(4), ref(7))].text == "else"
    assert {edges[(ref(10), ref(n))].text for n in (11, 12, 13)} == {"1", "2", "3"}
    assert all((ref(n), ref(14)) in edges for n in (11, 12, 13))  # the join waits for every branch
    assert edges[(ref(15), ref(16))].text == "while"
    back = [e for e in chart.edges if e.back]
    assert [(e.source, e.target, e.text) for e in back] == [(ref(16), ref(14), "repeat")]


def test_labels_follow_explain() -> None:
    assert render.label(node(1, "SQL", "SELECT\n  1")) == "SQL: SELECT 1"
    assert render.label(node(1, "SQL", "SELECT " + "x" * 60)).endswith("...")
    assert len(render.label(node(1, "SQL", "SELECT " + "x" * 60))) == render.LABEL_MAX
    assert render.label(node(1, "SLEEP", "5")) == "SLEEP 5s"
    assert render.label(node(1, "SIGNAL", json.dumps({"signal_name": "go", "timeout_seconds": 9}))) == (
        "SIGNAL 'go' (9s)"
    )
    assert (
        render.label(node(1, "WAIT_SCHEDULE", json.dumps({"cron_expr": "* * * * *"}))) == "WAIT '* * * * *'"
    )
    assert render.label(node(1, "LOOP", "{}")) == "LOOP (infinite)"
    assert render.label(node(1, "JOIN", json.dumps({"extra_nodes": ["a", "b"]}))) == "JOIN (4)"
    assert render.label(node(1, "RETRY", json.dumps({"max_attempts": 3}))) == "RETRY (3 attempts)"
    assert render.label(node(1, "TIMEOUT", json.dumps({"seconds": 2}))) == "TIMEOUT 2s"
    assert render.label(node(1, "STEP", json.dumps({"kind": "email"}))) == "STEP email"
    assert render.label(node(1, "BREAK", json.dumps({"break_value": "done"}))) == "BREAK 'done'"
    assert render.label(node(1, "IF", json.dumps({"result_name": "rows"}))) == "IF has rows 'rows'"
    assert render.label(node(1, "SQL", "SELECT 1", result_name="n")) == "SQL: SELECT 1 |=> 'n'"


def test_the_svg_is_standalone_escaped_and_coloured_by_status() -> None:
    text = render.svg(sample(), ref(1))
    root = parse(text)  # well-formed XML
    assert root.tag == f"{SVG}svg"
    assert "<script" not in text
    assert "&lt;script&gt;" in text
    assert "&amp;" in text
    assert "style" not in text  # presentation attributes only: renders under a strict CSP
    drawn = boxes(root)
    assert len(drawn) == 12
    for original in sample():
        if original.node_type == "THEN":
            continue
        group = drawn[original.id]
        assert group.attrib["data-status"] == original.status
        assert f"status-{original.status}" in group.attrib["class"]
        shape = next(child for child in group if child.tag in (f"{SVG}rect", f"{SVG}polygon"))
        assert (shape.attrib["fill"], shape.attrib["stroke"]) == render.STATUS_COLOURS[original.status]
        title = group.find(f"{SVG}title")
        assert title is not None
        assert title.text is not None
        assert f"status: {original.status}" in title.text
    assert drawn[ref(4)].find(f"{SVG}polygon") is not None  # IF is a hexagon
    legend = [g for g in root.iter(f"{SVG}g") if g.attrib.get("class") == "legend"]
    assert len(legend) == 1
    assert "dashed" not in text
    assert len([g for g in root.iter(f"{SVG}g") if "back" in g.attrib.get("class", "")]) == 1


def test_the_layout_is_layered_and_does_not_overlap() -> None:
    chart = render.layout(sample(), ref(1))
    for edge in chart.edges:
        if not edge.back:
            assert chart.layer[edge.target] > chart.layer[edge.source]
            assert chart.y[edge.target] > chart.y[edge.source]
    by_layer: dict[int, list[str]] = {}
    for box_id, depth in chart.layer.items():
        by_layer.setdefault(depth, []).append(box_id)
    for members in by_layer.values():
        spans = sorted((chart.x[b], chart.x[b] + chart.width[b]) for b in members)
        for (_, right), (left, _) in itertools.pairwise(spans):
            assert left >= right + render.NODE_GAP - 0.11
    assert min(chart.x.values()) == render.MARGIN
    assert all(chart.x[b] + chart.width[b] <= chart.total_width for b in chart.x)


def test_rendering_is_deterministic() -> None:
    nodes = sample()
    for fmt in render.FORMATS:
        first = render.render(nodes, ref(1), fmt)
        assert render.render(list(nodes), ref(1), fmt) == first
    with pytest.raises(ValueError, match="unknown graph format"):
        render.render(nodes, ref(1), "png")


def test_mermaid_and_dot() -> None:
    mermaid = render.mermaid(sample(), ref(1))
    assert mermaid.startswith("flowchart TD\n")
    assert f'    n_{ref(4)}{{"IF"}}:::completed' in mermaid
    assert f"    n_{ref(4)} -->|then| n_{ref(6)}" in mermaid
    assert f"    n_{ref(16)} -.->|repeat| n_{ref(14)}" in mermaid
    assert "classDef skipped fill:#f5f5f4" in mermaid
    assert "#quot;q#quot;" in mermaid
    assert '"q"' not in mermaid
    dot = render.dot(sample(), ref(1))
    assert dot.startswith("digraph durable {")
    assert dot.rstrip().endswith("}")
    assert f'"{ref(16)}" -> "{ref(14)}" [label="repeat", style=dashed, constraint=false];' in dot
    assert '\\"q\\"' in dot
    assert 'fillcolor="#bfdbfe"' in dot  # running


def test_a_dry_run_has_no_status() -> None:
    nodes = [
        node(1, "THEN", left=ref(2), right=ref(3)),
        node(2, "SQL", "SELECT 1"),
        node(3, "SQL", "SELECT 2"),
    ]
    text = render.svg(nodes, ref(1))
    root = parse(text)
    assert {g.attrib["data-status"] for g in boxes(root).values()} == {"none"}
    assert not [g for g in root.iter(f"{SVG}g") if g.attrib.get("class") == "legend"]
    assert ":::" not in render.mermaid(nodes, ref(1))


def test_damaged_graphs_are_still_drawn() -> None:
    nodes = [
        node(1, "THEN", left=ref(2), right=ref(9)),  # right side missing
        node(2, "THEN", left=ref(3), right=ref(1)),  # a cycle back to the root
        node(3, "SQL", "SELECT 1"),
        node(4, "SQL", "SELECT 'unreachable'"),
        node(5, "MYSTERY", "?"),
    ]
    root = parse(render.svg(nodes, ref(1)))
    assert set(boxes(root)) == {ref(3), ref(4), ref(5)}
    assert parse(render.svg([], "00000000")).tag == f"{SVG}svg"


def test_big_and_deep_graphs_are_fast() -> None:
    # A 256-deep chain of THEN nodes (the depth limit) and 500 leaves side by side in a JOIN.
    deep = [node(i, "THEN", left=ref(1000 + i), right=ref(i + 1)) for i in range(1, 256)]
    deep += [node(1000 + i, "SQL", f"SELECT {i}", status="completed") for i in range(1, 256)]
    deep.append(node(256, "SQL", "SELECT 'last'", status="running"))
    wide = [
        node(
            1, "JOIN", json.dumps({"extra_nodes": [ref(i) for i in range(4, 502)]}), left=ref(2), right=ref(3)
        )
    ]
    wide += [node(i, "SQL", f"SELECT {i}") for i in range(2, 502)]
    started = time.monotonic()
    deep_root = parse(render.svg(deep, ref(1)))
    wide_root = parse(render.svg(wide, ref(1)))
    assert time.monotonic() - started < 5
    assert len(boxes(deep_root)) == 256
    assert len(boxes(wide_root)) == 501
    chart = render.layout(deep, ref(1))
    assert max(chart.layer.values()) == 255
