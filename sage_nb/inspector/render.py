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
from matplotlib.ticker import FixedLocator, MaxNLocator

from .history import LoadHistory
from .palette import AMBER_ABOVE, LEVEL_COLORS, RED_ABOVE, STATE_COLORS, load_level
from .view import fit

__all__ = ["Timeline", "graph_png", "peaks_png", "timeline_png"]

PX = 0.75           # points per CSS pixel at 100 px per inch... (72 / 96)
FONT = "DejaVu Sans"
TEXT = "#1b1f23"
MUTED = "#5b6770"
PATH = "#d81b60"


def _plain(text: str) -> str:
    """Text for labels matplotlib would otherwise read as mathtext (``$...$``)."""
    return text.replace("$", r"\$")


def _png(fig: Figure, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


_CODES = [MplPath.MOVETO, MplPath.CURVE4, MplPath.CURVE4, MplPath.CURVE4,
          MplPath.LINETO, MplPath.CURVE4, MplPath.CURVE4, MplPath.CURVE4]


def _draw_edge(ax: Any, e: dict[str, Any], view: str, size: Sequence[float], on_path: bool) -> None:
    color = PATH if on_path else e["stroke"]
    width = 4.0 if on_path else {"green": 1.8, "amber": 2.6, "red": 3.4}[e["level"]]
    ax.add_patch(PathPatch(MplPath(e["curve"], _CODES), fill=False, edgecolor=color, lw=width, zorder=1))
    ax.add_patch(Polygon(e["arrow"], closed=True, facecolor=color, edgecolor=color, zorder=1))
    lx, ly = e["lx"], e["ly"]
    w, h = size
    left, top = lx - w / 2, ly - h / 2
    ax.add_patch(FancyBboxPatch((left, top), w, h, boxstyle="round,pad=0,rounding_size=5",
                                facecolor="white", edgecolor=PATH if on_path else "#c9d1d6", lw=0.8,
                                zorder=2))
    if view == "logical":
        ax.text(lx, top + 11, e["label"], ha="center", va="center", fontsize=12 * PX, color=TEXT,
                weight="bold", zorder=3, family=FONT, parse_math=False)
        top += 16
    bar = w - 58
    ax.add_patch(Rectangle((left + 10, top + 6), bar, 10, facecolor="#e7ebee", edgecolor="none", zorder=3))
    fill = (e["pct"] or 0) / 100 * bar
    ax.add_patch(Rectangle((left + 10, top + 6), fill, 10, facecolor=e["color"], edgecolor="none", zorder=3))
    ax.text(left + bar + 16, top + 11, e["load_text"], ha="left", va="center", fontsize=12.5 * PX,
            weight="bold", color=TEXT, zorder=3, family=FONT, parse_math=False)
    ax.text(lx, top + 25.5, e["text"], ha="center", va="center", fontsize=11.5 * PX, color=MUTED,
            zorder=3, family=FONT, parse_math=False)


def _draw_node(ax: Any, n: dict[str, Any]) -> None:
    x, y, w, h = n["x"], n["y"], n["w"], n["h"]
    red = LEVEL_COLORS["red"]
    if n.get("bottleneck"):  # a dashed ring and a badge, as the widget draws a likely bottleneck
        ax.add_patch(FancyBboxPatch((x - 5, y - 5), w + 10, h + 10, boxstyle="round,pad=0,rounding_size=11",
                                    facecolor="none", edgecolor=red, lw=1.8, ls=(0, (4, 2)), zorder=4))
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=8",
                                facecolor=n["fill"], edgecolor="#37474f", lw=1.2, zorder=4))
    if n.get("bottleneck"):
        ax.add_patch(FancyBboxPatch((x + w - 74, y - 9), 70, 16, boxstyle="round,pad=0,rounding_size=8",
                                    facecolor=red, edgecolor="none", zorder=6))
        ax.text(x + w - 39, y - 1, "bottleneck", ha="center", va="center", fontsize=10.5 * PX,
                weight="bold", color="#ffffff", zorder=7, family=FONT, parse_math=False)
    ax.text(x + w / 2, y + 15, n["label"], ha="center", va="center", fontsize=14.5 * PX,
            weight="bold", color=n["text"], zorder=5, family=FONT, parse_math=False)
    for i, line in enumerate(n["lines"][:2]):
        ax.text(x + w / 2, y + 32 + 15 * i, line, ha="center", va="center", fontsize=12 * PX,
                color=n["text"], zorder=5, family=FONT, parse_math=False)


