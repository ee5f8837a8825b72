"""``RayDispatcher``: runs a plan on Ray -- one actor per task instance, the queues in one manager.

Offers the :class:`~sage_nb.runtime.dispatcher.Dispatcher` interface, so :class:`Job` and
its snapshots work unchanged. The plan's in-process queues become
:class:`~sage_nb.communication.ray_queue.RayQueueDescriptor`\\ s of a manager actor named
after the job; every task instance runs the same ``BaseTask`` loop in a
:class:`~sage_nb.runtime.ray_actors.TaskActor`; services run in service actors. All are
non-detached, with ``max_restarts=0`` and ``max_task_retries=0`` (at most once).

One driver thread per job starts the actors' loops once every actor is up, then waits on
their ``run`` calls, the job's event queue (failures, routing decisions) and the
collecting sinks' results, so a failure or the death of any actor is seen at once. A
cancel shuts every queue of the job down (waking each blocked call) and cancels every
actor; an actor still running ``STOP_DEADLINE`` seconds later is killed. Every ``ray.get``
has a deadline. When the job ends, its actors and its manager are killed and gone.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from ..communication.local_queue import QueueStats
from ..communication.ray_queue import (
    NAMESPACE,
    RayQueueDescriptor,
    ensure_ray,
    kill_manager,
    manager_handle,
    manager_name,
)
from ..errors import error_line
from ..metrics import ErrorInfo, Trace
from .batching import check_batching
from .ray_actors import ServiceActor, TaskActor, failure_info, rebuild_exception
from .ray_metrics import CALL_TIMEOUT, RayReadings
from .ray_plan import instance_spec, materialise_sources, service_spec, use_ray_queues
from .ray_router import BATCH, LINGER
from .ray_watch import RayWatcher, failure
from .task import Control

if TYPE_CHECKING:  # pragma: no cover
    from ..compiler import ExecutionGraph

__all__ = ["FAIL_DRAIN", "RayControl", "RayDispatcher", "alive_actors"]

FAIL_DRAIN = 3.0       # seconds a failed job lets in-flight packets drain before it cancels
KILL_WAIT = 5.0
_REMOTE: dict[str, Any] = {}


def alive_actors(prefix: str = "") -> list[str]:
    """Names of the live sage_nb actors (tasks, services, queue managers) starting with ``prefix``."""
    import ray

    if not ray.is_initialized():
        return []
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == NAMESPACE and a["name"].startswith(prefix))


def _classes(ray: Any) -> tuple[Any, Any]:
    if not _REMOTE:
        _REMOTE["task"], _REMOTE["service"] = ray.remote(TaskActor), ray.remote(ServiceActor)
        # at exit, stop the jobs before Ray's own exit hook (registered by ray.init) kills the
        # actors, so that sinks' close() still runs: atexit hooks run last-registered first
        from .manager import _stop_all_at_exit

        atexit.register(_stop_all_at_exit)
    return _REMOTE["task"], _REMOTE["service"]


class RayControl(Control):
    """The job's control flags; pause and resume reach every actor."""

    def __init__(self, dispatcher: RayDispatcher) -> None:
        super().__init__()
        self._dispatcher = dispatcher

    def pause(self) -> None:
        super().pause()
        self._dispatcher.broadcast("pause")

    def unpause(self) -> None:
        super().unpause()
        self._dispatcher.broadcast("unpause")


