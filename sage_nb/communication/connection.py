"""``Connection``: one physical edge, from an upstream instance to a downstream instance."""

from __future__ import annotations

from typing import Any

from .queue_descriptor import BaseQueueDescriptor

__all__ = ["EAGER", "Connection"]


class _Eager:
    """Stands for a receiving queue that cannot say whether its reader waits: ship at once."""

    hungry = True


EAGER: Any = _Eager()


class Connection:
    """One physical edge: ``source_name`` → ``target_name``, writing into the target's input queue.

    ``broadcast_index`` is the upstream instance's group for the downstream operator,
    ``parallel_index`` the downstream instance, ``target_input_index`` the logical input
    it feeds. Two connections are equal when they describe the same physical edge.
    ``packets_sent`` / ``stops_sent`` count what the router delivered on it (packets waiting
    in the router's ``batch`` buffer are not delivered yet); ``batches_sent`` counts its puts.

    >>> from sage_nb.communication import PythonQueueDescriptor
    >>> qd = PythonQueueDescriptor(maxsize=10, queue_id="q")
    >>> c = Connection(0, 1, "count[1]", qd, 0, source_name="split[0]")
    >>> c == Connection(0, 1, "count[1]", qd, 0, source_name="split[0]"), c.get_buffer_load()
    (True, 0.0)
    """

    # set on its connections by the Ray backend's BatchingRouter (runtime/ray_router.py)
    buffer: list[Any]
    units: int
    inflight: Any
    ray: bool
    batched: bool

    def __init__(self, broadcast_index: int, parallel_index: int, target_name: str,
                 queue_descriptor: BaseQueueDescriptor, target_input_index: int = 0,
                 source_name: str = "", chained: bool = False) -> None:
        self.broadcast_index = broadcast_index
        self.parallel_index = parallel_index
        self.target_name = target_name
        self.queue_descriptor = queue_descriptor
        self.target_input_index = target_input_index
        self.source_name = source_name
        self.chained = chained      # chain=True: the target runs in the source's task, no queue between
        self.packets_sent = 0
        self.stops_sent = 0
        self.batches_sent = 0
        self.batch: list[Any] = []  # routed, not yet shipped (a batching router's buffer)
        self.batch_limit = 1        # ship when the buffer holds this many (set by the router)
        self.receiver: Any = EAGER  # the queue, once known to say when its reader is hungry
        self._queue: Any = None

    @property
    def queue(self) -> Any:
        """The downstream queue (created lazily through the descriptor, then cached)."""
        q = self._queue
        if q is None:
            q = self._queue = self.queue_descriptor.queue_instance
        return q

    @property
    def name(self) -> str:
        return f"{self.source_name}->{self.target_name}"

    def get_buffer_load(self) -> float:
        """Fill of the downstream queue in [0, 1]; 0.0 when it is unbounded (never full)."""
        return self.queue_descriptor.statistics().load

    def _identity(self) -> tuple:
        return (self.source_name, self.broadcast_index, self.parallel_index, self.target_name,
                self.target_input_index, self.queue_descriptor)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Connection):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_queue"] = None
        state["batch"] = []
        state["receiver"] = EAGER
        return state

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source_name, "target": self.target_name,
                "broadcast_index": self.broadcast_index, "parallel_index": self.parallel_index,
                "target_input_index": self.target_input_index,
                "queue_id": self.queue_descriptor.queue_id, "chained": self.chained}

    def __repr__(self) -> str:
        return (f"Connection({self.source_name!r} -> {self.target_name!r}, group={self.broadcast_index}, "
                f"input={self.target_input_index}, queue={self.queue_descriptor.queue_id!r})")
