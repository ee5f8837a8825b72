"""``LocalQueue``: a ``queue.Queue`` that counts, drains in batches and can be shut down.

It holds packets, stop signals and :class:`~sage_nb.communication.packet.Bundle` entries (many
packets as one entry); sizes, room and statistics count packets.

The stdlib's blocking ``put``/``get`` wait forever on Python 3.11 (``Queue.shutdown``
arrived in 3.13). ``LocalQueue.shutdown()`` wakes every blocked caller with
:class:`QueueShutDown`, which is how a stopping job cancels producers blocked on a
full queue without polling.

>>> q = LocalQueue(maxsize=2)
>>> q.put(1); q.put(2); q.full()
True
>>> q.get_many(10)
[1, 2]
>>> q.statistics()
QueueStats(used=0, capacity=2, peak=2, total_in=2, total_out=2)
"""

from __future__ import annotations

import queue
from dataclasses import asdict, dataclass
from time import monotonic
from typing import Any

from .packet import Bundle

__all__ = ["LocalQueue", "QueueShutDown", "QueueStats"]


class QueueShutDown(Exception):
    """Raised by a blocking call on a queue that was shut down."""


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One consistent reading of a queue. ``capacity`` is None for an unbounded queue."""

    used: int
    capacity: int | None
    peak: int
    total_in: int
    total_out: int

    @property
    def load(self) -> float:
        """``used / capacity`` in [0, 1]; 0.0 for an unbounded queue (it is never full)."""
        return self.used / self.capacity if self.capacity else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LocalQueue(queue.Queue):
    """A bounded FIFO (``maxsize=0``: unbounded) with statistics and ``shutdown()``."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.peak = 0
        self.total_in = 0
        self.total_out = 0
        self.size = 0      # packets held (a Bundle entry holds several)
        self.bundles = 0   # Bundle entries held
        self.is_shutdown = False
        self.getters = 0   # threads blocked in get/get_many
        self.putters = 0   # threads blocked in put/put_bundle/wait_room
        # a reader waits and no put has woken it yet: a hint for batching producers (read unlocked)
        self.hungry = False

    # -- the stdlib hooks, called with the mutex held
    def _qsize(self) -> int:
        return self.size

    def _put(self, item: Any) -> None:
        self.queue.append(item)
        k = 1
        if item.__class__ is Bundle:
            k = len(item)
            self.bundles += 1
        self.total_in += k
        n = self.size = self.size + k
        if n > self.peak:
            self.peak = n

    def _get(self) -> Any:
        item = self.queue.popleft()
        k = 1
        if item.__class__ is Bundle:
            k = len(item)
            self.bundles -= 1
        self.total_out += k
        self.size -= k
        return item

    def _wait(self, cond, ready, block: bool, timeout: float | None, exc: type) -> None:
        """Wait on ``cond`` until ``ready()``; raise ``exc`` (Full/Empty) or QueueShutDown."""
        if self.is_shutdown:
            raise QueueShutDown("queue was shut down: its job is stopping")
        if ready():
            return
        if not block:
            raise exc
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        end = None if timeout is None else monotonic() + timeout
        getting = cond is self.not_empty
        self.getters += getting
        self.putters += not getting
        try:
            while not ready():
                remaining = None if end is None else end - monotonic()
                if remaining is not None and remaining <= 0:
                    raise exc
                self.hungry = getting or self.hungry
                cond.wait(remaining)
                if self.is_shutdown:
                    raise QueueShutDown("queue was shut down: its job is stopping")
        finally:
            self.getters -= getting
            self.putters -= not getting
            if getting:
                self.hungry = False

    def _has_room(self) -> bool:
        return self.maxsize <= 0 or self.size < self.maxsize

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put ``item``, waiting for room like ``queue.Queue.put``; QueueShutDown after shutdown()."""
        with self.not_full:
            if self.is_shutdown or 0 < self.maxsize <= self.size:
                self._wait(self.not_full, self._has_room, block, timeout, queue.Full)
            self._put(item)
            self.unfinished_tasks += 1
            self.hungry = False
            if self.getters:  # nobody waits: no wake-up to send
                self.not_empty.notify()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest item, like ``queue.Queue.get``."""
        with self.not_empty:
            self._wait(self.not_empty, self.queue.__len__, block, timeout, queue.Empty)
            item = self._get()
            if self.putters:  # nobody waits: no wake-up to send
                self.not_full.notify()
            return item

    def get_many(self, max_items: int, block: bool = True, timeout: float | None = None) -> list:
        """Wait for at least one item, then remove and return up to ``max_items`` of them
        (entries: a Bundle counts its packets, and comes whole, even past ``max_items``)."""
        with self.not_empty:
            self._wait(self.not_empty, self.queue.__len__, block, timeout, queue.Empty)
            q = self.queue
            if self.bundles:
                return self._get_entries(max_items)
            n = len(q)
            if n <= max_items:
                items = list(q)
                q.clear()
            elif n <= 8 * max_items:  # C-level copies beat a popleft per item
                n, items = max_items, list(q)
                q.clear()
                q.extend(items[max_items:])
                del items[max_items:]
            else:  # a long backlog (an unbounded queue): do not copy it all
                n, pop = max_items, q.popleft
                items = [pop() for _ in range(n)]
            self.total_out += n
            self.size -= n
            if self.putters:
                self.not_full.notify(n)
            return items

    def _get_entries(self, max_items: int) -> list:
        """get_many's loop when Bundles are queued: whole entries, up to ``max_items`` packets."""
        q, items, taken, get = self.queue, [], 0, self._get
        while q and taken < max_items:
            before = self.size
            items.append(get())
            taken += before - self.size
        if self.putters:
            self.not_full.notify(taken)
        return items

    def put_bundle(self, bundle: Bundle, block: bool = True, timeout: float | None = None) -> None:
        """Put ``bundle`` as one entry once there is room for all its packets (for any of them
        when the queue is empty, so a bundle larger than ``maxsize`` cannot wait forever)."""
        n = len(bundle)
        with self.not_full:
            if self.is_shutdown or 0 < self.maxsize < self.size + n:
                self._wait(self.not_full, lambda: not self.size or self.size + n <= self.maxsize,
                           block, timeout, queue.Full)
            self._put(bundle)
            self.unfinished_tasks += 1
            self.hungry = False
            if self.getters:
                self.not_empty.notify()

    def put_many(self, items: list, block: bool = True, timeout: float | None = None) -> None:
        """Put every item in order, as many at a time as there is room for (backpressure
        counts items). On ``queue.Full`` (a timeout) the items before ``exc.accepted`` were put."""
        done, n = 0, len(items)
        while done < n:
            done = self.offer(items, done)
            if done < n:
                try:
                    self.wait_room(block, timeout)
                except queue.Full as exc:
                    exc.accepted = done  # type: ignore[attr-defined]
                    raise

    def offer(self, items: list, start: int = 0) -> int:
        """Put ``items[start:]`` as far as there is room, without waiting; return the index
        after the last item put (``len(items)``: all of them)."""
        with self.not_full:
            if self.is_shutdown:
                raise QueueShutDown("queue was shut down: its job is stopping")
            q = self.queue
            room = len(items) - start if self.maxsize <= 0 else self.maxsize - self.size
            if room <= 0:
                return start
            end = min(len(items), start + room)
            q.extend(items[start:end] if start or end < len(items) else items)
            k = end - start
            self.total_in += k
            self.unfinished_tasks += k
            size = self.size = self.size + k
            if size > self.peak:
                self.peak = size
            self.hungry = False
            if self.getters:
                self.not_empty.notify(k)
            return end

    def wait_room(self, block: bool = True, timeout: float | None = None) -> None:
        """Wait until the queue has room for one item (``queue.Full`` after ``timeout``)."""
        with self.not_full:
            self._wait(self.not_full, self._has_room, block, timeout, queue.Full)

    def shutdown(self, immediate: bool = True) -> None:
        """Wake every blocked ``put``/``get`` with QueueShutDown; later calls raise it too.

        Items still queued stay visible to :meth:`statistics` and :meth:`peek` (they are the
        packets a cancelled job did not process).
        """
        with self.mutex:
            self.is_shutdown = True
            self.not_empty.notify_all()
            self.not_full.notify_all()

    def peek(self, n: int = 20) -> list:
        """The ``n`` oldest items (packets, stop signals), without removing them."""
        out: list = []
        with self.mutex:
            for item in self.queue:
                if len(out) >= n:
                    break
                out.extend(item.packets()[:n - len(out)] if item.__class__ is Bundle else (item,))
        return out

    def statistics(self) -> QueueStats:
        """used, capacity, peak, total in and total out, read under the queue's lock."""
        with self.mutex:
            return QueueStats(self.size, self.maxsize or None, self.peak,
                              self.total_in, self.total_out)
