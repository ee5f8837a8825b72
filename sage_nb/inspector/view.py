"""Pure functions: a :class:`~sage_nb.metrics.JobSnapshot` -> the graph view model.

The view model is plain JSON-safe data — node and edge dicts with positions, colours,
labels, percentages and the details shown in the side panel — so the widget's JS, the
SVG of the HTML report and the matplotlib rendering all draw the same thing, and tests
assert on it without a browser. Names are kept as data; every renderer escapes them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from ..metrics import FULL_PERCENT, ConnectionSnapshot, JobSnapshot, TaskSnapshot, is_bottleneck
from . import layout
from .palette import (
    EDGE_IDLE,
    LEVEL_COLORS,
    aggregate_state,
    load_level,
    load_percent,
    state_colors,
)
from .tables import Rates, connection_ids, format_rate, logical_edge_ids, short_repr, strategy_label

__all__ = ["VIEWS", "Memo", "error_view", "graph_view", "status_view", "stops_text"]

VIEWS = ("logical", "physical")
LABEL_SIZE = {"logical": (150.0, 50.0), "physical": (128.0, 34.0)}
NO_RATES = Rates({}, {}, {}, {}, average=True)
WORKING = ("busy", "idle", "draining")
NODE_CHARS, GROUP_CHARS, LABEL_CHARS = 15, 21, 21     # what fits in a node, a group title, a label
BACKPRESSURED_MS = 500.0      # blocked ms per second above which a working task shows backpressured
BOTTLENECK_TEXT = (f"its input queue is over {FULL_PERCENT} % full while it works and does not wait "
                   f"on its outputs: the stages before it wait for it")


def _r(x: float) -> float:
    return round(x, 1)


def fit(text: str, limit: int) -> str:
    """``text`` shortened in the middle to ``limit`` characters, keeping an ``[i]`` suffix.

    >>> fit("count[2]", 16), fit("a_very_long_operator_name[12]", 16)
    ('count[2]', 'a_very_long…[12]')
    """
    if len(text) <= limit:
        return text
    tail = text[text.rfind("["):] if text.endswith("]") and "[" in text else text[-3:]
    tail = tail if len(tail) < limit // 2 else text[-3:]
    return text[: limit - len(tail) - 1] + "\N{HORIZONTAL ELLIPSIS}" + tail


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


def _io(kind: str, packets_in: int, packets_out: int) -> str:
    if kind == "source":
        return f"emitted {packets_in}"
    return f"in {packets_in}" if kind == "sink" else f"in {packets_in} · out {packets_out}"


def _task_state(snap: JobSnapshot, t: TaskSnapshot, rates: Rates) -> str:
    """The state shown: the task's own, 'failed' for the instance the job error names, and
    'backpressured' for a working task that spent over half of the last second blocked on a
    full downstream queue (Flink's backPressuredTimeMsPerSecond)."""
    if snap.error is not None and snap.error.instance == t.name:
        return "failed"
    if t.state in WORKING and not rates.average and rates.blocked_ms.get(t.name, 0.0) >= BACKPRESSURED_MS:
        return "backpressured"
    return t.state


# ----------------------------------------------------------------------------- nodes
def _node(node_id: str, box: layout.Box, state: str, lines: list[str], kind: str,
          details: dict[str, Any], bottleneck: bool = False) -> dict[str, Any]:
    fill, text = state_colors(state)
    return {"id": node_id, "label": fit(node_id, NODE_CHARS), "state": state, "fill": fill, "text": text,
            "kind": kind, "lines": lines, "x": _r(box.x), "y": _r(box.y), "w": box.w, "h": box.h,
            "bottleneck": bottleneck, "details": details}


def _task_node(snap: JobSnapshot, t: TaskSnapshot, box: layout.Box, rates: Rates,
               held: bool) -> dict[str, Any]:
    state = _task_state(snap, t, rates)
    bottleneck = is_bottleneck(t, state, held)
    stops = stops_text(t.stops_received, t.stops_expected, state)
    third = stops or _io(t.kind, t.packets_in, t.packets_out)
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
    if bottleneck:
        rows.append(["likely bottleneck", BOTTLENECK_TEXT])
    if t.error:
        rows.append(["error", t.error])
    lists = [("top keys", [f"{k}: {n}" for k, n in t.top_keys]),
             ("last packets", [short_repr(p, 60) for p in t.last_packets])]
    return _node(t.name, box, state, [state, third], t.kind, _details(t.name, rows, lists), bottleneck)


def _operator_node(snap: JobSnapshot, name: str, kind: str, tasks: list[TaskSnapshot],
                   box: layout.Box, rates: Rates, held: frozenset[str]) -> dict[str, Any]:
    states = [_task_state(snap, t, rates) for t in tasks]
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
    slow = [t.name for t, s in zip(tasks, states, strict=True) if is_bottleneck(t, s, t.name in held)]
    if slow:
        rows.append(["likely bottleneck", f"{', '.join(slow)}: {BOTTLENECK_TEXT}"])
    inst = [f"{t.name}: {s}, in {t.packets_in}, out {t.packets_out}" for t, s in zip(tasks, states, strict=True)]
    second = f"\N{MULTIPLICATION SIGN}{len(tasks)} · {state}" if len(tasks) > 1 else state
    return _node(name, box, state, [second, stops or _io(kind, p_in, p_out)], kind,
                 _details(name, rows, [("instances", inst)]), bool(slow))


# ----------------------------------------------------------------------------- edges
def _edge(edge_id: str, source: str, target: str, strategy: str, label: str,
          conns: list[ConnectionSnapshot], rate: float, rates: Rates, route: layout.Route,
          details: dict[str, Any]) -> dict[str, Any]:
    queues = {c.queue_id: c for c in conns}.values()        # a queue is shared by its writers
    fullest = max(queues, key=lambda c: c.load, default=None)
    used, capacity = (fullest.used, fullest.capacity) if fullest else (0, None)
    pct = None if strategy == "chained" else load_percent(used, capacity)  # chained: no queue
    level = load_level(None if pct is None else pct / 100)
    packets = sum(c.packets_sent for c in conns)
    count = f"{packets} pkts" if rates.average else f"{packets} pkts · {format_rate(rate)}"
    return {
        "id": edge_id, "source": source, "target": target, "strategy": strategy,
        "label": fit(label, LABEL_CHARS),
        "used": used, "capacity": capacity, "load": round(fullest.load, 4) if fullest else 0.0,
        "pct": pct, "level": level, "color": LEVEL_COLORS[level],
        "stroke": EDGE_IDLE if level == "green" else LEVEL_COLORS[level],
        "load_text": "no queue" if strategy == "chained" else f"{pct}%" if pct is not None else f"{used} queued",
        "packets": packets, "rate": round(rate, 2), "text": count,
        "curve": [[_r(x), _r(y)] for x, y in route.points],
        "arrow": [[_r(x), _r(y)] for x, y in route.arrow],
        "lx": _r(route.centre[0]), "ly": _r(route.centre[1]), "details": details,
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


def _frame(view: str, lay: layout.Layout, nodes: list[dict[str, Any]], edges: list[dict[str, Any]]
           ) -> dict[str, Any]:
    groups = [{"id": n, "label": fit(n, GROUP_CHARS), "x": _r(g.x), "y": _r(g.y), "w": g.w, "h": g.h}
              for n, g in lay.groups.items()]
    return {"view": view, "width": lay.width, "height": lay.height, "nodes": nodes, "edges": edges,
            "groups": groups, "label_size": list(LABEL_SIZE[view])}


class Memo:
    """Nodes and edges already built, by the snapshot objects they were built from.

    A step recording's frames share the task and connection snapshots that a step did not
    change; with one ``Memo`` over such frames (and the same rates), an unchanged node or
    edge is the same dict as in the previous frame: built once, and cheap to compare.
    ``Memo(enabled=False)`` builds every time.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._items: dict[Any, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def get(self, key: Any, parts: tuple[Any, ...], build: Any) -> dict[str, Any]:
        hit = self._items.get(key) if self.enabled else None
        if hit is not None and len(hit[0]) == len(parts) and all(a is b for a, b in zip(hit[0], parts, strict=True)):
            return hit[1]
        made = build()
        if self.enabled:
            self._items[key] = (parts, made)
        return made


NO_MEMO = Memo(enabled=False)


@functools.lru_cache(maxsize=16)
def _layout(ops: tuple[tuple[str, tuple[str, ...]], ...], op_edges: tuple[tuple[str, str], ...],
            links: tuple[tuple[str, str], ...], view: str) -> layout.Layout:
    """The layout of a graph's shape: computed once, reused while only the counters change."""
    return layout.compute(ops, op_edges, links, label=LABEL_SIZE[view], view=view)


def physical_graph(snap: JobSnapshot, rates: Rates = NO_RATES, memo: Memo = NO_MEMO) -> dict[str, Any]:
    ops = _operators(snap)
    tasks = {t.name: t for t in snap.tasks}
    known = {n for _, _, inst in ops for n in inst}
    conns = [(i, c) for i, c in zip(connection_ids(snap), snap.connections, strict=True)
             if c.source in known and c.target in known]
    lay = _layout(tuple((n, inst) for n, _, inst in ops), tuple((e[0], e[1]) for e in snap.logical_edges),
                  tuple((c.source, c.target) for _, c in conns), "physical")
    held = snap.held_back()  # (whether a queue it writes into is full: part of what a node shows)
    nodes = [memo.get(n, (tasks[n], lay.boxes[n], snap.error, n in held),
                      lambda n=n: _task_node(snap, tasks[n], lay.boxes[n], rates, n in held))
             for _, _, inst in ops for n in inst if n in tasks]
    edges = [memo.get(cid, (c, route), lambda cid=cid, c=c, route=route: _conn_edge(cid, c, route, rates))
             for (cid, c), route in zip(conns, lay.routes, strict=True)]
    return _frame("physical", lay, nodes, edges)


def _conn_edge(cid: str, c: ConnectionSnapshot, route: layout.Route, rates: Rates) -> dict[str, Any]:
    rate = rates.edges.get(cid, 0.0)
    det = _details(f"{c.source} → {c.target}", _conn_rows(c, _rate_text(rate, rates)))
    return _edge(cid, c.source, c.target, c.strategy, strategy_label(c.strategy, c.key_label),
                 [c], rate, rates, route, det)


def logical_graph(snap: JobSnapshot, rates: Rates = NO_RATES, memo: Memo = NO_MEMO) -> dict[str, Any]:
    ops = _operators(snap)
    tasks = {t.name: t for t in snap.tasks}
    names = {n for n, _, _ in ops}
    edges_in = [(eid, e) for eid, e in zip(logical_edge_ids(snap), snap.logical_edges, strict=True)
                if e[0] in names and e[1] in names]
    lay = _layout(tuple((n, inst) for n, _, inst in ops), tuple((e[0], e[1]) for e in snap.logical_edges),
                  tuple((e[0], e[1]) for _, e in edges_in), "logical")
    nodes, held = [], snap.held_back()
    mine: list[Any]  # (a declaration only: an operator's tasks, then an edge's connections)
    for n, kind, inst in ops:
        mine = [tasks[i] for i in inst if i in tasks]
        nodes.append(memo.get(n, (*mine, lay.boxes[n], snap.error, *(i in held for i in inst)),
                              lambda n=n, kind=kind, mine=mine: _operator_node(snap, n, kind, mine, lay.boxes[n],
                                                                               rates, held)))
    conn_ids = connection_ids(snap)
    edges = []
    for (eid, e), route in zip(edges_in, lay.routes, strict=True):
        mine = [(i, c) for i, c in zip(conn_ids, snap.connections, strict=True)
                if c.source_operator == e[0] and c.target_operator == e[1] and c.target_input_index == e[4]]
        edges.append(memo.get(eid, (*(c for _, c in mine), route),
                              lambda eid=eid, e=e, mine=mine, route=route: _group_edge(eid, e, mine, route, rates)))
    return _frame("logical", lay, nodes, edges)


def _group_edge(eid: str, e: tuple[str, str, str, str | None, int], mine: list[tuple[str, ConnectionSnapshot]],
                route: layout.Route, rates: Rates) -> dict[str, Any]:
    src, dst, strategy, key_label, inp = e
    rate = sum(rates.edges.get(i, 0.0) for i, _ in mine)
    label = strategy_label(strategy, key_label)
    items = [f"{c.source} → {c.target}: {c.packets_sent} pkts, queue {c.used}/{c.capacity or '∞'}"
             for _, c in mine]
    det = _details(f"{src} → {dst}", [["strategy", label], ["connections", len(mine)],
                                      ["packets sent", sum(c.packets_sent for _, c in mine)],
                                      ["rate", _rate_text(rate, rates)], ["input", inp]],
                   [("connections", items)])
    return _edge(eid, src, dst, strategy, label, [c for _, c in mine], rate, rates, route, det)


def graph_view(snap: JobSnapshot, view: str = "logical", rates: Rates = NO_RATES,
               memo: Memo = NO_MEMO) -> dict[str, Any]:
    """The graph view model for ``view`` ('logical' or 'physical'); ``memo`` (a :class:`Memo`,
    with the same ``rates`` throughout) reuses the nodes and edges of unchanged snapshots."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; use one of {list(VIEWS)}")
    return physical_graph(snap, rates, memo) if view == "physical" else logical_graph(snap, rates, memo)


# ----------------------------------------------------------------------------- header
def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def status_view(snap: JobSnapshot) -> dict[str, Any]:
    """The header line: job, status, elapsed time and progress counters."""
    finished = sum(t.state == "finished" for t in snap.tasks)
    packets = sum(c.packets_sent for c in snap.connections)
    if snap.status == "CREATED":
        facts = ["compiled plan, not run yet", _count(len(snap.operators), "operator"),
                 _count(len(snap.tasks), "instance"), _count(len(snap.connections), "connection")]
    elif "step" in snap.extra:    # the step backend counts time in steps, shown by the step bar
        facts = [f"job {snap.job_id}" if snap.job_id else "", "step by step",
                 f"{finished}/{len(snap.tasks)} instances finished", f"{packets} packets sent"]
    else:
        facts = [f"job {snap.job_id}" if snap.job_id else "", snap.backend, f"{snap.elapsed:.1f} s",
                 f"{finished}/{len(snap.tasks)} instances finished", f"{packets} packets sent"]
    return {"status": snap.status, "job_id": snap.job_id, "pipeline": snap.pipeline,
            "backend": snap.backend, "elapsed": round(snap.elapsed, 2),
            "elapsed_text": f"{snap.elapsed:.1f} s", "instances": len(snap.tasks),
            "finished": finished, "packets": packets, "trace_skipped": snap.trace_skipped,
            "meta": " · ".join(f for f in facts if f), "stall": snap.stall or ""}


def error_view(snap: JobSnapshot) -> dict[str, Any]:
    """The failure to show (node, instance, message, packet, traceback), or {}."""
    e = snap.error
    if e is None:
        return {}
    return {"node": e.node, "instance": e.instance, "message": e.message,
            "packet": e.packet or "", "traceback": e.traceback}
