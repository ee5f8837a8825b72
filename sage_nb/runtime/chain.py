"""Operator chaining (``chain=True``): a chained instance runs inside its upstream's task.

The compiler marks the fused connections (:func:`~sage_nb.compiler.chain_edges`); here the
connection's queue is replaced by an :class:`Inlet`, so a delivery on it calls the chained
task's :meth:`~sage_nb.runtime.task.BaseTask.feed` in the sender's thread: no queue, no
thread switch. Routing, counters, stop signals and errors stay per logical node: the
chained task keeps its own router, counters and state, and an error names it.
The upstream hands its routed packets over after each input batch (after each item of a
source with ``batch_size=1``), so a chained operator never waits for a full batch. A source
whose items come from user code is not fused (see ``chain_edges``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .task import BaseTask

__all__ = ["Inlet", "link"]


class Inlet:
    """What a chained connection delivers into: ``put``/``put_many`` run the receiving task."""

    hungry = False  # the sender decides when to hand over (see BaseTask._hand_over)
    direct = True   # a batch goes in with one put_many call

    def __init__(self, task: BaseTask, sender: BaseTask) -> None:
        self.task, self.sender = task, sender

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.put_many([item])

    def put_many(self, items: list[Any]) -> None:
        start = time.perf_counter()
        try:
            self.task.feed(items)
        finally:  # not the sender's own work: its busy time leaves it out
            self.sender.chained_time += time.perf_counter() - start

    def __repr__(self) -> str:
        return f"Inlet({self.sender.ctx.name} -> {self.task.ctx.name})"


def link(tasks: dict[str, BaseTask]) -> list[BaseTask]:
    """Wire the chained connections of ``tasks`` to :class:`Inlet` objects; returns the tasks
    that need a thread of their own (those not chained to another)."""
    heads = []
    for task in tasks.values():
        sender = task.ctx.chained_from
        if sender is None:
            heads.append(task)
            continue
        up = tasks[sender]
        conn = next(c for c in up.router.connections if c.target_name == task.ctx.name)
        conn._queue = conn.receiver = Inlet(task, up)
        up.chain_next, up.chain_conn = task, conn
    return heads
