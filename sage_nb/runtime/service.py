"""Services: long-lived objects that operators call through their context.

Each service has a request queue; each calling instance has its own response queue.
Requests carry an id and replies are matched by it, so a late reply to a call that
already timed out is discarded instead of answering the next call (SAGE #1112).
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import traceback
from dataclasses import dataclass
from time import monotonic
from typing import Any

from ..communication.local_queue import QueueShutDown
from ..errors import Cancelled, ServiceError
from .context import ServiceContext, TaskContext

__all__ = ["ServiceCaller", "ServiceReply", "ServiceRequest", "ServiceRunner"]


@dataclass(frozen=True, slots=True)
class ServiceRequest:
    request_id: str
    caller: str
    method: str
    args: tuple
    kwargs: dict


@dataclass(frozen=True, slots=True)
class ServiceReply:
    request_id: str
    ok: bool
    value: Any          # the result, or the exception the service raised
    traceback: str = ""


class ServiceCaller:
    """The calling side, bound to one task instance (``ctx.call_service`` delegates here)."""

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.late_replies = 0

    def call(self, name: str, method: str, args: tuple, kwargs: dict, timeout: float) -> Any:
        ctx = self.ctx
        rid = f"{ctx.name}#{next(self._ids)}"
        deadline = monotonic() + timeout
        with self._lock:
            try:
                ctx.service_qds[name].put(ServiceRequest(rid, ctx.name, method, args, kwargs),
                                          True, timeout)
                while True:
                    remaining = deadline - monotonic()
                    if remaining <= 0:
                        raise queue.Empty
                    reply = ctx.response_qd.get(True, remaining)  # type: ignore[union-attr]
                    if reply.request_id == rid:
                        break
                    self.late_replies += 1
            except (queue.Empty, queue.Full):
                raise ServiceError(f"{ctx.name}: service {name!r} did not answer {method}() within "
                                   f"{timeout} s (raise the timeout: call_service(..., timeout=...))"
                                   ) from None
            except QueueShutDown:
                raise Cancelled(f"{ctx.name}: job stopping during a call to service {name!r}") from None
        if reply.ok:
            return reply.value
        raise ServiceError(f"{ctx.name}: service {name!r} raised in {method}(): "
                           f"{type(reply.value).__name__}: {reply.value}") from reply.value


class ServiceRunner:
    """The serving side: builds the service object and answers requests from worker threads."""

    def __init__(self, sctx: ServiceContext, spec: Any) -> None:
        self.ctx = sctx
        self.spec = spec
        self.obj: Any = None
        self.calls = 0
        self.errors = 0
        self._active = 0
        self._lock = threading.Lock()

    def open(self) -> None:
        self.obj = self.spec.factory(*self.spec.args, **self.spec.kwargs)
        with contextlib.suppress(AttributeError):  # a builtin or slotted object does without
            self.obj.ctx = self.ctx
        self._active = self.ctx.workers

    def serve(self) -> None:
        """A worker loop: answer requests until the request queue is shut down."""
        requests = self.ctx.request_qd.queue_instance
        try:
            while True:
                try:
                    req = requests.get()
                except QueueShutDown:
                    return
                try:
                    reply = ServiceReply(req.request_id, True,
                                         getattr(self.obj, req.method)(*req.args, **req.kwargs))
                except Exception as exc:
                    self.errors += 1
                    reply = ServiceReply(req.request_id, False, exc, traceback.format_exc())
                self.calls += 1
                try:
                    self.ctx.response_qds[req.caller].put(reply)
                except QueueShutDown:
                    return
        finally:
            with self._lock:
                self._active -= 1
                last = self._active == 0
            if last and callable(getattr(self.obj, "close", None)):
                self.obj.close()

    def stop(self) -> None:
        self.ctx.request_qd.queue_instance.shutdown()
