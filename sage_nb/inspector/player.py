"""A self-contained HTML player of a step-mode run: step, back, play and scrub offline.

The page is ``static/player.html`` filled with :class:`string.Template`. It embeds the
recording as the inspector's view model at every position, in one
``<script type="application/json">`` (``<``, ``>``, ``&`` written as unicode escapes, so no
``</script>`` can end it early), and the widget's own drawing code (``static/inspector.js``)
driven by ``static/player.js`` instead of a kernel: the player looks like the widget and
needs no network, no Python and no Jupyter.

Consecutive positions differ in a few nodes, edges and log rows, so position 0 is stored
whole and every later one as a patch against the one before (:func:`diff`; ``player.js``
applies them with the same rules):

- a string, number, boolean or null: that value;
- ``{"$": value}``: replace with a list or a dict;
- ``{"$d": {key: patch}, "$x": [keys removed]}``: a dict, key by key;
- ``{"$l": [[index, patch], ...]}``: a list of the same length, item by item;
- ``{"$p": [items], "$n": n}``: new items put in front of the first ``n`` old ones (the log).

>>> diff({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 3]})
{'$d': {'b': {'$l': [[1, 3]]}}}
>>> diff([{"seq": 1}], [{"seq": 2}, {"seq": 1}])
{'$p': [{'seq': 2}], '$n': 1}
"""

from __future__ import annotations

import html
import itertools
import time
from pathlib import Path
from string import Template
from typing import Any

from .report import json_for_script

__all__ = ["diff", "encode", "render_player", "save_player"]

STATIC = Path(__file__).parent / "static"
_MISSING = object()


def _pushed(old: list[Any], new: list[Any], ks: range) -> dict[str, Any] | None:
    """``new`` as a few new items in front of the first old ones (the routing log), if it is."""
    for k in ks:
        keep = len(new) - k
        if keep <= len(old) and new[k:] == old[:keep]:
            return {"$p": new[:k], "$n": keep}
    return None


def _list_diff(old: list[Any], new: list[Any]) -> dict[str, Any]:
    few = range(1, min(len(new) - 1, 8) + 1)      # at least one old item kept
    pushed = _pushed(old, new, few)
    if pushed is not None:
        return pushed
    if len(old) == len(new):
        items = [[i, p] for i, (a, b) in enumerate(zip(old, new, strict=True)) if (p := diff(a, b)) is not None]
        if len(items) <= len(new) // 2 + 1:
            return {"$l": items}
    return _pushed(old, new, range(few.stop, len(new))) or {"$": new}


def diff(old: Any, new: Any) -> Any:
    """The patch that turns ``old`` into ``new`` (JSON data); None when they are equal."""
    if old is new or (type(old) is type(new) and old == new):
        return None
    if new is None:
        return {"$": None}               # None itself means "unchanged"
    if not isinstance(new, dict | list):
        return new
    if isinstance(old, dict) and isinstance(new, dict):
        changed = {k: p for k, v in new.items() if (p := diff(old.get(k, _MISSING), v)) is not None}
        gone = [k for k in old if k not in new]
        return {**({"$d": changed} if changed else {}), **({"$x": gone} if gone else {})}
    if isinstance(old, list) and isinstance(new, list) and old and new:
        return _list_diff(old, new)
    return {"$": new}


def encode(states: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Position 0 whole, then each position as a patch against the previous one."""
    frames: list[dict[str, Any]] = states[:1]
    frames += [diff(a, b) or {} for a, b in itertools.pairwise(states)]   # dicts: never raw
    return frames


def _script() -> str:
    code = "\n".join((STATIC / name).read_text(encoding="utf-8") for name in ("inspector.js", "player.js"))
    if "</script" in code.lower():      # would end the inline script early
        raise ValueError("inspector.js / player.js must not contain '</script'")
    return code


def render_player(meta: dict[str, Any], states: list[dict[str, Any]], total: int) -> str:
    """The whole player page: ``meta`` (title, palette, view, rate), the states, the step count."""
    shown = len(states) - 1
    note = (f"This player holds the first {shown:,} of {total:,} steps (at most {shown:,} are "
            f"embedded, to keep the file small)." if shown < total else f"All {total:,} steps.")
    data = {**meta, "frames": encode(states), "shown": shown, "total": total, "note": note}
    page = Template((STATIC / "player.html").read_text(encoding="utf-8"))
    return page.substitute(
        title=html.escape(f"{meta.get('title') or 'sage_nb'} — step player"),
        style=(STATIC / "inspector.css").read_text(encoding="utf-8"),
        note=html.escape(note), saved=html.escape(time.strftime("%Y-%m-%d %H:%M:%S")),
        data=json_for_script(data), script=_script())


def save_player(meta: dict[str, Any], states: list[dict[str, Any]], total: int, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_player(meta, states, total), encoding="utf-8")
    return out
