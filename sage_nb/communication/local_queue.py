"""``LocalQueue``: a ``queue.Queue`` that counts, drains in batches and can be shut down.

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
        self.is_shutdown = False
        self.getters = 0   # threads blocked in get/get_many
        # a reader waits and no put has woken it yet: a hint for batching producers (read unlocked)
        self.hungry = False

    # -- the stdlib hooks, called with the mutex held
    def _put(self, item: Any) -> None:
        self.queue.append(item)
        self.total_in += 1
        n = len(self.queue)
        if n > self.peak:
            self.peak = n

    def _get(self) -> Any:
        self.total_out += 1
        return self.queue.popleft()

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
            if getting:
                self.hungry = False

    def _has_room(self) -> bool:
        return self.maxsize <= 0 or len(self.queue) < self.maxsize

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put ``item``, waiting for room like ``queue.Queue.put``; QueueShutDown after shutdown()."""
        with self.not_full:
            if self.is_shutdown or 0 < self.maxsize <= len(self.queue):
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
            self.not_full.notify()
            return item

    def get_many(self, max_items: int, block: bool = True, timeout: float | None = None) -> list:
        """Wait for at least one item, then remove and return up to ``max_items`` of them."""
        with self.not_empty:
            self._wait(self.not_empty, self.queue.__len__, block, timeout, queue.Empty)
            q = self.queue
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
            self.not_full.notify(n)
            return items

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
            room = len(items) - start if self.maxsize <= 0 else self.maxsize - len(q)
            if room <= 0:
                return start
            end = min(len(items), start + room)
            q.extend(items[start:end] if start or end < len(items) else items)
            k = end - start
            self.total_in += k
            self.unfinished_tasks += k
            if len(q) > self.peak:
                self.peak = len(q)
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
        """The ``n`` oldest items, without removing them."""
        with self.mutex:
            return [self.queue[i] for i in range(min(n, len(self.queue)))]

    def statistics(self) -> QueueStats:
        """used, capacity, peak, total in and total out, read under the queue's lock."""
        with self.mutex:
            return QueueStats(len(self.queue), self.maxsize or None, self.peak,
                              self.total_in, self.total_out)
