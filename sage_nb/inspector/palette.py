"""Colours and thresholds shared by every renderer (widget, SVG report, matplotlib).

Buffer load follows Apache NiFi's connection bars: green up to 60 %, amber up to 85 %,
red above. The level is decided on the *displayed* whole percentage, so the colour and
the number a user reads always agree.

>>> load_level(0.60), load_level(0.61), load_level(0.86)
('green', 'amber', 'red')
>>> aggregate_state(["finished", "busy", "idle"])
'busy'
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..metrics import FULL_PERCENT

__all__ = [
    "AMBER_ABOVE",
    "LEVEL_COLORS",
    "RED_ABOVE",
    "STATE_COLORS",
    "aggregate_state",
    "legend",
    "load_level",
    "load_percent",
    "palette",
    "skew_level",
    "state_colors",
]

#: whole percentages: ``pct <= 60`` is green, ``pct <= 85`` amber, above is red (NiFi).
AMBER_ABOVE = 60
RED_ABOVE = FULL_PERCENT

LEVEL_COLORS = {"green": "#2e9d4a", "amber": "#f2a900", "red": "#d62f2f"}

#: state -> (fill, text colour, what it means); the order is the legend's order.
STATE_COLORS: dict[str, tuple[str, str, str]] = {
    "starting": ("#dfe5e8", "#1b1f23", "not started yet"),
    "idle": ("#cfe6fb", "#1b1f23", "waiting for input"),
    "busy": ("#1f77d0", "#ffffff", "running user code"),
    "backpressured": ("#f28c28", "#1b1f23", "blocked: a downstream queue is full"),
    "paused": ("#8e44ad", "#ffffff", "paused by the user"),
    "draining": ("#00897b", "#ffffff", "received some stop signals"),
    "closing": ("#4db6ac", "#1b1f23", "all stop signals in: flushing, close()"),
    "finished": ("#4f6470", "#ffffff", "all stop signals received, done"),
    "failed": ("#c62828", "#ffffff", "raised an exception"),
    "cancelled": ("#a0a4a8", "#1b1f23", "stopped before the end"),
}
UNKNOWN_STATE = ("#e0e0e0", "#1b1f23", "unknown state")

EDGE_IDLE = "#7d8b94"        # an edge whose queue is below the amber threshold
PATH_COLOR = "#d81b60"       # a packet's highlighted path
SELECT_COLOR = "#111111"

# When several instances of one operator differ, the logical node shows the most urgent.
_URGENCY = ("failed", "backpressured", "busy", "draining", "closing", "paused", "idle", "starting",
            "cancelled", "finished")


def load_percent(used: int, capacity: int | None) -> int | None:
    """Whole percentage shown for a queue; None when unbounded; a non-empty queue shows >= 1."""
    if not capacity:
        return None
    pct = round(100 * used / capacity)
    return max(pct, 1) if used > 0 else pct


def load_level(load: float | None) -> str:
    """'green', 'amber' or 'red' for a load in [0, 1] (None, i.e. unbounded: green)."""
    if load is None:
        return "green"
    pct = round(100 * load)
    if pct > RED_ABOVE:
        return "red"
    return "amber" if pct > AMBER_ABOVE else "green"


def skew_level(skew: float | None) -> str:
    """Colour of a skew score (max/mean): balanced below 1.25, amber below 2, red from 2."""
    if skew is None or skew < 1.25:
        return "green"
    return "amber" if skew < 2.0 else "red"


def state_colors(state: str) -> tuple[str, str]:
    """(fill, text colour) of a task state."""
    fill, text, _ = STATE_COLORS.get(state, UNKNOWN_STATE)
    return fill, text


def aggregate_state(states: Iterable[str]) -> str:
    """The state a logical operator shows: the most urgent one among its instances."""
    present = set(states)
    for state in _URGENCY:
        if state in present:
            return state
    return next(iter(sorted(present)), "starting")


def legend() -> dict[str, Any]:
    """What the legend shows: states with their colours, and the load levels."""
    return {
        "states": [{"state": s, "fill": f, "text": t, "meaning": m}
                   for s, (f, t, m) in STATE_COLORS.items()],
        "levels": [
            {"level": "green", "color": LEVEL_COLORS["green"], "label": f"queue ≤ {AMBER_ABOVE} %"},
            {"level": "amber", "color": LEVEL_COLORS["amber"],
             "label": f"{AMBER_ABOVE + 1}\N{EN DASH}{RED_ABOVE} %"},
            {"level": "red", "color": LEVEL_COLORS["red"], "label": f"> {RED_ABOVE} %"},
        ],
        "path": PATH_COLOR,
        "bottleneck": {"color": LEVEL_COLORS["red"], "label": "likely bottleneck",
                       "meaning": f"input queue over {RED_ABOVE} % full while the instance works and does "
                                  f"not wait on its outputs: the stages before it wait for it"},
    }


def palette() -> dict[str, Any]:
    """Everything a renderer needs to colour a view (sent once to the widget)."""
    return {"legend": legend(), "levels": dict(LEVEL_COLORS), "edge_idle": EDGE_IDLE,
            "path": PATH_COLOR, "select": SELECT_COLOR}