class RayDispatcher(RayWatcher, RayReadings):
    """Runs one :class:`ExecutionGraph` on Ray (the Dispatcher interface)."""

    def __init__(self, plan: ExecutionGraph, *, put_timeout: float | None = None,
                 trace: Trace | None = None, batch_size: int | None = None,
                 linger: float | None = None) -> None:
        self.plan = plan
        self.control = RayControl(self)
        self.trace = trace or Trace()
        self.results: dict[str, list[Any]] = {
            op: [] for op, d in plan.logical.nodes(data=True) if d["kind"] == "sink" and d.get("fn") is None}
        self.job = use_ray_queues(plan, f"{plan.job_id}-{uuid.uuid4().hex[:6]}")
        self.events = RayQueueDescriptor(maxsize=0, queue_id=f"{plan.job_id}.events", job=self.job)
        materialise_sources(plan)
        rate = max(20.0, self.trace.rate / max(1, len(plan.contexts)))
        size, wait = check_batching(batch_size, linger)  # validated; Ray's own defaults are larger
        batching = (BATCH if batch_size is None else size, LINGER if linger is None else wait)
        self._specs = {name: instance_spec(plan, ctx, put_timeout, rate, ctx.operator in self.results, *batching)
                       for name, ctx in plan.contexts.items()}
        services = plan.logical.graph.get("services", {})
        self._service_specs = {s: service_spec(sctx, services[s]) for s, sctx in plan.services.items()}
        qds = [c.input_qd for c in plan.contexts.values() if c.input_qd is not None]
        self._inputs = {qd.queue_id: qd.maxsize for qd in qds   # read in one call to the manager
                        if isinstance(qd, RayQueueDescriptor) and qd.job == self.job}
        self._others = [qd for qd in qds if qd.queue_id not in self._inputs]  # RPC, users' queues
        self.closers: list[Any] = []  # called once every task has ended (e.g. the job's RPC server)
        self.cleanup_errors: list[BaseException] = []
        self.exception: BaseException | None = None
        self.error: ErrorInfo | None = None
        self.cancelled = False
        self.done = threading.Event()
        self.started = self.ended = 0.0
        self.manager: Any = None
        self.actors: dict[str, Any] = {}
        self.services: dict[str, Any] = {}
        self.reports: dict[str, dict[str, Any]] = {n: {"state": "starting"} for n in plan.contexts}
        self._reports_lock = threading.Lock()  # a live report never lands after a final one
        self._running = set(plan.contexts)
        self._responsive: set[str] = set()
        self._stats: dict[str, QueueStats] | None = None
        self._final_stats: dict[str, QueueStats] | None = None
        self._reports_at = 0.0
        self._manager_up = False
        self._cancel_at: float | None = None
        self._killing = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Create the manager and the actors (without waiting for them) and the watcher thread."""
        self.started = time.monotonic()
        target = self._watch
        try:
            ray = ensure_ray()
            task_cls, service_cls = _classes(ray)
            calls = sum(1 + len(g.connections) for c in self.plan.contexts.values()
                        for g in c.downstream_groups)
            workers = sum(s.workers for s in self.plan.services.values())
            self.manager = manager_handle(self.job, threads=32 + 2 * (calls + workers))
            common = {"namespace": NAMESPACE, "num_cpus": 0, "max_restarts": 0, "max_task_retries": 0}
            for s, sctx in self.plan.services.items():
                self.services[s] = service_cls.options(
                    name=f"{self.job}/service:{s}", max_concurrency=sctx.workers + 2, **common,
                ).remote(s, self.manager, self.job)
            for name, ctx in self.plan.contexts.items():
                self.actors[name] = task_cls.options(name=f"{self.job}/{name}", max_concurrency=4,
                                                     **common).remote(
                    name, ctx.operator, self.events, self.manager, self.control.paused)
        except BaseException as exc:
            self._fail(failure("ray", "the Ray backend", error_line(exc)), exc)
            target = self._finalize
        self._thread = threading.Thread(target=target, name=f"sage-nb:{self.plan.job_id}:ray",
                                        daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Stop every task now: shut every queue of the job down and cancel every actor."""
        self.cancelled = self.cancelled or self.exception is None
        self.control.cancel_all()
        import ray

        if self.manager is None or self.done.is_set() or not ray.is_initialized():
            return  # (at exit, Ray may already be down: its actors went with it)
        refs = [self.manager.shutdown.remote()]
        refs += [self.actors[n].cancel.remote() for n in list(self._running) if n in self.actors]
        ray.wait(refs, num_returns=len(refs), timeout=1.0)

    def drain(self) -> None:
        """Ask the sources to stop emitting; everything already emitted is processed."""
        self.control.stopping = True
        self.broadcast("drain")

    def broadcast(self, method: str) -> None:
        """Call ``method`` on every running task actor (waits at most a second for them)."""
        import ray

        if not self.actors or self.done.is_set() or not ray.is_initialized():
            return
        refs = [getattr(self.actors[n], method).remote() for n in list(self._running) if n in self.actors]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=1.0)

    def join(self, timeout: float) -> list[str]:
        """Wait for the job to end; a cancelled job still running after ``timeout`` is killed."""
        deadline = time.monotonic() + timeout
        if self._cancel_at is not None and not self.control.cancel.is_set():
            deadline = max(deadline, self._cancel_at + timeout)  # a failed job drains first
        self.done.wait(max(0.0, deadline - time.monotonic()))
        if not self.done.is_set() and self.control.cancel.is_set():
            self._kill_tasks()
            self.done.wait(KILL_WAIT)
        if self.done.is_set() and self._thread is not None:
            self._thread.join(KILL_WAIT)
        return sorted(self._running)

    # ------------------------------------------------------------------ failures and the end
    def fail(self, instance: str, exc: BaseException) -> None:
        """Fail the job in ``instance`` from the driver (the stall watch)."""
        self._fail(failure_info(self.plan.contexts[instance].operator, instance, exc, None), exc)

    def _fail(self, info: dict[str, Any], exc: BaseException | None = None,
              cancel_now: bool = False) -> None:
        """Record the first failure; then cancel now, or stop the sources and let in-flight
        packets drain for ``FAIL_DRAIN`` seconds (the watcher cancels at the deadline)."""
        with self._lock:
            first = self.exception is None
            if first:
                self.exception = exc if exc is not None else rebuild_exception(info)
                self.error = ErrorInfo(info["node"], info["instance"], info["message"],
                                       info["packet"], info["traceback"])
        if not first:
            return
        if cancel_now:
            self.cancel()
        else:
            self._cancel_at = time.monotonic() + FAIL_DRAIN
            self.drain()
            self.control.unpause()

    # ------------------------------------------------------------------ the end
    def _finalize(self) -> None:
        import ray

        try:
            if self.services and self._manager_up:  # wake the service workers: close() runs
                qids = [sctx.request_qd.queue_id for sctx in self.plan.services.values()]
                self._get(self.manager.shutdown.remote(qids))
                refs = [a.report.remote() for a in self.services.values()]
                ray.wait(refs, num_returns=len(refs), timeout=CALL_TIMEOUT)
            if self._manager_up:
                self._final_stats = self.queue_stats()
        except Exception:
            self._final_stats = self._stats
        finally:
            for close in self.closers:
                try:
                    close()
                except Exception as exc:  # never let cleanup hide the job's end
                    self.cleanup_errors.append(exc)
            self._kill_all()
            self._running.clear()
            self.ended = time.monotonic()
            self.done.set()

    def _kill_tasks(self) -> None:
        import ray

        self._killing = True
        for actor in [*self.actors.values(), *self.services.values()]:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)

    def _kill_all(self) -> None:
        import ray

        if not ray.is_initialized():
            return
        self._kill_tasks()
        with contextlib.suppress(Exception):
            kill_manager(self.job)
        deadline = time.monotonic() + KILL_WAIT  # ray.kill is asynchronous: wait for the names to go
        while alive_actors(manager_name(self.job)) + alive_actors(f"{self.job}/"):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
