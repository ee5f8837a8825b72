"""``BaseRouter``: sends an upstream instance's packets to its downstream instances.

An upstream instance has one *broadcast group* per downstream logical operator; every
packet goes to every group. Inside a group the strategy picks the instance(s):

- ``round_robin`` — a counter per group and per upstream instance;
- ``hash`` — :func:`~sage_nb.communication.partition.partition` of the key (stable across
  processes); the key comes from the group's key function (``key_by``) or the packet;
- ``broadcast`` — every instance of the group.

A packet's own ``partition_strategy``/``partition_key`` wins over the group's default.
Deliveries block while a queue is full (backpressure, nothing dropped); a blocked
delivery ends with :class:`~sage_nb.errors.Cancelled` when the router's ``cancel`` event
is set or the queue is shut down, or with :class:`~sage_nb.errors.DeliveryError` after
``put_timeout`` seconds. ``send()`` returns the number of deliveries, all of them made.

With ``batch_size > 1`` routing stays per packet but deliveries wait in per-connection
buffers that are shipped in batches (:mod:`~sage_nb.communication.shipping`); then
``send()`` returns the deliveries routed, and ``packets_sent`` counts them once delivered.
Subclasses that deliver in their own way override ``_put(conn, item)`` (one call per
delivery, stop signals included) and keep packet-by-packet routing.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import Cancelled, DeliveryError, ProtocolError
from .connection import Connection
from .gathering import Gatherer
from .local_queue import QueueShutDown
from .packet import Packet, StopSignal, safe_repr
from .partition import partition, stable_hash
from .shipping import OWNERS_CACHE, Shipper, capacity

__all__ = ["BaseRouter", "BroadcastGroup", "RoutingDecision", "Tracer"]


def _nothing() -> None:
    """A router's ``wake`` when no flusher watches it."""


@dataclass(frozen=True)
class BroadcastGroup:
    """The connections from one upstream instance to every instance of one downstream operator."""

    index: int
    target: str
    strategy: str
    connections: tuple[Connection, ...]
    key: Callable[[Any], Any] | None = None


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """Why a packet went where it went — data for the inspector's routing log.

    >>> d = RoutingDecision(7, "split[0]", "count", "hash", "u42", 0x3A1F0000000000AB, 4, (3,),
    ...                     ("count[3]",), None, None, 0.0)
    >>> d.explain()
    "hash('u42') = 0x3a1f… mod 4 = 3"
    """

    seq: int
    sender: str
    group: str
    strategy: str
    key: Any
    hash_value: int | None
    group_size: int
    chosen: tuple[int, ...]
    targets: tuple[str, ...]
    rr_before: int | None
    rr_after: int | None
    time: float
    payload: str = ""         # repr of the packet's payload (shortened)

    def explain(self) -> str:
        if self.strategy == "hash":
            return f"hash({safe_repr(self.key, 40)}) = 0x{self.hash_value:016x}"[:-12] + \
                f"… mod {self.group_size} = {self.chosen[0]}"
        if self.strategy == "round_robin":
            return f"round-robin counter {self.rr_before} → {self.rr_after}"
        return f"broadcast to {self.group_size}"


class Tracer(Protocol):
    """Receives routing decisions; ``sample()`` is asked first so unsampled ones cost nothing."""

    def sample(self) -> bool: ...

    def record(self, decision: RoutingDecision) -> None: ...


