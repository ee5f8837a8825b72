"""The bundle path of a task: a bundle through the user function without making packets.

A map, filter or sink takes a :class:`~sage_nb.communication.packet.Bundle` (plain payloads,
trace ids, keys) in C-level ``map`` calls over slices of it (:meth:`BundlePath._apply`), and
sends the results on as one bundle with the same trace ids; a flat_map gathers what each call
gives into bundles of about a batch (:meth:`BundlePath._take_flat`). Behind ``key_by`` the keys
are counted after the function ran, by C-level passes, as one by one. What a bundle produced so
far never waits on slow user code: it goes on between slices, and from the job's flusher once it
waited ``linger`` (:meth:`BundlePath._results_due`). When user code raises, what it made before
goes on and the error names the packet it was on, as packet by packet.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from itertools import compress, islice, repeat
from typing import TYPE_CHECKING, Any

from ..communication.local_queue import QueueShutDown
from ..communication.packet import Bundle, StopSignal
from ..errors import Cancelled, ProtocolError
from .batching import BATCH_MAX

if TYPE_CHECKING:  # pragma: no cover
    from ..communication.router import BaseRouter
    from .context import TaskContext
    from .task import Control

__all__ = ["BundlePath"]

SLICE_TIME = 0.001  # seconds of user code between two cancel checks over plain items (_apply)
_DONE: Iterator[Any] = iter(())  # an exhausted iterator
_BUNDLES = {Bundle, StopSignal}  # what a batch the bundle path takes is made of


class BundlePath:
    """The bundle half of :class:`~sage_nb.runtime.task.BaseTask` (a mixin: it uses the task's
    context, control, router, counters and its ``_on_stop`` and ``emit``)."""

    ctx: TaskContext
    control: Control
    router: BaseRouter
    results: list | None
    current: Any
    packets_in: int
    last: list[Any]
    key_counts: Counter[Any]
    key_cap: int
    chain_next: Any
    poke: Callable[[], None] | None
    linger: float
    _lean_fn: Any
    _keyed: bool
    _keys_now: list[Any]
    _at_item: Iterator[Any]
    _at_end: int
    _slice: int
    _routing: bool
    _pending: list[Any] | None
    _results_lock: threading.Lock
    _at: int
    _leftover: list[Any]
    _expected: set[tuple[str, int]]
    _seen: set[tuple[str, int]]

    if TYPE_CHECKING:  # the task's methods (BaseTask, ChainedTask)
        def _on_stop(self, sig: StopSignal, expected: set, seen: set) -> None: ...

        def emit(self, items: list[Any]) -> None: ...

    def _apply(self, fn: Callable[..., Any], items: list[Any], done: list[Any],
               between: Callable[[], object] | None = None) -> None:
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

    def _apply_counting(self, fn: Callable[..., Any] | None, items: list[Any], done: list[Any],
                        keys: list[Any], between: Callable[[], object] | None = None) -> None:
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
        return self._keys_now[
            self._at_end - 1 - self._at_item.__length_hint__()]  # type: ignore[attr-defined]

    def _count_keys(self, keys: list[Any]) -> None:
        """Count ``keys`` in ``key_counts`` as one by one: the first ``key_cap`` distinct keys
        seen are counted, later new ones are not."""
        counts, cap = self.key_counts, self.key_cap
        if len(counts) < cap:
            counts.update(keys)
            if len(counts) > cap:  # the newest keys come last (insertion order)
                for key in list(islice(counts, cap, None)):
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
        done: list[Any]  # (a declaration only: set per bundle below)
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

        pend: list[Any] = [perf(), send]
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
