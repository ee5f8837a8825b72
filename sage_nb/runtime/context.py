"""``TaskContext`` and ``ServiceContext``: what one instance knows about its place in the plan.

Built by the compiler as plain data (queue descriptors, broadcast groups of connections,
the stop signals to expect); the runtime binds the live parts (service calls) when the
instance starts. A user function class sees its context as ``self.ctx``.
"""

from __future__ import annotations

from typing import Any

from ..communication.queue_descriptor import BaseQueueDescriptor
from ..communication.router import BroadcastGroup
from ..errors import ServiceError

__all__ = ["IN_MEMORY_TYPES", "ServiceContext", "TaskContext"]

# what ``from_iterable`` items may be for the source to run no user code between its items
# (routed a chunk at a time; ``chain=True`` fuses such a source only)
IN_MEMORY_TYPES = (list, tuple, range, str)


class TaskContext:
    """One task instance: identity, input queue, output groups, expected stop signals.

    ``upstreams[i]`` lists the upstream instances feeding logical input ``i``; the task
    finishes after one stop signal from each of them (``stop_signal_num`` in total).
    ``chained_from`` names the upstream instance whose task runs this one (``chain=True``).
    """

    def __init__(self, *, job_id: str, name: str, operator: str, kind: str, parallel_index: int,
                 parallelism: int, input_qd: BaseQueueDescriptor | None,
                 groups: tuple[BroadcastGroup, ...], upstreams: dict[int, tuple[str, ...]],
                 chained_from: str | None = None, keyed_input: bool = False, response_qd: BaseQueueDescriptor | None = None,
                 service_qds: dict[str, BaseQueueDescriptor] | None = None,
                 service_timeout: float = 10.0) -> None:
        self.job_id = job_id
        self.name = name
        self.operator = operator
        self.kind = kind
        self.parallel_index = parallel_index
        self.parallelism = parallelism
        self.input_qd = input_qd
        self.downstream_groups = groups
        self.upstreams = upstreams
        self.chained_from = chained_from  # the instance that runs this one inside its task (chain=True)
        self.keyed_input = keyed_input
        self.response_qd = response_qd
        self.service_qds = dict(service_qds or {})
        self.service_timeout = service_timeout
        self._key: Any = None         # current_key, as the runtime set it packet by packet
        self._key_at: Any = None      # or, while a bundle's packets are processed, how to find it
        self._caller: Any = None      # bound by the runtime

    @property
    def current_key(self) -> Any:
        """The key of the packet being processed, on an input behind ``key_by`` (after the
        packet: the key of the last one processed)."""
        at = self._key_at
        return self._key if at is None else at()

    @current_key.setter
    def current_key(self, key: Any) -> None:
        self._key, self._key_at = key, None

    @property
    def is_spout(self) -> bool:
        return self.kind == "source"

    @property
    def stop_signal_num(self) -> int:
        """How many stop signals this instance must receive before it finishes."""
        return sum(len(s) for s in self.upstreams.values())

    def call_service(self, name: str, method: str = "__call__", *args: Any,
                     timeout: float | None = None, **kwargs: Any) -> Any:
        """Call ``method`` on service ``name`` and wait for its reply (``timeout`` seconds,
        default ``service_timeout``); raises :class:`~sage_nb.errors.ServiceError` on failure."""
        if name not in self.service_qds:
            raise ServiceError(f"{self.name}: no service named {name!r}; known services: "
                               f"{sorted(self.service_qds)} (declare it with p.service(...))")
        if self._caller is None:
            raise ServiceError(f"{self.name}: services can only be called while the job runs")
        return self._caller.call(name, method, args, kwargs,
                                 self.service_timeout if timeout is None else timeout)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_caller"] = state["_key_at"] = None
        return state

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "operator": self.operator, "kind": self.kind,
            "parallel_index": self.parallel_index, "parallelism": self.parallelism,
            "input_queue": self.input_qd.to_dict() if self.input_qd else None,
            "upstreams": {str(i): list(s) for i, s in sorted(self.upstreams.items())},
            "chained_from": self.chained_from,
            "groups": [{"index": g.index, "target": g.target, "strategy": g.strategy,
                        "connections": [c.to_dict() for c in g.connections]}
                       for g in self.downstream_groups],
            "response_queue": self.response_qd.queue_id if self.response_qd else None,
            "services": sorted(self.service_qds),
        }

    def __repr__(self) -> str:
        return f"TaskContext({self.name!r}, kind={self.kind!r}, stop_signals={self.stop_signal_num})"


class ServiceContext:
    """One service: its request queue and the response queue of every caller instance."""

    def __init__(self, *, job_id: str, name: str, request_qd: BaseQueueDescriptor,
                 response_qds: dict[str, BaseQueueDescriptor], workers: int = 1) -> None:
        self.job_id = job_id
        self.name = name
        self.request_qd = request_qd
        self.response_qds = response_qds
        self.workers = workers

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "request_queue": self.request_qd.to_dict(),
                "callers": sorted(self.response_qds), "workers": self.workers}

    def __repr__(self) -> str:
        return f"ServiceContext({self.name!r}, callers={len(self.response_qds)})"
