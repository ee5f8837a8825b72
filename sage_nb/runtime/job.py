"""``Job``: the handle a user holds on a running (or finished) pipeline.

>>> import sage_nb as snb
>>> p = snb.Pipeline("doc-job")
>>> p.from_iterable(range(5)).map(lambda x: x * 10).sink(name="out")
Stream('out')
>>> with p.run() as job:
...     job.wait(timeout=10)
Job('doc-job-1', FINISHED)
>>> job.results("out")
[0, 10, 20, 30, 40]
"""

from __future__ import annotations

import enum
import importlib.util
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from ..communication.local_queue import QueueStats
from ..errors import BackendError, JobFailed
from ..metrics import (
    ConnectionSnapshot,
    JobSnapshot,
    KeySpread,
    OperatorSnapshot,
    TaskSnapshot,
    spread,
)
from .debug import DebugControls
from .dispatcher import Dispatcher
from .stall import POLL, STALL_AFTER, Stall, StallError, StallWatch, warn

if TYPE_CHECKING:  # pragma: no cover
    from ..compiler import ExecutionGraph

__all__ = ["Job", "JobStatus", "plan_snapshot"]

STOP_DEADLINE = 2.0   # seconds a cancelled job's threads get to end
BACKENDS = ("threads", "ray", "step")


class JobStatus(enum.StrEnum):
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"


