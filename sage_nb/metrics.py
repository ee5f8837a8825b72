"""Counters, the routing trace and frozen snapshots of a job.

Counters live where they are cheap to bump (plain ints on connections, routers and
tasks); :meth:`Job.snapshot` copies them into the frozen dataclasses below, which are
safe to read from any thread, during a run and after it. The inspector reads only these.

>>> t = Trace(maxlen=2, rate=1000)
>>> t.sample()
True
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from operator import attrgetter
from typing import Any

from .communication.local_queue import QueueStats
from .communication.packet import safe_repr
from .communication.partition import partition
from .communication.router import RoutingDecision

__all__ = [
    "TASK_STATES",
    "ConnectionSnapshot",
    "ErrorInfo",
    "JobSnapshot",
    "KeySpread",
    "OperatorSnapshot",
    "TaskSnapshot",
    "Trace",
    "is_bottleneck",
    "spread",
]

_at = attrgetter("time")  # a routing decision's time

#: The states a task instance reports; the inspector colours nodes by them.
TASK_STATES = ("starting", "idle", "busy", "backpressured", "paused", "draining", "closing",
               "finished", "failed", "cancelled")
#: A queue fuller than this (whole percent) holds back the instances writing into it; the
#: inspector draws its load red (NiFi's threshold).
FULL_PERCENT = 85
_WORKING = ("busy", "idle", "draining")


class Trace:
    """A bounded log of routing decisions, sampled by a token bucket under load.

    At most ``rate`` decisions per second are recorded (the bucket holds one second's
    worth); the rest are only counted in ``skipped``. Routers ask :meth:`sample` before
    building a decision, so an unsampled decision costs one call.
    """

    def __init__(self, maxlen: int = 2000, rate: float = 500.0) -> None:
        self.events: deque[RoutingDecision] = deque(maxlen=maxlen)
        self.rate = rate
        self.skipped = 0
        self._tokens = rate
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def sample(self) -> bool:
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.skipped += 1
        if self.skipped & 31:  # under load, read the clock once per 32 refusals, not per packet
            return False
        now = time.monotonic()
        self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.skipped -= 1
            return True
        return False

    def record(self, decision: RoutingDecision) -> None:
        self.events.append(decision)

    def merge(self, decisions: list[RoutingDecision]) -> None:
        """Record decisions made in other processes (each process's in the order it made them,
        the processes' batches in the order they arrive), keeping the trace in time order, as
        one process's would be: a packet's hops read in the order it made them.

        >>> def at(t):
        ...     return RoutingDecision(1, "s[0]", "g", "round_robin", None, None, 1, (0,), ("g[0]",), 0, 0, t)
        >>> tr = Trace()
        >>> tr.merge([at(2.0), at(3.0)]); tr.merge([at(1.0)])
        >>> [d.time for d in tr.latest()]
        [1.0, 2.0, 3.0]
        """
        if not decisions:
            return
        with self._lock:
            ev = self.events
            late = bool(ev) and min(d.time for d in decisions) < ev[-1].time
            ev.extend(decisions)
            if late:  # (stable: decisions of the same instant keep their order)
                ordered = sorted(ev, key=_at)
                ev.clear()
                ev.extend(ordered)

    def latest(self, n: int | None = None) -> tuple[RoutingDecision, ...]:
        with self._lock:
            events = tuple(self.events)
        return events if n is None else events[-n:]


def packet_text(packet: Any) -> str | None:
    """How an error names what it was on: ``#<trace id> <payload>`` for a packet, the item's repr
    for an item that had no packet yet (a source's, a chained operator's); None for nothing.

    >>> packet_text(None), packet_text(37)
    (None, '37')
    """
    if packet is None:
        return None
    if hasattr(packet, "seq"):
        return f"#{packet.seq} {safe_repr(packet.payload, 200)}"
    return safe_repr(packet, 200)


@dataclass(frozen=True)
class ErrorInfo:
    """Where a job failed: node, instance, the packet's payload (repr) and the traceback."""

    node: str
    instance: str
    message: str
    packet: str | None
    traceback: str


@dataclass(frozen=True)
class TaskSnapshot:
    """One task instance: its state and counters, and its input queue's statistics."""

    name: str                 # instance name, e.g. "count[2]"
    operator: str             # logical operator, e.g. "count"
    parallel_index: int
    kind: str                 # source | map | flat_map | filter | co_map | sink
    state: str                # one of TASK_STATES
    packets_in: int
    packets_out: int
    busy_time: float          # seconds spent in user code
    blocked_time: float       # seconds blocked on a full downstream queue
    stops_received: int
    stops_expected: int
    queue: QueueStats | None  # input queue (None for sources)
    queue_id: str | None
    top_keys: tuple[tuple[str, int], ...] = ()   # (repr(key), count), most frequent first
    last_packets: tuple[str, ...] = ()           # reprs of the latest payloads received
    error: str | None = None
    unprocessed: int = 0      # taken from the queue but never processed (cancelled or failed)
    in_bundle: int = 0        # items of the bundle in user code now given to the function so far


@dataclass(frozen=True)
class ConnectionSnapshot:
    """One physical edge and the load of the queue it writes into."""

    source: str
    target: str
    source_operator: str
    target_operator: str
    broadcast_index: int
    parallel_index: int
    target_input_index: int
    strategy: str             # round_robin | hash | broadcast | chained (chain=True, no queue)
    key_label: str | None     # the key function's name for hash edges
    packets_sent: int
    stops_sent: int
    queue_id: str
    used: int
    capacity: int | None

    @property
    def load(self) -> float:
        return self.used / self.capacity if self.capacity else 0.0


@dataclass(frozen=True)
class OperatorSnapshot:
    """One logical operator."""

    name: str
    kind: str
    parallelism: int
    instances: tuple[str, ...]


@dataclass(frozen=True)
class JobSnapshot:
    """Everything the inspector shows, frozen at one instant (``elapsed`` seconds after start)."""

    job_id: str
    pipeline: str
    backend: str
    status: str               # RUNNING | PAUSED | FINISHED | CANCELLED | FAILED; CREATED for a plan
    #                           that never ran (plan_snapshot, whose backend is "none")
    elapsed: float
    operators: tuple[OperatorSnapshot, ...]
    logical_edges: tuple[tuple[str, str, str, str | None, int], ...]  # (src, dst, strategy, key_label, input)
    tasks: tuple[TaskSnapshot, ...]
    connections: tuple[ConnectionSnapshot, ...]
    trace: tuple[RoutingDecision, ...] = ()
    trace_skipped: int = 0
    error: ErrorInfo | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    stall: str | None = None  # "nothing moved for 12 s: …" while the job stalls (Job.stall)

    def task(self, name: str) -> TaskSnapshot:
        return next(t for t in self.tasks if t.name == name)

    def held_back(self) -> frozenset[str]:
        """The instances with a queue over ``FULL_PERCENT`` full among those they write into."""
        return frozenset(c.source for c in self.connections if _full(c.used, c.capacity))

    def bottlenecks(self) -> tuple[str, ...]:
        """The instances that likely limit the job's rate now (see :func:`is_bottleneck`). An
        instance blocked on a full queue downstream for over half of the run counts as waiting
        even in the instant it is not (it just got room): the stage it waits for is the cause."""
        half, held = self.elapsed / 2, self.held_back()
        return tuple(t.name for t in self.tasks
                     if is_bottleneck(t, "backpressured" if t.blocked_time > half else None, t.name in held))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe data (keys and payloads as reprs)."""
        d = asdict(self)
        d["trace"] = [_decision_dict(e) for e in self.trace]
        for c, snap in zip(d["connections"], self.connections, strict=True):
            c["load"] = snap.load
        return d


@dataclass(frozen=True)
class KeySpread:
    """How packets with the keys counted so far spread over ``parallelism`` instances of a
    ``key_by`` operator (:func:`spread`, ``job.what_if``): the packets and the most frequent
    key of each instance."""

    operator: str
    parallelism: int
    packets: tuple[int, ...]      # per instance
    hottest: tuple[Any, ...]      # each instance's most frequent key (None where it gets no packet)

    @property
    def skew(self) -> float | None:
        """The busiest instance's packets over the mean (1.0: even); None without packets."""
        total = sum(self.packets)
        return max(self.packets) * len(self.packets) / total if total else None

    def __repr__(self) -> str:
        skew = "-" if self.skew is None else f"{self.skew:.2f}"
        return (f"KeySpread({self.operator!r} over {self.parallelism} instances: packets "
                f"{list(self.packets)}, skew {skew}, hottest keys {list(self.hottest)})")


def spread(counts: Mapping[Any, int], parallelism: int, operator: str = "") -> KeySpread:
    """The packets of ``counts`` (key -> packets) per instance when hash-partitioned over
    ``parallelism`` instances, as ``key_by`` routes them.

    >>> spread({"u42": 80, "u1": 10, "u2": 10}, 1)
    KeySpread('' over 1 instances: packets [100], skew 1.00, hottest keys ['u42'])
    >>> s = spread({"u42": 80, "u1": 10, "u2": 10}, 4)
    >>> s.packets[partition("u42", 4)] >= 80, sum(s.packets)
    (True, 100)
    """
    if type(parallelism) is not int or parallelism < 1:
        raise ValueError(f"parallelism must be an int >= 1, got {parallelism!r}")
    per: list[Counter[Any]] = [Counter() for _ in range(parallelism)]
    for key, n in counts.items():
        per[partition(key, parallelism)][key] += n
    return KeySpread(operator, parallelism, tuple(sum(c.values()) for c in per),
                     tuple(c.most_common(1)[0][0] if c else None for c in per))


def _full(used: int, capacity: int | None) -> bool:
    return capacity is not None and capacity > 0 and round(100 * used / capacity) > FULL_PERCENT


def is_bottleneck(t: TaskSnapshot, state: str | None = None, held: bool = False) -> bool:
    """Whether instance ``t`` likely limits the job's rate: its input queue is over
    ``FULL_PERCENT`` full, so the instances writing into it wait, while it works (``state``,
    default ``t.state``: busy, idle or draining, not blocked in a put) and no queue it writes
    into is that full (``held``: one is; then what reads that queue holds both back). Of a
    backpressured chain, that is the slow stage: the cause, not the stages waiting behind it.
    An unbounded queue is never full.

    >>> from sage_nb.communication.local_queue import QueueStats
    >>> def task(used, state):
    ...     return TaskSnapshot("m[0]", "m", 0, "map", state, 0, 0, 0.0, 0.0, 0, 1,
    ...                         QueueStats(used, 100, used, used, 0), "q")
    >>> is_bottleneck(task(90, "busy")), is_bottleneck(task(90, "backpressured"))
    (True, False)
    >>> is_bottleneck(task(85, "busy")), is_bottleneck(task(90, "finished"))
    (False, False)
    >>> is_bottleneck(task(90, "busy"), held=True)
    False
    """
    q = t.queue
    if held or q is None or (state or t.state) not in _WORKING:
        return False
    return _full(q.used, q.capacity)


def _decision_dict(e: RoutingDecision) -> dict[str, Any]:
    return {"seq": e.seq, "sender": e.sender, "group": e.group, "strategy": e.strategy,
            "key": None if e.strategy == "round_robin" else safe_repr(e.key), "hash": e.hash_value,
            "group_size": e.group_size, "chosen": list(e.chosen), "targets": list(e.targets),
            "rr_before": e.rr_before, "rr_after": e.rr_after, "time": e.time, "payload": e.payload,
            "explain": e.explain()}
