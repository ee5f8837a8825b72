"""``Dispatcher``: starts a plan's services and tasks on a backend and tracks how they end.

The first failure cancels the job: every queue of the job is shut down, which wakes
each blocked ``put``/``get`` at once, and every task ends within its current packet.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

from ..communication.local_queue import QueueShutDown, QueueStats
from ..errors import error_line
from ..metrics import ConnectionSnapshot, ErrorInfo, TaskSnapshot, Trace, packet_text
from .batching import Flusher, check_batching
from .chain import link
from .service import ServiceCaller, ServiceRunner
from .task import BaseTask, Control
from .threads import ThreadsBackend

if TYPE_CHECKING:  # pragma: no cover
    from ..compiler import ExecutionGraph

__all__ = ["FAIL_DRAIN", "Dispatcher"]

#: Seconds a failed job lets in-flight packets drain before it cancels every task.
FAIL_DRAIN = 1.0


class Dispatcher:
    """Runs one :class:`ExecutionGraph` on the threads backend.

    ``done`` is set when every task has ended; ``exception``/``error`` hold the first
    failure; ``cancelled`` says whether the job was cancelled.
    """

    def __init__(self, plan: ExecutionGraph, *, put_timeout: float | None = None,
                 trace: Trace | None = None, batch_size: int | None = None,
                 linger: float | None = None) -> None:
        self.plan = plan
        self.batch_size, self.linger = check_batching(batch_size, linger)
        self.control = Control()
        self.trace = trace or Trace()
        self.results: dict[str, list[Any]] = {
            op: [] for op, d in plan.logical.nodes(data=True) if d["kind"] == "sink" and d.get("fn") is None}
        self.tasks: dict[str, BaseTask] = {}
        for name, ctx in plan.contexts.items():
            task = BaseTask(ctx, self, results=self.results.get(ctx.operator),
                            node_attrs=plan.logical.nodes[ctx.operator], put_timeout=put_timeout,
                            batch_size=self.batch_size)
            task.router.tracer, task.linger = self.trace, self.linger
            self.tasks[name] = task
        specs = plan.logical.graph.get("services", {})
        self.services: dict[str, ServiceRunner] = {
            s: ServiceRunner(sctx, specs[s]) for s, sctx in plan.services.items()}
        self.backend = ThreadsBackend(plan.job_id)
        self.exception: BaseException | None = None
        self.error: ErrorInfo | None = None
        self.cancelled = False
        self.done = threading.Event()
        self.started = self.ended = 0.0
        self._remaining = len(self.tasks)
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self.closers: list[Any] = []  # called once every task has ended
        self._final_stats: dict[str, QueueStats] | None = None
        self._last_stats: dict[str, QueueStats] = {}
        self.cleanup_errors: list[BaseException] = []
        self.on_error: Any = None   # breakpoints: called as on_error(task, exc, packet) first
        self.flusher: Flusher | None = None   # ships what waited `linger` (when routers batch)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        self.started = time.monotonic()
        for qd in self.plan.queues():
            qd.queue_instance  # noqa: B018 - create every queue before any task touches it
        for name, runner in self.services.items():
            try:
                runner.open()
            except BaseException as exc:
                self.exception = exc
                self.error = ErrorInfo(name, f"service {name}", error_line(exc), None,
                                       "".join(traceback.format_exception(exc)))
                self.cancelled = True
                self.ended = time.monotonic()
                self.done.set()
                return
        for name, runner in self.services.items():
            for w in range(runner.ctx.workers):
                self.backend.spawn(runner.serve, f"service:{name}#{w}")
        if self.services:
            for ctx in self.plan.contexts.values():
                ctx._caller = ServiceCaller(ctx)
        batching = [t.router for t in self.tasks.values() if t.router.batching]
        if batching:  # (made first: the tasks know it from their first packet on)
            self.flusher = Flusher(batching, self.linger, self.done, self.control.cancel, self._flush_failed,
                                   [t for t in self.tasks.values() if t.router.batching])
        for task in link(self.tasks):  # a chained task runs in its upstream's thread
            self.backend.spawn(task.run, task.ctx.name)
        if self.flusher is not None:
            self.backend.spawn(self.flusher.run, "flusher")

    def _flush_failed(self, router: Any, exc: BaseException) -> None:
        """The flusher's shipping for ``router`` raised: the job fails as if its task had."""
        self.task_failed(next(t for t in self.tasks.values() if t.router is router), exc, None)

    def task_failed(self, task: BaseTask, exc: BaseException, packet: Any) -> None:
        if self.on_error is not None:  # an error breakpoint pauses here, before the job fails
            self.on_error(task, exc, packet)
        with self._lock:
            first = self.exception is None
            if first:
                self.exception = exc
                self.error = ErrorInfo(
                    task.ctx.operator, task.ctx.name, error_line(exc), packet_text(packet),
                    "".join(traceback.format_exception(exc)))
        if first:  # stop the sources, let in-flight packets drain; cancel all after a deadline
            self.control.stopping = True
            self.control.unpause()
            self._timer = threading.Timer(FAIL_DRAIN, self.cancel)
            self._timer.daemon = True
            self._timer.start()

    def fail(self, instance: str, exc: BaseException) -> None:
        """Fail the job in ``instance`` from outside its thread (the stall watch)."""
        self.task_failed(self.tasks[instance], exc, None)

    def task_exited(self, task: BaseTask) -> None:
        with self._lock:
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            if self._timer is not None:
                self._timer.cancel()
            for runner in self.services.values():
                runner.stop()
            if self.closers:  # resources the job owns (its RPC queue server): read them one last time
                self._final_stats = self.queue_stats()
                for close in self.closers:
                    try:
                        close()
                    except Exception as exc:  # never let cleanup kill the task thread silently
                        self.cleanup_errors.append(exc)
            self.ended = time.monotonic()
            self.done.set()
            if self.flusher is not None:
                self.flusher.stop()

    def cancel(self) -> None:
        """Stop every task now: set the cancel flag and shut every queue of the job down."""
        self.cancelled = self.cancelled or self.exception is None
        self.control.cancel_all()
        if self.flusher is not None:
            self.flusher.stop()
        for qd in self.plan.queues():
            q = qd.queue_instance if qd.is_initialized() else None
            shutdown = getattr(q, "shutdown", None) or getattr(q, "close", None)
            if shutdown is not None:
                shutdown()

    def drain(self) -> None:
        """Ask the sources to stop emitting; everything already emitted is processed."""
        self.control.stopping = True

    def join(self, timeout: float) -> list[str]:
        alive = self.backend.join(timeout)
        if self._timer is not None:
            self._timer.join(timeout)
        return alive

    # ------------------------------------------------------------------ reading
    def queue_stats(self) -> dict[str, QueueStats]:
        """One reading of every input queue, by queue id."""
        if self._final_stats is not None:
            return self._final_stats
        for c in self.plan.contexts.values():
            if c.input_qd is not None:
                try:
                    self._last_stats[c.input_qd.queue_id] = c.input_qd.statistics()
                except (QueueShutDown, OSError):  # a remote queue already closed: last reading
                    self._last_stats.setdefault(c.input_qd.queue_id, QueueStats(
                        0, c.input_qd.metadata.get("maxsize") or None, 0, 0, 0))
        return dict(self._last_stats)

    def key_counts(self, name: str) -> dict[Any, int]:
        """The keys instance ``name`` counted so far, with their packets (one C-level copy)."""
        return dict(self.tasks[name].key_counts)

    def task_snapshots(self, stats: dict[str, QueueStats]) -> tuple[TaskSnapshot, ...]:
        out = []
        for t in self.tasks.values():
            ctx = t.ctx
            qid = ctx.input_qd.queue_id if ctx.input_qd is not None else None
            out.append(TaskSnapshot(
                ctx.name, ctx.operator, ctx.parallel_index, ctx.kind,
                "backpressured" if t.router.blocked else t.state, t.packets_in,
                sum(c.packets_sent for c in t.router.connections), t.busy_time,
                t.router.blocked_time, t.stops_received, ctx.stop_signal_num,
                stats.get(qid),  # type: ignore[arg-type]  # (None: a source, no input queue)
                qid, t.top_keys(), t.last_packets(),
                None if t.error is None else error_line(t.error),
                t.unprocessed(), t.in_bundle()))
        return tuple(out)

    def connection_snapshots(self, stats: dict[str, QueueStats]) -> tuple[ConnectionSnapshot, ...]:
        out = []
        for t in self.tasks.values():
            for g in t.router.groups:
                for c in g.connections:
                    s = stats[c.queue_descriptor.queue_id]
                    out.append(ConnectionSnapshot(
                        c.source_name, c.target_name, t.ctx.operator, g.target, c.broadcast_index,
                        c.parallel_index, c.target_input_index, "chained" if c.chained else g.strategy,
                        getattr(g.key, "__name__", None) if g.key else None, c.packets_sent,
                        c.stops_sent, c.queue_descriptor.queue_id, s.used, s.capacity))
        return tuple(out)
