"""Pure functions: snapshot -> identifiers, rates, routing log rows, packet paths, key tables.

Nothing here touches a job, a thread or a widget; every function takes frozen snapshots
(:mod:`sage_nb.metrics`) and returns plain JSON-safe data.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..communication.packet import safe_repr
from ..communication.router import RoutingDecision
from ..metrics import JobSnapshot, KeySpread
from .palette import skew_level

__all__ = [
    "Counters",
    "Rates",
    "connection_ids",
    "counters",
    "format_rate",
    "key_distribution",
    "logical_edge_ids",
    "packet_path",
    "rates",
    "routing_rows",
    "short_repr",
    "strategy_label",
    "what_if_view",
]

STRATEGY_NAMES = {"round_robin": "round-robin", "hash": "hash", "broadcast": "broadcast",
                  "chained": "chained"}


def short_repr(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters (with an ellipsis)."""
    text = value if isinstance(value, str) else safe_repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def strategy_label(strategy: str, key_label: str | None = None) -> str:
    """'round-robin', 'hash(word)', 'broadcast' — the text written on an edge."""
    if strategy == "hash":
        return f"hash({key_label})" if key_label else "hash(key)"
    return STRATEGY_NAMES.get(strategy, strategy)


def _unique(bases: Sequence[str], inputs: Sequence[int]) -> list[str]:
    """``src->dst``, or ``src->dst#input`` where one pair feeds several inputs."""
    seen = Counter(bases)
    return [b if seen[b] == 1 else f"{b}#{i}" for b, i in zip(bases, inputs, strict=True)]


def connection_ids(snap: JobSnapshot) -> list[str]:
    """One id per physical connection, aligned with ``snap.connections``."""
    return _unique([f"{c.source}->{c.target}" for c in snap.connections],
                   [c.target_input_index for c in snap.connections])


def logical_edge_ids(snap: JobSnapshot) -> list[str]:
    """One id per logical edge, aligned with ``snap.logical_edges``."""
    return _unique([f"{e[0]}->{e[1]}" for e in snap.logical_edges], [e[4] for e in snap.logical_edges])


# ----------------------------------------------------------------------------- rates
@dataclass(frozen=True)
class Counters:
    """The monotonic counters of one snapshot, by connection id and task name."""

    elapsed: float
    sent: dict[str, int]
    received: dict[str, int]
    busy: dict[str, float]
    blocked: dict[str, float]


@dataclass(frozen=True)
class Rates:
    """Per second: packets per connection and per task, busy and blocked milliseconds per task."""

    edges: dict[str, float]
    tasks: dict[str, float]
    busy_ms: dict[str, float]
    blocked_ms: dict[str, float]
    average: bool = False   # True: averaged over the whole run (the job has ended)


def counters(snap: JobSnapshot) -> Counters:
    ids = connection_ids(snap)
    return Counters(snap.elapsed, {i: c.packets_sent for i, c in zip(ids, snap.connections, strict=True)},
                    {t.name: t.packets_in for t in snap.tasks},
                    {t.name: t.busy_time for t in snap.tasks},
                    {t.name: t.blocked_time for t in snap.tasks})


def rates(old: Counters | None, new: Counters) -> Rates:
    """Rates between two readings; without ``old``, averages over the whole run."""
    average = old is None
    base = old or Counters(0.0, {}, {}, {}, {})
    dt = new.elapsed - base.elapsed
    if dt <= 0:
        return Rates({k: 0.0 for k in new.sent}, {k: 0.0 for k in new.received},
                     {k: 0.0 for k in new.busy}, {k: 0.0 for k in new.blocked}, average)

    def per_second(a: Mapping[str, float], b: Mapping[str, Any],
                   scale: float = 1.0) -> dict[str, float]:
        return {k: max(0.0, (v - a.get(k, 0)) * scale / dt) for k, v in b.items()}

    return Rates(per_second(base.sent, new.sent), per_second(base.received, new.received),
                 per_second(base.busy, new.busy, 1000.0), per_second(base.blocked, new.blocked, 1000.0),
                 average)


def format_rate(rate: float) -> str:
    """'0/s', '7.5/s', '42/s', '1.2k/s'."""
    if rate >= 1000:
        return f"{rate / 1000:.1f}k/s"
    if rate >= 10 or rate == 0:
        return f"{rate:.0f}/s"
    return f"{rate:.1f}/s"


