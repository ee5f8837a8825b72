"""The watcher thread of a Ray job: start the loops, then wait on everything that can happen.

Mixed into :class:`~sage_nb.runtime.ray_backend.RayDispatcher`. Once the manager and every
task actor are up (a barrier: no packet waits in a queue for an actor still starting),
the services open, each service worker and each task's loop start, and one
``ray.wait`` covers the loops' ``run`` calls, the service workers, the collecting sinks'
``take_results`` and the job's event queue (failures, routing decisions). So a failure,
a finished task or a dead actor is handled as soon as it happens, with no polling of
the actors beyond the sinks' results.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from ..communication.local_queue import QueueShutDown
from ..communication.ray_queue import SLICE, QueueLost, manager_name
from ..errors import BackendError, error_line

__all__ = ["RESULTS_EVERY", "START_TIMEOUT", "TICK", "RayWatcher", "failure"]

START_TIMEOUT = 120.0  # seconds the manager, the actors and the services get to start
TICK = 0.05
RESULTS_EVERY = 0.05   # seconds between two collections of a sink's results


def failure(node: str, instance: str, message: str, traceback: str = "") -> dict[str, Any]:
    """Failure info for a failure seen on the driver (see ``ray_actors.failure_info``)."""
    return {"node": node, "instance": instance, "message": message, "packet": None,
            "traceback": traceback or message, "exception": None}


class RayWatcher:
    """The watcher thread's steps (reads and updates the dispatcher's state)."""

    plan: Any
    manager: Any
    actors: dict[str, Any]
    services: dict[str, Any]
    control: Any
    events: Any
    results: dict[str, list[Any]]
    reports: dict[str, dict[str, Any]]
    _reports_lock: threading.Lock
    trace: Any
    exception: BaseException | None
    job: str
    _specs: dict[str, bytes]
    _service_specs: dict[str, bytes]
    _running: set[str]
    _responsive: set[str]
    _manager_up: bool
    _cancel_at: float | None
    _killing: bool

    if TYPE_CHECKING:  # from the dispatcher (RayDispatcher) and RayReadings
        def _fail(self, info: dict[str, Any], exc: BaseException | None = None,
                  cancel_now: bool = False) -> None: ...

        def _finalize(self) -> None: ...

        def cancel(self) -> None: ...

        def _get(self, ref: Any, timeout: float = ...) -> Any: ...

        def actor_lost(self, name: str, exc: BaseException) -> str: ...

        def manager_lost(self) -> str: ...

    def _watch(self) -> None:
        import ray

        try:
            up = [self.manager.ping.remote()] + [a.ready.remote() for a in self.actors.values()]
            if self._wait_ready(up, "the queue manager and the task actors"):
                self._manager_up = True
                self._responsive.update(self.actors)
                if self._open_services():
                    self._loop(ray)
        except BaseException as exc:  # a bug, or Ray going away: fail the job rather than hang it
            self._fail(failure("ray", "the Ray backend", error_line(exc)), exc, True)
        finally:
            self._finalize()

    def _wait_ready(self, refs: list[Any], what: str) -> bool:
        """Wait until every call in ``refs`` returned (the actors are up); False if cancelled."""
        import ray

        deadline = time.monotonic() + START_TIMEOUT
        while refs:
            if self.control.cancel.is_set():
                return False
            if time.monotonic() > deadline:
                raise BackendError(f"{what} did not start within {START_TIMEOUT:.0f} s")
            ready, refs = ray.wait(refs, num_returns=len(refs), timeout=TICK)
            for ref in ready:
                self._get(ref)  # an actor that could not start raises here
        return True

    def _open_services(self) -> bool:
        for s, actor in self.services.items():
            ref = actor.open.remote(self._service_specs[s])
            if not self._wait_ready([ref], f"service {s!r}"):
                return False
            info = self._get(ref)
            if info is not None:
                self._fail(info, cancel_now=True)
                return False
        return True

    def _loop(self, ray: Any) -> None:
        serving = {actor.serve.remote(): s for s, actor in self.services.items()
                   for _ in range(self.plan.services[s].workers)}
        runs = {self.actors[n].run.remote(self._specs[n]): n for n in self.plan.contexts}
        sinks = {n for n, c in self.plan.contexts.items() if c.operator in self.results}
        polls: dict[Any, str] = {}   # the one outstanding take_results() of each collecting sink
        due = dict.fromkeys(sinks, 0.0)
        events = self.events.queue_instance
        ev = events.request(4096, SLICE)
        while runs:
            now = time.monotonic()
            for n in sinks - set(polls.values()):
                if now >= due[n]:
                    polls[self.actors[n].take_results.remote()] = n
            ready, _ = ray.wait([*runs, *serving, *polls, *([ev] if ev is not None else [])],
                                num_returns=1, timeout=TICK)
            for ref in ready:
                if ref in runs:
                    name = runs.pop(ref)
                    for poll in [r for r, n in polls.items() if n == name]:
                        del polls[poll]
                        self._results(name, poll)  # what came before the final report
                    sinks.discard(name)
                    self._task_ended(name, ref)
                elif ref in polls:
                    name = polls.pop(ref)
                    self._results(name, ref)
                    due[name] = time.monotonic() + RESULTS_EVERY
                elif ref in serving:
                    self._service_ended(serving.pop(ref), ref)
                else:
                    ev = self._events(events, ev, SLICE)
            if self._cancel_at is not None and time.monotonic() >= self._cancel_at:
                self._cancel_at = None
                self.cancel()
        # every task has ended and what they sent is stored: read up to a marker of our own
        # (it also answers the get already waiting in the manager)
        try:
            if ev is not None:
                events.put_many([("end",)])
        except QueueShutDown:  # cancelled: the queues are shut down, nothing more will come
            ev = None
        except QueueLost as exc:
            self._manager_died(exc)
            ev = None
        while ev is not None:
            ev = self._events(events, ev, SLICE)

    def _results(self, name: str, ref: Any) -> None:
        import ray

        try:
            self.results[self.plan.contexts[name].operator].extend(self._get(ref, START_TIMEOUT))
        except ray.exceptions.RayActorError:  # the actor died: its run() reports that
            pass
        except Exception as exc:  # never lose results silently
            self._fail(failure(self.plan.contexts[name].operator, name, f"{type(exc).__name__}: the "
                             f"results of {name} could not be collected: {exc}"), exc, cancel_now=True)

    def _events(self, events: Any, ref: Any, wait: float) -> Any:
        """Handle one batch of the job's events; the next request, or None after the end marker."""
        try:
            batch = events.receive(ref, SLICE)
        except QueueShutDown:
            return None
        except QueueLost as exc:
            self._manager_died(exc)
            return None
        for event in batch:
            if event[0] == "trace":
                self.trace.merge(event[1])  # the actors' decisions, in time order
                self.trace.skipped += event[2]
            elif event[0] == "end":
                return None
            else:
                self._task_failed(event[1])
        return events.request(4096, wait)

    def _task_ended(self, name: str, ref: Any) -> None:
        import ray

        self._running.discard(name)
        try:
            report = self._get(ref)
        except ray.exceptions.RayActorError as exc:
            with self._reports_lock:
                self.reports[name] = {**self.reports[name], "state": "cancelled" if self._killing else "failed"}
            if not self._killing:
                self._fail(failure(self.plan.contexts[name].operator, name, self.actor_lost(name, exc),
                                 str(exc)), exc, cancel_now=True)
            return
        except Exception as exc:  # a bug in the actor's own code: fail loudly
            self._fail(failure(self.plan.contexts[name].operator, name, error_line(exc)),
                       exc, cancel_now=True)
            return
        self.results.get(self.plan.contexts[name].operator, []).extend(report.pop("results", ()))
        with self._reports_lock:
            self.reports[name] = report
        if report["failure"] is not None:
            self._task_failed(report["failure"])

    def _service_ended(self, name: str, ref: Any) -> None:
        try:
            self._get(ref)
        except Exception as exc:
            if not self._killing and not self.control.cancel.is_set():
                info = failure(name, f"service {name}", f"{type(exc).__name__}: the service actor "
                             f"stopped ({exc})")
                self._fail(info, exc, cancel_now=True)

    def _task_failed(self, info: dict[str, Any]) -> None:
        if info["message"].startswith("QueueLost"):  # the manager died under this task
            self._manager_died(None)
        else:
            self._fail(info)

    def _manager_died(self, exc: BaseException | None) -> None:
        if self.exception is None:
            message = self.manager_lost()
            info = failure("queues", manager_name(self.job), message, str(exc or message))
            self._fail(info, exc if exc is not None else QueueLost(message), cancel_now=True)
