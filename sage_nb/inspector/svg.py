"""The graph view model as an inline SVG element (for the HTML report and static fallbacks).

Built with :mod:`xml.etree.ElementTree`, so every name is escaped by the serializer; the
structure and CSS hooks mirror ``static/inspector.js`` (``.sage-graph``, ``.sage-node``,
``.sage-edge``, ``.sage-load`` ...), and native ``<title>`` tooltips carry the details.
Colours and font sizes are also set as SVG attributes, so the picture stays right where
a viewer strips the ``<style>`` (GitHub, nbviewer's sanitiser).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Collection
from typing import Any

from .palette import LEVEL_COLORS

__all__ = ["graph_svg"]

BOTTLENECK = LEVEL_COLORS["red"]  # a likely bottleneck's ring and badge


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: Any) -> ET.Element:
    e = ET.SubElement(parent, tag, {k.rstrip("_").replace("_", "-"): str(v) for k, v in attrs.items()})
    if text is not None:
        e.text = str(text)
    return e


def _tooltip(parent: ET.Element, details: dict[str, Any]) -> None:
    lines = [details.get("title", "")]
    lines += [f"{k}: {v}" for k, v in details.get("rows", [])]
    for lst in details.get("lists", []):
        lines.append(f"{lst['title']}:")
        lines += [f"  {item}" for item in lst["items"]]
    _sub(parent, "title", "\n".join(lines))


def _curve(pts: list[list[float]]) -> str:
    """8 points: a curve to the label's left side, a line under the label, a curve to the target."""
    p = [f"{x},{y}" for x, y in pts]
    return f"M{p[0]} C{p[1]} {p[2]} {p[3]} L{p[4]} C{p[5]} {p[6]} {p[7]}"


def _label(parent: ET.Element, e: dict[str, Any], view: str, size: list[float], cls: str) -> None:
    w, h = size
    left, top = e["lx"] - w / 2, e["ly"] - h / 2
    g = _sub(parent, "g", class_=cls, data_edge=e["id"], data_pct="" if e["pct"] is None else e["pct"])
    _tooltip(g, e["details"])
    _sub(g, "rect", class_="sage-label-box", x=left, y=top, width=w, height=h, rx=6, fill="#ffffff",
         stroke="#c9d1d6")
    if view == "logical":
        _sub(g, "text", e["label"], class_="sage-strategy", x=e["lx"], y=top + 15, text_anchor="middle",
             font_size=12, font_weight="bold")
        top += 16
    bar = w - 58
    fill = max(0, min(100, e["pct"] or 0)) / 100 * bar
    _sub(g, "rect", class_="sage-bar-bg", x=left + 10, y=top + 6, width=bar, height=10, rx=2, fill="#e7ebee")
    _sub(g, "rect", class_="sage-bar", x=left + 10, y=top + 6, width=round(fill, 1), height=10, rx=2,
         fill=e["color"])
    _sub(g, "text", e["load_text"], class_="sage-load", x=left + bar + 16, y=top + 15.5, font_size=12.5,
         font_weight="bold")
    _sub(g, "text", e["text"], class_="sage-count", x=e["lx"], y=top + 29.5, text_anchor="middle",
         font_size=11.5, fill="#5b6770")


def graph_svg(graph: dict[str, Any], path: Collection[str] = ()) -> ET.Element:
    """An ``<svg class="sage-graph">`` element drawing ``graph`` (a view model from :mod:`.view`)."""
    view = graph.get("view", "logical")
    w, h = graph.get("width", 300), graph.get("height", 100)
    root = ET.Element("svg", {"class": "sage-graph", "viewBox": f"0 0 {w} {h}", "width": str(w),
                              "height": str(h), "role": "img", "data-view": view,
                              "style": f"max-width:{w}px;min-width:{round(0.7 * w)}px",
                              "font-family": "system-ui, 'DejaVu Sans', Arial, sans-serif"})
    _sub(root, "title", f"{view} graph")
    groups, edges, labels, nodes = (_sub(root, "g", class_=c) for c in
                                    ("sage-groups", "sage-edges", "sage-labels", "sage-nodes"))
    for gr in graph.get("groups", []):
        g = _sub(groups, "g", class_="sage-group", data_group=gr["id"])
        _sub(g, "rect", x=gr["x"], y=gr["y"], width=gr["w"], height=gr["h"], rx=10, fill="#f5f7f8",
             stroke="#b0bec5", stroke_dasharray="5 4")
        _sub(g, "text", gr["label"], x=gr["x"] + 8, y=gr["y"] + 15, font_size=12, font_weight="bold",
             fill="#5b6770")
    size = graph.get("label_size", [150, 34])
    for e in graph.get("edges", []):
        on = " sage-on-path" if e["id"] in path else ""
        chained = " sage-chained" if e["strategy"] == "chained" else ""  # no queue: dashed
        g = _sub(edges, "g", class_="sage-edge" + on + chained, data_edge=e["id"], data_level=e["level"],
                 data_pct="" if e["pct"] is None else e["pct"], data_packets=e["packets"])
        _tooltip(g, e["details"])
        width = {"green": 2, "amber": 3, "red": 4}[e["level"]]
        dash = {"stroke_dasharray": "6 4"} if chained else {}
        _sub(g, "path", class_="sage-line", d=_curve(e["curve"]), stroke=e["stroke"], stroke_width=width,
             fill="none", **dash)
        _sub(g, "polygon", points=" ".join(f"{x},{y}" for x, y in e["arrow"]), fill=e["stroke"])
        _label(labels, e, view, size, "sage-edge-label" + on)
    for n in graph.get("nodes", []):
        bottleneck = n.get("bottleneck", False)
        g = _sub(nodes, "g", class_="sage-node sage-bottleneck" if bottleneck else "sage-node",
                 data_node=n["id"], data_state=n["state"])
        _tooltip(g, n["details"])
        cx = n["x"] + n["w"] / 2
        if bottleneck:  # a dashed ring (the badge comes after the box), as the widget draws it
            _sub(g, "rect", class_="sage-bottleneck-ring", x=n["x"] - 5, y=n["y"] - 5, width=n["w"] + 10,
                 height=n["h"] + 10, rx=12, fill="none", stroke=BOTTLENECK, stroke_width=2.5,
                 stroke_dasharray="6 3")
        _sub(g, "rect", class_="sage-node-box", x=n["x"], y=n["y"], width=n["w"], height=n["h"], rx=9,
             fill=n["fill"], stroke="#37474f")
        if bottleneck:
            bx = n["x"] + n["w"] - 74
            _sub(g, "rect", class_="sage-bottleneck-badge", x=bx, y=n["y"] - 9, width=70, height=16, rx=8,
                 fill=BOTTLENECK)
            _sub(g, "text", "bottleneck", class_="sage-bottleneck-text", x=bx + 35, y=n["y"] + 3,
                 fill="#ffffff", text_anchor="middle", font_size=10.5, font_weight="bold")
        _sub(g, "text", n["label"], class_="sage-node-name", x=cx, y=n["y"] + 20, fill=n["text"],
             text_anchor="middle", font_size=14.5, font_weight="bold")
        for i, line in enumerate(n["lines"][:2]):
            _sub(g, "text", line, class_="sage-node-line", x=cx, y=n["y"] + 37 + 15 * i, fill=n["text"],
                 text_anchor="middle", font_size=12)
    return root
