"""Batching for the Ray backend: a router that ships a batch per connection, an input that prefetches.

An actor call costs the better part of a millisecond, so packets travel in batches
(performance.md: batching is mandatory). A :class:`BatchingRouter` buffers the packets
routed to each connection and ships them as one pickled chunk with one ``put``:

- when a buffer reaches ``batch`` packets (the job's ``batch_size``, default ``BATCH``);
- when the task is about to wait for input (its :class:`BatchingInput` flushes first), so
  every input batch's output leaves at the end of that batch;
- from a source's ``send`` once the last flush is ``LINGER`` seconds old, for connections
  whose previous batch has landed (Nagle: while one batch travels, the next one grows);
- from the actor's flusher thread, when packets waited ``IDLE_LINGER`` seconds while the
  task was busy in user code;
- before the stop signals, which travel behind the data, in the same chunk.

A connection has at most one batch in flight, and the next leaves only once the previous
is stored, so FIFO per connection holds and a full queue blocks its producer (nothing is
dropped). An RPC edge's buffer is shipped the same way, with one synchronous ``put_many``
(as few round trips as the queue's room allows) instead of a put in flight.

With batches on (``batch_size > 1``), one round-robin or key-function group of Ray queues
takes :class:`~sage_nb.communication.packet.Bundle` s, as a threads job's queues do: an
in-memory source's chunk, a map's or filter's output for one, and the items a generator
source gathered (:meth:`BatchingRouter.gather`) until their batch leaves travel by column
(payloads, trace ids, keys), with no packet object made or pickled; buffers and queues count
them in packets.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ..communication.packet import Bundle, StopSignal
from ..communication.ray_queue import RayQueueProxy, encode, units
from ..communication.router import BaseRouter
from ..errors import Cancelled, DeliveryError

__all__ = ["BATCH", "GET_BATCH", "IDLE_LINGER", "LINGER", "BatchingInput", "BatchingRouter"]

BATCH = 1024         # packets per connection per put
GET_BATCH = 1024     # packets taken from the input queue per get
PREFETCH_FROM = 64   # a batch this large means load: fetch the next one while processing it
LINGER = 0.002       # seconds a source's routed packets may wait for their batch
IDLE_LINGER = 0.01   # seconds any routed packet may wait while the task is busy in user code
SLICE = 1.0          # seconds a blocked put waits in the manager before checking cancel/put_timeout


class BatchingRouter(BaseRouter):
    """A :class:`BaseRouter` whose deliveries are buffered per connection and shipped in batches.

    A connection has at most one batch in flight: the task keeps working while it travels,
    and the next batch leaves only once the previous one is stored (FIFO, backpressure).
    ``linger`` (sources) also flushes from ``send`` once the last flush is that old.
    """

    def __init__(self, *args: Any, linger: float | None = None, batch: int = BATCH, **kw: Any) -> None:
        super().__init__(*args, batch_size=batch, **kw)  # (our own _put: the base's buffers stay off)
        self.batch = batch
        # send's lean path routes, then our _put buffers; bundles use the same group
        self._lane = self.groups[0] if len(self.groups) == 1 else None
        self.fan_out = len(self._lane.connections) if self._lane is not None else 1
        self.lock = threading.RLock()
        self.linger = linger
        self.pending = 0
        self.last_flush = time.monotonic()
        self.error: BaseException | None = None
        self.gathered: list = []  # a source's items, not routed yet (see gather)
        self.gathered_keys: list = []  # and their keys (a key_by edge)
        self.gathered_at = 0.0
        for c in self.connections:  # Ray and RPC queues take batches; other queues packet by packet
            c.buffer, c.units, c.inflight = [], 0, None
            c.ray = isinstance(c.queue, RayQueueProxy)
            c.batched = c.ray or getattr(c.queue, "puts_batches", False)

    def send(self, packet: Any) -> int:
        return self._sending(super().send, packet)

    def send_bundle(self, b: Bundle) -> int:
        return self._sending(super().send_bundle, b)

    def _sending(self, send: Any, what: Any) -> int:
        """``send(what)`` under the lock (the flusher thread ships too), after the flusher's error."""
        with self.lock:
            if self.error is not None:
                raise self.error
            n = send(what)
            self._lingered()
            return n

    def _lingered(self) -> None:
        """A source's buffers leave once the last flush is ``linger`` old (those not in flight)."""
        if self.linger is not None and self.pending and time.monotonic() - self.last_flush >= self.linger:
            self.flush(only_free=True)

    def bundles(self) -> bool:
        """Whether :meth:`send_bundle` keeps bundles whole: batches on, one round-robin or
        key-function group of Ray queues."""
        ok = self._bundling
        if ok is None:
            g = self._lane
            ok = self._bundling = g is not None and self.batch > 1 and \
                (g.key is not None or g.strategy == "round_robin") and all(c.ray for c in g.connections)
        return ok and self.watch is None and not self.closed

    def routes_in_bulk(self) -> bool:
        return self.bundles()

    def takes(self, n: int) -> bool:
        """True: what is sent here waits in a buffer (the actor's flusher may wait for a batch in
        flight, as its flushes do)."""
        return True

    def gathers(self) -> bool:
        """Whether a source's items may wait as plain payloads (:meth:`gather`): bundles on."""
        return self.bundles()

    def gatherer(self) -> Any:
        return self.gather

    def slice_gatherer(self) -> None:
        """None: a source gathers item by item here, under the router's lock (Ray's rate does
        not depend on it: slices as on threads measured the same, within the noise)."""
        return None

    def gather(self, item: Any) -> None:
        """A source's next item, kept as a payload (with its key on a ``key_by`` edge: the key
        function runs now, so an error in it names this item): the items are routed as one
        Bundle once there is a batch for each instance, on every flush, and once the last
        flush is ``linger`` old, as packets routed one by one would leave their buffers."""
        with self.lock:
            if self.error is not None:
                raise self.error
            key = self._lane.key
            if key is not None:
                self.gathered_keys.append(key(item))
            g = self.gathered
            if not g:
                self.gathered_at = time.monotonic()
            g.append(item)
            self.pending += 1
            if len(g) >= self.batch * self.fan_out:
                self._route_gathered()
            self._lingered()

    def _route_gathered(self) -> None:
        items = self.gathered
        if items:
            self.gathered = []
            self.pending -= len(items)
            b = Bundle.fresh(items)
            b.created = self.gathered_at
            if self.gathered_keys:
                b.keys, self.gathered_keys = self.gathered_keys, []
            super().send_bundle(b)

    def _ship_bundle(self, conn: Any, b: Bundle) -> None:
        k = len(b)
        conn.buffer.append(b)
        conn.units += k
        conn.packets_sent += k
        self.pending += k
        if conn.units >= self.batch:
            self._ship(conn)

    def send_stop_signal(self) -> int:
        with self.lock:
            self._route_gathered()  # the data first
            n = super().send_stop_signal()
            self.flush()
            self.settle()
            return n

    # (its own _put: the base's buffers stay off, so the base never passes put=)
    def _put(self, conn: Any, item: Any) -> None:  # type: ignore[override]
        if not conn.batched:
            super()._put(conn, item)
            return
        conn.buffer.append(item)
        conn.units += 1
        self.pending += 1
        if conn.units >= self.batch:
            self._ship(conn)

    def flush(self, only_free: bool = False) -> None:
        """Send every buffered batch; connections whose previous batch is stored go first,
        so that one full queue does not hold back the others. ``only_free`` sends only
        those (Nagle: while a batch travels, the next one grows)."""
        import ray

        with self.lock:
            self._route_gathered()
            if self.pending:
                conns = [c for c in self.connections if c.buffer]
                busy = [c.inflight[0] for c in conns if c.inflight is not None]
                done = set(ray.wait(busy, num_returns=len(busy), timeout=0)[0]) if busy else set()
                conns.sort(key=lambda c: c.inflight is not None and c.inflight[0] not in done)
                for c in conns:
                    if only_free and c.inflight is not None and c.inflight[0] not in done:
                        break
                    self._ship(c)
            self.last_flush = time.monotonic()

    def settle(self) -> None:
        """Wait until every batch in flight is stored (delivered)."""
        with self.lock:
            for c in self.connections:
                self._settle(c)

    # (its own buffers: the threads flusher, the only caller with block=, never sees them)
    def _ship(self, conn: Any) -> None:  # type: ignore[override]
        buf, n = conn.buffer, conn.units
        if not conn.ray:  # an RPC edge: delivered now
            conn.buffer, conn.units = [], 0
            self.pending -= n
            self._deliver_remote(conn, conn.queue, buf, [0])
            return
        self._settle(conn)
        wait = SLICE if self.put_timeout is None else min(SLICE, self.put_timeout)
        blob = encode(buf)
        conn.inflight = (conn.queue.submit_put(blob, 0, n, wait), blob, n, time.monotonic())
        conn.buffer, conn.units = [], 0
        self.pending -= n

    def _settle(self, conn: Any) -> None:
        if conn.inflight is None:
            return
        ref, blob, n, since = conn.inflight
        conn.inflight = None
        began = time.monotonic()
        try:
            stored, status = conn.queue.call(ref, SLICE)
            while status != "shutdown" and stored < n:
                self.blocked = True
                if self.cancel is not None and self.cancel.is_set():
                    break
                waited = time.monotonic() - since
                wait = SLICE
                if self.put_timeout is not None:
                    if waited >= self.put_timeout:
                        raise DeliveryError(
                            f"{self.name} -> {conn.target_name}: queue {conn.queue_descriptor.queue_id!r} "
                            f"stayed full for {waited:.1f} s (put_timeout={self.put_timeout}); "
                            f"{n - stored} packet(s) were not delivered")
                    wait = min(wait, self.put_timeout - waited)
                stored, status = conn.queue.put_blob(blob, stored, n, wait)
            if stored < n:
                raise Cancelled(f"{self.name}: job stopping; {n - stored} packet(s) not delivered "
                                f"to {conn.target_name}")
        finally:
            self.blocked = False
            self.blocked_time += time.monotonic() - began


class BatchingInput:
    """The task's input queue: flushes the task's outputs before every wait for input and,
    under load (a batch of ``PREFETCH_FROM`` packets or more), asks for the next batch while
    the current one is processed (not after a stop signal: the task may be about to end)."""

    def __init__(self, queue: Any, flush: Any, prefetch: bool) -> None:
        self.queue, self.flush, self.prefetch = queue, flush, prefetch
        self.ahead: Any = None

    def get_many(self, max_items: int, block: bool = True, timeout: float | None = None) -> list:
        self.flush()
        if not self.prefetch:
            return self.queue.get_many(max_items, block, timeout)
        items: list = []
        if self.ahead is not None:
            ref, self.ahead = self.ahead, None
            items = self.queue.receive(ref, SLICE)
        if not items:
            items = self.queue.get_many(GET_BATCH, block, timeout)
        if units(items) >= PREFETCH_FROM and not any(m.__class__ is StopSignal for m in items):
            self.ahead = self.queue.request(GET_BATCH, SLICE)
        return items

    def __getattr__(self, name: str) -> Any:
        return getattr(self.queue, name)
