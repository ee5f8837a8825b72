"""Micro-batches: a router's per-connection buffers, and how they are shipped.

A batching router (``batch_size > 1``) routes every packet as usual but appends the
delivery to its connection's ``batch`` list instead of putting it. A buffer is *shipped*
(delivered with as few puts as the queue's room allows) when it holds ``batch_limit``
packets, when its reader is hungry (waiting for input, nobody woke it yet), on ``flush()``
(the task is about to wait for input, to pause, to end) and from the job's flusher after
``linger`` seconds. Only the shipper removes packets from a buffer, under ``ship_lock``;
the task only appends, at the end, so FIFO per connection holds. ``packets_sent`` counts
what was delivered, when it was delivered.

A :class:`~sage_nb.communication.packet.Bundle` (an in-memory source's chunk, a generator
source's gathered items (:mod:`~sage_nb.communication.gathering`), a map's or filter's output
for one) skips the buffers: :meth:`Shipper.send_bundle` ships what waits on the connection, then
puts the bundle's share as one entry, waiting for room for all its packets.
"""

from __future__ import annotations

import contextlib
import queue
import time
from array import array
from itertools import compress, repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from ..errors import Cancelled
from .connection import EAGER, Connection
from .local_queue import LocalQueue, QueueShutDown
from .packet import Bundle, Packet, Picked, StopSignal
from .partition import partition

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Sequence

    from .router import BroadcastGroup, Tracer

__all__ = ["Shipper", "capacity"]

OWNERS_CACHE = 4096  # keys whose partition a batching router remembers
# a hash split by C-level passes, one per instance: for up to 8 instances (more: one loop is cheaper)
_SELECT = tuple(bytes(int(j == i) for j in range(256)) for i in range(8))  # owner i -> 1, others -> 0
_NEW = 255  # a key whose partition is not remembered yet
_SELECT_NEW = bytes(int(j == _NEW) for j in range(256))
_PLAIN_KEYS = frozenset((int, str))  # key types a bundle's split takes without a check


