"""The actors of the Ray backend: one ``TaskActor`` per task instance, one ``ServiceActor`` per service.

A task actor runs the same :class:`~sage_nb.runtime.task.BaseTask` loop as a thread does,
in one actor thread. The actor is threaded, so its control calls (pause, cancel, report,
take_results) are served while the loop runs (SAGE #122). Its router and its input batch
(:mod:`~sage_nb.runtime.ray_router`). A collecting sink keeps what it receives until the
driver collects it; routing decisions and failures travel to the driver through the
job's event queue, in batches.
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
import threading
import time
import traceback
from typing import Any

from ..communication.local_queue import QueueShutDown
from ..communication.ray_queue import RayQueueDescriptor, RayQueueProxy, encode, manager_handle
from ..errors import Cancelled, SageError, error_line
from ..metrics import Trace, packet_text
from .ray_router import IDLE_LINGER, SLICE, BatchingInput, BatchingRouter
from .service import ServiceCaller, ServiceRunner
from .task import BaseTask, Control

__all__ = ["RemoteError", "ServiceActor", "TaskActor", "failure_info", "rebuild_exception"]

TRACE_EVERY = 0.25  # seconds between two shipments of routing decisions to the driver


class RemoteError(SageError):
    """An exception raised in a Ray actor that could not travel back as itself (see its notes)."""


def failure_info(node: str, instance: str, exc: BaseException, packet: Any) -> dict[str, Any]:
    """What the driver needs to raise JobFailed: names, message, packet, traceback, and the
    exception with its chain of causes (pickling drops ``__cause__``: it travels as a list)."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__
    blob = None
    for travelling in (chain, chain[:1]):
        with contextlib.suppress(Exception):  # what cannot travel is rebuilt from the text
            blob = encode(travelling)
            break
    return {"node": node, "instance": instance, "message": error_line(exc),
            "packet": packet_text(packet),
            "traceback": "".join(traceback.format_exception(exc)), "exception": blob}


def rebuild_exception(info: dict[str, Any]) -> BaseException:
    """The remote exception itself (with its causes) if it travelled, else a RemoteError; a note
    carries the remote traceback."""
    exc: BaseException | None = None
    if info.get("exception") is not None:
        try:
            chain = pickle.loads(info["exception"])
            for outer, inner in itertools.pairwise(chain):
                outer.__cause__ = inner
            exc = chain[0]
        except Exception:
            exc = None
    if exc is None:
        exc = RemoteError(info["message"])
    exc.add_note(f"remote traceback ({info['instance']}, a Ray actor):\n{info['traceback']}")
    if exc.__traceback__ is None:  # pickling drops it: give it this frame; the note has the real one
        with contextlib.suppress(BaseException):
            raise exc
    return exc


def _tick() -> None:
    """A task's ``poke`` where the flusher is a timer (:meth:`TaskActor._linger`): nothing to wake."""