def _draw_legend(ax: Any, states: Sequence[str], y: float, bottleneck: bool = False) -> None:
    x = 24.0
    for s in states:
        fill = STATE_COLORS[s][0]
        ax.add_patch(FancyBboxPatch((x, y), 14, 14, boxstyle="round,pad=0,rounding_size=3",
                                    facecolor=fill, edgecolor="#37474f", lw=0.8))
        ax.text(x + 19, y + 7, s, va="center", fontsize=11 * PX, color=TEXT, family=FONT, parse_math=False)
        x += 30 + 7.2 * len(s)
    x += 12
    for level, label in (("green", f"≤{AMBER_ABOVE}%"), ("amber", f"≤{RED_ABOVE}%"), ("red", f">{RED_ABOVE}%")):
        ax.add_patch(Rectangle((x, y + 2), 22, 10, facecolor=LEVEL_COLORS[level], edgecolor="none"))
        ax.text(x + 27, y + 7, label, va="center", fontsize=11 * PX, color=TEXT, family=FONT, parse_math=False)
        x += 36 + 7.2 * len(label)
    if bottleneck:
        ax.add_patch(FancyBboxPatch((x, y), 14, 14, boxstyle="round,pad=0,rounding_size=3", facecolor="none",
                                    edgecolor=LEVEL_COLORS["red"], lw=1.4, ls=(0, (3, 1.5))))
        ax.text(x + 19, y + 7, "likely bottleneck", va="center", fontsize=11 * PX, color=TEXT, family=FONT,
                parse_math=False)


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
    ax.text(24, 20, title.strip(" ·"), fontsize=15 * PX, weight="bold", color=TEXT, va="center", family=FONT, parse_math=False)
    ax.text(width - 24, 20, f"{view} view", fontsize=12 * PX, color=MUTED, va="center", ha="right", family=FONT, parse_math=False)
    body = ax.inset_axes((0, footer / total, 1, height / total), transform=ax.transAxes)
    body.set_xlim(0, width)
    body.set_ylim(height, 0)
    body.axis("off")
    for g in graph.get("groups", []):
        body.add_patch(FancyBboxPatch((g["x"], g["y"]), g["w"], g["h"], boxstyle="round,pad=0,rounding_size=10",
                                      facecolor="#f5f7f8", edgecolor="#b0bec5", lw=1, linestyle="--", zorder=0))
        body.text(g["x"] + 8, g["y"] + 11, g["label"], fontsize=12 * PX, color=MUTED, weight="bold",
                  va="center", family=FONT, parse_math=False, zorder=0)
    size = graph.get("label_size", (150, 34))
    for e in graph.get("edges", []):
        _draw_edge(body, e, view, size, e["id"] in path)
    for n in graph.get("nodes", []):
        _draw_node(body, n)
    present = [s for s in STATE_COLORS if any(n["state"] == s for n in graph.get("nodes", []))]
    _draw_legend(ax, present, total - footer + 8, any(n.get("bottleneck") for n in graph.get("nodes", [])))
    return _png(fig, dpi)


