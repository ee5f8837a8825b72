"""Layered left-to-right layout, computed once in Python so every renderer draws the same picture.

Operators are placed in topological generations (``networkx.topological_generations``),
ordered inside a layer by the mean position of their predecessors to avoid crossings. In
the physical view each operator's instances are stacked in a band (a dashed group box).

Edge labels never overlap: like NiFi's connection labels, each label sits in the gap
after its source's layer, the labels of one gap are stacked without overlap (close to
where their edges are headed), and the edge is drawn *through* its label: a curve from
the source to the label's left side, then from its right side to the target.

>>> lay = compute([("src", ["src"]), ("a", ["a"]), ("b", ["b"]), ("sink", ["sink"])],
...               [("src", "a"), ("src", "b"), ("a", "sink"), ("b", "sink")],
...               [("src", "a"), ("src", "b"), ("a", "sink"), ("b", "sink")], label=(160, 50))
>>> lay.boxes["src"].x < lay.boxes["a"].x == lay.boxes["b"].x < lay.boxes["sink"].x
True
>>> len(lay.routes[0].points), lay.boxes["a"].y < lay.boxes["b"].y
(8, True)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx

__all__ = ["Box", "Layout", "Route", "compute", "layers", "pack"]

NODE_W, NODE_H = 144, 58
MARGIN = 24
ROW = {"logical": 100, "physical": 74}      # vertical pitch of nodes
GROUP_PAD, GROUP_TITLE, GROUP_GAP = 10, 20, 30
EDGE_RUN = 46        # horizontal run of a curve between a node and a label
LABEL_SEP = 8        # vertical space between stacked labels
MAX_STACK = 640      # a gap gets another column of labels beyond this height

Point = tuple[float, float]


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle: top-left corner, width, height."""

    x: float
    y: float
    w: float
    h: float

    @property
    def cy(self) -> float:
        return self.y + self.h / 2

    def moved(self, dy: float) -> Box:
        return Box(self.x, self.y + dy, self.w, self.h)


@dataclass(frozen=True)
class Route:
    """One edge: 8 points (curve to the label, straight under it, curve to the target),
    the label's centre and the arrow head's triangle."""

    points: tuple[Point, ...]
    centre: Point
    arrow: tuple[Point, ...]


@dataclass(frozen=True)
class Layout:
    boxes: dict[str, Box]
    groups: dict[str, Box]
    routes: list[Route]
    width: float
    height: float


def layers(nodes: Sequence[str], edges: Sequence[tuple[str, str]]) -> list[list[str]]:
    """Nodes in layers, left to right; ties keep the order of ``nodes``."""
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from(edges)
    order = {n: i for i, n in enumerate(nodes)}
    try:
        generations = [list(gen) for gen in nx.topological_generations(g)]
    except nx.NetworkXUnfeasible:  # a cycle: lay out its strongly connected components instead
        cond = nx.condensation(g)
        generations = [[n for c in gen for n in cond.nodes[c]["members"]]
                       for gen in nx.topological_generations(cond)]
    placed: dict[str, float] = {}
    result = []
    for gen in generations:
        def barycentre(n: str) -> tuple[float, int]:
            ys = [placed[p] for p in g.predecessors(n) if p in placed]
            return (sum(ys) / len(ys) if ys else float(order[n]), order[n])
        gen.sort(key=barycentre)
        placed.update({n: float(i) for i, n in enumerate(gen)})
        result.append(gen)
    return result


def pack(ideals: Sequence[float], size: float) -> list[float]:
    """Centres as close as possible to ``ideals`` (kept in order), at least ``size`` apart.

    >>> pack([0, 0, 100], 10)
    [-5.0, 5.0, 100.0]
    """
    clusters: list[list[Any]] = []            # [first index, count, centre]
    for i, y in enumerate(ideals):
        clusters.append([i, 1, float(y)])
        while len(clusters) > 1:
            a, b = clusters[-2], clusters[-1]
            if a[2] + a[1] * size / 2 <= b[2] - b[1] * size / 2:
                break
            n = a[1] + b[1]
            mean = sum(ideals[a[0]: a[0] + n]) / n
            clusters[-2:] = [[a[0], n, mean]]
    out = []
    for _, n, centre in clusters:
        top = centre - (n - 1) * size / 2
        out += [top + k * size for k in range(n)]
    return out


def _bands(cols: list[list[str]], instances: Mapping[str, Sequence[str]], view: str
           ) -> tuple[dict[str, tuple[int, float]], dict[str, tuple[int, float]], float]:
    """Column and top y of every node and group box (x is set once the gaps are known)."""
    grouped = view == "physical"
    row = ROW[view]

    def band(op: str) -> float:
        if not grouped:
            return row
        return GROUP_TITLE + (len(instances[op]) - 1) * row + NODE_H + GROUP_PAD

    heights = [sum(band(op) for op in col) + (GROUP_GAP if grouped else 0) * (len(col) - 1) for col in cols]
    tallest = max(heights, default=0.0)
    nodes, groups = {}, {}
    for i, col in enumerate(cols):
        y = (tallest - heights[i]) / 2
        for op in col:
            if grouped:
                groups[op] = (i, y)
                for j, name in enumerate(instances[op]):
                    nodes[name] = (i, y + GROUP_TITLE + j * row)
                y += band(op) + GROUP_GAP
            else:
                nodes[op] = (i, y)
                y += band(op)
    return nodes, groups, tallest


