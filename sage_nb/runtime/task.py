"""``BaseTask``: one parallel instance — read the input queue, call the user function, route.

The loop is backend-neutral: the threads backend runs :meth:`BaseTask.run` in a thread,
the Ray backend inside an actor. End of stream follows DESIGN §2: the task finishes after
one :class:`StopSignal` from every incoming connection, runs ``close()``, then forwards one
stop signal on each of its own connections. Stop signals never reach user code.

Here: the life cycle, the input loop and packets one by one. A source's loop is in
:mod:`.sources`, bundles through user code in :mod:`.bundles`, a chained instance's
hand-over in :mod:`.chain`; :class:`BaseTask` is made of those halves.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any, Protocol

from ..communication.local_queue import QueueShutDown
from ..communication.packet import Bundle, Packet, StopSignal, safe_repr
from ..communication.router import BaseRouter
from ..errors import Cancelled, ProtocolError
from .batching import BATCH_MAX, DEFAULT_LINGER
from .bundles import _BUNDLES, _DONE, BundlePath
from .chain import ChainedTask
from .context import TaskContext
from .sources import END, SourceLoop

__all__ = ["END", "BaseTask", "Control"]

log = logging.getLogger("sage_nb")

KEY_CAP = 1000      # distinct keys counted per instance for the key distribution


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


class BaseTask(SourceLoop, BundlePath, ChainedTask):
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
        self.key_cap = KEY_CAP   # distinct keys counted (the first ones seen)
        self.last: list[Any] = []
        self.held: list[Any] = []  # a batch taken just as the job paused: next in line, not yet processed
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
        failed, self.router.gather_failed = self.router.gather_failed, ()
        if failed:  # routing failed on this item's key (within a bundle or a gathered slice)
            self.current = failed[0]
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
            obj = self._instantiate(fn)  # type: ignore[arg-type]  # (_per_instance: fn is a class)
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
        inner, ctx, counts, cap = process, self.ctx, self.key_counts, self.key_cap

        def keyed(p: Packet) -> None:
            key = ctx._key = p.partition_key
            if key in counts:
                counts[key] += 1
            elif len(counts) < cap:
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
            if control.paused:  # before taking more: what waits stays in the queue, in sight
                self._wait_paused()
            batch = get_many(BATCH_MAX)
            if control.paused:  # it came while this task waited for input: next in line (queue_contents)
                self.held = batch
                self._wait_paused()
                self.held = []
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
        ctx, counts, cap, control = self.ctx, self.key_counts, self.key_cap, self.control
        send_many = self.router.send_many
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
                            elif len(counts) < cap:
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

    def in_bundle(self) -> int:
        """Items of the bundle in user code now that the function was given so far (it moves
        while a slow function works through a bundle; the stall watch reads it)."""
        return self._at_end - self._at_item.__length_hint__()  # type: ignore[attr-defined]

    def top_keys(self, n: int = 5) -> tuple[tuple[str, int], ...]:
        items = sorted(self.key_counts.items(), key=lambda kv: -kv[1])[:n]
        return tuple((safe_repr(k), c) for k, c in items)

    def last_packets(self) -> tuple[str, ...]:
        return tuple(safe_repr(p, 80) for p in islice(self.last, 5))


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
