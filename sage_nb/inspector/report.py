"""Static renderings of an inspector's state: a self-contained HTML report, an HTML fragment, text.

The report opens offline: the graph is an inline SVG, the timeline an inline PNG, the CSS
is inlined, nothing is fetched. The page is ``static/report.html`` filled with
:class:`string.Template`; the body is built with ElementTree (so names are escaped), and
the raw data rides along in ``<script type="application/json">`` with ``<`` escaped.
"""

from __future__ import annotations

import html
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from string import Template
from typing import Any

from .svg import graph_svg

__all__ = ["json_for_script", "render_fragment", "render_html", "render_text", "save_html"]

STATIC = Path(__file__).parent / "static"
LOG_COLUMNS = ("packet", "key", "from", "to", "strategy", "explain")


def _css() -> str:
    return (STATIC / "inspector.css").read_text(encoding="utf-8")


def _sub(parent: ET.Element, tag: str, text: Any = None, **attrs: Any) -> ET.Element:
    e = ET.SubElement(parent, tag, {k.rstrip("_").replace("_", "-"): str(v) for k, v in attrs.items()})
    if text is not None:
        e.text = str(text)
    return e


def json_for_script(data: Any) -> str:
    """JSON safe inside ``<script>``: ``<``, ``>`` and ``&`` are written as unicode escapes."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _header(root: ET.Element, data: dict[str, Any]) -> None:
    summary = data.get("summary", {})
    head = _sub(root, "div", class_="sage-header")
    _sub(head, "span", data.get("title") or summary.get("pipeline", ""), class_="sage-title")
    status = summary.get("status", "")
    _sub(head, "span", status or "PLAN", class_="sage-status", data_status=status)
    _sub(head, "span", summary.get("meta", ""), class_="sage-meta")


def _error(root: ET.Element, err: dict[str, Any]) -> None:
    if not err.get("message"):
        return
    box = _sub(root, "div", class_="sage-error")
    _sub(box, "div", f"Failed in {err.get('instance')} (operator {err.get('node')}): {err['message']}",
         class_="sage-error-title")
    if err.get("packet"):
        _sub(box, "div", f"while processing: {err['packet']}", class_="sage-error-packet")
    if err.get("traceback"):
        _sub(box, "pre", err["traceback"])


def _legend(root: ET.Element, palette: dict[str, Any]) -> None:
    leg = palette.get("legend", {"states": [], "levels": []})
    box = _sub(root, "div", class_="sage-legend")
    for st in leg["states"]:
        item = _sub(box, "span", class_="sage-legend-item", title=st["meaning"])
        _sub(item, "span", "", class_="sage-chip", style=f"background:{st['fill']}")
        _sub(item, "span", st["state"])
    _sub(box, "span", "", class_="sage-legend-sep")
    for lv in leg["levels"]:
        item = _sub(box, "span", class_="sage-legend-item")
        _sub(item, "span", "", class_="sage-bar-chip", style=f"background:{lv['color']}")
        _sub(item, "span", lv["label"])
    if leg.get("bottleneck"):
        bn = leg["bottleneck"]
        item = _sub(box, "span", class_="sage-legend-item", title=bn["meaning"])
        _sub(item, "span", "", class_="sage-bottleneck-chip")
        _sub(item, "span", bn["label"])


def _log(parent: ET.Element, rows: list[dict[str, Any]]) -> None:
    sec = _sub(parent, "section", class_="sage-log")
    _sub(sec, "h3", "Routing log")
    _sub(sec, "div", f"Latest {len(rows)} decisions, newest first." if rows else
         "No routing decision recorded.", class_="sage-hint")
    table = _sub(_sub(sec, "div", class_="sage-log-wrap"), "table", class_="sage-table")
    tr = _sub(_sub(table, "thead"), "tr")
    for c in ("packet", "key", "from", "to", "strategy", "explanation"):
        _sub(tr, "th", c)
    body = _sub(table, "tbody")
    for r in rows:
        tr = _sub(body, "tr", data_seq=r["seq"])
        for c in LOG_COLUMNS:
            _sub(tr, "td", r[c], **({"class_": "sage-explain"} if c == "explain" else {}))


def _keys(parent: ET.Element, tables: list[dict[str, Any]]) -> None:
    sec = _sub(parent, "section", class_="sage-keys")
    _sub(sec, "h3", "Key distribution")
    if not tables:
        _sub(sec, "div", "No hash-partitioned operator in this pipeline.", class_="sage-hint")
    for t in tables:
        op = _sub(sec, "div", class_="sage-keys-op", data_operator=t["operator"])
        title = _sub(op, "div")
        _sub(title, "strong", f"{t['operator']} ")
        _sub(title, "span", f"hash({t['key_label']}) · ", class_="sage-hint")
        _sub(title, "span", f"skew {t['skew_text']}", class_="sage-skew", data_level=t["skew_level"])
        table = _sub(op, "table", class_="sage-table")
        tr = _sub(_sub(table, "thead"), "tr")
        for c in ("instance", "packets", "share", "top keys"):
            _sub(tr, "th", c)
        body = _sub(table, "tbody")
        most = max([1, *(i["packets"] for i in t["instances"])])
        for i in t["instances"]:
            tr = _sub(body, "tr")
            _sub(tr, "td", i["name"])
            _sub(tr, "td", i["packets"])
            bar = _sub(_sub(tr, "td"), "div", class_="sage-share")
            _sub(bar, "span", "", style=f"width:{100 * i['packets'] / most:.1f}%")
            _sub(tr, "td", ", ".join(f"{k} \N{MULTIPLICATION SIGN}{n}" for k, n in i["top_keys"]), class_="sage-topkeys")


def render_body(data: dict[str, Any]) -> ET.Element:
    """The inspector's state as one ``<div class="sage-inspector sage-static">`` element."""
    root = ET.Element("div", {"class": "sage-inspector sage-static"})
    _header(root, data)
    _error(root, data.get("error") or {})
    wrap = _sub(_sub(root, "div", class_="sage-main"), "div", class_="sage-graph-wrap")
    wrap.append(graph_svg(data.get("graph") or {}, data.get("path") or ()))
    _legend(root, data.get("palette") or {})
    panels = _sub(root, "div", class_="sage-panels")
    _log(panels, data.get("rows") or [])
    _keys(panels, data.get("keydist") or [])
    timeline = data.get("timeline") or ""
    if timeline.startswith("data:image/png;base64,"):
        sec = _sub(root, "section", class_="sage-timeline")
        _sub(sec, "h3", "Buffer load over time")
        _sub(sec, "img", src=timeline, alt="buffer load per queue over time")
    return root