class BaseRouter(Shipper, Gatherer):
    """Routes the packets of one upstream instance (``name``) over its broadcast groups.

    >>> from sage_nb.communication import PythonQueueDescriptor
    >>> qds = [PythonQueueDescriptor(queue_id=f"q{i}") for i in range(3)]
    >>> conns = tuple(Connection(0, i, f"m[{i}]", qd, 0, "src[0]") for i, qd in enumerate(qds))
    >>> r = BaseRouter("src[0]", [BroadcastGroup(0, "m", "round_robin", conns)])
    >>> [r.send(Packet(x)) for x in "abcd"]
    [1, 1, 1, 1]
    >>> [qd.qsize() for qd in qds]
    [2, 1, 1]
    """

    def __init__(self, name: str, groups: Sequence[BroadcastGroup], *, cancel: Any = None,
                 put_timeout: float | None = None, poll_interval: float = 0.05,
                 batch_size: int = 1) -> None:
        self.name = name
        self.groups = tuple(groups)
        self.rr = [0] * len(self.groups)
        self.cancel = cancel  # a threading.Event-like object, or None
        self.put_timeout = put_timeout
        self.poll_interval = poll_interval
        self.tracer: Tracer | None = None
        # breakpoints: watch(conn, packet) before a delivery; what it returns is called after it
        self.watch: Callable[[Connection, Packet], Callable[[], None] | None] | None = None
        self.blocked_time = 0.0
        self.blocked = False
        self.closed = False  # set by send_stop_signal(): no data may follow a stop signal
        self.batch_size = batch_size
        # our own buffers, unless a subclass delivers in its own way (its _put)
        self.batching = batch_size > 1 and type(self)._put is BaseRouter._put
        self.ship_lock = threading.Lock()  # one shipper at a time: the task, or the job's flusher
        self._conns = tuple(c for g in self.groups for c in g.connections)
        # the lean path of send(): one group, and no subclass delivering in its own way
        own = type(self)._put is BaseRouter._put
        self._lane = self.groups[0] if own and len(self.groups) == 1 else None
        self._owners: dict[Any, int] = {}  # key -> instance, for the lane's hash partitioning
        self._bundling: bool | None = None  # whether bundles can go (decided at the first one)
        self.fan_out = len(self._lane.connections) if self._lane is not None else 1
        self.wake: Callable[[], Any] = _nothing  # called when a buffer stops being empty (the flusher's)
        # a generator source's items not routed yet (gather), their keys, since when, and by whom
        self.gathered: list[Any] = []
        self.gathered_keys: list[Any] = []
        self.gathered_at = 0.0
        self.gather_lock = threading.Lock()
        self.gather_routes = 0
        self.gather_taken = 0  # items routed from ``gathered`` so far
        self.gather_failed: tuple[Any, ...] = ()  # (item,) whose key failed in a slice or bundle
        self.slicing = False  # a source is pulling items straight into ``gathered`` (slice_gatherer)
        for c in self._conns:
            c.batch = []
            # a batch never exceeds its queue: a small queue keeps the pipeline short
            c.batch_limit = min(batch_size, capacity(c) or batch_size)

    @property
    def connections(self) -> list[Connection]:
        return list(self._conns)

    def send(self, packet: Packet) -> int:
        """Deliver ``packet`` to every group; returns how many deliveries were made.

        The router takes ownership of ``packet``: when it makes a single delivery it sends
        the object itself; with several, each gets its own packet built from the values read
        here (a receiver may reuse its packet at once, so nothing is read back after a put).
        """
        if self.closed:
            raise ProtocolError(f"{self.name}: send() after send_stop_signal(); data must not "
                                f"follow the end of stream")
        g = self._lane
        if g is not None and self.watch is None and (g.key is not None or packet.partition_strategy is None):
            return self._send_lane(g, packet)
        return self._send_each(packet)

    def _send_each(self, packet: Packet) -> int:
        """``send`` in general: every group, a breakpoint hook, ``_put`` per delivery."""
        payload, okey, ostrategy = packet.payload, packet.partition_key, packet.partition_strategy
        seq, created = packet.seq, packet.created
        single = len(self.groups) == 1
        n = 0
        watch = self.watch
        batching, put = self.batching, self._put
        for g in self.groups:
            conns = g.connections
            size = len(conns)
            if g.key is not None:
                key, strategy = g.key(payload), "hash"
            elif ostrategy is not None:
                key, strategy = okey, ostrategy
            else:
                key, strategy = None, g.strategy
            if strategy == "round_robin":
                before = self.rr[g.index]
                self.rr[g.index] = (before + 1) % size
                targets: Sequence[Connection] = (conns[before],)
            elif strategy == "hash":
                before = None
                targets = (conns[partition(key, size)],)
            else:
                before = None
                targets = conns
            tr = self.tracer
            if tr is not None and tr.sample():
                self._trace(tr, seq, g, strategy, key, targets, before, payload)
            reuse = single and len(targets) == 1
            for c in targets:
                out = packet if reuse else Packet(payload, 0, seq=seq, created=created)
                out.input_index = c.target_input_index
                if strategy == "round_robin":
                    out.partition_key, out.partition_strategy = None, None
                else:
                    out.partition_key, out.partition_strategy = key, strategy
                if watch is not None:  # breakpoints see every packet enter its queue
                    self._put_watched(watch, c, out)
                elif batching:
                    buf = c.batch
                    buf.append(out)
                    if len(buf) >= c.batch_limit or c.receiver.hungry:
                        self._ship(c)
                    elif len(buf) == 1:
                        self.wake()
                else:
                    put(c, out)
                    c.packets_sent += 1
                n += 1
        return n

    def _send_lane(self, g: BroadcastGroup, packet: Packet) -> int:
        """``send`` for the common case, leaner: one group, our own buffers, no breakpoint,
        and the group's strategy applies (an unkeyed packet, or a key function)."""
        conns = g.connections
        if g.key is not None:
            key = g.key(packet.payload)
            t = type(key)
            if t is int or t is str:  # the common keys: their partition is remembered
                i = self._owners.get(key)
                if i is None:
                    i = self._owner(key, len(conns))
            else:
                i = partition(key, len(conns))
            c = conns[i]
            packet.partition_key, packet.partition_strategy = key, "hash"
            before = None
        elif g.strategy == "round_robin":
            rr = self.rr
            before = rr[0]
            rr[0] = 0 if before + 1 == len(conns) else before + 1
            c = conns[before]
            packet.partition_key = key = None
        elif self.batching:  # broadcast: a copy for each
            return self._send_all(g, packet)
        else:
            return self._send_each(packet)
        tr = self.tracer
        if tr is not None and tr.sample():
            self._trace(tr, packet.seq, g, g.strategy if g.key is None else "hash", key, (c,),
                        before, packet.payload)
        packet.input_index = c.target_input_index
        if not self.batching:  # batch_size=1: one put per packet
            self._put(c, packet)
            c.packets_sent += 1
            return 1
        buf = c.batch
        buf.append(packet)
        if len(buf) >= c.batch_limit or c.receiver.hungry:  # a waiting reader gains nothing by waiting
            self._ship(c)
        elif len(buf) == 1:
            self.wake()
        return 1

    def _owner(self, key: Any, n: int) -> int:
        owners = self._owners
        if len(owners) >= OWNERS_CACHE:
            owners.clear()
        i = owners[key] = partition(key, n)
        return i

    def _send_all(self, g: BroadcastGroup, packet: Packet) -> int:
        payload, seq, created = packet.payload, packet.seq, packet.created
        tr = self.tracer
        if tr is not None and tr.sample():
            self._trace(tr, seq, g, "broadcast", None, g.connections, None, payload)
        for c in g.connections:
            out = Packet(payload, c.target_input_index, seq=seq, created=created)
            out.partition_strategy = "broadcast"
            buf = c.batch
            buf.append(out)
            if len(buf) >= c.batch_limit or c.receiver.hungry:
                self._ship(c)
            elif len(buf) == 1:
                self.wake()
        return len(g.connections)

    def _put_watched(self, watch: Callable[[Connection, Packet], Callable[[], None] | None],
                     conn: Connection, packet: Packet) -> None:
        hit = watch(conn, packet)
        if self.batching:  # what waits in the buffer goes first: FIFO per connection
            conn.batch.append(packet)
            self._ship(conn)
        else:
            self._put(conn, packet)
            conn.packets_sent += 1
        if hit is not None:
            hit()

    def send_stop_signal(self) -> int:
        """Send one :class:`StopSignal` on every connection (FIFO behind the data); returns the count."""
        if self.gathered:  # a source's items go first
            self.route_gathered()
        self.closed = True
        n = 0
        for g in self.groups:
            for c in g.connections:
                stop = StopSignal(self.name, c.target_input_index)
                if self.batching:  # behind the buffered data, in the same put
                    c.batch.append(stop)
                    self._ship(c)
                else:
                    self._put(c, stop)
                    c.stops_sent += 1
                n += 1
        return n

    def _put(self, conn: Connection, item: Any, put: Callable[..., None] | None = None) -> None:
        """``conn.queue.put(item)`` (or ``put(item, block, timeout)``), blocking while the queue
        is full until the job stops (Cancelled) or ``put_timeout`` passes (DeliveryError)."""
        if put is None:
            put = conn.queue.put
        try:
            put(item, False)
        except queue.Full:
            self._put_blocking(conn, put, item)
        except QueueShutDown:
            raise Cancelled(f"{self.name}: job stopping; not delivered to {conn.target_name}") from None

    def _put_blocking(self, conn: Connection, put: Callable[..., None], item: Any) -> None:
        start = time.monotonic()
        self.blocked = True
        try:
            while True:
                self._still_waiting(conn, start)
                tried = time.monotonic()
                try:
                    put(item, True, self.poll_interval)
                    return
                except queue.Full:  # a queue that refuses at once must not make us spin
                    if time.monotonic() - tried < self.poll_interval / 2:
                        self._pause(self.poll_interval)
                    continue
                except QueueShutDown:
                    raise Cancelled(f"{self.name}: job stopping; not delivered to "
                                    f"{conn.target_name}") from None
        finally:
            self.blocked = False
            self.blocked_time += time.monotonic() - start

    def _still_waiting(self, conn: Connection, start: float) -> float:
        """Seconds a blocked delivery on ``conn`` has waited since ``start``; raises Cancelled when
        the job stops and DeliveryError once ``put_timeout`` has passed."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"{self.name}: job stopping; not delivered to {conn.target_name}")
        waited = time.monotonic() - start
        if self.put_timeout is not None and waited >= self.put_timeout:
            raise DeliveryError(
                f"{self.name} -> {conn.target_name}: queue {conn.queue_descriptor.queue_id!r} "
                f"stayed full for {waited:.1f} s (put_timeout={self.put_timeout}); "
                f"the packet was not delivered")
        return waited

    def _pause(self, seconds: float) -> None:
        if self.cancel is not None:
            self.cancel.wait(seconds)
        else:
            time.sleep(seconds)

    def _trace(self, tr: Tracer, seq: int, g: BroadcastGroup, strategy: str, key: Any,
               targets: Sequence[Connection], before: int | None, payload: Any = None) -> None:
        tr.record(RoutingDecision(
            seq, self.name, g.target, strategy, key,
            stable_hash(key) if strategy == "hash" else None, len(g.connections),
            tuple(c.parallel_index for c in targets), tuple(c.target_name for c in targets),
            before, None if before is None else self.rr[g.index], time.time(), safe_repr(payload, 60)))

    def get_connections_info(self) -> dict[str, Any]:
        return {g.target: {"strategy": g.strategy, "round_robin_position": self.rr[g.index],
                           "targets": [c.to_dict() for c in g.connections]} for g in self.groups}
