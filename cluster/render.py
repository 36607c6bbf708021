"""Draw a workflow graph: Mermaid, Graphviz DOT, or a standalone SVG picture.

The input is the rows of ``df.instance_nodes`` (with their inferred status)
or a dry-run graph (``df._flatten`` of a Durofut value, no status): a list of
:class:`GraphNode` and the root's id. Nothing here touches a database or an
external tool.

The picture is a flow chart, not the storage tree: ``THEN`` nodes are not
drawn (a sequence is an arrow from the end of its left side to the start of
its right side); ``IF``, ``JOIN``, ``RACE``, ``LOOP``, ``RETRY`` and
``TIMEOUT`` are boxes that fan out to their parts; a loop's last step points
back to the ``LOOP`` box (a dashed "repeat" arrow). Every drawn box is a real
``df.nodes`` row and carries its inferred status.

The SVG layout is a small layered (Sugiyama-style) layout, deterministic for
a given input: longest-path layers over the forward arrows, one barycenter
pass to order each layer, boxes placed near the mean of their predecessors
without overlapping. Colours are presentation attributes only (no ``style``
element or attribute), so the picture also renders under a strict
Content-Security-Policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

__all__ = [
    "FORMATS",
    "STATUS_COLOURS",
    "GraphNode",
    "Layout",
    "dot",
    "label",
    "layout",
    "mermaid",
    "render",
    "svg",
]

FORMATS = ("mermaid", "dot", "svg")

#: fill, stroke per inferred status (None: a dry run, no status)
STATUS_COLOURS: dict[str | None, tuple[str, str]] = {
    "completed": ("#bbf7d0", "#15803d"),
    "running": ("#bfdbfe", "#1d4ed8"),
    "pending": ("#e5e7eb", "#6b7280"),
    "failed": ("#fecaca", "#b91c1c"),
    "skipped": ("#f5f5f4", "#a8a29e"),
    None: ("#ffffff", "#374151"),
}
#: the status marks of df.explain, except running: ● (⏳ needs an emoji font)
MARKERS = {"completed": "✓", "failed": "✗", "running": "●", "pending": "○", "skipped": "⊘"}

LEAVES = frozenset({"SQL", "SLEEP", "WAIT_SCHEDULE", "HTTP", "HTTP_MULTIPART", "SIGNAL", "STEP", "BREAK"})
LABEL_MAX = 40  # characters of a box's label

# Geometry of the SVG picture (pixels).
CHAR_WIDTH = 7.3  # a 12px monospace character
BOX_HEIGHT = 34
BOX_MIN_WIDTH = 70
BOX_PADDING = 26  # left + right, room for the status marker
LAYER_GAP = 50
NODE_GAP = 24
MARGIN = 20
BACK_EDGE_BULGE = 44
BACK_EDGE_ROOM = 90  # right of the widest box: the bulge and its label
LEGEND_HEIGHT = 30


@dataclass(frozen=True)
class GraphNode:
    """One ``df.nodes`` row, as far as drawing goes."""

    id: str
    node_type: str
    query: str | None = None
    result_name: str | None = None
    left: str | None = None
    right: str | None = None
    status: str | None = None  # the inferred status; None in a dry run
    detail: str | None = None  # extra tooltip lines (timings, errors)

    @classmethod
    def from_row(cls, row: dict[str, Any], detail: str | None = None) -> GraphNode:
        """From a ``df.instance_nodes`` or ``df._flatten`` row (a dict)."""
        return cls(
            id=str(row.get("node_id") or row.get("id")),
            node_type=str(row["node_type"]),
            query=row.get("query"),
            result_name=row.get("result_name"),
            left=row.get("left_node"),
            right=row.get("right_node"),
            status=row.get("inferred_status"),
            detail=detail,
        )

    @property
    def config(self) -> dict[str, Any]:
        """The JSON configuration in ``query`` (IF, LOOP, JOIN, RETRY...), or {}."""
        if not self.query or not self.query.lstrip().startswith("{"):
            return {}
        try:
            value = json.loads(self.query)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Box:
    id: str
    text: str
    node_type: str
    status: str | None
    title: str


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    text: str = ""
    back: bool = False  # a loop's "repeat" arrow: not used for layering


@dataclass
class Layout:
    """The flow chart of a graph and, once laid out, where everything goes."""

    boxes: list[Box] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    layer: dict[str, int] = field(default_factory=dict)
    x: dict[str, float] = field(default_factory=dict)  # left edge
    y: dict[str, float] = field(default_factory=dict)  # top edge
    width: dict[str, float] = field(default_factory=dict)
    total_width: float = 0.0
    total_height: float = 0.0


# -- labels ---------------------------------------------------------------------------------


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def label(node: GraphNode) -> str:
    """A box's text: ``df.explain``'s line for the node, shortened to LABEL_MAX characters."""
    config = node.config
    kind = node.node_type
    if kind == "SQL":
        text = "SQL: " + " ".join((node.query or "").split())
    elif kind == "SLEEP":
        text = f"SLEEP {node.query or '?'}s"
    elif kind == "WAIT_SCHEDULE":
        text = f"WAIT '{config.get('cron_expr', '?')}'"
    elif kind in ("HTTP", "HTTP_MULTIPART"):
        text = f"{kind} {config.get('method', 'POST')} {config.get('url', '')}"
    elif kind == "SIGNAL":
        timeout = config.get("timeout_seconds")
        text = f"SIGNAL '{config.get('signal_name', '?')}'" + (
            f" ({timeout}s)" if timeout is not None else ""
        )
    elif kind == "LOOP":
        text = "LOOP (while)" if "condition_node" in config else "LOOP (infinite)"
    elif kind == "BREAK":
        value = config.get("break_value")
        text = "BREAK" if value is None else f"BREAK '{_cut(str(value), 20)}'"
    elif kind == "JOIN":
        extra = config.get("extra_nodes")
        text = f"JOIN ({2 + (len(extra) if isinstance(extra, list) else 0)})"
    elif kind == "STEP":
        text = f"STEP {config.get('kind', '?')}"
    elif kind == "RETRY":
        text = f"RETRY ({config.get('max_attempts', '?')} attempts)"
    elif kind == "TIMEOUT":
        text = f"TIMEOUT {config.get('seconds', '?')}s"
    elif kind == "IF" and "condition_node" not in config and config.get("result_name"):
        text = f"IF has rows '{config['result_name']}'"
    else:
        text = kind
    if node.result_name and kind != "THEN":
        text += f" |=> '{node.result_name}'"
    return _cut(text, LABEL_MAX)


def _title(node: GraphNode) -> str:
    lines = [f"{node.node_type} {node.id}"]
    if node.status is not None:
        lines.append(f"status: {node.status}")
    if node.query and node.node_type in ("SQL", "SLEEP"):
        lines.append(_cut(node.query, 400))
    if node.detail:
        lines.append(node.detail)
    return "\n".join(lines)


# -- the flow chart -------------------------------------------------------------------------


def flow(nodes: list[GraphNode], root: str) -> Layout:
    """The boxes and arrows of the graph rooted at ``root`` (THEN nodes become arrows)."""
    by_id = {node.id: node for node in nodes}
    chart = Layout()
    drawn: set[str] = set()
    seen_edges: set[tuple[str, str, bool]] = set()

    def box(node: GraphNode) -> str:
        drawn.add(node.id)
        chart.boxes.append(Box(node.id, label(node), node.node_type, node.status, _title(node)))
        return node.id

    def arrow(sources: list[str], target: str, text: str = "", back: bool = False) -> None:
        for source in sources:
            key = (source, target, back)
            if key not in seen_edges:
                seen_edges.add(key)
                chart.edges.append(Edge(source, target, text, back))

    def build(node_id: str | None, visiting: frozenset[str]) -> tuple[str, list[str]] | None:
        """Draw the subgraph; return its entry box and its exit boxes (None: nothing to draw)."""
        node = by_id.get(node_id or "")
        if node is None or node.id in visiting or node.id in drawn:
            return None  # missing, or a damaged graph that reaches a node twice
        inside = visiting | {node.id}
        kind = node.node_type
        config = node.config
        if kind == "THEN":
            first = build(node.left, inside)
            second = build(node.right, inside)
            if first is None or second is None:
                return first or second
            arrow(first[1], second[0])
            return first[0], second[1]
        if kind == "IF":
            condition = build(config.get("condition_node"), inside) if "condition_node" in config else None
            me = box(node)
            entry = me
            if condition is not None:
                arrow(condition[1], me)
                entry = condition[0]
            exits: list[str] = []
            for part, text in ((node.left, "then"), (node.right, "else")):
                arm = build(part, inside)
                if arm is not None:
                    arrow([me], arm[0], text)
                    exits += arm[1]
            return entry, exits or [me]
        if kind in ("JOIN", "RACE"):
            me = box(node)
            extra = config.get("extra_nodes") if kind == "JOIN" else None
            branches = [node.left, node.right] + [str(e) for e in (extra if isinstance(extra, list) else [])]
            exits = []
            for number, part in enumerate(branches, 1):
                branch = build(part, inside)
                if branch is not None:
                    arrow([me], branch[0], f"{number}")
                    exits += branch[1]
            return me, exits or [me]
        if kind == "LOOP":
            me = box(node)
            body = build(node.left, inside)
            condition = build(config.get("condition_node"), inside) if "condition_node" in config else None
            last = [me]
            if body is not None:
                arrow([me], body[0], "body")
                last = body[1]
            if condition is not None:
                arrow(last, condition[0], "while")
                last = condition[1]
            if last != [me]:
                arrow(last, me, "repeat", back=True)
            return me, last
        if kind in ("RETRY", "TIMEOUT"):
            me = box(node)
            body = build(node.left, inside)
            if body is None:
                return me, [me]
            arrow([me], body[0])
            return me, body[1]
        me = box(node)  # a leaf (or an unknown type: drawn as a box)
        return me, [me]

    build(root, frozenset())
    rank = {b.id: index for index, b in enumerate(chart.boxes)}
    chart.edges.sort(key=lambda e: (rank[e.source], e.back, rank[e.target]))
    # Nodes the walk did not reach (a damaged graph) are still shown, unconnected.
    for node in nodes:
        if node.id not in drawn and node.node_type != "THEN":
            box(node)
    return chart


# -- layout ---------------------------------------------------------------------------------


def _box_width(text: str) -> float:
    return max(BOX_MIN_WIDTH, round(len(text) * CHAR_WIDTH + BOX_PADDING + 12))


def layout(nodes: list[GraphNode], root: str) -> Layout:
    """The flow chart with coordinates: layers top to bottom, boxes left to right."""
    chart = flow(nodes, root)
    order = [b.id for b in chart.boxes]
    rank = {box_id: index for index, box_id in enumerate(order)}
    preds: dict[str, list[str]] = {box_id: [] for box_id in order}
    succs: dict[str, list[str]] = {box_id: [] for box_id in order}
    for edge in chart.edges:
        if not edge.back:
            preds[edge.target].append(edge.source)
            succs[edge.source].append(edge.target)
    # Longest-path layers (Kahn's order; the forward arrows form a DAG by construction).
    waiting = {box_id: len(preds[box_id]) for box_id in order}
    ready = [box_id for box_id in order if waiting[box_id] == 0]
    layer = dict.fromkeys(order, 0)
    position = 0
    while position < len(ready):
        current = ready[position]
        position += 1
        for nxt in succs[current]:
            layer[nxt] = max(layer[nxt], layer[current] + 1)
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                ready.append(nxt)
    for box_id in order:  # defensive: anything left in a cycle stays where it is
        if waiting[box_id] > 0:
            layer[box_id] = max((layer[p] + 1 for p in preds[box_id] if waiting[p] == 0), default=0)
    chart.layer = layer
    layers: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for box_id in order:
        layers[layer[box_id]].append(box_id)
    width = {b.id: _box_width(b.text) for b in chart.boxes}
    chart.width = width
    centre: dict[str, float] = {}
    for depth, members in enumerate(layers):
        # Order by the mean position of the predecessors (barycenter), then by creation.
        if depth:
            members.sort(
                key=lambda b: (
                    sum(centre[p] for p in preds[b]) / len(preds[b]) if preds[b] else float("inf"),
                    rank[b],
                )
            )
        desired: list[float] = []
        cursor = 0.0
        for box_id in members:
            above = [centre[p] for p in preds[box_id] if p in centre]
            desired.append(sum(above) / len(above) if above else cursor + width[box_id] / 2)
            cursor += width[box_id] + NODE_GAP
        placed: list[float] = []
        right_edge = float("-inf")
        for box_id, want in zip(members, desired, strict=True):
            left = max(want - width[box_id] / 2, right_edge + NODE_GAP)
            placed.append(left)
            right_edge = left + width[box_id]
        # Centre the layer on what its boxes wanted (a uniform shift keeps the gaps).
        if members:
            shift = sum(
                (left + width[b] / 2) - want for b, left, want in zip(members, placed, desired, strict=True)
            ) / len(members)
            for box_id, left in zip(members, placed, strict=True):
                chart.x[box_id] = left - shift
                centre[box_id] = left - shift + width[box_id] / 2
                chart.y[box_id] = MARGIN + depth * (BOX_HEIGHT + LAYER_GAP)
    if chart.x:
        offset = MARGIN - min(chart.x.values())
        for box_id in chart.x:
            chart.x[box_id] = round(chart.x[box_id] + offset, 1)
        right = max(chart.x[b] + width[b] for b in chart.x)
        has_back = any(edge.back for edge in chart.edges)
        chart.total_width = round(right + MARGIN + (BACK_EDGE_ROOM if has_back else 0), 1)
        chart.total_height = MARGIN * 2 + len(layers) * BOX_HEIGHT + (len(layers) - 1) * LAYER_GAP
    else:
        chart.total_width = chart.total_height = MARGIN * 2
    return chart


# -- SVG ------------------------------------------------------------------------------------


def _num(value: float) -> str:
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def svg(nodes: list[GraphNode], root: str, *, legend: bool = True) -> str:
    """A standalone SVG picture of the graph, one colour per inferred status."""
    chart = layout(nodes, root)
    statuses = [s for s in STATUS_COLOURS if s is not None and any(b.status == s for b in chart.boxes)]
    show_legend = legend and bool(statuses)
    width = max(chart.total_width, 420.0 if show_legend else 0.0)
    height = chart.total_height + (LEGEND_HEIGHT if show_legend else 0)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="durable-graph" width="{_num(width)}" '
        f'height="{_num(height)}" viewBox="0 0 {_num(width)} {_num(height)}" '
        'font-family="ui-monospace, SFMono-Regular, Menlo, Consolas, monospace" font-size="12">',
        "<defs>"
        '<marker id="durable-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#6b7280"/>'
        "</marker></defs>",
        f'<rect class="background" x="0" y="0" width="{_num(width)}" height="{_num(height)}" '
        'fill="#ffffff"/>',
    ]
    boxes = {b.id: b for b in chart.boxes}
    for edge in chart.edges:
        out.append(_svg_edge(chart, edge))
    for box_id in (b.id for b in chart.boxes):
        out.append(_svg_box(chart, boxes[box_id]))
    if show_legend:
        x = float(MARGIN)
        y = chart.total_height + 4
        out.append('<g class="legend">')
        for status in statuses:
            fill, stroke = STATUS_COLOURS[status]
            out.append(
                f'<rect x="{_num(x)}" y="{_num(y)}" width="14" height="14" rx="3" fill="{fill}" '
                f'stroke="{stroke}"/><text x="{_num(x + 19)}" y="{_num(y + 11)}" fill="#374151">'
                f"{MARKERS[status]} {status}</text>"
            )
            x += 30 + len(status) * CHAR_WIDTH + 20
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _svg_box(chart: Layout, box: Box) -> str:
    x, y, w, h = chart.x[box.id], chart.y[box.id], chart.width[box.id], BOX_HEIGHT
    fill, stroke = STATUS_COLOURS.get(box.status, STATUS_COLOURS[None])
    status = box.status or "none"
    dash = ' stroke-dasharray="4 3"' if box.status == "skipped" else ""
    if box.node_type == "IF":
        cut = 12.0
        points = (
            f"{_num(x + cut)},{_num(y)} {_num(x + w - cut)},{_num(y)} {_num(x + w)},{_num(y + h / 2)} "
            f"{_num(x + w - cut)},{_num(y + h)} {_num(x + cut)},{_num(y + h)} {_num(x)},{_num(y + h / 2)}"
        )
        shape = f'<polygon points="{points}" fill="{fill}" stroke="{stroke}" stroke-width="1.5"{dash}/>'
    else:
        radius = 4 if box.node_type in LEAVES else 12
        shape = (
            f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(w)}" height="{h}" rx="{radius}" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="1.5"{dash}/>'
        )
    marker = MARKERS.get(box.status or "")
    text_colour = "#78716c" if box.status == "skipped" else "#111827"
    parts = [
        f'<g class="node status-{status}" data-node-id={quoteattr(box.id)} data-status="{status}" '
        f"data-type={quoteattr(box.node_type)}>",
        f"<title>{escape(box.title)}</title>",
        shape,
        f'<text x="{_num(x + 10)}" y="{_num(y + h / 2 + 4)}" fill="{text_colour}">{escape(box.text)}</text>',
    ]
    if marker:
        parts.append(
            f'<text class="marker" x="{_num(x + w - 8)}" y="{_num(y + h / 2 + 4)}" text-anchor="end" '
            f'fill="{stroke}">{marker}</text>'
        )
    parts.append("</g>")
    return "".join(parts)


def _svg_edge(chart: Layout, edge: Edge) -> str:
    sw, tw = chart.width[edge.source], chart.width[edge.target]
    sx, sy = chart.x[edge.source], chart.y[edge.source]
    tx, ty = chart.x[edge.target], chart.y[edge.target]
    data = f"data-from={quoteattr(edge.source)} data-to={quoteattr(edge.target)}"
    text = ""
    if edge.back:
        x1, y1 = sx + sw, sy + BOX_HEIGHT / 2
        x2, y2 = tx + tw, ty + BOX_HEIGHT / 2
        bulge = max(x1, x2) + BACK_EDGE_BULGE
        path = (
            f"M {_num(x1)} {_num(y1)} C {_num(bulge)} {_num(y1)}, {_num(bulge)} {_num(y2)}, "
            f"{_num(x2)} {_num(y2)}"
        )
        if edge.text:
            text = (
                f'<text x="{_num(max(x1, x2) + BACK_EDGE_BULGE * 0.75 + 3)}" y="{_num((y1 + y2) / 2 + 3)}" '
                f'font-size="10" fill="#6b7280">{escape(edge.text)}</text>'
            )
        return (
            f'<g class="edge back" {data}><path d="{path}" fill="none" stroke="#9ca3af" '
            f'stroke-width="1.2" stroke-dasharray="5 4" marker-end="url(#durable-arrow)"/>{text}</g>'
        )
    x1, y1 = sx + sw / 2, sy + BOX_HEIGHT
    x2, y2 = tx + tw / 2, ty
    bend = max((y2 - y1) / 2, 10.0)
    path = (
        f"M {_num(x1)} {_num(y1)} C {_num(x1)} {_num(y1 + bend)}, {_num(x2)} {_num(y2 - bend)}, "
        f"{_num(x2)} {_num(y2)}"
    )
    if edge.text:
        text = (
            f'<text x="{_num((x1 + x2) / 2 + 4)}" y="{_num((y1 + y2) / 2 + 3)}" font-size="10" '
            f'fill="#6b7280">{escape(edge.text)}</text>'
        )
    return (
        f'<g class="edge" {data}><path d="{path}" fill="none" stroke="#6b7280" stroke-width="1.2" '
        f'marker-end="url(#durable-arrow)"/>{text}</g>'
    )


# -- Mermaid and DOT ------------------------------------------------------------------------


def _mermaid_text(text: str) -> str:
    return (
        text.replace("&", "#amp;")
        .replace('"', "#quot;")
        .replace("<", "#lt;")
        .replace(">", "#gt;")
        .replace("|", "#124;")
    )


def mermaid(nodes: list[GraphNode], root: str) -> str:
    """A Mermaid ``flowchart`` (paste into any Markdown that renders Mermaid)."""
    chart = flow(nodes, root)
    lines = ["flowchart TD"]
    for box in chart.boxes:
        text = _mermaid_text(box.text)
        shape = f'{{"{text}"}}' if box.node_type == "IF" else f'["{text}"]'
        suffix = f":::{box.status}" if box.status else ""
        lines.append(f"    n_{box.id}{shape}{suffix}")
    for edge in chart.edges:
        link = "-.->" if edge.back else "-->"
        text = f"|{_mermaid_text(edge.text)}|" if edge.text else ""
        lines.append(f"    n_{edge.source} {link}{text} n_{edge.target}")
    for status, (fill, stroke) in STATUS_COLOURS.items():
        if status is not None and any(b.status == status for b in chart.boxes):
            dash = ",stroke-dasharray:4 3" if status == "skipped" else ""
            lines.append(f"    classDef {status} fill:{fill},stroke:{stroke}{dash}")
    return "\n".join(lines) + "\n"


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def dot(nodes: list[GraphNode], root: str) -> str:
    """A Graphviz ``digraph`` (``dot -Tpng``)."""
    chart = flow(nodes, root)
    lines = [
        "digraph durable {",
        '    graph [rankdir=TB, fontname="monospace"];',
        '    node [shape=box, style="rounded,filled", fontname="monospace", fontsize=11, '
        'fillcolor="#ffffff"];',
        '    edge [fontname="monospace", fontsize=9, color="#6b7280"];',
    ]
    for box in chart.boxes:
        fill, stroke = STATUS_COLOURS.get(box.status, STATUS_COLOURS[None])
        attrs = [f'label="{_dot_text(box.text)}"', f'fillcolor="{fill}"', f'color="{stroke}"']
        if box.node_type == "IF":
            attrs.append("shape=hexagon")
        if box.status:
            attrs.append(f'tooltip="{box.status}"')
        if box.status == "skipped":
            attrs.append('style="rounded,filled,dashed"')
        lines.append(f'    "{box.id}" [{", ".join(attrs)}];')
    for edge in chart.edges:
        attrs = [f'label="{_dot_text(edge.text)}"'] if edge.text else []
        if edge.back:
            attrs += ["style=dashed", "constraint=false"]
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f'    "{edge.source}" -> "{edge.target}"{suffix};')
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(nodes: list[GraphNode], root: str, fmt: str) -> str:
    """``fmt`` is one of FORMATS."""
    if fmt == "mermaid":
        return mermaid(nodes, root)
    if fmt == "dot":
        return dot(nodes, root)
    if fmt == "svg":
        return svg(nodes, root)
    raise ValueError(f"unknown graph format {fmt!r}: one of {', '.join(FORMATS)}")