class Shipper:
    """The batching half of :class:`~sage_nb.communication.router.BaseRouter` (a mixin: it
    uses the router's groups, counters, ``send``, ``_send_lane``, ``_put``, ``_still_waiting`` and ``_trace``)."""

    batching: bool
    ship_lock: Any
    _bundling: bool | None
    _owners: dict[Any, int]
    wake: Any
    _put: Any
    _conns: tuple[Connection, ...]
    _lane: Any
    name: str
    tracer: Any
    batch_size: int
    fan_out: int
    rr: list[int]
    watch: Callable[[Connection, Packet], Callable[[], None] | None] | None
    closed: bool
    blocked: bool
    blocked_time: float
    poll_interval: float
    put_timeout: float | None
    gathered: list[Any]

    if TYPE_CHECKING:  # the router's methods (BaseRouter)
        def send(self, packet: Packet) -> int: ...

        def _send_lane(self, g: BroadcastGroup, packet: Packet) -> int: ...

        def _owner(self, key: Any, n: int) -> int: ...

        def _still_waiting(self, conn: Connection, start: float) -> float: ...

        def _trace(self, tr: Tracer, seq: int, g: BroadcastGroup, strategy: str, key: Any,
                   targets: Sequence[Connection], before: int | None,
                   payload: Any = None) -> None: ...

        def route_gathered(self, block: bool = True) -> bool: ...

    def routes_in_bulk(self) -> bool:
        """Whether :meth:`send_many` moves unkeyed packets without a call per packet."""
        g = self._lane
        return g is not None and self.batching and g.strategy != "broadcast"

    def skip_traced(self, n: int) -> None:
        """Count ``n`` routing decisions that were made without being offered to the trace."""
        if self.tracer is not None:
            _skip(self.tracer, n)

    def send_many(self, packets: list[Packet], unkeyed: bool = False, clean: bool = False) -> int:
        """``send`` each packet of ``packets`` in order (same routing, same counters); returns the
        deliveries. Unkeyed packets through one round-robin or hash group move without a call
        per packet; the trace is offered the batch's first decision, the others count as skipped.
        ``unkeyed`` promises that no packet carries a partition strategy; ``clean`` also that
        none carries a key and every one is for input 0 (fresh packets)."""
        g = self._lane
        if g is None or not self.batching or self.watch is not None or self.closed or \
                g.strategy == "broadcast" or \
                (not unkeyed and any(p.partition_strategy is not None for p in packets)):
            send = self.send
            return sum(send(p) for p in packets)
        n = len(packets)
        if not n:
            return 0
        tr = self.tracer
        if tr is not None and tr.sample():
            self._send_lane(g, packets[0])  # routed and traced as one packet
            packets = packets[1:]
            if not packets:
                return 1
            _skip(tr, len(packets))
        else:
            if tr is not None:
                _skip(tr, len(packets) - 1)
            self.tracer = None  # this batch's decisions are not traced
        try:
            if g.key is not None:
                self._hash_many(g, packets)
            else:
                self._round_robin_many(g, packets, clean)
        finally:
            self.tracer = tr
        return n

    def send_bundle(self, b: Bundle) -> int:
        """``send_many(b.packets(), True, True)`` for a :class:`Bundle` of unkeyed packets for
        input 0. Through one round-robin or key-function (hash) group of in-process queues it
        stays a bundle: each instance gets its share (the packets it would get one by one, in
        order, with their keys) as one entry; the trace is offered the first decision.
        Elsewhere it travels as packets. Returns the deliveries. (``b.keys``, if set, are the
        group's key function's keys for its payloads, computed already.)"""
        n = len(b)
        if not self.bundles():
            if b.keys is not None:
                b = Bundle(b.payloads, b.seqs, b.created)
            return self.send_many(b.packets(), True, True) if n else 0
        if not n:
            return 0
        g, tr = self._lane, self.tracer
        conns = g.connections
        size = len(conns)
        if g.key is not None:
            shares, first = self._hash_shares(g, b)
            if tr is not None and tr.sample():
                key = shares[first].keys[0]  # type: ignore[index]
                self._trace(tr, b.seqs[0], g, "hash", key, (conns[first],), None, b.payloads[0])
        else:
            rr = self.rr
            first = rr[0]
            rr[0] = (first + 1) % size
            if tr is not None and tr.sample():
                self._trace(tr, b.seqs[0], g, "round_robin", None, (conns[first],), first, b.payloads[0])
            rr[0] = (first + n) % size
            shares = [b] if size == 1 else [b.pick(slice((j - first) % size, None, size)) for j in range(size)]
        if tr is not None:
            _skip(tr, n - 1)
        for c, part in zip(conns, shares, strict=True):
            if part:
                part.input_index = c.target_input_index
                self._ship_bundle(c, part)
        return n

    def _hash_shares(self, g: BroadcastGroup, b: Bundle) -> tuple[list[Bundle], int]:
        """Each instance's share of ``b`` by the key of each packet (``_hash_many``'s rule), keys
        included, and the instance of the first packet."""
        keys = b.keys if b.keys is not None else list(map(g.key, b.payloads))  # type: ignore[arg-type]
        size = len(g.connections)
        if size == 1:
            if not _PLAIN_KEYS.issuperset(map(type, keys)):  # one instance, yet keys as they would be
                for key, x in zip(keys, b.payloads, strict=True):
                    self._partition(key, x, 1)
            return [Bundle(b.payloads, b.seqs, b.created, 0, keys)], 0
        owners = self._owners_of(keys, size) if size <= len(_SELECT) else None
        if owners is not None:  # C-level passes, none per packet in Python
            shares = []
            for i in range(size):
                if i not in owners:
                    shares.append(Bundle([], (), b.created, 0, []))
                    continue
                mask = owners.translate(_SELECT[i])
                pay = list(compress(b.payloads, mask))
                shares.append(Bundle(pay, Picked(b.seqs, mask, len(pay)), b.created, 0,
                                     list(compress(keys, mask))))
            return shares, owners[0]
        cache, owner = self._owners, self._owner
        # (trace ids in an array: no int object per packet to make here and free in another thread)
        shares = [Bundle([], array("q"), b.created, 0, []) for _ in range(size)]
        pay, seq, key_of = ([getattr(s, col).append for s in shares] for col in ("payloads", "seqs", "keys"))
        get = cache.get
        for key, x, n in zip(keys, b.payloads, b.seqs, strict=True):
            t = type(key)
            if t is int or t is str:  # the common keys: their partition is remembered
                i = get(key)  # type: ignore[assignment]
                if i is None:
                    i = owner(key, size)
            else:
                i = self._partition(key, x, size)
            pay[i](x)
            seq[i](n)
            key_of[i](key)
        return shares, next(i for i, s in enumerate(shares) if s.seqs and s.seqs[0] == b.seqs[0])

    def _partition(self, key: Any, item: Any, size: int) -> int:
        """``partition(key, size)``; if the key cannot be partitioned, its ``item`` is the one
        the error names (``gather_failed``)."""
        try:
            return partition(key, size)
        except TypeError:
            self.gather_failed = (item,)
            raise

    def _owners_of(self, keys: list[Any], size: int) -> bytes | None:
        """The instance of each key, one byte each: the partitions remembered, the others
        computed (and remembered, as many as fit). None for an unhashable key (the per-packet
        loop then says what is wrong with it)."""
        cache = self._owners
        try:
            try:  # every key remembered (the common case): one C-level lookup of them all
                return bytes(itemgetter(*keys)(cache)) if len(keys) > 1 else bytes((cache[keys[0]],))
            except KeyError:
                owners = bytes(map(cache.get, keys, repeat(_NEW, len(keys))))
        except TypeError:
            return None
        if _NEW in owners:
            try:
                new = {key: partition(key, size) for key in set(compress(keys, owners.translate(_SELECT_NEW)))}
            except TypeError:  # a key that cannot be partitioned: the per-packet loop names its item
                return None
            owners = bytes(map(new.get, keys, owners))
            if len(cache) + len(new) > OWNERS_CACHE:
                cache.clear()
            if len(new) <= OWNERS_CACHE:
                cache.update(new)
        return owners

    def takes(self, n: int) -> bool:
        """Whether a bundle of ``n`` packets sent now goes without waiting for room (bundles
        only: each queue of the edge has room for all of them, nothing waits before them)."""
        return self.bundles() and all(not c.batch and _takes(c.queue, n) for c in self._lane.connections)

    def bundle_key(self) -> Any:
        """The key function a bundle sent now is split by (None: round-robin, or not kept whole)."""
        return self._lane.key if self.bundles() else None

    def bundles(self) -> bool:
        """Whether :meth:`send_bundle` sends bundles now: one round-robin or key-function group
        of in-process queues read by tasks of their own, batching on, no breakpoint watching."""
        ok = self._bundling
        if ok is None:
            g = self._lane
            ok = self._bundling = g is not None and self.batching and \
                (g.key is not None or g.strategy == "round_robin") and \
                all(not c.chained and _fast_queue(c.queue) for c in g.connections)
        return ok and self.watch is None and not self.closed

    def _ship_bundle(self, conn: Connection, b: Bundle) -> None:
        """Deliver ``b`` after what waits in ``conn``'s buffer, in entries of at most
        ``batch_limit`` packets (a queue of that capacity can take each one)."""
        if conn.batch:
            self._ship(conn)
        limit, n = conn.batch_limit, len(b)
        for i in range(0, n, limit):
            piece = b if n <= limit else b.pick(slice(i, i + limit))
            with self.ship_lock:
                self._put(conn, piece, conn.queue.put_bundle)
                conn.packets_sent += len(piece)
                conn.batches_sent += 1

    def _hash_many(self, g: BroadcastGroup, packets: list[Packet]) -> None:
        conns, keyfn, size = g.connections, g.key, len(g.connections)
        owners, owner = self._owners, self._owner
        appends = [c.batch.append for c in conns]
        inputs = [c.target_input_index for c in conns]
        for p in packets:
            key = keyfn(p.payload)  # type: ignore[misc]  # (a key-function group: g.key is set)
            t = type(key)
            if t is int or t is str:  # the common keys: their partition is remembered
                i = owners.get(key)
                if i is None:
                    i = owner(key, size)
            else:
                i = partition(key, size)
            p.partition_key, p.partition_strategy, p.input_index = key, "hash", inputs[i]
            appends[i](p)
        for c in conns:  # a buffer may pass its limit by part of one call's packets
            if len(c.batch) >= c.batch_limit:
                self._ship(c)
        self.flush_waiting()
        if any(c.batch for c in conns):
            self.wake()

    def _round_robin_many(self, g: BroadcastGroup, packets: list[Packet], clean: bool = False) -> None:
        conns = g.connections
        if len(conns) > 1:
            send = self._send_lane
            for p in packets:
                send(g, p)
            return
        c = conns[0]
        ti = c.target_input_index
        if ti or not clean:
            for p in packets:
                p.input_index, p.partition_key = ti, None
        buf, limit, i, n = c.batch, c.batch_limit, 0, len(packets)
        while i < n:
            j = min(n, i + max(1, limit - len(buf)))
            buf.extend(packets[i:j] if i or j < n else packets)
            i = j
            if len(buf) >= limit:
                self._ship(c)
        if buf and c.receiver.hungry:
            self._ship(c)
        elif buf:
            self.wake()


    # ------------------------------------------------------------------ shipping
    def buffered(self) -> int:
        """Packets waiting in this router: a source's items not routed yet, and those routed
        but still in the buffers."""
        return len(self.gathered) + (sum(len(c.batch) for c in self._conns) if self.batching else 0)

    def flush(self) -> None:
        """Route what a source gathered, ship every buffered batch now (blocking while a queue is full)."""
        if self.gathered:
            self.route_gathered()
        if self.batching:
            for c in self._conns:
                if c.batch:
                    self._ship(c)

    def flush_waiting(self) -> None:
        """Ship the batches whose receiver is waiting for input (it gains nothing by waiting longer)."""
        for c in self._conns:
            if c.batch and c.receiver.hungry:
                self._ship(c)

    def _ship(self, conn: Connection, block: bool = True) -> bool:
        """Deliver ``conn``'s buffer in order; the delivered prefix leaves the buffer and is counted.

        Only the shipper removes items (under ``ship_lock``); the task appends meanwhile, at
        the end. ``block=False`` (the flusher) puts what fits now and never waits for the lock.
        """
        lock = self.ship_lock
        if not lock.acquire(block):
            return False
        try:
            if conn.receiver is EAGER:
                q = conn.queue
                conn.receiver = q if _fast_queue(q) else EAGER
            buf = conn.batch
            items = buf[:]
            done = [0]
            try:
                if block:
                    self._deliver(conn, items, done)
                else:
                    self._offer(conn, items, done)
            finally:
                k = done[0]
                if k:
                    del buf[:k]
                    if items[k - 1].__class__ is StopSignal:
                        conn.stops_sent += 1
                        k -= 1
                    conn.packets_sent += k
                    conn.batches_sent += 1
            return True
        finally:
            lock.release()

    def _offer(self, conn: Connection, items: list, done: list[int]) -> None:
        q = conn.queue
        try:
            if _fast_queue(q):
                done[0] = q.offer(items, 0)
                return
            if getattr(q, "puts_batches", False):
                self._put_many(q, items, done, False, None)
                return
            for item in items:
                q.put(item, False)
                done[0] += 1
        except (queue.Full, QueueShutDown):
            pass

    def _deliver(self, conn: Connection, items: list, done: list[int]) -> None:
        """Put every item of ``items`` in order; ``done[0]`` counts those put, whatever happens."""
        q = conn.queue
        if getattr(q, "direct", False):  # a chained task: it processes the batch now
            q.put_many(items)
            done[0] = len(items)
            return
        if getattr(q, "puts_batches", False):  # a remote queue: as few round trips as its room allows
            self._deliver_remote(conn, q, items, done)
            return
        if not _fast_queue(q):  # a queue that overrides put takes them one by one
            for item in items:
                self._put(conn, item)
                done[0] += 1
            return
        n = len(items)
        try:
            done[0] = q.offer(items, 0)
            if done[0] < n:
                start = time.monotonic()
                self.blocked = True
                try:
                    while done[0] < n:
                        self._wait_room(conn, q, start)
                        done[0] = q.offer(items, done[0])
                finally:
                    self.blocked = False
                    self.blocked_time += time.monotonic() - start
        except QueueShutDown:
            raise Cancelled(f"{self.name}: job stopping; not delivered to {conn.target_name}") from None

    def _deliver_remote(self, conn: Connection, q: Any, items: list, done: list[int]) -> None:
        """``_deliver`` through a queue whose ``put_many`` puts what fits and says how much
        (``queue.Full.accepted``): one call per wait slice while it is full, cancellable,
        failing after ``put_timeout``, like a blocked ``_put``."""
        start, n = 0.0, len(items)
        try:
            while True:
                try:
                    self._put_many(q, items, done, bool(start), self.poll_interval)
                    return
                except queue.Full:
                    if done[0] == n:  # (a queue that raised after taking the last item)
                        return
                if not start:
                    start, self.blocked = time.monotonic(), True
                self._still_waiting(conn, start)
        except QueueShutDown:
            raise Cancelled(f"{self.name}: job stopping; not delivered to {conn.target_name}") from None
        finally:
            if start:
                self.blocked = False
                self.blocked_time += time.monotonic() - start

    @staticmethod
    def _put_many(q: Any, items: list, done: list[int], block: bool, timeout: float | None) -> None:
        """``q.put_many`` of the items from ``done[0]`` on; ``done[0]`` counts what it took, also
        when it raises ``queue.Full`` (then its ``accepted``)."""
        rest = items[done[0]:] if done[0] else items
        try:
            q.put_many(rest, block, timeout)
        except queue.Full as exc:
            done[0] += getattr(exc, "accepted", 0)
            raise
        done[0] += len(rest)

    def _wait_room(self, conn: Connection, q: Any, start: float) -> None:
        waited = self._still_waiting(conn, start)
        wait = self.poll_interval
        if self.put_timeout is not None:
            wait = max(0.0, min(wait, self.put_timeout - waited))
        with contextlib.suppress(queue.Full):
            q.wait_room(True, wait)

def _fast_queue(q: Any) -> bool:
    """A :class:`LocalQueue` whose ``put`` is its own: batches go in with ``offer``."""
    t = type(q)
    return issubclass(t, LocalQueue) and t.put is LocalQueue.put


def _takes(q: LocalQueue, n: int) -> bool:
    """Whether ``q`` takes ``n`` more packets now without waiting."""
    return q.maxsize <= 0 or not q.size or q.size + n <= q.maxsize


def capacity(conn: Connection) -> int:
    """The capacity of ``conn``'s queue from its descriptor (0: unbounded or unknown)."""
    try:
        return int(conn.queue_descriptor.metadata.get("maxsize") or 0)
    except (AttributeError, TypeError, ValueError):
        return 0


def _skip(tracer: Any, n: int) -> None:
    """Count ``n`` decisions the tracer was not offered as skipped (a Trace counts them)."""
    if n and hasattr(tracer, "skipped"):
        tracer.skipped += n