def _route(src: Box, dst: Box, centre: Point, label: tuple[float, float]) -> Route:
    lw = label[0]
    x0, y0 = src.x + src.w, src.cy
    lx0, lx1, ly = centre[0] - lw / 2, centre[0] + lw / 2, centre[1]
    x1, y1 = dst.x - 9, dst.cy                 # stop short: the arrow head fills the gap
    d0, d1 = max(20.0, (lx0 - x0) / 2), max(20.0, (x1 - lx1) / 2)
    pts = ((x0, y0), (x0 + d0, y0), (lx0 - d0, ly), (lx0, ly),
           (lx1, ly), (lx1 + d1, ly), (x1 - d1, y1), (x1, y1))
    arrow = ((x1 + 9, y1), (x1 - 1, y1 - 5.5), (x1 - 1, y1 + 5.5))
    return Route(pts, centre, arrow)


def compute(operators: Sequence[tuple[str, Sequence[str]]], op_edges: Sequence[tuple[str, str]],
            links: Sequence[tuple[str, str]], *, label: tuple[float, float],
            view: str = "logical") -> Layout:
    """Boxes for the nodes of ``view`` (operators or instances) and a route for every link."""
    instances = {op: list(inst) if view == "physical" else [op] for op, inst in operators}
    cols = layers([op for op, _ in operators], op_edges)
    col_of = {op: i for i, col in enumerate(cols) for op in col}
    op_of = {n: op for op, inst in instances.items() for n in inst}
    node_pos, group_pos, tallest = _bands(cols, instances, view)
    lw, lh = label
    pitch = lh + LABEL_SEP
    by_gap: dict[int, list[int]] = defaultdict(list)
    for k, (s, _) in enumerate(links):
        by_gap[col_of[op_of[s]]].append(k)
    stack_cols = {g: max(1, math.ceil(len(ks) * pitch / max(MAX_STACK, tallest))) for g, ks in by_gap.items()}
    xs = [float(MARGIN + GROUP_PAD)]
    for i in range(len(cols) - 1):
        gap = 2 * EDGE_RUN + stack_cols.get(i, 1) * (lw + 16) - 16
        xs.append(xs[-1] + NODE_W + gap)
    boxes = {n: Box(xs[i], y, NODE_W, NODE_H) for n, (i, y) in node_pos.items()}
    groups = {op: Box(xs[i] - GROUP_PAD, y, NODE_W + 2 * GROUP_PAD, GROUP_TITLE + (len(instances[op]) - 1)
                      * ROW[view] + NODE_H + GROUP_PAD) for op, (i, y) in group_pos.items()}
    centres: dict[int, Point] = {}
    for g, ks in by_gap.items():
        ks.sort(key=lambda k: (0.35 * boxes[links[k][0]].cy + 0.65 * boxes[links[k][1]].cy,
                               boxes[links[k][1]].cy, boxes[links[k][0]].cy))
        n_cols = stack_cols[g]
        per_col = math.ceil(len(ks) / n_cols)
        for c in range(n_cols):
            chunk = ks[c * per_col:(c + 1) * per_col]
            ideals = [0.35 * boxes[links[k][0]].cy + 0.65 * boxes[links[k][1]].cy for k in chunk]
            x = xs[g] + NODE_W + EDGE_RUN + lw / 2 + c * (lw + 16)
            centres.update({k: (x, y) for k, y in zip(chunk, pack(ideals, pitch), strict=True)})
    # shift everything down so the topmost box or label starts at the margin
    tops = [b.y for b in boxes.values()] + [b.y for b in groups.values()] + [y - lh / 2 for _, y in centres.values()]
    dy = MARGIN - min(tops, default=MARGIN)
    boxes = {n: b.moved(dy) for n, b in boxes.items()}
    groups = {n: b.moved(dy) for n, b in groups.items()}
    routes = [_route(boxes[s], boxes[t], (centres[k][0], centres[k][1] + dy), label)
              for k, (s, t) in enumerate(links)]
    right = [b.x + b.w for b in (*boxes.values(), *groups.values())] + [r.centre[0] + lw / 2 for r in routes]
    bottom = [b.y + b.h for b in (*boxes.values(), *groups.values())] + [r.centre[1] + lh / 2 for r in routes]
    return Layout(boxes, groups, routes, float(round(max(right, default=0) + MARGIN)),
                  float(round(max(bottom, default=0) + MARGIN)))
