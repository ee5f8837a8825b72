"""Pure functions: a :class:`~sage_nb.metrics.JobSnapshot` -> the graph view model.

The view model is plain JSON-safe data — node and edge dicts with positions, colours,
labels, percentages and the details shown in the side panel — so the widget's JS, the
SVG of the HTML report and the matplotlib rendering all draw the same thing, and tests
assert on it without a browser. Names are kept as data; every renderer escapes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..metrics import ConnectionSnapshot, JobSnapshot, TaskSnapshot
from . import layout
from .palette import EDGE_IDLE, LEVEL_COLORS, aggregate_state, load_level, load_percent, state_colors
from .tables import Rates, connection_ids, format_rate, logical_edge_ids, short_repr, strategy_label

__all__ = ["VIEWS", "error_view", "graph_view", "status_view", "stops_text"]

VIEWS = ("logical", "physical")
LABEL_SIZE = {"logical": (164.0, 50.0), "physical": (150.0, 34.0)}
NO_RATES = Rates({}, {}, {}, {}, average=True)


def _r(x: float) -> float:
    return round(x, 1)


def stops_text(received: int, expected: int, state: str) -> str:
    """'stop signals 2/3' while an instance drains, '' otherwise."""
    if expected and (0 < received < expected or state == "draining"):
        return f"stop signals {received}/{expected}"
    return ""


def _details(title: str, rows: list[list[Any]], lists: Sequence[tuple[str, list[str]]] = ()
             ) -> dict[str, Any]:
    return {"title": title, "rows": [[k, str(v)] for k, v in rows],
            "lists": [{"title": t, "items": items} for t, items in lists if items]}


def _rate_text(rate: float, rates: Rates) -> str:
    return ("avg " if rates.average else "") + format_rate(rate)


def _task_state(snap: JobSnapshot, t: TaskSnapshot) -> str:
    return "failed" if snap.error is not None and snap.error.instance == t.name else t.state


# ----------------------------------------------------------------------------- nodes
def _node(node_id: str, box: layout.Box, state: str, lines: list[str], kind: str,
          details: dict[str, Any]) -> dict[str, Any]:
    fill, text = state_colors(state)
    return {"id": node_id, "label": node_id, "state": state, "fill": fill, "text": text,
            "kind": kind, "lines": lines, "x": _r(box.x), "y": _r(box.y), "w": box.w, "h": box.h,
            "details": details}


def _task_node(snap: JobSnapshot, t: TaskSnapshot, box: layout.Box, rates: Rates) -> dict[str, Any]:
    state = _task_state(snap, t)
    stops = stops_text(t.stops_received, t.stops_expected, state)
    third = stops or f"in {t.packets_in} · out {t.packets_out}"
    rows: list[list[Any]] = [
        ["operator", t.operator], ["kind", t.kind], ["instance", t.parallel_index], ["state", state],
        ["packets in", t.packets_in], ["packets out", t.packets_out],
        ["rate in", _rate_text(rates.tasks.get(t.name, 0.0), rates)],
        ["busy", f"{rates.busy_ms.get(t.name, 0.0):.0f} ms/s ({t.busy_time:.2f} s)"],
        ["backpressured", f"{rates.blocked_ms.get(t.name, 0.0):.0f} ms/s ({t.blocked_time:.2f} s)"],
        ["stop signals", f"{t.stops_received}/{t.stops_expected}"],
    ]
    if t.queue is not None:
        cap = t.queue.capacity or "∞"
        rows += [["input queue", f"{t.queue.used}/{cap} (peak {t.queue.peak})"],
                 ["queue in / out", f"{t.queue.total_in} / {t.queue.total_out}"],
                 ["queue id", t.queue_id or ""]]
    if t.error:
        rows.append(["error", t.error])
    lists = [("top keys", [f"{k}: {n}" for k, n in t.top_keys]),
             ("last packets", [short_repr(p, 60) for p in t.last_packets])]
    return _node(t.name, box, state, [state, third], t.kind, _details(t.name, rows, lists))


def _operator_node(snap: JobSnapshot, name: str, kind: str, tasks: list[TaskSnapshot],
                   box: layout.Box, rates: Rates) -> dict[str, Any]:
    states = [_task_state(snap, t) for t in tasks]
    state = aggregate_state(states) if tasks else "starting"
    received = sum(t.stops_received for t in tasks)
    expected = sum(t.stops_expected for t in tasks)
    stops = stops_text(received, expected, "draining" if "draining" in states else state)
    p_in, p_out = sum(t.packets_in for t in tasks), sum(t.packets_out for t in tasks)
    rows: list[list[Any]] = [
        ["kind", kind], ["parallelism", len(tasks)], ["state", state],
        ["packets in", p_in], ["packets out", p_out],
        ["rate in", _rate_text(sum(rates.tasks.get(t.name, 0.0) for t in tasks), rates)],
        ["stop signals", f"{received}/{expected}"],
    ]
    inst = [f"{t.name}: {s}, in {t.packets_in}, out {t.packets_out}" for t, s in zip(tasks, states, strict=True)]
    second = f"{kind} ×{len(tasks)} · {state}" if len(tasks) > 1 else f"{kind} · {state}"
    return _node(name, box, state, [second, stops or f"in {p_in} · out {p_out}"], kind,
                 _details(name, rows, [("instances", inst)]))


# ----------------------------------------------------------------------------- edges
def _edge(edge_id: str, source: str, target: str, strategy: str, label: str, conns: list[ConnectionSnapshot],
          rate: float, rates: Rates, pts: list[layout.Point], centre: layout.Point,
          details: dict[str, Any]) -> dict[str, Any]:
    queues = {c.queue_id: c for c in conns}.values()        # a queue is shared by its writers
    fullest = max(queues, key=lambda c: c.load, default=None)
    pct = load_percent(fullest.used, fullest.capacity) if fullest else 0
    level = load_level(None if pct is None else pct / 100)
    packets = sum(c.packets_sent for c in conns)
    return {
        "id": edge_id, "source": source, "target": target, "strategy": strategy, "label": label,
        "used": fullest.used if fullest else 0, "capacity": fullest.capacity if fullest else None,
        "load": round(fullest.load, 4) if fullest else 0.0, "pct": pct, "level": level,
        "color": LEVEL_COLORS[level], "stroke": EDGE_IDLE if level == "green" else LEVEL_COLORS[level],
        "load_text": f"{pct}%" if pct is not None else f"{fullest.used if fullest else 0} queued",
        "packets": packets, "rate": round(rate, 2),
        "text": f"{packets} pkts · {_rate_text(rate, rates)}",
        "curve": [[_r(x), _r(y)] for x, y in pts],
        "arrow": [[_r(x), _r(y)] for x, y in layout.arrow_head(pts)],
        "lx": _r(centre[0]), "ly": _r(centre[1]), "details": details,
    }


def _conn_rows(c: ConnectionSnapshot, rate: str) -> list[list[Any]]:
    cap = c.capacity or "∞"
    pct = load_percent(c.used, c.capacity)
    return [["strategy", strategy_label(c.strategy, c.key_label)], ["packets sent", c.packets_sent],
            ["rate", rate], ["stop signals sent", c.stops_sent],
            ["target queue", f"{c.used}/{cap}" + (f" ({pct} %)" if pct is not None else "")],
            ["queue id", c.queue_id], ["target input", c.target_input_index],
            ["group / index", f"{c.broadcast_index} / {c.parallel_index}"]]


def _operators(snap: JobSnapshot) -> list[tuple[str, str, tuple[str, ...]]]:
    ops = [(o.name, o.kind, tuple(o.instances)) for o in snap.operators]
    known = {n for _, _, inst in ops for n in inst}
    for t in snap.tasks:          # tolerate tasks the operator list does not name
        if t.name not in known:
            ops.append((t.name, t.kind, (t.name,)))
    return ops


def _bounds(boxes: Sequence[layout.Box]) -> tuple[float, float]:
    w = max((b.x + b.w for b in boxes), default=0.0) + layout.MARGIN
    h = max((b.y + b.h for b in boxes), default=0.0) + layout.MARGIN
    return float(round(w)), float(round(h))


def _label_boxes(edges: list[dict[str, Any]], view: str) -> list[layout.Box]:
    w, h = LABEL_SIZE[view]
    return [layout.Box(e["lx"] - w / 2, e["ly"] - h / 2, w, h) for e in edges]


def physical_graph(snap: JobSnapshot, rates: Rates = NO_RATES) -> dict[str, Any]:
    ops = _operators(snap)
    boxes, groups = layout.physical_boxes([(n, inst) for n, _, inst in ops],
                                          [(e[0], e[1]) for e in snap.logical_edges])
    tasks = {t.name: t for t in snap.tasks}
    nodes = [_task_node(snap, tasks[n], boxes[n], rates) for _, _, inst in ops for n in inst if n in tasks]
    conns = [(i, c) for i, c in zip(connection_ids(snap), snap.connections, strict=True)
             if c.source in boxes and c.target in boxes]
    curves = [layout.curve(boxes[c.source], boxes[c.target]) for _, c in conns]
    obstacles = [*boxes.values(), *(layout.Box(g.x, g.y, g.w, layout.GROUP_TITLE) for g in groups.values())]
    centres = layout.place_labels(curves, LABEL_SIZE["physical"], obstacles)
    edges = []
    for (cid, c), pts, centre in zip(conns, curves, centres, strict=True):
        rate = rates.edges.get(cid, 0.0)
        det = _details(f"{c.source} → {c.target}", _conn_rows(c, _rate_text(rate, rates)))
        edges.append(_edge(cid, c.source, c.target, c.strategy, strategy_label(c.strategy, c.key_label),
                           [c], rate, rates, pts, centre, det))
    group_list = [{"id": n, "label": n, "x": _r(g.x), "y": _r(g.y), "w": g.w, "h": g.h}
                  for n, g in groups.items()]
    width, height = _bounds([*boxes.values(), *groups.values(), *_label_boxes(edges, "physical")])
    return {"view": "physical", "width": width, "height": height, "nodes": nodes, "edges": edges,
            "groups": group_list}


def logical_graph(snap: JobSnapshot, rates: Rates = NO_RATES) -> dict[str, Any]:
    ops = _operators(snap)
    boxes = layout.logical_boxes([n for n, _, _ in ops], [(e[0], e[1]) for e in snap.logical_edges])
    tasks = {t.name: t for t in snap.tasks}
    nodes = [_operator_node(snap, n, kind, [tasks[i] for i in inst if i in tasks], boxes[n], rates)
             for n, kind, inst in ops]
    edges_in = [(eid, e) for eid, e in zip(logical_edge_ids(snap), snap.logical_edges, strict=True)
                if e[0] in boxes and e[1] in boxes]
    curves = [layout.curve(boxes[e[0]], boxes[e[1]]) for _, e in edges_in]
    centres = layout.place_labels(curves, LABEL_SIZE["logical"], list(boxes.values()))
    conn_ids = connection_ids(snap)
    edges = []
    for (eid, (src, dst, strategy, key_label, inp)), pts, centre in zip(edges_in, curves, centres, strict=True):
        mine = [(i, c) for i, c in zip(conn_ids, snap.connections, strict=True)
                if c.source_operator == src and c.target_operator == dst and c.target_input_index == inp]
        rate = sum(rates.edges.get(i, 0.0) for i, _ in mine)
        label = strategy_label(strategy, key_label)
        items = [f"{c.source} → {c.target}: {c.packets_sent} pkts, queue {c.used}/{c.capacity or '∞'}"
                 for _, c in mine]
        det = _details(f"{src} → {dst}", [["strategy", label], ["connections", len(mine)],
                                          ["packets sent", sum(c.packets_sent for _, c in mine)],
                                          ["rate", _rate_text(rate, rates)], ["input", inp]],
                       [("connections", items)])
        edges.append(_edge(eid, src, dst, strategy, label, [c for _, c in mine], rate, rates, pts,
                           centre, det))
    width, height = _bounds([*boxes.values(), *_label_boxes(edges, "logical")])
    return {"view": "logical", "width": width, "height": height, "nodes": nodes, "edges": edges,
            "groups": []}


def graph_view(snap: JobSnapshot, view: str = "logical", rates: Rates = NO_RATES) -> dict[str, Any]:
    """The graph view model for ``view`` ('logical' or 'physical')."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; use one of {list(VIEWS)}")
    return physical_graph(snap, rates) if view == "physical" else logical_graph(snap, rates)


# ----------------------------------------------------------------------------- header
def status_view(snap: JobSnapshot) -> dict[str, Any]:
    """The header line: job, status, elapsed time and progress counters."""
    finished = sum(t.state == "finished" for t in snap.tasks)
    return {"status": snap.status, "job_id": snap.job_id, "pipeline": snap.pipeline,
            "backend": snap.backend, "elapsed": round(snap.elapsed, 2),
            "elapsed_text": f"{snap.elapsed:.1f} s", "instances": len(snap.tasks),
            "finished": finished, "packets": sum(c.packets_sent for c in snap.connections),
            "trace_skipped": snap.trace_skipped}


def error_view(snap: JobSnapshot) -> dict[str, Any]:
    """The failure to show (node, instance, message, packet, traceback), or {}."""
    e = snap.error
    if e is None:
        return {}
    return {"node": e.node, "instance": e.instance, "message": e.message,
            "packet": e.packet or "", "traceback": e.traceback}
