"""Operator chaining (``chain=True``): a chained instance runs inside its upstream's task.

The compiler marks the fused connections (:func:`~sage_nb.compiler.chain_edges`); here the
connection's queue is replaced by an :class:`Inlet`, so a delivery on it calls the chained
task's :meth:`~sage_nb.runtime.task.BaseTask.feed` in the sender's thread: no queue, no
thread switch. Routing, counters, stop signals and errors stay per logical node: the
chained task keeps its own router, counters and state, and an error names it.
The upstream hands its routed packets over after each input batch (after each item of a
source with ``batch_size=1``), so a chained operator never waits for a full batch. A source
whose items come from user code is not fused (see ``chain_edges``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..communication.local_queue import QueueShutDown
from ..communication.packet import Packet, StopSignal
from ..errors import Cancelled

if TYPE_CHECKING:  # pragma: no cover
    from ..communication.router import BaseRouter
    from .context import TaskContext
    from .task import BaseTask

__all__ = ["ChainedTask", "Inlet", "link"]


class Inlet:
    """What a chained connection delivers into: ``put``/``put_many`` run the receiving task."""

    hungry = False  # the sender decides when to hand over (see BaseTask._hand_over)
    direct = True   # a batch goes in with one put_many call

    def __init__(self, task: BaseTask, sender: BaseTask) -> None:
        self.task, self.sender = task, sender

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.put_many([item])

    def put_many(self, items: list[Any]) -> None:
        start = time.perf_counter()
        try:
            self.task.feed(items)
        finally:  # not the sender's own work: its busy time leaves it out
            self.sender.chained_time += time.perf_counter() - start

    def __repr__(self) -> str:
        return f"Inlet({self.sender.ctx.name} -> {self.task.ctx.name})"


def link(tasks: dict[str, BaseTask]) -> list[BaseTask]:
    """Wire the chained connections of ``tasks`` to :class:`Inlet` objects; returns the tasks
    that need a thread of their own (those not chained to another)."""
    heads = []
    for task in tasks.values():
        sender = task.ctx.chained_from
        if sender is None:
            heads.append(task)
            continue
        up = tasks[sender]
        conn = next(c for c in up.router.connections if c.target_name == task.ctx.name)
        conn._queue = conn.receiver = Inlet(task, up)
        up.chain_next, up.chain_conn = task, conn
    return heads


class ChainedTask:
    """The chained half of :class:`~sage_nb.runtime.task.BaseTask` (a mixin: it uses the
    task's context, router, counters, ``_open``, ``_make_process``, ``_handle``, ``_failed``,
    ``_close``, ``_exit``, ``_on_stop``, ``_apply`` and ``_outputs``)."""

    ctx: TaskContext
    router: BaseRouter
    results: list | None
    state: str
    error: BaseException | None
    current: Any
    packets_in: int
    discarded: int
    busy_time: float
    chained_time: float
    last: list[Any]
    chain_next: BaseTask | None
    chain_conn: Any
    _process: Callable[[Packet], None] | None
    _lean_fn: Any
    _leftover: list[Any]
    _expected: set[tuple[str, int]]
    _seen: set[tuple[str, int]]
    _at: int
    _exited: bool

    if TYPE_CHECKING:  # the task's methods (BaseTask, BundlePath)
        def _open(self) -> Any: ...

        def _make_process(self, fn: Any) -> Callable[[Packet], None]: ...

        def _failed(self, exc: BaseException) -> None: ...

        def _handle(self, batch: list[Any], process: Callable[[Packet], None],
                    types: set[type]) -> None: ...

        def _close(self, quiet: bool = False) -> None: ...

        def _exit(self, cancelled: bool = False) -> None: ...

        def _on_stop(self, sig: StopSignal, expected: set, seen: set) -> None: ...

        def _apply(self, fn: Callable[..., Any], items: list[Any], done: list[Any],
                   between: Callable[[], object] | None = None) -> None: ...

        @staticmethod
        def _outputs(kind: str, items: list[Any], done: list[Any]) -> list[Any]: ...

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
        self.chain_conn.packets_sent += len(items)
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
