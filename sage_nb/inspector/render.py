"""Matplotlib renderings (Agg, ``matplotlib.figure.Figure``, never pyplot): graph and timeline PNGs.

Both are thread-safe (no global pyplot state) and work without a browser — for slides,
terminals, static notebook viewers and the HTML report.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, PathPatch, Polygon, Rectangle
from matplotlib.path import Path as MplPath

from .history import LoadHistory
from .palette import AMBER_ABOVE, LEVEL_COLORS, RED_ABOVE, STATE_COLORS

__all__ = ["graph_png", "timeline_png"]

PX = 0.75           # points per CSS pixel at 100 px per inch... (72 / 96)
FONT = "DejaVu Sans"
TEXT = "#1b1f23"
MUTED = "#5b6770"


def _png(fig: Figure, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def _draw_edge(ax: Any, e: dict[str, Any], view: str, on_path: bool) -> None:
    codes = [MplPath.MOVETO, MplPath.CURVE4, MplPath.CURVE4, MplPath.CURVE4]
    color = "#d81b60" if on_path else e["stroke"]
    width = 4.0 if on_path else {"green": 1.8, "amber": 2.6, "red": 3.4}[e["level"]]
    ax.add_patch(PathPatch(MplPath(e["curve"], codes), fill=False, edgecolor=color, lw=width, zorder=1))
    ax.add_patch(Polygon(e["arrow"], closed=True, facecolor=color, edgecolor=color, zorder=1))
    lx, ly = e["lx"], e["ly"]
    w, h = (164, 50) if view == "logical" else (150, 34)
    ax.add_patch(FancyBboxPatch((lx - w / 2, ly - h / 2), w, h, boxstyle="round,pad=0,rounding_size=5",
                                facecolor="white", edgecolor="#c9d1d6", lw=0.8, alpha=0.95, zorder=2))
    top = ly - h / 2 + 4
    if view == "logical":
        ax.text(lx, top + 6, e["label"], ha="center", va="center", fontsize=11 * PX, color=TEXT,
                weight="bold", zorder=3, family=FONT)
        top += 16
    bar_x, bar_w = lx - w / 2 + 8, 78
    ax.add_patch(Rectangle((bar_x, top + 2), bar_w, 9, facecolor="#e7ebee", edgecolor="none", zorder=3))
    fill = (e["pct"] or 0) / 100 * bar_w
    ax.add_patch(Rectangle((bar_x, top + 2), fill, 9, facecolor=e["color"], edgecolor="none", zorder=3))
    ax.text(bar_x + bar_w + 6, top + 6.5, e["load_text"], ha="left", va="center", fontsize=12 * PX,
            weight="bold", color=TEXT, zorder=3, family=FONT)
    ax.text(lx, top + 21, e["text"], ha="center", va="center", fontsize=11 * PX, color=MUTED,
            zorder=3, family=FONT)


def _draw_node(ax: Any, n: dict[str, Any]) -> None:
    x, y, w, h = n["x"], n["y"], n["w"], n["h"]
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=8",
                                facecolor=n["fill"], edgecolor="#37474f", lw=1.2, zorder=4))
    ax.text(x + w / 2, y + 15, n["label"], ha="center", va="center", fontsize=14 * PX,
            weight="bold", color=n["text"], zorder=5, family=FONT)
    for i, line in enumerate(n["lines"][:2]):
        ax.text(x + w / 2, y + 33 + 14 * i, line, ha="center", va="center", fontsize=11.5 * PX,
                color=n["text"], zorder=5, family=FONT)


def _draw_legend(ax: Any, states: Sequence[str], y: float) -> None:
    x = 24.0
    for s in states:
        fill = STATE_COLORS[s][0]
        ax.add_patch(FancyBboxPatch((x, y), 14, 14, boxstyle="round,pad=0,rounding_size=3",
                                    facecolor=fill, edgecolor="#37474f", lw=0.8))
        ax.text(x + 19, y + 7, s, va="center", fontsize=11 * PX, color=TEXT, family=FONT)
        x += 30 + 7.2 * len(s)
    x += 12
    for level, label in (("green", f"≤{AMBER_ABOVE}%"), ("amber", f"≤{RED_ABOVE}%"), ("red", f">{RED_ABOVE}%")):
        ax.add_patch(Rectangle((x, y + 2), 22, 10, facecolor=LEVEL_COLORS[level], edgecolor="none"))
        ax.text(x + 27, y + 7, label, va="center", fontsize=11 * PX, color=TEXT, family=FONT)
        x += 36 + 7.2 * len(label)


def graph_png(graph: dict[str, Any], summary: dict[str, Any] | None = None,
              palette: dict[str, Any] | None = None, *, path: Sequence[str] = (), dpi: int = 150) -> bytes:
    """The graph view model drawn with its loads, states and a legend, as PNG bytes."""
    summary = summary or {}
    view = graph.get("view", "logical")
    width, height = max(graph.get("width", 300), 640), graph.get("height", 120)
    header, footer = 34.0, 34.0
    total = height + header + footer
    fig = Figure(figsize=(width / 100, total / 100))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(total, 0)
    ax.axis("off")
    title = f"{summary.get('pipeline', '')}  ·  {summary.get('status', '')}  ·  {summary.get('elapsed_text', '')}"
    ax.text(24, 20, title.strip(" ·"), fontsize=15 * PX, weight="bold", color=TEXT, va="center", family=FONT)
    ax.text(width - 24, 20, f"{view} view", fontsize=12 * PX, color=MUTED, va="center", ha="right", family=FONT)
    body = ax.inset_axes((0, footer / total, 1, height / total), transform=ax.transAxes)
    body.set_xlim(0, width)
    body.set_ylim(height, 0)
    body.axis("off")
    for g in graph.get("groups", []):
        body.add_patch(FancyBboxPatch((g["x"], g["y"]), g["w"], g["h"], boxstyle="round,pad=0,rounding_size=10",
                                      facecolor="#f5f7f8", edgecolor="#b0bec5", lw=1, linestyle="--", zorder=0))
        body.text(g["x"] + 8, g["y"] + 11, g["label"], fontsize=12 * PX, color=MUTED, weight="bold",
                  va="center", family=FONT, zorder=0)
    for e in graph.get("edges", []):
        _draw_edge(body, e, view, e["id"] in path)
    for n in graph.get("nodes", []):
        _draw_node(body, n)
    present = [s for s in STATE_COLORS if any(n["state"] == s for n in graph.get("nodes", []))]
    _draw_legend(ax, present, total - footer + 8)
    return _png(fig, dpi)


def timeline_png(history: LoadHistory, *, title: str = "buffer load over time", top: int = 8,
                 dpi: int = 100) -> bytes:
    """Buffer load (%) per input queue over time, with the 60 % / 85 % bands, as PNG bytes."""
    fig = Figure(figsize=(8.4, 2.9))
    ax = fig.add_axes((0.07, 0.17, 0.68, 0.72))
    ax.axhspan(0, AMBER_ABOVE, color=LEVEL_COLORS["green"], alpha=0.07, lw=0)
    ax.axhspan(AMBER_ABOVE, RED_ABOVE, color=LEVEL_COLORS["amber"], alpha=0.12, lw=0)
    ax.axhspan(RED_ABOVE, 105, color=LEVEL_COLORS["red"], alpha=0.10, lw=0)
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=11, loc="left", color=TEXT)
    ax.set_xlabel("seconds since the job started", fontsize=9, color=MUTED)
    ax.set_ylabel("queue load %", fontsize=9, color=MUTED)
    ax.tick_params(labelsize=8, colors=MUTED)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    busiest = sorted(history.loads.items(), key=lambda kv: -max(kv[1], default=0.0))[:top]
    if not history.times or not busiest:
        ax.text(0.5, 0.5, "no bounded queue has been measured yet", transform=ax.transAxes,
                ha="center", va="center", fontsize=10, color=MUTED)
        ax.set_xlim(0, 1)
    else:
        marker = "o" if len(history.times) < 3 else None
        for name, series in busiest:
            ax.plot(history.times, [100 * v for v in series], lw=1.8, marker=marker, label=f"{name} queue")
        ax.set_xlim(min(history.times), max(history.times[-1], history.times[0] + 1e-3))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _png(fig, dpi)