class Job(DebugControls):
    """A running pipeline: ``wait``, ``stop``, ``pause``/``resume``, ``results``, ``snapshot``.

    Stepping, replay and breakpoints come from :class:`~sage_nb.runtime.debug.DebugControls`.

    ``with p.run() as job:`` waits for the job at the end of the block (cancelling it if
    the block raised), so no thread outlives the block.
    """

    def __init__(self, plan: ExecutionGraph, backend: str = "threads", *, paused: bool = False,
                 stall_timeout: float | None = None, **options: Any) -> None:
        self.plan = plan
        self.backend = backend
        if backend == "step" and stall_timeout is not None:
            raise BackendError("stall_timeout= applies to backend='threads' and 'ray', not 'step' "
                               "(a step job moves only when it is stepped)")
        self.stall_timeout = seconds("stall_timeout", stall_timeout, "only warns when a job stalls")
        seconds("put_timeout", options.get("put_timeout"), "waits for room as long as it takes")
        if type(paused) is not bool:
            raise BackendError(f"paused must be True or False, got {paused!r}")
        self.stall: Stall | None = None  # nothing moved for a while, an instance waiting for room
        self._watcher: threading.Thread | None = None
        self.runner = _make_runner(plan, backend, **options)
        if paused:  # e.g. to set breakpoints before the first packet moves
            self.runner.control.pause()

    # ------------------------------------------------------------------ identity
    @property
    def job_id(self) -> str:
        return self.plan.job_id

    @property
    def pipeline_name(self) -> str:
        return self.plan.pipeline

    @property
    def status(self) -> JobStatus:
        r = self.runner
        if r.exception is not None:
            return JobStatus.FAILED
        if r.cancelled:
            return JobStatus.CANCELLED
        return JobStatus.FINISHED if r.done.is_set() else JobStatus.RUNNING

    @property
    def done(self) -> bool:
        """True once the job reached a terminal state (its threads may still be winding down)."""
        return self.status is not JobStatus.RUNNING

    @property
    def paused(self) -> bool:
        return self.runner.control.paused

    def __repr__(self) -> str:
        return f"Job({self.job_id!r}, {self.status})"

    # ------------------------------------------------------------------ control
    def start(self) -> Job:
        self.runner.start()
        if self.backend != "step":
            self._watcher = threading.Thread(target=self._watch_stalls, name=f"sage-nb:{self.job_id}:stall-watch",
                                             daemon=True)
            self._watcher.start()
        return self

    def _watch_stalls(self) -> None:
        """Read the job every ``POLL`` seconds while it runs: warn once a stall lasts
        ``STALL_AFTER`` seconds, fail the job once it lasts ``stall_timeout`` (see ``stall``)."""
        watch, warned = StallWatch(), False
        while not self.runner.done.wait(POLL) and self.status is JobStatus.RUNNING:
            self.stall = stall = watch.observe(self.snapshot(), time.monotonic())
            if stall is None:
                warned = False
            elif self.stall_timeout is not None and stall.seconds >= self.stall_timeout:
                self.runner.fail(stall.culprit, StallError(f"{stall}. {stall.advice(failing=True)}"))
                return
            elif not warned and stall.seconds >= STALL_AFTER:
                warned = True
                warn(stall)
        self.stall = None  # ended or stopped: nothing stalls any more

    def wait(self, timeout: float | None = None) -> Job:
        """Block until the job ends; raise :class:`JobFailed` if it failed.

        Raises ``TimeoutError`` if it is still running after ``timeout`` seconds (the job
        keeps running). An interrupt (Ctrl+C, the notebook's stop button) cancels the job.
        """
        if self.backend == "step":  # nothing runs by itself: run the job here
            return self._wait_step(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not self.runner.done.wait(0.05):
                if self.status is not JobStatus.RUNNING:  # failed or cancelled: threads winding down
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"job {self.job_id!r} still running after {timeout} s{self._why_not_done()}; "
                                       f"call job.stop() to end it")
        except KeyboardInterrupt:
            self.stop(drain=False)
            raise
        self._join(STOP_DEADLINE)
        self._raise_if_failed()
        return self

    def _why_not_done(self) -> str:
        """For a wait that timed out: the job is paused (at a breakpoint?) or stalls."""
        hit = self.breakpoint_hit
        if hit is not None:
            return f" (paused at breakpoint {hit.breakpoint}, {hit.reason} at {hit.instance}; job.resume() goes on)"
        if self.paused:
            return " (paused: job.resume() goes on)"
        return f" ({self.stall})" if self.stall is not None else ""

    def stop(self, drain: bool = False, timeout: float | None = None) -> Job:
        """End the job and return once its threads have stopped.

        ``drain=False`` cancels now: queued packets are not processed (status CANCELLED,
        unless it had already ended). ``drain=True`` stops the sources and lets every packet
        already emitted reach the sinks (status FINISHED); if that takes longer than
        ``timeout`` seconds the job is cancelled. A thread stuck inside user code cannot be
        interrupted by Python; ``stop()`` returns after ``STOP_DEADLINE`` seconds anyway.
        Called from the job's own functions (on threads), it returns at once: the job ends
        after that function returns.
        """
        if self._bps is not None:  # a stopping job does not pause at breakpoints any more
            self._bps.release()
        # called by the job's own user code (a sink that decides it has seen enough): nothing
        # to wait for here, the calling task stops once its function returns
        inside = threading.current_thread() in getattr(getattr(self.runner, "backend", None), "threads", ())
        if drain and not self.done:
            self.runner.drain()
            self.runner.control.unpause()
            if not inside and not self.runner.done.wait(timeout):
                self.runner.cancel()
        elif not self.done:
            self.runner.cancel()
        if not inside:
            self._join(STOP_DEADLINE if timeout is None else timeout)
        return self

    def pause(self) -> None:
        """Tasks stop taking packets after the batch they are on (with ``batch_size=1``, the
        packet); what waits stays in sight (``queue_contents``); nothing is lost."""
        self.runner.control.pause()

    def resume(self) -> None:
        """Continue after ``pause()``, or after the breakpoint hit the job is paused on."""
        if self._bps is not None:
            self._bps.resume()
        else:
            self.runner.control.unpause()

    def __enter__(self) -> Job:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.stop(drain=False)
        else:
            self.wait()

    def _join(self, timeout: float) -> list[str]:
        alive = self.runner.join(timeout)
        if self._watcher is not None and self.runner.done.is_set():
            self._watcher.join(timeout)
        return alive

    def _raise_if_failed(self) -> None:
        r = self.runner
        if r.exception is None or r.error is None:
            return
        e = r.error
        where = f" on packet {e.packet}" if e.packet else ""
        raise JobFailed(f"job {self.job_id!r} failed: {e.instance} ({e.node!r}) raised{where}: "
                        f"{e.message}", node=e.node, instance=e.instance, packet=e.packet,
                        traceback_text=e.traceback) from r.exception

    # ------------------------------------------------------------------ reading
    def results(self, sink: str) -> list[Any]:
        """What the collecting sink ``sink`` received, in arrival order (all its instances)."""
        try:
            return list(self.runner.results[sink])
        except KeyError:
            raise KeyError(f"no collecting sink named {sink!r}; collecting sinks: "
                           f"{sorted(self.runner.results)}") from None

    def key_counts(self, operator: str) -> Counter[Any]:
        """The packets per key that the instances of ``operator``, behind ``key_by``, received
        so far (each counts its first 1,000 distinct keys): the keys of the key distribution."""
        if operator not in self.plan.logical:
            raise KeyError(f"no operator named {operator!r}; operators: {sorted(self.plan.logical)}")
        names = self.plan.instances(operator)
        if not self.plan.contexts[names[0]].keyed_input:
            keyed = sorted({c.operator for c in self.plan.contexts.values() if c.keyed_input})
            raise ValueError(f"{operator!r} is not behind key_by, so its packets carry no key to "
                             f"count; operators behind key_by: {keyed}")
        total: Counter[Any] = Counter()
        for name in names:
            total.update(self.runner.key_counts(name))
        return total

    def what_if(self, operator: str, parallelism: int) -> KeySpread:
        """How the packets ``operator`` received so far would spread over ``parallelism``
        instances: its keys counted so far (:meth:`key_counts`) partitioned again, as
        ``key_by`` would route them, before changing the graph. With its own parallelism it
        gives each instance's packets (of the keys counted); a hot key stays on one instance
        whatever the parallelism.

        Raises ``KeyError`` for an unknown operator and ``ValueError`` for one not behind
        ``key_by`` or a parallelism that is not an int >= 1."""
        return spread(self.key_counts(operator), parallelism, operator)

    @property
    def error(self) -> Any:
        """Where the job failed (:class:`~sage_nb.metrics.ErrorInfo`), or None."""
        return self.runner.error

    def snapshot(self) -> JobSnapshot:
        """Every counter, queue statistic and the latest routing decisions, frozen now."""
        r = self.runner
        if self.backend == "step":  # the state on view, which may be an earlier step
            return r.snapshot()
        stats = r.queue_stats()
        status = str(self.status)
        if status == "RUNNING" and self.paused:
            status = "PAUSED"
        end = r.ended or time.monotonic()
        return JobSnapshot(
            self.job_id, self.pipeline_name, self.backend, status,
            max(0.0, end - r.started) if r.started else 0.0,
            _operators(self.plan), _logical_edges(self.plan, self.backend == "threads"),
            r.task_snapshots(stats),
            r.connection_snapshots(stats), r.trace.latest(), r.trace.skipped, r.error,
            stall=None if self.stall is None else str(self.stall))


