"""What one step does to an instance: open it, emit, take, finish, fail (the step backend).

These drive :class:`~sage_nb.runtime.task.BaseTask`'s own pieces (``_open``,
``_source_items``, ``_make_process``, ``_on_stop``, ``_close``, its router), so operator
semantics live in one place for every backend; :class:`StepActions` is mixed into
:class:`~sage_nb.runtime.step.StepRunner`.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any

from ..communication.packet import Packet, StopSignal
from ..errors import ProtocolError, ServiceError, error_line
from ..metrics import ErrorInfo, packet_text
from .recording import StepEvent

if TYPE_CHECKING:  # pragma: no cover
    from .task import BaseTask

__all__ = ["StepActions", "SyncCaller", "error_info"]

_EXHAUSTED = object()


class StepActions:
    """The acting half of the step runner (``self`` is a :class:`StepRunner`)."""

    tasks: dict[str, Any]
    state: Any
    work: dict[str, Any]
    control: Any
    services: dict[str, Any]
    plan: Any
    exception: BaseException | None
    error: ErrorInfo | None
    on_error: Any
    _failure: Any
    _services_open: bool
    _seq: Any
    _end_job: Any

    def _act(self, index: int, name: str, action: str) -> StepEvent:
        task, st = self.tasks[name], self.state
        try:
            if action == "deliver":
                fields = st.deliver(name, *task.router.outbox.popleft())
            elif task.state == "failed":
                fields = self._wind_down(task, action)
            else:
                self._open(task)
                fields = getattr(self, f"_{action}")(task, index)
        except BaseException as exc:  # user code may raise SystemExit & co: fail the job
            self._fail(task, exc, task.current)
            fields = {**st.describe(task.current, "error"), "error": error_line(exc)}
        return st.event(index, name, fields)

    def _open_services(self) -> bool:
        """Build the services before the first step; False (job failed) if one cannot start."""
        if self._services_open:
            return True
        self._services_open = True
        for name, runner in self.services.items():
            try:
                runner.open()
            except Exception as exc:
                self.exception = exc
                self.error = error_info(name, f"service {name}", exc, None)
                self._end_job()
                return False
        for ctx in self.plan.contexts.values():
            ctx._caller = SyncCaller(ctx, self.services)
        return True

    def _open(self, task: BaseTask) -> None:
        name = task.ctx.name
        if name not in self.work:
            self.work[name] = None
            fn = task._open()
            self.work[name] = (task._source_items(fn) if task.ctx.kind == "source"
                               else task._make_process(fn))

    def _emit(self, task: BaseTask, index: int) -> dict[str, Any]:
        item = _EXHAUSTED if self.control.stopping else next(self.work[task.ctx.name], _EXHAUSTED)
        if item is _EXHAUSTED:
            return self._finish(task, index)
        task.current = packet = Packet(item, seq=next(self._seq), created=float(index))
        fields = self.state.describe(packet, "packet")
        task.router.send(packet)
        task.packets_in += 1
        task.current = None
        return fields

    def _take(self, task: BaseTask, index: int) -> dict[str, Any]:
        msg = self.state.take(task.ctx.name)
        if msg.__class__ is StopSignal:
            task._on_stop(msg, task._expected, task._seen)
            return self.state.describe(msg, "stop")
        fields = self.state.describe(msg, "packet")
        task.current = msg
        self.work[task.ctx.name](msg)
        task.packets_in += 1
        task.last = [*task.last[-4:], msg.payload]
        task.current = None
        return fields

    def _finish(self, task: BaseTask, index: int) -> dict[str, Any]:
        if self.state.has_input(task.ctx.name):
            raise ProtocolError(f"{task.ctx.name}: packet(s) arrived after the end of stream of "
                                f"every input")
        task.state = "closing"
        task._close()
        task.router.send_stop_signal()
        task.state = "finished"
        self.state.ended.add(task.ctx.name)
        return {"kind": "finish"}

    def _wind_down(self, task: BaseTask, action: str) -> dict[str, Any]:
        """A failed instance: discard its input, count stop signals, then end its stream."""
        if action == "finish":
            if not task.router.closed:
                task.router.send_stop_signal()
            self.state.ended.add(task.ctx.name)
            return {"kind": "finish"}
        msg = self.state.take(task.ctx.name)
        if msg.__class__ is StopSignal:
            task._on_stop(msg, task._expected, task._seen)
            return self.state.describe(msg, "stop")
        task.discarded += 1
        return self.state.describe(msg, "discard")

    # ------------------------------------------------------------------ failure and the end
    def _fail(self, task: BaseTask, exc: BaseException, packet: Any) -> None:
        task.state = "failed"
        task.error = exc
        task._close(quiet=True)
        hook = self.on_error
        if hook is not None and hook(task, exc, packet):   # an error breakpoint holds the failure
            self._failure = (task, exc, packet)
        else:
            self._commit(task, exc, packet)

    def _commit(self, task: BaseTask, exc: BaseException, packet: Any) -> None:
        self._failure = None
        if self.exception is None:
            self.exception = exc
            self.error = error_info(task.ctx.operator, task.ctx.name, exc, packet)
        self.control.stopping = True


class SyncCaller:
    """Calls a service directly, within the calling step (``ctx.call_service`` on step)."""

    def __init__(self, ctx: Any, services: dict[str, Any]) -> None:
        self.ctx, self.services = ctx, services

    def call(self, name: str, method: str, args: tuple, kwargs: dict, timeout: float) -> Any:
        runner = self.services[name]
        runner.calls += 1
        try:
            return getattr(runner.obj, method)(*args, **kwargs)
        except Exception as exc:
            runner.errors += 1
            raise ServiceError(f"{self.ctx.name}: service {name!r} raised in {method}(): "
                               f"{error_line(exc)}") from exc


def error_info(node: str, instance: str, exc: BaseException, packet: Any) -> ErrorInfo:
    """Where a job failed, in the words the threads backend uses."""
    return ErrorInfo(node, instance, error_line(exc), packet_text(packet),
                     "".join(traceback.format_exception(exc)))
