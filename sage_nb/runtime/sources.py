"""A source instance's loop: where its items come from, and how they travel.

An in-memory sequence is routed a chunk at a time (:meth:`SourceLoop._run_chunks`: no user code
runs between its items). Items from user code (a generator, a callable, a class instance, a
queue) are routed one by one, or with micro-batching kept as plain payloads by the router
(``gatherer``) until a batch for each instance is ready or a reader waits; a source whose code
keeps the CPU busy is pulled a slice at a time (:meth:`SourceLoop._gather_slices`). Pause,
stop and breakpoints are seen between items, chunks and slices.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

from ..communication.packet import Bundle, Packet
from ..errors import Cancelled
from .batching import BATCH_MAX
from .context import IN_MEMORY_TYPES

if TYPE_CHECKING:  # pragma: no cover
    from ..communication.router import BaseRouter
    from .context import TaskContext
    from .task import BaseTask, Control

__all__ = ["END", "SourceLoop"]

#: Returned by a callable source to end its stream.
class _EndOfStream:
    """The end-of-stream marker a source returns or a producer puts (one object, even pickled)."""

    def __repr__(self) -> str:
        return "sage_nb.END"

    def __reduce__(self) -> str:
        return "END"


END: Any = _EndOfStream()
SOURCE_CHUNK = 64   # items of an in-memory sequence a batching source routes at once
GATHER_TIME = 0.0002  # seconds of a source's code between two looks (pause, stop, a waiting reader)
TIMED_RUN = 256     # items a source gathers one by one between two looks at how fast they come
MAX_SLICE = 65_536  # items a source takes in one slice at most
_IN_MEMORY = tuple(type(iter(t(0) if t is range else t())) for t in IN_MEMORY_TYPES)  # their iterators


class _Shared:
    """One iterator shared by a source's instances: each item goes to exactly one of them."""

    _it: Iterator[Any] | None

    def __init__(self, make: Callable[[], Iterator[Any]]) -> None:
        self._make, self._it, self._lock = make, None, threading.Lock()

    def __iter__(self) -> Iterator[Any]:
        while True:
            with self._lock:
                if self._it is None:
                    self._it = iter(self._make())
                try:
                    item = next(self._it)
                except StopIteration:
                    return
            yield item


def _slice(n: int, took: float) -> int:
    """Items for the next slice of a source that took ``took`` seconds for ``n``: about
    ``GATHER_TIME`` of work, growing at most 8-fold at a time."""
    return max(1, min(8 * n, MAX_SLICE, int(n * GATHER_TIME / took) if took > 0 else MAX_SLICE))


def _queue_items(q: Any) -> Iterator[Any]:
    while True:
        for item in q.get_many(BATCH_MAX):
            if item is END:
                return
            yield item


def _calls(fn: Callable[[], Any]) -> Iterator[Any]:
    """The items of a plain callable source: ``fn()`` until it returns ``END`` (or raises
    ``StopIteration``). An iterator as its first item is a mistake (``lambda: iter(data)``
    would emit that iterator forever): it fails the source, saying what to write instead."""
    first = True
    while True:
        try:
            item = fn()
        except StopIteration:
            return
        if item is END:
            return
        if first:
            first = False
            if isinstance(item, Iterator):
                raise TypeError(f"the source function returned an iterator ({type(item).__name__}), and "
                                f"a plain function is called once per item until it returns snb.END; for "
                                f"the items of a sequence use from_iterable(data), or write the function "
                                f"as a generator (yield from data)")
        yield item


