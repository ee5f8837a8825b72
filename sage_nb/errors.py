"""The errors sage_nb raises: one base class and a few subclasses.

Every message says what was wrong, shows the value, and says how to fix it.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "Cancelled",
    "DeliveryError",
    "GraphError",
    "JobFailed",
    "ProtocolError",
    "SageError",
    "ServiceError",
    "StallError",
    "StallWarning",
    "error_line",
]


class SageError(Exception):
    """Base class of every error sage_nb raises on purpose."""


class GraphError(SageError, ValueError):
    """The pipeline graph is invalid (raised at build or compile time, before any thread starts)."""


class BackendError(SageError):
    """A backend cannot run here (missing optional dependency, bad option)."""


class Cancelled(SageError):
    """A blocking call was cancelled because its job is stopping."""


class DeliveryError(SageError):
    """A packet could not be delivered on a connection (the packet is *not* delivered)."""


class ProtocolError(SageError):
    """A task received something the end-of-stream protocol forbids (data after its stop signal)."""


class ServiceError(SageError):
    """A service call failed: unknown service, the service raised, or no reply in time."""


class StallError(SageError):
    """Nothing moved in a job for ``stall_timeout`` seconds while an instance waited for room
    in a full queue (``p.run(stall_timeout=...)``): a deadlock, or a function that hangs."""


class StallWarning(UserWarning):
    """A running job has not moved for 10 s while an instance waits for room in a full queue
    (once per stall; ``warnings.simplefilter("ignore", snb.StallWarning)`` silences it)."""


class JobFailed(SageError):
    """A job failed; ``__cause__`` is the original exception raised by user code.

    Attributes name where it happened: ``node`` (logical operator), ``instance``
    (e.g. ``"count[2]"``) and ``packet`` (what it was on, as text: ``"#<trace id> <payload repr>"``
    for a packet, the item's repr for a source's item; or None).
    """

    def __init__(self, message: str, *, node: str | None = None, instance: str | None = None,
                 packet: object = None, traceback_text: str = "") -> None:
        super().__init__(message)
        self.node = node
        self.instance = instance
        self.packet = packet
        self.traceback_text = traceback_text


def error_line(exc: BaseException) -> str:
    """``Type: message`` of ``exc``, as error reports show it; never raises (a user exception
    whose ``__str__`` raises still gets reported).

    >>> error_line(ValueError("bad item"))
    'ValueError: bad item'
    """
    try:
        text = str(exc)
    except Exception:
        text = "<its str() raised>"
    return f"{type(exc).__name__}: {text}"