# ----------------------------------------------------------------------------- routing log
def routing_rows(trace: Sequence[RoutingDecision], limit: int = 60,
                 memo: dict[int, tuple[RoutingDecision, dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """The latest ``limit`` routing decisions, newest first, as table rows (``memo``: rows
    already made, by decision, reused as the same dicts)."""
    rows = []
    for d in reversed(trace[-limit:] if limit else trace):
        hit = memo.get(id(d)) if memo is not None else None
        if hit is not None and hit[0] is d:
            rows.append(hit[1])
            continue
        rows.append({
            "seq": d.seq,
            "packet": f"#{d.seq} {short_repr(d.payload, 20)}" if d.payload else f"#{d.seq}",
            "key": "" if d.strategy == "round_robin" else short_repr(safe_repr(d.key), 24),
            "from": d.sender,
            "to": ", ".join(d.targets),
            "group": d.group,
            "strategy": STRATEGY_NAMES.get(d.strategy, d.strategy),
            "explain": d.explain(),
        })
        if memo is not None:
            memo[id(d)] = (d, rows[-1])
    return rows


def packet_path(snap: JobSnapshot, seq: int, view: str) -> list[str]:
    """Ids of the edges (of ``view``) that the packet ``seq`` travelled on, in trace order."""
    operator_of = {t.name: t.operator for t in snap.tasks}
    phys = dict(zip(((c.source, c.target, c.target_input_index) for c in snap.connections),
                    connection_ids(snap), strict=True))
    logical = dict(zip(((e[0], e[1]) for e in snap.logical_edges), logical_edge_ids(snap), strict=False))
    path: list[str] = []
    for d in snap.trace:
        if d.seq != seq:
            continue
        for target in d.targets:
            if view == "physical":
                ids = [i for (s, t, _), i in phys.items() if s == d.sender and t == target]
            else:
                key = (operator_of.get(d.sender, d.sender), operator_of.get(target, d.group))
                ids = [logical[key]] if key in logical else []
            path.extend(i for i in ids if i not in path)
    return path


# ----------------------------------------------------------------------------- key distribution
def _hash_operators(snap: JobSnapshot) -> list[tuple[str, str | None]]:
    found: dict[str, str | None] = {}
    for _src, dst, strategy, key_label, _ in snap.logical_edges:
        if strategy == "hash" and dst not in found:
            found[dst] = key_label
    for d in snap.trace:
        if d.strategy == "hash" and d.group not in found:
            found[d.group] = None
    order = [op.name for op in snap.operators]
    return sorted(found.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))


def key_distribution(snap: JobSnapshot, top: int = 3) -> list[dict[str, Any]]:
    """Per hash-partitioned operator: packets per instance, top keys, skew (max / mean)."""
    tables = []
    tasks = {t.name: t for t in snap.tasks}
    for op_name, key_label in _hash_operators(snap):
        op = next((o for o in snap.operators if o.name == op_name), None)
        names = list(op.instances) if op else sorted({c.target for c in snap.connections
                                                      if c.target_operator == op_name})
        counts = dict.fromkeys(names, 0)
        for c in snap.connections:
            if c.target_operator == op_name and c.strategy == "hash" and c.target in counts:
                counts[c.target] += c.packets_sent
        if not any(counts.values()):   # keyed per packet, not per edge: count what arrived
            counts = {n: tasks[n].packets_in if n in tasks else 0 for n in names}
        total = sum(counts.values())
        mean = total / len(counts) if counts else 0.0
        skew = max(counts.values()) / mean if mean else None
        tables.append({
            "operator": op_name,
            "key_label": key_label or "key",
            "total": total,
            "skew": None if skew is None else round(skew, 2),
            "skew_text": "\N{EN DASH}" if skew is None else f"{skew:.2f}",
            "skew_level": skew_level(skew),
            "instances": [{
                "name": n,
                "packets": v,
                "share": round(v / total, 4) if total else 0.0,
                "top_keys": [[short_repr(k, 24), int(cnt)]
                             for k, cnt in (tasks[n].top_keys[:top] if n in tasks else ())],
            } for n, v in counts.items()],
        })
    return tables


def what_if_view(s: KeySpread, at: str = "") -> dict[str, Any]:
    """A :class:`~sage_nb.metrics.KeySpread` as the key distribution panel shows it (``at``:
    which keys, e.g. 'keys counted by 3.2 s')."""
    total = sum(s.packets)
    skew = s.skew
    return {
        "operator": s.operator, "parallelism": s.parallelism, "total": total,
        "skew": None if skew is None else round(skew, 2),
        "skew_text": "\N{EN DASH}" if skew is None else f"{skew:.2f}",
        "skew_level": skew_level(skew),
        "at": at,
        "instances": [{"name": f"{s.operator}[{i}]", "packets": n,
                       "share": round(n / total, 4) if total else 0.0,
                       "hottest": short_repr(safe_repr(key), 24) if n else ""}
                      for i, (n, key) in enumerate(zip(s.packets, s.hottest, strict=True))],
    }