class SourceLoop:
    """The source half of :class:`~sage_nb.runtime.task.BaseTask` (a mixin: it uses the task's
    context, control, router and counters, ``_wait_paused``, ``_hand_over``, ``lean_next``,
    ``emit`` and ``_route``)."""

    ctx: TaskContext
    control: Control
    router: BaseRouter
    attrs: dict[str, Any]
    current: Any
    packets_in: int
    state: str
    chain_next: Any
    _per_instance: bool

    if TYPE_CHECKING:  # the task's methods (BaseTask, ChainedTask, BundlePath)
        def _wait_paused(self) -> None: ...

        def _hand_over(self, idle: bool) -> None: ...

        def lean_next(self) -> BaseTask | None: ...

        def emit(self, items: list[Any]) -> None: ...

        def _route(self, b: Bundle) -> None: ...

    def _source_items(self, fn: Any) -> Iterator[Any]:
        """This instance's items: its own (a class instance, a stride of a sequence) or a share."""
        ctx = self.ctx
        if self.attrs.get("queue_descriptor") is not None:  # from_queue: read until END
            return _queue_items(ctx.input_qd.queue_instance)  # type: ignore[union-attr]
        if self._per_instance:  # one object per instance: the user splits
            return iter(fn) if hasattr(fn, "__iter__") else _calls(fn)
        if fn is None:  # from_iterable
            items = self.attrs["items"]
            if ctx.parallelism > 1 and isinstance(items, Sequence):
                return iter(items[ctx.parallel_index::ctx.parallelism])
            make: Callable[[], Iterator[Any]] = lambda: iter(items)  # noqa: E731
        elif _is_generator_function(fn):
            make = lambda: iter(fn())  # noqa: E731
        else:
            make = lambda: _calls(fn)  # noqa: E731
        if ctx.parallelism == 1:
            return make()
        with self.control.lock:
            shared = self.control.sources.setdefault(ctx.operator, _Shared(make))
        return iter(shared)

    def _run_source(self, fn: Any) -> None:
        control, router = self.control, self.router
        send = router.send
        fresh = Packet.fresh
        self.state = "busy"
        chained = self.chain_next is not None and router.batching
        items = self._source_items(fn)
        if router.routes_in_bulk() and type(items) in _IN_MEMORY:
            self._run_chunks(items)  # items already in memory: no user code runs between them
            return
        # items kept as payloads, to travel as bundles (not under breakpoints: packets one by one)
        gather = router.gatherer() if router.gathers() and not chained else None
        slices = router.slice_gatherer() if gather is not None else None
        perf, cpu = time.perf_counter, time.thread_time
        left, start, used = TIMED_RUN, perf(), cpu()
        for item in items:
            if control.stopping:
                if control.cancel.is_set():
                    raise Cancelled(f"{self.ctx.name}: job stopping")
                break
            if control.paused:
                self._wait_paused()
            self.current = item
            if gather is None:
                send(fresh(item))
            elif router.watch is None:
                gather(item)
            else:  # a breakpoint was set: what was kept goes first, then packet by packet
                router.flush()
                gather = slices = None
                send(fresh(item))
            self.packets_in += 1
            if chained:  # the chained operator runs now: the source may wait for its next item
                self._hand_over(idle=False)
            if slices is not None:
                left -= 1
                if not left:  # a source whose code kept the CPU busy goes on a slice at a time
                    took, busy = perf() - start, cpu() - used
                    if busy >= took / 2 and self._gather_slices(items, slices, _slice(TIMED_RUN, took)):
                        break
                    left, start, used = TIMED_RUN, perf(), cpu()
        self.current = None

    def _gather_slices(self, items: Iterator[Any], slices: Any, k: int) -> bool:
        """Keep a source's items a slice at a time (the router's ``slice_gatherer``: no Python
        code of ours per item), ``k`` first, then about ``GATHER_TIME`` of the source's code each
        at the speed measured so far; pause, stop and breakpoints are seen between slices, and a
        reader waiting for input gets what was kept at the end of a slice. Returns True at the
        end of the items (or on stop); False when the source's code waited during a slice (for
        input, or for its own packets downstream, which must then go at once: it goes on item by
        item) and when a breakpoint was set (what was kept is routed first)."""
        router, control, perf, cpu = self.router, self.control, time.perf_counter, time.thread_time
        take, due = slices
        kept = router.gathered
        while k > 1:
            if control.paused:
                self._wait_paused()
            if control.stopping:
                if control.cancel.is_set():
                    raise Cancelled(f"{self.ctx.name}: job stopping")
                return True
            if router.watch is not None:
                return False
            before = router.kept_count()
            start, used = perf(), cpu()
            try:
                asked = take(items, k)
                took, busy = perf() - start, cpu() - used
            finally:
                n = router.kept_count() - before
                self.packets_in += n
                failed, router.gather_failed = router.gather_failed, ()
                last = kept[-1:]  # (the flusher may have routed them all)
                if failed or last:
                    self.current = failed[0] if failed else last[0]
            due()
            if n < asked:  # the items ended
                return True
            if busy < took / 2:
                return False
            k = _slice(asked, took)
        return False

    def _run_chunks(self, items: Iterator[Any]) -> None:
        """Route an in-memory sequence a chunk at a time (item by item under breakpoints)."""
        control, router, fresh_many = self.control, self.router, Packet.fresh_many
        lean = self.lean_next() is not None  # plain items straight into the chained operator
        size = router.batch_size if lean else SOURCE_CHUNK  # a chained operator takes a whole batch
        while True:
            if control.paused:  # first: breakpoints may be set meanwhile
                self._wait_paused()
            if control.stopping:
                if control.cancel.is_set():
                    raise Cancelled(f"{self.ctx.name}: job stopping")
                break
            bundles = not lean and router.bundles()
            # a bundle is split between the instances downstream: each share about a batch
            chunk = list(islice(items, 1 if router.watch is not None else
                                router.batch_size * router.fan_out if bundles else size))
            if not chunk:
                break
            self.current = chunk[-1]
            if lean:
                self.packets_in += len(chunk)
                self.emit(chunk)
                continue
            if bundles:  # no packet object: the chunk travels as one entry per queue
                self._route(Bundle.fresh(chunk))
            else:
                router.send_many(fresh_many(chunk), True, True)
            self.packets_in += len(chunk)
        self.current = None


def _is_generator_function(fn: Any) -> bool:
    """A generator function, or an object whose ``__call__`` is one."""
    call = inspect.getattr_static(type(fn), "__call__", None)
    return inspect.isgeneratorfunction(fn) or inspect.isgeneratorfunction(call)