def _html(element: ET.Element) -> str:
    return ET.tostring(element, encoding="unicode", method="html")


def render_fragment(data: dict[str, Any]) -> str:
    """A self-contained HTML fragment (CSS included) — the widget's fallback where JS cannot run."""
    return "<style>" + _css() + "</style>" + _html(render_body(data))


def render_html(data: dict[str, Any]) -> str:
    """The whole report page."""
    page = Template((STATIC / "report.html").read_text(encoding="utf-8"))
    payload = {k: v for k, v in data.items() if k not in ("timeline", "palette")}
    return page.substitute(
        title=html.escape(f"{data.get('title') or 'sage_nb'} — inspector"), style=_css(),
        body=_html(render_body(data)), saved=html.escape(time.strftime("%Y-%m-%d %H:%M:%S")),
        data=json_for_script(payload))


def save_html(data: dict[str, Any], path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(data), encoding="utf-8")
    return out


def render_text(data: dict[str, Any]) -> str:
    """A plain-text summary: status line, then one line per edge with its load."""
    summary = data.get("summary", {})
    lines = [f"Inspector({data.get('title', '')}): {summary.get('status') or 'PLAN'} · {summary.get('meta', '')}"]
    graph = data.get("graph") or {}
    for e in graph.get("edges", []):
        lines.append(f"  {e['id']:<32} {e['label']:<16} {e['load_text']:>6} [{e['level']}]  {e['text']}")
    err = data.get("error") or {}
    if err.get("message"):
        lines.append(f"  FAILED in {err.get('instance')}: {err['message']}")
    return "\n".join(lines)