def seconds(name: str, value: object, none: str) -> float | None:
    """An option in seconds: None, or a number > 0 (``none``: what None does)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise BackendError(f"{name} must be a number of seconds > 0, got {value!r}; None (the default) {none}")
    return float(value)


def _make_runner(plan: ExecutionGraph, backend: str, **options: Any) -> Any:
    """The runner of ``backend``; every runner offers the :class:`Dispatcher` interface."""
    if backend == "step":
        from .step import StepRunner
        return StepRunner(plan, **options)
    step_only = sorted({"policy", "record_limit"} & set(options))
    if step_only:
        raise BackendError(f"{', '.join(o + '=' for o in step_only)} applies to backend='step' only, "
                           f"not {backend!r}")
    if backend == "threads":
        return Dispatcher(plan, **options)
    if backend == "ray":
        if importlib.util.find_spec("ray") is None:
            raise BackendError("backend='ray' needs the 'ray' package: pip install 'sage-nb[ray]'")
        from .ray_backend import RayDispatcher
        return RayDispatcher(plan, **options)
    available = list(BACKENDS)
    raise BackendError(f"unknown backend {backend!r}; available: {available}")


def _operators(plan: ExecutionGraph) -> tuple[OperatorSnapshot, ...]:
    return tuple(OperatorSnapshot(op, d["kind"], d.get("parallelism", 1), tuple(plan.instances(op)))
                 for op, d in plan.logical.nodes(data=True))


def _logical_edges(plan: ExecutionGraph, fused: bool = True) -> tuple[tuple[str, str, str, str | None, int], ...]:
    """The logical edges; ``fused``: a chained edge (chain=True, threads) says "chained"."""
    chained = set(plan.options.get("chained", ())) if fused else set()
    return tuple((u, v, "chained" if f"{u}->{v}" in chained else d.get("strategy", "round_robin"),
                  getattr(d.get("key"), "__name__", None) if d.get("key") else None,
                  d.get("input_index", 0)) for u, v, d in plan.logical.edges(data=True))


def plan_snapshot(plan: ExecutionGraph, fused: bool = True) -> JobSnapshot:
    """The snapshot of a plan that has not run: its shape, every counter at zero; ``fused``:
    chained edges say "chained" (False: a backend that runs them through queues)."""
    empty = {qd.queue_id: QueueStats(0, qd.metadata.get("maxsize") or None, 0, 0, 0)
             for qd in plan.queues()}
    tasks = tuple(TaskSnapshot(c.name, c.operator, c.parallel_index, c.kind, "starting", 0, 0, 0.0, 0.0,
                               0, c.stop_signal_num, empty.get(c.input_qd.queue_id) if c.input_qd else None,
                               c.input_qd.queue_id if c.input_qd else None)
                  for c in plan.contexts.values())
    conns = tuple(ConnectionSnapshot(c.source_name, c.target_name, ctx.operator, g.target,
                                     c.broadcast_index, c.parallel_index, c.target_input_index,
                                     "chained" if c.chained and fused else g.strategy,
                                     getattr(g.key, "__name__", None) if g.key else None, 0, 0,
                                     c.queue_descriptor.queue_id, 0,
                                     empty[c.queue_descriptor.queue_id].capacity)
                  for ctx in plan.contexts.values() for g in ctx.downstream_groups for c in g.connections)
    return JobSnapshot(plan.job_id, plan.pipeline, "none", "CREATED", 0.0, _operators(plan),
                       _logical_edges(plan, fused), tasks, conns)
