"""``BaseTask``: one parallel instance — read the input queue, call the user function, route.

The loop is backend-neutral: the threads backend runs :meth:`BaseTask.run` in a thread,
the Ray backend inside an actor. End of stream follows DESIGN §2: the task finishes after
one :class:`StopSignal` from every incoming connection, runs ``close()``, then forwards one
stop signal on each of its own connections. Stop signals never reach user code.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from itertools import compress, islice, repeat
from typing import Any, Protocol

from ..communication.local_queue import QueueShutDown
from ..communication.packet import Bundle, Packet, StopSignal
from ..communication.router import BaseRouter
from ..errors import Cancelled, ProtocolError
from .batching import DEFAULT_LINGER
from .context import IN_MEMORY_TYPES, TaskContext

__all__ = ["END", "BaseTask", "Control"]

log = logging.getLogger("sage_nb")

#: Returned by a callable source to end its stream.
class _EndOfStream:
    """The end-of-stream marker a source returns or a producer puts (one object, even pickled)."""

    def __repr__(self) -> str:
        return "sage_nb.END"

    def __reduce__(self) -> str:
        return "END"


END: Any = _EndOfStream()
KEY_CAP = 1000      # distinct keys counted per instance for the key distribution
BATCH_MAX = 256     # packets taken from the input queue in one call
SOURCE_CHUNK = 64   # items of an in-memory sequence a batching source routes at once
SLICE_TIME = 0.001  # seconds of user code between two cancel checks over plain items (_apply)
_DONE: Iterator[Any] = iter(())  # an exhausted iterator
GATHER_TIME = 0.0002  # seconds of a source's code between two looks (pause, stop, a waiting reader)
TIMED_RUN = 256     # items a source gathers one by one between two looks at how fast they come
MAX_SLICE = 65_536  # items a source takes in one slice at most
_IN_MEMORY = tuple(type(iter(t(0) if t is range else t())) for t in IN_MEMORY_TYPES)  # their iterators


class Owner(Protocol):
    """What a task reports to (the dispatcher)."""

    control: Control

    def task_failed(self, task: BaseTask, exc: BaseException, packet: Any) -> None: ...

    def task_exited(self, task: BaseTask) -> None: ...


class Control:
    """Job-wide flags every task of a job reads: cancel, stop sources (drain), pause."""

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.stopping = False          # sources stop emitting (set by drain and by cancel)
        self.cancelled = False         # a plain flag, cheap to read once per packet
        self.paused = False
        self.resume = threading.Event()
        self.resume.set()
        self.sources: dict[str, Any] = {}   # operator -> a source shared by its instances
        self.lock = threading.Lock()

    def pause(self) -> None:
        self.paused = True
        self.resume.clear()

    def unpause(self) -> None:
        self.paused = False
        self.resume.set()

    def cancel_all(self) -> None:
        self.stopping = True
        self.cancelled = True
        self.cancel.set()
        self.resume.set()


class _Shared:
    """One iterator shared by a source's instances: each item goes to exactly one of them."""

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
    while True:
        try:
            item = fn()
        except StopIteration:
            return
        if item is END:
            return
        yield item


