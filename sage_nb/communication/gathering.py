"""A generator source's items kept as plain payloads until they leave as one bundle.

On an edge where bundles go (:meth:`~sage_nb.communication.shipping.Shipper.bundles`), a source
whose items come from user code hands each item to the router (:meth:`Gatherer.gatherer`), or a
slice of them at a time (:meth:`Gatherer.slice_gatherer`), instead of making a packet of it.
What was kept is routed as one bundle (:meth:`Gatherer.route_gathered`) once there is a batch for
each instance or a reader waits; the job's flusher routes it once it waited ``linger`` while the
source was busy in user code, so a slow generator's item is not held back either.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from itertools import islice
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from .packet import Bundle
from .partition import partition
from .shipping import _takes

__all__ = ["Gatherer"]

_monotonic = time.monotonic
_hungry = attrgetter("receiver.hungry")


class Gatherer:
    """The gathering part of :class:`~sage_nb.communication.router.BaseRouter` (a mixin: it
    uses the router's lane, ``wake``, ``bundles`` and ``send_bundle``)."""

    name: str
    _lane: Any
    wake: Any
    gathered: list[Any]
    gathered_keys: list[Any]
    gathered_at: float
    gather_lock: Any
    gather_routes: int
    gather_taken: int
    gather_failed: tuple[Any, ...]
    slicing: bool

    if TYPE_CHECKING:  # the router's methods (Shipper)
        def bundles(self) -> bool: ...

        def send_bundle(self, b: Bundle) -> int: ...

    def gathers(self) -> bool:
        """Whether a generator source may hand its items over as plain payloads
        (:meth:`gatherer`) to travel as bundles: when :meth:`bundles` go."""
        return self.bundles()

    def gatherer(self) -> Callable[[Any], None]:
        """``gather(item)`` for a generator source's hot loop: keep the item as a payload (with
        its key on a ``key_by`` edge: the key function runs now, so an error in it names this
        item). What was kept is routed as one bundle (:meth:`route_gathered`) once there is a
        batch for each instance or a reader waits for input; on :meth:`flush` and before the
        stop signals; and by the job's flusher once it waited ``linger`` while the source was
        busy in user code."""
        return self._gathering()[0]

    def slice_gatherer(self) -> tuple[Callable[[Iterator[Any], int], int], Callable[[], None]] | None:
        """``(take, due)`` for a source that pulls its items a slice at a time. ``take(items, k)``
        keeps up to ``k`` items of the iterator as ``gather`` would (fewer if that many would pass
        a batch for each instance; it returns how many it asked for) by one C-level
        ``list.extend``: no Python code of ours per item. ``extend`` appends each item as it
        comes, so while the source's code blocks mid-slice the job's flusher sees what was kept
        and routes it after ``linger`` (``slicing`` tells it to look). ``due()`` then routes what
        was kept if there is a batch for each instance or a reader waits. Items taken are counted
        by :meth:`kept_count`; on a ``key_by`` edge an item whose key fails is ``gather_failed``."""
        return self._gathering()[1:]

    def kept_count(self) -> int:
        """Items a source has kept so far, routed or not (consistent with the flusher's routing)."""
        with self.gather_lock:
            return self.gather_taken + len(self.gathered)

    def _gathering(self) -> tuple[Callable[[Any], None], Callable[[Iterator[Any], int], int], Callable[[], None]]:
        g = self._lane
        if g is None or not self.gathers():
            raise RuntimeError(f"{self.name}: a source gathers only where bundles go (see gathers())")
        kept, keys, key, conns = self.gathered, self.gathered_keys, g.key, g.connections
        # a batch for each instance, as its queue allows: the source runs no further ahead
        limit, route, size = sum(c.batch_limit for c in conns), self.route_gathered, len(conns)
        for c in conns:  # their queues say when their readers wait (bundles go to LocalQueues only)
            c.receiver = c.queue
        one = conns[0]

        def keep_key(item: Any) -> Any:  # (before the item: a prefix of the items always has its keys)
            try:
                k = key(item)
                t = type(k)
                if t is not int and t is not str:
                    partition(k, size)  # a key that cannot be partitioned fails here, naming its item
            except BaseException:
                self.gather_failed = (item,)
                raise
            keys.append(k)
            return item

        def gather(item: Any) -> None:
            if key is not None:
                keep_key(item)
            if not kept:
                self.gathered_at = _monotonic()
            kept.append(item)
            if len(kept) >= limit or (one.receiver.hungry if size == 1 else any(map(_hungry, conns))):
                route()
            elif len(kept) == 1:
                self.wake()  # kept: the flusher sees that it does not wait longer than linger

        def take(items: Iterator[Any], k: int) -> int:
            k = max(1, min(k, limit - len(kept)))  # no further ahead than gather goes
            if not kept:
                self.gathered_at = _monotonic()
            if k > 1:  # the flag first, then the wake: the flusher looks while user code runs
                self.slicing = True
                self.wake()
            try:
                kept.extend(islice(items, k) if key is None else map(keep_key, islice(items, k)))
            finally:
                self.slicing = False
            return k

        def due() -> None:
            if len(kept) >= limit or (one.receiver.hungry if size == 1 else any(map(_hungry, conns))):
                route()
            elif kept:
                self.wake()
        return gather, take, due

    def route_gathered(self, block: bool = True) -> bool:
        """Route the items :meth:`gatherer` kept, in order, as one bundle. ``block=False`` (the
        flusher) never waits: it gives up (returns False) when the source is routing, or when a
        queue of the lane has no room for all of them."""
        lock = self.gather_lock
        if not lock.acquire(block):
            return False
        try:
            kept = self.gathered
            n = len(kept)  # the source may append meanwhile: a prefix is taken, at the end
            if not n:
                return True
            g = self._lane
            if not block and not all(_takes(c.queue, n) for c in g.connections):
                return False
            b = Bundle.fresh(kept[:n])
            del kept[:n]
            self.gather_taken += n
            b.created, self.gathered_at = self.gathered_at, _monotonic()  # (what is kept now came since)
            if g.key is not None:
                keys = self.gathered_keys
                b.keys = keys[:n]
                del keys[:n]
            self.gather_routes += 1
            self.send_bundle(b)
            return True
        finally:
            lock.release()