class TaskActor:
    """One task instance (run with ``ray.remote(max_concurrency=...)``): ``run`` holds one thread
    for the loop; ``pause``, ``unpause``, ``drain``, ``cancel`` and ``report`` use the others."""

    def __init__(self, name: str, operator: str, events: RayQueueDescriptor, manager: Any,
                 paused: bool = False) -> None:
        self.name, self.operator = name, operator
        manager_handle(events.job, handle=manager)
        self.events = events
        self.control = Control()
        if paused:
            self.control.pause()
        self.task: BaseTask | None = None
        self.failure: dict[str, Any] | None = None
        self.trace = Trace(maxlen=10_000, rate=50.0)  # its rate is set by the spec
        self._shipped_skips = 0
        self._trace_at = 0.0
        self._events_ref: Any = None
        self._results: list | None = None
        self._taking = threading.Lock()
        self._running = False

    # ------------------------------------------------------------------ control
    def ready(self) -> str:
        return self.name

    def pause(self) -> None:
        self.control.pause()

    def unpause(self) -> None:
        self.control.unpause()

    def drain(self) -> None:
        self.control.stopping = True

    def cancel(self) -> None:
        self.control.cancel_all()

    def key_counts(self) -> dict[Any, int]:
        """The keys this instance counted so far (behind ``key_by``), with their packets."""
        return {} if self.task is None else dict(self.task.key_counts)

    def take_results(self) -> list:
        """What the collecting sink received since the last call (the driver polls)."""
        results = self._results
        if not results:
            return []
        with self._taking:  # a poll and the final report may take at once: one at a time
            batch = results[:]
            del results[:len(batch)]  # the loop thread only appends: the copied prefix is ours
        return batch

    # ------------------------------------------------------------------ the loop
    def run(self, blob: bytes) -> dict[str, Any]:
        """Build the task from its pickled spec and run it; returns the final report."""
        try:
            spec = pickle.loads(blob)
            self._build(spec)
        except BaseException as exc:
            self.task_failed(None, exc, None)
            return self.report()
        self._running = True
        flusher = threading.Thread(target=self._linger, name=f"sage-nb-flush:{self.name}", daemon=True)
        flusher.start()
        try:
            self.task.run()  # type: ignore[union-attr]
        except BaseException as exc:  # an error while reporting an error (e.g. the queues are gone)
            if self.failure is None:
                self.failure = failure_info(self.operator, self.name, exc, None)
        finally:
            self._running = False
            flusher.join(5.0)
        return {**self.report(), "results": self.take_results(), "key_counts": self.key_counts()}

    def _build(self, spec: dict[str, Any]) -> None:
        ctx = spec["ctx"]
        self.trace.rate = self.trace._tokens = spec["trace_rate"]
        self._results = [] if spec["collect"] else None
        task = BaseTask(ctx, self, results=self._results, node_attrs=spec["attrs"],
                        put_timeout=spec["put_timeout"])
        task.router = BatchingRouter(ctx.name, ctx.downstream_groups, cancel=self.control.cancel,
                                     put_timeout=spec["put_timeout"],
                                     linger=spec["linger"] if ctx.kind == "source" else None,
                                     batch=spec["batch"])
        task.router.tracer = self.trace
        task.linger = IDLE_LINGER  # a bundle's results wait no longer while user code runs
        task.poke = _tick
        if ctx.input_qd is not None:
            q = ctx.input_qd.queue_instance
            ahead = isinstance(q, RayQueueProxy) and ctx.kind != "source"
            ctx.input_qd._queue_instance = BatchingInput(q, self._flush_all, ahead)
        if ctx.service_qds:
            ctx._caller = ServiceCaller(ctx)
        self.task = task

    def _linger(self) -> None:
        """Every ``IDLE_LINGER`` seconds, ship what waited that long while the loop was busy in
        user code (a timer, not an event per packet: no GIL hand-off on the packets' path),
        results the user code made of a bundle it is still on included."""
        task = self.task
        router: BatchingRouter = task.router  # type: ignore[union-attr, assignment]  # (see _build)
        while self._running:
            time.sleep(IDLE_LINGER)
            try:
                if task._pending is not None:  # type: ignore[union-attr]
                    task._results_due(False)  # type: ignore[union-attr]  # (into the router's buffers)
                if not router.pending or time.monotonic() - router.last_flush < IDLE_LINGER:
                    continue  # read without the lock: the next tick sees a change
                with router.lock:
                    if router.pending and time.monotonic() - router.last_flush >= IDLE_LINGER:
                        router.flush()
                        self._ship([])
            except (Cancelled, QueueShutDown):
                return
            except BaseException as exc:  # raised again by the loop's next send or flush
                router.error = exc
                return

    def _flush_all(self, final: bool = False) -> None:
        """Called by the loop thread before it waits for input, and when it exits (``final``:
        then also wait until everything sent is stored)."""
        router: BatchingRouter = self.task.router  # type: ignore[union-attr, assignment]
        with router.lock:
            if router.error is not None:
                raise router.error
            router.flush()
            self._ship([], final)
            if final:
                router.settle()

    def _ship(self, events: list, final: bool = False) -> None:
        """Send ``events`` (and, every ``TRACE_EVERY`` seconds, the sampled routing decisions) to
        the driver in one put; at most one put in flight, so events arrive in order."""
        trace, now = self.trace, time.monotonic()
        if final or now - self._trace_at >= TRACE_EVERY:
            skipped = trace.skipped - self._shipped_skips
            if trace.events or skipped:
                events.append(("trace", list(trace.events), skipped))
                trace.events.clear()
                self._shipped_skips += skipped
            self._trace_at = now
        if events:
            self._settle_events()
            q = self.events.queue_instance
            self._events_ref = q.submit_put(encode(events), 0, len(events), SLICE)
        if final:
            self._settle_events()

    def _settle_events(self) -> None:
        ref, self._events_ref = self._events_ref, None
        if ref is not None and self.events.queue_instance.call(ref, SLICE)[1] == "shutdown":
            raise QueueShutDown("the job's event queue was shut down: the job is stopping")

    # ------------------------------------------------------------------ owner interface
    def task_failed(self, task: BaseTask | None, exc: BaseException, packet: Any) -> None:
        self.failure = failure_info(self.operator, self.name, exc, packet)
        try:
            self._settle_events()
            self.events.put_many([("failed", self.failure)])
        except Exception:  # the driver also finds the failure in the final report
            pass

    def task_exited(self, task: BaseTask) -> None:
        if task.state == "finished":
            self._flush_all(final=True)
            return
        with contextlib.suppress(Exception):  # cancelled or failed: what is left is lost, not shipped
            self._flush_all(final=True)

    # ------------------------------------------------------------------ reading
    def report(self) -> dict[str, Any]:
        """Every counter of this instance, read at once (one remote call per snapshot)."""
        t = self.task
        if t is None:
            return {"state": "failed" if self.failure else "starting", "failure": self.failure,
                    "packets_in": 0, "packets_out": 0, "busy": 0.0, "blocked": 0.0, "stops": 0,
                    "top_keys": (), "last": (), "error": None, "conns": [], "unprocessed": 0}
        r = t.router
        conns = [(c.packets_sent, c.stops_sent) for c in r.connections]
        for _ in range(3):  # the loop thread may add a key while we sort them
            try:
                top = t.top_keys()
                break
            except RuntimeError:
                top = ()
        state = "backpressured" if r.blocked else t.state
        return {"state": state, "failure": self.failure, "packets_in": t.packets_in,
                "packets_out": sum(s for s, _ in conns), "busy": t.busy_time,
                "blocked": r.blocked_time, "stops": t.stops_received, "top_keys": top,
                "last": t.last_packets(), "conns": conns, "unprocessed": t.unprocessed(),
                "in_bundle": t.in_bundle(),
                "error": None if t.error is None else error_line(t.error)}


class ServiceActor:
    """One service (run with ``ray.remote(max_concurrency=workers + 2)``): ``serve`` once per worker."""

    def __init__(self, name: str, manager: Any, job: str) -> None:
        self.name = name
        manager_handle(job, handle=manager)
        self.runner: ServiceRunner | None = None

    def open(self, blob: bytes) -> dict[str, Any] | None:
        """Build the service object; returns failure info if that raised."""
        try:
            sctx, spec = pickle.loads(blob)
            self.runner = ServiceRunner(sctx, spec)
            self.runner.open()
        except BaseException as exc:
            return failure_info(self.name, f"service {self.name}", exc, None)
        return None

    def serve(self) -> None:
        self.runner.serve()  # type: ignore[union-attr]

    def report(self) -> tuple[int, int]:
        r = self.runner
        return (0, 0) if r is None else (r.calls, r.errors)