class BaseTask:
    """Runs one instance; ``state`` and the counters are read by snapshots from other threads."""

    def __init__(self, ctx: TaskContext, owner: Owner, *, results: list | None = None,
                 node_attrs: dict[str, Any] | None = None, put_timeout: float | None = None,
                 batch_size: int = 1) -> None:
        self.ctx = ctx
        self.owner = owner
        self.control = owner.control
        self.attrs = node_attrs or {}
        self.results = results
        self.router = BaseRouter(ctx.name, ctx.downstream_groups, cancel=self.control.cancel,
                                 put_timeout=put_timeout, batch_size=batch_size)
        self.state = "starting"
        self.packets_in = 0
        self.busy_time = 0.0
        self.stops_received = 0
        self.unknown_stops: list[StopSignal] = []
        self.discarded = 0     # packets thrown away after this instance failed
        self._expected: set[tuple[str, int]] = {
            (s, i) for i, senders in ctx.upstreams.items() for s in senders}
        self._seen: set[tuple[str, int]] = set()
        self._leftover: list[Any] = []
        self._per_instance = False
        self.key_counts: Counter[Any] = Counter()
        self.last: list[Any] = []
        self.current: Any = None   # the packet being processed when user code raised
        self.error: BaseException | None = None
        self._closers: list[Callable[[], Any]] = []
        # chain=True: the task this one runs inside its own (``feed``), and the time spent there
        self.chain_next: BaseTask | None = None
        self.chain_conn: Any = None   # the connection to it
        self.chained_time = 0.0
        self._process: Callable[[Packet], None] | None = None
        self._fast: Callable[[list[Packet]], None] | None = None   # a whole batch in one loop
        self._lean_fn: Any = None   # a chained map/filter/sink's function, for take() (None: collect)
        self._keyed = False   # a map, filter, flat_map or sink behind key_by: bundles come with keys
        self._keys_now: list[Any] = []  # their keys, while _apply_counting runs
        self._at_item: Iterator[Any] = _DONE  # _apply's iterator over its current slice,
        self._at_end = 0                         # and where that slice ends in its items
        self._slice = 1   # items per cancel check in _apply: one until the function is timed
        self.linger = DEFAULT_LINGER  # seconds a bundle's results wait at most while user code runs
        self._routing = False  # sending a bundle's results on (set while user code may still raise)
        # what the bundle in hand produced so far, for the flusher: [since, send(block)] (see _results_due)
        self._pending: list[Any] | None = None
        self._results_lock = threading.Lock()
        self.poke: Callable[[], None] | None = None  # wakes the job's flusher (None: none watches this task)
        self._at = 0   # where in its batch _handle was when it raised
        self._exited = False

    # ------------------------------------------------------------------ life cycle
    def run(self) -> None:
        """Open, process until end of stream, close, forward stop signals; never raises."""
        try:
            fn = self._open()
            chained = self.chain_next
            while chained is not None:  # the operators chained to this task open in its thread
                chained._open_chained()
                chained = chained.chain_next
            if self.ctx.kind == "source":
                self._run_source(fn)
            else:
                self._run_input(self._make_process(fn))
            self.state = "closing"
            self._close()
            self.router.send_stop_signal()
            self.state = "finished"
        except (Cancelled, QueueShutDown):
            self.state = "cancelled"
            self._close(quiet=True)
        except BaseException as exc:  # user code may raise SystemExit & co: fail the job
            self._failed(exc)
            self._end_after_failure()
        finally:
            chained = self.chain_next
            while chained is not None:  # cancelled with this task (a finished one has exited)
                chained._exit(cancelled=True)
                chained = chained.chain_next
            self._exit()

    def _failed(self, exc: BaseException) -> None:
        self.state = "failed"
        self.error = exc
        self._close(quiet=True)
        self.owner.task_failed(self, exc, self.current)

    def _exit(self, cancelled: bool = False) -> None:
        """Tell the owner this instance ended (once); ``cancelled``: if it had not ended yet."""
        if self._exited:
            return
        self._exited = True
        if cancelled and self.state not in ("finished", "failed"):
            self.state = "cancelled"
            self._close(quiet=True)
        self.owner.task_exited(self)

    # ------------------------------------------------------------------ chained (chain=True)
    def _open_chained(self) -> None:
        """Open this chained instance (in its upstream's thread); a failure fails only it."""
        try:
            fn = self._open()
            self._process = self._make_process(fn)
            self.state = "idle"
        except BaseException as exc:
            self._failed(exc)

    def feed(self, items: list[Any]) -> None:
        """Process ``items`` (packets and stop signals) handed over by the upstream instance
        this one is chained to, in its thread; at the last stop signal close and end."""
        expected, process = self._expected, self._process
        if self.error is not None or process is None:  # failed: discard the data, count the stops
            self._discard(items)
            return
        router, perf = self.router, time.perf_counter
        start, blocked, chained = perf(), router.blocked_time, self.chained_time
        self.state = "busy"
        try:
            self._handle(items, process, set(map(type, items)))
        except (Cancelled, QueueShutDown):
            self._leftover = items[self._at:]
            raise  # the job stops: so does the task this one runs in
        except BaseException as exc:
            self.current = items[self._at] if self._at < len(items) else None
            self._failed(exc)
            self._discard(items[self._at + 1:])
            return
        finally:
            self.busy_time += perf() - start - (router.blocked_time - blocked) - (self.chained_time - chained)
        self.last = [m.payload for m in items[-5:] if m.__class__ is not StopSignal] or self.last
        if expected:
            self.state = "idle"
            return
        self.state = "closing"
        try:
            self._close()
        except BaseException as exc:
            self._failed(exc)
        if not router.closed:
            router.send_stop_signal()
        if self.error is None:
            self.state = "finished"
        self._exit()

    def _discard(self, items: list[Any]) -> None:
        """After a failure: count the data as discarded; end once every stop signal came."""
        for msg in items:
            if msg.__class__ is StopSignal:
                self._on_stop(msg, self._expected, self._seen)
            else:
                self.discarded += 1
        if not self._expected and not self._exited:
            if not self.router.closed:
                self.router.send_stop_signal()
            self._exit()

    def lean_next(self) -> BaseTask | None:
        """The task chained to this one when it takes plain items (:meth:`take`): a map,
        filter or sink, with micro-batching on (``batch_size=1`` keeps packets everywhere)."""
        t = self.chain_next
        if t is None or not self.router.batching or t.ctx.kind not in ("map", "filter", "sink"):
            return None
        return t

    def emit(self, items: list[Any]) -> None:
        """Send plain items on: straight into the task chained to this one (:meth:`take`,
        no packet made), else as fresh packets through the router."""
        t = self.lean_next()
        if t is None:
            self.router.send_many(Packet.fresh_many(items), True, True)
            return
        self.chain_conn.packets_sent += len(items)  # type: ignore[union-attr]
        self.router.skip_traced(len(items))  # routing decisions not recorded
        start = time.perf_counter()
        try:
            t.take(items)
        finally:
            self.chained_time += time.perf_counter() - start

    def take(self, items: list[Any]) -> None:
        """:meth:`feed` for plain items (payloads): a chained map, filter or sink, each item
        through the user function in one C-level loop that a cancel cuts short."""
        fn, kind = self._lean_fn, self.ctx.kind
        if self.error is not None or self._process is None:  # failed: discard
            self.discarded += len(items)
            return
        router, perf = self.router, time.perf_counter
        start, blocked, inner = perf(), router.blocked_time, self.chained_time
        self.state = "busy"
        done: list[Any] = []  # fn's result for each item, as far as it went
        try:
            if kind == "sink" and fn is None:  # a collecting sink
                self.results.extend(items)  # type: ignore[union-attr]
                done = items
            else:
                self._apply(fn, items, done)
        except (Cancelled, QueueShutDown):
            self.packets_in += len(done)
            self._leftover = items[len(done):]
            raise
        except BaseException as exc:
            i = len(done)
            self.packets_in += i
            self.current = items[i]
            out = self._outputs(kind, items, done)
            if out:  # what was processed before goes on, as packet by packet
                with contextlib.suppress(Cancelled, QueueShutDown):
                    self.emit(out)
            self._failed(exc)
            self.discarded += len(items) - i - 1
            return
        finally:
            self.busy_time += perf() - start - (router.blocked_time - blocked) - (self.chained_time - inner)
        self.packets_in += len(items)
        self.last = items[-5:]
        out = self._outputs(kind, items, done)
        if out:
            self.emit(out)
        self.state = "idle"

    def _apply(self, fn: Callable[..., Any], items: list[Any], done: list[Any],
               between: Callable[[], None] | None = None) -> None:
        """Append ``fn(x)`` for each of ``items`` to ``done`` (as far as it went when ``fn``
        raises), in C-level ``map`` calls over slices sized to take about ``SLICE_TIME`` at the
        speed measured so far; a cancel is seen, and ``between()`` called, between slices. The
        first slice is one item, so a slow function is called item by item and a cancel never
        waits long. While ``fn`` runs, the item it is on is ``_at_end - 1 -`` what ``_at_item``
        has left."""
        control, perf, i, n = self.control, time.perf_counter, 0, len(items)
        k = self._slice
        while i < n:
            if control.cancelled:
                raise Cancelled(f"{self.ctx.name}: job stopping")
            start = perf()
            part = items if not i and k >= n else items[i:i + k]
            self._at_end, self._at_item = i + len(part), iter(part)
            done.extend(map(fn, self._at_item))
            took = perf() - start
            i += k
            # next slice: about SLICE_TIME of work, growing at most 8-fold at a time
            k = max(1, min(8 * k, BATCH_MAX, int(k * SLICE_TIME / took) if took > 0 else BATCH_MAX))
            if between is not None and i < n:
                between()
        self._slice, self._at_item = k, _DONE  # (no slice kept alive)

    @staticmethod
    def _outputs(kind: str, items: list[Any], done: list[Any]) -> list[Any]:
        """What a map (its results), a filter (the items it kept) or a sink (nothing) emits."""
        if kind == "map":
            return done
        if kind == "filter":
            return list(compress(items, done))
        return []

    def _hand_over(self, idle: bool) -> None:
        """Ship what this task and the ones chained to it routed: every buffer when ``idle``
        (about to wait), else the chained hand-overs and the batches a waiting reader wants."""
        t: BaseTask | None = self
        while t is not None:
            r = t.router
            if r.batching:
                if idle:
                    r.flush()
                else:
                    for c in r._conns:
                        if c.batch and (c.chained or c.receiver.hungry):
                            r._ship(c)
            t = t.chain_next

    def _end_after_failure(self) -> None:
        """Discard the rest of the input and end the stream, so that what was already
        emitted downstream still reaches the sinks while the job winds down (the
        dispatcher cancels everything if this takes too long)."""
        try:
            if self.ctx.kind != "source":
                q = self.ctx.input_qd.queue_instance  # type: ignore[union-attr]
                batch, self._leftover = self._leftover, []
                while self._expected:
                    for msg in batch:
                        if msg.__class__ is StopSignal:
                            self._on_stop(msg, self._expected, self._seen)
                        else:
                            self.discarded += len(msg) if msg.__class__ is Bundle else 1
                    if self._expected:
                        batch = q.get_many(BATCH_MAX)
            if not self.router.closed:
                self.router.send_stop_signal()
        except Exception:  # the job already failed with the original error: keep that one
            pass

    def _instantiate(self, cls: type) -> Any:
        obj = cls()
        with contextlib.suppress(AttributeError):  # a builtin type (itertools.count) takes none
            obj.ctx = self.ctx
        if callable(getattr(obj, "open", None)):
            obj.open()
        if callable(getattr(obj, "close", None)):
            self._closers.append(obj.close)
        return obj

    def _open(self) -> Any:
        fn = self.attrs.get("fn")
        self._per_instance = isinstance(fn, type) and _wants_instance(fn, self.ctx.kind)
        if self._per_instance:
            obj = self._instantiate(fn)
            if self.ctx.kind == "co_map":
                return [getattr(obj, f"map{i}") for i in range(len(self.ctx.upstreams))]
            if self.ctx.kind == "source":
                return obj
            call = obj if callable(obj) else getattr(obj, "execute", None)
            if not callable(call):
                raise TypeError(f"{type(obj).__name__} instances must be callable "
                                f"(define __call__ or execute)")
            return call
        return fn

    def _close(self, quiet: bool = False) -> None:
        """Run the user's close() hooks once; a failure fails the job unless ``quiet``."""
        closers, self._closers = self._closers, []
        for close in closers:
            try:
                close()
            except BaseException:
                if not quiet:
                    self.current = None
                    raise

    def _wait_paused(self) -> None:
        self._hand_over(idle=True)  # what was routed before the pause is delivered
        previous, self.state = self.state, "paused"
        self.control.resume.wait()
        if self.control.cancel.is_set():
            raise Cancelled(f"{self.ctx.name}: job stopping")
        self.state = previous

    # ------------------------------------------------------------------ sources
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

    # ------------------------------------------------------------------ operators
    def _make_process(self, fn: Any) -> Callable[[Packet], None]:
        kind, send = self.ctx.kind, self.router.send
        self._fast = self._batch_process(kind, fn)
        self._lean_fn = fn
        self._keyed = self.ctx.keyed_input and kind in ("map", "filter", "flat_map", "sink")
        if kind == "sink":
            if fn is None:
                append = self.results.append  # type: ignore[union-attr]

                def process(p: Packet) -> None:
                    append(p.payload)
            else:
                def process(p: Packet) -> None:
                    fn(p.payload)
        elif kind == "map":
            def process(p: Packet) -> None:
                p.payload = fn(p.payload)
                p.partition_strategy = None
                send(p)
        elif kind == "filter":
            def process(p: Packet) -> None:
                if fn(p.payload):
                    p.partition_strategy = None
                    send(p)
        elif kind == "flat_map":
            def process(p: Packet) -> None:
                for item in fn(p.payload):
                    send(p.derive(item))
        elif kind == "co_map":
            fns = fn

            def process(p: Packet) -> None:
                p.payload = fns[p.input_index](p.payload)
                p.partition_strategy = None
                send(p)
        else:  # pragma: no cover - validated at build time
            raise ValueError(f"unknown kind {kind!r}")
        if not self.ctx.keyed_input:
            return process
        inner, ctx, counts = process, self.ctx, self.key_counts

        def keyed(p: Packet) -> None:
            key = ctx._key = p.partition_key
            if key in counts:
                counts[key] += 1
            elif len(counts) < KEY_CAP:
                counts[key] = 1
            inner(p)
        return keyed

    def _run_input(self, process: Callable[[Packet], None]) -> None:
        ctx, control, router = self.ctx, self.control, self.router
        q = ctx.input_qd.queue_instance  # type: ignore[union-attr]
        expected, seen = self._expected, self._seen
        perf = time.perf_counter
        get_many = q.get_many
        batching = router.batching
        chained = self.chain_next is not None
        # a map, filter, flat_map or sink runs bundles through the user function without making packets
        lean = self.ctx.kind in ("map", "filter", "flat_map", "sink")
        while expected:
            self.state = "draining" if seen else "idle"
            if chained:  # the chained operators process what the last batch produced
                self._hand_over(q.empty())
            elif batching:  # ship before waiting for input; a waiting receiver gets its batch now
                if q.empty():
                    router.flush()
                else:
                    router.flush_waiting()
            batch = get_many(BATCH_MAX)
            if control.paused:
                self._wait_paused()
            self.state = "busy"
            start, blocked, inner = perf(), router.blocked_time, self.chained_time
            types = set(map(type, batch))
            try:
                if Bundle in types:
                    if lean and types <= _BUNDLES:
                        self._take_bundles(batch)
                        continue
                    batch = [p for m in batch for p in (m.packets() if m.__class__ is Bundle else (m,))]
                    types = set(map(type, batch))
                self._handle(batch, process, types)
            except BaseException as exc:
                pos = self._at
                if pos >= 0:  # (a bundle accounted for itself)
                    self.current = batch[pos] if pos < len(batch) else None
                    # still to account for (stop signals among them); a cancel left that one untouched
                    self._leftover = batch[pos if isinstance(exc, Cancelled) else pos + 1:]
                raise
            finally:
                self.busy_time += perf() - start - (router.blocked_time - blocked) - (self.chained_time - inner)
            self.last = [m.payload for m in batch[-5:] if m.__class__ is not StopSignal] or self.last
        if q.qsize():
            raise ProtocolError(f"{ctx.name}: {q.qsize()} packet(s) arrived after the end of stream "
                                f"of every input")

    def _handle(self, batch: list[Any], process: Callable[[Packet], None], types: set[type]) -> None:
        """Process ``batch`` (packets and stop signals; ``types``: their classes) in order,
        counting ``packets_in``; when it raises, ``self._at`` is the index of the message it was on."""
        expected = self._expected
        if self._fast is not None and expected and StopSignal not in types and \
                self.router.watch is None and not self.control.cancelled:
            self._fast(batch)  # data only, no breakpoint: one loop for the batch
            return
        control, seen, n, msg = self.control, self._seen, 0, None
        try:
            for msg in batch:
                if control.cancelled:  # a cancel does not wait for the rest of the batch
                    raise Cancelled(f"{self.ctx.name}: job stopping")
                if msg.__class__ is StopSignal:
                    self._on_stop(msg, expected, seen)
                    continue
                if not expected:
                    raise ProtocolError(f"{self.ctx.name}: received data after the end of stream of "
                                        f"every input ({len(seen)} stop signals)")
                process(msg)
                n += 1
        except BaseException:
            self._at = next((i for i, m in enumerate(batch) if m is msg), len(batch))
            raise
        finally:
            self.packets_in += n

    def _batch_process(self, kind: str, fn: Any) -> Callable[[list[Packet]], None] | None:
        """A map, filter or sink over a list of packets in one loop, routed with one
        ``send_many``; None for the other kinds (they go packet by packet)."""
        if kind not in ("map", "filter", "sink"):
            return None
        ctx, counts, send_many, control = self.ctx, self.key_counts, self.router.send_many, self.control
        keyed = ctx.keyed_input
        clean = not keyed and set(ctx.upstreams) == {0}  # outputs: no key, for input 0
        collect = self.results.extend if kind == "sink" and fn is None else None  # type: ignore[union-attr]
        stop = f"{ctx.name}: job stopping"
        lean = kind != "sink" and self.lean_next() is not None  # plain items to a chained operator

        def run(batch: list[Packet]) -> None:
            out, p = batch, None
            try:
                if collect is not None and not keyed:
                    collect([p.payload for p in batch])
                else:
                    if kind == "filter":
                        out = []
                    for p in batch:
                        if control.cancelled:  # a cancel does not wait for the rest of the batch
                            raise Cancelled(stop)
                        if keyed:  # key counts, and the key user code may read
                            key = ctx._key = p.partition_key
                            if key in counts:
                                counts[key] += 1
                            elif len(counts) < KEY_CAP:
                                counts[key] = 1
                        if kind == "map":
                            p.payload = fn(p.payload)
                            p.partition_strategy = None
                        elif kind == "filter":
                            if fn(p.payload):
                                p.partition_strategy = None
                                out.append(p)
                        elif collect is None:
                            fn(p.payload)
                    if collect is not None:
                        collect([p.payload for p in batch])
            except BaseException:
                k = self._at = next((i for i, m in enumerate(batch) if m is p), 0)
                self.packets_in += k
                if kind != "sink":  # what was processed before is routed, as packet by packet
                    with contextlib.suppress(Cancelled, QueueShutDown):
                        send_many(out[:k] if kind == "map" else out, True)
                raise
            self.packets_in += len(batch)
            self._at = len(batch)
            if lean:
                self.emit([p.payload for p in out])
            elif kind != "sink":
                send_many(out, True, clean)
        return run

    def _apply_counting(self, fn: Callable[..., Any] | None, items: list[Any], done: list[Any],
                        keys: list[Any], between: Callable[[], None] | None = None) -> None:
        """``_apply(fn, items, done)`` (a collecting sink's extend when ``fn`` is None) for the
        packets of a bundle with their ``keys``. ``ctx.current_key`` finds the key of the packet
        ``fn`` is on from ``_apply``'s position (nothing per packet); then the keys of the
        packets processed (and of the one ``fn`` failed on) are counted as one by one, by C-level
        passes, and ``ctx.current_key`` is the last one's."""
        k, ctx = len(items), self.ctx
        try:
            if fn is None:
                self.results.extend(items)  # type: ignore[union-attr]
            else:
                self._keys_now, ctx._key_at = keys, self._key_at
                self._apply(fn, items, done, between)
        except Cancelled:
            k = len(done)
            raise
        except BaseException:
            k = len(done) + (not self._routing)  # (the packet it failed on is counted, as one by one)
            raise
        finally:
            self._keys_now, ctx._key_at = [], None
            self._count_keys(keys if k == len(keys) else keys[:k])

    def _key_at(self) -> Any:
        """The key of the packet the user function is on (``ctx.current_key`` in a bundle)."""
        return self._keys_now[self._at_end - 1 - self._at_item.__length_hint__()]

    def _count_keys(self, keys: list[Any]) -> None:
        """Count ``keys`` in ``key_counts`` as one by one: the first ``KEY_CAP`` distinct keys
        seen are counted, later new ones are not."""
        counts = self.key_counts
        if len(counts) < KEY_CAP:
            counts.update(keys)
            if len(counts) > KEY_CAP:  # the newest keys come last (insertion order)
                for key in list(islice(counts, KEY_CAP, None)):
                    del counts[key]
        else:
            counts.update(filter(counts.__contains__, keys))
        if keys:
            self.ctx._key = keys[-1]

    def _take_bundles(self, batch: list[Bundle]) -> None:
        """Bundles (and stop signals, in their order) through a map, filter or sink: the user
        function over each bundle's payloads (:meth:`_apply`), the results on as a bundle with
        the same trace ids; a flat_map's by :meth:`_take_flat`. When it raises, ``current`` is
        the packet it was on and ``_leftover`` what remains (``_at`` is -1)."""
        kind, fn, keyed = self.ctx.kind, self._lean_fn, self._keyed
        for i, b in enumerate(batch):
            if b.__class__ is StopSignal:
                self._on_stop(b, self._expected, self._seen)
                continue
            items, done = b.payloads, []
            if not self._expected:
                self._at, self._leftover = -1, batch[i:]
                raise ProtocolError(f"{self.ctx.name}: received data after the end of stream of "
                                    f"every input ({len(self._seen)} stop signals)")
            if kind == "flat_map":
                self._take_flat(b, batch[i + 1:])
                continue
            sent = [0]  # results sent on so far
            pend = None if kind == "sink" else [time.perf_counter(), partial(self._send_results, b, done, sent)]
            between = None if pend is None else partial(self._results_due, True, pend)
            self._hold(pend)
            try:
                if keyed:  # key counts, and the key user code may read
                    self._apply_counting(fn, items, done, [None] * len(items) if b.keys is None else b.keys,
                                         between)
                elif kind == "sink" and fn is None:  # a collecting sink
                    self.results.extend(items)  # type: ignore[union-attr]
                else:
                    self._apply(fn, items, done, between)
            except BaseException as exc:
                self._hold(None)
                k, s, routing = len(done), sent[0], self._routing
                self._at, self.packets_in, self._routing = -1, self.packets_in + k, False
                if routing:  # sending results on failed (a key function raised: current names it; a cancel)
                    self._leftover = [b.pick(slice(k, None)), *batch[i + 1:]] if k < len(b) else batch[i + 1:]
                    raise
                self.current = b.packet(k) if k < len(b) else None
                self._leftover = [b.pick(slice(k if isinstance(exc, Cancelled) else k + 1, None)),
                                  *batch[i + 1:]]
                if k > s and kind != "sink":  # what was processed before goes on
                    with contextlib.suppress(Cancelled, QueueShutDown):
                        self._send_bundle(b.pick(slice(s, k)), done[s:])
                raise
            self._hold(None)
            self.packets_in += len(items)
            self.last = items[-5:]
            if kind != "sink" and sent[0] < len(items):
                self.current = None
                try:
                    s = sent[0]
                    self._send_bundle(b.pick(slice(s, None)) if s else b, done[s:] if s else done)
                except BaseException:  # routing failed (a key function raised: current names it; a cancel)
                    self._at, self._leftover = -1, batch[i + 1:]
                    raise

    def _hold(self, pend: list[Any] | None) -> bool:
        """Tell the job's flusher what the bundle in hand produced so far (``pend``: ``[since,
        send]``, see :meth:`_results_due`), or that it is done with (None: once the flusher is
        not sending). Whether the flusher looks after ``pend``: not without one (Ray), nor for a
        chained task (its results run the chained operators' code, in its own thread)."""
        if pend is None:
            if self._pending is not None:
                with self._results_lock:
                    self._pending = None
            return False
        if self.poke is None or self.chain_next is not None:
            return False
        self._pending = pend
        self.poke()
        return True

    def _results_due(self, block: bool, pend: list[Any] | None = None) -> bool:
        """Send on what the bundle in hand produced and did not send yet, once it waited
        ``linger``: from the task between two slices of user code (``pend``), and from the
        job's flusher while user code runs (``block=False``: it never waits for the lock or for
        room in a queue; False when it gave up). So slow user code holds no result back longer
        than a batch would wait."""
        lock = self._results_lock
        if not lock.acquire(block):
            return False
        try:
            pend = pend or self._pending
            if pend is None or time.perf_counter() - pend[0] < self.linger:
                return True
            if block:
                self._routing = True  # (a failure now is the routing's, not the user function's)
            sent = pend[1](block)
            self._routing = False
            if sent:
                pend[0] = time.perf_counter()
            return sent
        finally:
            lock.release()

    def _send_results(self, b: Bundle, done: list[Any], sent: list[int], block: bool) -> bool:
        """Send on the results of ``b`` made so far (``done`` from ``sent[0]`` on)."""
        s, k = sent[0], len(done)  # (user code may append meanwhile: a prefix is taken)
        if k > s:
            if not block and not self.router.takes(k - s):
                return False
            sent[0] = k  # (first: what failed to go on is not sent again)
            self._send_bundle(b.pick(slice(s, k)), done[s:k])
        return True

    def _take_flat(self, b: Bundle, rest: list[Bundle]) -> None:
        """A bundle through a flat_map: the items each packet's function call returns go on
        with its trace id, in bundles of about a batch for each instance downstream, and once
        they waited ``linger`` (the job's flusher sends what the calls that ended gave while a
        call runs); an iterator is read a batch at a time and what it gave goes on meanwhile,
        so a call that yields many items (a file's lines) streams with backpressure as one by
        one. When the function raises, what its call gave before goes on, ``current`` is its
        packet and ``_leftover`` what remains (``_at`` is -1)."""
        fn, ctx, control, seqs, n = self._lean_fn, self.ctx, self.control, b.seqs, len(b)
        limit, linger, perf = max(1, self.router.batch_size * self.router.fan_out), self.linger, time.perf_counter
        keys = ([None] * n if b.keys is None else b.keys) if self._keyed else None
        out: list[Any] = []  # items gathered; the first `shipped[0]` of them went on already
        ids: list[int] = []  # the trace ids of the first of them: those of the calls that ended
        lock, j, shipped = self._results_lock, 0, [0]

        def send(block: bool) -> bool:  # what has its ids goes on (the flusher: if there is room)
            s, k = shipped[0], len(ids)
            if k > s:
                if not block and not self.router.takes(k - s):
                    return False
                shipped[0] = k  # (first: what failed to go on is not sent again)
                self._send_bundle(Bundle(out[s:k], ids[s:k], b.created))
            return True

        def ship() -> None:  # everything gathered goes on now (the running call's items: its id)
            with lock:
                ids.extend(repeat(seqs[j], len(out) - len(ids)))
                self._routing = True
                send(True)
                self._routing = False
                out.clear()
                ids.clear()
                shipped[0], pend[0] = 0, perf()

        pend = [perf(), send]
        timed = not self._hold(pend)  # no flusher looks after them: the time is checked here
        self.current, taken = None, n  # taken: the packets processed, and the one it failed on
        try:
            for j, x in enumerate(b.payloads):
                if control.cancelled:
                    raise Cancelled(f"{ctx.name}: job stopping")
                if keys is not None:
                    ctx._key = keys[j]
                r = fn(x)
                if r.__class__ is list or r.__class__ is tuple:
                    out.extend(r)
                else:  # an iterator: a batch at a time
                    it = iter(r)
                    out.extend(islice(it, max(1, limit - len(out) + shipped[0])))
                    while len(out) - shipped[0] >= limit:
                        ship()
                        out.extend(islice(it, limit))
                ids.extend(repeat(seqs[j], len(out) - len(ids)))  # (the flusher changes no length)
                if len(out) - shipped[0] >= limit or (timed and out and perf() - pend[0] >= linger):
                    ship()  # a batch, or slow code
                elif shipped[0] >= limit:  # the flusher sent that much: its part leaves the lists
                    with lock:
                        del out[:shipped[0]]
                        del ids[:shipped[0]]
                        shipped[0] = 0
            self._hold(None)
            if len(out) > shipped[0]:
                ship()
        except BaseException as exc:
            self._hold(None)
            self._at, routing, self._routing = -1, self._routing, False
            if routing:  # a key function raised (current names its packet), or a cancel: j was processed
                taken = done = min(n, j + 1)
            else:
                taken = j + (not isinstance(exc, Cancelled))
                done = j
                self.current = b.packet(j)
            self.packets_in += done
            self._leftover = [b.pick(slice(taken, None)), *rest] if taken < n else rest
            if len(out) > shipped[0] and not routing:  # what was processed before goes on, as one by one
                with contextlib.suppress(Cancelled, QueueShutDown):
                    ship()
            raise
        finally:
            if keys is not None:
                self._count_keys(keys if taken == n else keys[:taken])
        self.packets_in += n
        self.last = b.payloads[-5:]

    def _send_bundle(self, b: Bundle, done: list[Any] | None = None) -> None:
        """Send a map's results (``done``), a filter's kept packets of ``b`` or (``done`` None)
        ``b`` itself on."""
        out = b if done is None else b.with_payloads(done) if self.ctx.kind == "map" else b.keep(done)
        if not out:
            return
        if self.chain_next is not None:  # this task heads a chain: plain items into it
            self.emit(out.payloads)
        else:
            self._route(out)

    def _route(self, b: Bundle) -> None:
        """``router.send_bundle(b)``. On a ``key_by`` edge the keys are computed first: when the
        key function raises on packet k, the packets before it go on, as they would one by one,
        and ``current`` names packet k."""
        key = self.router.bundle_key()
        if key is not None:
            keys: list[Any] = []
            try:
                keys.extend(map(key, b.payloads))  # (extend keeps the keys made before an error)
            except BaseException:
                k = len(keys)
                self.current = b.packet(k)
                if k:
                    head = b.pick(slice(0, k))
                    head.keys = keys
                    self.router.send_bundle(head)
                raise
            b.keys = keys
        self.router.send_bundle(b)

    def _on_stop(self, sig: StopSignal, expected: set, seen: set) -> None:
        key = (sig.sender, sig.input_index)
        if key in expected:
            expected.discard(key)
            seen.add(key)
            self.stops_received += 1
        elif key not in seen:  # from an instance that does not feed this input: ignore, report
            self.unknown_stops.append(sig)
            log.warning("%s: ignored a stop signal from %r (input %d), which does not feed it; "
                        "expected senders: %s", self.ctx.name, sig.sender, sig.input_index,
                        sorted(s for s, _ in self._expected | self._seen))

    # ------------------------------------------------------------------ reading
    def unprocessed(self) -> int:
        """Packets this instance took from its queue but never processed (cancel or failure)."""
        return self.discarded + _count(self._leftover)

    def top_keys(self, n: int = 5) -> tuple[tuple[str, int], ...]:
        items = sorted(self.key_counts.items(), key=lambda kv: -kv[1])[:n]
        return tuple((repr(k), c) for k, c in items)

    def last_packets(self) -> tuple[str, ...]:
        return tuple(f"{p!r:.80}" for p in islice(self.last, 5))


_BUNDLES = {Bundle, StopSignal}  # what a batch the bundle path takes is made of


def _count(msgs: list[Any]) -> int:
    """The packets among ``msgs`` (a Bundle counts its packets, a stop signal none)."""
    return sum(len(m) if m.__class__ is Bundle else m.__class__ is not StopSignal for m in msgs)


def _wants_instance(cls: type, kind: str) -> bool:
    """Whether ``cls`` is a user function class (one instance per parallel instance) rather
    than a plain callable such as ``str`` or ``Decimal`` (called on each item)."""
    if kind == "co_map":
        return True
    names = ("__iter__", "__next__", "__call__") if kind == "source" else ("__call__", "execute")
    return any(n in vars(k) for k in cls.__mro__ if k is not object for n in names)


def _is_generator_function(fn: Any) -> bool:
    """A generator function, or an object whose ``__call__`` is one."""
    call = inspect.getattr_static(type(fn), "__call__", None)
    return inspect.isgeneratorfunction(fn) or inspect.isgeneratorfunction(call)
