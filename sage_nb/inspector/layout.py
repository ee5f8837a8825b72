"""Layered left-to-right layout, computed once in Python so every renderer draws the same picture.

Operators are placed in topological generations (``networkx.topological_generations``),
ordered inside a layer by the mean position of their predecessors to avoid crossings.
In the physical view each operator's instances are stacked in a band at the operator's
layer. Edges are cubic Bézier curves; edge labels are placed along their curve where
they do not overlap nodes or other labels.

>>> boxes = logical_boxes(["src", "a", "b", "sink"],
...                       [("src", "a"), ("src", "b"), ("a", "sink"), ("b", "sink")])
>>> [round(boxes[n].x) for n in ("src", "a", "sink")]
[24, 380, 736]
>>> boxes["a"].y < boxes["b"].y
True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import networkx as nx

__all__ = ["Box", "arrow_head", "curve", "layers", "logical_boxes", "physical_boxes",
           "place_labels", "point_on"]

NODE_W, NODE_H = 156, 58
MARGIN = 24
LOGICAL_GAP, LOGICAL_ROW = 200, 100      # horizontal gap between layers, row pitch
PHYSICAL_GAP, PHYSICAL_ROW = 230, 76
GROUP_PAD, GROUP_TITLE, GROUP_GAP = 10, 20, 36

Point = tuple[float, float]


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle: top-left corner, width, height."""

    x: float
    y: float
    w: float
    h: float

    def overlap(self, other: Box) -> float:
        dx = min(self.x + self.w, other.x + other.w) - max(self.x, other.x)
        dy = min(self.y + self.h, other.y + other.h) - max(self.y, other.y)
        return dx * dy if dx > 0 and dy > 0 else 0.0


def layers(nodes: Sequence[str], edges: Iterable[tuple[str, str]]) -> list[list[str]]:
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


def _column_x(layer: int, gap: float) -> float:
    return MARGIN + layer * (NODE_W + gap)


def logical_boxes(nodes: Sequence[str], edges: Iterable[tuple[str, str]]) -> dict[str, Box]:
    """One box per operator; layers are centred vertically on the tallest one."""
    cols = layers(nodes, edges)
    tallest = max((len(c) for c in cols), default=0)
    boxes = {}
    for i, col in enumerate(cols):
        top = MARGIN + (tallest - len(col)) * LOGICAL_ROW / 2
        for j, n in enumerate(col):
            boxes[n] = Box(_column_x(i, LOGICAL_GAP), top + j * LOGICAL_ROW, NODE_W, NODE_H)
    return boxes


def physical_boxes(operators: Sequence[tuple[str, Sequence[str]]],
                   edges: Iterable[tuple[str, str]]) -> tuple[dict[str, Box], dict[str, Box]]:
    """Boxes per instance, and one group box per operator around its instances."""
    instances = dict(operators)
    cols = layers([name for name, _ in operators], edges)

    def band(op: str) -> float:
        return GROUP_TITLE + len(instances[op]) * PHYSICAL_ROW - (PHYSICAL_ROW - NODE_H) + GROUP_PAD

    heights = [sum(band(op) for op in col) + GROUP_GAP * (len(col) - 1) for col in cols]
    tallest = max(heights, default=0.0)
    boxes: dict[str, Box] = {}
    groups: dict[str, Box] = {}
    for i, col in enumerate(cols):
        x = _column_x(i, PHYSICAL_GAP)
        y = MARGIN + GROUP_PAD + (tallest - heights[i]) / 2
        for op in col:
            groups[op] = Box(x - GROUP_PAD, y - GROUP_PAD, NODE_W + 2 * GROUP_PAD, band(op) + GROUP_PAD)
            for j, name in enumerate(instances[op]):
                boxes[name] = Box(x, y + GROUP_TITLE + j * PHYSICAL_ROW, NODE_W, NODE_H)
            y += band(op) + GROUP_GAP
    return boxes, groups


def curve(src: Box, dst: Box) -> list[Point]:
    """Cubic Bézier control points from the right side of ``src`` to the left side of ``dst``."""
    x0, y0 = src.x + src.w, src.y + src.h / 2
    x1, y1 = dst.x - 9, dst.y + dst.h / 2        # stop short: the arrow head fills the gap
    dx = max(40.0, (x1 - x0) / 2)
    return [(x0, y0), (x0 + dx, y0), (x1 - dx, y1), (x1, y1)]


def arrow_head(points: Sequence[Point], size: float = 10.0) -> list[Point]:
    """A triangle pointing right, its tip touching the target node."""
    x, y = points[-1]
    return [(x + 9, y), (x + 9 - size, y - size / 2), (x + 9 - size, y + size / 2)]


def point_on(points: Sequence[Point], t: float) -> Point:
    """The point at parameter ``t`` of a cubic Bézier curve."""
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = points
    u = 1 - t
    a, b, c, d = u * u * u, 3 * u * u * t, 3 * u * t * t, t * t * t
    return (a * x0 + b * x1 + c * x2 + d * x3, a * y0 + b * y1 + c * y2 + d * y3)


_CANDIDATES = (0.5, 0.38, 0.62, 0.28, 0.72, 0.45, 0.55, 0.2, 0.8)


def place_labels(curves: Sequence[Sequence[Point]], size: tuple[float, float],
                 obstacles: Sequence[Box]) -> list[Point]:
    """Label centres along each curve, avoiding ``obstacles`` and the labels placed before."""
    w, h = size
    placed: list[Box] = []
    centres = []
    for pts in curves:
        best, best_cost = None, float("inf")
        for t in _CANDIDATES:
            cx, cy = point_on(pts, t)
            box = Box(cx - w / 2, cy - h / 2, w, h)
            cost = sum(box.overlap(o) for o in (*obstacles, *placed))
            if cost < best_cost:
                best, best_cost = box, cost
            if cost == 0:
                break
        assert best is not None
        placed.append(best)
        centres.append((best.x + w / 2, best.y + h / 2))
    return centres