class Timeline:
    """A persistent timeline figure: each :meth:`png` updates its lines and re-renders.

    Reusing one figure (fixed ticks, lines updated in place) makes a rendering several
    times cheaper than building a new one, which matters while a job runs.
    """

    def __init__(self, title: str = "buffer load over time", top: int = 8) -> None:
        self.top = top
        self.fig = Figure(figsize=(8.4, 2.9))
        ax = self.ax = self.fig.add_axes((0.07, 0.17, 0.68, 0.72))
        ax.axhspan(0, AMBER_ABOVE, color=LEVEL_COLORS["green"], alpha=0.07, lw=0)
        ax.axhspan(AMBER_ABOVE, RED_ABOVE, color=LEVEL_COLORS["amber"], alpha=0.12, lw=0)
        ax.axhspan(RED_ABOVE, 105, color=LEVEL_COLORS["red"], alpha=0.10, lw=0)
        ax.set_ylim(0, 105)
        ax.yaxis.set_major_locator(FixedLocator([0, 25, AMBER_ABOVE, RED_ABOVE, 100]))
        ax.xaxis.set_major_locator(MaxNLocator(7))
        ax.set_title(_plain(title), fontsize=11, loc="left", color=TEXT)
        ax.set_xlabel("seconds since the job started", fontsize=9, color=MUTED)
        ax.set_ylabel("queue load %", fontsize=9, color=MUTED)
        ax.tick_params(labelsize=8, colors=MUTED)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        self.empty = ax.text(0.5, 0.5, "no bounded queue has been measured yet", transform=ax.transAxes,
                             ha="center", va="center", fontsize=10, color=MUTED)
        self.lines: dict[str, Any] = {}

    def set_title(self, title: str) -> None:
        self.ax.set_title(_plain(title), fontsize=11, loc="left", color=TEXT)

    def png(self, history: LoadHistory, dpi: int = 100, *, final: bool = False) -> bytes:
        """The timeline; for a run that ended before three readings, its queues' peak loads."""
        if final and len(history.times) < 3 and history.peaks:
            return peaks_png(history.peaks, dpi=dpi)
        busiest = sorted(history.loads.items(), key=lambda kv: -max(kv[1], default=0.0))[: self.top]
        names = [name for name, _ in busiest]
        if names != list(self.lines):
            for line in self.lines.values():
                line.remove()
            self.lines = {name: self.ax.plot([], [], lw=1.8, label=_plain(f"{fit(name, 24)} queue"))[0] for name in names}
            legend = self.ax.get_legend()
            if legend is not None:
                legend.remove()
            if names:
                self.ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        marker = "o" if len(history.times) < 3 else ""
        for name, series in busiest:
            self.lines[name].set_data(history.times, [100 * v for v in series])
            self.lines[name].set_marker(marker)
        self.empty.set_visible(not names or not history.times)
        self.ax.set_xlim(0, max(1.0, history.times[-1] if history.times else 0.0))
        return _png(self.fig, dpi)


def timeline_png(history: LoadHistory, *, title: str = "buffer load over time", top: int = 8,
                 dpi: int = 100, final: bool = False) -> bytes:
    """Buffer load (%) per input queue over time, with the 60 % / 85 % bands, as PNG bytes."""
    return Timeline(title, top).png(history, dpi, final=final)


def peaks_png(peaks: dict[str, float], *, dpi: int = 100, top: int = 12) -> bytes:
    """Peak buffer load per queue as bars: what is left to show when the run was not watched."""
    names = sorted(peaks, key=lambda n: -peaks[n])[:top]
    rows = 0.3 * max(1, len(names))
    height = 1.1 + rows                      # inches: 0.45 below the bars, 0.65 above
    fig = Figure(figsize=(8.4, height))
    ax = fig.add_axes((0.16, 0.45 / height, 0.8, rows / height))
    values = [100 * peaks[n] for n in names]
    colors = [LEVEL_COLORS[load_level(v / 100)] for v in values]
    ax.barh(range(len(names)), values, color=colors, height=0.6)
    ax.set_yticks(range(len(names)), [_plain(f"{fit(n, 20)} queue") for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.xaxis.set_major_locator(FixedLocator([0, 25, AMBER_ABOVE, RED_ABOVE, 100]))
    ax.tick_params(labelsize=8, colors=MUTED)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title("peak buffer load per queue (the run was over before it could be plotted over time)",
                 fontsize=10, loc="left", color=TEXT)
    return _png(fig, dpi)


def gif(frames: Sequence[bytes], fps: float) -> bytes:
    """PNG ``frames`` (all of one size) as an animated GIF at ``fps`` frames a second, looping
    (Pillow, which matplotlib brings; a frame equal to the one before only lengthens it)."""
    from PIL import Image

    images = [Image.open(io.BytesIO(f)).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
              for f in frames]
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:],
                   duration=round(1000 / fps), loop=0)
    return out.getvalue()
